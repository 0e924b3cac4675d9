"""Extraction into the store: values, layout, resume after a crash, config checks, xarray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from i2x import api
from i2x.attribution import Attributor, get_methods
from i2x.io.checkpoints import find_checkpoints
from i2x.io.checkpoints.state_dicts import load_into
from i2x.stages.context import build_context
from i2x.stages.config import RunConfig
from i2x.errors import UserError
from i2x.io.lock import locked
from i2x.io.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpts")
    api.train(out=out, epochs=3, progress=False)
    return out


def _config(ckpt_dir: Path, **kw) -> RunConfig:
    return RunConfig(checkpoints=str(ckpt_dir), limit=kw.pop("limit", 100), batch_size=kw.pop("batch_size", 32), **kw)


@pytest.fixture(scope="module")
def extracted(ckpt_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("an")
    api.extract(config=_config(ckpt_dir), out=out, progress=False)
    return out


def _arrays(out: Path) -> dict[str, np.ndarray]:
    store = Store.open(out)
    names = ["labels", "sample_index", "probs", "features", "done", "finite"] + [f"cam/{m}" for m in store.methods]
    return {name: store.read(name) for name in names}


def test_store_holds_what_the_model_computes(ckpt_dir, extracted):
    store = Store.open(extracted)
    ctx = build_context(_config(ckpt_dir))
    assert store.attrs["layer"] == "features" and store.grid == (8, 8)
    assert [c["name"] for c in store.checkpoints] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    assert all(len(c["sha256"]) == 64 for c in store.checkpoints)
    assert store.done().all()
    x = torch.stack([ctx.dataset[i][0] for i in range(100)])
    y = torch.as_tensor(ctx.labels)
    for t, ckpt in enumerate(find_checkpoints(ckpt_dir)):
        load_into(ctx.model, ckpt)
        ctx.model.eval()
        with Attributor(ctx.model, "features", get_methods(["gradcam", "gradcampp", "layercam"])) as attributor:
            ref = attributor.attribute(x, "true", labels=y, want_features=True)
        np.testing.assert_allclose(store.array("probs")[t], ref.probs.numpy(), rtol=1e-5, atol=1e-6)
        for method in ("gradcam", "gradcampp", "layercam"):
            np.testing.assert_allclose(store.cam(method)[t], ref.cams[method].numpy(), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            direct = torch.softmax(ctx.model(x), 1)
        np.testing.assert_allclose(store.array("probs")[t], direct.numpy(), rtol=1e-4, atol=1e-6)
    feats = store.read("features")
    assert feats.dtype == np.float16 and feats.shape == (100, 8, 8, 64)
    with torch.no_grad():
        act = ctx.model.features(x).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(feats.astype(np.float32), act, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(store.read("labels"), ctx.labels)


def test_rerun_skips_done_and_resumes_undone(ckpt_dir, extracted, tmp_path):
    before = _arrays(extracted)
    again = api.extract(config=_config(ckpt_dir), out=extracted, progress=False)
    assert again.skipped == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"] and again.checkpoints == []
    store = Store.open(extracted, mode="a")
    store.array("done")[1] = 0
    store.cam("gradcam")[1] = 0.0  # as if the crash happened while checkpoint 1 was written
    resumed = api.extract(config=_config(ckpt_dir), out=extracted, progress=False)
    assert resumed.checkpoints == ["epoch_2.pt"]
    after = _arrays(extracted)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def test_other_config_into_same_store_is_refused_unless_overwrite(ckpt_dir, extracted, tmp_path):
    with pytest.raises(UserError, match="different config.*--overwrite"):
        api.extract(config=_config(ckpt_dir, methods=("gradcam",)), out=extracted, progress=False)
    out = tmp_path / "copy"
    api.extract(config=_config(ckpt_dir, limit=40), out=out, progress=False)
    api.extract(config=_config(ckpt_dir, limit=50, methods=("layercam",)), out=out, overwrite=True, progress=False)
    store = Store.open(out)
    assert store.methods == ["layercam"] and store.read("labels").shape == (50,)


def test_batch_size_does_not_change_the_store(ckpt_dir, extracted, tmp_path):
    out = tmp_path / "b"
    api.extract(config=_config(ckpt_dir, batch_size=7), out=out, progress=False)
    a, b = _arrays(extracted), _arrays(out)
    for name in a:
        np.testing.assert_allclose(a[name].astype(np.float64), b[name].astype(np.float64), rtol=1e-4, atol=2e-3,
                                   err_msg=name)


def test_xarray_opens_the_store(extracted):
    xr = pytest.importorskip("xarray")
    root = xr.open_zarr(Store.location(extracted), consolidated=False)
    assert root["probs"].dims == ("t", "n", "m") and root["features"].dims == ("n", "h", "w", "d")
    cam = xr.open_zarr(Store.location(extracted), group="cam", consolidated=False)
    assert cam["gradcampp"].dims == ("t", "n", "h", "w")
    np.testing.assert_array_equal(cam["layercam"].values, Store.open(extracted).cam("layercam")[...])


def test_a_second_writer_is_refused(tmp_path):
    with locked(tmp_path):
        with pytest.raises(UserError, match="another i2x process"):
            with locked(tmp_path):
                pass
    with locked(tmp_path):  # released after the first holder left
        pass


def test_analysis_refuses_an_unfinished_store(ckpt_dir, tmp_path):
    out = tmp_path / "u"
    api.extract(config=_config(ckpt_dir, limit=20), out=out, progress=False)
    Store.open(out, mode="a").array("done")[2] = 0
    with pytest.raises(UserError, match="unfinished"):
        api.analyze(out, progress=False)


def _wait_for_done(out: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            done = zarr.open_group(str(Store.location(out)), mode="r")["done"][:]
            if done.sum() >= at_least:
                return
        except (FileNotFoundError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("extraction never reached the kill point")


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(ckpt_dir, extracted, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "i2x", "extract", str(ckpt_dir), "--out", str(out), "--limit", "100",
           "--batch-size", "32"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_done(out, proc, at_least=1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Store.open(out).done().all(), "the run finished before it could be killed"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = _arrays(extracted), _arrays(out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
