"""The preprocessing an analysis uses is recorded (never null), shown first on the page, and checked against the model:
a batch norm near the input remembers its training inputs' statistics, so a model trained under one normalisation
and analysed under another is refused, naming the one that fits. ``--limit`` draws a stratified sample."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from i2x import api
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.stages.config import RunConfig
from i2x.stages.context import stratified_sample

NO_BN_MODEL = '''
from torch import nn

def net(num_classes=2, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''


def _xray_like(path: Path, n: int = 480) -> Path:
    """Grey images (mean about 0.6, sd about 0.15, like an X-ray set) whose class 1 holds a bright blob; the train
    split is sorted by class, as MedMNIST's is."""
    rng = np.random.default_rng(0)
    y = np.sort(rng.integers(0, 2, n))
    x = np.clip(0.6 + 0.15 * rng.standard_normal((n, 16, 16)), 0, 1)
    x[y == 1, 5:11, 5:11] = np.clip(x[y == 1, 5:11, 5:11] + 0.3, 0, 1)
    np.savez(path, x_train=(x * 255).astype(np.uint8), y_train=y, x_test=(x[::4] * 255).astype(np.uint8),
             y_test=y[::4])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One npz and small-cnn snapshots trained on it under 0.5/0.5 (as MedMNIST's scripts do) and under the data's
    own mean/std (i2x's default): 2 epochs of 30 batches, enough for the batch norms to forget their start."""
    root = tmp_path_factory.mktemp("pre")
    data = f"npz:{_xray_like(root / 'd.npz')}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        api.train(data=data, out=root / "half", epochs=2, batch_size=16, lr=1e-2, progress=False, mean=(0.5,),
                  std=(0.5,))
        api.train(data=data, out=root / "own", epochs=2, batch_size=16, lr=1e-2, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data, "half": root / "half", "own": root / "own"}


def _extract(runs: dict, ckpts: str, out: Path, **kw) -> Store:
    config = RunConfig(checkpoints=str(runs[ckpts]), data=runs["data"], last=1, methods=("gradcam",), limit=64,
                       batch_size=64, **kw)
    api.extract(config=config, out=out, progress=False)
    return Store.open(out)


def test_medmnist_case_is_found_from_the_model_alone(runs, tmp_path):
    """Trained with 0.5/0.5, analysed with i2x's default (the data's own mean/std): refused, naming 0.5/0.5."""
    with pytest.raises(UserError, match=r"fit 0\.5/0\.5 normalisation \(--mean 0\.5 --std 0\.5.*not the data's own"):
        _extract(runs, "half", tmp_path / "a")
    store = _extract(runs, "half", tmp_path / "b", mean=(0.5,), std=(0.5,))
    record = store.attrs["preprocessing"]
    assert record["check"]["status"] == "fits" and record["name"] == "0.5/0.5 normalisation"
    assert record["mean"] == [0.5] and record["std"] == [0.5] and record["input_size"] == [16, 16]
    scores = record["check"]["scores"]
    assert scores["0.5/0.5 normalisation"] <= 0.25 < scores["the data's own normalisation"]


def test_default_normalisation_is_recorded_and_checked(runs, tmp_path):
    """Trained and analysed with the data's own normalisation: accepted, and the store holds the numbers, not null."""
    store = _extract(runs, "own", tmp_path / "a")
    assert store.config["mean"] is not None and store.config["std"] is not None
    own = np.asarray(store.config["mean"])
    assert 0.6 < own[0] < 0.7  # the data's own mean (0.6 plus the blobs)
    assert store.attrs["preprocessing"]["check"]["status"] == "fits"
    with pytest.raises(UserError, match=r"fit the data's own normalisation .*not no normalisation"):
        _extract(runs, "own", tmp_path / "b", mean=(0.0,), std=(1.0,))


def test_override_is_recorded_and_shown(runs, tmp_path, capsys):
    out = tmp_path / "a"
    code = main(["extract", str(runs["half"]), "--out", str(out), "--data", runs["data"], "--last", "1", "--methods",
                 "gradcam", "--limit", "64", "--skip-normalisation-check"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "normalisation check skipped (--skip-normalisation-check)" in printed and "fit 0.5/0.5" in printed
    store = Store.open(out)
    assert store.config["skip_normalisation_check"] is True
    assert store.attrs["preprocessing"]["check"]["status"] == "skipped"


def test_a_model_without_batch_norm_is_marked_unchecked(runs, tmp_path, capsys):
    model = tmp_path / "nobn.py"
    model.write_text(NO_BN_MODEL)
    spec = f"{model}:net"
    api.train(data=runs["data"], model=spec, out=tmp_path / "ck", epochs=1, batch_size=64, progress=False)
    out = tmp_path / "a"
    assert main(["extract", str(tmp_path / "ck"), "--out", str(out), "--data", runs["data"], "--model", spec,
                 "--methods", "gradcam", "--limit", "64", "--layer", "2"]) == 0
    assert "normalisation unchecked: the model has no batch norm" in capsys.readouterr().out
    assert Store.open(out).attrs["preprocessing"]["check"]["status"] == "unchecked"


def test_limit_draws_both_classes_in_their_shares(runs, tmp_path, capsys):
    """The train split is sorted by class: the first 100 would be one class; the sample holds both in proportion."""
    labels = np.load(runs["root"] / "d.npz")["y_train"]
    assert labels[:100].max() == 0  # what the old --limit took
    index = stratified_sample(labels, 100)
    assert index.size == 100 and np.all(np.diff(index) > 0)
    share = labels.mean()
    assert abs(labels[index].mean() - share) <= 0.01
    np.testing.assert_array_equal(index, stratified_sample(labels, 100))  # seeded
    assert set(index) <= set(stratified_sample(labels, 150))  # a larger sample keeps the smaller one's samples
    out = tmp_path / "a"
    assert main(["extract", str(runs["own"]), "--out", str(out), "--data", runs["data"], "--last", "1", "--methods",
                 "gradcam", "--limit", "100"]) == 0
    printed = capsys.readouterr().out
    assert f"samples: 100 of {labels.size}, stratified (seed 0)" in printed
    store = Store.open(out)
    np.testing.assert_array_equal(store.read("sample_index"), index)
    assert store.attrs["sample"]["per_class"] == np.bincount(labels[index]).tolist()


def test_a_sample_short_of_a_class_says_so(runs, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["extract", str(runs["own"]), "--out", str(out), "--data", runs["data"], "--last", "1", "--methods",
                 "gradcam", "--limit", "12"]) == 0
    assert re.search(r"sample: fewer than 10 samples of 0 \(\d\), 1 \(\d\): results for those classes",
                     capsys.readouterr().out)


def test_timm_and_hf_configs_are_tried_and_their_input_size_named(tmp_path):
    """A preprocessor_config.json (HF) or a config.json's pretrained_cfg (timm) beside the checkpoints adds its
    normalisation to those tried, and a recorded input size that differs from the analysis's is named."""
    import json

    from i2x.io.datasets import DataOptions, tensor_data
    from i2x.stages.normalisation import candidates, recorded_configs

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.4], "image_std": [0.2], "size": {"height": 224, "width": 224}}))
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text(json.dumps(
        {"architecture": "resnet18", "pretrained_cfg": {"mean": [0.1], "std": [0.3], "input_size": [1, 16, 16]}}))
    found = dict(recorded_configs([tmp_path / "hf", tmp_path / "timm"]))
    assert found[str(tmp_path / "hf" / "preprocessor_config.json")] == {"mean": (0.4,), "std": (0.2,),
                                                                        "input_size": (224, 224)}
    assert found[str(tmp_path / "timm" / "config.json")] == {"mean": (0.1,), "std": (0.3,), "channels": 1,
                                                             "input_size": (16, 16)}
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 16, 16)).astype(np.float32), np.array([0, 1] * 4)
    data = tensor_data("t", {"train": (x, y), "test": (x, y)}, ["a", "b"], None, DataOptions())
    tried = {c.name: (c.mean, c.std) for c in candidates(data, list(found.items()))}
    assert tried["the normalisation preprocessor_config.json records"] == ((0.4,), (0.2,))
    assert tried["the normalisation config.json records"] == ((0.1,), (0.3,))
    assert set(tried) >= {"the data's own normalisation", "0.5/0.5 normalisation", "no normalisation"}
    own = tried["the data's own normalisation"]
    assert own[0][0] == pytest.approx(float(x.mean()), abs=1e-5) and own[1][0] == pytest.approx(float(x.std(ddof=1)),
                                                                                                   abs=1e-4)
