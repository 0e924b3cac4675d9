"""Checkpoints and analyses on object storage, against a real S3 API: moto's server on a loopback port,
started and stopped by this module, with fake credentials and a bucket each test makes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from i2x import api
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.checkpoints.formats import read_payload
from i2x.io.checkpoints import list_checkpoints
from i2x.io.location import RemotePath, as_path
from i2x.io.lock import LOCK_NAME, locked
from i2x.io.store import Store
from i2x.io.workdir import load_summary, read_json, write_json
from i2x.reporting.page import shown_path
from i2x.stages.analyze.config import AnalyzeConfig

from fixtures_s3 import (KEY_ID, SECRET, keys as _keys, make_bucket as _bucket, s3, s3_requests,  # noqa: F401
                         upload as _upload)

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = ["--limit", "60", "--batch-size", "16", "--methods", "gradcam,layercam", "--k", "6", "--min-flips", "1"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpts")
    api.train(out=out, epochs=3, progress=False)
    return out


def _arrays(store: Store) -> dict[str, np.ndarray]:
    names = ["labels", "sample_index", "probs", "features", "done", "finite"] + [f"cam/{m}" for m in store.methods]
    names += [f"analysis/{n}" for n in ("centroids", "assign", "intensity", "groups", "beta") if store.has(f"analysis/{n}")]
    return {name: store.read(name) for name in names}


def test_the_walker_lists_and_reads_checkpoints_on_s3_like_local_ones(s3, ckpts, tmp_path):
    bucket = _bucket(s3, "walker")
    _upload(s3, bucket, ckpts, "run")
    s3.put_object(Bucket=bucket, Key="run/notes.txt", Body=b"not a checkpoint")
    local, remote = list_checkpoints(ckpts), list_checkpoints(f"s3://{bucket}/run/")
    assert [c.name for c in remote.checkpoints] == [c.name for c in local.checkpoints] == \
        ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    assert remote.order == local.order and [c.step for c in remote.checkpoints] == [c.step for c in local.checkpoints]
    assert [c.sha256() for c in remote.checkpoints] == [c.sha256() for c in local.checkpoints]
    assert isinstance(remote.checkpoints[0].path, RemotePath)
    assert str(remote.checkpoints[0].path) == f"s3://{bucket}/run/epoch_1.pt"
    with pytest.raises(UserError, match="s3://walker/nothing-here does not exist"):
        list_checkpoints(f"s3://{bucket}/nothing-here")


def test_json_files_and_the_lock_on_s3(s3, tmp_path):
    assert as_path(f"file://{tmp_path}/an") == tmp_path / "an" and as_path("rel/an") == Path("rel/an")
    bucket = _bucket(s3, "files")
    out = as_path(f"s3://{bucket}/an")
    assert isinstance(out, RemotePath) and str(out / "summary.json") == f"s3://{bucket}/an/summary.json"
    # the report names files without the machine's paths or the bucket's, whichever side they are on
    assert shown_path(f"npz:{tmp_path}/d.npz", out) == "npz:d.npz" and shown_path(out / "store.zarr", out) == "store.zarr"
    write_json(out / "x.json", {"a": np.float32(1.5), "b": float("nan")})
    assert read_json(out / "x.json", "i2x x") == {"a": 1.5, "b": None}
    with locked(out):
        assert LOCK_NAME in [k.rsplit("/", 1)[-1] for k in _keys(s3, bucket, "an/")]
        with pytest.raises(UserError, match="another i2x process"):  # a second holder on this host, this pid alive
            with locked(f"s3://{bucket}/an"):
                pass
    assert f"an/{LOCK_NAME}" not in _keys(s3, bucket), "the lock object is deleted at exit"
    s3.put_object(Bucket=bucket, Key=f"an/{LOCK_NAME}", Body=json.dumps({"host": "elsewhere", "pid": 1}).encode())
    with pytest.raises(UserError, match=r"held by pid 1 on elsewhere.*delete the lock object"):
        with locked(out):
            pass


@pytest.mark.slow
def test_a_run_on_s3_gets_each_checkpoint_once(s3, s3_requests, ckpts, tmp_path):
    """A whole `i2x run` (listing, sha256, extraction, then the stages that reopen the model) reads each checkpoint
    object from the server with one GET of its bytes, counted by the server itself."""
    bucket = _bucket(s3, "once")
    _upload(s3, bucket, ckpts, "ckpts")
    sizes = {f"{bucket}/ckpts/{p.name}": p.stat().st_size for p in ckpts.iterdir()}
    s3_requests.clear()
    assert main(["run", f"s3://{bucket}/ckpts", "--out", str(tmp_path / "an"), *RUN_ARGS]) == 0
    gets, sent = s3_requests.gets(f"{bucket}/ckpts/"), s3_requests.bytes_sent(f"{bucket}/ckpts/")
    assert dict(gets) == {key: 1 for key in sizes}, (dict(gets), dict(sent), sizes)
    assert dict(sent) == sizes, (dict(gets), dict(sent), sizes)

    # the last checkpoint replaced by other weights of the same size: the next run fetches it again, only it
    replaced = _replace_weights(s3, bucket, "ckpts/epoch_3.pt", ckpts / "epoch_3.pt")
    s3_requests.clear()
    api.extract(checkpoints=f"s3://{bucket}/ckpts", out=tmp_path / "an", overwrite=True, limit=60, batch_size=16,
                methods=("gradcam",), progress=False)
    assert dict(s3_requests.gets(f"{bucket}/ckpts/")) == {f"{bucket}/ckpts/epoch_3.pt": 1}
    assert Store.open(tmp_path / "an").checkpoints[-1]["sha256"] == hashlib.sha256(replaced).hexdigest()


def _replace_weights(s3, bucket: str, key: str, original: Path) -> bytes:
    """Put other weights (each float tensor + 1) at ``key``: a file of the same size and step, another content."""
    payload = torch.load(original, weights_only=True)
    payload["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    assert len(buffer.getvalue()) == original.stat().st_size  # only the ETag tells the versions apart
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return buffer.getvalue()


def test_a_checkpoint_replaced_on_s3_is_fetched_again_not_served_stale(s3, s3_requests, ckpts):
    bucket = _bucket(s3, "replaced")
    _upload(s3, bucket, ckpts, "run")
    first = list_checkpoints(f"s3://{bucket}/run").checkpoints
    assert [c.sha256() for c in first] == [hashlib.sha256((ckpts / c.name).read_bytes()).hexdigest() for c in first]
    replaced = _replace_weights(s3, bucket, "run/epoch_3.pt", ckpts / "epoch_3.pt")
    s3_requests.clear()
    second = list_checkpoints(f"s3://{bucket}/run").checkpoints
    assert second[-1].digest != first[-1].digest and second[0].digest == first[0].digest
    assert second[-1].sha256() == hashlib.sha256(replaced).hexdigest()
    new = torch.load(io.BytesIO(replaced), weights_only=True)["state_dict"]
    loaded = read_payload(second[-1].path, trust=False)["state_dict"]
    assert all(torch.equal(loaded[k], new[k]) for k in new)
    assert dict(s3_requests.gets(f"{bucket}/run/")) == {f"{bucket}/run/epoch_3.pt": 1}


@pytest.mark.slow
def test_run_on_s3_equals_the_local_run_and_a_killed_extraction_resumes_there(s3, ckpts, tmp_path):
    bucket = _bucket(s3, "runs")
    _upload(s3, bucket, ckpts, "ckpts")
    local_out = tmp_path / "local"
    assert main(["run", str(ckpts), "--out", str(local_out), *RUN_ARGS]) == 0
    assert main(["run", f"s3://{bucket}/ckpts", "--out", f"s3://{bucket}/analysis", *RUN_ARGS]) == 0

    local, remote = Store.open(local_out), Store.open(f"s3://{bucket}/analysis")
    assert isinstance(remote.path, RemotePath)
    a, b = _arrays(local), _arrays(remote)
    assert set(a) == set(b) and "analysis/beta" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    ls, rs = load_summary(local_out), load_summary(f"s3://{bucket}/analysis")
    for key in ("layer", "k", "n_samples", "uncertain", "accuracy", "steps"):
        assert ls.get(key) == rs.get(key), key
    keys = _keys(s3, bucket, "analysis/")
    for name in ("summary.json", "reliance.json", "report.html", ".i2x-analysis.json", "store.zarr/zarr.json"):
        assert f"analysis/{name}" in keys, name
    assert any(k.startswith("analysis/report/") and k.endswith(".png") for k in keys)
    page = s3.get_object(Bucket=bucket, Key="analysis/report.html")["Body"].read().decode()
    assert "could not be built" not in page and page.count("<section") >= 5
    assert f"analysis/{LOCK_NAME}" not in keys
    # the credentials reach nothing i2x writes: not the store's attributes, the JSON files or the report
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert KEY_ID.encode() not in body and SECRET.encode() not in body, key

    # a killed extraction (SIGKILL as checkpoint 2 of 3 would be marked done) resumes on S3 and equals the whole run
    out = f"s3://{bucket}/killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from i2x.io.store import Store
        from i2x.cli import main
        mark = Store.mark_done
        def dying(self, t, finite=True):
            if t == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            mark(self, t, finite)
        Store.mark_done = dying
        sys.exit(main(["extract", "s3://{bucket}/ckpts", "--out", "{out}", *{RUN_ARGS[:6]!r}]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert Store.open(out).done().tolist() == [True, False, False]
    assert f"killed/{LOCK_NAME}" in _keys(s3, bucket), "a killed run leaves its lock object behind"
    resumed = api.extract(checkpoints=f"s3://{bucket}/ckpts", out=out, limit=60, batch_size=16,
                          methods=("gradcam", "layercam"), progress=False)
    assert resumed.skipped == ["epoch_1.pt"] and resumed.checkpoints == ["epoch_2.pt", "epoch_3.pt"]
    whole, again = _arrays(local), _arrays(Store.open(out))
    for name in again:
        np.testing.assert_array_equal(whole[name], again[name], err_msg=name)


@pytest.mark.slow
def test_an_analysis_reads_a_remote_store_chunk_by_chunk(s3, ckpts, monkeypatch):
    """With a read budget of 16 samples' maps, the analysis of a remote store reads the maps in pieces of at most
    that size (every read of the whole array would hold [t, n, h, w] in memory at once) and gets the same result."""
    import zarr

    from i2x.analysis import _chunks

    bucket = _bucket(s3, "chunks")
    out = f"s3://{bucket}/an"
    api.extract(checkpoints=str(ckpts), out=out, limit=60, batch_size=16, methods=("gradcam",), progress=False)
    config = AnalyzeConfig(k=6, min_flips=1, method="gradcam")
    api.analyze(out, config, progress=False)
    whole = _arrays(Store.open(out))
    t, n, h, w = Store.open(out).cam("gradcam").shape
    budget = t * 16 * h * w
    monkeypatch.setattr(_chunks, "DEFAULT_CHUNK_ELEMENTS", budget)
    reads: list[tuple[str, int]] = []
    original = zarr.Array.__getitem__

    def spy(self, selection):
        data = original(self, selection)
        reads.append((self.path, int(np.size(data))))
        return data

    monkeypatch.setattr(zarr.Array, "__getitem__", spy)
    api.analyze(out, config, progress=False)
    cam_reads = [size for path, size in reads if path == "cam/gradcam"]
    assert len(cam_reads) >= n // 16 and max(cam_reads) <= budget, cam_reads
    again = _arrays(Store.open(out))
    for name in whole:
        np.testing.assert_array_equal(whole[name], again[name], err_msg=name)
