"""``python -m lm_lightning.runs``: list and compare the runs in a runs index (:mod:`lm_lightning.run.index`).

    python -m lm_lightning.runs [root=outputs] [experiment=NAME] [sweep=DIR] [plot=FILE]

Every option is also accepted argparse-style (``--root outputs``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from lm_lightning.run.index import STATUSES, index_path, read_runs, select


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

