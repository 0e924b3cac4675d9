"""Which samples and checkpoints ``i2x evidence`` explains."""

from __future__ import annotations

import numpy as np

from i2x.analysis.cartography import cartography
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.io.workdir import usable_checkpoints
from i2x.metrics.faithfulness import select_buckets


def select_samples(store: Store, spec: str, max_samples: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Store rows to explain and why each was chosen (see ``EvidenceConfig.samples``), at most ``max_samples``."""
    labels = store.read("labels")
    usable = usable_checkpoints(store)
    probs = np.asarray(store.array("probs").get_orthogonal_selection((usable, slice(None))))
    final = probs[-1]
    p_true = final[np.arange(labels.size), labels]
    names = store.class_names
    kind, _, arg = spec.partition(":")
    if spec == "default":
        carto = cartography(probs, labels)
        picks: list[tuple[int, str]] = []
        for c in range(len(names)):
            of_class = np.flatnonzero(labels == c)
            if of_class.size:
                picks.append((int(of_class[np.argmax(carto["confidence"][of_class])]), "most confident"))
                picks.append((int(of_class[np.argmax(carto["variability"][of_class])]), "most variable"))
        wrong = final.argmax(axis=1) != labels
        picks += [(int(i), "misclassified" if wrong[i] else "least confident at the end")
                  for i in np.argsort(p_true, kind="stable")[:6]]
        seen: dict[int, str] = {}
        for row, why in picks:
            seen.setdefault(row, why)
        rows, whys = np.array(list(seen), dtype=np.int64), list(seen.values())
    elif spec == "misclassified":
        wrong = np.flatnonzero(final.argmax(axis=1) != labels)
        rows = wrong[np.argsort(p_true[wrong], kind="stable")]
        whys = ["misclassified"] * rows.size
    elif kind == "class" and arg:
        c = names.index(arg) if arg in names else int(arg) if arg.isdigit() and int(arg) < len(names) else None
        if c is None:
            raise UserError(f"--samples {spec}: no class {arg!r}; choose one of {', '.join(names)}")
        rows = np.flatnonzero(labels == c)
        whys = [f"class {names[c]}"] * rows.size
    elif kind == "prototype" and arg.isdigit():
        if not store.has("analysis/share"):
            raise UserError(f"--samples {spec}: no prototypes yet; run `i2x analyze` first")
        share = store.read("analysis/share")
        k = int(arg)
        if k >= share.shape[1]:
            raise UserError(f"--samples {spec}: the analysis has prototypes 0..{share.shape[1] - 1}")
        rows = np.argsort(-share[:, k], kind="stable")
        rows = rows[share[rows, k] > 0]
        whys = [f"prototype {k} covers {share[r, k]:.0%}" for r in rows]
    elif kind == "bucket" and arg in ("tp", "fp", "random"):
        rows = select_buckets(final, labels, max_samples, None, seed)[arg]
        whys = [f"bucket {arg}"] * rows.size
    elif all(v.strip().isdigit() for v in spec.split(",")):
        rows = np.array([int(v) for v in spec.split(",")], dtype=np.int64)
        if rows.max() >= labels.size:
            raise UserError(f"--samples {spec}: the store has rows 0..{labels.size - 1}")
        whys = ["chosen"] * rows.size
    else:
        raise UserError(f"--samples {spec!r}: give default, misclassified, class:NAME, prototype:K, "
                        "bucket:tp|fp|random or store rows like 3,17,42")
    if rows.size == 0:
        raise UserError(f"--samples {spec}: no sample matches; choose another --samples")
    return rows[:max_samples], whys[:max_samples]


