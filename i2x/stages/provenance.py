"""Which code and checkpoints an analysis directory names, and whether i2x may run them: a folder may come
from someone else, so the Python files its specs import run only when the user confirms, and only unchanged
(their sha256 is recorded at extraction)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from i2x.errors import UserError
from i2x.io.store import Store
from i2x.stages.config import RunConfig


def _code_file(spec: str) -> Path | None:
    """The Python file a ``path/to/file.py:factory`` spec imports, else None."""
    module, _, attr = spec.rpartition(":")
    return Path(module) if module.endswith(".py") and attr else None


def names_code(spec: str, kind: str) -> bool:
    """Whether a ``--model`` or ``--data`` spec imports code (a file or a module) rather than naming a built-in."""
    if kind == "model":
        return ":" in spec and not spec.startswith("torchvision:")
    return _code_file(spec) is not None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_record(config: RunConfig) -> dict[str, dict[str, Any]]:
    """The specs of ``config`` that import code, with their file's sha256: recorded in the store at extraction."""
    record = {}
    for kind, spec in (("model", config.model), ("data", config.data)):
        if names_code(spec, kind):
            file = _code_file(spec)
            record[kind] = {"spec": spec, "sha256": _sha256(file) if file and file.is_file() else None}
    return record


def _same_spec(given: str, recorded: str) -> bool:
    a, b = _code_file(given), _code_file(recorded)
    if a is None or b is None:
        return given == recorded
    return a.resolve() == b.resolve() and given.rpartition(":")[2] == recorded.rpartition(":")[2]


def check_code(store: Store, config: RunConfig, trust_analysis: bool = False, model: str | None = None,
               kinds: tuple[str, ...] = ("model", "data")) -> None:
    """Refuse to import the code an analysis directory names unless the user confirmed it, or if it changed.

    An analysis folder may come from someone else: ``--model path/net.py:factory`` in its settings would
    otherwise run whatever that file holds when the folder is opened.
    """
    recorded = store.attrs.get("code") or {}
    for kind, spec in (("model", config.model), ("data", config.data)):
        if kind not in kinds or not names_code(spec, kind):
            continue
        confirmed = trust_analysis or (kind == "model" and model is not None and _same_spec(model, spec))
        if not confirmed:
            again = f"--model {spec} again or " if kind == "model" else ""
            raise UserError(f"{store.path}: this analysis names code to run (--{kind} {spec}); i2x imports it only if "
                            f"you confirm: pass {again}--trust-analysis (only for analyses you made or trust)")
        file, want = _code_file(spec), (recorded.get(kind) or {}).get("sha256")
        if file is not None and want and (not file.is_file() or _sha256(file) != want):
            raise UserError(f"{file}: the --{kind} code changed since extraction (its sha256 differs from the one "
                            "recorded in the store); restore it, or rerun `i2x run --overwrite`")


def checkpoint_trust(store: Store, trust_checkpoints: bool, trust_analysis: bool) -> bool:
    """Load pickled code only if this command was told so, or the analysis is trusted and extraction was."""
    return bool(trust_checkpoints or (trust_analysis and store.attrs.get("trust_checkpoints")))
