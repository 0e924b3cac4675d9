"""The fine-tuning section: the study's table (accuracy and each pair's confusions per strategy, mean ± std over
seeds, the paired difference to full -> full with its 95% interval), the shortcut gap before and after where the
study measured it, and the revision rows when present.

Reads ``DIR/finetune/finetune.json`` (:func:`i2x.stages.finetune.finetune`). Two optional keys are shown when a
study writes them: ``shortcut_gap`` in ``start`` and in each strategy's entry (a number, or mean/std over seeds: the
accuracy lost when the shortcut is pasted), and ``revision``, a mapping from a row name to an entry shaped like a
strategy's (its paired difference under ``paired_differences["<name> minus full-full"]``)."""

from __future__ import annotations

from typing import Any

from i2x.io.workdir import FINETUNE, FINETUNE_DIR
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, esc, table

BASELINE = "full-full"


def _pm(stat: Any, scale: float = 1.0) -> str:
    """``mean ± std`` of a stats entry (or a plain number), a dash when missing."""
    if stat is None:
        return "–"
    if isinstance(stat, (int, float)):
        return f"{scale * stat:.2f}"
    if stat.get("mean") is None:
        return "–"
    return f"{scale * stat['mean']:.2f} ± {scale * (stat.get('std') or 0.0):.2f}"


def _diff(stat: dict[str, Any] | None, scale: float = 1.0) -> str:
    """A paired difference: mean [95% interval] and its Wilcoxon p."""
    if not stat or stat.get("mean") is None or not stat.get("ci") or stat["ci"][0] is None:
        return "–"
    lo, hi = stat["ci"]
    p = stat.get("wilcoxon_p")
    return (f"{scale * stat['mean']:+.2f} [{scale * lo:+.2f}, {scale * hi:+.2f}]"
            + (f" p={p:.3f}" if p is not None else ""))


def _name(strategy: str) -> str:
    return strategy.replace("-", " → ") if "-" in strategy else f"{strategy} (stage 1 only)"


#: the anchor of the section's revision part (the verdict card links to it)
REVISION_ANCHOR = "finetune-revision"


def revision_of(r: ReportInputs, concept: int) -> dict[str, Any] | None:
    """finetune.json's revision (``i2x finetune --fix``) when it revised ``concept``, the part this section shows,
    else None."""
    record = (r.optional_json(f"{FINETUNE_DIR}/{FINETUNE}") or {}).get("revision")
    return record if record and record.get("methods") and record.get("concept") == concept else None


#: The revision's measures (``i2x finetune --fix``, :mod:`i2x.stages.revision`) shown per method, with their labels.
REVISION_MEASURES = {"gap": "shortcut gap pts", "clean_accuracy": "clean accuracy %",
                     "attacked_accuracy": "attacked accuracy %"}


def _revision(record: dict[str, Any] | None) -> str:
    """The revision of a found shortcut: the gap (other-class images called its class with it pasted, minus without),
    clean and attacked accuracy before and per method (mean ± std [95% interval] over seeds), the paired gap
    reductions against the controls, and the verdict."""
    if not record or not record.get("methods"):
        return ""
    before = record["before"]
    rows = [["before (final checkpoint)"] + [_pm(before.get(k), 100) for k in REVISION_MEASURES]]
    for method, st in record["methods"].items():
        rows.append([method] + [(_pm(st[k], 100) + _ci(st[k].get("ci")) if len(st[k].get("values") or []) > 1
                                 else _pm(st[k]["mean"], 100) + " (1 seed: no interval)") for k in REVISION_MEASURES])
    pairs = [f"{key}: gap reduction {_diff(d['gap_reduction'], 100)}" for key, d in record.get("paired", {}).items()]
    settings = record.get("settings") or {}
    mask = record.get("mask") or {}
    facts = (f"{len(settings.get('seeds') or [])} seed(s) per method, {settings.get('epochs', '?')} epoch(s) each; the "
             f"mask: {mask.get('source', '?')} ({mask.get('pixels', '?')} px); ± is the sample std over seeds, [ ] a "
             "95% bootstrap interval.")
    lines = "".join(f"<li>{esc(line)}</li>" for line in pairs + list(record.get("verdict") or []))
    return (f'<h3 id="{REVISION_ANCHOR}">Revision of the shortcut</h3>'
            + table(["method", *REVISION_MEASURES.values()], rows, "sortable") + f'<p class="muted">{esc(facts)}</p>'
            + (f'<ul class="tight">{lines}</ul>' if lines else ""))


def _ci(ci: list[float | None] | None) -> str:
    return f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci and ci[0] is not None else ""


def finetune_section(r: ReportInputs) -> Section | None:
    """The fine-tuning and revision results as a table with intervals, and the shortcut gap before and after."""
    result = r.optional_json(f"{FINETUNE_DIR}/{FINETUNE}")
    if result is None:
        return None
    labels = [p["label"] for p in result.get("pairs") or []]
    paired = result.get("paired_differences") or {}
    start = result.get("start") or {}
    gap = "shortcut_gap" in start or any("shortcut_gap" in e for e in (result.get("strategies") or {}).values())
    head = (["strategy", "accuracy %", "Δ accuracy pp vs full → full [95% CI]"]
            + [f"{label} confusions" for label in labels]
            + [f"Δ {label} vs full → full [95% CI]" for label in labels]
            + (["shortcut gap %"] if gap else []))
    rows = [["final checkpoint (start)", _pm(start.get("accuracy"), 100), "–"]
            + [str((start.get("confusions") or {}).get(label, {}).get("total", "–")) for label in labels]
            + ["–"] * len(labels) + ([_pm(start.get("shortcut_gap"), 100)] if gap else [])]
    entries = [(s, e, _name(s)) for s, e in (result.get("strategies") or {}).items()]
    for s, e, shown in entries:
        d = paired.get(f"{s} minus {BASELINE}") or {}
        rows.append([shown, _pm(e.get("accuracy"), 100), _diff(d.get("accuracy"), 100)]
                    + [_pm((e.get("confusions") or {}).get(label)) for label in labels]
                    + [_diff((d.get("confusions") or {}).get(label)) for label in labels]
                    + ([_pm(e.get("shortcut_gap"), 100)] if gap else []))
    settings = result.get("settings") or {}
    seeds = len(settings.get("seeds") or [])
    excluded = result.get("excluded") or {}
    facts = (f"{seeds} seed(s) per strategy on the test split of {settings.get('test_size', '?')} samples; ± is the "
             "standard deviation over seeds; Δ columns are per-seed paired differences to full → full: mean [95% "
             "bootstrap interval over seeds] and the Wilcoxon p. Curation excluded "
             f"{excluded.get('count', '?')} of {excluded.get('train_size', '?')} training samples.")
    verdict = "".join(f"<li>{esc(line)}</li>" for line in result.get("verdict") or [])
    gap_note = ("" if gap else '<p class="muted">The shortcut gap (accuracy lost when the shortcut is pasted) was '
                "not measured by this fine-tuning run.</p>")
    body = ((table(head, rows, "sortable") + f'<p class="muted">{esc(facts)}</p>' + gap_note
             + (f'<ul class="tight">{verdict}</ul>' if verdict else "")) if result.get("strategies") else "")
    body += _revision(result.get("revision"))
    return Section("finetune", "Fine-tuning", "Curated fine-tuning from the final checkpoint against full fine-tuning "
                   "and the controls: did leaving out the images of the uncertain prototypes (or of the shortcut "
                   "concept) reduce the confusions, and the shortcut gap?", Raw(body))
