"""The sections of the two-run comparison page (``i2x compare A B``): the verdicts side by side, the suspect
concepts, the prototype galleries paired by similarity and the shared samples. Prototype cards carry the ids
``A-prototype-k`` and ``B-prototype-k``, so every mention links to its card."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from i2x.reporting.charts import ChartSet, accuracy_of_runs
from i2x.reporting.images import overlays, png_uri, resize, to_rgb
from i2x.reporting.page import Raw, Section, chip, esc, img, shortcut_chip, shown_path, table
from i2x.reporting.pairing import Run, RunPair, agreement
from i2x.reporting.sections.prototypes import card_filter, prototype_card
from i2x.stages.analyze.uncertainty import summary_sentence

MAX_DISAGREEMENTS = 8


def ref(run: Run, k: int, kind: str = "") -> Raw:
    """A link to prototype ``k`` of ``run`` (chip "A·P3")."""
    return Raw(f'<a class="ref" href="#{run.letter}-prototype-{int(k)}">{chip(f"{run.letter}·P{int(k)}", kind)}</a>')


def _partner(pair: RunPair, run: Run, k: int) -> Raw:
    other = pair.b if run is pair.a else pair.a
    found = pair.partner(run.letter, k)
    if found is None:
        return Raw('<span class="muted">unpaired</span>')
    j, s = found
    return Raw(f"{ref(other, j)} <span class=\"muted\">similarity {s:.2f}</span>")


def _accuracy(run: Run) -> str:
    acc = [a for a in run.r.summary["accuracy"] if a is not None]
    return f"{acc[0]:.1%} → {acc[-1]:.1%}" if acc else "no usable checkpoint"


def _shortcut(pair: RunPair, run: Run) -> Raw:
    entry = run.r.summary.get("reliance")
    if not entry:
        return Raw(f'<span class="muted">not run</span>: <code>{esc(f"i2x reliance {run.r.shown_dir}")}</code>')
    return Raw(f"{shortcut_chip(bool(entry.get('shortcut_found')))} {esc(entry.get('verdict', ''))}")


def _uncertain(run: Run, shown: int = 6) -> Raw:
    found = run.r.summary["uncertain"]
    if not found:
        return Raw(f'<span class="muted">none</span> ({esc(summary_sentence(run.r.summary))})')
    names = run.r.names
    more = f' <span class="muted">and {len(found) - shown} more</span>' if len(found) > shown else ""
    return Raw(f"{esc(summary_sentence(run.r.summary))}: " + " ".join(
        f"{ref(run, u['prototype'], 'uncertain')} {esc(names[u['classes'][0]])} ↔ {esc(names[u['classes'][1]])}"
        for u in found[:shown]) + more)


def side_by_side(pair: RunPair, charts: ChartSet) -> Section:
    """The verdict of each run, one column each, and both accuracy curves in one chart."""
    rows: list[list[Any]] = []
    for label, fact in (("Model", lambda u: shown_path(u.r.summary["model"], u.r.out_dir)),
                        ("Data", lambda u: f"{shown_path(u.r.summary['data'], u.r.out_dir)} ({u.r.summary['split']})"),
                        ("Accuracy, first → final", _accuracy),
                        ("Shortcut", lambda u: _shortcut(pair, u)),
                        ("Uncertain prototypes", _uncertain),
                        ("Prototypes", lambda u: f"K = {u.r.summary['k']} at layer {u.r.summary['layer']}"),
                        ("Checkpoints", lambda u: len(u.r.checkpoints))):
        rows.append([label, fact(pair.a), fact(pair.b)])
    head = ["", f"A: {pair.a.name}", f"B: {pair.b.name}"]
    longer = max((pair.a, pair.b), key=lambda u: len(u.r.names)).r.names
    classes = ", ".join(f'<span id="class-{c}">{esc(n)}</span>' for c, n in enumerate(longer))
    labels = [f"A: {pair.a.name}", f"B: {pair.b.name}"]
    frame = pd.DataFrame([{"run": label, "step": u.r.train_step(t), "checkpoint": c["name"], "accuracy": acc}
                          for label, u in zip(labels, pair.runs)
                          for t, (c, acc) in enumerate(zip(u.r.checkpoints, u.r.summary["accuracy"]))])
    chart = charts.add("accuracy", accuracy_of_runs(frame, labels),
                       caption="Accuracy of each run's analysed split at every checkpoint.")
    return Section("verdict", "Side by side", "Each run's verdict and accuracy, A on the left, B on the right.",
                   f'<div class="verdict">{table(head, rows, "facts")}</div><p class="muted">Classes: {classes}</p>'
                   + chart, pair.notes)


def _concepts(pair: RunPair, run: Run) -> str:
    """The reliance study's leading concepts and the uncertain prototypes of ``run``, each prototype once with its
    partner."""
    entry, names, items, seen = run.r.summary.get("reliance") or {}, run.r.names, [], set()
    for c in (entry.get("concepts") or [])[:3]:
        members = c.get("members") or [c.get("id")]
        label = chip("suspect", "warn") if c.get("id") == entry.get("suspect") else ""
        cls = c.get("class")
        for k in members:
            if k in seen:
                continue
            seen.add(k)
            items.append([Raw(ref(run, k) + label), f"reliance: C{c.get('id')}, tied to "
                          + (names[cls] if isinstance(cls, int) else str(c.get("class_name", "?"))), _partner(pair, run, k)])
    for u in run.r.summary["uncertain"]:
        a, b = u["classes"]
        items.append([ref(run, u["prototype"], "uncertain"), f"uncertain: {names[a]} ↔ {names[b]}",
                      _partner(pair, run, u["prototype"])])
    if not items:
        return f'<p class="muted">{esc(run.name)}: no suspect concept and no uncertain prototype.</p>'
    return f"<h3>{esc(run.letter)}: {esc(run.name)}</h3>" + table(["prototype", "why", "paired with"], items, "sortable")


def _answer(pair: RunPair, transfer: dict[str, Any] | None) -> str:
    """Does A's shortcut exist in B (B's prototypes paired with its prototypes; B's own verdict), and does B use it
    (B's model on A's suspect pixels pasted into B's held-out images, against random patches)?"""
    a, b = pair.a, pair.b
    if not transfer or transfer.get("status") != "tested":
        why = (transfer or {}).get("status", "not tested (the page was built without B's model)")
        return f'<div class="ucard" id="suspect-answer"><p><b>A\'s shortcut in B:</b> {esc(why)}.</p></div>'
    members, name = transfer["members"], transfer["class_name"]
    partners = [(k, pair.partner("A", k)) for k in members]
    paired = [(k, found) for k, found in partners if found is not None]
    exists = " ".join(f"{ref(a, k)}→{ref(b, j)} <span class=\"muted\">{sim:.2f}</span>" for k, (j, sim) in paired[:6])
    exists += f' <span class="muted">and {len(paired) - 6} more</span>' if len(paired) > 6 else ""
    mean_sim = float(np.mean([sim for _, (_, sim) in paired])) if paired else 0.0
    b_entry = b.r.summary.get("reliance") or {}
    b_suspect = next((c for c in b_entry.get("concepts") or [] if c.get("id") == b_entry.get("suspect")), None)
    shared = sorted({j for _, (j, _) in paired} & set((b_suspect or {}).get("members") or []))
    b_verdict = ("B's reliance study has not run" if not b_entry else
                 f"B's own reliance study: {shortcut_chip(bool(b_entry.get('shortcut_found')))}"
                 + (f" its suspect C{b_suspect['id']} holds {len(shared)} of these partners" if b_suspect else ""))
    t_a, t_b = transfer["a"] or {}, transfer["b"]
    responds = chip("B responds to it", "warn") if transfer["responds"] else chip("B does not respond to it", "ok")
    if not transfer["responds"]:
        answer = "No: B's answers do not move with A's suspect pixels."
    elif b_entry.get("shortcut_found") and shared:
        answer = "Yes: B's answers move with A's suspect pixels, and B's own reliance study finds the shortcut too."
    elif b_entry:
        answer = ("B's answers move with A's suspect pixels, but B's own reliance study finds no shortcut holding "
                  "them: B may read those pixels as ordinary class evidence (a model that never saw a marker can "
                  "react to one) rather than rely on them as a shortcut.")
    else:
        answer = ("B's answers move with A's suspect pixels; whether B relies on them as a shortcut, or reads them as "
                  f"ordinary class evidence, needs B's own reliance study (i2x reliance {b.r.shown_dir}).")
    rows = [
        ("answer", Raw(f"<b>{esc(answer)}</b>")),
        ("A's shortcut", Raw(f"{chip('C' + str(transfer['concept']), 'warn')} "
                             f"for class {esc(name)}: pasted into A's held-out images it turns "
                             f"{t_a.get('flip_rate', 0.0):.0%} into {esc(name)} (random patches "
                             f"{t_a.get('random_flip_rate', 0.0):.0%})")),
        ("exists in B?", Raw((f"{len(paired)} of its {len(members)} prototypes are paired with B's (mean similarity "
                              f"{mean_sim:.2f}): {exists}" if paired else "none of its prototypes is paired with B's")
                             + f"<br>{b_verdict}")),
        ("does B use it?", Raw(f"{responds} pasting A's suspect pixels into {t_b['recipients']} of B's held-out "
                               f"images ({esc(t_b['split'])} split) of other classes turns {t_b['flip_rate']:.0%} of "
                               f"those not already called {esc(name)} into {esc(name)}; random patches of the same "
                               f"shape {t_b['random_flip_rate']:.0%} (z {t_b['flip_z']:.1f})")),
        ("rule", transfer["rule"]),
    ]
    return f'<div class="ucard" id="suspect-answer">{table(None, rows, "facts")}</div>'


def suspects(pair: RunPair, transfer: dict[str, Any] | None = None) -> Section:
    return Section("suspects", "Suspect concepts",
                   "Does A's shortcut exist in B, and does B use it? Then the prototypes each run's studies point at "
                   "(the reliance study's leading concepts, the uncertain prototypes), each once, and the prototype of "
                   "the other run it is paired with.",
                   _answer(pair, transfer) + _concepts(pair, pair.a) + _concepts(pair, pair.b))


def _presence_top(run: Run, k: int) -> str:
    p = run.r.summary["prototypes"][k]["presence"]
    c = int(np.argmax(p))
    return f"{run.r.names[c]} ({p[c]:.0%})"


def matched(pair: RunPair) -> Section:
    """The pairing as a sortable table, then the two galleries row by row in that order."""
    a, b = pair.a, pair.b
    rows = [[ref(a, i), _presence_top(a, i), ref(b, j), _presence_top(b, j), s,
             None if pair.centroid_cosine is None else float(pair.centroid_cosine[i, j])] for i, j, s in pair.matches]
    head = [f"A: {a.name}", "most present in (A)", f"B: {b.name}", "most present in (B)", "similarity",
            "centroid cosine"]
    protos_a, protos_b = a.r.summary["prototypes"], b.r.summary["prototypes"]
    paired_a, paired_b = {i for i, _, _ in pair.matches}, {j for _, j, _ in pair.matches}
    order = [(i, j, s) for i, j, s in pair.matches] + [(i, None, None) for i in range(len(protos_a))
                                                       if i not in paired_a] \
        + [(None, j, None) for j in range(len(protos_b)) if j not in paired_b]
    lines = []
    for i, j, s in order:
        left = prototype_card(a.r, protos_a[i], f"A-prototype-{i}", f"A · prototype {i}") if i is not None else ""
        right = prototype_card(b.r, protos_b[j], f"B-prototype-{j}", f"B · prototype {j}") if j is not None else ""
        middle = f'<div class="sim">{s:.2f}</div>' if s is not None else '<div class="sim muted">unpaired</div>'
        lines.append(f'<div class="pair">{left or "<div></div>"}{middle}{right or "<div></div>"}</div>')
    body = (f"<p>Paired by {esc(pair.rule)}.</p>" + table(head, rows, "sortable")
            + "<h3>The two galleries, pair by pair</h3>" + card_filter(a.r.names, "#prototypes .pairs .card")
            + '<div class="pairs">' + "".join(lines) + "</div>")
    return Section("prototypes", "Prototypes, paired",
                   "Each prototype of A next to the prototype of B most like it (one-to-one, most similar in total); "
                   "a pair with a low similarity is a concept one run has and the other lacks.", body)


def shared_samples(pair: RunPair) -> Section:
    """Prediction agreement and final-map agreement on the shared samples, per class, and the disagreements."""
    intro = ("The samples both runs hold: where their final predictions agree, and how alike their final maps are "
             "(IoU of the top cells, rank correlation) per class.")
    if not pair.rows_a.size:
        return Section("shared", "Shared samples", intro, '<p class="muted">No shared sample.</p>')
    g = agreement(pair)
    ok_a, ok_b, labels = g["ok_a"], g["ok_b"], g["labels"]
    counts = table(["", f"B right ({pair.b.name})", f"B wrong ({pair.b.name})"], [
        [f"A right ({pair.a.name})", int((ok_a & ok_b).sum()), int((ok_a & ~ok_b).sum())],
        [f"A wrong ({pair.a.name})", int((~ok_a & ok_b).sum()), int((~ok_a & ~ok_b).sum())]])
    names, rows = pair.a.r.names, []
    for c in np.unique(labels):
        sel = labels == c
        row = [Raw(esc(names[c])), int(sel.sum()), float(ok_a[sel].mean()), float(ok_b[sel].mean())]
        for key in ("iou", "spearman"):
            v = pair.maps[key][sel] if pair.maps is not None else np.array([np.nan])
            row.append(float(np.nanmean(v)) if np.isfinite(v).any() else None)
        rows.append(row)
    per_class = table(["class", "samples", "A accuracy", "B accuracy", "mean IoU of the top maps",
                      "mean Spearman of the maps"], rows, "sortable")
    notes = [f"{pair.n_label_mismatch} samples with the same index but different labels are left out."] \
        if pair.n_label_mismatch else []
    return Section("shared", "Shared samples", intro,
                   f"<p>{pair.rows_a.size} shared samples.</p>" + counts + "<h3>Per class</h3>" + per_class
                   + _disagreements(pair, g), notes)


def _disagreements(pair: RunPair, g: dict[str, Any]) -> str:
    """Up to :data:`MAX_DISAGREEMENTS` samples one run gets right and the other wrong: the input, A's and B's map."""
    picks = np.flatnonzero(g["ok_a"] != g["ok_b"])[:MAX_DISAGREEMENTS]
    if not picks.size or pair.a.r.images_unavailable or pair.maps is None:
        return ""
    images = pair.a.r.images(pair.rows_a[picks])
    maps = [overlays(images, run.r.final_cam[rows[picks]][None], size=64)[0]
            for run, rows in ((pair.a, pair.rows_a), (pair.b, pair.rows_b))]
    inputs, names, lines = to_rgb(resize(images, 64)), pair.a.r.names, []
    for n, i in enumerate(picks):
        said = (f"A says {names[g['pred_a'][i]]}, B says {pair.b.r.names[g['pred_b'][i]]}; true {names[g['labels'][i]]}"
                f"; IoU {pair.maps['iou'][i]:.2f}")
        lines.append(f"<tr><td>{img(png_uri(inputs[n]), 'input image')}</td><td>{img(png_uri(maps[0][n]), 'map of A')}"
                     f"</td><td>{img(png_uri(maps[1][n]), 'map of B')}</td><td>{esc(said)}<br><span class=\"muted\">"
                     f"data set index {g['index'][i]}</span></td></tr>")
    return ("<h3>Where they disagree</h3><table class=\"film\"><thead><tr><th>input</th><th>A's final map</th>"
            "<th>B's final map</th><th></th></tr></thead><tbody>" + "".join(lines) + "</tbody></table>")
