"""Build ``DIR/report.html`` (self-contained) and ``DIR/report/*.png`` from an analysis directory."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from i2x.errors import UserError
from i2x.io.location import RemotePath, as_path
from i2x.io.lock import locked
from i2x.io.store import Store
from i2x.io.workdir import REPORT, REPORT_ASSETS, refuse_symlink, replace_dir, write_text
from i2x.version import __version__
from i2x.reporting.freshness import ANALYSIS_RUN, record, summary_part
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, render_page, scrub_paths, shown_path
from i2x.reporting.sections import SECTIONS, SectionBuilder
from i2x.reporting.segmentation import build_segmentation_report

log = logging.getLogger(__name__)


def build_report(out_dir: str | Path, progress: bool = True, pngs: bool = True, trust_analysis: bool = False) -> Path:
    """Write the structured-explanation report of ``out_dir`` (store + summary.json) and return its path.

    Sections are the builders of :data:`i2x.reporting.sections.SECTIONS`; one that returns None is
    skipped, one whose input cannot be read (a study JSON cut short or edited) is shown as unavailable
    with the reason. With ``pngs`` the main charts are also exported as PNG files to ``out_dir/report/``.
    The page records the files each section read, so a later change marks it out of date
    (:mod:`i2x.reporting.freshness`). The lock is held throughout (a running ``analyze`` makes this a clear error, not a half-read store);
    the page and the PNG folder are written beside the old ones and swapped in at the end.
    ``trust_analysis`` lets the pictures come from a data spec that imports a Python file.
    """
    start = time.perf_counter()
    out = as_path(out_dir)
    for name in (REPORT, REPORT_ASSETS):
        refuse_symlink(out / name)
    with locked(out):
        store = Store.open(out)
        if store.segmentation:  # no prototype analysis: its own two sections
            return build_segmentation_report(store, out)
        r = ReportInputs.open(out, trust_analysis=trust_analysis)
        sections, reads = [], {}
        for builder in tqdm(SECTIONS, desc="report", disable=not progress):
            r.asked.clear()
            r.summary.read.clear()
            section = _build(builder, r)
            if section is not None:
                sections.append(section)
                keys = sorted(r.summary.read | {ANALYSIS_RUN})  # every section shows the store of that analysis run
                reads[section.id] = [summary_part(key) for key in keys] + r.asked
        s = r.summary
        title = f"{shown_path(s['model'], out)} on {shown_path(s['data'], out)}"
        subtitle = (f"How the reasoning formed over {len(r.checkpoints)} checkpoints: {s['method']} at layer "
                    f"{s['layer']}, {s['k']} prototypes, {s['n_samples']} samples of the {s['split']} split.")
        exported = _export_pngs(r, out) if pngs else []
        links = [("summary.json", "summary.json")] + [(f"{REPORT_ASSETS}/{name}", name) for name in exported]
        footer = (f"i2x {__version__} · store {shown_path(r.store.path, out)} · built in {time.perf_counter() - start:.1f} s · "
                  "self-contained: opens offline, loads nothing from the network.")
        return write_text(out / REPORT, render_page(title, subtitle, sections, r.charts.specs, links, footer,
                                                    inputs=record(out, reads)))


def _build(builder: SectionBuilder, r: ReportInputs) -> Section | None:
    """One section, or, when its input cannot be read or lacks what it needs, a note saying so."""
    try:
        return builder(r)
    except (UserError, KeyError, TypeError, ValueError, IndexError) as exc:
        name = getattr(builder, "__name__", "section").removesuffix("_section")
        reason = scrub_paths(exc, r.out_dir) if isinstance(exc, UserError) else f"its input is incomplete ({type(exc).__name__}: {exc})"
        log.warning("report section %s unavailable: %s", name, reason)
        return Section(name, f"{name.replace('_', ' ').capitalize()}: unavailable", "This section could not be built.",
                       "", [reason])


def _export_pngs(r: ReportInputs, out: Path | RemotePath) -> list[str]:
    """Export the charts into a fresh folder beside ``DIR/report`` (or, for a ``DIR`` on object storage, a local
    temporary one) and swap it in whole; returns the file names."""
    local = Path(tempfile.mkdtemp(prefix="i2x-report-")) if isinstance(out, RemotePath) else out
    staged = local / f".{REPORT_ASSETS}.{os.getpid()}.new"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        previous = None if isinstance(out, RemotePath) else out / REPORT_ASSETS
        names = [p.name for p in r.charts.export_pngs(staged, previous=previous)]
        replace_dir(staged, out / REPORT_ASSETS)
    finally:
        shutil.rmtree(staged if local is out else local, ignore_errors=True)
    return names
