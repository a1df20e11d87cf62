"""Collatz (3x+1) trajectories: the exact reference (:mod:`.reference`), the vectorized numpy engine
(:mod:`.vectorized`) and the sampled training stream (:mod:`.sampling`). Only stdlib + numpy, as DataLoader
workers import it. ``python -m lm_lightning.collatz N`` is the command (:mod:`lm_lightning.cli.collatz`).
"""
from lm_lightning.collatz.reference import (
    ANOMALY_CYCLE,
    ANOMALY_NAMES,
    ANOMALY_NONE,
    ANOMALY_STEP_CAP,
    BIT0,
    BIT1,
    BOS,
    DELAY_RECORDS,
    PAD,
    VOCAB_SIZE,
    CollatzResult,
    ParityBatch,
    collatz_step,
    reference,
    reference_batch,
)
from lm_lightning.collatz.sampling import sample_numbers, stream_batch
from lm_lightning.collatz.vectorized import parity_batch

__all__ = [
    "ANOMALY_CYCLE", "ANOMALY_NAMES", "ANOMALY_NONE", "ANOMALY_STEP_CAP", "BIT0", "BIT1", "BOS", "DELAY_RECORDS",
    "PAD", "VOCAB_SIZE", "CollatzResult", "ParityBatch", "collatz_step", "parity_batch", "reference",
    "reference_batch", "sample_numbers", "stream_batch",
]
