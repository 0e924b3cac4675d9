"""Build ``DIR/report.html`` (self-contained) and ``DIR/report/*.png`` from an analysis directory."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from i2x.version import __version__
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import render_page
from i2x.reporting.sections import SECTIONS

REPORT_NAME = "report.html"
PNG_DIR = "report"


def build_report(out_dir: str | Path, progress: bool = True, pngs: bool = True) -> Path:
    """Write the structured-explanation report of ``out_dir`` (store + summary.json) and return its path.

    Sections are the builders of :data:`i2x.report.sections.SECTIONS`; one that returns None is
    skipped. With ``pngs`` the main charts are also exported as PNG files to ``out_dir/report/``.
    """
    start = time.perf_counter()
    r = ReportInputs.open(out_dir)
    out = Path(out_dir)
    builders = tqdm(SECTIONS, desc="report", disable=not progress)
    sections = [section for section in (build(r) for build in builders) if section is not None]
    s = r.summary
    title = f"{s['model']} on {Path(s['data']).name if '/' in s['data'] else s['data']}"
    subtitle = (f"How the reasoning formed over {len(r.checkpoints)} checkpoints: {s['method']} at layer {s['layer']}, "
                f"{s['k']} prototypes, {s['n_samples']} samples of the {s['split']} split.")
    exported = r.charts.export_pngs(out / PNG_DIR) if pngs else []
    links = [("summary.json", "summary.json")] + [(f"{PNG_DIR}/{p.name}", p.name) for p in exported]
    footer = (f"i2x {__version__} · store {r.store.path} · built in {time.perf_counter() - start:.1f} s · "
              "self-contained: opens offline, loads nothing from the network.")
    path = out / REPORT_NAME
    path.write_text(render_page(title, subtitle, sections, r.charts.specs, links, footer), encoding="utf-8")
    return path
