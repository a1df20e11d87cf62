"""Start-up: wall time from `python train.py` to the first optimizer step, measured by the run itself."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("transformers", "datasets", "tokenizers", "wandb", "matplotlib", "pandas")


def measure(repeats: int = 2) -> dict:
    """Median start-up of the default run (Collatz, model=small), from its summary.json."""
    values = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            proc = subprocess.run(
                [sys.executable, str(ROOT / "train.py"), "trainer.max_steps=2", "trainer.val_check_interval=1000",
                 f"paths.runs_root={tmp}", f"run_name=s{i}"],
                cwd=ROOT, capture_output=True, text=True, timeout=300,
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            values.append(json.loads((Path(tmp) / f"s{i}" / "summary.json").read_text())["startup_s"])
    values.sort()
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, lightning.pytorch, lm_lightning.cli.train as t, lm_lightning.data.collatz, lm_lightning.lit.module;"
         f"print([m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True, text=True, timeout=120,
    )
    return {"startup_s": values[len(values) // 2], "all": values, "heavy_imported": probe.stdout.strip()}


SPEEDRUN = ["experiment=shakespeare_char_speedrun",
            f"data.train_path={ROOT.parent / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'}"]


def speedrun_startup(trees: dict[str, Path], repeats: int = 3, steps: int = 1) -> dict:
    """`experiment=shakespeare_char_speedrun` start-up from each source tree: :func:`tree_startup`."""
    return tree_startup(trees, SPEEDRUN, repeats, steps)


def tree_startup(trees: dict[str, Path], args: list[str], repeats: int = 3, steps: int = 1) -> dict:
    """``python train.py ARGS`` start-up from each source tree (e.g. a ``git archive`` of an older commit
    beside this checkout), the trees alternating A B A B ... so that a drift of the machine's speed reaches
    both alike. Per run: the start-up the run measures itself (process start to the end of its first
    optimizer step, summary.json) and the whole-process wall of a ``steps``-step run.

        python -c "from bench.startup import *; print(tree_startup({'before': Path('/tmp/old'), 'after': ROOT}, []))"
    """
    import os
    import statistics
    import time

    runs: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for name, tree in trees.items():
                run = f"{name}{i}"
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, str(tree / "train.py"), *args, f"trainer.max_steps={steps}", "logger=none",
                     f"paths.runs_root={tmp}", f"run_name={run}"],
                    cwd=tree, capture_output=True, text=True, timeout=600,
                    env=dict(os.environ, PYTHONPATH=str(tree / "src")))
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-2000:])
                summary = json.loads((Path(tmp) / run / "summary.json").read_text())
                runs[name].append({"startup_s": summary["startup_s"], "wall_s": wall})
    return {name: {"startup_s": statistics.median(r["startup_s"] for r in rs),
                   "wall_s": statistics.median(r["wall_s"] for r in rs), "runs": rs} for name, rs in runs.items()}


def compare_with_commit(before: str, title: str, args: list[str], note: str, repeats: int = 3) -> dict:
    """Start-up of ``before`` (a commit, unpacked with ``git archive`` into a temporary folder) against
    this checkout, the two alternating (:func:`tree_startup`); appended to ``bench/cpu_results.json``'s
    start-up section, which ``python -m bench.run`` renders in BENCHMARKS.md section 5.

        python -m bench.startup --before a0ca1a4 --title "..." --note "..." [-- train.py args]
    """
    import datetime

    results = ROOT / "bench" / "cpu_results.json"
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "archive", before], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        trees = tree_startup({"before": Path(old), "after": ROOT}, args, repeats)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    entry = {"title": title, "steps": 1, "trees": trees,
             "note": f"{datetime.date.today()}, before = main at {before} ({note}), after = {head}"}
    cpu = json.loads(results.read_text())
    compare = cpu.setdefault("startup", {}).setdefault("compare", [])
    compare[:] = [c for c in compare if c["title"] != title] + [entry]
    results.write_text(json.dumps(cpu, indent=1) + "\n")
    return entry


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="start-up before (a commit) and after (this checkout), alternating")
    ap.add_argument("--before", required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("args", nargs="*", help="train.py arguments (default: the speedrun)")
    a = ap.parse_args()
    print(json.dumps(compare_with_commit(a.before, a.title, a.args or SPEEDRUN, a.note, a.repeats), indent=1))
