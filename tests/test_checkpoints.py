"""The checkpoint walker on real snapshot directories: every file format and payload shape, the
training order (internal step, else natural name order; mtime only when asked), selection, and the refusals
(pickles that would run code, corrupt files, another architecture's weights)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from i2x.io.checkpoints import Checkpoint, find_checkpoints, list_checkpoints, select
from i2x.io.checkpoints.state_dicts import is_finite, load_into, load_state_dict
from i2x.errors import UserError
from i2x.io.models import SmallCNN

# Three snapshots in training order: (seed of the weights, epoch, global step).
TRAINING = [(11, 1, 150), (12, 2, 300), (13, 10, 1500)]


def tiny_cnn() -> SmallCNN:
    """A SmallCNN small enough that saving and loading it takes milliseconds."""
    return SmallCNN(num_classes=3, in_channels=1, width=2)


def weights(seed: int) -> dict[str, torch.Tensor]:
    """A tiny_cnn state_dict unique to ``seed``, BatchNorm buffers included (they start equal otherwise)."""
    torch.manual_seed(seed)
    model = tiny_cnn()
    with torch.no_grad():
        for buf in model.buffers():
            buf.copy_(torch.rand(buf.shape) + 0.5 if buf.is_floating_point() else torch.full(buf.shape, seed))
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_loads_as(ckpt: Checkpoint, expected: dict[str, torch.Tensor], trust: bool = False) -> None:
    """Loading ``ckpt`` into a fresh model gives exactly ``expected``, key by key and bit by bit."""
    model = tiny_cnn()
    load_into(model, ckpt, trust=trust)
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{ckpt.name}: {key} differs"


def set_mtimes(paths_oldest_first: list[Path]) -> None:
    """Give the paths strictly increasing modification times in the order listed."""
    for i, path in enumerate(paths_oldest_first):
        os.utime(path, (1_600_000_000 + 100 * i, 1_600_000_000 + 100 * i))


def adam_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A real optimizer state_dict (tensors, tuples, floats), as training scripts save next to the weights."""
    params = [nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    opt = torch.optim.Adam(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


# ---- payload shapes -----------------------------------------------------------------------------
# Each builds the saved object from (state_dict, epoch, step); STEP_SOURCE says which internal key
# orders it (None: it has no step inside, so the name orders it).

def lightning(state, epoch, step):
    inner = {"model." + k: v for k, v in state.items()}
    inner["loss_fn.pos_weight"] = torch.tensor([1.0, 2.0, 3.0])  # a LightningModule buffer outside the model
    return {"epoch": epoch, "global_step": step, "pytorch-lightning_version": "2.4.0", "state_dict": inner,
            "optimizer_states": [adam_state(state)], "lr_schedulers": [], "hyper_parameters": {"lr": 1e-3},
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}}}


PAYLOADS: dict[str, tuple[str, Callable[[dict, int, int], Any], str | None]] = {
    "raw": (".pt", lambda s, e, t: s, None),
    "lightning": (".ckpt", lightning, "global_step"),
    "model_state_dict": (".pth", lambda s, e, t: {"model_state_dict": s, "optimizer_state_dict": adam_state(s),
                                                   "epoch": e, "loss": 0.25}, "epoch"),
    "model": (".pt", lambda s, e, t: {"model": s, "step": t}, "step"),
    "net": (".pth", lambda s, e, t: {"net": s, "acc": 91.5, "epoch": e}, "epoch"),
    "ddp": (".bin", lambda s, e, t: {"module." + k: v for k, v in s.items()}, None),
    "compile": (".pt", lambda s, e, t: {"_orig_mod." + k: v for k, v in s.items()}, None),
    "ddp+compile in a dict": (".pth", lambda s, e, t: {"model": {"module._orig_mod." + k: v for k, v in s.items()},
                                                       "epoch": e}, "epoch"),
    "tensor step": (".pt", lambda s, e, t: {"state_dict": s, "global_step": torch.tensor(t)}, "global_step"),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_every_payload_shape_loads_its_exact_weights_in_training_order(tmp_path, kind):
    suffix, build, step_key = PAYLOADS[kind]
    if step_key is None:
        # No step inside: natural name order must win over both string order and mtime.
        names = ["epoch_1", "epoch_2", "epoch_10"]
    else:
        # The numbers in the names and the mtimes both contradict training order: only the step can order it.
        names = ["ckpt_7", "ckpt_3", "ckpt_5"]
    states, paths = [], []
    for (seed, epoch, step), name in zip(TRAINING, names):
        states.append(weights(seed))
        paths.append(tmp_path / f"{name}{suffix}")
    for i in (2, 0, 1):  # created out of training order
        seed, epoch, step = TRAINING[i]
        torch.save(build(states[i], epoch, step), paths[i])
    set_mtimes([paths[2], paths[0], paths[1]])

    ckpts = find_checkpoints(tmp_path)

    assert [c.name for c in ckpts] == [p.name for p in paths]
    if step_key is None:
        assert [(c.step, c.step_source) for c in ckpts] == [(1, "name"), (2, "name"), (10, "name")]
    else:
        column = 1 if step_key == "epoch" else 2
        assert [(c.step, c.step_source) for c in ckpts] == [(t[column], step_key) for t in TRAINING]
    for ckpt, expected in zip(ckpts, states):
        assert_loads_as(ckpt, expected)


def test_lightning_strips_the_module_name_and_drops_other_buffers(tmp_path):
    state = weights(1)
    torch.save(lightning(state, 1, 10), tmp_path / "epoch=0-step=10.ckpt")
    (ckpt,) = find_checkpoints(tmp_path)
    loaded = load_state_dict(ckpt, tiny_cnn())
    assert set(loaded) == set(state)  # "model." stripped, "loss_fn.pos_weight" left out
    assert ckpt.step == 10 and ckpt.step_source == "global_step"


def test_safetensors_ordered_by_the_step_in_their_metadata(tmp_path):
    names = ["weights_b_9", "weights_c_2", "weights_a_5"]
    states, paths = [], []
    for (seed, epoch, step), name in zip(TRAINING, names):
        state = weights(seed)
        states.append(state)
        paths.append(tmp_path / f"{name}.safetensors")
        saved = {"model." + k: v for k, v in state.items()} if seed == 12 else state  # one with a prefix
        save_file(saved, str(paths[-1]), metadata={"step": str(step), "format": "pt"})
    set_mtimes([paths[1], paths[2], paths[0]])

    ckpts = find_checkpoints(tmp_path)

    assert [c.name for c in ckpts] == [p.name for p in paths]
    assert [(c.step, c.step_source) for c in ckpts] == [(150, "step"), (300, "step"), (1500, "step")]
    for ckpt, expected in zip(ckpts, states):
        assert_loads_as(ckpt, expected)


@dataclass
class TrainingArguments:
    """Stands in for the pickled object a Hugging Face Trainer writes as training_args.bin."""

    output_dir: str = "out"


def test_hugging_face_folders_ordered_by_trainer_state_and_clutter_ignored(tmp_path):
    steps = [500, 1000, 1500]  # as strings "checkpoint-1000" < "checkpoint-1500" < "checkpoint-500"
    states = [weights(seed) for seed, _, _ in TRAINING]
    folders = []
    for i in (1, 2, 0):
        folder = tmp_path / f"checkpoint-{steps[i]}"
        folder.mkdir()
        if i == 1:
            torch.save(states[i], folder / "pytorch_model.bin")
        else:
            save_file(states[i], str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "trainer_state.json").write_text(json.dumps(
            {"global_step": steps[i], "epoch": float(i + 1), "log_history": [{"loss": 0.5, "step": steps[i]}]}))
        (folder / "config.json").write_text("{}")
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
        torch.save(TrainingArguments(), folder / "training_args.bin")
        folders.append(folder)
    # Clutter next to the snapshots: none of it may be taken for a checkpoint (nor refused as unsafe).
    (tmp_path / "notes.txt").write_text("lr 1e-3, batch 64")
    (tmp_path / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"\x00\x01tensorboard")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model.pt").write_bytes(b"not looked at: the walker is not recursive")
    torch.save(TrainingArguments(), tmp_path / "training_args.bin")
    set_mtimes([folders[2], folders[0], folders[1]])

    ckpts = find_checkpoints(tmp_path)

    assert [c.name for c in ckpts] == ["checkpoint-500", "checkpoint-1000", "checkpoint-1500"]
    assert [(c.step, c.step_source) for c in ckpts] == [(500, "global_step"), (1000, "global_step"),
                                                         (1500, "global_step")]
    assert [c.path.name for c in ckpts] == ["model.safetensors", "pytorch_model.bin", "model.safetensors"]
    for ckpt, expected in zip(ckpts, states):
        assert_loads_as(ckpt, expected)
    assert ckpts[1].sha256() == hashlib.sha256(ckpts[1].path.read_bytes()).hexdigest()


def test_files_without_steps_or_numbers_are_ordered_by_mtime_only_when_asked(tmp_path):
    names = ["baseline.pt", "after_warmup.pt", "final.pt"]
    states = [weights(seed) for seed, _, _ in TRAINING]
    for name, state in zip(names, states):
        torch.save(state, tmp_path / name)
    set_mtimes([tmp_path / n for n in names])

    by_default = list_checkpoints(tmp_path)
    ckpts = find_checkpoints(tmp_path, order="mtime")

    assert [c.name for c in by_default.checkpoints] == sorted(names)  # times are not trusted unless asked
    assert by_default.order == "name" and "--order mtime" in by_default.reason
    assert [c.name for c in ckpts] == names  # not alphabetical (after_warmup, baseline, final)
    assert [(c.step, c.step_source) for c in ckpts] == [(0, "mtime"), (1, "mtime"), (2, "mtime")]
    for ckpt, expected in zip(ckpts, states):
        assert_loads_as(ckpt, expected)


def test_a_step_missing_from_some_snapshots_falls_back_to_names(tmp_path):
    torch.save({"state_dict": weights(1), "epoch": 9}, tmp_path / "epoch_3.pt")
    torch.save(weights(2), tmp_path / "epoch_20.pt")
    torch.save(weights(3), tmp_path / "epoch_100.pt")
    ckpts = find_checkpoints(tmp_path)
    assert [(c.name, c.step, c.step_source) for c in ckpts] == [
        ("epoch_3.pt", 3, "name"), ("epoch_20.pt", 20, "name"), ("epoch_100.pt", 100, "name")]


def test_a_directory_without_checkpoints_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(UserError, match="no checkpoints found"):
        find_checkpoints(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        find_checkpoints(tmp_path / "missing")


# ---- selection ----------------------------------------------------------------------------------
TEN = [Checkpoint(f"epoch_{i}.pt", Path(f"epoch_{i}.pt"), step=i, step_source="name") for i in range(1, 11)]


@pytest.mark.parametrize(("options", "steps"), [
    ({}, list(range(1, 11))),
    ({"every": 3}, [1, 4, 7, 10]),
    ({"every": 4}, [1, 5, 9, 10]),  # the final snapshot is always kept
    ({"first": 3}, [1, 2, 3]),
    ({"last": 2}, [9, 10]),
    ({"every": 2, "last": 3}, [7, 9, 10]),
    ({"names": ["epoch_7.pt", "epoch_2.pt", "epoch_10.pt"]}, [2, 7, 10]),  # training order, not the order asked
    ({"names": ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "epoch_4.pt"], "every": 2}, [1, 3, 4]),
])
def test_select(options, steps):
    assert [c.step for c in select(TEN, **options)] == steps


@pytest.mark.parametrize(("options", "message"), [
    ({"names": ["epoch_11.pt"]}, "epoch_11.pt not found; available: epoch_1.pt"),
    ({"every": 0}, "--every 0"),
    ({"first": 0}, "--first 0"),
    ({"last": -2}, "--last -2"),
])
def test_select_rejects_bad_options(options, message):
    with pytest.raises(UserError, match=message):
        select(TEN, **options)


# ---- safety -------------------------------------------------------------------------------------
def write_marker(path: str) -> None:
    """What the malicious payload would do if it were ever unpickled."""
    Path(path).write_text("this ran while loading a checkpoint")


class RunsCode:
    """A pickle that calls write_marker when loaded: stands in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (write_marker, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    marker = tmp_path / "pwned.txt"
    torch.save({"state_dict": weights(1), "epoch": 1, "extra": RunsCode(marker)}, ckpt_dir / "epoch_1.pt")

    with pytest.raises(UserError, match="--trust-checkpoints") as found:
        find_checkpoints(ckpt_dir)
    assert "epoch_1.pt" in str(found.value) and "write_marker" in str(found.value)
    with pytest.raises(UserError, match="--trust-checkpoints"):
        load_into(tiny_cnn(), Checkpoint("epoch_1.pt", ckpt_dir / "epoch_1.pt"))
    assert not marker.exists()


@dataclass
class RunNotes:
    """A harmless custom object saved next to the weights: needs unpickling code, runs nothing bad."""

    comment: str = "warmup done"


def test_trust_loads_a_harmless_pickle_that_is_refused_by_default(tmp_path):
    state = weights(1)
    torch.save({"state_dict": state, "epoch": 4, "notes": RunNotes()}, tmp_path / "notes_epoch_4.pt")
    torch.save(_model_with(weights(2)), tmp_path / "whole_model_epoch_5.pt")  # torch.save(model), a common habit

    with pytest.raises(UserError, match="--trust-checkpoints"):
        find_checkpoints(tmp_path)
    ckpts = find_checkpoints(tmp_path, trust=True)

    assert [(c.name, c.step) for c in ckpts] == [("notes_epoch_4.pt", 4), ("whole_model_epoch_5.pt", 5)]
    assert_loads_as(ckpts[0], state, trust=True)
    assert_loads_as(ckpts[1], weights(2), trust=True)


def _model_with(state: dict[str, torch.Tensor]) -> SmallCNN:
    model = tiny_cnn()
    model.load_state_dict(state)
    return model


def _truncated_zip(path: Path) -> None:
    torch.save(weights(1), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_legacy(path: Path) -> None:
    torch.save({"state_dict": weights(1), "epoch": 1}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _truncated_safetensors(path: Path) -> None:
    save_file(weights(1), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a21\nsize 44700000\n"
CORRUPT: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "empty": (".pt", lambda p: p.write_bytes(b""), "empty"),
    "truncated zip": (".pt", _truncated_zip, "truncated or corrupt"),
    "truncated legacy pickle": (".pth", _truncated_legacy, "truncated or corrupt"),
    "truncated safetensors": (".safetensors", _truncated_safetensors, "truncated or corrupt"),
    "empty safetensors": (".safetensors", lambda p: p.write_bytes(b""), "empty"),
    "git lfs pointer": (".ckpt", lambda p: p.write_text(LFS_POINTER), "Git LFS pointer.*git lfs pull"),
    "git lfs pointer safetensors": (".safetensors", lambda p: p.write_text(LFS_POINTER), "Git LFS pointer"),
    "text": (".pt", lambda p: p.write_text("learning rate 0.1, batch 64\n"), "truncated or corrupt"),
    **{f"random bytes {seed}": (".pt", lambda p, s=seed: p.write_bytes(np.random.default_rng(s).bytes(3000)),
                                "truncated or corrupt") for seed in range(25)},
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_unreadable_files_are_user_errors_that_do_not_suggest_trusting_them(tmp_path, case):
    suffix, write, message = CORRUPT[case]
    path = tmp_path / f"epoch_1{suffix}"
    write(path)
    with pytest.raises(UserError, match=message) as found:
        find_checkpoints(tmp_path)
    assert str(path) in str(found.value)
    assert "trust" not in str(found.value).lower()


def test_another_architecture_is_a_user_error_listing_the_keys_and_naming_the_file(tmp_path):
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 3))
    torch.save({"model_state_dict": other.state_dict(), "epoch": 1}, tmp_path / "epoch_1.pt")
    (ckpt,) = find_checkpoints(tmp_path)
    with pytest.raises(UserError) as found:
        load_into(tiny_cnn(), ckpt)
    message = str(found.value)
    assert str(ckpt.path) in message
    assert "missing keys: features.0.weight" in message and "unexpected keys: 0.weight, 0.bias, 3.weight" in message


def test_a_different_class_count_is_a_user_error_naming_the_mismatched_shapes(tmp_path):
    torch.save(SmallCNN(num_classes=5, in_channels=1, width=2).state_dict(), tmp_path / "epoch_1.pt")
    (ckpt,) = find_checkpoints(tmp_path)
    with pytest.raises(UserError, match=r"shape mismatches: head.2.weight: checkpoint \(5, 8\) vs model \(3, 8\)"):
        load_into(tiny_cnn(), ckpt)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_load_but_are_flagged(tmp_path, bad):
    clean, diverged = weights(1), weights(2)
    diverged["features.4.weight"][0, 0, 0, 0] = bad
    torch.save(clean, tmp_path / "epoch_1.pt")
    torch.save(diverged, tmp_path / "epoch_2.pt")
    first, second = find_checkpoints(tmp_path)
    assert is_finite(load_into(tiny_cnn(), first)) is True
    assert is_finite(load_into(tiny_cnn(), second)) is False
