"""Minimal evidence on planted shortcuts as hard as the real case: the masks of marked images the model calls the
marked class sit on the marker; the masks of their clean twins do not.

The data are the two-class textured sets of :mod:`i2x.io.synthetic` (a 2-px L in the top-left corner or a bar in
the middle, each across 3 cells of the 7x7 grid and its cell borders, on 90% of class 1's and 10% of class 0's
images; grey and RGB), two seeds each. Each case first proves by input intervention that the model uses the marker
(painting it on class-0 test images makes class-1 predictions far more common), then explains exactly the images it
flips, marked and clean, with the stage's defaults.

The footprint is the marker and the pixels within 2 px of it (Manhattan): the masks are drawn on an 8 x 8 grid of
logits (3.5 px per cell on 28 x 28 images) and cannot follow a 2-px line, so a mask on the marker holds its border.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from i2x import api
from i2x.attribution.minimal_evidence import MinimalEvidence, fill_of
from i2x.io import synthetic
from i2x.io.synthetic import MARKED_CLASS, marker_effect, marker_pixels, paint_marker, planted_seed
from i2x.stages.context import RunConfig, build_context

EPOCHS = 4
CASES = 32


def footprint(place: str) -> torch.Tensor:
    """The marker's pixels and those within 2 px of them, ``[28, 28]`` bool."""
    return torch.from_numpy(binary_dilation(marker_pixels(place), iterations=2))


def share_on(masks: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each binary mask ``[B, H, W]`` inside ``region`` ``[H, W]`` (0 for an empty mask)."""
    return (masks & region).flatten(1).sum(1).float() / masks.flatten(1).sum(1).clamp_min(1)


def test_share_on_counts_mask_pixels_inside_the_region():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[0, :] = True
    assert share_on(masks, region).tolist() == [0.5, 0.0]
    assert footprint("corner").sum() > marker_pixels("corner").sum() and not footprint("corner")[20:, 20:].any()


def twins(data, place: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-0 test images without the marker, as they are and with it painted on (normalised like the data)."""
    x, y = data.split("test").tensors
    keep = (y != MARKED_CLASS).numpy()
    keep[data.extra["marked"]["test"]] = False
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    clean = x[torch.from_numpy(keep)]
    raw = (clean * std + mean).permute(0, 2, 3, 1).numpy()
    return clean, (torch.from_numpy(paint_marker(raw, place)).permute(0, 3, 1, 2) - mean) / std


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_evidence_sits_on_the_planted_marker(tmp_path, kind, seed):
    place = kind.split("_")[0]
    spec = f"{Path(synthetic.__file__).resolve()}:marker_{kind}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same trained weights on every machine
    try:
        with planted_seed(seed):
            api.train(data=spec, out=tmp_path / "ck", epochs=EPOCHS, seed=seed, progress=False)
            ctx = build_context(RunConfig(checkpoints=str(tmp_path / "ck"), data=spec))
        ctx.load(ctx.checkpoint("final"))
        model = ctx.model.eval()
        effect = marker_effect(model, ctx.data, place)
        assert effect["rate_marked"] >= effect["rate_clean"] + 0.3, f"the model does not use the marker: {effect}"
        clean, marked = twins(ctx.data, place)
        with torch.no_grad():
            flips = (model(marked).argmax(1) == MARKED_CLASS) & (model(clean).argmax(1) != MARKED_CLASS)
        chosen = torch.nonzero(flips).flatten()[:CASES]
        assert chosen.numel() >= 16, "too few marked images flip to the marked class to test the masks"

        images = torch.cat([marked[chosen], clean[chosen]])
        mean, std = torch.tensor(ctx.data.mean).view(1, -1, 1, 1), torch.tensor(ctx.data.std).view(1, -1, 1, 1)
        result = MinimalEvidence([ctx.config.layer or "features"]).explain(
            model, images, fill_of("border", images, mean, std), mean, std)
    finally:
        torch.set_num_threads(threads)
    n = chosen.numel()
    foot = footprint(place)
    share = share_on(result.masks, foot)
    on_marked, on_clean = (share[:n] >= 0.5).float().mean().item(), (share[n:] >= 0.5).float().mean().item()
    exact = share_on(result.masks, torch.from_numpy(marker_pixels(place)))
    print(f"\n{kind} seed {seed}: marker turns {effect['rate_clean']:.0%} -> {effect['rate_marked']:.0%} of class 0 "
          f"into class 1; {n} flipped images; masks with >= half their area on the footprint ({foot.float().mean():.2f} "
          f"of the image): marked {on_marked:.0%} (mean share {share[:n].mean():.2f}, on the marker's own pixels "
          f"{exact[:n].mean():.2f}), clean twins {on_clean:.0%} (mean share {share[n:].mean():.2f}); kept "
          f"{result.kept[:n].float().mean():.0%} / {result.kept[n:].float().mean():.0%} at mean area "
          f"{result.area[:n].mean():.3f} / {result.area[n:].mean():.3f}")
    assert (result.target[:n] == MARKED_CLASS).all() and (result.target[n:] != MARKED_CLASS).all()
    assert result.kept.float().mean() >= 0.95
    assert on_marked > 0.5 and share[:n].mean() > 2 * foot.float().mean()  # most; far above a mask placed at random
    assert on_clean <= 0.1 and share[n:].mean() < share[:n].mean() - 0.3
    assert np.isfinite(result.kl.numpy()).all()
