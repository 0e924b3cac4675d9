"""One source per setting: config dataclass fields carry their own help text and CLI flag.

A stage's settings are a dataclass whose fields are made with :func:`option`; the CLI
(:mod:`i2x.cli`) builds its options from those fields, so a default, its help and its
validation are written once::

    @dataclass
    class DriftConfig:
        top: float = option(0.2, "top share of cells for IoU and concentration", low=0, high=1)

:func:`validate` checks every field's range and choices and names the option as the user typed it.
The parse functions below turn typed text into values; they raise ValueError with a short reason.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

from i2x.errors import UserError

_MISSING: Any = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, flag: str | None = None, metavar: str | None = None,
           choices: tuple[Any, ...] | None = None, parse: Callable[[str], Any] | None = None,
           low: float | None = None, high: float | None = None, low_open: bool = False,
           check: Callable[[Any], None] | None = None,
           cli: bool = True, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its help text and CLI details.

    ``flag`` overrides the option name (default ``--field-name``); ``parse`` turns the typed text
    into the value (default: from the field's type); ``low``/``high`` bound numbers (``low_open``:
    strictly above ``low``); ``check`` raises ValueError(reason) for values the bounds cannot
    describe; ``cli=False`` keeps the field out of the CLI (API only).
    """
    metadata = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "parse": parse,
                "low": low, "high": high, "low_open": low_open, "check": check, "cli": cli}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> str:
    """The CLI option name of a field: ``--batch-size`` for ``batch_size`` unless the field says otherwise."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def shown(value: Any) -> str:
    """A value as the user would type it: tuples comma-separated."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def check_value(field: dataclasses.Field, value: Any) -> None:
    """Check one value of ``field`` against its choices, range and check; a UserError names the flag."""
    meta, flag = field.metadata, flag_of(field)
    if value is None:
        return
    if meta.get("check") is not None:
        try:
            meta["check"](value)
        except ValueError as exc:
            raise UserError(f"{flag} {shown(value)}: {exc}") from None
    if isinstance(value, (tuple, list)) and not value and _default_of(field) not in ((), []):
        raise UserError(f"{flag}: give at least one value")
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if meta.get("choices") is not None and v not in meta["choices"]:
            raise UserError(f"{flag} {shown(v)}: choose one of {', '.join(map(str, meta['choices']))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{flag} {shown(v)}: give a finite number")
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (v <= low if meta.get("low_open") else v < low):
            raise UserError(f"{flag} {shown(v)}: must be {'above' if meta.get('low_open') else 'at least'} {low:g}")
        if high is not None and v > high:
            raise UserError(f"{flag} {shown(v)}: must be at most {high:g}")


def validate(config: Any) -> None:
    """Check each field of a config dataclass (range, choices, check); a UserError names the flag as typed."""
    for field in dataclasses.fields(config):
        check_value(field, getattr(config, field.name))


def validate_values(cls: type, **values: Any) -> None:
    """Check ``values`` against the fields of the config class ``cls`` of the same names (settings a
    command shares with a config, e.g. the data options of ``train``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        check_value(fields[name], value)


# ---- parse functions: typed text -> value (ValueError with a reason) ----------------------------------
def whole(text: str) -> int:
    """An integer."""
    try:
        return int(text)
    except ValueError:
        raise ValueError("give a whole number") from None


def number(text: str) -> float:
    """A float (nan and inf parse; :func:`validate` refuses them)."""
    try:
        return float(text)
    except ValueError:
        raise ValueError("give a number") from None


def number_list(text: str) -> tuple[float, ...]:
    """Comma-separated floats."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError("give comma-separated numbers, e.g. 0.25,0.5") from None


def whole_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError("give comma-separated whole numbers, e.g. 8,16") from None


def name_list(text: str | Sequence[str]) -> tuple[str, ...]:
    """Comma-separated names, or a sequence of them from the API (blanks dropped, so ``,`` gives no name and is
    refused by :func:`validate`)."""
    values = text.split(",") if isinstance(text, str) else text
    return tuple(v.strip() for v in values if v.strip())


def whole_or_auto(text: str) -> int | str:
    """An integer or ``auto``."""
    try:
        return "auto" if text == "auto" else int(text)
    except ValueError:
        raise ValueError("give a positive integer or 'auto'") from None


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the devices i2x runs on."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ValueError("choose auto, cpu, cuda or cuda:N")


def trust_checkpoints_option() -> Any:
    """The ``--trust-checkpoints`` field, one help text wherever it appears."""
    return option(False, "allow checkpoints that need arbitrary pickled code to load (only for files you trust)")


def trust_analysis_option() -> Any:
    """The ``--trust-analysis`` field, one help text wherever it appears (an analysis folder is untrusted input)."""
    return option(False, "import the model and data code this analysis folder names, and honour its recorded "
                         "--trust-checkpoints (only for folders you made or trust)")


def device_option(help: str = "auto (CUDA if available), cpu, cuda or cuda:N") -> Any:
    """The ``--device`` field every stage shares."""
    return option("auto", help, check=check_device, metavar="DEVICE")
