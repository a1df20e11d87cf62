"""The 2026 recipe, piece by piece: an ablation run as a user runs it (a subprocess each).

Two tables, seeds 1337 and 2024, medians over the seeds:

- pieces (``ablation``): ``experiment=shakespeare_char_speedrun`` (or its WikiText-2 twin) with
  some pieces switched off, at the same parameter budget and a longer step count, so that the
  AdamW baseline (also at a tuned lr) reaches the target too;
- switches (``switches``): the recipe at its own length with one of modded-nanogpt's switches
  toggled (untied embedding/head lrs, value embeddings, U-net skips, a sequence-length warmup, a
  Muon momentum warmup) and Newton-Schulz in bf16 against fp32.

Each run validates every ``VAL_EVERY`` steps over the same 20 batches (the speedrun itself
validates once); ``bench.timing.ValCurve`` stamps each validation with the wall clock and the
training tokens so far. A curve gives the machine-independent figure, optimizer steps and
tokens to the first validation at or below ``TARGET``, and the wall time to it (seconds since
the process started, start-up included, as nanoGPT's whole-run time includes its own).

    python -m bench.speedrun                      # pieces on both corpora and the switches, JSON
    python -m bench.speedrun --only switches --seeds 1
    python -m bench.speedrun --only pairs         # nanoGPT and the speedrun back to back, 3 times
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
CORPUS = SHARED / "tinyshakespeare" / "input.txt"
TARGET = 1.88
VAL_EVERY = 25  # divides the step counts below, so the last step is a validation
# The tiny-shakespeare pieces ablation runs longer than the speedrun so that every variant can
# reach the target; the schedules stretch with it. WikiText-2 keeps the speedrun's length.
STEPS = {"shakespeare": 1000, "wikitext2": 375}
SEEDS = (1337, 2024)
# The AdamW baseline's lr, tuned on tiny-shakespeare at 1000 steps, seed 1337, by steps to 1.88
# (validating every 25): 1e-3 never (1.921 at step 1000), 2e-3 875, 3e-3 (the experiment's lr,
# the untuned baseline) 850, 4e-3 825, 6e-3 never (1.889 at step 1000).
BASELINE_LR = 4.0e-3
BASELINE_LR_TUNING = ("seed 1337, steps to 1.88 on the 1000-step schedule: 1e-3 never (1.921 at step 1000), 2e-3 875, "
                      "3e-3 850, 4e-3 825, 6e-3 never (1.889)")

# The baseline switches every piece of the recipe off; each row adds one piece back. The
# experiment sets keys that the presets share (optimizer.lr, scheduler.warmup_steps), so
# swapping a preset keeps the rest of the recipe; its Muon-only keys are deleted with it.


def _only_keys(group: str, preset: str) -> list[str]:
    """Keys the experiment sets under ``group`` that ``conf/<group>/<preset>.yaml`` lacks (deleted
    with the swap: the swapped-in target would refuse them, optim/targets.py)."""
    import yaml

    conf = ROOT / "conf"
    exp = yaml.safe_load((conf / "experiment" / "shakespeare_char_speedrun.yaml").read_text()).get(group) or {}
    other = yaml.safe_load((conf / group / f"{preset}.yaml").read_text()) or {}
    return [f"~{group}.{k}" for k in exp if k not in other]


OFF = {
    "muon": ["optimizer=adamw", *_only_keys("optimizer", "adamw")],
    "wsd": ["scheduler=cosine_warmup", *_only_keys("scheduler", "cosine_warmup")],
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
# Extra overrides of a variant (the tuned baseline).
EXTRA = {"baseline, tuned lr": [f"optimizer.lr={BASELINE_LR}"]}

# modded-nanogpt's switches for a <= 1M-parameter char model, each toggled against the recipe at
# its own length: (overrides that turn it on, overrides that turn it off, on in the recipe?).
SWITCHES = {
    "Newton-Schulz in fp32 (CPU default)": (["optimizer.muon_ns_dtype=float32"],
                                            ["optimizer.muon_ns_dtype=bfloat16"], True),
    "untied embedding/head, own lrs": (["model.tie_weights=false", "optimizer.embed_lr=0.01",
                                        "optimizer.head_lr=0.003"],
                                       ["model.tie_weights=true", "optimizer.embed_lr=null",
                                        "optimizer.head_lr=null"], False),
    "value embeddings (2 tables)": (["model.value_embeds=2"], ["model.value_embeds=0"], False),
    "U-net skips": (["model.unet_skips=true"], ["model.unet_skips=false"], False),
    "sequence-length warmup 16->64 over 100 steps": (["data.seq_warmup_steps=100", "data.seq_warmup_start=16"],
                                                      ["data.seq_warmup_steps=0"], False),
    "Muon momentum warmup 0.8->0.9 over 100 steps": (["optimizer.muon_momentum_warmup_steps=100",
                                                      "optimizer.muon_momentum_start=0.8"],
                                                     ["optimizer.muon_momentum_warmup_steps=0"], True),
}


def overrides_for(off: list[str]) -> list[str]:
    return [o for piece in off for o in OFF[piece]]


def run_one(experiment: str, extra: list[str], tmp: Path, name: str, whole_split: bool = False,
            stop_at: float | None = None) -> dict:
    """One training run in a subprocess; its curve, wall time, median ms/iter and final figures.

    ``stop_at``: end the run at the first validation at or below this loss (bench.timing.StopAtLoss).
    """
    curve_file, timer_file = tmp / f"{name}.curve.json", tmp / f"{name}.timer.json"
    cmd = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}", f"paths.runs_root={tmp}",
           f"run_name={name}", "logger=none", "+callbacks.val_curve._target_=bench.timing.ValCurve",
           f"+callbacks.val_curve.out={curve_file}", "+callbacks.step_timer._target_=bench.timing.StepTimer",
           f"+callbacks.step_timer.out={timer_file}", "+callbacks.step_timer.warmup=10", *extra]
    if stop_at is not None:
        cmd += ["+callbacks.stop_at._target_=bench.timing.StopAtLoss", f"+callbacks.stop_at.loss={stop_at}"]
    t0_wall, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    points = json.loads(curve_file.read_text())
    curve = [{"step": p["step"], "tokens": p.get("tokens"), "t": p["t"] - t0_wall, "val_loss": p["val_loss"]}
             for p in points]
    summary = json.loads((tmp / name / "summary.json").read_text())
    out = {"wall_s": wall, "curve": curve, "val_loss": curve[-1]["val_loss"], "steps": summary["global_step"],
           "ms_per_iter": json.loads(timer_file.read_text())["median_ms"], "test": summary["metrics"].get("test/loss"),
           "startup_s": summary.get("startup_s")}
    if whole_split:
        out["val_loss_whole"] = whole_split_loss(tmp / name, "val")
    return out


def whole_split_loss(run_dir: Path, split: str) -> float:
    """The run's last checkpoint over the whole split (every token scored once), by the product's CLI."""
    ckpts = sorted((run_dir / "checkpoints").glob("last*.ckpt")) or sorted((run_dir / "checkpoints").glob("*.ckpt"))
    proc = subprocess.run([sys.executable, "-m", "lm_lightning.evaluate", f"ckpt={ckpts[-1]}", f"split={split}"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["loss"])


def first_at(curve: list[dict], target: float) -> dict | None:
    """The first validation point at or below ``target`` (step, tokens, t); None if never."""
    return next((p for p in curve if p["val_loss"] <= target), None)


def time_to(curve: list[dict], target: float) -> float | None:
    """Seconds from process start to the first validation at or below ``target``; None if never."""
    p = first_at(curve, target)
    return None if p is None else p["t"]


def summarise(variant: str, runs: list[dict], target: float | None, **extra) -> dict:
    """Medians over the seeds; a figure to the target only when every seed reached it."""
    hits = [first_at(r["curve"], target) for r in runs] if target else []
    reached = [h for h in hits if h is not None]
    every = bool(hits) and len(reached) == len(runs)

    def med(key):
        return statistics.median(h[key] for h in reached) if every and reached[0].get(key) is not None else None

    return {
        "variant": variant, "runs": runs, **extra,
        "val_loss": statistics.median(r["val_loss"] for r in runs),
        "test_loss": statistics.median(r["test"] for r in runs) if runs[0]["test"] is not None else None,
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "ms_per_iter": statistics.median(r["ms_per_iter"] for r in runs),
        "time_to_target": med("t"), "steps_to_target": med("step"), "tokens_to_target": med("tokens"),
        "reached": f"{len(reached)}/{len(runs)}",
    }


def _name(variant: str, seed: int) -> str:
    keep = "".join(c if c.isalnum() or c in "+-_." else "_" for c in variant)
    return f"{keep}-{seed}"


def run_variants(experiment: str, extra: list[str], variants: dict[str, list[str]], seeds=SEEDS,
                 target: float | None = TARGET, stop_at_target: bool = False) -> list[dict]:
    """Each variant (name -> overrides) for every seed, validating every VAL_EVERY steps."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant, overrides in variants.items():
            runs = []
            for seed in seeds:
                r = run_one(experiment, [*extra, *overrides, f"seed={seed}", f"trainer.val_check_interval={VAL_EVERY}"],
                            Path(tmp), _name(variant, seed), stop_at=target if stop_at_target else None)
                r["seed"] = seed
                hit = first_at(r["curve"], target) if target else None
                to = "-" if hit is None else f"step {hit['step']}, {hit['tokens']} tokens, {hit['t']:.1f} s"
                print(f"{variant} seed {seed}: val {r['val_loss']:.4f} at step {r['steps']}, test {r['test']}, "
                      f"to {target}: {to}; wall {r['wall_s']:.1f} s, {r['ms_per_iter']:.1f} ms/iter", flush=True)
                runs.append(r)
            rows.append(summarise(variant, runs, target, overrides=overrides))
    return rows


def piece_variants() -> dict[str, list[str]]:
    out = {}
    for variant, off in VARIANTS.items():
        out[variant] = overrides_for(off)
        if variant == "baseline":
            out["baseline, tuned lr"] = [*overrides_for(off), *EXTRA["baseline, tuned lr"]]
    return out


def ablation(experiment: str, extra: list[str], seeds=SEEDS, target: float | None = TARGET) -> list[dict]:
    """The pieces table. With a target, each run stops at its first validation at or below it."""
    return run_variants(experiment, extra, piece_variants(), seeds, target, stop_at_target=target is not None)


def shakespeare(seeds=SEEDS) -> list[dict]:
    if not CORPUS.is_file():
        raise FileNotFoundError(f"{CORPUS} (../shared)")
    return ablation("shakespeare_char_speedrun", [f"data.train_path={CORPUS}",
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


def switch_variants() -> dict[str, list[str]]:
    """The recipe, then the recipe with each switch toggled (+ on top, - taken out)."""
    out = {"speedrun (as is)": []}
    for name, (on, off, in_recipe) in SWITCHES.items():
        out[("- " if in_recipe else "+ ") + name] = off if in_recipe else on
    return out


def switches(seeds=SEEDS, extra: list[str] = ()) -> list[dict]:
    """The switches table, on tiny-shakespeare at the recipe's own length."""
    if not CORPUS.is_file():
        raise FileNotFoundError(f"{CORPUS} (../shared)")
    return run_variants("shakespeare_char_speedrun", [f"data.train_path={CORPUS}", *extra], switch_variants(), seeds)


def pairs(n: int = 3) -> dict:
    """nanoGPT's CPU recipe and the speedrun back to back, n times: the spread of both and the ratio."""
    from bench import nanogpt

    if not CORPUS.is_file():
        raise FileNotFoundError(f"{CORPUS} (../shared)")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            nano = nanogpt.run()
            ours = run_one("shakespeare_char_speedrun", [f"data.train_path={CORPUS}"], Path(tmp), f"speedrun{i}",
                           whole_split=True)
            out.append({"nanogpt_wall_s": nano["wall_s"], "nanogpt_val": nano["val_loss"],
                        "nanogpt_final_step": nano["final_step"],
                        "nanogpt_ms_per_iter": nano["ms_per_iter"], "wall_s": ours["wall_s"],
                        "val_loss": ours["val_loss"], "val_loss_whole": ours["val_loss_whole"],
                        "ms_per_iter": ours["ms_per_iter"], "steps": ours["steps"], "startup_s": ours["startup_s"],
                        "ratio": ours["wall_s"] / nano["wall_s"]})
            print(json.dumps(out[-1]), flush=True)
    ratios = [p["ratio"] for p in out]
    return {"pairs": out, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios)}


def ns_precision(repeats: int = 7, iters: int = 20) -> dict:
    """Newton-Schulz for one speedrun optimizer step (the 16 hidden matrices of the 4 x 128 model,
    3 iterations), bf16 (torch's Muon) against fp32 (muon_ns.zeropower), alternating; median ms."""
    import torch
    from torch.optim._muon import _zeropower_via_newtonschulz

    from lm_lightning.optim.muon_ns import zeropower

    coeffs = (3.4445, -4.7750, 2.0315)
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(shape, generator=g) for _ in range(4) for shape in ((384, 128), (128, 128), (512, 128), (128, 512))]
    fns = {"bfloat16": lambda m: _zeropower_via_newtonschulz(m, coeffs, 3, 1e-7),
           "float32": lambda m: zeropower(m, coeffs, 3, 1e-7)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for m in mats:
            fn(m)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                for m in mats:
                    fn(m)
            times[name].append(1000 * (time.perf_counter() - t0) / iters)
    return {name: statistics.median(v) for name, v in times.items()} | {"threads": torch.get_num_threads()}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, row in enumerate(rows):
        color = f"C{i % 10}"
        for j, r in enumerate(row["runs"]):
            ax.plot([p["t"] for p in r["curve"]], [p["val_loss"] for p in r["curve"]], color=color,
                    ls="-" if i < 10 else "--", alpha=0.9 if j == 0 else 0.45, label=row["variant"] if j == 0 else None)
    ax.axhline(TARGET, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("seconds since the process started")
    ax.set_ylabel("val loss (20 batches)")
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="shakespeare,wikitext2,switches")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    seeds = SEEDS[: a.seeds]
    result = {}
    for name in a.only.split(","):
        if name == "pairs":
            result[name] = pairs(a.pairs)
        elif name == "ns":
            result[name] = ns_precision()
            print(json.dumps(result[name]), flush=True)
        else:
            res = {"shakespeare": shakespeare, "wikitext2": wikitext2, "switches": switches}[name](seeds)
            result[name] = res
            print(json.dumps([{k: v for k, v in r.items() if k != "runs"} for r in res], indent=1), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
