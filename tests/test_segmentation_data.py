"""Segmentation data: the synthetic shapes, mask data specs (npz mask keys, image folder with a mask folder,
class names from a file), their checks, and the segmentation model specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i2x.errors import UserError
from i2x.io.data import load_data
from i2x.io.masks import RegionRows, region_rows
from i2x.planted.shapes import CLASSES, make_shapes, shape_mask


def _arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, masks = make_shapes(n, np.random.default_rng(seed))
    return (images * 255).astype(np.uint8), masks


def test_shapes_are_drawn_where_their_masks_say() -> None:
    images, masks = make_shapes(40, np.random.default_rng(0))
    assert images.shape == (40, 32, 32, 3) and masks.shape == (40, 32, 32)
    present = [set(np.unique(m)) - {0} for m in masks]
    assert all(1 <= len(p) <= 2 for p in present) and set().union(*present) == {1, 2, 3}
    for c in (1, 2, 3):  # a shape is 10-15 pixels across: it spans several 4-pixel cells of an 8x8 grid
        rows = [np.flatnonzero((m == c).any(1)) for m in masks if (m == c).any()]
        assert min(r.max() - r.min() + 1 for r in rows) >= 9
    # shape pixels differ from the background's texture: their brightness is far from the background's mean
    assert images[masks > 0].max(axis=-1).mean() > images[masks == 0].max(axis=-1).mean() + 0.15
    assert shape_mask("ring", (16, 16), 6)[16, 16] == 0 and shape_mask("square", (16, 16), 6)[16, 16] == 1


def test_npz_with_mask_keys_and_a_class_file(tmp_path: Path) -> None:
    (xt, mt), (xs, ms) = _arrays(12, 1), _arrays(4, 2)
    np.savez(tmp_path / "seg.npz", x_train=xt, mask_train=mt, x_test=xs, mask_test=ms)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    data = load_data(f"npz:{tmp_path / 'seg.npz'}")
    assert data.task == "segmentation" and data.class_names == list(CLASSES)
    x, m = data.split("train")[3]
    assert x.shape == (3, 32, 32) and torch.equal(m, torch.from_numpy(mt[3]))
    rows = region_rows(data).split("train")
    assert isinstance(rows, RegionRows)
    expected = [(i, c) for i in range(12) for c in (1, 2, 3) if (mt[i] == c).any()]
    assert list(zip(rows.samples.tolist(), rows.targets.tolist())) == expected
    r = len(expected) - 1
    assert torch.equal(rows.regions([r])[0], torch.from_numpy(mt[expected[r][0]] == expected[r][1]))


def test_npz_mask_beyond_the_class_names_is_refused(tmp_path: Path) -> None:
    (xt, mt), (xs, ms) = _arrays(6, 1), _arrays(3, 2)
    ms[2, 0, 0] = 7
    np.savez(tmp_path / "seg.npz", x_train=xt, mask_train=mt, x_test=xs, mask_test=ms,
             class_names=np.array(CLASSES))
    with pytest.raises(UserError, match="test split's mask 2 holds class 7, beyond the 4 class names"):
        load_data(f"npz:{tmp_path / 'seg.npz'}")


def test_segfolder_reads_images_masks_and_class_names(tmp_path: Path) -> None:
    from PIL import Image

    for split, n, seed in (("train", 6, 1), ("test", 3, 2)):
        images, masks = _arrays(n, seed)
        for sub in ("images", "masks"):
            (tmp_path / split / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(images[i]).save(tmp_path / split / "images" / f"im{i}.png")
            Image.fromarray(masks[i].astype(np.uint8)).save(tmp_path / split / "masks" / f"im{i}.png")
    (tmp_path / "classes.txt").write_text("bg\nsq\nring\ncross\n")
    data = load_data(f"segfolder:{tmp_path}")
    assert data.task == "segmentation" and data.class_names == ["bg", "sq", "ring", "cross"]
    assert len(data.split("train")) == 6 and len(data.split("test")) == 3
    assert torch.equal(data.split("test")[1][1], torch.from_numpy(_arrays(3, 2)[1][1]))
    (tmp_path / "train" / "masks" / "im5.png").unlink()
    with pytest.raises(UserError, match="im5.png has no mask"):
        load_data(f"segfolder:{tmp_path}")


def test_train_task_must_match_the_data(tmp_path: Path) -> None:
    from i2x import api

    with pytest.raises(UserError, match="--task classification: --data planted:shapes-small is a "
                                        "segmentation set"):
        api.train(data="planted:shapes-small", model="small-segnet", out=tmp_path / "a", epochs=1)
    with pytest.raises(UserError, match="--model small-cnn: segmentation needs per-pixel logits"):
        api.train(data="planted:shapes-small", model="small-cnn", out=tmp_path / "b", epochs=1,
                  task="segmentation")
