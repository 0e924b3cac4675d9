"""The film strips' samples and the maps the store does not hold: per class the most confident and the most variable
sample, then the least confident at the end; for each one the final model gets wrong, the maps of the class it
answers at the strips' checkpoints, computed with the model. Written to the store (``film/``) before the report is
built, so the report only reads results and never runs a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from i2x.errors import UserError
from i2x.io.store import Store
from i2x.io.workdir import SUMMARY, AnalysisDir
from i2x.metrics.stats import evenly_spaced
from i2x.stages.context import open_context
from i2x.stages.faithfulness import cams_for_targets

#: The most checkpoints a strip shows (evenly spaced, the first and the last always among them).
MAX_FILM_COLUMNS = 12


def film_rows(store: Store, per_class: int = 2, confused: int = 6) -> tuple[np.ndarray, list[str]]:
    """Store rows for the film strips with why each was picked: per class (at most 20) the most confident and the
    most variable sample, then the ``confused`` samples with the lowest final p(true class)."""
    labels = store.read("labels")
    conf_, var_ = store.read("analysis/confidence"), store.read("analysis/variability")
    m = len(store.class_names)
    classes = np.arange(min(m, 20))
    picks: list[tuple[int, int, str]] = []  # (sort key, row, why)
    for rank, (key, why) in enumerate(((-conf_, "most confident"), (-var_, "most variable"))[:per_class]):
        order = np.lexsort((key, labels))
        pos = np.searchsorted(labels[order], classes)
        has = (pos < order.size) & (labels[order][np.minimum(pos, order.size - 1)] == classes)
        picks += [(int(c) * per_class + rank, int(order[p]), why) for c, p in zip(classes[has], pos[has])]
    final = np.asarray(store.array("probs")[final_index(store)])
    p_final = final[np.arange(labels.size), labels]
    wrong = final.argmax(axis=1) != labels
    for i in np.argsort(p_final, kind="stable")[:confused]:
        picks.append((m * per_class, int(i), "misclassified" if wrong[i] else "least confident at the end"))
    seen: dict[int, str] = {}
    for _key, i, why in sorted(picks, key=lambda p: p[0]):
        seen.setdefault(i, why)
    return np.array(list(seen), dtype=np.int64), list(seen.values())


def final_index(store: Store) -> int:
    """Store index of the last checkpoint whose weights were finite (the analysis's final checkpoint)."""
    return int(np.flatnonzero(store.read("finite").astype(bool))[-1])


def prepare_film(out_dir: str | Path | AnalysisDir, trust_analysis: bool = False) -> dict[str, Any] | None:
    """Pick the film rows and compute the answer maps of the misclassified ones into ``store.zarr/film/``; a rerun
    with the same rows, checkpoints and methods does nothing. None when the analysis has not finished (no rows to pick);
    when the model cannot be rebuilt the reason is recorded instead of the maps, for the page to show."""
    out = AnalysisDir.at(out_dir)
    with out.locked():
        store = out.store(mode="a")
        if store.segmentation or not (out / SUMMARY).is_file():  # summary.json is written last: the analysis is done
            return None
        rows, why = film_rows(store)
        cols = evenly_spaced(len(store.checkpoints), MAX_FILM_COLUMNS)
        methods = list(store.methods)
        key = {"rows": rows.tolist(), "columns": cols.tolist(), "methods": methods,
               "checkpoints": [c["name"] for c in store.checkpoints]}
        done = store.attrs.get("film")
        if done is not None and done.get("key") == key:
            return done
        labels = store.read("labels")[rows]
        final = np.nan_to_num(np.asarray(store.array("probs")[final_index(store)])[rows]).argmax(axis=1)
        wrong = np.flatnonzero(final != labels) if store.config.get("target", "true") == "true" else np.zeros(0, int)
        record: dict[str, Any] = {"key": key, "why": why, "answered": wrong.tolist(),
                                  "answer_class": final[wrong].tolist(), "unavailable": None}
        store.clear_group("film")
        store.write("film/rows", rows)
        store.write("film/columns", cols)
        if wrong.size:
            try:
                maps = _answer_maps(store, rows[wrong], final[wrong], cols, methods, trust_analysis)
            except (UserError, OSError, RuntimeError) as exc:
                record["unavailable"] = str(exc)
            else:
                for m, a in maps.items():
                    store.write(f"film/answer/{m}", a)
        store.note({"film": record})
        return record


def _answer_maps(store: Store, rows: np.ndarray, targets: np.ndarray, cols: np.ndarray, methods: list[str],
                 trust_analysis: bool) -> dict[str, np.ndarray]:
    """Raw maps ``[columns, rows, h, w]`` per method explaining classes ``targets`` of store rows ``rows`` at the
    checkpoints ``cols`` (NaN where a checkpoint diverged), with the model rebuilt from the store."""
    h, w = store.grid
    usable = store.read("finite")[cols].astype(bool)
    out = {m: np.full((cols.size, rows.size, h, w), np.nan, dtype=np.float32) for m in methods}
    ctx = open_context(store, device="cpu", batch_size=64, trust_analysis=trust_analysis)
    x = torch.stack([ctx.dataset[int(i)][0] for i in rows])
    for i, t in enumerate(cols):
        if usable[i]:
            ctx.load(ctx.checkpoint(store.checkpoints[t]["name"]))
            ctx.model.eval()
            for m, maps in cams_for_targets(store, ctx, int(t), rows, x, targets, methods).items():
                out[m][i] = maps.numpy()
    return out
