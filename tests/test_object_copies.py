"""Remote checkpoints are fetched once per process (i2x.io.object_copies), here over fsspec's in-memory file
system: another protocol than s3://, taking the same path (s3:// itself: tests/test_object_storage.py)."""

from __future__ import annotations

import errno
import hashlib
import io
import uuid
from collections import Counter

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from safetensors.torch import save as save_safetensors
from torch import nn

from i2x.errors import UserError
from i2x.io import object_copies
from i2x.io.checkpoints import list_checkpoints
from i2x.io.location import as_path
from i2x.io.checkpoints.state_dicts import load_state_dict


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def _pt(seed: int, step: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": _linear(seed).state_dict(), "step": step}, buffer)
    return buffer.getvalue()


@pytest.fixture
def memory_run():
    """A checkpoint directory on ``memory://``: two torch.save files and a Hugging Face folder (safetensors);
    every open of a file there is counted by path."""
    root = f"/i2x-{uuid.uuid4().hex}/run"
    fs = fsspec.filesystem("memory")
    files = {f"{root}/epoch_1.pt": _pt(1, 10), f"{root}/epoch_2.pt": _pt(2, 20),
             f"{root}/checkpoint-30/model.safetensors":
                 save_safetensors(_linear(3).state_dict(), metadata={"step": "30"})}
    for path, data in files.items():
        fs.pipe_file(path, data)
    yield root, files
    fs.rm(root.rsplit("/", 1)[0], recursive=True)
    object_copies.clear()


@pytest.fixture
def opens(monkeypatch) -> Counter:
    """Reads of memory:// files, by path: each open for reading (streamed reads and get_file open the file) and
    each cat_file (which the memory file system answers without opening it)."""
    counted: Counter = Counter()
    original_open, original_cat = MemoryFileSystem._open, MemoryFileSystem.cat_file

    def counting_open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            counted[self._strip_protocol(path)] += 1
        return original_open(self, path, mode, **kwargs)

    def counting_cat(self, path, start=None, end=None, **kwargs):
        counted[self._strip_protocol(path)] += 1
        return original_cat(self, path, start, end, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", counting_open)
    monkeypatch.setattr(MemoryFileSystem, "cat_file", counting_cat)
    return counted


def test_list_hash_and_load_read_each_memory_checkpoint_once(memory_run, opens):
    root, files = memory_run
    listing = list_checkpoints(f"memory://{root}")
    assert [(c.name, c.step) for c in listing.checkpoints] == [("epoch_1.pt", 10), ("epoch_2.pt", 20),
                                                              ("checkpoint-30", 30)]
    for ckpt, (path, data) in zip(listing.checkpoints, files.items()):
        assert str(ckpt.path) == f"memory://{path}"
        assert ckpt.sha256() == hashlib.sha256(data).hexdigest()
    for ckpt, seed in zip(listing.checkpoints, (1, 2, 3)):
        state = load_state_dict(ckpt, nn.Linear(4, 3))
        torch.testing.assert_close(state["weight"], _linear(seed).weight.detach())
    assert dict(opens) == {path: 1 for path in files}, opens
    list_checkpoints(f"memory://{root}")  # a second listing in the same process reads the copies
    assert dict(opens) == {path: 1 for path in files}, opens
    assert all(local.is_file() for local in object_copies.held().values())


def test_a_replaced_file_is_fetched_again_and_nothing_stale_is_served(memory_run, opens):
    root, files = memory_run
    before = list_checkpoints(f"memory://{root}").checkpoints
    replaced = _pt(7, 20)
    assert len(replaced) == len(files[f"{root}/epoch_2.pt"])  # same size: only the version tells them apart
    fsspec.filesystem("memory").pipe_file(f"{root}/epoch_2.pt", replaced)
    after = list_checkpoints(f"memory://{root}").checkpoints
    assert after[1].digest != before[1].digest and after[0].digest == before[0].digest
    assert after[1].sha256() == hashlib.sha256(replaced).hexdigest()
    torch.testing.assert_close(load_state_dict(after[1], nn.Linear(4, 3))["weight"], _linear(7).weight.detach())
    assert opens[f"{root}/epoch_2.pt"] == 2 and opens[f"{root}/epoch_1.pt"] == 1, opens


def test_copies_stay_within_the_budget_and_are_deleted(memory_run, opens, monkeypatch):
    root, files = memory_run
    monkeypatch.setenv("I2X_COPIES_GB", str(max(len(d) for d in files.values()) / 2**30))  # room for one copy
    listing = list_checkpoints(f"memory://{root}")
    held = object_copies.held()
    assert list(held) == [f"memory://{root}/epoch_2.pt"]  # the last one fetched (entries are read in name order)
    folder = next(iter(held.values())).parent
    assert [p.name for p in folder.iterdir()] == [next(iter(held.values())).name]
    assert listing.checkpoints[0].sha256() == hashlib.sha256(files[f"{root}/epoch_1.pt"]).hexdigest()
    assert opens[f"{root}/epoch_1.pt"] == 2, "a copy deleted for room is fetched again when read again"
    object_copies.clear()
    assert not folder.exists() and object_copies.held() == {}


def test_local_checkpoints_are_read_in_place(tmp_path, opens):
    data = _pt(1, 10)
    (tmp_path / "epoch_1.pt").write_bytes(data)
    object_copies.clear()
    ckpt = list_checkpoints(tmp_path).checkpoints[0]
    assert ckpt.path == tmp_path / "epoch_1.pt" and ckpt.sha256() == hashlib.sha256(data).hexdigest()
    load_state_dict(ckpt, nn.Linear(4, 3))
    assert object_copies.held() == {} and not opens


def test_a_budget_that_is_not_a_size_is_refused_naming_the_variable(memory_run, monkeypatch):
    root, _ = memory_run
    monkeypatch.setenv("I2X_COPIES_GB", "lots")
    with pytest.raises(UserError, match="I2X_COPIES_GB='lots': give the disk"):
        list_checkpoints(f"memory://{root}")


def test_a_full_disk_says_where_the_copy_went_and_leaves_no_part_file(memory_run, monkeypatch):
    root, _ = memory_run

    def full(self, rpath, lpath, **kwargs):
        with open(lpath, "wb") as fh:
            fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MemoryFileSystem, "get_file", full)
    with pytest.raises(UserError, match=r"epoch_1.pt: no space left to copy it into .*point TMPDIR at a larger disk"):
        object_copies.fetch(as_path(f"memory://{root}/epoch_1.pt"))
    assert object_copies.held() == {} and not list(object_copies._COPIES.folder.iterdir())
