"""The reliance study's results: one row per unit (prototype or concept) with its shortcut checks, the
ranking by causal evidence, the verdict sentence, the concept table and the rules as stored."""
from __future__ import annotations

from typing import Any

import numpy as np

from i2x.metrics.reliance import evidence_order, shortcut_checks
from i2x.stages.reliance.config import RelianceConfig


RULE = ("shortcut = a concept that is class-tied (lift >= min_lift; lift = (P(c|k) - P(c)) / (1 - P(c))), fixed in "
        "place (concentration >= min_concentration, and its donors' footprints on the same pixels: agreement >= "
        "min_agreement), whose footprint pasted into other classes' images turns at least "
        "min_flip_excess more of them into c than random patches of the same shape from the same donors (paired z >= "
        "z_threshold; random patches flipping at most max_random_flip), and whose deletion at the layer lowers c's "
        "margin more than random cells (z >= z_threshold); "
        "concepts ranked: those passing first, then by paste flip excess, then by the paste's margin excess; when the "
        "lead passes, it and the concepts of its class on adjacent cells that pass every test (their paste may turn "
        "fewer than min_flip_excess more recipients than random patches, with z >= z_threshold still: a piece of a "
        "split marker carries part of its effect) are joined and tested as one concept while their hot cells stay "
        "within max_share of the grid; of the concepts that pass, the tightest (its donors' footprints most on the "
        "same pixels: agreement) leads")
CONCEPT_RULE = ("prototypes linked when both are class-tied (lift >= min_lift) for the same class and rather fixed in "
                "place (concentration >= link_concentration), co-present (Jaccard over samples >= min_jaccard) and on "
                "adjacent cells (hot cells, >= half of the most frequent cell's count, within one cell); merged by "
                "decreasing Jaccard while the union of hot cells stays within max_share of the grid")
FOOTPRINT = ("per donor image: the core of the effective receptive field of the unit's cells (mean absolute input "
             "gradient of each cell's summed activation over field_images images, thresholded at field_threshold of "
             "that cell's maximum, united over the cells), narrowed to the pixels where |gradient x (image - mean "
             "image)| of the cells' summed activation reaches saliency_threshold of its maximum there; "
             "random patches: the same footprint cyclically shifted to a random place")
FILL = "the mean activation per channel over every sample and cell of the stored final-checkpoint features"


def gallery_rows(assign: np.ndarray, labels: np.ndarray, holders: np.ndarray, k: int, c: int, size: int) -> list[int]:
    """Store rows to show for prototype k: samples of class c first, then by the share of cells k covers."""
    share = (assign[holders] == k).reshape(holders.size, -1).mean(axis=1)
    order = np.lexsort((-share, labels[holders] != c))
    return [int(i) for i in holders[order[:size]]]


def unit_row(k: int, names: list[str], stats: dict[str, np.ndarray], lifts: np.ndarray, c: int,
             deletion: dict[str, Any] | None, transplant: dict[str, Any] | None, agreement: float | None,
             skipped: set[str], gallery: list[int], cfg: RelianceConfig) -> dict[str, Any]:
    """Everything reliance.json says about unit k (a prototype or a concept). ``agreement``: its donors' footprint
    agreement when measured without a paste test; ``skipped``: the tests the study did not run on it (footprints,
    paste, deletion), whose checks read None."""
    cells = stats["cells"][k]
    concentrated = float(stats["concentration"][k])
    checks = shortcut_checks(float(lifts[k, c]), concentrated,
                             transplant or (None if agreement is None else {"agreement": agreement}), deletion,
                             cfg.z_threshold, cfg.min_flip_excess, cfg.min_lift, cfg.min_concentration,
                             cfg.max_random_flip, cfg.min_agreement)
    checks_run: dict[str, bool | None] = dict(checks)
    if "footprints" in skipped and concentrated >= cfg.min_concentration:
        checks_run["fixed_in_place"] = None
    for test in ("paste", "deletion"):
        if test in skipped:
            checks_run[test] = None
    return {
        "id": k, "class": c, "class_name": names[c],
        "samples": int(stats["present"][:, k].sum()),
        "presence": [round(float(v), 4) for v in stats["rate"][k]],
        "purity": float(stats["purity"][k, c]), "lift": float(lifts[k, c]),
        "concentration": float(stats["concentration"][k]), "entropy": float(stats["entropy"][k]),
        "cells_per_sample": float(stats["size"][k]),
        "locations": (cells / max(int(cells.max()), 1)).round(4).tolist(),
        "deletion": deletion, "transplant": transplant, "gallery": gallery, "checks": checks_run,
        **({} if transplant is not None or agreement is None else {"agreement": agreement}),
    }


CONCEPT_TABLE = ("id", "members", "class", "class_name", "purity", "lift", "concentration", "cells_per_sample",
                 "samples", "checks")


def concept_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The concepts in evidence order, compact: presence, the tests passed, deletion and paste (no per-sample data)."""
    table = []
    for position, c in enumerate(result["ranking"], start=1):
        row = result["concepts"][c]
        deletion = {key: v for key, v in (row["deletion"] or {}).items() if key != "per_sample"}
        table.append({"rank": position, **{key: row[key] for key in CONCEPT_TABLE}, "deletion": deletion,
                      "paste": row["transplant"]})
    return table


def summary_entry(result: dict[str, Any]) -> dict[str, Any]:
    """The compact ``reliance`` entry of summary.json: settings, verdict and the concept table."""
    entry = {key: result[key] for key in ("config", "checkpoint", "verdict", "shortcut_found", "suspect", "rule",
                                          "concept_rule", "footprint", "fill", "held_out_split", "ranking",
                                          "seconds")}
    return {**entry, "concepts": concept_table(result)}


def ran_sentence(result: dict[str, Any]) -> str:
    """How many units each test ran on, and why the others did not need it (or that every test ran on every unit)."""
    run = result.get("tests_run")
    if not run:
        return "every test on every unit (an older reliance.json: no counts)"
    if result["config"].get("full_tests"):
        return f"every test on every one of the {run['units']} units (full_tests)"
    return (f"{run['units']} units (prototypes and concepts): footprints on {run['footprints']}, paste on "
            f"{run['paste']}, deletion on {run['deletion']}; the others fail an earlier test of the verdict or are "
            "prototypes tested as their concept (full_tests runs every test on every unit)")


def rank(rows: list[dict[str, Any]]) -> list[int]:
    """Row indices ordered by causal evidence (:func:`i2x.metrics.reliance.evidence_order`); a unit whose paste test
    was not run (it failed an earlier test) comes after every unit that had one."""
    passes = np.array([all(r["checks"].values()) for r in rows], dtype=bool)
    missing = [-np.inf if r["checks"]["paste"] is None else 0.0 for r in rows]
    flip = np.array([(r["transplant"] or {}).get("excess_flip", v) for r, v in zip(rows, missing)])
    logit = np.array([(r["transplant"] or {}).get("logit_excess", v) for r, v in zip(rows, missing)])
    return [int(i) for i in evidence_order(passes, flip, logit)]


def tightest_first(rows: list[dict[str, Any]], ranking: list[int]) -> list[int]:
    """``ranking`` with the tightest concept that passes every test first: the one whose donors' footprints sit most
    on the same pixels (agreement, :func:`i2x.metrics.reliance.agreement`; the earlier in ``ranking`` on a tie). A
    joined concept or one of many prototypes spreads over class evidence around a tag; the tag's own concept does
    not. Unchanged when none passes."""
    passing = [i for i in ranking if all(rows[i]["checks"].values())]
    if not passing:
        return ranking
    best = max(passing, key=lambda i: (rows[i]["transplant"] or {}).get("agreement", 0.0))
    return [best, *(i for i in ranking if i != best)]


def split_piece(row: dict[str, Any], z_threshold: float, max_random_flip: float) -> bool:
    """Whether a concept may be joined to a passing lead as a piece of one split shortcut: class-tied, fixed in place,
    its deletion costs its class, and its paste turns recipients into its class more often than random patches (z >=
    ``z_threshold``, random patches flipping at most ``max_random_flip``), though perhaps by less than
    ``min_flip_excess``: a piece of a split marker carries only part of its effect, and the joined whole is tested
    again against every bar."""
    checks, paste = row["checks"], row["transplant"] or {}
    return bool(checks["class_tied"] and checks["fixed_in_place"] and checks["deletion"]
                and paste.get("flip_z", 0.0) >= z_threshold and paste.get("random_flip_rate", 1.0) <= max_random_flip)


def verdict(ordered: list[dict[str, Any]], z_threshold: float, min_flip_excess: float) -> tuple[str, bool]:
    """A plain sentence on whether a shortcut was found, and whether one was: the top concept of the evidence
    ranking is a shortcut when it passes every test of :func:`i2x.metrics.reliance.shortcut_checks`."""
    lead = ordered[0] if ordered else None
    if lead is None:
        return "No shortcut found: no concept to test.", False
    name, unit = lead["class_name"], unit_name(lead)
    t, d = lead["transplant"] or {}, lead["deletion"] or {}
    if all(lead["checks"].values()):
        deleted = [r for r in ordered if (r["checks"] or {}).get("deletion") is not None]  # a test not run is not counted
        passing = sum(bool(r["checks"]["deletion"]) for r in deleted)
        return (f"Shortcut found: {unit} for class {name}. It sits in the same place in every image (concentration "
                f"{lead['concentration']:.2f}; its footprints share {t.get('agreement', 0.0):.0%} of their pixels), "
                f"{lead['purity']:.0%} of the images holding it are {name}; pasting it "
                f"into other classes' images turns {t['flip_rate']:.0%} of them into {name} (random patches of the same "
                f"shape: {t['random_flip_rate']:.0%}, z {t['flip_z']:.1f}). Deleting it lowers {name}'s margin more "
                f"than random cells do, as deleting {passing} of the {len(deleted)} concepts it ran on does: a weak "
                "test that separates concepts little, not evidence on its own."), True
    why = []
    checks = lead["checks"]
    if checks["paste"] is False:
        why.append(f"pasting it turns {t.get('flip_rate', 0.0):.0%} of other classes' images into {name}, against "
                   f"{t.get('random_flip_rate', 0.0):.0%} for random patches of the same shape (a shortcut needs "
                   f"{min_flip_excess:.0%} more with z >= {z_threshold:g}, and random patches that rarely flip; "
                   f"z {t.get('flip_z', 0.0):.1f})")
    if checks["deletion"] is False:
        why.append(f"deleting it is within {z_threshold:g} standard errors of deleting random cells "
                   f"(z {d.get('z', 0.0):.1f})")
    if not checks["class_tied"]:
        why.append(f"it is not class-tied (lift {lead['lift']:.2f})")
    if checks["fixed_in_place"] is False:
        why.append(f"it moves with the image content (concentration {lead['concentration']:.2f}, its footprints share "
                   f"{t.get('agreement', lead.get('agreement', 0.0)):.0%} of their pixels)")
    untested = [test.replace("_", " ") for test, passed in checks.items() if passed is None]
    if untested:
        why.append(f"not run, as it fails an earlier test: {', '.join(untested)}")
    return (f"No shortcut found. The strongest evidence is for {unit} ({name}): " + "; ".join(why) + "."), False


def unit_name(row: dict[str, Any]) -> str:
    """How the verdict names a concept: C and its id, the concepts it joins (if any) and its prototypes (P and id)."""
    members = row.get("members", [row["id"]])
    protos = ", ".join(f"P{k}" for k in members)
    if row.get("pieces"):
        weak = row.get("failed_paste_alone") or []
        failed = (f"; {', '.join(f'C{c}' for c in weak)} failed the paste test on {'its' if len(weak) == 1 else 'their'} "
                  "own" if weak else "")
        return f"concept C{row['id']} (concepts {', '.join(f'C{c}' for c in row['pieces'])} joined{failed}: {protos})"
    return f"concept C{row['id']} ({'prototype' if len(members) == 1 else 'prototypes'} {protos})"
