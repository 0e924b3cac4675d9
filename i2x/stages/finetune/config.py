"""Settings and plan of the fine-tuning study: what the study, its runs and its results read; imports none of its siblings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from i2x.analysis.intensity import MIN_SHARE
from i2x.settings import device_option, name_list, option, whole, whole_list
from i2x.stages.context import ModelAccess
from i2x.stages.finetune.controls import CONTROLS

SET_NAMES = ("full", "curated") + CONTROLS


#: random -> full runs by default: a curated set that leaves out most of one class may win by rebalancing alone.
DEFAULT_STRATEGIES = ("full-full", "curated-curated", "curated-full", "random-full")


#: ``--study``: the paper's five rows (a single set name trains stage 1 only) and the two control rows.
STUDY_STRATEGIES = ("full-full", "curated-curated", "curated-full", "full", "curated", "random-full",
                    "cartography-full")


DEFAULT_SEEDS = 5


STUDY_SEEDS = 10


DEFAULT_LR = {"sgd": 1e-3, "adam": 1e-4}


def parse_pairs(text: str) -> str | list[tuple[str, str]]:
    """``--pairs``: ``top``, ``all`` or class pairs ``3,5;2,7`` (or ``3:5;2:7``)."""
    if text in ("top", "all"):
        return text
    pairs = [tuple(p.split(",")) for p in text.replace(":", ",").split(";") if p]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError("give 'top', 'all' or class pairs like 3,5;2,7 (or 3:5;2:7)")
    return pairs  # type: ignore[return-value]


def _check_pairs(pairs: str | Sequence[tuple[int | str, int | str]]) -> None:
    if isinstance(pairs, str) and pairs not in ("top", "all"):
        raise ValueError("give 'top', 'all' or class pairs such as 3,5;2,7")


@dataclass
class FinetuneConfig(ModelAccess):
    """Settings of curated -> full fine-tuning (recorded in ``finetune.json``)."""

    strategies: tuple[str, ...] = option(DEFAULT_STRATEGIES, "stage-1 -> stage-2 data X-Y, or X alone for stage 1 "
                                         "only, X and Y in full, curated, random, cartography (the last two leave out "
                                         "as many samples per class as curated, at random or the most ambiguous)",
                                         parse=name_list, metavar="A,B")
    seeds: int | tuple[int, ...] | None = option(None, f"runs per strategy, same seeds across strategies (default "
                                                 f"{DEFAULT_SEEDS}, {STUDY_SEEDS} with --study; the API also takes a "
                                                 "list of seeds)", parse=whole, metavar="N")
    study: bool = option(False, "run the seven-row study: " + ", ".join(STUDY_STRATEGIES) + " (replaces "
                         "--strategies)")
    epochs: tuple[int, int] = option((1, 1), "epochs of stage 1 and stage 2", parse=whole_list, low=0,
                                     metavar="E1,E2")
    lr: float | None = option(None, "learning rate (default 1e-3 for sgd, 1e-4 for adam)", low=0, low_open=True)
    optimizer: str = option("sgd", "optimizer (sgd with momentum 0.9)", choices=tuple(DEFAULT_LR))
    min_share: float = option(MIN_SHARE, "exclude a sample when the uncertain prototype covers at least this share of "
                              "its cells", low=0, low_open=True, high=1)
    pairs: str | list[tuple[int | str, int | str]] = option(
        "top", "which uncertain pairs to curate: top (those among the most confused pairs, else the highest-scoring "
        "one), all, or explicit class pairs by name or index", parse=parse_pairs, check=_check_pairs,
        metavar="top|all|A,B;C,D")
    exclude_file: str | None = option(None, "fine-tune with your own exclusion list instead (JSON list of training "
                                      "indices, or one per line)", flag="--exclude", metavar="FILE")
    all_uncertain: bool = option(False, "curate from every flagged uncertain prototype, not only the significant ones")
    concept: int | None = option(None, "curate a concept of the reliance study instead (a suspected shortcut): every "
                                 "analysed training sample where it covers at least --min-share of the cells",
                                 low=0, metavar="ID")
    dest: str | None = option(None, "output directory (default DIR/finetune)", metavar="DIR")
    batch_size: int = option(64, "batch size", low=1)
    device: str = device_option()


@dataclass
class Plan:
    """The checked run plan: strategies as (stage 1, stage 2) sets, seeds, epochs per stage, learning rate."""

    strategies: list[tuple[str, ...]]
    seeds: list[int]
    epochs: tuple[int, int]
    lr: float
