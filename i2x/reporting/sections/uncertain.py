"""The uncertain prototypes section: flips between two classes, with their significance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from i2x.reporting import charts
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, class_ref, esc, table
from i2x.reporting.sections.common import MAX_UNCERTAIN_CARDS, _patch_imgs
from i2x.reporting.suspect import reliance_result
from i2x.stages.analyze.uncertainty import summary_sentence


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
    head = _significance_head(c, summary_sentence(s)) if c else ""
    if not found:
        body = head + (f"<p><b>No uncertain prototype was found.</b> No prototype's strongest class flipped between the same "
                f"two classes at least {esc(th['min_flips'])} times with β above the noise floor "
                f"({th['noise_floor']:.3g}, the {esc(th['noise_quantile'])} quantile of |β|).</p>"
                "<p>To look closer: keep more checkpoints (save more often, or drop <code>--every</code>), lower the "
                "floor with <code>--noise-quantile 0.5</code>, accept single flips with <code>--min-flips 1</code>, or "
                "try another <code>--k</code>.</p>")
        return Section("uncertain", "Uncertain prototypes", intro, body)
    shown = found[:MAX_UNCERTAIN_CARDS]
    result = reliance_result(r)
    shortcut = result["concepts"][result["suspect"]] if result and result.get("shortcut_found") else None
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
        ] + ([("part of the shortcut", _in_shortcut(r, shortcut, names[a], names[b]))]
             if shortcut and k in (shortcut.get("members") or []) else []), "facts")
        faded = ' style="opacity:0.6"' if u.get("significant") is False else ""
        cards.append(f'<div class="ucard" id="uncertain-{k}"{faded}><h3><a href="#prototype-{k}">Prototype P{k}</a>: '
                     f'{class_ref(a, names[a], "uncertain")} ↔ {class_ref(b, names[b], "uncertain")}</h3>'
                     f'<div class="row"><div class="ufacts">{facts}{_patch_imgs(r, k)}</div>{chart}</div></div>')
    more = len(found) - len(shown)
    notes = [f"The {len(shown)} strongest are shown; {more} more are listed in summary.json."] if more else []
    return Section("uncertain", "Uncertain prototypes", intro, head + "".join(cards), notes)


def _in_shortcut(r: ReportInputs, shortcut: dict[str, Any], a: str, b: str) -> Raw:
    """An uncertain prototype that belongs to the shortcut concept: curating it removes the shortcut's images."""
    command = f"i2x finetune {r.shown_dir} --concept {shortcut['id']}"
    return Raw(f"{chip('shortcut found', 'warn')} it belongs to concept C{shortcut['id']}, the shortcut the reliance "
               f"study found: curating it removes the shortcut's images, not a confusion of {esc(a)} and {esc(b)} "
               f"(<code>{esc(command)}</code>)")


def _significance_head(c: dict[str, Any], sentence: str) -> str:
    """Flagged and significant versus chance (:mod:`i2x.stages.analyze.uncertainty`), and the rules behind them."""
    chance = (f"Chance: mean ± sd over {c['null_runs']} runs of the null model (the same analysis with each step's "
              "confidence changes shuffled across samples), each run counted by the same two rules."
              if c["null_runs"] else "")
    return (f"<p><b>{esc(sentence)}</b>. Flagged: the flip rule over the noise floor. {esc(chance)}</p>"
            f"<p class=\"muted\">A step counts when the {c['level']:.0%} interval of the leading "
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
