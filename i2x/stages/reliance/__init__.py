"""The reliance study (which prototypes the final model relies on; the shortcut verdict): `config` its settings,
`study` the units, fields and order of the tests, `deletion` deletion at the layer, `paste` the paste test and
footprints, `verdict` unit rows, ranking, verdict and concept table, `localise` (after the verdict) the suspects'
`masks`, their carriers (`retrieval`) and the lead over training (`onset`).

The modules import each other, never this package."""

from i2x.stages.reliance.config import RelianceConfig
from i2x.stages.reliance.study import reliance

__all__ = ["RelianceConfig", "reliance"]
