"""The report's sections, one small builder each: ``builder(r: ReportInputs) -> Section | None``.

:data:`SECTIONS` lists them in page order. To add a section (e.g. faithfulness), write a builder
that reads its file with ``r.optional_json("faithfulness.json")``, returns None when that is
absent (the section is then skipped, or, wrapped in :func:`or_not_run`, said to be not run with the command that fills
it), adds charts with ``r.charts.add(name, chart)`` and escapes
every string with :func:`~i2x.report.page.esc` (or builds cells with :func:`~i2x.report.page.table`);
then append it to :data:`SECTIONS`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from i2x.reporting import charts
from i2x.reporting.images import jet, overlays, png_uri, resize, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, class_ref, esc, img, proto_ref, scrub_paths, shown_path, table
from i2x.reporting.sections.evidence import evidence_section
from i2x.reporting.sections.benchmark import benchmark_section
from i2x.reporting.sections.reliance import reliance_section
from i2x.reporting.sections.studies import drift_section, faithfulness_section
from i2x.reporting.sections.verdict import verdict_section

SectionBuilder = Callable[[ReportInputs], "Section | None"]

THRESHOLD_HELP = {
    "shared_presence": "shared: present in at least this share of the class's samples",
    "specialized_presence": "specialized: present in at least this share of one group's class samples",
    "specialized_max_overall": "specialized: present in fewer than this share of all the class's samples",
    "min_group_samples": "specialized: a group needs at least this many samples of the class",
    "noise_quantile": "uncertain: quantile of |β| taken as the noise floor",
    "noise_floor": "uncertain: |β| (|margin| with two classes) must exceed this (the quantile above)",
    "min_flips": "uncertain: flips between the same two classes",
    "top_confused": "most confused class pairs checked against",
    "significance_level": "uncertain: level of the β intervals a flip must clear at both its ends",
    "null_runs": "uncertain: runs of the null model (confidence changes permuted across samples)",
    "fdr": "uncertain: significant when the Benjamini-Hochberg q is at most this",
    "min_cluster_size": "HDBSCAN minimum group size",
    "curation_min_share": "curation: a sample is excluded if the prototype covers this share of its locations",
}

MAX_FILM_COLUMNS = 12
MAX_UNCERTAIN_CARDS = 8
MAX_CARTOGRAPHY_POINTS = 5000
MAX_HEATMAP_CELLS = 60_000  # β rows (step x prototype x class) embedded for the slider


def _chips(r: ReportInputs, ids: list[int], kind: str) -> Raw:
    """Classes as chips linked to their rows in the class structure section, or a muted 'none'."""
    return Raw("".join(class_ref(i, r.names[i], kind) for i in ids) or '<span class="muted">none</span>')


def _ids(ks: list[int], kind: str) -> Raw:
    """Prototype ids as chips (P3, P17) linked to their cards, or a muted 'none'."""
    return Raw("".join(proto_ref(k, kind) for k in ks) or '<span class="muted">none</span>')


def _patch_imgs(r: ReportInputs, k: int) -> str:
    patches = r.prototype_patches.get(k, [])
    if not patches:
        return '<div class="muted">no example patch</div>'
    return '<div class="patches">' + "".join(
        img(p.uri, f"prototype {k}, sample {p.sample}",
            title=f"data set index {p.sample}, class {r.names[p.label]}, final CAM {p.cam:.3g}")
        for p in patches) + "</div>"


def _groups_fact(s: dict) -> str:
    """How HDBSCAN ran: on every sample, or on a seeded subset with the rest predicted."""
    g, n = s["groups"], s["n_samples"]
    text = f"HDBSCAN on ΔŶ per step, min_cluster_size {g['min_cluster_size']}, min_samples {g['min_samples']}"
    fit = g.get("fit_samples", n)
    if fit < n:
        text += (f"; fitted on a seeded sample of {fit:,} of the {n:,} samples (min_cluster_size "
                 f"{g['fit_min_cluster_size']} there), the others labelled by hdbscan.approximate_predict")
    return text


# ---- 1. overview -----------------------------------------------------------------------------
def overview(r: ReportInputs) -> Section:
    s, names, ckpts = r.summary, r.names, r.checkpoints
    km = s["kmeans"]
    h, w = r.store.grid
    size = r.input_size
    cell = f", one cell ≈ {size[0] / h:.3g} x {size[1] / w:.3g} px of the input" if size else ""
    facts = [
        ("Data", f"{shown_path(s['data'], r.out_dir)} (split {s['split']}, {s['n_samples']} samples, {len(names)} classes)"),
        ("Input size", f"{size[0]} x {size[1]} px" if size else "the data set's default"),
        ("Model", shown_path(s["model"], r.out_dir)),
        ("Target layer and grid", f"{s['layer']}: {h} x {w}{cell}"),
        ("CAM target", f"{s['target']} class; maps stored: {', '.join(s['methods_stored'])}; analysed: {s['method']}"),
        ("Prototypes", f"K = {s['k']} (asked {s['k_requested']}), PCA to {s['pca_dim']} dims "
                       f"({s['pca_explained_variance']:.1%} of the variance), FAISS k-means on {km['fit_vectors']} "
                       f"vectors, max {km['max_points_per_centroid']} points per centroid, seed {km['seed']}"),
        ("Checkpoints", f"{len(ckpts)} ({len(s['diverged'])} diverged), {len(s['steps'])} steps between usable ones"),
        ("Confidence groups", _groups_fact(s)),
    ]
    parts = []
    if s["warnings"] or s["diverged"]:
        items = [chip("diverged", "warn") + esc(f" {name}: its weights hold NaN/Inf; left out of every step")
                 for name in s["diverged"]] + [chip("warning", "warn") + " " + esc(scrub_paths(w, r.out_dir))
                                               for w in s["warnings"]]
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    steps = [r.train_step(t) for t in range(len(ckpts))]
    curves = charts.accuracy_loss(steps, [c["name"] for c in ckpts], s["accuracy"], s["loss"])
    matrix = charts.confusion_heatmap(np.asarray(s["final_confusion"]), names, f"Confusion at {ckpts[r.final]['name']}")
    parts.append('<div class="row">' + r.charts.add("accuracy", curves, export="accuracy_loss.png")
                 + r.charts.add("confusion", matrix, export="confusion.png") + "</div>")
    diverged = set(s["diverged"])
    rows = [(i, c["name"], steps[i], s["accuracy"][i], s["loss"][i],
             chip("diverged", "warn") if c["name"] in diverged else "ok") for i, c in enumerate(ckpts)]
    ck_table = table(["#", "checkpoint", "training step", "accuracy", "loss", "status"], rows, "sortable")
    parts.append(f"<details{' open' if len(rows) <= 12 else ''}><summary>Checkpoints</summary>{ck_table}</details>")
    pairs = [(Raw(f"{class_ref(a, names[a])} ↔ {class_ref(b, names[b])}"), p["count"])
             for p in s["top_confused_pairs"] for a, b in [p["classes"]]]
    parts.append("<h3>Most confused pairs (final checkpoint)</h3>" + (
        table(["pair", "confusions (both ways)"], pairs) if pairs
        else '<p class="muted">none: no sample is misclassified</p>'))
    thresholds = [(k, v, THRESHOLD_HELP.get(k, "")) for k, v in s["thresholds"].items()]
    parts.append("<h3>Settings</h3>" + table(None, facts, "facts"))
    parts.append("<h3>Thresholds used</h3>" + table(["setting", "value", "meaning"], thresholds))
    return Section("overview", "Overview", "How well the model did and what was analysed: accuracy and loss along "
                   "training, the final confusions, the checkpoints, then the data, model, layer and every threshold used.",
                   "".join(parts))


# ---- 2. prototypes -----------------------------------------------------------------------------
def prototypes(r: ReportInputs) -> Section:
    names = r.names
    uncertain = {u["prototype"]: u for u in r.summary["uncertain"]}
    cards = []
    for p in r.summary["prototypes"]:
        k = p["id"]
        roles = chip("shared", "shared") if p["shared_for"] else ""
        roles += chip("specialized", "specialized") if p["specialized_for"] else ""
        if k in uncertain:
            a, b = uncertain[k]["classes"]
            roles += (chip("uncertain", "uncertain") + class_ref(a, names[a], "uncertain") + "↔"
                      + class_ref(b, names[b], "uncertain"))
        bars = "".join(f'<span class="{"on" if c in p["shared_for"] else ""}" style="height:{max(v, 0.0) * 100:.0f}%" '
                       f'title="{esc(names[c])}: present in {v:.0%} of its samples"></span>'
                       for c, v in enumerate(p["presence"]))
        labels = "".join(f"<span>{esc(n)}</span>" for n in names) if len(names) <= 20 else ""
        supports = []
        if p["shared_for"]:
            supports.append("shared by " + _chips(r, p["shared_for"], "shared"))
        if p["specialized_for"]:
            supports.append("specialized for " + _chips(r, p["specialized_for"], "specialized"))
        cards.append(
            f'<div class="card" id="prototype-{k}"><h4>Prototype {k}</h4><div>{roles}</div>'
            f'<div class="meta">{p["size"]} grid cells in {p["samples"]} samples</div>{_patch_imgs(r, k)}'
            f'<div class="meta">{"; ".join(supports) or "supports no class as shared or specialized"}</div>'
            f'<div class="bars">{bars}</div><div class="barlabels">{labels}</div></div>')
    notes = [f"Input images unavailable, so no patches: {r.images_unavailable}"] if r.images_unavailable else []
    return Section("prototypes", "Prototypes",
                   "Each prototype is a cluster of the final model's features at single grid cells. The patches are "
                   "the input around the cell (outlined) where the prototype is assigned and the final CAM is "
                   "strongest; the bars show in what share of each class's samples it occurs (green: shared for "
                   "that class).", '<div class="gallery">' + "".join(cards) + "</div>", notes)


# ---- 3. class structure ------------------------------------------------------------------------
def class_structure(r: ReportInputs) -> Section:
    names, s = r.names, r.summary
    labels = r.read("labels")
    conf = np.asarray(s["final_confusion"])
    recall = np.divide(np.diag(conf), conf.sum(axis=1), out=np.full(len(names), np.nan), where=conf.sum(axis=1) > 0)
    shared = {c: [] for c in range(len(names))}
    special = {c: [] for c in range(len(names))}
    for p in s["prototypes"]:
        for c in p["shared_for"]:
            shared[c].append(p["id"])
        for c in p["specialized_for"]:
            special[c].append(p["id"])
    off = conf - np.diag(np.diag(conf))
    rows = []
    for c, name in enumerate(names):
        other = int(np.argmax(off[c])) if off[c].max() > 0 else None
        worst = Raw(f"{class_ref(other, names[other])} ({off[c, other]}x)") if other is not None else None
        rows.append((Raw(f'<span id="class-{c}">{esc(name)}</span>'), int((labels == c).sum()), None if np.isnan(recall[c]) else float(recall[c]),
                     _ids(shared[c], "shared"), _ids(special[c], "specialized"),
                     worst))
    body = table(["class", "samples", "final recall", "shared prototypes", "specialized prototypes",
                  "most often taken for"], rows, "sortable")
    beta = r.read("analysis/beta")
    frame = [{"class": names[c], "prototype": f"P{k}", "role": role, "train_step": r.train_step(b),
              "between": r.step_label(i), "beta": round(float(beta[i, k, c]), 5)}
             for c in range(len(names)) for role, ks in (("shared", shared[c]), ("specialized", special[c]))
             for k in ks for i, (_a, b) in enumerate(r.steps)]
    notes = []
    if frame:
        body += r.charts.add("class-beta", charts.class_betas(pd.DataFrame(frame), names), export="class_structure.png",
                             caption="Pick a class: lines are its shared (solid) and specialized (dashed) prototypes; "
                                     "β > 0 means a rise in the prototype's intensity raised the class's confidence.")
    else:
        notes.append("No class has a shared or specialized prototype under the thresholds used; lower "
                     "--shared-presence or --specialized-presence to see more.")
    return Section("classes", "Class structure",
                   "Which prototypes each class relies on: shared ones (in nearly all of the class's samples, pushing "
                   "its confidence up over training) and specialized ones (typical of one group of the class only), "
                   "and how their pull toward the class (β) developed.", body, notes)


# ---- 4. training dynamics ----------------------------------------------------------------------
def dynamics(r: ReportInputs) -> Section:
    names, s = r.names, r.summary
    beta = r.read("analysis/beta")
    shown = _even(beta.shape[0], max(2, MAX_HEATMAP_CELLS // (beta.shape[1] * beta.shape[2])))
    labels_step = [r.step_label(int(i)) for i in shown]
    initial = charts.strongest_step(beta[shown])
    caption = (f"Move the slider to walk through training; it opens on the step with the largest |β| "
               f"({labels_step[initial]}). Colours share one scale across steps.")
    limit, capped = charts.beta_limit(beta[shown])
    if capped:
        caption += (f" The scale is capped at ±{limit:.3g} (the 95th percentile of |β|) while β reaches "
                    f"±{float(np.abs(beta[shown]).max()):.3g}: cells beyond show the end colours; hover for values.")
    if shown.size < beta.shape[0]:
        caption += f" {shown.size} of the {beta.shape[0]} steps, evenly spaced, are shown."
    heat = r.charts.add("beta", charts.beta_slider(beta[shown], names, labels_step, initial=initial),
                        export="beta_heatmap.png", caption=caption)
    groups = r.charts.add("groups", charts.group_sizes(_group_frame(r), names), export="groups.png",
                          caption="Each segment is one group of samples whose confidences changed alike in that "
                                  "step, coloured by its main class (mixed: none above half; grey: noise).")
    carto = r.charts.add("cartography", charts.cartography(_cartography_frame(r), names), export="cartography.png",
                         caption=_cartography_caption(s["cartography"]))
    parts = [f'<div class="row">{heat}{groups}</div>', f'<h3>How each sample was learned</h3>{carto}']
    return Section("dynamics", "Training dynamics",
                   "How the evidence moved during training: the ridge map β from prototype-intensity changes to "
                   "confidence changes at each step, the groups of samples that changed together, and each sample's "
                   "learning trajectory (dataset cartography).", "".join(parts))


def _even(n: int, at_most: int) -> np.ndarray:
    """Up to ``at_most`` evenly spaced indices of ``range(n)``, always with the first and the last."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, at_most)).astype(int))


def _group_frame(r: ReportInputs) -> pd.DataFrame:
    groups, labels = r.read("analysis/groups"), r.read("labels")
    m, r2 = len(r.names), r.summary["mapping"]["r2"]
    rows = []
    for i, row in enumerate(groups):  # one iteration per step (few): group sizes and main class
        ids = np.unique(row)
        counts = np.bincount(np.searchsorted(ids, row) * m + labels, minlength=ids.size * m).reshape(ids.size, m)
        sizes = counts.sum(axis=1)
        for rank, j in enumerate(np.argsort(-sizes, kind="stable")):
            main, share = r.names[int(counts[j].argmax())], float(counts[j].max() / sizes[j])
            colour = "noise" if ids[j] < 0 else (main if share > 0.5 else "mixed")
            rows.append({"s": i, "between": r.step_label(i), "group": "noise" if ids[j] < 0 else str(ids[j]),
                         "colour": colour, "size": int(sizes[j]), "rank": rank, "main_class": main,
                         "main_share": share, "r2": r2[i]})
    return pd.DataFrame(rows)


def _cartography_frame(r: ReportInputs) -> pd.DataFrame:
    labels = r.read("labels")
    frame = pd.DataFrame({
        "row": np.arange(labels.size), "sample": r.read("sample_index"),
        "class": np.asarray(r.names, dtype=object)[labels],
        **{key: r.read(f"analysis/{key}").round(4) for key in ("confidence", "variability", "correctness")},
        "forgetting": r.read("analysis/forgetting")})
    if len(frame) > MAX_CARTOGRAPHY_POINTS:
        frame = frame.sample(MAX_CARTOGRAPHY_POINTS, random_state=0).sort_values("row")
    return frame


def _cartography_caption(c: dict[str, Any]) -> str:
    reg = c["regions"]
    shown = f" ({MAX_CARTOGRAPHY_POINTS} shown)" if c["n"] > MAX_CARTOGRAPHY_POINTS else ""
    return (f"{c['n']} samples{shown}: {reg['easy']} easy, {reg['ambiguous']} ambiguous (variability ≥ "
            f"{c['cutoffs']['variability']}), {reg['hard']} hard; {c['forgotten_at_least_once']} forgotten at "
            "least once.")


# ---- 5. uncertain prototypes -------------------------------------------------------------------
def uncertain(r: ReportInputs) -> Section:
    names, s = r.names, r.summary
    found = s["uncertain"]
    intro = ("Prototypes whose strongest class flips back and forth between the same two classes during training: "
             "evidence the model has not settled, and the candidates for curated fine-tuning.")
    th = s["thresholds"]
    c = s.get("uncertainty")
    if c and c["view"] == "margin":
        intro += (" With two classes the two confidences move in opposite directions (their changes sum to zero), so "
                  f"each prototype has one coefficient: the margin β({names[1]}) − β({names[0]}); it favours "
                  f"{names[1]} when positive, and a flip is a reversal of its sign.")
    head = _significance_head(c, len(r.summary["prototypes"])) if c else ""
    if not found:
        body = head + (f"<p><b>No uncertain prototype was found.</b> No prototype's strongest class flipped between the same "
                f"two classes at least {esc(th['min_flips'])} times with β above the noise floor "
                f"({th['noise_floor']:.3g}, the {esc(th['noise_quantile'])} quantile of |β|).</p>"
                "<p>To look closer: keep more checkpoints (save more often, or drop <code>--every</code>), lower the "
                "floor with <code>--noise-quantile 0.5</code>, accept single flips with <code>--min-flips 1</code>, or "
                "try another <code>--k</code>.</p>")
        return Section("uncertain", "Uncertain prototypes", intro, body)
    shown = found[:MAX_UNCERTAIN_CARDS]
    betas, pairs, flips = _uncertain_frames(r, shown)
    spec = charts.to_spec(charts.uncertain_trajectory(betas, pairs, th["noise_floor"], flips,
                                                      first=shown[0]["prototype"]))
    cards = []
    for u in shown:
        k, (a, b) = u["prototype"], u["classes"]
        chart = r.charts.add(f"uncertain-{k}", charts.with_param(spec, "proto", k, rows_key="prototype"))
        presence = r.summary["prototypes"][k]["presence"]
        flip_at = [r.train_step(r.steps[i][1]) for i in u["flip_steps"]]
        evidence = [] if "significant" not in u else [
            ("beyond noise", Raw(chip("significant", "shared") if u["significant"] else chip("not significant", "warn"))),
            ("significant flips", f"{u['significant_flips']}" + (
                f" ({names[u['significant_classes'][0]]} ↔ {names[u['significant_classes'][1]]})"
                if u["significant_classes"] else "") + f": the leading class's {c['level']:.0%} interval excludes "
                "the runner-up's β at both ends"),
            ("p / q (false discovery)", f"{u['p']:.3g} / {u['q']:.3g}"),
        ] + ([("found by", "the intervals only: its β stays below the noise floor, but is well determined")]
             if u.get("below_noise_floor") else [])
        facts = table(None, [
            ("flips", f"{u['flips']}, at training steps {', '.join(str(x) for x in flip_at)}"),
            *evidence,
            ("score", f"{u['score']:.3g}"),
            ("among the most confused pairs", "yes" if u["in_top_confused"] else "no"),
            ("present in", f"{presence[a]:.0%} of class {names[a]} and {presence[b]:.0%} of class {names[b]} samples"),
            ("curation would exclude", f"{u['curation_excludes']} training samples of {names[a]} or {names[b]} "
                                       f"where it covers ≥ {th['curation_min_share']:.0%} of the locations"),
        ], "facts")
        faded = ' style="opacity:0.6"' if u.get("significant") is False else ""
        cards.append(f'<div class="ucard" id="uncertain-{k}"{faded}><h3><a href="#prototype-{k}">Prototype {k}</a>: '
                     f'{class_ref(a, names[a], "uncertain")} ↔ {class_ref(b, names[b], "uncertain")}</h3>'
                     f'<div class="row"><div class="ufacts">{facts}{_patch_imgs(r, k)}</div>{chart}</div></div>')
    more = len(found) - len(shown)
    notes = [f"The {len(shown)} strongest are shown; {more} more are listed in summary.json."] if more else []
    return Section("uncertain", "Uncertain prototypes", intro, head + "".join(cards), notes)


def _significance_head(c: dict[str, Any], k: int) -> str:
    """Flagged versus expected by chance, and the rule that makes a flip significant."""
    e, es = c["expected_flagged"], c["expected_significant"]
    if c["null_runs"]:
        chance = (f"chance alone flags {e['mean']:.3g} ± {e['sd'] if e['sd'] is not None else 0:.2g} "
                  f"and {es['mean']:.3g} ± {es['sd'] if es['sd'] is not None else 0:.2g} significant "
                  f"(mean ± sd over {c['null_runs']} runs of the null model: the same analysis with each step's "
                  "confidence changes shuffled across samples)")
    else:
        chance = "the null model was not run (--null-runs 0), so no count expected by chance is known"
    return (f"<p><b>{c['flagged']} of {k} prototypes flagged by the flip rule (noise floor), {c['significant']} "
            "significant</b>; "
            f"{esc(chance)}.</p><p class=\"muted\">A step counts when the {c['level']:.0%} interval of the leading "
            f"class's β minus the runner-up's (ridge standard errors at the step's penalty) lies above 0; a significant "
            f"flip is a change of the leading class between counted steps, so at both of its ends the interval "
            f"excludes the other class's β. A prototype is significant with at least --min-flips significant flips "
            f"between one pair and a false discovery estimate q (Benjamini-Hochberg over the prototypes, p from the "
            f"null runs) of at most {c['fdr']:g}. Faded cards are not significant: their flips are within what noise "
            f"produces; curation uses significant prototypes only unless asked (<code>i2x finetune --all-uncertain</code>).</p>")


def _uncertain_frames(r: ReportInputs, shown: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """β toward a and b per step, the pair's confusions per usable checkpoint, and the flip steps, for every shown
    uncertain prototype (column ``prototype``)."""
    beta, conf = r.read("analysis/beta"), r.read("analysis/confusion")
    usable = np.flatnonzero(r.read("finite").astype(bool))
    evidence = r.summary.get("uncertainty")
    half = evidence["z"] * r.read("analysis/beta_se") if evidence and r.store.has("analysis/beta_se") else None
    betas, pairs, flips = [], [], []
    for u in shown:
        k, (a, b) = u["prototype"], u["classes"]
        betas += [{"prototype": k, "train_step": r.train_step(t1), "between": r.step_label(i), "slot": slot,
                   "toward": r.names[c], "beta": round(float(beta[i, k, c]), 5),
                   **({} if half is None else {"low": round(float(beta[i, k, c] - half[i, k, c]), 5),
                                               "high": round(float(beta[i, k, c] + half[i, k, c]), 5)})}
                  for i, (_t0, t1) in enumerate(r.steps) for slot, c in (("a", a), ("b", b))]
        counts = conf[usable, a, b] + conf[usable, b, a]
        pairs += [{"prototype": k, "train_step": r.train_step(t), "checkpoint": r.checkpoints[t]["name"],
                   "count": int(c)} for t, c in zip(usable, counts)]
        flips += [{"prototype": k, "train_step": r.train_step(r.steps[i][1]), "between": r.step_label(i)}
                  for i in u["flip_steps"]]
    return pd.DataFrame(betas), pd.DataFrame(pairs), pd.DataFrame(flips)


# ---- 6. CAM film strips ------------------------------------------------------------------------
def film_strips(r: ReportInputs) -> Section:
    intro = (f"{r.method} maps at every checkpoint, side by side, for typical and hard samples of each class and the "
             "most confused ones: where the model looked as it learned. Each frame is scaled to its own range for "
             "display; its caption gives the prediction, p(true class) and the raw peak, which is what I2X tracks.")
    if r.images_unavailable:
        return Section("films", "CAM film strips", intro, "", [f"Input images unavailable: {r.images_unavailable}"])
    rows, why = _film_rows(r)
    n_checkpoints = len(r.checkpoints)
    cols = _even(n_checkpoints, MAX_FILM_COLUMNS)
    order = np.argsort(rows)
    sorted_rows = rows[order]
    cam = r.store.cam(r.method).get_orthogonal_selection((cols, sorted_rows))
    probs = r.store.array("probs").get_orthogonal_selection((cols, sorted_rows))
    back = np.argsort(order)
    cam, probs = cam[:, back], probs[:, back]
    images = r.images(rows)
    frames = overlays(images, cam, size=64)
    inputs = to_rgb(resize(images, 64))
    labels, index = r.read("labels")[rows], r.read("sample_index")[rows]
    usable = r.read("finite")[cols].astype(bool)
    frames[~usable] = 200  # diverged checkpoints: grey frames
    peaks = np.where(usable[:, None], np.nan_to_num(cam).max(axis=(2, 3)), np.nan)
    pred = np.nan_to_num(probs).argmax(axis=2)
    p_true = probs[:, np.arange(rows.size), labels]
    head = "<th></th><th>input</th>" + "".join(
        f'<th title="{esc(r.checkpoints[t]["name"])}">step {r.train_step(t)}</th>' for t in cols)
    body = []
    for j in range(rows.size):  # one table row per shown sample (a handful)
        cells = []
        for i, t in enumerate(cols):
            wrong = pred[i, j] != labels[j]
            cap = (f'<div class="cap{" wrong" if wrong else ""}">→ {esc(r.names[pred[i, j]])} · '
                   f'p {p_true[i, j]:.2f}</div><div class="cap">peak {peaks[i, j]:.2g}</div>' if usable[i]
                   else '<div class="cap wrong">diverged</div>')
            alt_text = "CAM at " + r.checkpoints[t]["name"]
            cells.append(f"<td>{img(png_uri(frames[i, j]), alt_text)}{cap}</td>")
        who = (f'<td class="who">{class_ref(int(labels[j]), r.names[labels[j]])}<br>{esc(why[j])}<br>'
               f'<span class="muted">data set index {index[j]}</span></td>')
        picture = f"<td>{img(png_uri(inputs[j]), 'input image')}</td>"
        body.append("<tr>" + who + picture + "".join(cells) + "</tr>")
    legend = png_uri(jet(np.tile(np.linspace(0, 1, 140), (10, 1))))
    notes = [f"{n_checkpoints} checkpoints; {cols.size} evenly spaced ones shown."] if cols.size < n_checkpoints else []
    scale = (f'<p class="muted">low {img(legend, "colour scale", "legend-bar")} high '
             f"(per frame); the cell grid is {r.store.grid[0]} x {r.store.grid[1]}.</p>")
    return Section("films", "CAM film strips", intro,
                   scale + f'<div style="overflow-x:auto"><table class="film"><thead><tr>{head}</tr></thead>'
                   f'<tbody>{"".join(body)}</tbody></table></div>', notes)


def _film_rows(r: ReportInputs, per_class: int = 2, confused: int = 6) -> tuple[np.ndarray, list[str]]:
    """Store rows for the film strips with why each was picked: per class the most confident and the most variable
    sample, then the samples with the lowest final p(true class)."""
    labels = r.read("labels")
    conf_, var_ = r.read("analysis/confidence"), r.read("analysis/variability")
    m = len(r.names)
    classes = np.arange(min(m, 20))
    picks: list[tuple[int, int, str]] = []  # (sort key, row, why)
    for rank, (key, why) in enumerate(((-conf_, "most confident"), (-var_, "most variable"))[:per_class]):
        order = np.lexsort((key, labels))
        pos = np.searchsorted(labels[order], classes)
        has = (pos < order.size) & (labels[order][np.minimum(pos, order.size - 1)] == classes)
        picks += [(int(c) * per_class + rank, int(order[p]), why) for c, p in zip(classes[has], pos[has])]
    final = np.asarray(r.store.array("probs")[r.final])
    p_final = final[np.arange(labels.size), labels]
    wrong = final.argmax(axis=1) != labels
    for i in np.argsort(p_final, kind="stable")[:confused]:
        picks.append((m * per_class, int(i), "misclassified" if wrong[i] else "least confident at the end"))
    seen: dict[int, str] = {}
    for _key, i, why in sorted(picks, key=lambda p: p[0]):
        seen.setdefault(i, why)
    return np.array(list(seen), dtype=np.int64), list(seen.values())


# ---- studies that were not run -----------------------------------------------------------------
@dataclass(frozen=True)
class Study:
    """A study's section as the page shows it before the study ran: what it answers and the command that fills it."""

    id: str
    title: str
    command: str
    question: str


STUDIES = {
    "reliance": Study("reliance", "Reliance", "reliance", "Does the final model depend on a shortcut: a prototype tied "
                      "to one class in fixed places, tested by deleting and transplanting it?"),
    "faithfulness": Study("faithfulness", "Faithfulness", "faithfulness", "Do the CAMs point at what the model uses: "
                          "does deleting the pixels they rank first lower the confidence faster than a random order?"),
    "drift": Study("drift", "Semantic drift", "drift", "How far do the maps move between two checkpoints or training "
                   "phases, per class and per method?"),
    "evidence": Study("evidence", "Minimal evidence", "evidence", "What is the smallest part of an image that keeps "
                      "the model's decision, and does the CAM cover it?"),
    "benchmark": Study("benchmark", "Attribution benchmark", "benchmark", "Which CAM method is faithful, robust and "
                       "sane at each checkpoint?"),
}


def or_not_run(builder: SectionBuilder, study: Study) -> SectionBuilder:
    """``builder``, but where it returns None (its study's file is absent) a section saying "not run" and the command
    that fills it, so a reader sees every study and what is missing."""

    @functools.wraps(builder)
    def build(r: ReportInputs) -> Section:
        section = builder(r)
        if section is not None:
            return section
        command = f"i2x {study.command} {r.shown_dir}"
        return Section(study.id, f"{study.title}: not run", study.question,
                       f'<p><b>Not run.</b> Run <code>{esc(command)}</code> in the folder that holds the analysis '
                       f'directory, then rebuild this page with <code>{esc(f"i2x report {r.shown_dir}")}</code>.</p>')

    return build


SECTIONS: list[SectionBuilder] = [verdict_section, overview, or_not_run(reliance_section, STUDIES["reliance"]), prototypes,
                                  class_structure, dynamics, uncertain, film_strips,
                                  or_not_run(faithfulness_section, STUDIES["faithfulness"]),
                                  or_not_run(drift_section, STUDIES["drift"]),
                                  or_not_run(evidence_section, STUDIES["evidence"]),
                                  or_not_run(benchmark_section, STUDIES["benchmark"])]
