"""Shared fixtures. Keep each one small and named after what it gives."""

from __future__ import annotations

import pytest

from i2x.io.data import ImageData, load_data


@pytest.fixture(scope="session")
def digits_data() -> ImageData:
    """The built-in ``digits`` data set (1,437 train / 360 test images at 32x32), loaded once per session."""
    return load_data("digits")
