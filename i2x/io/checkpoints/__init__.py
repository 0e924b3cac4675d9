"""Training snapshots: finding them in a directory (:mod:`~i2x.io.checkpoints.walker`), reading one file
safely (:mod:`~i2x.io.checkpoints.formats`), the step and weights digest inside it
(:mod:`~i2x.io.checkpoints.inspection`), training order and duplicates (:mod:`~i2x.io.checkpoints.order`) and
the state_dict matched to a model (:mod:`~i2x.io.checkpoints.state_dicts`). The walker's names are re-exported
here; the modules import each other, never this package."""

from i2x.io.checkpoints.snapshot import Checkpoint
from i2x.io.checkpoints.walker import Listing, find_checkpoints, list_checkpoints, recorded_checkpoints, select

__all__ = ["Checkpoint", "Listing", "find_checkpoints", "list_checkpoints", "recorded_checkpoints", "select"]
