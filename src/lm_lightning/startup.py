"""A command's start-up with Python's cyclic garbage collector paused, then its objects frozen.

Importing torch, Lightning and what they pull in (torchmetrics, transformers, ...) creates about
700k Python objects. Two costs follow from the collector:

- during the imports, every few hundred allocations start a collection that walks the young
  objects, and the full collections walk them all: about 0.6-1.0 s of a 6-7 s import on a
  2-core CPU;
- at exit, the interpreter's final collections walk them all again: about 2 s between a run's
  last line and the shell prompt.

:func:`start_up` pauses the collector for the block it wraps (the imports, the config, building
the data module) and ends with ``gc.freeze()``: what exists by then moves to the permanent
generation, which no collection walks again, in the training loop or at exit. The collector is
enabled again as it was before. The block starts with one collection, so a long-lived process
that calls a command's ``main`` (a notebook, the test suite) does not freeze the garbage it had
before (in a fresh process it is cheap: nothing heavy is imported yet). The cost is the cyclic
garbage made inside the block (about 12k objects after the imports, a few MB): it stays until
the process ends.
``make bench`` §5 measures start-up and the whole process with and without it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def start_up() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block, then freeze what it created."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
