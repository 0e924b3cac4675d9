"""The fine-tuning results: per strategy mean ± std over seeds, paired differences against full -> full,
the paper-shaped table and the verdict line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from i2x.metrics.paired import paired_difference
from i2x.stages.finetune.curation import Pair, pair_label


#: a paired difference counts as a win or a loss in the verdict only below this Wilcoxon p
VERDICT_LEVEL = 0.05
#: rows that ``curated-full`` is also compared with, seed by seed, when they ran
CURATED_RIVALS = ("random-full", "cartography-full")
#: What a statistic over a single seed shows instead of a spread or an interval.
ONE_SEED = "1 seed: no interval"
BASELINE = "full-full"


@dataclass
class FinetuneResult:
    """Everything ``finetune`` wrote to ``dest/finetune.json``, plus where it lies."""

    dest: Path
    settings: dict[str, Any]
    class_names: list[str]
    pairs: list[Pair]
    excluded: dict[str, Any]
    start: dict[str, Any]
    runs: list[dict[str, Any]]
    strategies: dict[str, dict[str, Any]]
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``finetune.json``."""
        return {
            "settings": self.settings,
            "class_names": self.class_names,
            "pairs": [{"classes": list(p), "label": pair_label(p, self.class_names)} for p in self.pairs],
            "excluded": self.excluded,
            "start": self.start,
            "runs": self.runs,
            "strategies": self.strategies,
            "paired_differences": self.paired,
            "verdict": verdict(self),
            "seconds": round(self.seconds, 3),
        }


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "values": v.tolist()}


def per_strategy(runs: list[dict[str, Any]], strategies: list[str], pairs: list[Pair],
                  names: list[str]) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds of accuracy and each pair's total confusions, per strategy."""
    out = {}
    for s in strategies:
        mine = [r for r in runs if r["strategy"] == s]
        out[s] = {"accuracy": _stats([r["accuracy"] for r in mine]),
                  "confusions": {pair_label(p, names): _stats([r["confusions"][pair_label(p, names)]["total"]
                                                               for r in mine]) for p in pairs}}
    return out


def paired_differences(runs: list[dict[str, Any]], strategies: list[str], pairs: list[Pair], names: list[str]) -> dict[str, Any]:
    """Per seed, each strategy minus full-full (same seeds), and curated-full minus each control: accuracy and
    confusion differences with mean ± std, a bootstrap interval and Wilcoxon / sign-test p-values."""
    comparisons = [(s, BASELINE) for s in strategies if s != BASELINE and BASELINE in strategies]
    if "curated-full" in strategies:
        comparisons += [("curated-full", rival) for rival in CURATED_RIVALS if rival in strategies]
    by = {(r["strategy"], r["seed"]): r for r in runs}
    out = {}
    for s, base in comparisons:
        seeds = [seed for (strategy, seed) in by if strategy == s and (base, seed) in by]
        diff: dict[str, Any] = {
            "seeds": seeds,
            "accuracy": paired_difference([by[s, k]["accuracy"] - by[base, k]["accuracy"] for k in seeds])}
        diff["confusions"] = {
            pair_label(p, names): paired_difference([by[s, k]["confusions"][pair_label(p, names)]["total"]
                                                     - by[base, k]["confusions"][pair_label(p, names)]["total"]
                                                     for k in seeds])
            for p in pairs
        }
        out[f"{s} minus {base}"] = diff
    return out


def format_table(result: FinetuneResult) -> str:
    """The paper's table, one row per strategy: accuracy % and each pair's confusions as mean ± std over seeds,
    then the paired difference to full -> full (mean [95% bootstrap interval], Wilcoxon p); then curated -> full
    against the controls, and the verdict."""
    labels = [pair_label(p, result.class_names) for p in result.pairs]
    header = ["strategy", "accuracy %"] + [f"{label} confusions" for label in labels]
    header += [f"Δ {label} vs full->full" for label in labels] + ["Δ accuracy pp vs full->full"]
    blank = [""] * (len(labels) + 1)
    rows = [["final checkpoint", f"{100 * result.start['accuracy']:.2f}"]
            + [str(result.start["confusions"][label]["total"]) for label in labels] + blank]
    for s, st in result.strategies.items():
        d = result.paired.get(f"{s} minus {BASELINE}")
        paired = ([_diff(d["confusions"][label], 1) for label in labels] + [_diff(d["accuracy"], 100)]) if d else blank
        rows.append([_row_name(s), _pm(st["accuracy"], 100)] + [_pm(st["confusions"][label], 1) for label in labels]
                    + paired)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for rival in CURATED_RIVALS:
        d = result.paired.get(f"curated-full minus {rival}")
        if d:
            lines.append(f"curated -> full minus {_row_name(rival)}: "
                         + "; ".join(f"{label} {_diff(d['confusions'][label], 1)}" for label in labels)
                         + f"; accuracy pp {_diff(d['accuracy'], 100)}")
    n_seeds = len(result.settings["seeds"])
    lines.append(f"{n_seeds} seed(s) per strategy, test split of {result.settings['test_size']} samples; "
                 f"± is the sample std over seeds; Δ columns are per-seed paired differences: mean [95% bootstrap "
                 f"interval over seeds] and the Wilcoxon signed-rank p (accuracy in percentage points). Excluded "
                 f"{result.excluded['count']} of {result.excluded['train_size']} training samples.")
    lines.extend(verdict(result))
    return "\n".join(lines)


def verdict(result: FinetuneResult) -> list[str]:
    """One sentence per pair: did curated -> full beat full -> full and the controls? "beat" needs both the
    bootstrap interval of the confusion difference below 0 and Wilcoxon p < 0.05 (with 5 seeds the smallest
    two-sided p is 1/16, so 5 seeds can never say "beat")."""
    out = []
    for label in (pair_label(p, result.class_names) for p in result.pairs):
        parts = []
        for base in (BASELINE,) + CURATED_RIVALS:
            d = result.paired.get(f"curated-full minus {base}")
            if not d:
                continue
            c = d["confusions"][label]
            lo, hi = c["ci"]
            if c["mean"] is None or lo is None:
                continue
            if c["n"] < 2:
                parts.append(f"cannot be judged against {_row_name(base)} ({c['mean']:+.2f} confusions; "
                             f"{ONE_SEED})")
                continue
            significant = c["wilcoxon_p"] is not None and c["wilcoxon_p"] < VERDICT_LEVEL
            word = "beat" if hi < 0 and significant else "did worse than" if lo > 0 and significant \
                else "did not clearly beat"
            parts.append(f"{word} {_row_name(base)} ({c['mean']:+.2f} confusions, 95% CI [{lo:+.2f}, {hi:+.2f}], "
                         f"Wilcoxon p={_p(c['wilcoxon_p'])})")
        if parts:
            out.append(f"verdict {label}: curated -> full " + "; ".join(parts) + ".")
    return out


def _row_name(strategy: str) -> str:
    """``curated -> full``, or ``curated (stage 1 only)`` for a one-stage strategy."""
    return strategy.replace("-", " -> ") if "-" in strategy else f"{strategy} (stage 1 only)"


def _diff(stat: dict[str, Any], scale: float) -> str:
    lo, hi = stat["ci"]
    if stat["mean"] is None or lo is None:
        return "n/a"
    if stat["n"] < 2:
        return f"{scale * stat['mean']:+.2f} ({ONE_SEED})"
    return f"{scale * stat['mean']:+.2f} [{scale * lo:+.2f}, {scale * hi:+.2f}] p={_p(stat['wilcoxon_p'])}"


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def _pm(stat: dict[str, Any], scale: float) -> str:
    if stat["std"] is None:
        return f"{scale * stat['mean']:.2f} ({ONE_SEED})"
    return f"{scale * stat['mean']:.2f} ± {scale * stat['std']:.2f}"
