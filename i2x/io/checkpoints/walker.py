"""The checkpoint walker: how training snapshots are found in a directory and picked.

Found in a directory (not recursively):

* files ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.bin``, ``*.safetensors`` and ``*.pth.tar``;
* sub-directories in the Hugging Face shape (``checkpoint-500/``) holding ``model.safetensors``
  or ``pytorch_model.bin``.

Everything else is ignored (and listed at debug level), including the Trainer's non-weight files
(``training_args.bin``, ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state.pth``).
A symlink that leads out of the directory is refused, and so is a snapshot-named entry that cannot be read (a
link that loops or dangles, a device, a pipe): the run would otherwise miss it without a word.
The directory may be a URL (``s3://bucket/run/``,
:mod:`i2x.io.location`): it is listed there and each snapshot is fetched whole once per process into a local copy
(:mod:`i2x.io.object_copies`) that its step, weights digest, sha256 and load all read.

The rest lives beside this module: reading one file safely (:mod:`i2x.io.checkpoints.formats`), the step
and weights digest inside it (:mod:`i2x.io.checkpoints.inspection`), training order and duplicates
(:mod:`i2x.io.checkpoints.order`; the order used and why are returned with the list, :class:`Listing`),
and the state_dict matched to a model (:mod:`i2x.io.checkpoints.state_dicts`).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from i2x.errors import UserError
from i2x.io.checkpoints.formats import HF_WEIGHT_FILES
from i2x.io.checkpoints.inspection import inspect
from i2x.io.location import as_path, is_remote
from i2x.io.checkpoints.order import ORDERS, order_checkpoints, resolve_duplicates
from i2x.io.checkpoints.snapshot import Checkpoint

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pth.tar")
# Files that sit next to weights but hold other training state (the Hugging Face Trainer writes them).
NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth"})


def _has_suffix(name: str) -> bool:
    return name.endswith(SUFFIXES)


def _weight_file(entry: Path) -> Path | None:
    """The weight file behind a directory entry, or None if it is not a snapshot."""
    if entry.is_file() and _has_suffix(entry.name) and entry.name not in NOT_WEIGHTS:
        return entry
    if entry.is_dir():
        for fname in HF_WEIGHT_FILES:
            if (entry / fname).is_file():
                return entry / fname
    return None


@dataclass
class Listing:
    """The snapshots of a directory in training order, how that order was chosen, and the duplicates left out."""

    checkpoints: list[Checkpoint]
    order: str
    reason: str
    duplicates: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record (kept in the store)."""
        return {"order": self.order, "reason": self.reason, "duplicates": list(self.duplicates)}

    def summary(self) -> str:
        """One line for the console: the order and why, and what was skipped as a duplicate."""
        line = f"checkpoint order: {self.order} ({self.reason})"
        skipped = [d for d in self.duplicates if not d["kept"]]
        if skipped:
            pairs = ", ".join(f"{d['name']} (= {d['same_as']})" for d in skipped)
            line += f"; skipped {len(skipped)} duplicate(s) with identical weights: {pairs} (--keep-duplicates keeps them)"
        elif self.duplicates:
            line += f"; {len(self.duplicates)} duplicate(s) kept (--keep-duplicates)"
        return line


def find_checkpoints(directory: str | Path, trust: bool = False, order: str = "step",
                     keep_duplicates: bool = False) -> list[Checkpoint]:
    """List the snapshots in ``directory`` in training order (see the module docstring for the rules)."""
    return list_checkpoints(directory, trust, order, keep_duplicates).checkpoints


def list_checkpoints(directory: str | Path, trust: bool = False, order: str = "step",
                     keep_duplicates: bool = False) -> Listing:
    """The snapshots in ``directory``, duplicates resolved and ordered, with the order's reason."""
    if order not in ORDERS:
        raise UserError(f"--order {order}: choose one of {', '.join(ORDERS)}")
    root = as_path(directory)
    if not root.is_dir():
        raise UserError(f"checkpoint directory {root} does not exist or is not a directory")
    found: list[Checkpoint] = []
    for entry in sorted(root.iterdir()):
        _refuse_unreadable(entry)
        weights = _weight_file(entry)
        if weights is None:
            log.debug("ignoring %s: not a checkpoint", entry)
            continue
        _refuse_escaping_link(root, entry, weights)
        step, source, meta, digest = inspect(weights, trust)
        found.append(Checkpoint(name=entry.name, path=weights, step=step, step_source=source, meta=meta, digest=digest))
    if not found:
        raise UserError(
            f"{root}: no checkpoints found (looked for {', '.join('*' + s for s in SUFFIXES)} files and "
            f"HF-style folders holding {' or '.join(HF_WEIGHT_FILES)})"
        )
    kept, duplicates = resolve_duplicates(found, keep_duplicates, trust)
    ordered, used, reason = order_checkpoints(kept, order)
    listing = Listing(ordered, used, reason, duplicates)
    log.info("%s", listing.summary())
    return listing


def recorded_checkpoints(directory: str | Path, records: Iterable[dict[str, Any]]) -> list[Checkpoint]:
    """The snapshots a store recorded (``name``, ``step``), found in ``directory`` by name without reading any.

    A study that loads one checkpoint of an extracted run neither lists nor inspects the others (on object
    storage each would be a download), and "final" stays the store's final checkpoint even if later snapshots
    were saved since. A snapshot no longer there (or a folder without its weight file) keeps its entry as the
    path, which is no file.
    """
    root = as_path(directory)
    found: list[Checkpoint] = []
    for record in records:
        entry = root / record["name"]
        weights = _weight_file(entry)
        if weights is not None:
            _refuse_escaping_link(root, entry, weights)
        found.append(Checkpoint(name=record["name"], path=weights or entry, step=record.get("step"),
                                step_source=record.get("step_source", "unknown")))
    return found


def _refuse_unreadable(entry: Path) -> None:
    """A snapshot-named entry that is no readable file or folder (a link that loops or dangles, a device such as
    /dev/zero, a pipe) is refused by name rather than skipped: the run would silently miss a step."""
    named = (_has_suffix(entry.name) and entry.name not in NOT_WEIGHTS) or entry.name.startswith("checkpoint-")
    if not named or is_remote(entry) or entry.is_file() or entry.is_dir():  # object storage has no links or devices
        return
    if entry.is_symlink():
        try:
            entry.resolve(strict=True)
        except RuntimeError:  # Python < 3.13
            why = "a symbolic link that loops"
        except OSError as exc:
            why = ("a symbolic link that loops" if exc.errno == errno.ELOOP
                   else f"a symbolic link to {os.readlink(entry)}, which does not exist")
        else:
            why = f"a symbolic link to {entry.resolve()}, which is not a regular file"
    else:
        why = "not a regular file (a device, pipe or socket)"
    raise UserError(f"{entry}: {why}; remove it, or replace it by the snapshot it stands for")


def _refuse_escaping_link(root: Path, entry: Path, weights: Path) -> None:
    """A symlink (the entry or the weight file in it) leading outside ``root`` is refused: it would analyse
    a file that is not part of this training run as one of its steps."""
    if not (entry.is_symlink() or weights.is_symlink()):
        return
    inside = root.resolve()
    target = weights.resolve()
    if target != inside and inside not in target.parents:
        raise UserError(
            f"{entry}: a symbolic link to {target}, outside the checkpoint directory {root}; copy the file into "
            "the directory if it belongs to this run, or remove the link"
        )


def select(
    checkpoints: list[Checkpoint],
    every: int | None = None,
    first: int | None = None,
    last: int | None = None,
    names: Iterable[str] | None = None,
) -> list[Checkpoint]:
    """Pick a subset in training order: explicit names, every N-th (the final one always kept), first/last N."""
    for option, value in (("--every", every), ("--first", first), ("--last", last)):
        if value is not None and value < 1:
            raise UserError(f"{option} {value}: must be a positive integer")
    chosen = list(checkpoints)
    if names:
        wanted = list(names)
        by_name = {c.name: c for c in chosen}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise UserError(
                f"--checkpoints: {', '.join(missing)} not found; available: {', '.join(by_name)}"
            )
        chosen = [c for c in chosen if c.name in set(wanted)]
    if every:
        kept = chosen[::every]
        if chosen and kept[-1] is not chosen[-1]:
            kept.append(chosen[-1])
        chosen = kept
    if first:
        chosen = chosen[:first]
    if last:
        chosen = chosen[-last:]
    if not chosen:
        raise UserError("the checkpoint selection (--every/--first/--last/--checkpoints) left no checkpoints")
    return chosen
