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
    entries += [(s, e, f"revision: {s}") for s, e in (result.get("revision") or {}).items()]
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
    body = (table(head, rows, "sortable") + f'<p class="muted">{esc(facts)}</p>' + gap_note
            + (f'<ul class="tight">{verdict}</ul>' if verdict else ""))
    return Section("finetune", "Fine-tuning", "Curated fine-tuning from the final checkpoint against full fine-tuning "
                   "and the controls: did leaving out the images of the uncertain prototypes (or of the shortcut "
                   "concept) reduce the confusions, and the shortcut gap?", Raw(body))
