"""Settings of the revision study (``i2x finetune DIR --concept ID --fix METHOD``); imports none of its siblings.

Options it shares with :class:`i2x.stages.finetune.config.FinetuneConfig` (concept, seeds, lr, optimizer, min_share,
dest, batch_size, device) have the same names, defaults and meaning, so one ``i2x finetune`` parser serves both."""

from __future__ import annotations

from dataclasses import dataclass

from i2x.settings import device_option, option, whole
from i2x.stages.context import ModelAccess

#: the revisions (``--fix``; ``all`` runs every one), the controls every study runs, the default penalties
FIX_CHOICES = ("augment", "rrclarc", "rrr", "exclude", "all")
DEFAULT_SEEDS = 5
DEFAULT_PENALTY = {"rrr": 1000.0, "rrclarc": 100.0}
DEFAULT_LR = {"sgd": 1e-3, "adam": 1e-4}
#: a pixel belongs to a concept's mask when at least this share of its gallery footprints hold it
MASK_AGREEMENT = 0.25


@dataclass
class RevisionConfig(ModelAccess):
    """Settings of a revision (recorded under ``revision`` in ``finetune.json``)."""

    fix: str | None = option(None, "revise the final checkpoint against --concept's artefact and measure before and "
                             "after: augment (paste the artefact onto other classes' training images), rrclarc "
                             "(penalise the output's gradient along the concept's direction at the layer), rrr "
                             "(penalise input gradients on the artefact's mask), exclude (leave its samples out), or "
                             "all; random patches of the same shape, random exclusion of the same size and plain "
                             "fine-tuning always run as controls", choices=FIX_CHOICES)
    measure: bool = option(False, "only measure the final checkpoint against --concept's artefact (clean and "
                           "attacked accuracy, gap, flip rate, CAM share); no fine-tuning")
    after: str | None = option(None, "with --measure: measure this revised model (DEST/revision/METHOD/seedK.pt) "
                               "instead of the final checkpoint", metavar="FILE")
    concept: int | None = option(None, "the reliance concept to revise (default: reliance.json's lead)", low=0,
                                 metavar="ID")
    artefact_mask: str | None = option(None, "measure against this annotated artefact mask (.npy, boolean H x W) "
                                       "instead of the concept's mask (the fixes use it only where the concept has "
                                       "no mask)", metavar="FILE")
    seeds: int | tuple[int, ...] | None = option(None, f"runs per method, same seeds across methods (default "
                                                 f"{DEFAULT_SEEDS})", parse=whole, metavar="N")
    fix_epochs: int = option(3, "epochs of every revision and control run", low=1)
    lr: float | None = option(None, "learning rate (default 1e-3 for sgd, 1e-4 for adam)", low=0, low_open=True)
    optimizer: str = option("sgd", "optimizer (sgd with momentum 0.9)", choices=tuple(DEFAULT_LR))
    penalty: float | None = option(None, "weight of the rrr or rrclarc penalty (default "
                                   + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_PENALTY.items()) + ")", low=0)
    min_share: float = option(0.1, "a training sample carries the concept when it covers at least this share of its "
                              "cells", low=0, low_open=True, high=1)
    dest: str | None = option(None, "output directory (default DIR/finetune)", metavar="DIR")
    batch_size: int = option(64, "batch size", low=1)
    device: str = device_option()
