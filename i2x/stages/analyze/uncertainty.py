"""The one account of the uncertain prototypes that the CLI, summary.json, the report and the compare page all give.

Two rules find them (:mod:`i2x.analysis.significance`): the flip rule over the noise floor *flags*; the ridge
intervals plus the false discovery rate make one *significant*. The null runs count both rules on shuffled data,
so each observed count stands beside its own count by chance. A significant prototype is a flagged one unless its
β stays below the noise floor; the sentence says how many of each, so the counts cannot read as contradicting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class UncertaintyCounts:
    """The counts every place shows: flagged and significant, each against chance (mean, sd; None where unknown)."""

    k: int
    flagged: int
    significant: int
    significant_flagged: int  # significant and flagged
    significant_below_floor: int  # significant, found by the intervals only
    tested: bool  # significance was tested (summaries from before it have no ``uncertainty``)
    null_runs: int
    chance_flagged: tuple[float | None, float | None]
    chance_significant: tuple[float | None, float | None]


def uncertainty_counts(uncertain: list[dict[str, Any]], c: dict[str, Any] | None, k: int) -> UncertaintyCounts:
    """Count from summary.json's ``uncertain`` entries (what the chips show) and ``uncertainty`` (the null runs)."""
    flagged = [u for u in uncertain if not u.get("below_noise_floor")]
    significant = [u for u in uncertain if u.get("significant")]
    below = sum(bool(u.get("below_noise_floor")) for u in significant)

    def chance(key: str) -> tuple[float | None, float | None]:
        e = (c or {}).get(key) or {}
        return e.get("mean"), e.get("sd")

    return UncertaintyCounts(k, len(flagged), len(significant), len(significant) - below, below, c is not None,
                             int((c or {}).get("null_runs") or 0), chance("expected_flagged"),
                             chance("expected_significant"))


def _chance(counts: UncertaintyCounts, mean_sd: tuple[float | None, float | None], verb: str) -> str:
    mean, sd = mean_sd
    if not counts.null_runs or mean is None:
        return "null model not run: --null-runs 0"
    spread = f" ± {sd:.2g}" if sd is not None else " (1 null run: no spread)"
    return f"chance alone {verb} {mean:.3g}{spread}"


def uncertainty_sentence(counts: UncertaintyCounts) -> str:
    """``3 of 32 prototypes flagged (chance alone flags 9.2 ± 1.8); 1 significant (chance alone makes 0.1 ± 0.3
    significant), flagged too``: the same words in every place."""
    head = f"{counts.flagged} of {counts.k} prototypes flagged"
    if not counts.tested:
        return f"{head} (significance not tested)"
    head += f" ({_chance(counts, counts.chance_flagged, 'flags')})"
    sig = f"{counts.significant} significant ({_chance(counts, counts.chance_significant, 'makes')} significant)"
    if counts.significant:
        parts = [f"{counts.significant_flagged} of them flagged"] if counts.significant_flagged else []
        if counts.significant_below_floor:
            parts.append(f"{counts.significant_below_floor} below the noise floor (found by the intervals only)")
        sig += ": " + " and ".join(parts)
    return f"{head}; {sig}"


def summary_sentence(summary: dict[str, Any]) -> str:
    """:func:`uncertainty_sentence` of a summary.json."""
    return uncertainty_sentence(uncertainty_counts(summary.get("uncertain", []), summary.get("uncertainty"),
                                                   len(summary["prototypes"])))
