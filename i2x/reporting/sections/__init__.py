"""The report's sections, one small builder each: ``builder(r: ReportInputs) -> Section | None``.

:data:`SECTIONS` lists them in page order. To add a section (e.g. faithfulness), write a builder
that reads its file with ``r.optional_json("faithfulness.json")``, returns None when that is
absent (the section is then skipped, or, wrapped in :func:`or_not_run`, said to be not run with the command that fills
it), adds charts with ``r.charts.add(name, chart)`` and escapes
every string with :func:`~i2x.reporting.page.esc` (or builds cells with :func:`~i2x.reporting.page.table`);
then append it to :data:`SECTIONS`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import Section, esc
from i2x.reporting.sections.benchmark import benchmark_section
from i2x.reporting.sections.common import SectionBuilder
from i2x.reporting.sections.dynamics import dynamics
from i2x.reporting.sections.evidence import evidence_section
from i2x.reporting.sections.film import film_strips
from i2x.reporting.sections.finetune import finetune_section
from i2x.reporting.sections.overview import overview
from i2x.reporting.sections.prototypes import prototypes
from i2x.reporting.sections.reliance import reliance_section
from i2x.reporting.sections.structure import class_structure
from i2x.reporting.sections.drift import drift_section
from i2x.reporting.sections.faithfulness import faithfulness_section
from i2x.reporting.sections.uncertain import uncertain
from i2x.reporting.sections.verdict import verdict_section


# ---- studies that were not run -----------------------------------------------------------------
@dataclass(frozen=True)
class Study:
    """A study's section as the page shows it before the study ran: what it answers and the command that fills it."""

    id: str
    title: str
    command: str
    question: str


STUDIES = {
    "reliance": Study("reliance", "Reliance", "reliance", "Does the final model depend on a shortcut: a prototype tied "
                      "to one class in fixed places, tested by deleting and transplanting it?"),
    "faithfulness": Study("faithfulness", "Faithfulness", "faithfulness", "Do the CAMs point at what the model uses: "
                          "does deleting the pixels they rank first lower the confidence faster than a random order?"),
    "drift": Study("drift", "Semantic drift", "drift", "How far do the maps move between two checkpoints or training "
                   "phases, per class and per method?"),
    "evidence": Study("evidence", "Minimal evidence", "evidence", "What is the smallest part of an image that keeps "
                      "the model's decision, and does the CAM cover it?"),
    "benchmark": Study("benchmark", "Attribution benchmark", "benchmark", "Which CAM method is faithful, robust and "
                       "sane at each checkpoint?"),
    "finetune": Study("finetune", "Fine-tuning", "finetune", "Does fine-tuning without the images of the uncertain "
                      "prototypes (or of a shortcut concept) reduce the confusions and the shortcut gap?"),
}


def or_not_run(builder: SectionBuilder, study: Study) -> SectionBuilder:
    """``builder``, but where it returns None (its study's file is absent) a section saying "not run" and the command
    that fills it, so a reader sees every study and what is missing."""

    @functools.wraps(builder)
    def build(r: ReportInputs) -> Section:
        section = builder(r)
        if section is not None:
            return section
        command = f"i2x {study.command} {r.shown_dir}"
        return Section(study.id, f"{study.title}: not run", study.question,
                       f'<p><b>Not run.</b> Run <code>{esc(command)}</code> in the folder that holds the analysis '
                       f'directory, then rebuild this page with <code>{esc(f"i2x report {r.shown_dir}")}</code>.</p>')

    return build


SECTIONS: list[SectionBuilder] = [verdict_section, overview, or_not_run(reliance_section, STUDIES["reliance"]), prototypes,
                                  class_structure, dynamics, uncertain, film_strips,
                                  or_not_run(faithfulness_section, STUDIES["faithfulness"]),
                                  or_not_run(drift_section, STUDIES["drift"]),
                                  or_not_run(evidence_section, STUDIES["evidence"]),
                                  or_not_run(benchmark_section, STUDIES["benchmark"]),
                                  or_not_run(finetune_section, STUDIES["finetune"])]
