"""Minimal evidence on a planted shortcut: the masks of marked images the model calls the marked class sit on
the marker; the masks of their clean twins do not.

The model is the small CNN trained on digits with the top-left marker on 90% of SHORTCUT_CLASS's
training images and on no other image (``test_reliance.exclusive_shortcut_data``). The test first
proves by input intervention that the model uses the marker (marking other-class test images turns
them into SHORTCUT_CLASS predictions), then explains exactly those flipped images, marked and clean.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from i2x import api
from i2x.attribution.minimal_evidence import MinimalEvidence
from i2x.stages.context import RunConfig, build_context

from planted import SHORTCUT_CLASS, marked_test_images

SPEC = f"{Path(__file__).resolve().parent / 'test_reliance.py'}:exclusive_shortcut_data"
CASES = 32


def _footprint_share(masks: torch.Tensor) -> torch.Tensor:
    """Share of each binary mask ``[B, 32, 32]`` on the marker's pixels (rows and columns 0-7 of the 32x32 image)."""
    foot = torch.zeros(masks.shape[-2:], dtype=torch.bool)
    foot[:8, :8] = True
    return (masks & foot).flatten(1).sum(1).float() / masks.flatten(1).sum(1).clamp_min(1)


@pytest.mark.slow
def test_evidence_sits_on_the_planted_marker(tmp_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    api.train(data=SPEC, out=tmp_path / "ck", epochs=3, lr=1e-2, progress=False)
    ctx = build_context(RunConfig(checkpoints=str(tmp_path / "ck"), data=SPEC))
    ctx.load(ctx.checkpoint("final"))
    model = ctx.model.eval()
    clean, marked = marked_test_images(ctx.data)
    y = ctx.data.split("test").tensors[1]
    with torch.no_grad():
        pred_clean, pred_marked = model(clean).argmax(1), model(marked).argmax(1)
    other = y != SHORTCUT_CLASS
    rate_clean = (pred_clean[other] == SHORTCUT_CLASS).float().mean().item()
    rate_marked = (pred_marked[other] == SHORTCUT_CLASS).float().mean().item()
    assert rate_marked >= rate_clean + 0.1, f"the model does not use the marker: {rate_clean:.2f} -> {rate_marked:.2f}"
    flipped = torch.nonzero(other & (pred_marked == SHORTCUT_CLASS) & (pred_clean != SHORTCUT_CLASS)).flatten()
    assert flipped.numel() >= 16, "too few marked images flip to the marked class to test the masks"
    flipped = flipped[:CASES]

    mean = torch.tensor(ctx.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(ctx.data.std).view(1, -1, 1, 1)
    optimiser = MinimalEvidence([ctx.config.layer or "features"])
    on_marked = optimiser.explain(model, marked[flipped], -mean / std, mean, std)
    on_clean = optimiser.explain(model, clean[flipped], -mean / std, mean, std)
    share_marked, share_clean = _footprint_share(on_marked.masks), _footprint_share(on_clean.masks)
    most_marked = (share_marked >= 0.5).float().mean().item()
    most_clean = (share_clean >= 0.5).float().mean().item()
    print(f"\n{flipped.numel()} flipped images (marker turns {rate_clean:.0%} -> {rate_marked:.0%} of other classes "
          f"into {SHORTCUT_CLASS}); masks with >= half their area on the marker: marked {most_marked:.0%} (mean "
          f"share {share_marked.mean():.2f}, area {on_marked.area.mean():.3f}, kept {on_marked.kept.float().mean():.0%})"
          f", clean twins {most_clean:.0%} (mean share {share_clean.mean():.2f}, area {on_clean.area.mean():.3f}, "
          f"kept {on_clean.kept.float().mean():.0%})")
    assert (on_marked.target == SHORTCUT_CLASS).all() and on_marked.kept.float().mean() >= 0.95
    assert most_marked > 0.5
    assert most_clean <= 0.1 and share_clean.mean() < share_marked.mean() - 0.3
