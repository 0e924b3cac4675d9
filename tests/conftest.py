"""Shared fixtures. Keep each one small and named after what it gives."""

from __future__ import annotations

import pytest
import torch

from i2x.io.data import ImageData, load_data


@pytest.fixture(scope="session")
def digits_data() -> ImageData:
    """The built-in ``digits`` data set (1,437 train / 360 test images at 32x32), loaded once per session."""
    return load_data("digits")


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models of the tests run as fast on one thread, and far faster on a busy 2-core machine; a module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
