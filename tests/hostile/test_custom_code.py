"""``--model hf:DIR`` never runs Python code that sits in the model folder: a config.json whose ``auto_map`` names
custom code is refused in one line naming the entry, and nothing asks on stdin (a "y" waiting there changes
nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
#: What the folder's code does when imported: leave a file behind.
PAYLOAD = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def _custom_model_folder(folder: Path, marker: Path) -> Path:
    """A save_pretrained-like folder whose config maps the Auto classes to the .py files beside it."""
    folder.mkdir()
    config = {"model_type": "i2x_custom", "num_labels": 10, "num_channels": 1,
              "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                           "AutoModelForImageClassification": "modeling_custom.CustomModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (folder / name).write_text(PAYLOAD.format(marker=str(marker)))
    return folder


def test_a_config_asking_for_custom_code_is_refused_without_a_prompt(tmp_path):
    marker = tmp_path / "code-ran"
    folder = _custom_model_folder(tmp_path / "model", marker)
    done = subprocess.run([sys.executable, "-m", "i2x", "train", "--model", f"hf:{folder}", "--data", "digits",
                           "--epochs", "1", "--out", str(tmp_path / "ck")],
                          input="y\ny\n", capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "auto_map" in lines[0], done.stderr
    assert "AutoModelForImageClassification -> modeling_custom.CustomModel" in lines[0]
    assert "[y/N]" not in done.stdout + done.stderr  # no question was asked
    assert not marker.exists() and not (tmp_path / "ck").exists()


def test_models_are_built_without_remote_code_even_when_the_check_is_bypassed(tmp_path, monkeypatch):
    """The second line of defence: transformers itself is told never to trust remote code."""
    import transformers

    from i2x.errors import UserError
    from i2x.io import models

    marker = tmp_path / "code-ran"
    folder = _custom_model_folder(tmp_path / "model", marker)
    monkeypatch.setattr(models, "_refuse_custom_code", lambda *_: None)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("something asked on stdin"))
    seen = []
    real = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    with pytest.raises((UserError, ValueError)):
        models.build_model(f"hf:{folder}", num_classes=10, in_channels=1)
    assert seen == [False] and not marker.exists()
