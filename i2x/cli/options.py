"""argparse options generated from config dataclasses: one option per field made with
:func:`i2x.settings.option`, its type from ``parse`` or the annotation, its help with the default appended."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Iterable

from i2x.errors import UserError
from i2x.settings import flag_of, name_list, number, number_list, shown, whole, whole_list

#: Parse function per plain annotation (after ``| None`` is dropped).
_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: whole, float: number, tuple[int, ...]: whole_list, tuple[float, ...]: number_list,
    tuple[str, ...]: name_list,
}


#: Metavar per plain annotation when the field names none.
_METAVARS: dict[Any, str] = {int: "N", float: "X"}


def cli_fields(config: type) -> list[dataclasses.Field]:
    """The fields of ``config`` that are CLI options."""
    return [f for f in dataclasses.fields(config) if f.metadata.get("cli", True)]


def _plain(hint: Any) -> Any:
    """``int | None`` -> ``int``; other unions stay as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _typed(flag: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` whose ValueError becomes a one-line UserError naming the flag and the text typed."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise UserError(f"{flag} {text}: {exc}") from None

    convert.__name__ = parse.__name__
    return convert


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None if field.default is dataclasses.MISSING else field.default


def argument(field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """``add_argument`` keywords for one field: dest, help with its default, type or store_true, metavar."""
    meta, default = field.metadata, _default(field)
    hint = _plain(hint)
    help_text = meta.get("help") or ""
    if hint is bool:
        return {"dest": field.name, "action": "store_true", "default": bool(default), "help": help_text}
    if default is not None:
        help_text = f"{help_text} (default {shown(default)})"
    kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": help_text}
    parse = meta.get("parse") or _PARSERS.get(hint)
    if parse is not None:
        kwargs["type"] = _typed(flag_of(field), parse)
    choices = meta.get("choices")
    metavar = meta.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices else _METAVARS.get(hint))
    if metavar:
        kwargs["metavar"] = metavar
    return kwargs


def add_options(parser: argparse.ArgumentParser, config: type, title: str | None = None,
                only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> None:
    """Add the CLI fields of ``config`` (all, or ``only`` these, less ``skip``) in field order, in a group
    titled ``title``. A flag the parser already has is shared, not added twice: both configs read its value."""
    hints = typing.get_type_hints(config)
    have = {s for action in parser._actions for s in action.option_strings}
    chosen = [f for f in cli_fields(config)
              if (only is None or f.name in only) and f.name not in skip and flag_of(f) not in have]
    group = parser.add_argument_group(title) if title and chosen else parser
    for f in chosen:
        group.add_argument(flag_of(f), **argument(f, hints[f.name]))


def config_from(args: argparse.Namespace, config: type, **given: Any) -> Any:
    """An instance of ``config`` from the parsed options its CLI fields added (``given`` adds the others)."""
    values = {f.name: getattr(args, f.name) for f in cli_fields(config) if hasattr(args, f.name)}
    return config(**{**values, **given})
