"""Input and output: checkpoints, data sets, models, the store, the analysis directory, locks, devices.

The bottom layer: it imports nothing from the rest of i2x but :mod:`i2x.errors` and :mod:`i2x.version`.
"""
