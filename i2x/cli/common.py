"""What the ``i2x`` commands share: the subcommand factory, the trust options, the analysis-directory
argument and the run options grouped for ``--help``."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from i2x.cli.options import add_options, config_from
from i2x.stages.config import RunConfig
from i2x.stages.context import ModelAccess

Subparsers = Any  # argparse's private _SubParsersAction

#: RunConfig fields by option group, in the order ``--help`` lists them; the rest form "extraction".
MODEL = ("model", "num_classes")
DATA = ("data", "input_size", "channels", "mean", "std")
CHECKPOINTS = ("every", "first", "last", "names", "order", "keep_duplicates", "trust_checkpoints")


def command(sub: Subparsers, name: str, func: Callable[[argparse.Namespace], None],
            help_text: str) -> argparse.ArgumentParser:
    """A subcommand that runs ``func`` with the parsed options."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=func)
    return p


def add_trust_options(p: argparse.ArgumentParser, checkpoints: bool = True) -> None:
    """Trust options of the commands whose API takes them as arguments (an analysis folder is untrusted input):
    :class:`~i2x.stages.context.ModelAccess`'s fields, so the help reads the same everywhere."""
    add_options(p, ModelAccess, "trust", only=("trust_checkpoints", "model", "trust_analysis") if checkpoints
                else ("trust_analysis",))


def analysis_dir(p: argparse.ArgumentParser, after: str) -> None:
    p.add_argument("dir", metavar="DIR", help=f"analysis directory (after {after})")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The RunConfig options by group: model, data, checkpoints, extraction."""
    add_options(p, RunConfig, "model", only=MODEL)
    add_options(p, RunConfig, "data", only=DATA)
    add_options(p, RunConfig, "checkpoints", only=CHECKPOINTS)
    add_options(p, RunConfig, "extraction", skip=MODEL + DATA + CHECKPOINTS)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store made with other settings")


def run_config(args: argparse.Namespace) -> RunConfig:
    return config_from(args, RunConfig, checkpoints=args.ckpt_dir)
