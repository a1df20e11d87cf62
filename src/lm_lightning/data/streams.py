"""How a training stream's micro-batches are shared among dataloader workers.

Every stream (Collatz, token windows, random tokens) makes micro-batch ``s`` as a pure
function of (seed, s, rank). Worker ``w`` of ``W`` makes the micro-batches with
``s % W == w``; PyTorch collects worker outputs round-robin, so the loader still yields
``start, start + 1, ...`` in order, whatever the number of workers. :class:`EpochLoader`
hands the stream its resume position each time an epoch starts.

:class:`Loader` (and so :class:`EpochLoader`) leaves SIGTERM and SIGINT to the main process:
a signal sent to the whole process group (SLURM's ``scancel``, ``timeout``, systemd, Ctrl-C)
must not kill the workers first, which would make the main process fail with "DataLoader
worker ... is killed by signal" instead of checkpointing and stopping (``RunControl``).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, get_worker_info

# Token-window streams have a length (one epoch) so that Lightning can count epochs and steps;
# each worker draws distinct micro-batches, so the generic warning about duplicates does not apply.
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")


def worker_steps(start: int, end: int | None = None) -> Iterator[int]:
    """The micro-batch indices this worker produces, from ``start`` (the resume position) to ``end``."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    if end is None:
        return itertools.count(start + worker, workers)
    return iter(range(start + worker, end, workers))


# The signals a run's main process turns into "checkpoint and stop" (callbacks/control.py).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignalsToMain:
    """A worker_init_fn: the worker leaves SIGTERM/SIGINT to the main process, then runs the
    loader's own init.

    SIGINT is ignored. SIGTERM stays blocked and a thread takes it with ``sigwaitinfo``, which
    tells who sent it: from the main process itself (PyTorch's worker shutdown, multiprocessing's
    clean-up at exit, ``Process.terminate``) the worker dies of it as by default; from anyone else
    (a signal to the whole process group) it is dropped, and the main process's own handler does
    the stopping. Ignoring SIGTERM outright would hang a main process that exits with live workers
    (multiprocessing terminates and then joins them). A worker whose main process is gone exits by
    itself (PyTorch's watchdog). Lightning adds its seeding init (``seed_everything(workers=True)``)
    only to loaders without one, so it is called here.
    """

    def __init__(self, inner: Callable[[int], Any] | None = None, main_pid: int | None = None) -> None:
        self.inner = inner
        self.main_pid = os.getpid() if main_pid is None else main_pid

    def __call__(self, worker_id: int) -> None:
        # Blocked by Loader while this worker was forked (and again here for other start methods):
        # threads started from now on inherit the block, so only the waiting thread takes SIGTERM.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not SIG_IGN: an ignored signal is never waited for
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=self._take_sigterm, name="lm-worker-sigterm", daemon=True).start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        inner = self.inner
        if inner is None and int(os.environ.get("PL_SEED_WORKERS", 0)):
            from lightning.fabric.utilities.seed import pl_worker_init_function

            inner = pl_worker_init_function
        if inner is not None:
            inner(worker_id)

    def _take_sigterm(self) -> None:
        while True:
            info = signal.sigwaitinfo([signal.SIGTERM])
            if info.si_pid == self.main_pid:
                # The main process ends this worker: die of SIGTERM, as without this init.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
                signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
                os._exit(128 + signal.SIGTERM)  # not reached: the default action ends the process


class Loader(DataLoader):
    """A DataLoader whose workers leave SIGTERM/SIGINT to the main process.

    The stop signals are blocked in the main thread while the workers start, so a signal that
    arrives then is delivered to the main process only (after the fork), never to a worker that
    has not yet set its handlers: no window in which the group signal kills a fresh worker.
    """

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        inner = self.worker_init_fn
        if not isinstance(inner, StopSignalsToMain):
            self.worker_init_fn = StopSignalsToMain(inner, main_pid=os.getpid())
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            self.worker_init_fn = inner


class EpochLoader(Loader):
    """Re-reads the resume position each time an epoch starts (workers get a fresh copy)."""

    def __init__(self, *args: Any, start_fn: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_fn = start_fn

    def __iter__(self):
        if self.start_fn is not None:
            self.dataset.start = self.start_fn()
        return super().__iter__()
