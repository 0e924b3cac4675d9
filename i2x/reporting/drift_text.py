"""The drift studies' results as plain text: the cross-run table and rankings the CLI prints, and the
labels (Kendall tau, reversal) the report shares with it."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, interval: list | None = None) -> str:
    """``0.555 [0.530, 0.580]``, or ``not defined`` for a missing value."""
    if value is None:
        return "not defined"
    if interval and interval[0] is not None:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{value:.3f}"


def format_tau(comparison: dict[str, Any]) -> str:
    """Kendall's tau of a method comparison as text: the value (and interval), or why it is not defined."""
    if comparison["kendall_tau"] is None:
        return f"not defined ({comparison['undefined'] or 'no value'})"
    interval = comparison.get("kendall_tau_interval")
    text = f"{comparison['kendall_tau']:.2f}"
    return text + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval and interval[0] is not None else "")


def reversal_label(reversal: dict[str, Any]) -> str:
    """``within noise`` / ``clear`` / ``noise not known`` for one reversed pair of :func:`compare_models`."""
    if reversal["within_noise"] is None:
        return "noise not known"
    return "within noise" if reversal["within_noise"] else "clear"


def _order(ranking: list[str], ranks: dict[str, int]) -> str:
    """``a > b = c``: items from most to least stable, ``=`` between ties; ``none`` when nothing is ranked."""
    if not ranking:
        return "none"
    text = ranking[0]
    for before, item in zip(ranking[:-1], ranking[1:]):
        text += (" = " if ranks[item] == ranks[before] else " > ") + item
    return text


def format_comparison(result: dict[str, Any]) -> str:
    """The cross-run comparison as plain text: runs x methods table of the leading metric, rankings, tau, reversals."""
    names, methods, metric = result["names"], result["methods"], result["headline"]
    s = result["samples"]
    level = f"{result['bootstrap']['confidence']:.0%}"
    lines = [f"{s['n_common']} samples shared by all runs (same sample index and label; "
             f"{s['n_label_mismatch']} with different labels left out); counted per run: "
             + ("its own true positives at both checkpoints" if s["rule"] == "each"
                else f"the {s.get('n_correct_in_all', 0)} every run gets right at both checkpoints")]
    entry = result["stability"][metric]
    lines.append(f"mean {metric} from -> to, [{level} bootstrap interval over samples], "
                 f"{'higher' if entry['higher_is_stable'] else 'lower'} is stable:")
    width = max(len(n) for n in names + ["run"])
    lines.append(f"{'run':<{width}}  {'from -> to':<28} {'n':>5}  " + "  ".join(f"{m:<24}" for m in methods))
    for name in names:
        r = result["runs"][name]
        span = f"{r['from']['name']} -> {r['to']['name']}"
        cells = [_fmt(entry["scores"][m].get(name), entry["intervals"][m][name]) for m in methods]
        lines.append(f"{name:<{width}}  {span:<28} {r['n_correct_both']:>5}  " + "  ".join(f"{c:<24}" for c in cells))
        if r["undefined"]:
            lines.append(f"{'':<{width}}  not ranked: {r['undefined']}")
    for key in [metric] + [k for k in result["stability"] if k != metric]:
        e = result["stability"][key]
        lines.append(f"ranking by {key} ({'higher' if e['higher_is_stable'] else 'lower'} is stable):")
        for m in methods:
            lines.append(f"  {m:>10}: {_order(e['ranking'][m], e['ranks'][m])}")
        for c in e["reversals"]:
            first, second = c["methods"]
            text = [f"  {first} vs {second}: Kendall tau {format_tau(c)}"]
            for rev in c.get("reversals", []):
                a, b = rev["pair"]
                share = f", reversed in {rev['share_reversed']:.0%} of resamples" \
                    if rev["share_reversed"] is not None else ""
                text.append(f"    reversed: {a} > {b} under {first}, {b} > {a} under {second} "
                            f"({reversal_label(rev)}{share})")
            lines.extend(text)
    return "\n".join(lines)
