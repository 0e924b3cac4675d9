"""The planted data sets of :mod:`i2x.planted.synthetic`, importable by tests as ``planted`` and usable as
``--data tests/planted.py:NAME``."""

from i2x.planted.synthetic import (BOTTOM_RIGHT, CONFLICT_PAIR, SHORTCUT_CLASS, TOP_LEFT, _digits_split,  # noqa: F401
                              _planted, _seed, add_marker, conflict_data, marked_test_images, marker_mask,
                              planted_seed, shortcut_data, shortcut_marks, TWO_CLASS, two_class_data)
