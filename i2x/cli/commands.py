"""The ``i2x`` subcommands, in the order ``i2x --help`` lists them: the pipeline (:mod:`i2x.cli.pipeline`) and
the studies on an analysis directory (:mod:`i2x.cli.studies`)."""

from __future__ import annotations

from i2x.cli.pipeline import (add_analyze, add_compare, add_demo, add_doctor, add_extract, add_launch, add_report,
                              add_run, add_train)
from i2x.cli.studies import add_benchmark, add_drift, add_evidence, add_faithfulness, add_finetune, add_reliance

#: Every subcommand, in the order ``i2x --help`` lists them.
COMMANDS = (add_demo, add_train, add_extract, add_analyze, add_report, add_compare, add_finetune, add_faithfulness,
            add_benchmark, add_drift, add_reliance, add_evidence, add_run, add_launch, add_doctor)
