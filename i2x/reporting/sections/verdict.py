"""The report's first section: what a reader must know before the details (the shortcut: what, where, for which
class, with a picture and the next command; uncertain pairs; accuracy and error patterns on both splits), each with a
link to the section that backs it."""

from __future__ import annotations

from typing import Any

import numpy as np

from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Raw, Section, chip, class_ref, esc, proto_ref, shortcut_chip, table
from i2x.reporting.sections.finetune import REVISION_ANCHOR, revision_of
from i2x.reporting.suspect import SuspectMask, reliance_result, suspect_mask, suspect_pictures, where_in_words
from i2x.stages.analyze.uncertainty import summary_sentence
from i2x.stages.context import sample_line, sample_warning
from i2x.stages.normalisation import preprocessing_line

MAX_VERDICT_PAIRS = 5
#: an error pattern is one-directional when one (true, predicted) cell holds at least this share of the errors
ONE_WAY = 0.8


def _shortcut(r: ReportInputs) -> Raw:
    entry = r.summary.get("reliance")
    if not entry:
        return Raw(f'<span class="muted">not run</span>: <code>i2x reliance {esc(r.shown_dir)}</code> tests by '
                   "intervention whether the model depends on a prototype tied to one class in fixed places.")
    return Raw(f'{shortcut_chip(bool(entry.get("shortcut_found")))} {esc(entry["verdict"])} '
               '<a href="#reliance">details</a>')


def concept_label(concept: dict[str, Any], shown: int = 8) -> Raw:
    """A concept as the page names it: "C19" with its prototypes as linked chips (P7 P12; the first ``shown``)."""
    members = concept.get("members") or [concept["id"]]
    more = f' <span class="muted">and {len(members) - shown} more</span>' if len(members) > shown else ""
    return Raw(chip(f"C{concept['id']}", "warn") + " (" + " ".join(proto_ref(k) for k in members[:shown]) + more + ")")


def _lead(r: ReportInputs, result: dict[str, Any], suspect: SuspectMask | None) -> str:
    """One sentence and one picture: what the shortcut is, where, for which class, the paste against random
    patches, and the next command; or a calm "no shortcut" line."""
    if suspect is None:
        return (f'<p class="lead">{shortcut_chip(False)} {esc(result["verdict"])} '
                '<a href="#reliance">details</a></p>')
    c = suspect.concept
    name, t = r.names[c["class"]], c["transplant"] or {}
    where = where_in_words(suspect.mask)
    concept = chip("C" + str(c["id"]), "warn")
    sentence = (f'{shortcut_chip(True)} <b>The model calls images {esc(name)} when they carry what sits at the '
                f'{esc(where.split(",")[0])}</b> (concept {concept}): pasted into held-out images of other '
                f'classes it turns {t.get("flip_rate", 0.0):.0%} of them into {esc(name)}, random patches of the same '
                f'shape {t.get("random_flip_rate", 0.0):.0%}. <a href="#reliance">details</a>')
    return (f'<p class="lead">{sentence}</p>{suspect_pictures(r, suspect)}'
            f'<p class="muted">{esc(name)} images where it is strongest; red: the pixels its paste test moves.</p>')


def _next_steps(r: ReportInputs, result: dict[str, Any], suspect: SuspectMask, revised: bool) -> Raw:
    """What to do about the shortcut: check the data at that place, revise the model against it (unless a revision
    is recorded), or fine-tune without it; and which uncertain prototypes belong to it (curating them removes the
    shortcut's images, not a confusion between two classes)."""
    c = suspect.concept
    name = r.names[c["class"]]
    command = f"i2x finetune {r.shown_dir} --concept {c['id']}"
    revise = "" if revised else (
        f'<li>revise the model against it: <code class="next">{esc(command)} --fix augment</code> (pastes it onto '
        "other classes' training images, measured against control runs)</li>")
    tied = sorted({u["prototype"] for u in r.summary["uncertain"]} & set(c.get("members") or []))
    note = ("<li>uncertain " + " ".join(proto_ref(k, "uncertain") for k in tied) + f" belong to C{c['id']}: "
            "they are the shortcut, not two classes the model confuses</li>") if tied else ""
    return Raw(f'<ul class="tight"><li>check your {esc(name)} images for a marker, tag or text at the '
               f'{esc(where_in_words(suspect.mask).split(",")[0])}</li>{revise}<li>{"" if revised else "or "}'
               f'fine-tune without it: <code class="next">{esc(command)}</code> (curates the training images holding '
               f'C{c["id"]})</li>{note}</ul>')


def _evidence(r: ReportInputs, suspect: SuspectMask) -> Raw:
    """The causal numbers that matter: the paste against random patches and the gap it opens."""
    c = suspect.concept
    name, t = r.names[c["class"]], c["transplant"] or {}
    gap = t.get("flip_rate", 0.0) - t.get("random_flip_rate", 0.0)
    return Raw(f"paste: {t.get('flip_rate', 0.0):.0%} of {t.get('recipients', 0)} held-out images of other classes "
               f"(those not already called {esc(name)}) become {esc(name)}, random patches of the same shape "
               f"{t.get('random_flip_rate', 0.0):.0%} (z {t.get('flip_z', 0.0):.1f}); <b>shortcut gap: {gap:.0%}</b>"
               f", the share of those images the suspect alone turns into {esc(name)}, beyond what any patch does")


def _revision(record: dict[str, Any]) -> Raw:
    """What the recorded revision of the suspect found (its verdict per fix), linked to its results."""
    lines = "".join(f"<li>{esc(line)}</li>" for line in record.get("verdict") or [])
    return Raw(f'<ul class="tight">{lines}</ul><a href="#{REVISION_ANCHOR}">the revision results</a>')


def _uncertain(r: ReportInputs) -> Raw:
    found = r.summary["uncertain"]
    head = summary_sentence(r.summary)
    if not found:
        return Raw(f'<span class="muted">none</span>: no prototype flipped between two classes ({esc(head)}).')
    items = []
    for u in found[:MAX_VERDICT_PAIRS]:
        a, b = u["classes"]
        flag = ("" if "significant" not in u else
                chip("significant", "shared") if u["significant"] else chip("not significant", "warn"))
        items.append(f"<li>{proto_ref(u['prototype'], 'uncertain')} {class_ref(a, r.names[a])} ↔ "
                     f"{class_ref(b, r.names[b])} {flag}</li>")
    more = f'<li class="muted">{len(found) - MAX_VERDICT_PAIRS} more below</li>' if len(found) > MAX_VERDICT_PAIRS else ""
    return Raw(f'{esc(head)} (<a href="#uncertain">details</a>)<ul class="tight">{"".join(items)}{more}</ul>')


def _accuracy(s: dict[str, Any], names: list[str], held: dict[str, Any] | None, shown_dir: str) -> Raw:
    """The analysed split from the first to the final checkpoint, and the held-out split at the final one."""
    acc = [(n, a) for n, a in zip(names, s["accuracy"]) if a is not None]
    if not acc:
        return Raw("no usable checkpoint")
    (n0, a0), (n1, a1) = acc[0], acc[-1]
    text = f"{s['split']} split (analysed): {a0:.1%} at {n0} → {a1:.1%} at {n1} ({s['n_samples']} samples)"
    other = (f"{held['split']} split (held out): {held['accuracy']:.1%} at {n1} ({held['samples']} samples)" if held
             else f"held-out split: not evaluated (i2x reliance {shown_dir} evaluates the final checkpoint on it)")
    return Raw(f'<span class="split-acc">{esc(text)}</span><br><span class="split-acc">{esc(other)}</span>')


def error_pattern(conf: np.ndarray, names: list[str]) -> str:
    """The errors of a confusion matrix in words, calling out a one-directional pattern ("all 163 errors are
    NORMAL called PNEUMONIA")."""
    conf = np.asarray(conf, dtype=np.int64)
    off = conf - np.diag(np.diag(conf))
    wrong = int(off.sum())
    if wrong == 0:
        return f"no error in {int(conf.sum())} samples"
    a, b = np.unravel_index(int(off.argmax()), off.shape)
    most, pair = int(off[a, b]), f"{names[a]} called {names[b]}"
    head = f"{wrong} of {int(conf.sum())} samples wrong"
    if most == wrong:
        return f"{head}: all {wrong} errors are {pair}"
    if most >= ONE_WAY * wrong:
        return f"{head}: one-directional, {most} of the {wrong} errors ({most / wrong:.0%}) are {pair}"
    return f"{head}; the most common error: {most} {pair}"


def _errors(r: ReportInputs, held: dict[str, Any] | None, suspect: SuspectMask | None) -> Raw:
    """Error patterns on both splits and, with a shortcut, the analysed split's errors it explains: images of other
    classes holding the suspect concept, called its class."""
    s = r.summary
    lines = [f"{s['split']} split: {error_pattern(np.asarray(s['final_confusion']), r.names)}"]
    if held:
        lines.append(f"{held['split']} split: {error_pattern(np.asarray(held['confusion']), r.names)}")
    if suspect is not None:
        c = suspect.concept
        preds = np.nan_to_num(np.asarray(r.store.array("probs")[r.final])).argmax(axis=1)  # the final slice only
        labels = r.read("labels")
        holds = np.isin(r.read("analysis/assign"), c.get("members") or [c["id"]]).reshape(len(labels), -1).any(1)
        wrong = preds != labels
        linked = int((wrong & holds & (labels != c["class"]) & (preds == c["class"])).sum())
        lines.append(f"{linked} of the {int(wrong.sum())} {s['split']} errors are images of other classes that hold "
                     f"C{c['id']} and are called {r.names[c['class']]}: the shortcut's errors")
    return Raw("<br>".join(esc(line) for line in lines))


def _class_names(r: ReportInputs) -> Raw:
    """The classes by name, or the hint that they can be named (numbered classes read poorly in a verdict)."""
    names = r.names
    listed = ", ".join(f"{c}: {n}" for c, n in enumerate(names[:12])) + (" …" if len(names) > 12 else "")
    if all(n == str(c) for c, n in enumerate(names)):
        return Raw(f'{esc(listed)} <span class="muted hint">(numbered only: name them with <code>--class-names '
                   f'NAME,NAME,…</code> or <code>--class-names-file FILE</code> when running <code>i2x run</code> or '
                   "<code>i2x extract</code>)</span>")
    return Raw(esc(listed))


def _inputs(r: ReportInputs) -> Raw:
    """The preprocessing used and whether the model confirms it, and how the samples were chosen."""
    attrs = r.store.attrs
    pre, sample = attrs.get("preprocessing"), attrs.get("sample")
    if pre is None:
        told = '<span class="muted">preprocessing not recorded (extracted before i2x recorded it)</span>'
    else:
        check = pre["check"]
        kind = {"fits": "shared", "unchecked": "", "doubtful": "warn", "skipped": "warn"}[check["status"]]
        told = (f"{esc(preprocessing_line(pre))} {chip(check['status'], kind)}<br>{esc(check['line'])}"
                + "".join(f"<br>{esc(note)}" for note in check["notes"]))
    if sample is not None:
        warning = sample_warning(sample, r.names)
        told += f"<br>samples: {esc(sample_line(sample))}" + (f" {chip('thin', 'warn')} {esc(warning)}" if warning else "")
    return Raw(told)


def verdict_section(r: ReportInputs) -> Section:
    """The verdict card: the answers first, each linked to the section that shows the evidence."""
    s = r.summary
    result = reliance_result(r)
    suspect = suspect_mask(r, result) if result else None
    held = (result or {}).get("held_out")
    rows: list[tuple[str, Any]] = []
    if suspect is not None:
        c = suspect.concept
        revision = revision_of(r, int(c["id"]))
        rows += [("Shortcut", Raw(f"{shortcut_chip(True)} concept {concept_label(c)} for class "
                                  f"{class_ref(c['class'], r.names[c['class']], 'warn')}")),
                 ("Where", where_in_words(suspect.mask)),
                 ("Evidence", _evidence(r, suspect))]
        rows += [("Revision", _revision(revision))] if revision else []
        rows.append(("Next", _next_steps(r, result, suspect, revision is not None)))  # type: ignore[arg-type]
    else:
        rows.append(("Shortcut", _shortcut(r)))
    rows += [
        ("Uncertain pairs", _uncertain(r)),
        ("Accuracy", _accuracy(s, [c["name"] for c in r.checkpoints], held, r.shown_dir)),
        ("Errors at the end", _errors(r, held, suspect)),
        ("Classes", _class_names(r)),
        ("Inputs", _inputs(r)),
    ]
    lead = _lead(r, result, suspect) if result else ""
    return Section("verdict", "Verdict", "What the analysis found, before the details: does the model lean on a "
                   "shortcut, which prototypes have not settled between two classes, and how well it did.",
                   f'<div class="verdict">{lead}{table(None, rows, "facts")}</div>')
