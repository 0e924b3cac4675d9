"""The ``i2x`` command line: options generated from the stages' config dataclasses
(:mod:`i2x.cli.options`), an add/cmd pair per command calling :mod:`i2x.api` (:mod:`i2x.cli.pipeline`,
:mod:`i2x.cli.studies`), listed in :mod:`i2x.cli.commands`.

User errors (:class:`i2x.errors.UserError`) print one line and exit with status 2; no traceback. Every command ends
by closing the object storage clients it opened (:func:`i2x.io.location.close_clients`), so the interpreter's exit
prints no "Unclosed client session".
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Sequence

from i2x.errors import UserError
from i2x.io.location import close_clients, storage_failure
from i2x.version import __version__

DESCRIPTION = """\
i2x explains how an image classifier's reasoning forms during training.

Point it at a directory of training checkpoints: it replays them, extracts CAMs
(GradCAM, GradCAM++, LayerCAM) and features into a Zarr store, finds prototypes,
maps prototype-intensity changes to confidence changes, and writes a report.

  i2x demo                                         everything, on data that ships with the install
  i2x run CKPT_DIR --model M --data D --out DIR    extract + analyze + report
  i2x finetune DIR                                 curated -> full fine-tuning from the analysis
"""


def top_level() -> argparse.ArgumentParser:
    """The ``i2x`` parser without subcommands: description, --version, --verbose."""
    parser = argparse.ArgumentParser(prog="i2x", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"i2x {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (chosen layer, ignored files)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The full ``i2x`` argument parser (every option has help text)."""
    from i2x.cli.commands import COMMANDS

    parser = top_level()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def _end_progress_bars() -> None:
    """Close any open progress bar, so an error message starts on its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _mark_report(args: argparse.Namespace) -> None:
    """After a command that wrote into one analysis directory (a study), mark what its report no longer shows."""
    dirs = getattr(args, "dirs", None) or [getattr(args, "dir", None)]
    if getattr(args, "command", None) in ("report", "compare") or len(dirs) != 1 or not isinstance(dirs[0], str):
        return
    from i2x import api

    try:
        stale = api.mark_report(dirs[0])
    except (OSError, UserError) as exc:  # the study itself succeeded: say so rather than fail it
        print(f"i2x: could not mark report.html as out of date: {exc}", file=sys.stderr)
        return
    if stale:
        print(f"report.html is out of date ({', '.join(stale)}); rebuild it with: i2x report {dirs[0]}")


_NEGATIVE_LIST = re.compile(r"^-\.?\d[^,]*(,[^,]*)+$")  # -1,2,3 or -.5,1


def _negative_lists(argv: list[str]) -> list[str]:
    """``--weights -1,2,3`` as ``--weights=-1,2,3``: argparse takes a value that starts with '-' and is not one
    number for an option, and said "expected one argument" instead of the option's range error."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_LIST.match(arg):
            out[-1] += "=" + arg
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``i2x`` console script."""
    args = None
    try:
        parser = build_parser()  # imports the stages (torch): inside the try, so Ctrl-C here is no traceback
        args = parser.parse_args(_negative_lists(list(sys.argv[1:] if argv is None else argv)))
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(message)s")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        args.func(args)
        _mark_report(args)
    except UserError as exc:
        _end_progress_bars()
        print(f"i2x: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # zarr's event loop still holds the interrupted writes: asyncio would log each as "Task was destroyed but it
        # is pending!" at exit; they are abandoned on purpose (the store marks a checkpoint done only when written)
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        _end_progress_bars()
        resumes = getattr(args, "command", None) in ("extract", "run", "demo", "finetune")  # they keep finished work
        print("i2x: interrupted; rerun the same command to " + ("resume" if resumes else "start this step over"),
              file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk or object storage failing: one line, as for a user error
        message = storage_failure(exc)
        if message is None:
            raise
        _end_progress_bars()
        print(f"i2x: error: {message}", file=sys.stderr)
        return 2
    finally:
        close_clients()
    return 0


__all__ = ["build_parser", "main"]
