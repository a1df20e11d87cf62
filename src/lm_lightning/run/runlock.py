"""One live process per run directory: the run lock.

A run directory is trained by one job at a time. A second start of it while the first is alive
(a double submit, a requeued job whose predecessor still runs, the same ``run_name`` typed
twice) is refused at once: one line naming the holder, exit 2, nothing of the first run touched.

The lock is a small JSON file *beside* the run directory, ``<run_dir>.lock`` (for example
``outputs/base-2x8.lock``): beside it, because ``overwrite=true`` empties the run directory, and
a refused start must not create a run directory. It holds the holder's pid, host, start time,
SLURM job id and restart count, and its modification time is a heartbeat, refreshed every
``HEARTBEAT_S`` seconds while the run lives. The run removes it when it ends, however it ends
short of SIGKILL.

A lock whose holder is gone is taken over with a warning. Whether the holder is gone:

- on this host: its pid no longer exists (or now belongs to a younger process: pid reuse);
- on another host (we cannot see its processes): it is an earlier incarnation of our own SLURM
  job (same ``SLURM_JOB_ID``, other ``SLURM_RESTART_COUNT``: SLURM never runs two at once), or
  its heartbeat is older than ``stale_after_s()`` (``LM_LIGHTNING_LOCK_STALE_S``, default 300 s).

Only global rank 0 takes (or is refused) the lock: the other ranks of the same job share the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_lightning.errors import UserError
from lm_lightning.run.distributed import env_is_global_zero

HEARTBEAT_S = 30.0
DEFAULT_STALE_AFTER_S = 300.0


def stale_after_s() -> float:
    """Heartbeat age after which another host's lock counts as abandoned."""
    value = os.environ.get("LM_LIGHTNING_LOCK_STALE_S", "")
    try:
        return float(value) if value else DEFAULT_STALE_AFTER_S
    except ValueError:
        return DEFAULT_STALE_AFTER_S


def lock_path(run_dir: str | Path) -> Path:
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.with_name(run_dir.name + ".lock")


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime, after the parenthesised name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def holder_info() -> dict[str, Any]:
    """What this process writes into the lock."""
    now = time.time()
    return {
        "pid": os.getpid(), "host": socket.gethostname(), "started": now,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
        "proc_start": _proc_start(os.getpid()), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"), "token": uuid.uuid4().hex,
        "argv": sys.argv[:],
    }


def describe(holder: dict[str, Any], age_s: float | None = None) -> str:
    """``pid 123 on host h (started 2026-12-03 09:50:01 UTC[, heartbeat 3 s ago])``."""
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {holder.get('started_utc', '?')}"
    if age_s is not None:
        text += f", heartbeat {age_s:.0f} s ago"
    return text + ")"


def why_dead(holder: dict[str, Any] | None, age_s: float, me: dict[str, Any] | None = None) -> str | None:
    """Why the lock's holder is gone (the lock can be taken over), or None if it may be alive."""
    me = me or holder_info()
    if not holder or not isinstance(holder.get("pid"), int):
        return "the lock file is unreadable"
    job = holder.get("slurm_job_id")
    if job and job == me.get("slurm_job_id") and holder.get("slurm_restart_count") != me.get("slurm_restart_count"):
        return f"it was an earlier run of SLURM job {job} (restart {holder.get('slurm_restart_count')})"
    if holder.get("host") == me["host"]:
        pid = holder["pid"]
        if pid == me["pid"]:
            return None  # this very process: a nested start is a second start
        if not _pid_alive(pid):
            return "that process no longer exists"
        start = _proc_start(pid)
        if holder.get("proc_start") and start and start != holder["proc_start"]:
            return "that process no longer exists (its pid now belongs to another process)"
        return None
    if age_s > stale_after_s():
        return f"its heartbeat is {age_s:.0f} s old (another host: stale after {stale_after_s():.0f} s)"
    return None


def read_lock(path: Path) -> tuple[dict[str, Any] | None, float]:
    """(the holder, or None if unreadable; heartbeat age in seconds). FileNotFoundError if absent."""
    age = max(0.0, time.time() - path.stat().st_mtime)
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None, age
    return (holder if isinstance(holder, dict) else None), age


@contextlib.contextmanager
def _dir_guard(directory: Path) -> Iterator[None]:
    """An exclusive flock on the directory for a short critical section (best effort: some
    network filesystems refuse flock on a directory; the lock file's own O_EXCL link still holds)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _write_new(path: Path, holder: dict[str, Any], replace: bool) -> bool:
    """Write the lock complete, then make it visible: link (fails if one exists) or replace."""
    tmp = path.with_name(f".{path.name}.{holder['pid']}.{holder['token'][:8]}.tmp")
    tmp.write_text(json.dumps(holder) + "\n")
    try:
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@dataclass
class RunLock:
    """The lock this process holds; :meth:`release` removes it (only if it is still ours)."""

    path: Path
    holder: dict[str, Any]
    created_dirs: list[Path] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_heartbeat(self, every_s: float = HEARTBEAT_S) -> None:
        def beat() -> None:
            while not self._stop.wait(every_s):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="lm-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder, _ = read_lock(self.path)
        except FileNotFoundError:
            holder = None
        if holder and holder.get("token") == self.holder["token"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for d in reversed(self.created_dirs):  # directories only the lock needed (nothing else in them)
            with contextlib.suppress(OSError):
                d.rmdir()


def acquire(run_dir: str | Path) -> RunLock:
    """Take the run directory's lock; UserError (exit 2) if a live process holds it."""
    path = lock_path(run_dir)
    created: list[Path] = []
    parent = path.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    created.reverse()  # outermost first; release removes them innermost first
    me = holder_info()
    try:
        with _dir_guard(path.parent):
            if not _write_new(path, me, replace=False):
                try:
                    holder, age = read_lock(path)
                except FileNotFoundError:  # released between our link and our read
                    holder, age = None, 0.0
                    if not _write_new(path, me, replace=False):
                        raise UserError(f"run directory {Path(run_dir)} was locked by another start at the "
                                        f"same moment ({path}); try again") from None
                else:
                    reason = why_dead(holder, age, me)
                    if reason is None:
                        raise UserError(
                            f"run directory {Path(run_dir)} is in use by {describe(holder, age)}: a second start is "
                            f"refused; stop that run first (SIGTERM checkpoints it), or use another run_name "
                            f"(lock: {path})")
                    _write_new(path, me, replace=True)
                    where = describe(holder) if holder else str(path)
                    msg = f"warning: taking over the run lock {path} left by {where}: {reason}"
                    print(msg, file=sys.stderr, flush=True)  # train.log is not open yet: the console
    except BaseException:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    lock = RunLock(path, me, created)
    lock.start_heartbeat()
    return lock


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[RunLock | None]:
    """Hold the run directory's lock for the block (global rank 0 only; other ranks get None)."""
    if not env_is_global_zero():
        yield None
        return
    lock = acquire(run_dir)
    try:
        yield lock
    finally:
        lock.release()
