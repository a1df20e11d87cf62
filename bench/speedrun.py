"""The 2026 recipe, piece by piece: an ablation run as a user runs it (a subprocess each).

Every variant is ``experiment=shakespeare_char_speedrun`` (or its WikiText-2 twin) with some
pieces switched off, at the same parameter budget and step count, for two seeds. Each run
validates every ``VAL_EVERY`` steps over the same 20 batches; ``bench.timing.ValCurve`` stamps
each validation with the wall clock, so a curve is val loss against seconds since the process
started (start-up included, as nanoGPT's whole-run time includes its own).

    python -m bench.speedrun                      # both corpora, prints JSON
    python -m bench.speedrun --only shakespeare --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TARGET = 1.88
VAL_EVERY = 25  # divides the step counts below, so the last step is a validation
# The tiny-shakespeare ablation runs longer than the speedrun's 375 steps so that every variant
# can reach the target; the schedules stretch with it. WikiText-2 keeps the speedrun's length.
STEPS = {"shakespeare": 1000, "wikitext2": 375}
SEEDS = (1337, 2024)

# The baseline switches every piece of the recipe off; each row adds one piece back. The
# experiment sets keys that the presets share (optimizer.lr, scheduler.warmup_steps), so
# swapping a preset keeps the rest of the recipe; its one Muon-only key is deleted with it.
OFF = {
    "muon": ["optimizer=adamw", "~optimizer.muon_ns_steps"],
    "wsd": ["scheduler=cosine_warmup"],
    "relu2": ["model.mlp=gelu"],
    "qk_norm": ["model.qk_norm=false", "model.logit_softcap=null"],
}
PIECES = list(OFF)
VARIANTS = {
    "baseline": PIECES,
    "+muon": [p for p in PIECES if p != "muon"],
    "+wsd": [p for p in PIECES if p != "wsd"],
    "+relu2": [p for p in PIECES if p != "relu2"],
    "+qk_norm/softcap": [p for p in PIECES if p != "qk_norm"],
    "all (speedrun)": [],
}


def overrides_for(off: list[str]) -> list[str]:
    return [o for piece in off for o in OFF[piece]]


def run_one(experiment: str, extra: list[str], tmp: Path, name: str, whole_split: bool = False) -> dict:
    """One training run in a subprocess; its curve, wall time, median ms/iter and final figures."""
    curve_file, timer_file = tmp / f"{name}.curve.json", tmp / f"{name}.timer.json"
    cmd = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}", f"paths.runs_root={tmp}",
           f"run_name={name}", "logger=none", "+callbacks.val_curve._target_=bench.timing.ValCurve",
           f"+callbacks.val_curve.out={curve_file}", "+callbacks.step_timer._target_=bench.timing.StepTimer",
           f"+callbacks.step_timer.out={timer_file}", "+callbacks.step_timer.warmup=10", *extra]
    t0_wall, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    points = json.loads(curve_file.read_text())
    curve = [{"step": p["step"], "t": p["t"] - t0_wall, "val_loss": p["val_loss"]} for p in points]
    summary = json.loads((tmp / name / "summary.json").read_text())
    out = {"wall_s": wall, "curve": curve, "val_loss": curve[-1]["val_loss"], "steps": summary["global_step"],
           "ms_per_iter": json.loads(timer_file.read_text())["median_ms"], "test": summary["metrics"].get("test/loss")}
    if whole_split:
        out["val_loss_whole"] = whole_split_loss(tmp / name, "val")
    return out


def whole_split_loss(run_dir: Path, split: str) -> float:
    """The run's last checkpoint over the whole split (every token scored once), by the product's CLI."""
    ckpts = sorted((run_dir / "checkpoints").glob("last*.ckpt")) or sorted((run_dir / "checkpoints").glob("*.ckpt"))
    proc = subprocess.run([sys.executable, "-m", "lm_lightning.evaluate", f"ckpt={ckpts[-1]}", f"split={split}"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["loss"])


def time_to(curve: list[dict], target: float) -> float | None:
    """Seconds from process start to the first validation at or below ``target``; None if never."""
    return next((p["t"] for p in curve if p["val_loss"] <= target), None)


def ablation(experiment: str, extra: list[str], seeds=SEEDS, target: float | None = TARGET) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant, off in VARIANTS.items():
            runs = []
            for seed in seeds:
                name = f"{variant.replace('/', '_').replace(' ', '_').replace('(', '').replace(')', '')}-{seed}"
                r = run_one(experiment, [*extra, *overrides_for(off), f"seed={seed}",
                                         f"trainer.val_check_interval={VAL_EVERY}"], Path(tmp), name)
                r["seed"] = seed
                print(f"{variant} seed {seed}: val {r['val_loss']:.4f} test {r['test']} wall {r['wall_s']:.1f} s "
                      f"{r['ms_per_iter']:.1f} ms/iter", flush=True)
                runs.append(r)
            times = [time_to(r["curve"], target) for r in runs] if target else []
            reached = [t for t in times if t is not None]
            rows.append({
                "variant": variant, "off": off, "runs": runs,
                "val_loss": statistics.median(r["val_loss"] for r in runs),
                "test_loss": statistics.median(r["test"] for r in runs) if runs[0]["test"] is not None else None,
                "wall_s": statistics.median(r["wall_s"] for r in runs),
                "ms_per_iter": statistics.median(r["ms_per_iter"] for r in runs),
                # median over seeds; a seed that never reached the target counts as not reaching it
                "time_to_target": statistics.median(reached) if len(reached) == len(runs) else None,
                "reached": f"{len(reached)}/{len(runs)}",
            })
    return rows


def shakespeare(seeds=SEEDS) -> list[dict]:
    corpus = SHARED / "tinyshakespeare" / "input.txt"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus} (../shared)")
    return ablation("shakespeare_char_speedrun", [f"data.train_path={corpus}",
                                                 f"trainer.max_steps={STEPS['shakespeare']}"], seeds)


def wikitext2(seeds=SEEDS) -> list[dict]:
    """WikiText-2 (word-level text, char tokenizer): train on valid.txt, report test perplexity."""
    d = SHARED / "wikitext-2"
    if not (d / "valid.txt").is_file():
        raise FileNotFoundError(f"{d} (../shared)")
    return ablation("shakespeare_char_speedrun", [f"data.train_path={d / 'valid.txt'}",
                                                 f"data.test_path={d / 'test.txt'}", "test=true",
                                                 f"trainer.max_steps={STEPS['wikitext2']}"],
                    seeds, target=None)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, row in enumerate(rows):
        color = f"C{i}"
        for j, r in enumerate(row["runs"]):
            ax.plot([p["t"] for p in r["curve"]], [p["val_loss"] for p in r["curve"]], color=color,
                    alpha=0.9 if j == 0 else 0.45, label=row["variant"] if j == 0 else None)
    ax.axhline(TARGET, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("seconds since the process started")
    ax.set_ylabel("val loss (20 batches)")
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="shakespeare,wikitext2")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    a = ap.parse_args()
    seeds = SEEDS[: a.seeds]
    for name in a.only.split(","):
        res = {"shakespeare": shakespeare, "wikitext2": wikitext2}[name](seeds)
        print(json.dumps([{k: v for k, v in r.items() if k != "runs"} for r in res], indent=1))
