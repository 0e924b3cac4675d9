"""Snapshot recorders: keep enough weights during training for ``i2x run`` to see how reasoning forms.

Most training runs keep only "last" and "best". A recorder saves weights-only safetensors snapshots,
``step_000123.safetensors`` (the step also stored in the file's metadata, so the checkpoint walker orders
them by it), into one directory that ``i2x run --checkpoints DIR`` reads as is.

The schedule is dense early and sparse later, because early training is where attributions change
most: every step up to ``dense`` (step 0 is the untrained model), then steps spaced geometrically by
``ratio`` (``dense``, then ``round(previous * ratio)``: with the defaults 0-10, 15, 22, 33, 50, 75, 112,
...), plus the final step. About ``dense + 2 + log(total / dense) / log(ratio)`` snapshots for ``total``
steps: 29 for 10,000 steps (0-10, 15, 22, 33, ..., 6453, 9680, 10000).

One line per training library (the optional ones are imported only when their recorder is built):

* plain PyTorch: ``rec = SnapshotRecorder("snaps")``, then ``rec.maybe_save(model, step)`` in the loop;
* Lightning: ``Trainer(callbacks=[lightning_callback("snaps")])``;
* Hugging Face: ``Trainer(..., callbacks=[hf_callback("snaps")])``.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import torch
from torch import nn

from i2x.errors import UserError

DENSE = 10
RATIO = 1.5


def _geometric(dense: int, ratio: float, upto: int) -> list[int]:
    """The sparse part of the schedule: ``dense``, then ``round(previous * ratio)`` (at least +1), up to ``upto``."""
    steps, s = [], dense
    while s <= upto:
        steps.append(s)
        s = max(s + 1, round(s * ratio))
    return steps


def _check(dense: int, ratio: float) -> None:
    if dense < 0:
        raise UserError(f"dense={dense}: must be 0 or more (the steps saved one by one at the start)")
    if not ratio > 1:
        raise UserError(f"ratio={ratio}: must be more than 1 (the growth of the spacing between later snapshots)")


def should_save(step: int, dense: int = DENSE, ratio: float = RATIO) -> bool:
    """Whether ``step`` is on the schedule: every step up to ``dense``, then geometric spacing by ``ratio``."""
    _check(dense, ratio)
    if step <= dense:
        return step >= 0
    return step in _geometric(max(dense, 1), ratio, step)


def snapshot_steps(total: int, dense: int = DENSE, ratio: float = RATIO) -> list[int]:
    """The steps a recorder saves in a run of ``total`` steps: 0..dense, geometric spacing by ``ratio``, and ``total``."""
    _check(dense, ratio)
    steps = sorted({s for s in range(min(dense, total) + 1)} | set(_geometric(max(dense, 1), ratio, total)) | {total})
    return [s for s in steps if 0 <= s <= total]


def save_snapshot(model: nn.Module, path: str | Path, step: int) -> Path:
    """Write ``model``'s weights (every tensor copied to the CPU, so tied weights do not share memory) as
    safetensors with the step in the metadata; written to a temporary name first, so a reader never sees
    half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() or path.is_symlink():
        raise UserError(f"{path}: a snapshot of step {step} is already there; the recorder never replaces one. Record "
                        "into a new directory, or delete the old snapshots first")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"step": str(int(step)), "format": "pt"})
    tmp.replace(path)
    return path


def _step(step: Any) -> int:
    """``step`` as a training step: an integer of 0 or more (a float or a negative step would file a snapshot
    under another step's name, or sort it first)."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise UserError(f"step {step!r}: a snapshot step is an integer of 0 or more (the optimiser step count)")
    return int(step)


class SnapshotRecorder:
    """Saves ``step_NNNNNN.safetensors`` into ``directory`` whenever a step is on the schedule.

    ``schedule``: a predicate on the step (default: :func:`should_save` with ``dense`` and ``ratio``).
    Call :meth:`maybe_save` after each optimiser step (and with step 0 before training); call
    :meth:`save` at the end so the final weights are kept whatever the schedule.
    """

    def __init__(self, directory: str | Path, schedule: Any = None, dense: int = DENSE, ratio: float = RATIO):
        _check(dense, ratio)
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"SnapshotRecorder({str(directory)!r}): is a file, not a directory; give the directory "
                            "the snapshots go to")
        self.schedule = schedule or (lambda step: should_save(step, dense, ratio))
        self.saved: list[int] = []

    def path(self, step: int) -> Path:
        return self.directory / f"step_{int(step):06d}.safetensors"

    def save(self, model: nn.Module, step: int) -> Path | None:
        """Save now (once per step: a second call for the same step does nothing); a snapshot of ``step`` left in
        the directory by another run is refused, never replaced."""
        step = _step(step)
        if step in self.saved:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = save_snapshot(model, self.path(step), step)
        self.saved.append(step)
        return path

    def maybe_save(self, model: nn.Module, step: int) -> Path | None:
        """Save if ``step`` is on the schedule; returns the file written, if any."""
        return self.save(model, step) if self.schedule(_step(step)) else None


def lightning_callback(directory: str | Path, **recorder: Any) -> Any:
    """A Lightning ``Callback`` that records the LightningModule's weights by ``trainer.global_step`` (optimiser
    steps): step 0 before training, the schedule after each batch, the final step at the end."""
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        try:
            from pytorch_lightning.callbacks import Callback
        except ImportError:
            raise UserError("lightning_callback: Lightning is not installed; pip install 'i2x[recorders]' "
                            "(or pip install lightning)") from None
    rec = SnapshotRecorder(directory, **recorder)

    class SnapshotCallback(Callback):
        recorder = rec

        def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
            if trainer.is_global_zero:
                rec.maybe_save(pl_module, trainer.global_step)

        def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, *args: Any) -> None:
            if trainer.is_global_zero:
                rec.maybe_save(pl_module, trainer.global_step)

        def on_train_end(self, trainer: Any, pl_module: nn.Module) -> None:
            if trainer.is_global_zero:
                rec.save(pl_module, trainer.global_step)

    return SnapshotCallback()


def hf_callback(directory: str | Path, **recorder: Any) -> Any:
    """A Hugging Face ``TrainerCallback`` that records the model's weights by ``state.global_step``: step 0
    before training, the schedule after each optimiser step, the final step at the end."""
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise UserError("hf_callback: transformers is not installed; pip install 'i2x[recorders]' "
                        "(or pip install transformers)") from None
    rec = SnapshotRecorder(directory, **recorder)

    class SnapshotCallback(TrainerCallback):
        recorder = rec

        def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and model is not None:
                rec.maybe_save(model, state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and model is not None:
                rec.maybe_save(model, state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and model is not None:
                rec.save(model, state.global_step)

    return SnapshotCallback()
