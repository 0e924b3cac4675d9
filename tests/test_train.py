"""The reference trainer: what each snapshot holds, reproducibility, the frozen-backbone phase,
and (slow) that ten epochs on digits reach the accuracy the demo relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from i2x import api
from i2x.io.checkpoints import find_checkpoints
from i2x.io.checkpoints.state_dicts import load_into
from i2x.io.data import load_data
from i2x.errors import UserError
from i2x.io.models import SmallCNN
from i2x.stages.training import TrainConfig, evaluate, train

CPU = torch.device("cpu")
BACKBONE_PARAMS = ("features.0.weight", "features.4.weight", "features.8.weight", "features.11.weight")


@pytest.fixture(scope="module")
def digits_subset(digits_data) -> tuple[TensorDataset, TensorDataset]:
    """256 training and 120 test digits: enough to learn something in a second or two."""
    x, y = digits_data.split("train").tensors
    tx, ty = digits_data.split("test").tensors
    return TensorDataset(x[:256], y[:256]), TensorDataset(tx[:120], ty[:120])


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    """A small digits npz (Keras layout, 8x8 uint8), so the API can train from a data spec quickly."""
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "digits_small.npz"
    np.savez(path, x_train=images[:300], y_train=digits.target[:300],
             x_test=images[1500:1600], y_test=digits.target[1500:1600])
    return path


def snapshot_states(directory: Path) -> list[dict[str, torch.Tensor]]:
    return [torch.load(p, weights_only=True)["state_dict"] for p in sorted(directory.glob("epoch_*.pt"))]


def test_snapshots_hold_epoch_step_and_metrics_that_match_their_weights(tmp_path, digits_subset):
    train_set, test_set = digits_subset
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_channels=1)
    config = TrainConfig(epochs=3, batch_size=16, save_every=2, progress=False)
    result = train(model, train_set, test_set, tmp_path, config)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_2.pt", "epoch_3.pt"]  # every 2nd, and the last
    assert result.checkpoints == [tmp_path / "epoch_2.pt", tmp_path / "epoch_3.pt"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and [h["step"] for h in result.history] == [16, 32, 48]
    ckpts = find_checkpoints(tmp_path)
    assert [(c.name, c.step, c.step_source) for c in ckpts] == [("epoch_2.pt", 32, "step"), ("epoch_3.pt", 48, "step")]
    for ckpt, history in zip(ckpts, result.history[1:]):
        payload = torch.load(ckpt.path, weights_only=True)
        assert payload["epoch"] == history["epoch"] and payload["step"] == history["step"]
        assert set(payload["metrics"]) == {"train_loss", "test_loss", "test_accuracy", "phase"}
        fresh = SmallCNN(num_classes=10, in_channels=1)
        load_into(fresh, ckpt)
        accuracy, loss, _ = evaluate(fresh, test_set, CPU)
        assert payload["metrics"]["test_accuracy"] == accuracy == history["test_accuracy"]
        assert payload["metrics"]["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert result.test_accuracy == result.history[-1]["test_accuracy"] > 0.3  # learning (chance is 0.1)


def test_api_training_is_reproducible_with_the_same_seed(tmp_path, digits_npz):
    """Same seed, same weights, whatever ran before in the process (here: another run and a stray draw)."""
    runs = []
    for name in ("a", "b"):
        result = api.train(data=f"npz:{digits_npz}", out=tmp_path / name, epochs=2, seed=3, progress=False,
                           input_size=16)
        torch.rand(7)  # disturb the global RNG between runs
        runs.append(result)
    first, second = snapshot_states(tmp_path / "a"), snapshot_states(tmp_path / "b")
    assert len(first) == len(second) == 2
    for a, b in zip(first, second):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].history == runs[1].history
    other = api.train(data=f"npz:{digits_npz}", out=tmp_path / "c", epochs=2, seed=4, progress=False, input_size=16)
    assert other.history != runs[0].history


def test_frozen_backbone_phase_moves_only_the_head(tmp_path, digits_subset):
    train_set, test_set = digits_subset
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_channels=1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    result = train(model, train_set, test_set, tmp_path,
                   TrainConfig(epochs=2, freeze_backbone_epochs=1, progress=False))

    after_1, after_2 = snapshot_states(tmp_path)
    backbone = [k for k in initial if k.startswith("features.")]  # weights and BatchNorm statistics
    assert all(torch.equal(after_1[k], initial[k]) for k in backbone)
    assert not torch.equal(after_1["head.2.weight"], initial["head.2.weight"])
    assert all(not torch.equal(after_2[k], after_1[k]) for k in BACKBONE_PARAMS)
    assert not torch.equal(after_2["features.1.running_mean"], after_1["features.1.running_mean"])
    assert [h["phase"] for h in result.history] == ["frozen-backbone", "full"]
    assert all(p.requires_grad for p in model.parameters())


def test_a_run_ending_in_the_frozen_phase_leaves_the_model_trainable(tmp_path, digits_subset):
    train_set, test_set = digits_subset
    model = SmallCNN(num_classes=10, in_channels=1)
    train(model, train_set, test_set, tmp_path, TrainConfig(epochs=1, freeze_backbone_epochs=3, progress=False))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("config", "model", "message"), [
    (TrainConfig(epochs=0), SmallCNN(), "--epochs 0: must be at least 1"),
    (TrainConfig(epochs=1, optimizer="rmsprop"), SmallCNN(), "--optimizer rmsprop: choose one of adam, sgd"),
    (TrainConfig(epochs=1, freeze_backbone_epochs=1), torch.nn.Sequential(torch.nn.Conv2d(1, 10, 32),
                                                                          torch.nn.Flatten()), "no nn.Linear head"),
])
def test_bad_training_settings_are_user_errors(tmp_path, digits_subset, config, model, message):
    with pytest.raises(UserError, match=message):
        train(model, digits_subset[0], digits_subset[1], tmp_path, config)


@pytest.mark.slow
def test_ten_epochs_on_digits_reach_90_percent(tmp_path):
    result = api.train(out=tmp_path, epochs=10, progress=False)

    assert result.test_accuracy >= 0.90
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == sorted(f"epoch_{e}.pt" for e in range(1, 11))
    ckpts = find_checkpoints(tmp_path)
    assert [c.name for c in ckpts] == [f"epoch_{e}.pt" for e in range(1, 11)]
    assert [c.step for c in ckpts] == [23 * e for e in range(1, 11)]  # ceil(1437 / 64) = 23 steps per epoch
    for e, ckpt in enumerate(ckpts, start=1):
        payload = torch.load(ckpt.path, weights_only=True)
        assert payload["epoch"] == e and payload["metrics"]["phase"] == "full"
    final = SmallCNN(num_classes=10, in_channels=1)
    load_into(final, ckpts[-1])
    accuracy, _, _ = evaluate(final, load_data("digits").split("test"), CPU)
    assert accuracy == result.test_accuracy
