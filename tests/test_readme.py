"""The README's "your own checkpoints" example runs verbatim on an image folder made here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> list[str]:
    """The commands of the README's complete example (the bash block after 'A complete example')."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"A complete example.*?```bash\n(.*?)```", text, re.S)
    assert block, "the README lost its complete example"
    return [line for line in block.group(1).splitlines() if line.strip()]


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6) -> None:
    """A tiny ImageFolder with train/ and test/ splits: bright squares top-left for one class, bottom-right for the other."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = (rng.random((40, 40, 3)) * 60).astype(np.uint8)
                y0 = 4 if c == 0 else 22
                img[y0:y0 + 14, y0:y0 + 14] = 230
                Image.fromarray(img).save(folder / f"{i}.png")


@pytest.mark.slow
def test_readme_example_runs_verbatim(tmp_path):
    make_image_folder(tmp_path / "my_images")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the README's commands call .venv/bin/i2x
    for command in readme_example():
        done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    out = tmp_path / "analyses" / "my-resnet"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "torchvision:resnet18" and summary["classes"] == ["cat", "dog"]
    assert (out / "report.html").stat().st_size > 10_000
