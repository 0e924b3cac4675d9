"""One training snapshot found by the walker: where its weights are and its position in training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2x.io.location import RemotePath
from i2x.io.object_copies import file_sha256


@dataclass
class Checkpoint:
    """One training snapshot: where its weights are, and its position in training."""

    name: str
    path: Path | RemotePath  # a local file, or one on object storage (s3://...)
    step: int | None = None
    step_source: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    digest: str | None = field(default=None, repr=False)  # of the weights: quick, full once a duplicate is suspected

    def sha256(self) -> str:
        """The SHA-256 of the weight file, streamed (recorded so a store knows what it was built from); a remote
        file's from its local copy (:mod:`i2x.io.object_copies`)."""
        return file_sha256(self.path)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly record of this snapshot."""
        return {"name": self.name, "path": str(self.path), "step": self.step, "step_source": self.step_source}
