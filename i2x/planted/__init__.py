"""Data sets with a planted answer (a marker the labels follow, a conflict between two classes, shapes with their
masks), for tests, benchmarks and ``--data planted:NAME``. They are built from scikit-learn's digits or drawn from a
seeded generator, so nothing is downloaded.

The ``planted:`` data spec is registered here and found by :data:`i2x.io.data.DATA_SPECS` through the
``i2x.data_specs`` entry point, so :mod:`i2x.io` never imports this package.
"""

from __future__ import annotations

from typing import Callable

from i2x.errors import UserError
from i2x.io.data import DATA_SPECS, DataOptions, ImageData
from i2x.planted import artefact, localisation, shapes, synthetic

#: ``planted:NAME`` -> the factory that builds it.
PLANTED: dict[str, Callable[[], ImageData]] = {
    "shortcut": synthetic.shortcut_data,
    "conflict": synthetic.conflict_data,
    "two-class": synthetic.two_class_data,
    "marker-corner-grey": synthetic.marker_corner_grey,
    "marker-centre-grey": synthetic.marker_centre_grey,
    "marker-corner-rgb": synthetic.marker_corner_rgb,
    "marker-centre-rgb": synthetic.marker_centre_rgb,
    "clean-grey": synthetic.clean_grey,
    "clean-rgb": synthetic.clean_rgb,
    "L-carriers": localisation.corner_l,
    "L-carriers-3class": localisation.corner_l_3class,
    "L-carriers-clean": localisation.corner_l_clean,
    "shapes": shapes.shapes_data,
    "shapes-small": shapes.shapes_small_data,
    "corner-L": artefact.corner_l,
    "corner-L-3class": artefact.corner_l_3class,
    "corner-L-clean": artefact.corner_l_clean,
}


def planted_name(factory: str) -> str | None:
    """The ``planted:`` name of a factory function (``shortcut_data`` -> ``shortcut``), or None."""
    return next((name for name, f in PLANTED.items() if f.__name__ == factory), None)


@DATA_SPECS.register("planted:NAME", f"a data set with a planted answer: {', '.join(PLANTED)}")
def open_planted(name: str, opts: DataOptions) -> ImageData:
    """The planted set ``name``; a wrong name lists the right ones."""
    if name not in PLANTED:
        raise UserError(f"--data planted:{name}: no such planted set; choose one of {', '.join(PLANTED)}")
    return PLANTED[name]()
