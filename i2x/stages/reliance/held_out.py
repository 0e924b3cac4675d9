"""The final checkpoint on the held-out split: its accuracy and confusion matrix, written into reliance.json so the
report shows both splits side by side without running a model."""
from __future__ import annotations

from typing import Any

import numpy as np

from i2x.io.data import labels_of
from i2x.stages.context import Context
from i2x.stages.training import evaluate


def held_out_split(ctx: Context) -> str | None:
    """The split not analysed that the study tests on (``test`` when there is one), or None when there is none."""
    others = [s for s in ctx.data.splits if s != ctx.config.split]
    return "test" if "test" in others else (others[0] if others else None)


def held_out_predictions(ctx: Context, classes: int, batch_size: int) -> dict[str, Any] | None:
    """Accuracy and confusion matrix (true rows, predicted columns) of the loaded model on the whole held-out split,
    or None when the data set has no other split."""
    name = held_out_split(ctx)
    if name is None:
        return None
    split = ctx.data.split(name)
    accuracy, _, preds = evaluate(ctx.model, split, ctx.device, batch_size)
    labels = labels_of(split).astype(np.int64)
    confusion = np.bincount(labels * classes + preds.numpy().astype(np.int64),
                            minlength=classes * classes).reshape(classes, classes)
    return {"split": name, "samples": int(labels.size), "accuracy": float(accuracy), "confusion": confusion.tolist()}
