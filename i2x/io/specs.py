"""Registries of spec strings (``--data npz:PATH``, ``--model timm:NAME``): adding a kind is one loader
function plus one registration, and the help and error texts list what is registered.

A spec is ``NAME`` (an exact name such as ``digits``) or ``PREFIX:ARGUMENT`` (``npz:data.npz``). A
registration may instead claim specs by a predicate (``file.py:factory``) and is tried in order. A package above
this layer (or another distribution) adds kinds through an entry point of the registry's group (``i2x.data_specs``):
the module it names registers its kinds when imported, before the first lookup or help text.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from i2x.errors import UserError


@dataclass(frozen=True)
class SpecKind:
    """One kind of spec: how it is written, what it is, and the function that opens it."""

    usage: str                       # as shown to the user: "npz:PATH", "digits"
    summary: str                     # one phrase for the help text
    load: Callable[..., Any]         # called with the argument after the prefix (or the whole spec) first
    matches: Callable[[str], bool] | None = None  # claims a spec by shape instead of by its prefix

    @property
    def prefix(self) -> str:
        return self.usage.partition(":")[0] if ":" in self.usage else ""

    def argument(self, spec: str) -> str | None:
        """The spec's argument for this kind's loader, or None if the spec is not of this kind."""
        if self.matches is not None:
            return spec if self.matches(spec) else None
        if not self.prefix:
            return spec if spec == self.usage else None
        kind, _, arg = spec.partition(":")
        return arg if kind == self.prefix and arg else None


class SpecRegistry:
    """The kinds of one spec option (``--data`` or ``--model``), in the order they are tried."""

    def __init__(self, option: str, noun: str, plugins: str | None = None) -> None:
        self.option = option
        self.noun = noun
        self.plugins = plugins  # entry-point group whose modules register more kinds
        self._kinds: list[SpecKind] = []
        self._discovered = plugins is None

    @property
    def kinds(self) -> list[SpecKind]:
        """The registered kinds, those of the entry points included (imported once, on first use)."""
        if not self._discovered:
            self._discovered = True
            for point in entry_points(group=self.plugins):
                point.load()
        return self._kinds

    def register(self, usage: str, summary: str,
                 matches: Callable[[str], bool] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: open specs written as ``usage`` with the decorated function."""
        def add(load: Callable[..., Any]) -> Callable[..., Any]:
            self._kinds.append(SpecKind(usage, summary, load, matches))
            return load
        return add

    def usage(self) -> str:
        """``a, b:PATH or c:NAME``: every registered way of writing a spec, for help and error texts."""
        names = [k.usage for k in self.kinds]
        return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)

    def help(self) -> str:
        """One line per kind: its usage and what it opens."""
        return "; ".join(f"{k.usage}: {k.summary}" for k in self.kinds)

    def resolve(self, spec: str) -> tuple[SpecKind, str]:
        """The kind that opens ``spec`` and the argument to pass its loader; a UserError lists the kinds."""
        for kind in self.kinds:
            arg = kind.argument(spec)
            if arg is not None:
                return kind, arg
        raise UserError(f"{self.option} {spec}: unknown {self.noun} spec; use {self.usage()}")


def import_file(path: str | Path, option: str, spec: str, prefix: str) -> ModuleType:
    """Import a user's Python file named by a spec (``--model net.py:make``); a missing file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {spec}: file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"{prefix}{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except UserError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code: a syntax error, a raise, a recursion, sys.exit
        raise UserError(f"{option} {spec}: importing {path} failed: {failure(exc)}; fix the file") from None
    return module


def failure(exc: BaseException) -> str:
    """What a user's code did, in one line: its exception and the first line of its message."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    if isinstance(exc, SyntaxError):
        return f"SyntaxError at line {exc.lineno}: {exc.msg}"
    message = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}{': ' + message if message else ''}"
