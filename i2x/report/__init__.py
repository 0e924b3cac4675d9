"""The structured-explanation report: ``build_report(DIR)`` writes ``DIR/report.html`` and ``DIR/report/*.png``.

Sections are small builders listed in :data:`SECTIONS` (see :mod:`i2x.report.sections` for how to add one).
"""

from .build import build_report
from .inputs import ReportInputs
from .page import Section
from .sections import SECTIONS

__all__ = ["build_report", "ReportInputs", "Section", "SECTIONS"]
