"""The runs index: every run records itself at ``<runs_root>/runs.jsonl``; reading and selecting it.

Each run appends two events, ``start`` and ``end``, as single JSON lines. Lines are written with
one ``write`` on an ``O_APPEND`` descriptor under an exclusive ``flock``, so concurrent sweep jobs
never interleave. Readers fold events by ``run_id``; a run with no end event is ``running``
(or was killed without a chance to record its end).

``python -m lm_lightning.runs`` lists and compares them (:mod:`lm_lightning.cli.runs`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

INDEX_NAME = "runs.jsonl"
STATUSES = ("running", "finished", "failed", "stopped", "time_limit")
# Keys that say where a run writes, not what it trains: left out of the config hash.
_UNHASHED = ("paths", "run_name", "hydra")
_REPO = Path(__file__).resolve().parents[3]
# Run directories whose end (or failure) this process has recorded: task() must not record twice.
_ended: set[str] = set()


def index_path(runs_root: str | Path) -> Path:
    return Path(runs_root) / INDEX_NAME


def config_hash(cfg: DictConfig | dict) -> str:
    """A short hash of what the run trains: same hash, same hyperparameters."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    paths = data.get("paths") or {}
    # Resolved values that embed the run's own directory (checkpoint dirpath, logger save_dir).
    places = sorted({str(paths[k]) for k in ("output_dir", "run_dir", "runs_root") if paths.get(k)}, key=len,
                    reverse=True)

    def scrub(v: Any) -> Any:
        if isinstance(v, dict):  # a run's name, wherever a callback copies it, is not what it trains
            return {k: scrub(x) for k, x in v.items() if k != "run_name"}
        if isinstance(v, list):
            return [scrub(x) for x in v]
        if isinstance(v, str):
            for place in places:
                v = v.replace(place, "<run>")
        return v

    data = scrub({k: v for k, v in data.items() if k not in _UNHASHED})
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def git_commit(repo: Path = _REPO) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def hydra_context() -> dict[str, Any]:
    """Experiment, overrides and sweep position from Hydra, when the run came through it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"experiment": None, "overrides": [], "sweep": None, "job": None}
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "experiment": hc.runtime.choices.get("experiment"),
        "overrides": list(hc.overrides.task),
        "sweep": str(Path(hc.sweep.dir).resolve()) if multirun else None,
        "job": int(hc.job.num) if multirun and hc.job.get("num") is not None else None,
    }


def _append(path: Path, event: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(event, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)  # closing releases the lock


def _root(cfg: DictConfig) -> Path:
    return Path(OmegaConf.select(cfg, "paths.runs_root", default="outputs"))


def _metric_name(cfg: DictConfig) -> str | None:
    return OmegaConf.select(cfg, "callbacks.checkpointing.monitor", default=None) or cfg.get("optimized_metric")


def record_start(cfg: DictConfig, run_dir: Path) -> str:
    """Append the start event; returns the run id for :func:`record_end`."""
    run_id = uuid.uuid4().hex[:12]
    _append(index_path(_root(cfg)), {
        "event": "start", "run_id": run_id, "run_dir": str(Path(run_dir).resolve()), **hydra_context(),
        "config_hash": config_hash(cfg), "git_commit": git_commit(), "status": "running",
        "metric": _metric_name(cfg), "start": time.time(),
    })
    return run_id


def end_status(cfg: DictConfig, summary: dict[str, Any]) -> tuple[str, str | None]:
    """The summary's status, except that a run whose optimized metric is NaN/inf counts as failed."""
    status = summary.get("status", "failed")
    name = cfg.get("optimized_metric")
    value = summary.get("metrics", {}).get(name) if name else None
    if status == "finished" and value is not None and not math.isfinite(float(value)):
        return "failed", f"non-finite {name}: {value}"
    return status, None


def record_end(cfg: DictConfig, run_id: str, run_dir: Path, summary: dict[str, Any],
               error: BaseException | None = None) -> None:
    status, reason = end_status(cfg, summary)
    if error is not None:
        status = "failed" if status in ("running", "finished") else status
        text = str(error).strip()
        reason = type(error).__name__ + (f": {text.splitlines()[0]}" if text else "")
    best = summary.get("best_score")
    if best is None:
        best = summary.get("metrics", {}).get(_metric_name(cfg) or "")
    _append(index_path(_root(cfg)), {
        "event": "end", "run_id": run_id, "status": status, "error": reason,
        "best_metric": best, "best_checkpoint": summary.get("best_checkpoint"),
        "last_checkpoint": summary.get("last_checkpoint"), "global_step": summary.get("global_step"),
        "metrics": summary.get("metrics", {}), "end": time.time(),
    })
    _ended.add(str(run_dir))


def record_failure(cfg: DictConfig, run_dir: Path, error: BaseException) -> None:
    """A job that failed before its run started (an invalid combination in a sweep): one full record."""
    if str(run_dir) in _ended:
        return
    now = time.time()
    reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
    try:
        chash = config_hash(cfg)
    except Exception:  # an unresolvable config is itself the failure
        chash = None
    _append(index_path(_root(cfg)), {
        "event": "start", "run_id": uuid.uuid4().hex[:12], "run_dir": str(Path(run_dir).resolve()), **hydra_context(),
        "config_hash": chash, "git_commit": git_commit(), "status": "failed", "error": reason,
        "metric": _metric_name(cfg), "start": now, "end": now,
    })
    _ended.add(str(run_dir))


def read_runs(runs_root: str | Path) -> list[dict[str, Any]]:
    """Every run in the index, oldest first, start and end events folded into one record."""
    path = index_path(runs_root)
    if not path.is_file():
        return []
    runs: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write; the others are intact
        rec = runs.setdefault(event.get("run_id", ""), {})
        rec.update({k: v for k, v in event.items() if k != "event"})
    return list(runs.values())


def select(runs: list[dict[str, Any]], experiment: str | None = None, sweep: str | None = None,
           status: str | None = None) -> list[dict[str, Any]]:
    out = runs
    if experiment:
        out = [r for r in out if r.get("experiment") == experiment]
    if sweep:
        want = os.path.normpath(os.path.abspath(sweep))
        out = [r for r in out if r.get("sweep") and os.path.normpath(os.path.abspath(r["sweep"])) == want]
    if status:
        out = [r for r in out if r.get("status") == status]
    return out
