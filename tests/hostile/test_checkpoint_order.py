"""Checkpoint directories as careless users leave them: a name without a number among numbered ones,
equal or shuffled modification times, Lightning's ``last.ckpt`` and other copies of the same weights,
symbolic links out of the directory. The order must be the training order (never file times unless
asked), identical weights must be analysed once under the informative name, and the order used, its
reason and the skips must be printed and recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from i2x import api
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.checkpoints import find_checkpoints, list_checkpoints
from i2x.io.models import SmallCNN
from i2x.io.store import Store


def weights(seed: int) -> dict[str, torch.Tensor]:
    """A tiny SmallCNN state_dict unique to ``seed``."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in SmallCNN(num_classes=3, in_channels=1, width=2).state_dict().items()}


def lightning(state: dict[str, torch.Tensor], epoch: int, step: int, seed: int) -> dict[str, Any]:
    """What Lightning saves: the LightningModule's keys, loop counters, optimizer state (``seed`` varies it,
    as last.ckpt's optimizer and callback state differ from the epoch file's)."""
    torch.manual_seed(seed)
    moments = {i: {"exp_avg": torch.randn(4), "step": torch.tensor(float(step))} for i in range(2)}
    return {"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": epoch, "global_step": step,
            "optimizer_states": [{"state": moments, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}],
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.1 * seed)}}}


def reversed_mtimes(folder: Path) -> None:
    """Give the files modification times that contradict training order (and two equal ones)."""
    paths = sorted(folder.iterdir(), key=lambda p: p.name, reverse=True)
    for i, path in enumerate(paths):
        t = 1_600_000_000 + 100 * (i // 2)
        os.utime(path, (t, t), follow_symlinks=False)


def test_a_name_without_a_number_does_not_switch_the_directory_to_file_times(tmp_path):
    for i in range(1, 11):
        torch.save(weights(i), tmp_path / f"epoch_{i}.pt")
    torch.save(weights(99), tmp_path / "last.pt")  # not a copy: weights of its own
    reversed_mtimes(tmp_path)

    listing = list_checkpoints(tmp_path)

    assert [c.name for c in listing.checkpoints] == [f"epoch_{i}.pt" for i in range(1, 11)] + ["last.pt"]
    assert [c.step for c in listing.checkpoints[:10]] == list(range(1, 11))
    assert listing.order == "name"
    assert "no step inside" in listing.reason and "last.pt last" in listing.reason


def test_an_init_snapshot_without_a_number_goes_first(tmp_path):
    for name, seed in (("epoch_2.pt", 2), ("init.pt", 0), ("epoch_10.pt", 10)):
        torch.save(weights(seed), tmp_path / name)
    assert [c.name for c in find_checkpoints(tmp_path)] == ["init.pt", "epoch_2.pt", "epoch_10.pt"]


def test_equal_times_and_no_steps_give_natural_name_order(tmp_path):
    for i in (10, 1, 2, 11, 3):
        torch.save(weights(i), tmp_path / f"epoch_{i}.pt")
    for path in tmp_path.iterdir():
        os.utime(path, (1_600_000_000, 1_600_000_000))
    assert [c.step for c in find_checkpoints(tmp_path)] == [1, 2, 3, 10, 11]


def test_mtime_order_only_when_asked(tmp_path):
    for i in (1, 2, 3):
        torch.save(weights(i), tmp_path / f"epoch_{i}.pt")
    for i, name in enumerate(("epoch_3.pt", "epoch_1.pt", "epoch_2.pt")):
        os.utime(tmp_path / name, (1_600_000_000 + i, 1_600_000_000 + i))
    listing = list_checkpoints(tmp_path, order="mtime")
    assert [c.name for c in listing.checkpoints] == ["epoch_3.pt", "epoch_1.pt", "epoch_2.pt"]
    assert listing.order == "mtime" and "--order mtime" in listing.reason
    with pytest.raises(UserError, match="--order newest: choose one of step, name, mtime"):
        list_checkpoints(tmp_path, order="newest")


def lightning_run(folder: Path) -> list[dict[str, torch.Tensor]]:
    """Three Lightning epochs and last.ckpt: the final weights again, with other optimizer/callback state."""
    states = [weights(s) for s in (1, 2, 3)]
    for epoch, state in enumerate(states):
        step = 400 * (epoch + 1)
        torch.save(lightning(state, epoch, step, seed=epoch), folder / f"epoch={epoch}-step={step}.ckpt")
    torch.save(lightning(states[-1], 2, 1200, seed=7), folder / "last.ckpt")
    reversed_mtimes(folder)
    return states


def test_lightning_last_ckpt_is_analysed_once_under_the_numbered_name(tmp_path):
    lightning_run(tmp_path)
    assert (tmp_path / "last.ckpt").read_bytes() != (tmp_path / "epoch=2-step=1200.ckpt").read_bytes()

    listing = list_checkpoints(tmp_path)

    assert [c.name for c in listing.checkpoints] == ["epoch=0-step=400.ckpt", "epoch=1-step=800.ckpt",
                                                     "epoch=2-step=1200.ckpt"]
    assert listing.order == "step" and "global_step" in listing.reason
    assert listing.duplicates == [{"name": "last.ckpt", "same_as": "epoch=2-step=1200.ckpt", "kept": False}]
    assert "skipped 1 duplicate" in listing.summary() and "last.ckpt (= epoch=2-step=1200.ckpt)" in listing.summary()


def test_keep_duplicates_keeps_them(tmp_path):
    lightning_run(tmp_path)
    listing = list_checkpoints(tmp_path, keep_duplicates=True)
    assert len(listing.checkpoints) == 4 and listing.duplicates[0]["kept"] is True


def test_copies_in_other_formats_and_under_other_names_are_duplicates(tmp_path):
    states = [weights(s) for s in (1, 2, 3)]
    for i, state in enumerate(states, start=1):
        torch.save({"state_dict": state, "epoch": i}, tmp_path / f"epoch_{i}.pt")
    # the ImageNet example's best-model copy, in the legacy (non-zip) format, with other extras
    torch.save({"state_dict": states[1], "epoch": 2, "best_acc1": 71.5}, tmp_path / "model_best.pth.tar",
               _use_new_zipfile_serialization=False)
    torch.save({"module." + k: v for k, v in states[2].items()}, tmp_path / "final_ddp.bin")  # DDP-prefixed copy
    (tmp_path / "copy_of_1.pt").write_bytes((tmp_path / "epoch_1.pt").read_bytes())
    # same bytes but one tensor's value changed: NOT a duplicate
    changed = {k: v.clone() for k, v in states[0].items()}
    first = next(k for k, v in changed.items() if v.is_floating_point())
    changed[first].view(-1)[0] += 1.0
    torch.save({"state_dict": changed, "epoch": 4}, tmp_path / "epoch_4.pt")

    listing = list_checkpoints(tmp_path)

    assert [c.name for c in listing.checkpoints] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "epoch_4.pt"]
    assert {d["name"]: d["same_as"] for d in listing.duplicates} == {
        "model_best.pth.tar": "epoch_2.pt", "final_ddp.bin": "epoch_3.pt", "copy_of_1.pt": "epoch_1.pt"}


def test_weights_equal_at_both_ends_but_not_in_the_middle_are_not_duplicates(tmp_path):
    """The quick digest reads only each tensor's ends; the full digest must separate these two."""
    base = {"layer.weight": torch.arange(1000, dtype=torch.float32), "layer.bias": torch.zeros(3)}
    middle = {k: v.clone() for k, v in base.items()}
    middle["layer.weight"][500] = -1.0
    torch.save(base, tmp_path / "epoch_1.pt")
    torch.save(middle, tmp_path / "epoch_2.pt")
    torch.save({"state_dict": base, "epoch": 1}, tmp_path / "again.pt")
    listing = list_checkpoints(tmp_path)
    assert [c.name for c in listing.checkpoints] == ["epoch_1.pt", "epoch_2.pt"]
    assert listing.duplicates == [{"name": "again.pt", "same_as": "epoch_1.pt", "kept": False}]


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    folder, elsewhere = tmp_path / "ck", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    for i in (1, 2):
        torch.save(weights(i), folder / f"epoch_{i}.pt")
    torch.save(weights(9), elsewhere / "other_run.pt")
    (folder / "epoch_3.pt").symlink_to(elsewhere / "other_run.pt")

    with pytest.raises(UserError, match="epoch_3.pt: a symbolic link to .*other_run.pt, outside the checkpoint"):
        find_checkpoints(folder)


def test_a_symlink_inside_pointing_inside_is_fine_and_counted_once(tmp_path):
    for i in (1, 2):
        torch.save(weights(i), tmp_path / f"epoch_{i}.pt")
    (tmp_path / "latest.pt").symlink_to(tmp_path / "epoch_2.pt")
    listing = list_checkpoints(tmp_path)
    assert [c.name for c in listing.checkpoints] == ["epoch_1.pt", "epoch_2.pt"]
    assert listing.duplicates == [{"name": "latest.pt", "same_as": "epoch_2.pt", "kept": False}]


def test_an_hf_folder_linked_from_outside_is_refused(tmp_path):
    folder, elsewhere = tmp_path / "ck", tmp_path / "elsewhere" / "checkpoint-900"
    folder.mkdir()
    elsewhere.mkdir(parents=True)
    torch.save(weights(1), folder / "epoch_1.pt")
    torch.save(weights(2), elsewhere / "pytorch_model.bin")
    (folder / "checkpoint-900").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="checkpoint-900: a symbolic link"):
        find_checkpoints(folder)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    np.savez(path, x_train=x[:200], y_train=y[:200], x_test=x[200:260], y_test=y[200:260])
    return path


def test_the_cli_options_reach_the_walker_and_the_store_records_them(digits_npz, tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        state = SmallCNN(num_classes=10, in_channels=1).state_dict()
        torch.save({"state_dict": state, "epoch": epoch}, ck / f"epoch_{epoch}.pt")
    torch.save({"state_dict": state, "epoch": 2, "best": True}, ck / "best.pt")
    common = ["--data", f"npz:{digits_npz}", "--input-size", "16", "--limit", "10", "--methods", "gradcam"]

    assert main(["extract", str(ck), "--out", str(tmp_path / "once"), *common]) == 0
    assert "skipped 1 duplicate(s) with identical weights: best.pt (= epoch_2.pt)" in capsys.readouterr().out
    assert main(["extract", str(ck), "--out", str(tmp_path / "all"), "--order", "name", "--keep-duplicates", *common]) == 0
    assert "checkpoint order: name (asked (--order name)" in capsys.readouterr().out

    once, kept = Store.open(tmp_path / "once"), Store.open(tmp_path / "all")
    assert [c["name"] for c in once.checkpoints] == ["epoch_1.pt", "epoch_2.pt"]
    assert once.attrs["checkpoint_order"] == {
        "order": "step", "reason": "every checkpoint records its epoch inside",
        "duplicates": [{"name": "best.pt", "same_as": "epoch_2.pt", "kept": False}]}
    assert [c["name"] for c in kept.checkpoints] == ["epoch_1.pt", "epoch_2.pt", "best.pt"]
    assert kept.attrs["checkpoint_order"]["duplicates"][0]["kept"] is True


@pytest.mark.slow
def test_ten_epochs_and_a_last_ckpt_copy_give_ten_ordered_steps_and_a_live_analysis(digits_npz, tmp_path, capsys):
    """End to end: epoch_1..epoch_10.pt from a real training run, plus last.ckpt (the final weights, Lightning-
    wrapped, other bytes); file times reversed. Ten steps in training order, the copy skipped and recorded, and
    every ridge step of the analysis carries signal (the copy used to add an all-zero step)."""
    ck = tmp_path / "ck"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        api.train(data=f"npz:{digits_npz}", input_size=32, out=ck, epochs=10, lr=1e-2, progress=False)
    finally:
        torch.set_num_threads(threads)
    final = torch.load(ck / "epoch_10.pt", weights_only=True)
    torch.save({"state_dict": {"model." + k: v for k, v in final["state_dict"].items()}, "epoch": 10,
                "global_step": final["step"], "optimizer_states": [{"state": {}, "param_groups": []}]},
               ck / "last.ckpt")
    reversed_mtimes(ck)
    out = tmp_path / "an"

    assert main(["extract", str(ck), "--out", str(out), "--limit", "60", "--data", f"npz:{digits_npz}",
                 "--input-size", "32", "--methods", "gradcam"]) == 0
    printed = capsys.readouterr().out
    assert main(["analyze", str(out), "--k", "8"]) == 0

    assert "checkpoint order: step" in printed and "last.ckpt (= epoch_10.pt)" in printed
    store = Store.open(out)
    assert [c["name"] for c in store.checkpoints] == [f"epoch_{i}.pt" for i in range(1, 11)]
    assert [c["step"] for c in store.checkpoints] == sorted(c["step"] for c in store.checkpoints)
    record = store.attrs["checkpoint_order"]
    assert record["duplicates"] == [{"name": "last.ckpt", "same_as": "epoch_10.pt", "kept": False}]
    beta = store.read("analysis/beta")
    assert beta.shape[0] == 9
    assert (np.abs(beta).reshape(9, -1).max(axis=1) > 0).all(), "a ridge step is all zeros"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["mapping"]["r2"]) == 9 and max(summary["mapping"]["r2"]) < 1.0


# ---- what a file that does not load is said to be ---------------------------------------------------------
def test_a_plain_pickle_is_called_one_and_loads_when_trusted(tmp_path):
    import pickle

    state = weights(1)
    with open(tmp_path / "epoch_1.pt", "wb") as fh:
        pickle.dump({"state_dict": state, "epoch": 1}, fh)
    with pytest.raises(UserError) as found:
        find_checkpoints(tmp_path)
    message = str(found.value)
    assert "a plain pickle (written by pickle.dump, not torch.save)" in message and "--trust-checkpoints" in message
    assert "truncated or corrupt" not in message
    (ckpt,) = find_checkpoints(tmp_path, trust=True)
    assert ckpt.step == 1 and ckpt.step_source == "epoch"


def test_a_deflate_compressed_torch_zip_loads(tmp_path):
    import zipfile

    torch.save({"state_dict": weights(1), "epoch": 1}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, \
            zipfile.ZipFile(tmp_path / "epoch_1.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    (tmp_path / "plain.pt").unlink()
    (ckpt,) = find_checkpoints(tmp_path)
    assert ckpt.step == 1


def test_compressed_and_foreign_archives_are_named_for_what_they_are(tmp_path):
    import gzip
    import zipfile

    torch.save(weights(1), tmp_path / "raw")
    data = (tmp_path / "raw").read_bytes()
    (tmp_path / "raw").unlink()
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "epoch_1.pt").write_bytes(gzip.compress(data))
    with pytest.raises(UserError, match="epoch_1.pt: a gzip-compressed file, which torch.load does not read; "
                                        r"decompress it \(gunzip\)") as found:
        find_checkpoints(folder)
    assert "truncated or corrupt" not in str(found.value)
    (folder / "epoch_1.pt").unlink()
    with zipfile.ZipFile(folder / "epoch_2.pt", "w") as archive:  # a zip holding a checkpoint, as shared
        archive.writestr("run/epoch_2.pt", data)
    with pytest.raises(UserError, match=r"a zip archive, but not one torch.save wrote \(it holds run/epoch_2.pt\)"):
        find_checkpoints(folder)


# ---- directories mixing formats ---------------------------------------------------------------------------
def test_mixed_formats_are_ordered_by_the_numbers_and_copies_found_across_formats(tmp_path):
    """epoch_1.pt, epoch_2.safetensors, an HF checkpoint-69/ folder and a .pth.tar copy of epoch 2: the HF
    folder used to sort first (its word before 'epoch') and the copy went unseen (a .pt quick digest was
    never compared with a safetensors one)."""
    from safetensors.torch import save_file

    states = [weights(s) for s in (1, 2, 3)]
    torch.save({"state_dict": states[0], "epoch": 1}, tmp_path / "epoch_1.pt")
    save_file(states[1], str(tmp_path / "epoch_2.safetensors"))
    (tmp_path / "checkpoint-69").mkdir()
    save_file(states[2], str(tmp_path / "checkpoint-69" / "model.safetensors"))
    (tmp_path / "checkpoint-69" / "trainer_state.json").write_text(json.dumps({"global_step": 69}))
    torch.save({"state_dict": states[1], "epoch": 2}, tmp_path / "model_best.pth.tar")

    listing = list_checkpoints(tmp_path)

    assert [c.name for c in listing.checkpoints] == ["epoch_1.pt", "epoch_2.safetensors", "checkpoint-69"]
    assert listing.duplicates == [{"name": "model_best.pth.tar", "same_as": "epoch_2.safetensors", "kept": False}]


def test_a_safetensors_copy_of_a_pt_file_is_a_duplicate(tmp_path):
    from safetensors.torch import save_file

    states = [weights(s) for s in (1, 2, 3)]
    for i, state in enumerate(states, start=1):
        torch.save({"state_dict": state, "epoch": i}, tmp_path / f"epoch_{i}.pt")
    save_file(states[2], str(tmp_path / "last.safetensors"))

    listing = list_checkpoints(tmp_path)

    assert [c.name for c in listing.checkpoints] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    assert listing.duplicates == [{"name": "last.safetensors", "same_as": "epoch_3.pt", "kept": False}]
