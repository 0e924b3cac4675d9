"""The curated set of fine-tuning: which training samples an uncertain pair's prototypes (or a reliance
concept) cover, the user's own exclusion lists, and the record written to ``excluded.json``.

A training sample of class a or b of a flagged pair (a, b) is left out when one of the pair's uncertain
prototypes (its concept's cells, when reliance.json is present) covers at least ``min_share`` of its grid
cells (``analysis/share``); only significant uncertain prototypes count unless ``all_uncertain``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from i2x.errors import UserError
from i2x.io.store import Store
from i2x.io.location import as_path
from i2x.io.workdir import RELIANCE, read_json, write_json


EXCLUDED_NAME = "excluded.json"
#: above this fraction of the training set excluded, say how to curate less (the rule unions all flagged pairs)
LARGE_EXCLUSION = 0.5
Pair = tuple[int, int]
NO_UNCERTAIN_ADVICE = (
    "Try: rerun `i2x analyze DIR` with a lower --noise-quantile (e.g. 0.5) or --min-flips 1, or with another "
    "--method (gradcampp, layercam); analyse more checkpoints (a flip needs several steps); or name the pair "
    "yourself with --pairs A,B, or give your own list of training ids with --exclude FILE."
)


@dataclass
class Curation:
    """The training samples the curated set leaves out, and the pairs and prototypes that chose them."""

    ids: np.ndarray
    source: str
    pairs: dict[Pair, list[int]]
    per_class: dict[str, int]
    n_train: int
    class_sizes: dict[str, int] | None = None  # training samples per class, for the share each loses


def concept_members(out_dir: str | Path, k: int) -> list[list[int]]:
    """The prototypes of each concept from the reliance study (reliance.json), or one concept per prototype. A
    concept joined from pieces comes last, so in :func:`concept_shares` its prototypes count its whole share."""
    path = as_path(out_dir) / RELIANCE
    if path.is_file():
        concepts = read_json(path, "i2x reliance").get("concepts")
        base = [c for c in concepts if not c.get("pieces")]       # a joined shortcut repeats its pieces' members
        if base and sum(len(c["members"]) for c in base) == k:
            return [list(c["members"]) for c in concepts]
    return [[i] for i in range(k)]


def concept_shares(share: np.ndarray, members: list[list[int]]) -> np.ndarray:
    """Per sample and prototype [n, K]: the share of cells held by the prototype's whole concept."""
    out = np.empty_like(share)
    for group in members:
        out[:, group] = share[:, group].sum(axis=1, keepdims=True)
    return out


def concept_exclusion(share: np.ndarray, members: list[list[int]], concept: int, min_share: float) -> np.ndarray:
    """Boolean per analysed sample: concept ``concept`` covers at least ``min_share`` of its cells."""
    if not 0 <= concept < len(members):
        raise UserError(f"--concept {concept}: the reliance study has concepts 0..{len(members) - 1}; see "
                        "reliance.json or the report's reliance section")
    return share[:, members[concept]].sum(axis=1) >= min_share


def exclusion_mask(share: np.ndarray, labels: np.ndarray, pairs: dict[Pair, list[int]], min_share: float) -> np.ndarray:
    """Boolean per analysed sample: of class a or b of a pair, and one of that pair's prototypes covers >= min_share."""
    mask = np.zeros(len(labels), dtype=bool)
    for (a, b), prototypes in pairs.items():
        if prototypes:
            covered = (share[:, prototypes] >= min_share).any(axis=1)
            mask |= np.isin(labels, (a, b)) & covered
    return mask


def read_exclude_file(path: str | Path, n_train: int) -> np.ndarray:
    """Training-split indices from a JSON list (or ``{"ids": [...]}``, as in excluded.json) or one id per line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--exclude {path}: file not found")
    text = p.read_text()
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = [line.split("#")[0].strip() for line in text.splitlines()]
        data = [v for v in data if v]
    if isinstance(data, dict):
        data = data.get("ids")
    if isinstance(data, int) and not isinstance(data, bool):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"--exclude {path}: expected a JSON list of training-set indices, {{\"ids\": [...]}}, "
                        "or one index per line")
    ids = []
    for value in data:
        try:
            ok = not isinstance(value, (bool, float)) and int(value) == float(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"--exclude {path}: {value!r} is not an integer index of the training split")
        ids.append(int(value))
    arr = np.unique(np.asarray(ids, dtype=np.int64))
    bad = arr[(arr < 0) | (arr >= n_train)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:5]) + (f" (+{bad.size - 5} more)" if bad.size > 5 else "")
        raise UserError(f"--exclude {path}: id(s) {shown} are outside the training split, whose indices run "
                        f"0..{n_train - 1}")
    if arr.size == 0:
        raise UserError(f"--exclude {path}: the file lists no ids, so the curated set would equal the full one")
    return arr


def choose_exclusions(store: Store, summary: dict[str, Any], names: list[str], train_labels: np.ndarray, min_share: float,
              pairs: Sequence[tuple[int | str, int | str]] | str, exclude_file: str | Path | None,
              all_uncertain: bool = False, concept: int | None = None) -> Curation:
    """Apply the curation rule (or the concept rule) to the analysed training samples, or read the user's own
    exclusion list."""
    flagged = _usable_uncertain(summary, all_uncertain)
    uncertain = {} if concept is not None else _uncertain_by_pair(flagged)
    if concept is not None:
        chosen: dict[Pair, list[int]] = {}
    elif pairs == "top":
        chosen = _top_pairs(flagged, uncertain)
    elif pairs == "all":
        chosen = uncertain
    elif isinstance(pairs, str):
        raise UserError(f"--pairs {pairs}: give 'top', 'all' or class pairs such as 3,5;2,7")
    else:
        chosen: dict[Pair, list[int]] = {}
        for pair in (_resolve_pair(p, names) for p in pairs):
            chosen[pair] = uncertain.get(pair, [])
            if not chosen[pair]:
                print(f"note: the analysis flagged no uncertain prototype for the pair {pair_label(pair, names)}; "
                      "it excludes nothing (its confusions are still reported)")
    n_train = len(train_labels)
    if exclude_file is not None:
        ids = read_exclude_file(exclude_file, n_train)
        source = str(Path(exclude_file).resolve())
    else:
        if concept is None and not any(chosen.values()):
            what = "any pair" if isinstance(pairs, str) else "the given pairs"
            dropped = [u for u in summary.get("uncertain", []) if u not in flagged
                       and (isinstance(pairs, str) or tuple(sorted(u["classes"])) in chosen)]
            if dropped:
                raise UserError(f"{store.path.parent}: no significant uncertain prototype for {what} "
                                f"({len(dropped)} flagged, none beyond noise: see the report's uncertain section), "
                                "so the curation rule has nothing to exclude; add --all-uncertain to curate from every "
                                "flagged prototype")
            raise UserError(f"{store.path.parent}: the analysis flagged no uncertain prototype for {what}, so the "
                            f"curation rule has nothing to exclude. {NO_UNCERTAIN_ADVICE}")
        split = store.config.get("split", "train")
        if split != "train":
            raise UserError(f"{store.path.parent}: the analysis covered the {split!r} split, but the curated set is "
                            "built from the training split; rerun `i2x run` with --split train, or give the "
                            "training ids to leave out with --exclude FILE")
        sample_index = store.read("sample_index")
        labels = store.read("labels")
        if sample_index.max(initial=-1) >= n_train or not np.array_equal(train_labels[sample_index], labels):
            raise UserError(f"{store.path}: the store's labels do not match the training split of --data "
                            f"{store.config.get('data')}; the data changed since the analysis, rerun `i2x run`")
        share = store.read("analysis/share")
        members = concept_members(store.path.parent, share.shape[1])
        if concept is not None:
            excluded = concept_exclusion(share, members, concept, min_share)
        else:
            excluded = exclusion_mask(concept_shares(share, members), labels, chosen, min_share)
        ids = np.unique(sample_index[excluded])
        if len(sample_index) < n_train:
            print(f"note: the analysis covered {len(sample_index)} of the {n_train} training samples (--limit); "
                  "only those can be excluded")
        if ids.size == 0:
            what = f"concept {concept}" if concept is not None else "an uncertain prototype's concept"
            raise UserError(f"no training sample has {what} covering >= {min_share:g} of its cells; "
                            "lower --min-share (e.g. 0.05) or give your own --exclude FILE")
        source = "rule"
    counts = np.bincount(train_labels[ids], minlength=len(names))
    per_class = {names[c]: int(counts[c]) for c in np.flatnonzero(counts)}
    sizes = np.bincount(train_labels, minlength=len(names))
    return Curation(ids=ids, source=source, pairs=chosen, per_class=per_class, n_train=n_train,
                    class_sizes={names[c]: int(sizes[c]) for c in range(len(names))})


def _usable_uncertain(summary: dict[str, Any], all_uncertain: bool) -> list[dict[str, Any]]:
    """summary.json's uncertain prototypes that curation may use: the significant ones, or all of them.

    A summary written before significance was tested has no ``significant`` field: all of its entries count.
    """
    return [u for u in summary.get("uncertain", []) if all_uncertain or u.get("significant", True)]


def _top_pairs(flagged: list[dict[str, Any]], uncertain: dict[Pair, list[int]]) -> dict[Pair, list[int]]:
    """The flagged pairs that are among the most confused at the final checkpoint, else the top-scoring one."""
    top = {tuple(sorted(u["classes"])) for u in flagged if u.get("in_top_confused")}
    if not top and flagged:
        top = {tuple(sorted(flagged[0]["classes"]))}
    return {pair: protos for pair, protos in uncertain.items() if pair in top}


def _uncertain_by_pair(flagged: list[dict[str, Any]]) -> dict[Pair, list[int]]:
    """{(a, b): the uncertain prototypes flagged for that pair}, strongest first."""
    found: dict[Pair, list[int]] = {}
    for u in flagged:
        a, b = u["classes"]
        found.setdefault((min(a, b), max(a, b)), []).append(int(u["prototype"]))
    return found


def _resolve_pair(pair: tuple[int | str, int | str], names: list[str]) -> Pair:
    """A pair given by class names or indices as sorted class indices (a UserError names what is unknown)."""
    if len(pair) != 2:
        raise UserError(f"--pairs {pair!r}: give each pair as two classes, e.g. 2,7 or cat,dog")
    index = []
    for c in pair:
        if isinstance(c, str) and c in names:
            index.append(names.index(c))
        elif str(c).strip().lstrip("-").isdigit() and 0 <= int(c) < len(names):
            index.append(int(c))
        else:
            raise UserError(f"--pairs: {c!r} is not a class of this analysis; classes: {', '.join(names)}")
    a, b = index
    if a == b:
        raise UserError(f"--pairs {pair!r}: the two classes of a pair must differ")
    return (min(a, b), max(a, b))


def fallback_pairs(summary: dict[str, Any]) -> list[Pair]:
    """With --exclude and no flagged pair: report the final checkpoint's most confused pairs."""
    return [tuple(sorted(p["classes"])) for p in summary.get("top_confused_pairs", [])]  # type: ignore[misc]


def pair_label(pair: Pair, names: list[str]) -> str:
    """``2<->7``: how a pair is shown in tables and JSON keys."""
    return f"{names[pair[0]]}<->{names[pair[1]]}"


def print_curation(curation: Curation, names: list[str], min_share: float) -> None:
    """What the curated set leaves out, per class with the share of the class, and a note when most of one goes."""
    sizes = curation.class_sizes or {}
    counts = ", ".join(f"class {c}: {n}" + (f" of {sizes[c]} ({n / sizes[c]:.0%})" if sizes.get(c) else "")
                       for c, n in curation.per_class.items())
    print(f"curated set: excluding {curation.ids.size} of {curation.n_train} training samples ({counts})")
    most = [f"{c} ({n / sizes[c]:.0%})" for c, n in curation.per_class.items()
            if sizes.get(c) and n > LARGE_EXCLUSION * sizes[c]]
    if most:
        print(f"note: the curated set removes most of class {', '.join(most)}: a gain may be the classes' new balance, "
              "not the prototype; compare with random -> full, which leaves out as many samples per class at random")
    if curation.source == "rule":
        for pair, protos in curation.pairs.items():
            if protos:
                print(f"  pair {pair_label(pair, names)}: uncertain prototype(s) {', '.join(map(str, protos))}, "
                      f"share >= {min_share:g}")
    else:
        print(f"  ids from {curation.source}")
    if curation.ids.size > LARGE_EXCLUSION * curation.n_train:
        print(f"note: that is {curation.ids.size / curation.n_train:.0%} of the training set; to curate less, name "
              "the pair(s) you care about with --pairs A,B or raise --min-share")


def excluded_record(curation: Curation, names: list[str],
                     controls: dict[str, dict[int, np.ndarray]] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "source": curation.source,
        "count": int(curation.ids.size),
        "train_size": curation.n_train,
        "per_class": curation.per_class,
        "pairs": [{"classes": list(p), "label": pair_label(p, names), "prototypes": protos}
                  for p, protos in curation.pairs.items()],
    }
    if controls:
        record["controls"] = {name: {"count": int(next(iter(by_seed.values())).size),
                                     "shared_with_curated": {str(seed): int(np.intersect1d(ids, curation.ids).size)
                                                             for seed, ids in by_seed.items()}}
                              for name, by_seed in controls.items()}
    return record


def write_excluded(path: Path, curation: Curation, names: list[str], min_share: float,
                    controls: dict[str, dict[int, np.ndarray]] | None = None) -> None:
    """``excluded.json``: the rule, the counts and the excluded training-split indices (reusable as --exclude)."""
    record = {**excluded_record(curation, names, controls),
              "min_share": min_share if curation.source == "rule" else None, "ids": curation.ids.tolist()}
    for name, by_seed in (controls or {}).items():
        record["controls"][name]["ids"] = {str(seed): ids.tolist() for seed, ids in by_seed.items()}
    write_json(path, record)
