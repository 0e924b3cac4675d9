"""The training order of a directory's snapshots, and which of them are duplicates.

Order (``order="step"``, the default): by the step stored inside (``global_step``, then ``step``,
then ``epoch``; HF folders: ``trainer_state.json``) when every snapshot has one of the same kind,
else by the numbers in the names (``epoch_2`` before ``epoch_10``, and before ``checkpoint-69/`` whatever the
words around the numbers: a directory mixing formats mixes name patterns); a name without
a number (``last.pt``) goes last (first if it says ``init``/``start``/``untrained``). Modification
time orders only when asked (``order="mtime"``): copies and checkouts reset it.

Duplicates: snapshots whose weights are identical are listed once, keeping the most informative name
(one with a number, ``epoch=3-step=1200.ckpt`` over ``last.ckpt``), unless ``keep_duplicates``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from i2x.io.checkpoints.inspection import full_digest
from i2x.io.checkpoints.snapshot import Checkpoint


log = logging.getLogger(__name__)

ORDERS = ("step", "name", "mtime")
# Names without a number that mean "before training" (placed first); other number-less names go last.
FIRST_WORDS = ("init", "initial", "start", "untrained", "random", "scratch", "begin")


def natural_numbers(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def natural_key(name: str) -> tuple:
    """Natural name order: ``epoch_2`` before ``epoch_10`` (digit runs compare as numbers)."""
    return tuple((1, int(part), "") if part.isdigit() else (0, 0, part.lower()) for part in re.split(r"(\d+)", name) if part)


def _pattern(name: str) -> str:
    return re.sub(r"\d+", "#", name)


def resolve_duplicates(found: list[Checkpoint], keep: bool, trust: bool) -> tuple[list[Checkpoint], list[dict[str, Any]]]:
    """Group snapshots by weights digest (candidates by the quick digest, confirmed by the full one, so only
    likely duplicates are read in full); in each group keep one: a real file over a link, a name with a number
    (epoch=3-step=1200.ckpt) over one without (last.ckpt), the directory's usual name pattern (epoch_1.pt over
    copy_of_1.pt), then the first in natural name order."""
    patterns: dict[str, int] = {}
    for c in found:
        patterns[_pattern(c.name)] = patterns.get(_pattern(c.name), 0) + 1

    def rank(c: Checkpoint) -> tuple:
        linked = c.path.is_symlink() or c.path.parent.is_symlink()
        return (linked, not natural_numbers(c.name), -patterns[_pattern(c.name)], natural_key(c.name))

    candidates: dict[str, list[Checkpoint]] = {}
    for c in found:
        if c.digest is not None:
            candidates.setdefault(c.digest, []).append(c)
    groups: dict[str, list[Checkpoint]] = {}
    for members in candidates.values():
        if len(members) > 1:
            for c in members:
                c.digest = full_digest(c.path, trust)
                if c.digest is not None:
                    groups.setdefault(c.digest, []).append(c)
    dropped: set[int] = set()
    records: list[dict[str, Any]] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        first, *others = sorted(members, key=rank)
        for c in others:
            records.append({"name": c.name, "same_as": first.name, "kept": keep})
            if not keep:
                dropped.add(id(c))
        log.warning("identical weights in %s; %s", ", ".join(c.name for c in [first, *others]),
                    "all kept (--keep-duplicates)" if keep else f"analysing {first.name} only")
    return [c for c in found if id(c) not in dropped], records


def order_checkpoints(found: list[Checkpoint], order: str) -> tuple[list[Checkpoint], str, str]:
    """Sort the snapshots; returns (them, the order used, why)."""
    if order == "mtime":
        ordered = sorted(found, key=lambda c: (c.path.stat().st_mtime, natural_key(c.name)))
        for i, c in enumerate(ordered):
            c.step, c.step_source = i, "mtime"
        return ordered, "mtime", "asked (--order mtime): by file modification time"
    if order == "step":
        sources = {c.step_source for c in found}
        if all(c.step is not None for c in found) and len(sources) == 1:
            ordered = sorted(found, key=lambda c: (c.step, natural_key(c.name)))
            return ordered, "step", f"every checkpoint records its {next(iter(sources))} inside"
        without = [c.name for c in found if c.step is None]
        if without:
            more = f" (+{len(without) - 3} more)" if len(without) > 3 else ""
            why = f"{', '.join(without[:3])}{more} record{'s' if len(without) == 1 else ''} no step inside"
        else:
            why = f"the steps inside are of different kinds ({', '.join(sorted(sources))})"
        why += "; by the numbers in the names"
    else:
        why = "asked (--order name): by the numbers in the names"
    numbered = [c for c in found if natural_numbers(c.name)]
    bare = [c for c in found if not natural_numbers(c.name)]
    early = sorted((c for c in bare if c.name.lower().startswith(FIRST_WORDS)), key=lambda c: natural_key(c.name))
    late = sorted((c for c in bare if not c.name.lower().startswith(FIRST_WORDS)), key=lambda c: natural_key(c.name))
    ordered = early + sorted(numbered, key=lambda c: (natural_numbers(c.name), natural_key(c.name))) + late
    for c in ordered:
        numbers = natural_numbers(c.name)
        c.step, c.step_source = (numbers[-1], "name") if numbers else (None, "none")
    if bare and numbered:
        where = []
        if early:
            where.append(f"{', '.join(c.name for c in early)} first")
        if late:
            where.append(f"{', '.join(c.name for c in late)} last")
        why += f"; without a number: {' and '.join(where)}"
    elif bare:
        why += " (none has a number: alphabetical; --order mtime orders by modification time)"
    return ordered, "name", why
