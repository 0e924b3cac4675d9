"""Does run B use run A's shortcut? A's suspect concept, as the pixels of its footprints in A's donor images, pasted
into B's held-out images of other classes and judged by B's final model, against the same footprints shifted to
random places (the reliance study's paste test, with A's mask and B's model). ``i2x compare`` runs it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from i2x.attribution.interventions import transplant_logits
from i2x.io.location import as_path
from i2x.io.store import Store
from i2x.io.workdir import RELIANCE, read_json, unpack_mask
from i2x.stages.context import open_context, open_data
from i2x.stages.reliance.config import RelianceConfig
from i2x.stages.reliance.deletion import choose, images_at
from i2x.stages.reliance.paste import recipient_pool, score_paste


def suspect_in_other_run(dir_a: str | Path, dir_b: str | Path, trust_checkpoints: bool = False,
                         trust_analysis: bool = False, model: str | None = None,
                         device: str = "auto") -> dict[str, Any]:
    """B's paste result for A's suspect: ``{"status": "tested", "concept", "class", "class_name", "a": A's own paste,
    "b": B's paste (flip rates, z), "responds": whether B's answers move with those pixels as a shortcut's would}``
    (a model that never saw the marker may react to it too: the page weighs it with B's own verdict), or
    ``{"status": why not}`` when A found no shortcut, the reliance study has not run on A, or the two runs' classes
    or image sizes differ."""
    path = as_path(dir_a) / RELIANCE
    if not path.exists():
        return {"status": f"A's reliance study has not run (i2x reliance {as_path(dir_a).name})"}
    result = read_json(path, "the reliance study")
    if not result.get("shortcut_found") or result.get("suspect") is None:
        return {"status": "A has no shortcut to test"}
    concept = result["concepts"][result["suspect"]]
    store_a, store_b = Store.open(dir_a, mode="r"), Store.open(dir_b, mode="r")
    name = store_a.class_names[concept["class"]]
    if name not in store_b.class_names:
        return {"status": f"B has no class called {name!r}"}
    c = store_b.class_names.index(name)
    cfg = RelianceConfig(**{**result["config"], "device": device})
    config_a, data_a = open_data(store_a, trust_analysis)
    ctx = open_context(store_b, None, cfg.device, cfg.batch_size, trust_checkpoints, trust_analysis, model)
    gallery = np.asarray(concept["gallery"][: len(concept["footprints"])], dtype=np.int64)
    index, labels = store_a.read("sample_index")[gallery], store_a.read("labels")[gallery]
    donors, _ = images_at(data_a.split(config_a.split), index, cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    recipients, recipient_labels, split = recipient_pool(ctx, cfg, rng)
    if tuple(donors.shape[1:]) != tuple(recipients.shape[1:]):
        return {"status": f"the runs' images differ in shape ({tuple(donors.shape[1:])} in A, "
                          f"{tuple(recipients.shape[1:])} in B)"}
    masks = torch.from_numpy(np.stack([unpack_mask(f, tuple(donors.shape[-2:]))
                                       for f in concept["footprints"]]))
    own = labels == concept["class"]
    donors, masks = donors[torch.from_numpy(own)], masks[torch.from_numpy(own)]
    donors = _renormalised(donors, data_a, ctx.data)
    eligible = np.flatnonzero(recipient_labels.numpy() != c)
    if not len(donors) or not eligible.size:
        return {"status": "no donor image of A's class or no held-out image of another class in B"}
    pick = np.sort(choose(eligible, cfg.recipients, rng))
    which = np.arange(pick.size) % len(donors)
    clean = transplant_logits(ctx.model, recipients[pick], recipients[pick],
                              torch.zeros(pick.size, 1, *recipients.shape[-2:], dtype=torch.bool), cfg.batch_size)[:, 0]
    b = {"recipients": int(pick.size), "donors": len(donors), "split": split,
         **score_paste(ctx.model, recipients[pick], clean, donors[which], masks[which], c, cfg, gen)}
    responds = bool(b["excess_flip"] >= cfg.min_flip_excess and b["flip_z"] >= cfg.z_threshold
                and b["random_flip_rate"] <= cfg.max_random_flip)
    return {"status": "tested", "concept": concept["id"], "members": concept["members"], "class": c,
            "class_name": name, "a": concept["transplant"], "b": b, "responds": responds,
            "rule": (f"B responds to it when the paste turns at least {cfg.min_flip_excess:.0%} more of B's images "
                     f"into {name} than random patches of the same shape do, with z >= {cfg.z_threshold:g} and random "
                     f"patches flipping at most {cfg.max_random_flip:.0%} (A's reliance settings)")}


def _renormalised(images: torch.Tensor, source: Any, target: Any) -> torch.Tensor:
    """Images normalised as the ``source`` data set normalised as the ``target`` one (the runs may differ)."""
    raw = source.denormalize(images)
    mean = torch.tensor(target.mean, dtype=raw.dtype).view(1, -1, 1, 1)
    std = torch.tensor(target.std, dtype=raw.dtype).view(1, -1, 1, 1)
    return (raw - mean) / std
