"""Is the analysis feeding the model what it was trained on? The preprocessing used, and a check of it by the model.

The first batch norm a forward pass reaches remembers, in its running mean and variance, the per-channel
statistics of its inputs during training. At the final checkpoint those are compared with what the chosen
preprocessing makes of the analysed images, and with what the usual alternatives would make: the data's own
mean/std (train split), 0.5/0.5, ImageNet's, none (mean 0, std 1), and any a timm/HF config beside the
checkpoints records. Per channel c, with μ, σ the statistics of the layer's input under a normalisation and
μ_r, σ_r its running ones:

    shift_c = |μ_c - μ_r,c| / σ_r,c        scale_c = |ln(σ_c / σ_r,c)|
    score   = max(median_c shift_c, median_c scale_c)

The median over channels keeps a few dead channels (σ_r ≈ 0) from deciding. A score of at most :data:`FIT`
(a quarter of a standard deviation in the mean, or 28% in the scale) fits: a model fed the normalisation it
was trained with scores a few hundredths (augmentation and the last batches' drift), a wrong one whole units
(0.5/0.5 against the data's own mean 0.57, std 0.16 of an X-ray set is a factor 3 in scale). The analysis is
refused when the chosen normalisation does not fit and another one does, naming it; when none fits the result
is *doubtful* (said, not refused). Unchecked: no batch norm before the head, or one that saw too few batches
for its running statistics to have forgotten their initial values (momentum m: (1 - m)^batches > 5%).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from i2x.errors import UserError
from i2x.io.data import ImageData

#: The score at or below which a normalisation fits the batch norm's running statistics.
FIT = 0.25
#: The share of its initial statistics a batch norm may still hold for the check to count.
MAX_INITIAL_WEIGHT = 0.05
#: Analysed images the check feeds the model.
CHECK_IMAGES = 256
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: The option that turns the refusal off.
SKIP_FLAG = "--skip-normalisation-check"


@dataclass
class Normalisation:
    """One candidate preprocessing: a name a reader knows, its per-channel mean and std."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def flags(self) -> str:
        """The options that choose it."""
        return f"--mean {','.join(f'{v:.4g}' for v in self.mean)} --std {','.join(f'{v:.4g}' for v in self.std)}"

    def same(self, other: "Normalisation") -> bool:
        return bool(np.allclose(self.mean, other.mean, atol=1e-4) and np.allclose(self.std, other.std, atol=1e-4))


@dataclass
class NormalisationCheck:
    """What the check found: ``status`` is fits, doubtful, unchecked or skipped; ``scores`` per candidate."""

    status: str
    used: Normalisation
    layer: str | None = None
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the CLI and the report's first screen."""
        if self.status == "fits":
            return (f"normalisation checked: {self.used.name} fits the running statistics of {self.layer} "
                    f"(score {self.scores[self.used.name]:.2f}, fit at most {FIT})")
        if self.status == "skipped":
            return f"normalisation check skipped ({SKIP_FLAG}): {self.reason}"
        return f"normalisation {self.status}: {self.reason}"

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record (the store's ``preprocessing`` note)."""
        return {"status": self.status, "layer": self.layer, "reason": self.reason, "line": self.line(),
                "scores": {k: round(v, 4) for k, v in self.scores.items()}, "fit": FIT, "notes": list(self.notes)}


def preprocessing_record(data: ImageData, check: NormalisationCheck) -> dict[str, Any]:
    """The preprocessing actually used (resolved numbers, never null) and its check, for the store."""
    return {"mean": [round(v, 6) for v in data.mean], "std": [round(v, 6) for v in data.std],
            "name": check.used.name, "input_size": list(data.input_size), "channels": data.channels,
            "check": check.describe()}


def preprocessing_line(record: dict[str, Any]) -> str:
    """``normalised by ... (mean .., std ..), 32x32, 1 channel`` from the store's record."""
    h, w = record["input_size"]
    mean, std = (",".join(f"{v:.3g}" for v in record[k]) for k in ("mean", "std"))
    return (f"{record['name']} (mean {mean}, std {std}), {h}x{w} px, {record['channels']} channel"
            f"{'s' if record['channels'] != 1 else ''}")


def _images(dataset: Dataset, limit: int) -> torch.Tensor:
    """Up to ``limit`` images spread evenly over ``dataset``."""
    n = len(dataset)  # type: ignore[arg-type]
    rows = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][torch.as_tensor(rows)]
    return torch.stack([dataset[int(i)][0] for i in rows])


def _own(data: ImageData) -> Normalisation:
    """The train split's own per-channel mean and std (over its pixels, as the data loaders compute them)."""
    train = data.split("train")
    x = train.tensors[0] if isinstance(train, TensorDataset) else _images(train, 2048)
    raw = _raw(x, data.mean, data.std)
    return Normalisation("the data's own normalisation", tuple(raw.mean(dim=(0, 2, 3)).tolist()),
                         tuple(raw.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()))


def _raw(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def recorded_configs(folders: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(file, its preprocessing) from the timm/HF configs in ``folders``: ``preprocessor_config.json``'s
    image_mean/image_std/size, ``config.json``'s pretrained_cfg (timm) or top-level mean/std."""
    found = []
    for folder in folders:
        for name in ("preprocessor_config.json", "config.json"):
            path = folder / name
            if not path.is_file():
                continue
            try:
                cfg = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(cfg, dict):
                continue
            pre = cfg.get("pretrained_cfg") if isinstance(cfg.get("pretrained_cfg"), dict) else cfg
            mean, std = pre.get("image_mean", pre.get("mean")), pre.get("image_std", pre.get("std"))
            entry: dict[str, Any] = {}
            if isinstance(mean, list) and isinstance(std, list) and mean and len(mean) == len(std):
                entry["mean"], entry["std"] = tuple(map(float, mean)), tuple(map(float, std))
            size = pre.get("input_size", pre.get("size"))
            if isinstance(size, list) and len(size) == 3:
                entry["channels"], entry["input_size"] = int(size[0]), (int(size[1]), int(size[2]))
            elif isinstance(size, dict) and "height" in size and "width" in size:
                entry["input_size"] = (int(size["height"]), int(size["width"]))
            elif isinstance(size, int):
                entry["input_size"] = (size, size)
            if entry:
                found.append((str(path), entry))
    return found


def candidates(data: ImageData, configs: list[tuple[str, dict[str, Any]]]) -> list[Normalisation]:
    """The normalisations tried: the data's own, 0.5/0.5, ImageNet's (3 channels), none, and the configs'."""
    c = data.channels
    out = [_own(data), Normalisation("0.5/0.5 normalisation", (0.5,) * c, (0.5,) * c)]
    if c == 3:
        out.append(Normalisation("ImageNet's normalisation", *IMAGENET))
    out.append(Normalisation("no normalisation", (0.0,) * c, (1.0,) * c))
    for path, entry in configs:
        if "mean" in entry and len(entry["mean"]) == c:
            out.append(Normalisation(f"the normalisation {Path(path).name} records", entry["mean"], entry["std"]))
    return out


class _Reached(Exception):
    """Stops the forward pass once the batch norm's input is seen."""


def first_batch_norm(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module] | None:
    """The first batch norm with running statistics that a forward pass on ``x`` reaches (name, module)."""
    norms = {m: n for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}
    seen: list[nn.Module] = []

    def hook(module: nn.Module, _args: Any) -> None:
        seen.append(module)
        raise _Reached

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    try:
        with torch.no_grad():
            model(x)
    except _Reached:
        pass
    finally:
        for h in handles:
            h.remove()
    return (norms[seen[0]], seen[0]) if seen else None


def _input_stats(model: nn.Module, bn: nn.Module, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of ``bn``'s input over the images ``x`` (the forward stops there)."""
    total, squares, count = 0.0, 0.0, 0

    def hook(_module: nn.Module, args: Any) -> None:
        nonlocal total, squares, count
        a = args[0].detach().double().transpose(0, 1).reshape(args[0].shape[1], -1)
        total, squares, count = total + a.sum(1), squares + (a * a).sum(1), count + a.shape[1]
        raise _Reached

    handle = bn.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                try:
                    model(x[i:i + batch])
                except _Reached:
                    pass
    finally:
        handle.remove()
    mean = total / count
    return mean, (squares / count - mean * mean).clamp_min(0)


def score(mean: torch.Tensor, var: torch.Tensor, bn: nn.Module) -> float:
    """max(median shift of the mean in running sds, median |log ratio of the sds|) over channels."""
    eps = float(getattr(bn, "eps", 1e-5))
    r_mean, r_var = bn.running_mean.detach().double().cpu(), bn.running_var.detach().double().cpu()
    shift = (mean.cpu() - r_mean).abs() / (r_var + eps).sqrt()
    scale = 0.5 * ((var.cpu() + eps) / (r_var + eps)).log().abs()
    return float(max(shift.median(), scale.median()))


def _initial_weight(bn: nn.Module) -> float:
    """The share of its initial running statistics ``bn`` still holds."""
    momentum, batches = bn.momentum, int(getattr(bn, "num_batches_tracked", 0) or 0)
    if momentum is None:  # a cumulative average: the first batch replaces the initial values
        return 0.0 if batches else 1.0
    return (1.0 - momentum) ** batches


def check_normalisation(model: nn.Module, dataset: Dataset, data: ImageData, device: torch.device,
                        folders: list[Path], skip: bool = False, batch: int = 64) -> NormalisationCheck:
    """Compare the model's first batch norm with the preprocessing of ``data`` (the loaded weights, in eval mode);
    a UserError names the normalisation that fits when the one used does not, unless ``skip``."""
    configs = recorded_configs(folders)
    tried = candidates(data, configs)
    used = Normalisation("the given normalisation", tuple(data.mean), tuple(data.std))
    used = next((c for c in tried if c.same(used)), used)
    notes = [f"{Path(path).name} records {'x'.join(map(str, e['input_size']))} px; the analysis uses "
             f"{'x'.join(map(str, data.input_size))} px" for path, e in configs
             if "input_size" in e and tuple(e["input_size"]) != tuple(data.input_size)]
    notes += [f"{Path(path).name} records {e['channels']} channels; the analysis uses {data.channels}"
              for path, e in configs if "channels" in e and e["channels"] != data.channels]
    x = _images(dataset, CHECK_IMAGES).to(device)
    model.eval()
    found = first_batch_norm(model, x[:1])
    if found is None:
        return NormalisationCheck("unchecked", used, reason="the model has no batch norm whose running statistics "
                                  "could be compared with the inputs", notes=notes)
    name, bn = found
    if _initial_weight(bn) > MAX_INITIAL_WEIGHT:
        return NormalisationCheck("unchecked", used, name, f"{name} saw too few training batches "
                                  f"({int(bn.num_batches_tracked)}) for its running statistics to say", notes=notes)
    raw = _raw(x.cpu(), used.mean, used.std)
    scores = {}
    for c in ([used] if all(not used.same(t) for t in tried) else []) + tried:
        normalised = ((raw - torch.tensor(c.mean).view(1, -1, 1, 1)) / torch.tensor(c.std).view(1, -1, 1, 1))
        scores[c.name] = score(*_input_stats(model, bn, normalised.to(device, x.dtype), batch), bn)
    best = min(tried, key=lambda c: scores[c.name])
    mine = scores[used.name]
    if not math.isfinite(mine) or mine > FIT:
        if scores[best.name] <= FIT and not best.same(used):
            why = (f"{name}'s running statistics fit {best.name} ({best.flags()}, score "
                   f"{scores[best.name]:.2f}), not {used.name}, used here ({used.flags()}, score {mine:.2f})")
            if not skip:
                raise UserError(f"--mean/--std: the model was trained on other inputs: {why}; rerun with "
                                f"{best.flags()}, or pass {SKIP_FLAG} if you know better")
            return NormalisationCheck("skipped", used, name, why, scores, notes)
        status = "skipped" if skip else "doubtful"
        return NormalisationCheck(status, used, name, f"no normalisation tried fits {name}'s running statistics (best: "
                                  f"{best.name}, score {scores[best.name]:.2f}; used: {used.name}, score {mine:.2f})",
                                  scores, notes)
    return NormalisationCheck("fits", used, name, "", scores, notes)
