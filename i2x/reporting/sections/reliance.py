"""The report's reliance section: a verdict card on top, then the concepts ranked by causal evidence.

Reads ``DIR/reliance.json`` (written by :func:`i2x.stages.reliance.reliance`); returns None when it
is absent, so the section is skipped. It comes first in the report: the most important finding
must not be buried.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import pandas as pd

from i2x.io.workdir import RELIANCE, SHORTCUT_SAMPLES, assign_digest, unpack_mask
from i2x.reporting.charts import paste_over_training
from i2x.reporting.images import HIGHLIGHT, jet, png_uri, resize, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, esc, img, shortcut_chip, table
from i2x.reporting.sections.finetune import REVISION_ANCHOR, revision_of
from i2x.stages.reliance.masks import concept_mask, sample_masks
from i2x.stages.reliance.verdict import ran_sentence

TITLE = "Reliance: what the model depends on"
THUMB = 64


def tinted(images: np.ndarray, masks: np.ndarray, size: int = THUMB, alpha: float = 0.45) -> np.ndarray:
    """Images ``[B, C, H, W]`` in [0, 1] with the regions of ``masks`` ``[B, h, w]`` (grid cells or input pixels,
    upsampled by nearest neighbour) tinted -> uint8 ``[B, S, S, 3]``."""
    base = to_rgb(resize(images, size)).astype(np.float32)
    h, w = masks.shape[1:]
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    inside = masks[:, rows][:, :, cols][..., None]
    out = np.where(inside, (1 - alpha) * base + alpha * HIGHLIGHT.astype(np.float32), base)
    return (out + 0.5).astype(np.uint8)


def location_grid(locations: list[list[float]], size: int = THUMB) -> str:
    """A unit's cell frequencies ``[h, w]`` (1 = its most frequent cell) as a small HTML grid in jet colours
    (built from the store alone, so it shows even when the input images are unavailable)."""
    grid = np.asarray(locations, dtype=np.float64)
    h, w = grid.shape
    cell = max(3, size // max(h, w))
    colours = jet(grid).reshape(-1, 3)
    spans = "".join(f'<span style="background:rgb({r},{g},{b})"></span>' for r, g, b in colours)
    return (f'<div role="img" aria-label="where it occurs" title="how often each grid cell holds this concept '
            f'(red: most often)" style="display:grid;grid-template-columns:repeat({w},{cell}px);'
            f'grid-auto-rows:{cell}px;width:{w * cell}px">{spans}</div>')


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _members(p: dict[str, Any]) -> str:
    return ("prototype " if len(p["members"]) == 1 else "prototypes ") + ", ".join(f"P{k}" for k in p["members"])


def _pictures(r: ReportInputs, p: dict[str, Any]) -> str:
    """The concept's gallery with its input footprint (receptive field) tinted."""
    if r.images_unavailable:
        return f'<div class="muted">{esc(r.images_unavailable)}</div>'
    if not p["gallery"]:
        return ""
    rows = np.asarray(p["gallery"], dtype=np.int64)
    images = r.images(rows)
    masks = np.stack([unpack_mask(f, images.shape[-2:]) for f in p["footprints"]])
    shots = tinted(images, masks)
    labels, index = r.read("labels")[rows], r.read("sample_index")[rows]
    return '<div class="patches">' + "".join(
        img(png_uri(s), f"concept C{p['id']} in a {r.names[y]} image", title=f"class {r.names[y]}, data set index {i}")
        for s, y, i in zip(shots, labels, index)) + "</div>"


def _facts(p: dict[str, Any], names: list[str]) -> str:
    d, t = p["deletion"] or {}, p["transplant"] or {}
    name = names[p["class"]]
    passed = ", ".join(k.replace("_", " ") for k, v in p["checks"].items() if v) or "none"
    rows: list[tuple[str, Any]] = [
        ("made of", _members(p)),
        ("class purity", f"{p['purity']:.0%} of the {p['samples']} samples holding it are {name} "
                         f"(lift over chance {p['lift']:.2f})"),
        ("where", f"concentration {p['concentration']:.2f} (1 = the same cells in every image), "
                  f"{p['cells_per_sample']:.1f} cells per image"),
    ]
    if t:
        rows.append(("pasting it", f"into {t['recipients']} held-out images of other classes: {_pct(t['flip_rate'])} "
                                   f"become {name}; random patches of the same shape: {_pct(t['random_flip_rate'])} "
                                   f"(z {t['flip_z']:.1f}, effect size {t['flip_effect_size']:.2f}); footprint "
                                   f"{t['pixels']:.0f} px"))
    elif p["checks"].get("paste", False) is None:
        rows.append(("pasting it", "not run: it fails an earlier test (class-tied, fixed in place)"))
    else:
        rows.append(("pasting it", "not measured: no donor of its class or no held-out image of another class"))
    if d.get("effect") is not None:
        rows.append(("deleting it", f"{name}'s margin drops by {_num(d['effect'])} in {d['class_samples']} {name} "
                                    f"images; random cells: {_num(d['random'])}; excess {_num(d['excess'])} "
                                    f"(z {d['z']:.1f}, effect size {d['effect_size']:.2f})"))
    not_run = [k.replace("_", " ") for k, v in p["checks"].items() if v is None]
    rows.append(("tests passed", passed + (f" (not run, after a failed test: {', '.join(not_run)})" if not_run else "")))
    return table(["", ""], rows, "facts")


def _passing_deletion(result: dict[str, Any]) -> int:
    """How many concepts pass the deletion test (when most do, its z does not single out a shortcut)."""
    return sum(bool(c["checks"].get("deletion")) for c in result["concepts"])


def _verdict_card(r: ReportInputs, result: dict[str, Any]) -> str:
    """One card: the verdict, and for a found shortcut its thumbnails, paste flip rate against random and deletion."""
    found = result["shortcut_found"]
    sentence = f'<p class="{"note" if found else ""}"><b>{shortcut_chip(found)} {esc(result["verdict"])}</b></p>'
    if not found:
        return f'<div class="ucard" id="reliance-verdict">{sentence}</div>'
    p = result["concepts"][result["suspect"]]
    t, d = p["transplant"], p["deletion"]
    figures = table(["", ""], [
        ("suspect", f"concept C{p['id']} ({_members(p)}) → {r.names[p['class']]}"),
        ("paste flip rate", f"{_pct(t['flip_rate'])} vs {_pct(t['random_flip_rate'])} for random patches "
                            f"(z {t['flip_z']:.1f}, effect size {t['flip_effect_size']:.2f})"),
        ("deletion effect", f"margin {_num(d['excess'])} lower than for random cells (z {d['z']:.1f}); a weak "
                            f"test: {_passing_deletion(result)} of the {len(result['concepts'])} concepts pass it"),
    ], "facts")
    return (f'<div class="ucard" id="reliance-verdict">{sentence}<div class="row"><div>'
            f'<div class="muted">its input footprint (tinted)</div>{_pictures(r, p)}</div>'
            f'<div style="flex:1;min-width:320px">{figures}</div></div></div>')


def _card(r: ReportInputs, rank: int, p: dict[str, Any]) -> str:
    title = f"#{rank} concept C{p['id']} " + str(chip(f"→ {r.names[p['class']]}", "warn" if all(p["checks"].values())
                                                     else ""))
    return (f'<div class="ucard" id="reliance-{p["id"]}"><h3>{title}</h3><div class="row">'
            f'<div><div class="muted">its input footprint (tinted) in typical images</div>{_pictures(r, p)}'
            f'<div class="muted">where it occurs</div>{location_grid(p["locations"])}</div>'
            f'<div style="flex:1;min-width:320px">{_facts(p, r.names)}</div></div></div>')


def _ranking_table(result: dict[str, Any], names: list[str]) -> str:
    rows = []
    for rank, c in enumerate(result["ranking"], start=1):
        p = result["concepts"][c]
        d, t = p["deletion"] or {}, p["transplant"] or {}
        rows.append((rank, f"C{c}", _members(p), names[p["class"]], _pct(p["purity"]), round(p["concentration"], 2),
                     f"{_pct(t.get('flip_rate'))} vs {_pct(t.get('random_flip_rate'))}" if t else None,
                     None if t.get("flip_z") is None else round(t["flip_z"], 1),
                     _num(d.get("excess")), None if d.get("z") is None else round(d["z"], 1),
                     "yes" if all(p["checks"].values()) else "no"))
    return table(["rank", "concept", "made of", "class", "purity", "concentration", "paste flips vs random",
                  "paste z", "deletion excess", "deletion z", "shortcut"], rows)


def reliance_section(r: ReportInputs) -> Section | None:
    """The verdict card, the top concepts (gallery with footprint, location map, interventions) and the ranking."""
    result = r.optional_json(RELIANCE)
    if result is None:
        return None
    intro = ("Which concepts the final model actually depends on, tested by intervention: pasting a concept's input "
             "footprint (its receptive field) into other classes' images against random patches of the same shape, "
             f"and deleting it at layer {result['layer']} against random cells. A concept is a group of prototypes "
             "that are one thing seen by neighbouring cells. Ranked by that causal evidence.")
    assign = r.read("analysis/assign")
    if result.get("assign_digest") != assign_digest(assign) or "concepts" not in result:
        return Section("reliance", TITLE, intro, "", [
            f"{RELIANCE} was computed for another analysis of this store (or by an older i2x); "
            f"rerun `i2x reliance {r.shown_dir}`."])
    top = [result["concepts"][c] for c in result["ranking"][: result["config"]["top"]]]
    cards = "".join(_card(r, i, p) for i, p in enumerate(top, start=1))
    method = table(["", ""], [
        ("shortcut rule", result["rule"]),
        ("concepts", result["concept_rule"]),
        ("paste footprint", result["footprint"]),
        ("deletion fill", result["fill"]),
        ("recipients", f"held-out split {result['held_out_split']}"),
        ("settings", ", ".join(f"{k} {v}" for k, v in result["config"].items())),
        ("tests run", ran_sentence(result)),
        ("checkpoint", f"{result['checkpoint']} ({result['seconds']:.1f} s)"),
    ], "facts")
    body = (_verdict_card(r, result) + _localisation(r, result) + cards +
            f"<details><summary>All {len(result['concepts'])} concepts, ranked</summary>"
            f"{_ranking_table(result, r.names)}</details><details><summary>How this was measured</summary>{method}"
            "</details>")
    return Section("reliance", TITLE, intro, Raw(body))


def _lead_mask(r: ReportInputs, result: dict[str, Any], k: int) -> str:
    """The lead concept's mask (the pixels most of its footprints agree on) over the mean of its carriers."""
    mask = concept_mask(r.out_dir, k)
    rows, _ = sample_masks(r.out_dir, k)
    pixels = result["localisation"]["masks"][str(k)]["pixels"]
    if r.images_unavailable or not len(rows):
        return f'<p class="muted">Its mask: {pixels} input pixels.</p>'
    mean = r.images(rows[:64]).mean(axis=0, keepdims=True)
    shot = tinted(mean, mask[None], size=2 * THUMB)[0]
    return (f'<div><div class="muted">its mask ({pixels} px) on the mean of the images holding it</div>'
            f'{img(png_uri(shot), f"the mask of concept {k}", title=result["localisation"]["mask_rule"])}</div>')


def _carriers(r: ReportInputs, result: dict[str, Any], samples: dict[str, Any] | None, k: int) -> str:
    """The analysed samples that carry concept k most strongly (worst offenders first), its mask tinted, and the
    retrieval's AUROC and AP where the data set knows which samples carry a planted answer."""
    entry = next((c for c in (samples or {}).get("concepts", []) if c["id"] == k), None)
    if entry is None:
        return ""
    ranked_rows = entry["splits"][samples["analysed_split"]]  # type: ignore[index]
    truth = "; ".join(f"{s}: AUROC {t['truth']['auroc']:.3f}, AP {t['truth']['ap']:.3f} ({t['truth']['carriers']} of "
                      f"{t['truth']['samples']} carry it)" for s, t in entry["splits"].items()
                      if (t.get("truth") or {}).get("auroc") is not None)
    note = (f'<p class="muted">Against the planted answer of this data set: {esc(truth)}.</p>' if truth else
            '<p class="muted">This data set does not say which samples carry the concept, so i2x cannot check the '
            'ranking: look at the images.</p>')
    top = ranked_rows["samples"][: result["config"]["gallery"] * 2]
    gallery = ""
    if not r.images_unavailable and top:
        rows, masks = sample_masks(r.out_dir, k)
        index = r.read("sample_index")
        row_of = {int(i): n for n, i in enumerate(index)}
        where = {int(row): n for n, row in enumerate(rows)}
        chosen = np.asarray([row_of[s["index"]] for s in top], dtype=np.int64)
        images = r.images(chosen)
        shown = np.stack([masks[where[c]] if c in where else np.zeros(images.shape[-2:], bool) for c in chosen])
        shots = tinted(images, shown)
        gallery = '<div class="patches">' + "".join(
            img(png_uri(shot), f"score {s['score']:.2f}, class {s['class_name']}",
                title=f"score {s['score']:.2f}, class {s['class_name']}, data set index {s['index']}")
            for shot, s in zip(shots, top)) + "</div>"
    return (f'<div><div class="muted">the {len(top)} samples of the analysed split that carry it most strongly '
            f'(worst offenders first; every score per split in {SHORTCUT_SAMPLES})</div>{gallery}{note}</div>')


#: a paste test's outcome (:func:`i2x.stages.revision.retest.outcome`) as a verb phrase
OUTCOME_WORDS = {"passes": "passes", "fails": "fails", "inconclusive": "is inconclusive", "not run": "could not run"}


def revised_words(method: str, stats: dict[str, Any], before: str, max_random_flip: float) -> str:
    """The models revised by ``method`` under the lead's paste test, in words: the flip rate against random patches'
    (with its 95% interval over seeds, or saying one seed gives none) and whether the test still passes, given its
    outcome ``before`` (on the final checkpoint)."""
    outcomes = stats["outcomes"]
    n = len(outcomes)
    flip = stats["flip_rate"]
    spread = (f" [{_pct(flip['ci'][0])}, {_pct(flip['ci'][1])}] over {n} seeds" if n > 1 and flip["ci"][0] is not None
              else " (1 seed: no interval)" if n == 1 else "")
    seeds = "" if n == 1 else f" in each of the {n} seeds"
    if set(outcomes) == {"fails"}:
        said = (f"no longer passes{'' if n == 1 else f' in any of the {n} seeds'}" if before == "passes"
                else "fails" + seeds)
    elif set(outcomes) == {"passes"}:
        said = ("still passes" if before == "passes" else "passes") + seeds
    elif len(set(outcomes)) == 1:
        said = OUTCOME_WORDS[outcomes[0]] + seeds
    else:
        said = ", ".join(f"{OUTCOME_WORDS[o]} in {outcomes.count(o)}" for o in OUTCOME_WORDS if o in outcomes) + \
            f" of {n} seeds"
    if "inconclusive" in outcomes:
        said += f" (random patches flip more than {max_random_flip:.0%} of the recipients: the test cannot isolate it)"
    return (f"After {method}, its paste flips {_pct(flip['mean'])}{spread} (random patches "
            f"{_pct(stats['random_flip_rate']['mean'])}): its paste test {said}.")


def _revised(r: ReportInputs, k: int) -> tuple[pd.DataFrame | None, str, str]:
    """The revised models' paste test of concept k (i2x finetune --fix), for the chart (one row per method and rate:
    mean and 95% interval over seeds), in words (HTML) and its rule; (None, "", "") when no revision of k recorded
    it."""
    paste = (revision_of(r, k) or {}).get("paste")
    if not paste or not paste.get("methods"):
        return None, "", ""
    rows = [(method, what, st[key]["mean"], *(st[key]["ci"] if len(st["outcomes"]) > 1 else (None, None)),
             len(st["outcomes"]))
            for method, st in paste["methods"].items()
            for what, key in (("its paste", "flip_rate"), ("random patches", "random_flip_rate"))]
    frame = pd.DataFrame(rows, columns=["method", "what", "rate", "low", "high", "seeds"])
    items = "".join(f"<li>{esc(revised_words(m, st, paste['before_outcome'], paste['max_random_flip']))}</li>"
                    for m, st in paste["methods"].items())
    b = paste["before"]
    text = (f'<p class="note">Revised from the final checkpoint (<a href="#{REVISION_ANCHOR}">the revision</a>), '
            f"where its paste flips {_pct(b['flip_rate'])} (random patches {_pct(b['random_flip_rate'])}) and its "
            f"paste test {OUTCOME_WORDS[paste['before_outcome']]}:</p><ul class=\"tight\">{items}</ul>")
    return frame, text, paste["rule"]


def _onset(r: ReportInputs, result: dict[str, Any]) -> str:
    """The lead concept's paste flip rate at every checkpoint and the checkpoint where its paste test first passes,
    then after each revision of it: whether revision undid it."""
    over = result["localisation"].get("over_training")
    if not over and not result["shortcut_found"]:
        return ('<p class="muted">No concept passes every test of a shortcut, so when one formed was not traced over '
                'the checkpoints.</p>')
    revised, after, revised_rule = _revised(r, result["localisation"]["suspects"][0])
    if not over:
        return ('<p class="muted">The lead concept was tested at the final checkpoint only (--final-only or a single '
                'checkpoint), so this report cannot say when it formed.</p>' + after)
    by_name = {c["name"]: t for t, c in enumerate(r.checkpoints)}
    rows = [(r.train_step(by_name[c["checkpoint"]]), c["checkpoint"], what, c[key] or 0.0)
            for c in over["checkpoints"] for what, key in (("its paste", "flip_rate"),
                                                           ("random patches", "random_flip_rate"))]
    frame = pd.DataFrame(rows, columns=["step", "checkpoint", "what", "rate"])
    onset = over["onset"]
    step = None if onset is None else r.train_step(by_name[onset])
    if onset is None:
        text = "Its paste test passes at no checkpoint."
    else:
        text = f"Its paste test first passes at checkpoint {esc(onset)} (step {step}): the shortcut formed there."
    caption = over["rule"] + ("" if revised is None else "; right, the models revised from the final checkpoint "
                              "(mean and 95% interval over seeds, none for one seed): " + revised_rule)
    return (f'<p class="note">{text}</p>' + r.charts.add("reliance-onset", paste_over_training(frame, step, revised),
                                                         export="reliance_onset.png", caption=caption) + after)


def _localisation(r: ReportInputs, result: dict[str, Any]) -> str:
    """Where the lead concept lies (its mask), which samples carry it, and when it formed."""
    loc = result.get("localisation")
    if not loc or not loc.get("suspects"):
        return ""
    k = loc["suspects"][0]
    name = "the suspect" if result["shortcut_found"] else "the lead concept (no shortcut)"
    samples = r.optional_json(SHORTCUT_SAMPLES)
    return (f'<div class="ucard" id="reliance-localisation"><h3>Where {name}, concept {k}, lies, who carries it, '
            f'when it formed</h3><div class="row">{_lead_mask(r, result, k)}{_carriers(r, result, samples, k)}</div>'
            f'{_onset(r, result)}</div>')
