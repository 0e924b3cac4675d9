"""The prototypes section: one card per prototype with its patches, presence and roles."""

from __future__ import annotations

from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, chip, class_ref, esc
from i2x.reporting.sections.common import _chips, _patch_imgs


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
