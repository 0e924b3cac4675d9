"""The comparison pages: two analysis directories side by side (``i2x compare A B``), and the cross-run drift page
from the result of :func:`i2x.stages.drift.runs.compare_models`. Both are self-contained HTML files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from i2x.errors import UserError
from i2x.io.store import Store
from i2x.io.workdir import refuse_foreign_file, write_text
from i2x.reporting.charts import ChartSet
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import render_page, shown_path
from i2x.reporting.pairing import MATCH_RULES, Run, pair_runs
from i2x.reporting.sections.drift_runs import drift_comparison_sections
from i2x.reporting.sections.runs import matched, shared_samples, side_by_side, suspects
from i2x.settings import name_list, option, validate
from i2x.version import __version__


@dataclass
class CompareConfig:
    """Settings of ``i2x compare``."""

    out: str = option("compare.html", "the comparison page to write (an .html file; relative to the current directory)",
                      metavar="FILE")
    names: tuple[str, ...] | None = option(None, "a name for each run, A then B (default: the directories' names)",
                                           parse=name_list, metavar="A,B")
    match: str = option("overlap", "how prototypes are paired: overlap of the cells they occupy on the shared "
                                   "samples (any two models) or centroid (cosine of the centroids; only for "
                                   "runs whose features are comparable, e.g. one fine-tuned from the other)",
                        choices=MATCH_RULES)
    top: float = option(0.2, "top share of cells for the IoU of the two runs' maps", low=0, high=1,
                        low_open=True)
    allow_different_data: bool = option(False, "compare runs whose samples are not the same images (other --data or "
                                        "--split), matching samples by their index anyway")


def write_comparison(dir_a: str | Path, dir_b: str | Path, config: CompareConfig | None = None,
                     trust_analysis: bool = False, transfer: dict[str, Any] | None = None) -> Path:
    """Write the page that sets run ``dir_a`` (A) beside ``dir_b`` (B): verdicts, suspect concepts, prototypes
    paired by similarity and the shared samples; returns its path. ``transfer`` is B's paste result for A's suspect
    (:func:`i2x.stages.reliance.transfer.suspect_in_other_run`, which ``i2x compare`` runs: the page runs no model)."""
    cfg = config or CompareConfig()
    validate(cfg)
    start = time.perf_counter()
    out = Path(cfg.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {cfg.out}: name an .html file (e.g. {out.with_suffix('.html')})")
    refuse_foreign_file(out)
    names = list(cfg.names) if cfg.names else [Path(dir_a).resolve().name, Path(dir_b).resolve().name]
    if len(names) != 2:
        raise UserError(f"--names {','.join(names)}: give two names, A then B")
    regions = [str(d) for d in (dir_a, dir_b) if Store.open(d).segmentation]
    if regions:
        raise UserError(f"{', '.join(regions)}: a segmentation run; i2x compare sets two classifiers' prototypes side "
                        "by side, which segmentation runs have none of: open each one's report (i2x report DIR)")
    charts = ChartSet()
    a, b = (Run(letter, name, ReportInputs.open(d, trust_analysis=trust_analysis))
            for letter, name, d in (("A", names[0], dir_a), ("B", names[1], dir_b)))
    pair = pair_runs(a, b, cfg.match, cfg.top, cfg.allow_different_data, trust_analysis)
    sections = [side_by_side(pair, charts), suspects(pair, transfer), matched(pair), shared_samples(pair)]
    title = f"{names[0]} versus {names[1]}"
    subtitle = (f"A: {shown_path(a.r.summary['model'], a.r.out_dir)}, {len(a.r.checkpoints)} checkpoints; "
                f"B: {shown_path(b.r.summary['model'], b.r.out_dir)}, {len(b.r.checkpoints)} checkpoints; "
                f"{pair.rows_a.size} shared samples.")
    footer = (f"i2x {__version__} · built in {time.perf_counter() - start:.1f} s · self-contained: opens offline, "
              "loads nothing from the network.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, render_page(title, subtitle, sections, charts.specs, [], footer))


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
    write_text(path, render_page(f"Drift across runs: {names}", subtitle, sections, charts.specs,
                                 [(Path(json_path).name, "the comparison JSON")] if json_path else [], footer))
    return path
