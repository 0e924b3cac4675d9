"""Degenerate results are named, not averaged: empty or full evidence masks, statistics over one seed, a curated set
that removes most of one class (and its random control runs by default)."""

from __future__ import annotations

import numpy as np

from i2x.metrics.paired import paired_difference
from i2x.stages.evidence.study import degenerate_masks, masks_line
from i2x.stages.finetune.config import DEFAULT_STRATEGIES, FinetuneConfig
from i2x.stages.finetune.curation import Curation, print_curation
from i2x.stages.finetune.results import FinetuneResult, format_table, verdict


def test_empty_and_full_masks_are_named_and_left_out_of_the_mean():
    """7 of 8 masks empty: the old line read "decision kept 100%, mean area 0.028"."""
    area = np.array([0, 0, 0, 0, 0, 0, 0, 0.224], dtype=np.float32)
    empty, full = degenerate_masks(area)
    assert empty.sum() == 7 and full.sum() == 0
    c = {"n": 8, "kept": 1.0, "empty": 7, "full": 0, "area": {"mean": float(area.mean())},
         "area_informative": {"mean": 0.224}}
    line = masks_line(c)
    assert "7 of 8 empty (the fill alone keeps the decision" in line
    assert "mean area 0.224 over the other 1" in line and "0.028" not in line
    all_full = masks_line({"n": 2, "kept": 1.0, "empty": 0, "full": 2, "area": {"mean": 1.0}, "area_informative": None})
    assert "2 of 2 full" in all_full and "no mask between empty and full" in all_full


def _result(values: list[float]) -> FinetuneResult:
    stat = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "values": values}
    d = {"accuracy": paired_difference([0.01] * len(values)), "confusions": {"2<->7": paired_difference(
        [-1.0] * len(values))}}
    return FinetuneResult(dest=None, settings={"seeds": list(range(len(values))), "test_size": 100},
                          class_names=[str(i) for i in range(10)], pairs=[(2, 7)],
                          excluded={"count": 3, "train_size": 100},
                          start={"accuracy": 0.9, "confusions": {"2<->7": {"total": 4}}}, runs=[],
                          strategies={s: {"accuracy": stat, "confusions": {"2<->7": stat}}
                                      for s in ("full-full", "curated-full")},
                          paired={"curated-full minus full-full": d})


def test_one_seed_shows_no_interval():
    table = format_table(_result([0.91]))
    assert "± 0.00" not in table and "1 seed: no interval" in table
    assert "[-1.00, -1.00]" not in table  # a bootstrap over one value is no interval
    assert "cannot be judged against full -> full" in verdict(_result([0.91]))[0]
    assert "± " in format_table(_result([0.91, 0.93]))


def test_a_curation_that_removes_most_of_a_class_says_so_and_the_random_control_runs(capsys):
    curation = Curation(ids=np.arange(1022), source="rule", pairs={}, per_class={"normal": 1012, "pneumonia": 10},
                        n_train=4708, class_sizes={"normal": 1214, "pneumonia": 3494})
    print_curation(curation, ["normal", "pneumonia"], 0.1)
    out = capsys.readouterr().out
    assert "class normal: 1012 of 1214 (83%)" in out and "class pneumonia: 10 of 3494 (0%)" in out
    assert "removes most of class normal (83%)" in out and "random -> full" in out
    assert "random-full" in DEFAULT_STRATEGIES and "random-full" in FinetuneConfig().strategies
