"""The structured-explanation report: ``build_report(DIR)`` writes ``DIR/report.html`` and ``DIR/report/*.png``.

Sections are small builders listed in :data:`SECTIONS` (see :mod:`i2x.reporting.sections` for how to add one).
"""

from i2x.reporting.build import build_report
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section
from i2x.reporting.sections import SECTIONS

__all__ = ["build_report", "ReportInputs", "Section", "SECTIONS"]
