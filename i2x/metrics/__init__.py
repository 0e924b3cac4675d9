"""Pure metrics: arrays in, numbers out (faithfulness curves, drift between maps, reliance statistics).

Nothing here reads files or builds models; the studies in :mod:`i2x.stages` feed these functions.
"""
