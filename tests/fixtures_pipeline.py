"""A tiny real pipeline run (train -> extract -> analyze -> report) shared by the report tests.

The data are 600 scikit-learn digits saved as an npz whose class names are hostile HTML, so every
report test also exercises escaping. Results are cached under pytest's session base temp, so the
modules that import these fixtures build them once per session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from i2x import api
from i2x.io.workdir import load_summary
from i2x.stages.analyze.config import AnalyzeConfig

HOSTILE_NAMES = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>', "cat & \"dog\" </script>",
                 "3", "4", "5", "6", "7", "8", "9"]


def _tiny_run(root: Path) -> Path:
    """Train a SmallCNN for 4 epochs on 400 digits (~55% test accuracy), then run the pipeline on 200 of them;
    returns the analysis dir."""
    out = root / "an"
    if (out / "summary.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:400], order[400:600]
    np.savez(root / "d.npz", x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
             class_names=np.array(HOSTILE_NAMES))
    data = f"npz:{root / 'd.npz'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs faster on one thread, and far faster on a busy machine
    try:
        api.train(data=data, out=root / "ck", epochs=4, lr=1e-2, progress=False, input_size=32)
        api.run(checkpoints=str(root / "ck"), data=data, input_size=32, out=out, limit=200, progress=False,
                analyze_config=AnalyzeConfig(k=8, min_flips=1, noise_quantile=0.5))
    finally:
        torch.set_num_threads(threads)
    assert load_summary(out)["uncertain"], "the fixture must flag uncertain prototypes (their section has cards)"
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The analysis directory of the tiny run (store + summary.json), without a report."""
    return _tiny_run(tmp_path_factory.getbasetemp() / "i2x-tiny-run")


@pytest.fixture(scope="module")
def tiny_report(tiny_run) -> Path:
    """``report.html`` of the tiny run (built once per session)."""
    path = tiny_run / "report.html"
    return path if path.is_file() else api.report(tiny_run, progress=False)
