"""The installed i2x version, read from the package metadata (pyproject.toml is its one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("i2x")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
