"""A state_dict out of a checkpoint's payload, its keys matched to the model's, and the check that it fits.

Payloads recognised: a raw state_dict; ``{"state_dict": ...}`` (Lightning, whose keys carry the
LightningModule's attribute name, e.g. ``model.``); ``{"model_state_dict": ...}``, ``{"model": ...}``,
``{"net": ...}``; DDP ``module.`` and ``torch.compile`` ``_orig_mod.`` prefixes are stripped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from i2x.errors import UserError
from i2x.io.checkpoints.formats import HF_WEIGHT_FILES, read_payload
from i2x.io.checkpoints.snapshot import Checkpoint


WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def unwrap(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state_dict inside a payload (raw, Lightning, model_state_dict, model, net, nn.Module)."""
    if isinstance(payload, nn.Module):
        return payload.state_dict()
    if not isinstance(payload, Mapping):
        raise UserError(f"{path}: holds a {type(payload).__name__}, not a state_dict or a dict containing one")
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return dict(payload)
    for key in WRAPPER_KEYS:
        if key in payload:
            return unwrap(payload[key], path)
    raise UserError(
        f"{path}: no state_dict found; expected a raw state_dict or a dict with one of the keys "
        f"{', '.join(WRAPPER_KEYS)} (found keys: {', '.join(map(str, list(payload)[:8]))})"
    )


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP ``module.``, ``_orig_mod.``, a Lightning attribute name) to fit ``expected``."""
    while True:
        if set(state) & expected and not (set(state) - expected):
            return state
        for prefix in STRIP_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                break
        else:
            break
    if set(state) & expected:
        return state
    prefixes: dict[str, int] = {}
    for key in state:
        for exp in expected:
            if key.endswith("." + exp):
                prefixes[key[: -len(exp)]] = prefixes.get(key[: -len(exp)], 0) + 1
                break
    if prefixes:
        best = max(prefixes, key=prefixes.get)
        return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
    return state


def load_state_dict(checkpoint: Checkpoint, model: nn.Module, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read ``checkpoint`` and return its state_dict with keys matched to ``model``'s."""
    payload = read_payload(checkpoint.path, trust)
    state = unwrap(payload, checkpoint.path)
    expected = set(model.state_dict())
    state = _strip_prefixes(state, expected)
    convert = getattr(model, "i2x_convert_state", None)  # a model whose files may use other names (hf:PATH)
    if convert is not None and set(state) != expected:
        state = convert(state)
    return state


def load_into(model: nn.Module, checkpoint: Checkpoint, trust: bool = False) -> dict[str, torch.Tensor]:
    """Load ``checkpoint`` into ``model`` in place; a mismatch is a UserError naming the file and the keys."""
    state = load_state_dict(checkpoint, model, trust)
    check_fits(model, state, checkpoint.path)
    model.load_state_dict(state, strict=True)
    return state


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Raise a UserError listing missing/unexpected keys and shape mismatches (first few) if ``state`` does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    folder = Path(path).parent
    hint = (f" It sits beside a Hugging Face config.json: --model hf:{folder} builds the model that config describes."
            if (folder / "config.json").is_file() and Path(path).name in HF_WEIGHT_FILES else "")
    raise UserError(
        f"{path}: the checkpoint does not fit the model ({'; '.join(parts)}). "
        f"Check --model, --num-classes, --channels and the data's class count.{hint}"
    )


def is_finite(state: Mapping[str, torch.Tensor]) -> bool:
    """False when any floating-point tensor holds NaN or Inf (a diverged snapshot)."""
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())