"""What a weight file holds without loading it into a model: the training step stored inside and a digest of
the weights (a digest of the tensors' names, dtypes, shapes and bytes, not of the file, so Lightning's
``last.ckpt`` matches the final epoch's file). The walker uses both to order snapshots and find duplicates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from i2x.io.checkpoints.formats import (HF_WEIGHT_FILES, read_payload, refuse_placeholders,
                                       unreadable_safetensors)
from i2x.io.checkpoints.formats import source as local_file
from i2x.io.object_copies import readable
from i2x.io.checkpoints.state_dicts import unwrap
from i2x.errors import UserError

STEP_KEYS = ("global_step", "step", "epoch")


def inspect(path: Path, trust: bool) -> tuple[int | None, str, dict[str, Any], str | None]:
    """The step stored inside a snapshot (global_step > step > epoch), light metadata and the weights' quick
    digest, the same for every format (a .pt copy of a .safetensors file has the same one). A file on object
    storage is read from its local copy, fetched once."""
    path = readable(path)
    if path.suffix == ".safetensors":
        step, source, meta, digest = *_safetensors_step(path), {}, _safetensors_digest(path, quick=True)
    else:
        payload = read_payload(path, trust, mmap=True)
        step, source, meta = _payload_step(payload)
        digest = _payload_digest(payload, path, quick=True)
    if path.name in HF_WEIGHT_FILES:
        state_file = path.parent / "trainer_state.json"
        if state_file.is_file():
            try:
                hf_step = json.loads(state_file.read_text()).get("global_step")
                if isinstance(hf_step, int):
                    step, source = hf_step, "global_step"
            except (json.JSONDecodeError, OSError):
                pass
    return step, source, meta, digest


def _safetensors_step(path: Path) -> tuple[int | None, str]:
    from safetensors import SafetensorError, safe_open

    refuse_placeholders(path)
    try:
        with safe_open(str(local_file(path)), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise unreadable_safetensors(path, exc) from exc
    for key in STEP_KEYS:
        if str(meta.get(key, "")).lstrip("-").isdigit():
            return int(meta[key]), key
    return None, "unknown"


def _payload_step(payload: Any) -> tuple[int | None, str, dict[str, Any]]:
    if isinstance(payload, Mapping):
        meta = {k: payload[k] for k in ("metrics",) if k in payload and isinstance(payload[k], Mapping)}
        for key in STEP_KEYS:
            value = payload.get(key)
            if isinstance(value, (int, torch.Tensor)) and not isinstance(value, bool):
                try:
                    return int(value), key, meta
                except (TypeError, ValueError, RuntimeError):
                    continue
        return None, "unknown", meta
    return None, "unknown", {}


def weights_digest(state: Mapping[str, Any], quick: bool = False) -> str | None:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes (a prefix all keys share stripped), tensor by
    tensor: two files holding the same weights get the same digest whatever else they hold or however they
    were written. ``quick`` hashes only each tensor's first and last QUICK_BYTES (a memory-mapped file then reads
    a page per tensor): equal quick digests are candidates that the full digest confirms. None when a tensor's
    bytes cannot be read (sparse, quantised): such files are never merged."""
    keys = [k for k in state if isinstance(state[k], torch.Tensor)]
    prefix = ""
    while keys and "." in keys[0]:  # wrapper prefixes every key shares: module., _orig_mod., Lightning's model.
        head = keys[0][len(prefix):].split(".", 1)[0] + "."
        if not all(k.startswith(prefix + head) and len(k) > len(prefix + head) for k in keys):
            break
        prefix += head
    digest = hashlib.sha256()
    try:
        for key in sorted(keys):
            tensor = state[key].detach()
            digest.update(f"{key[len(prefix):]}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            data = tensor.reshape(-1).contiguous().view(torch.uint8) if not quick else _ends(tensor)
            digest.update(data.numpy().data)
    except (RuntimeError, TypeError, ValueError):
        return None
    return digest.hexdigest()


QUICK_BYTES = 64


def _ends(tensor: torch.Tensor) -> torch.Tensor:
    """The first and last QUICK_BYTES of a tensor's data, read without touching the rest."""
    flat = tensor.reshape(-1)
    n = max(1, QUICK_BYTES // max(1, tensor.element_size()))
    part = flat if flat.numel() <= 2 * n else torch.cat([flat[:n], flat[-n:]])
    return part.contiguous().view(torch.uint8)


def _payload_digest(payload: Any, path: Path, quick: bool = False) -> str | None:
    try:
        return weights_digest(unwrap(payload, path), quick)
    except UserError:  # no state_dict inside: the load reports it, naming the file
        return None


def full_digest(path: Path, trust: bool) -> str | None:
    """The digest of every byte of a snapshot's weights (read again, streamed from a memory map)."""
    if path.suffix == ".safetensors":
        return _safetensors_digest(path)
    return _payload_digest(read_payload(path, trust, mmap=True), path)


def _safetensors_digest(path: Path, quick: bool = False) -> str | None:
    from safetensors import SafetensorError, safe_open

    path = readable(path)
    try:
        with safe_open(str(local_file(path)), framework="pt") as fh:
            return weights_digest(_LazyTensors(fh), quick)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise unreadable_safetensors(path, exc) from exc


class _LazyTensors(Mapping):
    """A safetensors file as a mapping that reads one tensor at a time (the digest streams, never holding all)."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.names = handle, list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.handle.get_tensor(key)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
