"""Drift across runs end to end: two architectures trained two-phase on digits, compared with ``i2x drift A B``.

The small CNN and torchvision's resnet18 train 2 epochs on 400 digits at 16x16 (epoch 1 with a frozen
backbone), are extracted on 150 samples, and the cross-run table, rankings, Kendall tau, reversals and
bootstrap intervals are checked against a direct computation with :mod:`i2x.metrics.drift` and scipy.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import vl_convert as vlc
from scipy.stats import kendalltau
from sklearn.datasets import load_digits

from i2x import api
from i2x.cli import main
from i2x.io.store import Store
from i2x.metrics.drift import drift_metrics
from i2x.reporting.page import vega_version

pytestmark = pytest.mark.slow

RUNS = {"cnn": dict(model="small-cnn", lr=1e-2, batch_size=16), "resnet": dict(model="torchvision:resnet18", lr=1e-3,
                                                                              batch_size=32)}
METHODS = ["gradcampp", "layercam", "gradcam"]  # the order the comparison uses: the paper's pair first
SIGN = {"iou": 1.0, "spearman": 1.0, "shift_frac": -1.0}
REPLICATES, SEED = 200, 3


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, dict, dict[str, Path]]:
    """Two two-phase runs on the same digits, extracted on the same 150 samples, compared through the CLI."""
    root = tmp_path_factory.mktemp("drift-runs")
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:400], order[400:500]
    np.savez(root / "d.npz", x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    data = f"npz:{root / 'd.npz'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dirs = {}
    try:
        for name, kw in RUNS.items():
            api.train(data=data, out=root / name / "ck", epochs=2, freeze_backbone_epochs=1, input_size=16,
                      progress=False, **kw)
            dirs[name] = root / name / "an"
            api.extract(checkpoints=str(root / name / "ck"), model=kw["model"], data=data, input_size=16,
                        out=dirs[name], limit=150, progress=False)
    finally:
        torch.set_num_threads(threads)
    out = root / "compare" / "drift.json"
    assert main(["drift", str(dirs["cnn"]), str(dirs["resnet"]), "--names", "cnn,resnet", "--phase-split", "auto",
                 "--bootstrap", str(REPLICATES), "--seed", str(SEED), "--out", str(out)]) == 0
    return out, json.loads(out.read_text()), dirs


def _direct(dirs: dict[str, Path]) -> tuple[dict, dict]:
    """Per metric, method and run: the mean drift (end of the frozen phase -> final) and the per-sample values
    over the 150 shared samples (NaN where the sample is not a true positive at both checkpoints)."""
    means: dict = {k: {m: {} for m in METHODS} for k in SIGN}
    values: dict = {k: {m: {} for m in METHODS} for k in SIGN}
    for name, d in dirs.items():
        store = Store.open(d)
        probs, labels = store.read("probs"), store.read("labels")
        frozen = max(t for t, c in enumerate(store.checkpoints) if c["metrics"]["phase"] == "frozen-backbone")
        final = len(store.checkpoints) - 1
        keep = (probs[frozen].argmax(1) == labels) & (probs[final].argmax(1) == labels)
        assert keep.sum() > 0, f"{name}: no true positive in both phases; the comparison would be empty"
        for m in METHODS:
            a, b = store.cam(m)[frozen][keep], store.cam(m)[final][keep]
            per_sample = drift_metrics(a, b, 0.2)
            empty = (a.reshape(len(a), -1).max(1) <= 0) | (b.reshape(len(b), -1).max(1) <= 0)  # an all-zero map
            for k in SIGN:  # shift_frac: in cells over the grid diagonal, the stage's px over the input diagonal
                full = np.full(len(labels), np.nan)
                full[keep] = np.where(empty, np.nan, per_sample[k])  # a pair with an empty map counts for nothing
                values[k][m][name] = full
                means[k][m][name] = float(np.nanmean(full))
    return means, values


def test_table_rankings_and_tau_match_a_direct_computation(compared):
    out, result, dirs = compared
    means, _ = _direct(dirs)
    assert result["names"] == ["cnn", "resnet"] and result["methods"] == METHODS
    assert result["samples"]["n_common"] == 150 and result["samples"]["n_label_mismatch"] == 0
    for name in dirs:
        run = result["runs"][name]
        assert run["from"]["phase"] == "frozen-backbone" and run["to"]["phase"] == "full"
        assert run["undefined"] is None
    for k, sign in SIGN.items():
        e = result["stability"][k]
        for m in METHODS:
            for name in dirs:
                assert e["scores"][m][name] == pytest.approx(means[k][m][name], rel=1e-9), (k, m, name)
            expected = sorted(dirs, key=lambda n: -sign * means[k][m][n])
            assert e["ranking"][m] == expected
            assert e["ranks"][m] == {n: expected.index(n) + 1 for n in expected}
        for c, (m1, m2) in zip(e["reversals"], itertools.combinations(METHODS, 2)):
            assert c["methods"] == [m1, m2]
            x = [sign * means[k][m1][n] for n in dirs]
            y = [sign * means[k][m2][n] for n in dirs]
            assert c["kendall_tau"] == pytest.approx(kendalltau(x, y).statistic)
            flipped = (x[0] - x[1]) * (y[0] - y[1]) < 0
            assert c["reversed_pairs"] == ([["cnn", "resnet"]] if x[0] > x[1] else [["resnet", "cnn"]]) * flipped
            assert len(c["reversals"]) == int(flipped)


def test_intervals_and_noise_labels_match_a_paired_bootstrap_by_hand(compared):
    out, result, dirs = compared
    means, values = _direct(dirs)
    draws = np.random.default_rng(SEED).integers(0, 150, size=(REPLICATES, 150))  # one draw per replicate, shared

    def replicates(v: np.ndarray) -> np.ndarray:
        return np.array([np.nanmean(v[d]) if (~np.isnan(v[d])).any() else np.nan for d in draws])

    for k, sign in SIGN.items():
        e = result["stability"][k]
        reps = {m: {n: replicates(values[k][m][n]) for n in dirs} for m in METHODS}
        for m in METHODS:
            for n in dirs:
                r = reps[m][n][np.isfinite(reps[m][n])]
                assert e["intervals"][m][n] == pytest.approx(list(np.percentile(r, [2.5, 97.5])))
        for c in e["reversals"]:
            for rev in c["reversals"]:
                a, b = rev["pair"]
                crosses = []
                for m in c["methods"]:
                    diff = sign * (reps[m][a] - reps[m][b])
                    lo, hi = np.percentile(diff[np.isfinite(diff)], [2.5, 97.5])
                    assert rev["difference"][m]["interval"] == pytest.approx([lo, hi])
                    crosses.append(lo <= 0 <= hi)
                assert rev["within_noise"] == any(crosses)


def test_page_is_self_contained_and_its_charts_compile(compared):
    out, result, dirs = compared
    page = out.with_suffix(".html").read_text()
    assert "Semantic drift across runs" in page and "cnn" in page and "resnet" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # loads nothing from the network
    specs = json.loads(re.search(r'<script id="i2x-specs" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert set(specs) == {"chart-drift-rank-slopes"}
    assert vlc.vegalite_to_vega(specs["chart-drift-rank-slopes"], vl_version=vega_version())["marks"]
