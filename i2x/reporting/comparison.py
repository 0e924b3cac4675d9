"""The cross-run drift page: a self-contained HTML file from the result of :func:`i2x.stages.drift.compare_models`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from i2x.reporting.charts import ChartSet
from i2x.reporting.page import render_page
from i2x.reporting.sections.drift_runs import drift_comparison_sections
from i2x.version import __version__


def write_drift_comparison(result: dict[str, Any], path: str | Path, json_path: str | Path | None = None) -> Path:
    """Write the comparison page (runs x methods table, slope chart of the rankings, reversals) to ``path``;
    ``json_path`` (the comparison's JSON) is linked from the page."""
    charts = ChartSet()
    sections = drift_comparison_sections(result, charts)
    names = ", ".join(result["names"])
    subtitle = (f"{len(result['names'])} runs, {len(result['methods'])} CAM methods, "
                f"{result['samples']['n_common']} shared samples.")
    footer = f"i2x {__version__} · self-contained: opens offline, loads nothing from the network."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(f"Drift across runs: {names}", subtitle, sections, charts.specs,
                                [(Path(json_path).name, "the comparison JSON")] if json_path else [], footer),
                    encoding="utf-8")
    return path
