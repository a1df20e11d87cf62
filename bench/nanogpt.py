"""Run nanoGPT's shakespeare_char CPU recipe beside ours, in the same `make bench` invocation.

nanoGPT (MIT) lives read-only at ``../shared/anchors/nanogpt`` with its data prepared. It is
copied to a temporary directory and run as its README says; nothing of it is imported or
copied into this project. Its stdout gives ``iter N: loss L, time T ms`` every
``log_interval`` iterations and ``step N: train loss A, val loss B`` at each evaluation.

    python -m bench.nanogpt          # one run, prints the parsed figures as JSON
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "nanogpt"
MAX_ITERS = 2000
EVAL_INTERVAL = 250  # config/train_shakespeare_char.py
# The README's CPU recipe (../shared/anchors/README.md).
ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
        "--log_interval=10", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
        "--n_embd=128", f"--max_iters={MAX_ITERS}", f"--lr_decay_iters={MAX_ITERS}", "--dropout=0.0"]

_ITER = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
_EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def parse(stdout: str) -> dict:
    """Median ms/iter over the logged iterations that did not evaluate, and the eval curve."""
    iters, evals = [], []
    for line in stdout.splitlines():
        if m := _ITER.match(line.strip()):
            iters.append((int(m.group(1)), float(m.group(3))))
        elif m := _EVAL.match(line.strip()):
            evals.append({"step": int(m.group(1)), "train_loss": float(m.group(2)), "val_loss": float(m.group(3))})
    # An iteration that evaluates includes the evaluation in its time; iteration 0 also pays
    # for the first forward's allocations. Both are left out, as ours leaves out its evaluations.
    times = [t for i, t in iters if i % EVAL_INTERVAL and i > 0]
    if not times or not evals:
        raise RuntimeError("nanoGPT printed no iteration or evaluation lines:\n" + stdout[-2000:])
    return {"ms_per_iter": statistics.median(times), "logged_iters": len(times), "evals": evals,
            "val_loss": evals[-1]["val_loss"], "final_step": evals[-1]["step"]}


def run(python: str = sys.executable) -> dict:
    """One whole nanoGPT run from a writable copy; wall time includes its start-up and evaluations."""
    if not (ANCHOR / "train.py").is_file():
        raise FileNotFoundError(f"{ANCHOR} (../shared/anchors/nanogpt)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "nanogpt"
        shutil.copytree(ANCHOR, work)
        for p in work.rglob("*"):  # shared/ is read-only; the copy keeps the modes
            p.chmod(0o755 if p.is_dir() else 0o644)
        work.chmod(0o755)
        t0 = time.perf_counter()
        proc = subprocess.run([python, "train.py", *ARGS, f"--out_dir={work / 'out'}"], cwd=work,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError("nanoGPT failed:\n" + proc.stderr[-3000:])
    out = parse(proc.stdout)
    out["wall_s"] = wall
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
