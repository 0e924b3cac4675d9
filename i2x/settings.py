"""One source per setting: config dataclass fields carry their own help text and CLI flag.

A stage's settings are a dataclass whose fields are made with :func:`option`; the CLI
(:mod:`i2x.cli`) builds its options from those fields, so a default, its help and its
validation are written once::

    @dataclass
    class DriftConfig:
        top: float = option(0.2, "top share of cells for IoU and concentration", low=0, high=1)

:func:`validate` checks every field's range and choices and names the option as the user typed it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from i2x.errors import UserError

_MISSING: Any = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, flag: str | None = None, metavar: str | None = None,
           choices: tuple[Any, ...] | None = None, parse: Callable[[str], Any] | None = None,
           low: float | None = None, high: float | None = None, low_open: bool = False,
           cli: bool = True, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its help text and CLI details.

    ``flag`` overrides the option name (default ``--field-name``); ``parse`` turns the typed text
    into the value (default: from the field's type); ``low``/``high`` bound numbers (``low_open``:
    strictly above ``low``); ``cli=False`` keeps the field out of the CLI (API only).
    """
    metadata = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "parse": parse,
                "low": low, "high": high, "low_open": low_open, "cli": cli}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> str:
    """The CLI option name of a field: ``--batch-size`` for ``batch_size`` unless the field says otherwise."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def validate(config: Any) -> None:
    """Check each field of a config dataclass against its ``low``/``high``/``choices``; a UserError names the flag."""
    for field in dataclasses.fields(config):
        meta, value = field.metadata, getattr(config, field.name)
        if value is None:
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if meta.get("choices") is not None and v not in meta["choices"]:
                raise UserError(f"{flag_of(field)} {v}: choose one of {', '.join(map(str, meta['choices']))}")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"{flag_of(field)} {v}: give a finite number")
            low, high = meta.get("low"), meta.get("high")
            if low is not None and (v <= low if meta.get("low_open") else v < low):
                raise UserError(f"{flag_of(field)} {v}: must be {'above' if meta.get('low_open') else 'at least'} {low}")
            if high is not None and v > high:
                raise UserError(f"{flag_of(field)} {v}: must be at most {high}")
