"""Pipeline stages and studies: each wires the I/O layer to the maths and writes its results.

Extraction, analysis, training, fine-tuning, reliance, faithfulness and drift; every stage reads what
the one before wrote, so any of them can be rerun alone.
"""
