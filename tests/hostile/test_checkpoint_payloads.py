"""Hostile checkpoints through the real command line: pickles that would run code when loaded and
safetensors files whose header lies. Each is refused with one line on stderr and exit status 2, nothing
it asks for is executed (a marker file it would create stays absent), no store is written, and the
message suggests --trust-checkpoints only for pickles that need code (never for files no flag can load).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from i2x.cli import main
from i2x.io.models import SmallCNN

ROOT = Path(__file__).resolve().parents[2]


# ---- payloads: what each would do if it were ever unpickled ------------------------------------
class System:
    """``os.system("touch MARKER")`` on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval:
    """``eval("open(MARKER, 'w').write('x')")`` on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


class Exec(Eval):
    """``exec(...)`` of the same code on load."""

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


class OpenFile(Eval):
    """``open(MARKER, "w")`` on load: creates (truncates) a file without any eval."""

    def __reduce__(self):
        return open, (str(self.marker), "w")


def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SmallCNN(num_classes=10, in_channels=1).state_dict()


def _zip_with_evil_data_pkl(path: Path, marker: Path) -> None:
    """A real torch.save zip archive whose ``data.pkl`` record was swapped for a malicious pickle."""
    buffer = io.BytesIO()
    torch.save(weights(), buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            evil = info.filename.endswith("/data.pkl")
            out.writestr(info.filename, pickle.dumps(System(marker), protocol=2) if evil else source.read(info))


def _hugging_face_folder(folder: Path, marker: Path) -> Path:
    (folder / "checkpoint-500").mkdir()
    path = folder / "checkpoint-500" / "pytorch_model.bin"
    torch.save({"weights": weights(), "hook": Exec(marker)}, path)
    return path


# name -> (writes the hostile file into the folder and returns its path, does the message suggest trusting it)
Writer = Callable[[Path, Path], Path]


def _save(name: str, payload: Callable[[Path], object], **kw) -> Writer:
    def write(folder: Path, marker: Path) -> Path:
        torch.save(payload(marker), folder / name, **kw)
        return folder / name
    return write


def _raw(name: str, data: Callable[[Path], bytes]) -> Writer:
    def write(folder: Path, marker: Path) -> Path:
        (folder / name).write_bytes(data(marker))
        return folder / name
    return write


PICKLES: dict[str, tuple[Writer, bool]] = {
    "reduce to os.system": (_save("epoch_1.pt", System), True),
    "reduce to eval": (_save("epoch_1.pt", Eval), True),
    "reduce to exec": (_save("epoch_1.pth", Exec), True),
    "reduce to open (writes a file)": (_save("epoch_1.ckpt", OpenFile), True),
    "nested in a dict under state_dict": (
        _save("epoch_1.pt", lambda m: {"state_dict": {**weights(), "features.0.weight": System(m)}, "epoch": 1}), True),
    "beside real weights (Lightning hyper_parameters)": (
        _save("epoch_1.ckpt", lambda m: {"state_dict": weights(), "global_step": 5,
                                         "hyper_parameters": {"loss": Eval(m)}}), True),
    "legacy (non-zip) torch.save format": (
        _save("epoch_1.pt", lambda m: {"model": weights(), "x": System(m)},
              _use_new_zipfile_serialization=False), True),
    "zip whose data.pkl is malicious": (
        lambda folder, m: (_zip_with_evil_data_pkl(folder / "epoch_1.pt", m), folder / "epoch_1.pt")[1], True),
    "Hugging Face folder pytorch_model.bin": (_hugging_face_folder, True),
    # pickle.dump files are not torch.save files: only plain unpickling (trusted) can read them
    "plain pickle, protocol 2": (_raw("epoch_1.pt", lambda m: pickle.dumps(System(m), protocol=2)), True),
    "plain pickle, protocol 5": (_raw("epoch_1.pt", lambda m: pickle.dumps(Eval(m), protocol=5)), True),
}


# ---- safetensors with a lying header -------------------------------------------------------------
def _safetensors(lie: Callable[[int, dict, bytes], bytes]) -> Writer:
    """A real safetensors file of the model's weights, rewritten by ``lie(header_len, header, body)``."""
    def write(folder: Path, marker: Path) -> Path:
        path = folder / "epoch_1.safetensors"
        save_file(weights(), str(path))
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        path.write_bytes(lie(n, json.loads(data[8:8 + n]), data[8 + n:]))
        return path
    return write


def _header(header: dict) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


def _first_tensor(header: dict, ndim: int = 4) -> dict:
    return next(v for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == ndim)


def _offsets_beyond(n: int, header: dict, body: bytes) -> bytes:
    _first_tensor(header)["data_offsets"] = [0, len(body) + 4096]
    return _header(header) + body


def _offsets_backwards(n: int, header: dict, body: bytes) -> bytes:
    _first_tensor(header)["data_offsets"] = [64, 8]
    return _header(header) + body


def _shape_lie(n: int, header: dict, body: bytes) -> bytes:
    entry = _first_tensor(header)
    entry["shape"] = [entry["shape"][0] * 2, *entry["shape"][1:]]
    return _header(header) + body


def _unknown_dtype(n: int, header: dict, body: bytes) -> bytes:
    _first_tensor(header)["dtype"] = "Q128"
    return _header(header) + body


SAFETENSORS: dict[str, tuple[Writer, bool]] = {
    "safetensors: header length beyond the file": (
        _safetensors(lambda n, h, b: struct.pack("<Q", n + 10**6) + _header(h)[8:] + b), False),
    "safetensors: header length 2**63": (
        _safetensors(lambda n, h, b: struct.pack("<Q", 2**63) + _header(h)[8:] + b), False),
    "safetensors: tensor offsets beyond the file": (_safetensors(_offsets_beyond), False),
    "safetensors: tensor offsets backwards": (_safetensors(_offsets_backwards), False),
    "safetensors: shape larger than its bytes": (_safetensors(_shape_lie), False),
    "safetensors: unknown dtype": (_safetensors(_unknown_dtype), False),
    "safetensors: header is not JSON": (
        _safetensors(lambda n, h, b: struct.pack("<Q", 16) + b"{not json at all" + b), False),
}

CASES = {**PICKLES, **SAFETENSORS}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """``--data`` options for 60 digits in an npz (the walker runs after the data are opened)."""
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    np.savez(path, x_train=x[:40], y_train=y[:40], x_test=x[40:60], y_test=y[40:60])
    return ["--data", f"npz:{path}", "--input-size", "32"]


def hostile_dir(tmp_path: Path, case: str) -> tuple[Path, Path, Path]:
    """(checkpoint dir holding one good snapshot and the hostile file, the hostile file, the marker it would write)."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    torch.save(weights(), folder / "epoch_0.pt")
    write, _ = CASES[case]
    return folder, write(folder, marker), marker


def assert_one_line_user_error(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("i2x: error: ") and "Traceback" not in stderr, stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


# every case through `i2x extract`, two through `i2x run` (the same walker, reached from the other entry point)
COMMANDS = [("extract", case) for case in CASES] + [("run", "reduce to os.system"),
                                                    ("run", "safetensors: tensor offsets beyond the file")]


@pytest.mark.parametrize("command, case", COMMANDS)
def test_hostile_checkpoint_is_refused_and_runs_nothing(command, case, data, tmp_path, capsys):
    folder, hostile, marker = hostile_dir(tmp_path, case)
    out = tmp_path / "out"

    code = main([command, str(folder), "--out", str(out), "--limit", "10", *data])

    line = assert_one_line_user_error(capsys.readouterr().err, str(hostile))
    assert code == 2
    assert not marker.exists(), f"{case}: loading ran the payload"
    assert not (out / "store.zarr").exists()  # refused before anything was written
    suggests_trust = CASES[case][1]
    assert ("--trust-checkpoints" in line) is suggests_trust, line
    if suggests_trust:
        assert "refused to load" in line
    else:
        assert "trust" not in line.lower() and "truncated or corrupt" in line


@pytest.mark.parametrize("case", [c for c, (_, trust_helps) in CASES.items() if not trust_helps])
def test_files_no_flag_can_load_are_refused_even_when_trusted_and_run_nothing(case, data, tmp_path, capsys):
    folder, hostile, marker = hostile_dir(tmp_path, case)

    code = main(["extract", str(folder), "--out", str(tmp_path / "out"), "--trust-checkpoints", *data])

    assert code == 2
    assert_one_line_user_error(capsys.readouterr().err, str(hostile), "truncated or corrupt")
    assert not marker.exists()


def test_plain_pickle_message_says_what_the_file_is(data, tmp_path, capsys):
    folder, hostile, _ = hostile_dir(tmp_path, "plain pickle, protocol 5")
    assert main(["extract", str(folder), "--out", str(tmp_path / "out"), *data]) == 2
    line = assert_one_line_user_error(capsys.readouterr().err, str(hostile))
    assert "a plain pickle (written by pickle.dump, not torch.save)" in line and "--trust-checkpoints" in line
    assert "truncated or corrupt" not in line


def test_console_process_refuses_a_malicious_zip_without_running_it(data, tmp_path):
    folder, hostile, marker = hostile_dir(tmp_path, "zip whose data.pkl is malicious")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    done = subprocess.run([sys.executable, "-m", "i2x", "extract", str(folder), "--out", str(tmp_path / "out"), *data],
                          capture_output=True, text=True, env=env, timeout=300)

    assert done.returncode == 2
    line = assert_one_line_user_error(done.stderr, str(hostile), "--trust-checkpoints")
    assert "it names posix.system" in line or "it names os.system" in line
    assert not marker.exists()
