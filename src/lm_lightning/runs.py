"""The runs index: every run records itself at ``<runs_root>/runs.jsonl``; list and compare them.

Each run appends two events, ``start`` and ``end``, as single JSON lines. Lines are written with
one ``write`` on an ``O_APPEND`` descriptor under an exclusive ``flock``, so concurrent sweep jobs
never interleave. Readers fold events by ``run_id``; a run with no end event is ``running``
(or was killed without a chance to record its end).

    python -m lm_lightning.runs [root=outputs] [experiment=NAME] [sweep=DIR] [plot=FILE]

Every option is also accepted argparse-style (``--root outputs``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

INDEX_NAME = "runs.jsonl"
STATUSES = ("running", "finished", "failed", "stopped", "time_limit")
# Keys that say where a run writes, not what it trains: left out of the config hash.
_UNHASHED = ("paths", "run_name", "hydra")
_REPO = Path(__file__).resolve().parents[2]
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


def finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, int | float) else "-"


def varying_overrides(runs: list[dict[str, Any]]) -> list[str]:
    """Per run, the overrides that are not shared by every listed run: what tells the runs apart."""
    sets = [set(r.get("overrides") or []) for r in runs]
    common = set.intersection(*sets) if len(sets) > 1 else set()
    return [" ".join(o for o in (r.get("overrides") or []) if o not in common) for r in runs]


def print_table(runs: list[dict[str, Any]], metrics: list[str], root: str | Path = ".") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(runs)} runs")
    for col in ("run", "experiment", "status", "step", "best", *metrics, "overrides", "started", "min", "error"):
        table.add_column(col, justify="right" if col in ("step", "best", "min") or col in metrics else "left")
    for r, overrides in zip(runs, varying_overrides(runs)):
        minutes = (r["end"] - r["start"]) / 60 if finite(r.get("end")) and finite(r.get("start")) else None
        error = (r.get("error") or "")[:60]
        table.add_row(
            os.path.relpath(r.get("run_dir", "-"), root), _fmt(r.get("experiment")), r.get("status", "-"),
            _fmt(r.get("global_step")), _fmt(r.get("best_metric")),
            *[_fmt((r.get("metrics") or {}).get(m)) for m in metrics], overrides, _when(r.get("start")),
            _fmt(minutes), error,
        )
    Console(width=240).print(table)


def plot(runs: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """One bar per run with a finite value of ``metric`` (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(r, o) for r, o in zip(runs, varying_overrides(runs)) if finite((r.get("metrics") or {}).get(metric))]
    labels = [(o or Path(r["run_dir"]).name)[:40] for r, o in pairs]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(pairs) + 2), 4.5))
    ax.bar(range(len(pairs)), [r["metrics"][metric] for r, _ in pairs], color="tab:blue")
    ax.set_xticks(range(len(pairs)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by run (failed runs left out)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def key_value_to_options(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``key=value`` arguments, as the other commands take them (``root=DIR max=true``), as the
    parser's ``--key value`` options; ``--`` options pass through unchanged."""
    from lm_lightning.errors import UserError

    options = {s[2:].replace("-", "_"): a for s, a in parser._option_string_actions.items() if s.startswith("--")}
    options.pop("help", None)
    out: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep:
            out.append(arg)
            continue
        action = options.get(key.replace("-", "_"))
        if action is None:
            raise UserError(f"unknown argument {key!r}; known: {', '.join(sorted(options))}")
        if action.nargs == 0:  # a flag: max=true, no_plot=false
            if value.lower() not in ("true", "false", "1", "0"):
                raise UserError(f"{key} must be true or false, got {value!r}")
            out += [action.option_strings[-1]] if value.lower() in ("true", "1") else []
        else:
            out.append(f"{action.option_strings[-1]}={value}")
    return out


def main(argv: list[str] | None = None) -> int:
    from lm_lightning.errors import UserError, exit_on_user_error

    parser = argparse.ArgumentParser(
        prog="python -m lm_lightning.runs",
        description="List and compare runs. Every option also works as key=value, like the other commands: "
                    "root=outputs sweep=DIR status=failed max=true no_plot=true.")
    parser.add_argument("--root", default="outputs", help="runs root holding runs.jsonl (default: outputs)")
    parser.add_argument("--experiment", help="only runs of this experiment")
    parser.add_argument("--sweep", help="only the jobs of this multirun directory")
    parser.add_argument("--status", choices=STATUSES, help="only runs with this status")
    parser.add_argument("--metric", default="val/loss", help="metric to sort by and plot (default: val/loss)")
    parser.add_argument("--max", action="store_true", help="higher is better for --metric")
    parser.add_argument("--plot", help="where to write the comparison plot (default: <root>/runs_comparison.png)")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    with exit_on_user_error():
        args = parser.parse_args(key_value_to_options(sys.argv[1:] if argv is None else argv, parser))
        if not index_path(args.root).is_file():
            raise UserError(f"no runs index at {index_path(args.root)}; train something first or pass root=DIR")
        runs = select(read_runs(args.root), args.experiment, args.sweep, args.status)
        if not runs:
            raise UserError("no runs match the filters")
        sign = -1.0 if args.max else 1.0
        runs.sort(key=lambda r: (not finite((r.get("metrics") or {}).get(args.metric)),
                                 sign * ((r.get("metrics") or {}).get(args.metric) or 0.0)))
        extra = sorted({k for r in runs for k in (r.get("metrics") or {}) if k.startswith("val/")} - {args.metric})
        print_table(runs, [args.metric, *extra[:2]], args.root)
        if not args.no_plot:
            out = plot(runs, args.metric, Path(args.plot) if args.plot else Path(args.root) / "runs_comparison.png")
            print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
