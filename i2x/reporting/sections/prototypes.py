"""The prototypes section: one card per prototype with its patches, presence and roles, and a filter over the cards."""

from __future__ import annotations

from typing import Any

from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, chip, class_ref, esc
from i2x.reporting.sections.common import _chips, _patch_imgs
from i2x.reporting.suspect import reliance_result


def prototype_card(r: ReportInputs, p: dict[str, Any], anchor: str, title: str, extra: str = "") -> str:
    """The card of prototype ``p`` (an entry of ``summary["prototypes"]``) with element id ``anchor``; ``extra``
    (safe HTML) goes under the roles. Its ``data-roles``, ``data-classes`` and ``data-pairs`` (role:class, so "shared
    for class 1" is not met by a card shared for 0 and uncertain for 1) are what the card filter reads."""
    names, k = r.names, p["id"]
    uncertain = {u["prototype"]: u for u in r.summary["uncertain"]}
    roles, kinds = "", []
    if p["shared_for"]:
        roles, kinds = roles + chip("shared", "shared"), kinds + ["shared"]
    if p["specialized_for"]:
        roles, kinds = roles + chip("specialized", "specialized"), kinds + ["specialized"]
    involved = set(p["shared_for"]) | set(p["specialized_for"])
    if k in uncertain:
        a, b = uncertain[k]["classes"]
        involved |= {a, b}
        kinds.append("uncertain")
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
    classes = " ".join(str(c) for c in sorted(involved))
    pairs = " ".join([f"shared:{c}" for c in p["shared_for"]] + [f"specialized:{c}" for c in p["specialized_for"]]
                     + ([f"uncertain:{c}" for c in uncertain[k]["classes"]] if k in uncertain else []))
    return (f'<div class="card" id="{esc(anchor)}" data-roles="{" ".join(kinds) or "none"}" data-classes="{classes}" '
            f'data-pairs="{pairs}">'
            f'<h4>{esc(title)}</h4><div>{roles}</div>{extra}'
            f'<div class="meta">{p["size"]} grid cells in {p["samples"]} samples</div>{_patch_imgs(r, k)}'
            f'<div class="meta">{"; ".join(supports) or "supports no class as shared or specialized"}</div>'
            f'<div class="bars">{bars}</div><div class="barlabels">{labels}</div></div>')


def card_filter(names: list[str], target: str) -> str:
    """Two drop-downs (role, class) that show only the cards of ``target`` (a CSS selector) that match both."""
    roles = "".join(f'<option value="{v}">{label}</option>' for v, label in
                    (("", "any role"), ("shared", "shared"), ("specialized", "specialized"),
                     ("uncertain", "uncertain"), ("none", "no role")))
    classes = '<option value="">any class</option>' + "".join(
        f'<option value="{c}">{esc(n)}</option>' for c, n in enumerate(names))
    return (f'<div class="card-filter" data-target="{esc(target)}">show <select class="role" aria-label="role">'
            f'{roles}</select> <select class="cls" aria-label="class">{classes}</select> '
            '<span class="muted count"></span></div>')


def _concept_line(c: int | None, in_shortcut: bool) -> str:
    """Which concept of the reliance study the prototype belongs to (C-ids, so concept 6 and prototype 6 differ)."""
    if c is None:
        return ""
    mark = " " + chip("shortcut found", "warn") if in_shortcut else ""
    return f'<div class="meta">part of concept C{c} of the reliance study{mark}</div>'


def prototypes(r: ReportInputs) -> Section:
    result = reliance_result(r)
    concept = {k: c["id"] for c in (result or {}).get("concepts", []) if not c.get("pieces") for k in c["members"]}
    suspect = result["concepts"][result["suspect"]] if result and result.get("shortcut_found") else {}
    cards = [prototype_card(r, p, f"prototype-{p['id']}", f"Prototype P{p['id']}", _concept_line(
        concept.get(p["id"]), p["id"] in (suspect.get("members") or []))) for p in r.summary["prototypes"]]
    notes = [f"Input images unavailable, so no patches: {r.images_unavailable}"] if r.images_unavailable else []
    return Section("prototypes", "Prototypes",
                   "Each prototype is a cluster of the final model's features at single grid cells. The patches are "
                   "the input around the cell (outlined) where the prototype is assigned and the final CAM is "
                   "strongest; the bars show in what share of each class's samples it occurs (green: shared for "
                   "that class).", card_filter(r.names, "#prototypes .gallery .card")
                   + '<div class="gallery">' + "".join(cards) + "</div>", notes)
