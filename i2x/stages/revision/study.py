"""Revision of a found shortcut and its re-evaluation: from the final checkpoint, each fix and each control over the
same seeds and epochs (:mod:`i2x.stages.revision.methods`), measured before and after on the clean and the attacked
test split (:mod:`i2x.stages.revision.measure`). Without annotations the artefact is the suspect concept's mask
(:func:`i2x.stages.revision.concept.concept_mask`) and its carriers are the analysed training samples where the
concept covers at least ``min_share`` of the cells (those of its class are the donors pasted from). Every model
measured also gets the reliance study's paste test of the concept (:mod:`i2x.stages.revision.retest`), so the report
continues the lead's test over training with the revised models.

Results go under ``revision`` in ``DEST/finetune.json`` (``measure`` for a measurement alone; other keys of that
file are kept) and each revised model to ``DEST/revision/<method>/seed<k>.pt`` (``{"state_dict", "method", "seed"}``).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from i2x.errors import UserError
from i2x.io.checkpoints.formats import read_payload
from i2x.io.checkpoints.state_dicts import check_fits, unwrap
from i2x.io.data import labels_of
from i2x.io.location import is_remote
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import FINETUNE, FINETUNE_DIR, load_summary, read_json, write_bytes, write_json
from i2x.settings import validate
from i2x.stages.context import open_context, open_data
from i2x.stages.finetune.controls import per_class_counts, random_exclusion
from i2x.stages.finetune.curation import choose_exclusions
from i2x.stages.reliance.deletion import images_at
from i2x.stages.revision.concept import concept_mask, reliance_concept
from i2x.stages.revision.config import DEFAULT_LR, DEFAULT_PENALTY, DEFAULT_SEEDS, MASK_AGREEMENT, RevisionConfig
from i2x.stages.revision.measure import mask_record, measure
from i2x.stages.revision.methods import CONTROLS, FIXES, Artefact, Schedule, concept_direction, train_fixed
from i2x.stages.revision.results import format_table, paired, summarise, verdict
from i2x.stages.revision.retest import Retest, paste_record


def revise(out_dir: str | Path, config: RevisionConfig | None = None, progress: bool = True,
           **options: Any) -> dict[str, Any]:
    """Revise the final checkpoint of ``out_dir`` against a concept's artefact (``fix``), or only measure it
    (``measure``); prints the table and returns the record written under ``revision`` (``measure``) in
    finetune.json."""
    cfg = config or RevisionConfig(**options)
    validate(cfg)
    if cfg.after and not cfg.measure:
        raise UserError(f"--after {cfg.after}: add --measure (a revised model is measured, not revised again)")
    if not cfg.fix and not cfg.measure:
        raise UserError("i2x finetune: give --fix METHOD to revise, or --measure to only measure")
    if is_remote(out_dir) or (cfg.dest is not None and is_remote(cfg.dest)):
        raise UserError(f"i2x finetune {out_dir}: revision writes models to a local directory; copy the analysis "
                        "directory from object storage first and run it there")
    start_time = time.perf_counter()
    out = Path(out_dir)
    methods = [] if cfg.measure else [*(FIXES if cfg.fix == "all" else (cfg.fix,)), *CONTROLS]
    seeds = list(range(cfg.seeds)) if isinstance(cfg.seeds, int) else list(cfg.seeds or range(DEFAULT_SEEDS))
    with locked(out):
        store = Store.open(out)
        _, data = open_data(store, cfg.trust_analysis)
        train_set, test_set = data.split("train"), data.split("test")
        train_labels = labels_of(train_set)
        row = reliance_concept(out, cfg.concept)
        concept, c = int(row["id"]), int(row["class"])
        curation = choose_exclusions(store, load_summary(out), store.class_names, train_labels, cfg.min_share, "top",
                                     None, False, concept)
        sample_index, analysed_labels = store.read("sample_index"), store.read("labels")
        ctx = open_context(store, None, cfg.device, cfg.batch_size, cfg.trust_checkpoints, cfg.trust_analysis,
                           cfg.model)
        layer = store.attrs["layer"]
        retest = Retest(out, store, ctx, row)
    test_images, test_labels = images_at(test_set, np.arange(len(test_set)), cfg.batch_size)  # type: ignore[arg-type]
    size = tuple(test_images.shape[-2:])
    measured = _annotated(cfg.artefact_mask, size) if cfg.artefact_mask else None  # type: ignore[arg-type]
    try:
        mask, mask_source = concept_mask(out, concept, size), f"concept {concept}"  # type: ignore[arg-type]
    except UserError:
        if measured is None:
            raise
        mask, mask_source = measured, f"annotation {cfg.artefact_mask} (concept {concept} has no mask)"
    measured = mask if measured is None else measured
    donor_ids = curation.ids[train_labels[curation.ids] == c]
    if donor_ids.size == 0:
        raise UserError(f"concept {concept}: no analysed training sample of its class carries it (share >= "
                        f"{cfg.min_share:g}); lower --min-share")
    donors, _ = images_at(train_set, donor_ids, cfg.batch_size)
    model, device = ctx.model, ctx.device
    if cfg.after:
        _load_revised(model, Path(cfg.after), cfg.trust_checkpoints)
    mask_t, measured_t = torch.from_numpy(mask), torch.from_numpy(measured)

    def evaluate() -> dict[str, Any]:
        return measure(model, test_images, test_labels, measured_t, donors, c, layer, device, cfg.batch_size)

    before, before_paste = evaluate(), retest(model)
    runs = []
    if methods:
        clean_ids = np.setdiff1d(sample_index[analysed_labels == c], curation.ids)
        direction = concept_direction(model, layer, donors, images_at(train_set, clean_ids, cfg.batch_size)[0],
                                      device) if "rrclarc" in methods and clean_ids.size else None
        artefact = Artefact(mask_t, donors, curation.ids, c, donor_ids.size / max(int((analysed_labels == c).sum()), 1),
                            layer, direction)
        lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]
        penalty = {k: cfg.penalty if cfg.penalty is not None else v for k, v in DEFAULT_PENALTY.items()}
        schedule = Schedule(cfg.fix_epochs, cfg.optimizer, lr, cfg.batch_size, penalty, device)
        runs = _run_all(model, methods, seeds, train_set, artefact, curation.ids, train_labels, sample_index,
                        analysed_labels, schedule, evaluate, retest, _dest(out, cfg), progress)
    methods_stats = summarise(runs, methods)
    pairs = paired(runs, methods)
    record = {
        "concept": concept, "class": c, "class_name": store.class_names[c],
        "mask": {"source": f"annotation {cfg.artefact_mask}" if cfg.artefact_mask else
                 f"concept {concept} (pixels held by >= {MASK_AGREEMENT:.0%} of its gallery footprints)",
                 **mask_record(measured)},
        "fix_mask": {"source": mask_source, **mask_record(mask)},
        "carriers": {"count": int(curation.ids.size), "donors": int(donor_ids.size), "min_share": cfg.min_share},
        "settings": {"fix": cfg.fix, "methods": methods, "seeds": seeds, "epochs": cfg.fix_epochs,
                     "optimizer": cfg.optimizer, "lr": cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer],
                     "penalty": {k: cfg.penalty if cfg.penalty is not None else v for k, v in DEFAULT_PENALTY.items()},
                     "batch_size": cfg.batch_size, "checkpoint": cfg.after or ctx.checkpoint("final").name,
                     "layer": layer,
                     "device": str(device)},
        "before": before, "runs": runs, "methods": methods_stats, "paired": pairs,
        "paste": paste_record(retest, before_paste, runs, methods),
        "verdict": (verdict(before, methods_stats, pairs) if methods else []) + _caveat(row),
        "measures": "gap: share of other-class test images called the concept's class with the artefact pasted "
                    "minus without; flip_rate: of those not called it without, the share called it with; "
                    "attacked_accuracy: accuracy with the artefact pasted onto every other-class test image; "
                    "cam_share: share of the class's Grad-CAM mass (upsampled) on the mask in the pasted images",
        "seconds": round(time.perf_counter() - start_time, 3),
    }
    _write(_dest(out, cfg), "revision" if methods else "measure", record)
    print(format_table(record))
    return record


def _run_all(model: torch.nn.Module, methods: list[str], seeds: list[int], train_set: Any, artefact: Artefact,
             carriers: np.ndarray, train_labels: np.ndarray, sample_index: np.ndarray, analysed_labels: np.ndarray,
             schedule: Schedule, evaluate: Any, retest: Retest, dest: Path, progress: bool) -> list[dict[str, Any]]:
    """Every method and seed from the start weights; each revised model saved, measured and paste-tested."""
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    counts = per_class_counts(carriers, train_labels)
    runs = []
    for method in methods:
        for seed in seeds:
            model.load_state_dict(start)
            excluded = carriers if method == "exclude" else \
                random_exclusion(counts, sample_index, analysed_labels, seed) if method == "random-exclude" \
                else np.zeros(0, np.int64)
            trained = train_fixed(model, method, train_set, artefact, excluded, seed, schedule)
            runs.append({"method": method, "seed": seed, **evaluate(), **trained, "paste": retest(model)})
            _save(dest / "revision" / method / f"seed{seed}.pt", model, method, seed)
            if progress:
                print(f"{method} seed {seed}: gap {100 * runs[-1]['gap']:.1f} pts, clean accuracy "
                      f"{100 * runs[-1]['clean_accuracy']:.1f}%")
    model.load_state_dict(start)
    return runs


def _load_revised(model: torch.nn.Module, path: Path, trust: bool) -> None:
    """Load a revised model's weights (a file this study saved, or any state_dict of the same model)."""
    if not path.is_file():
        raise UserError(f"--after {path}: file not found; revised models lie in DEST/revision/METHOD/seedK.pt")
    state = unwrap(read_payload(path, trust), path)
    check_fits(model, state, path)
    model.load_state_dict(state)


def _caveat(row: dict[str, Any]) -> list[str]:
    """A note when the concept failed one of the reliance study's shortcut tests: it may be real class evidence."""
    failed = [name.replace("_", " ") for name, ok in (row.get("checks") or {}).items() if not ok]
    if not failed:
        return []
    return [f"note: concept {row['id']} failed the reliance test(s) {', '.join(failed)}; it may be real class "
            "evidence rather than an artefact, and revising it teaches the model to ignore that evidence."]


def _annotated(path: str, size: tuple[int, int]) -> np.ndarray:
    """The user's artefact mask: a boolean .npy of the images' size."""
    try:
        mask = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"--artefact-mask {path}: cannot read it as a .npy array ({err})") from None
    if mask.shape != size or not mask.any():
        raise UserError(f"--artefact-mask {path}: expected a boolean {size[0]}x{size[1]} array with some pixels set, "
                        f"got shape {mask.shape}")
    return mask.astype(bool)


def _dest(out: Path, cfg: RevisionConfig) -> Path:
    return Path(cfg.dest) if cfg.dest is not None else out / FINETUNE_DIR


def _save(path: Path, model: torch.nn.Module, method: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "method": method,
                "seed": seed}, buffer)
    write_bytes(path, buffer.getvalue())


def _write(dest: Path, key: str, record: dict[str, Any]) -> None:
    """``key`` in ``dest/finetune.json``, the file's other keys (a curation study's, a revision's) kept."""
    path = dest / FINETUNE
    with locked(dest):
        existing = read_json(path, "i2x finetune") if path.is_file() else {}
        write_json(path, {**existing, key: record}, indent=2)
