"""`make bench`: run every comparison side by side and rewrite BENCHMARKS.md.

    python -m bench.run                 # everything that runs on this machine
    python -m bench.run --only collatz,startup

Each comparison runs both sides in this one invocation and reports the ratio; the GPU
section is read from bench/gpu_results.json (written by `python -m bench.gpu` on a GPU machine)
and says so when this machine has no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GPU_RESULTS = ROOT / "bench" / "gpu_results.json"
RESULTS = ROOT / "bench" / "cpu_results.json"



def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import lightning

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(mem_gb, 1), "python": platform.python_version(),
            "torch": torch.__version__, "lightning": lightning.__version__,
            "date": datetime.date.today().isoformat(), "commit": commit.stdout.strip()}


def section_overhead() -> list[dict]:
    from bench import overhead

    return [overhead.measure("small", 40, repeats=3), overhead.measure("medium", 12, batch=32, repeats=2)]


def section_tax() -> dict:
    from bench import overhead

    return {"framework_tax": overhead.framework_tax(steps=300, repeats=7),
            "optimizer": [overhead.optimizer_step_ms("small"), overhead.optimizer_step_ms("medium")]}


def section_collatz() -> dict:
    import contextlib

    from bench import collatz_speed, timing
    from bench.compose import compose
    from lm_lightning.run.session import train

    speed = collatz_speed.measure(batch_size=512, max_len=256, repeats=3)
    cfg = compose(["trainer.max_steps=80", "trainer.val_check_interval=1000", "trainer.limit_val_batches=0",
                   "logger=csv", "~callbacks.checkpointing", "+callbacks.step_timer._target_=bench.timing.StepTimer",
                   "+callbacks.step_timer.warmup=10", "paths.runs_root=/tmp/lm_bench"])
    with contextlib.redirect_stdout(None):
        train(cfg)
    t = timing.RESULTS["step_timer"]
    return {"speed": speed, "default_run": {"ms_per_step": t.ms_per_step, "data_wait_fraction": t.data_wait_fraction,
                                            "samples_per_s": cfg.data.batch_size / (t.ms_per_step / 1000)}}


def section_startup() -> dict:
    from bench import startup

    return startup.measure(repeats=3)


def section_memory() -> dict:
    from bench import memory

    return memory.measure()


def section_shakespeare() -> dict:
    """nanoGPT's CPU recipe and the speedrun back to back three times (the spread and the ratio), then
    our two other tiny-shakespeare recipes once, all in this invocation, as a user runs them."""
    import statistics
    import tempfile

    from bench import speedrun

    corpus = SHARED / "tinyshakespeare" / "input.txt"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus} (../shared)")
    pairs = speedrun.pairs(3)  # raises FileNotFoundError without ../shared/anchors/nanogpt
    mid = sorted(pairs["pairs"], key=lambda p: p["nanogpt_wall_s"])[1]
    nano = {"ms_per_iter": statistics.median(p["nanogpt_ms_per_iter"] for p in pairs["pairs"]),
            "val_loss": statistics.median(p["nanogpt_val"] for p in pairs["pairs"]),
            "wall_s": statistics.median(p["nanogpt_wall_s"] for p in pairs["pairs"]),
            "final_step": mid["nanogpt_final_step"], "median_of": len(pairs["pairs"])}
    print(f"nanoGPT: {nano['ms_per_iter']:.1f} ms/iter, val {nano['val_loss']:.4f}, {nano['wall_s']:.0f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("shakespeare_char", "shakespeare_char_fast"):
            r = speedrun.run_one(name, [f"data.train_path={corpus}"], Path(tmp), name, whole_split=True)
            rows.append({"experiment": name, "ms_per_iter": r["ms_per_iter"], "val_loss": r["val_loss"],
                         "val_loss_whole": r["val_loss_whole"], "wall_s": r["wall_s"], "steps": r["steps"]})
            print(json.dumps(rows[-1]), flush=True)
    ps = pairs["pairs"]
    rows.append({"experiment": "shakespeare_char_speedrun", "median_of": len(ps),
                 **{k: statistics.median(p[k] for p in ps) for k in ("ms_per_iter", "val_loss", "val_loss_whole",
                                                                     "wall_s", "steps")}})
    return {"nanogpt": nano, "ours": rows, "pairs": pairs}


def section_recipe() -> dict:
    """The speedrun recipe's ablation on tiny-shakespeare and WikiText-2 (bench/speedrun.py)."""
    from bench import speedrun

    out = {}
    for corpus, fn, title in (("shakespeare", speedrun.shakespeare, "tiny-shakespeare, char, 4x128"),
                              ("wikitext2", speedrun.wikitext2, "WikiText-2 (valid.txt), char, 4x128")):
        rows = fn()
        speedrun.plot(rows, ROOT / "bench" / f"ablation_{corpus}.png", title)
        out[corpus] = rows
    out["switches"] = speedrun.switches()
    out["ns"] = speedrun.ns_precision()
    return out


SECTIONS = {"shakespeare": section_shakespeare, "recipe": section_recipe, "memory": section_memory, "overhead": section_overhead,
            "tax": section_tax, "collatz": section_collatz, "startup": section_startup,
            "tokenize": lambda: __import__("bench.tokenize").tokenize.measure()}


def render(cpu: dict, gpu: dict | None, have_gpu: bool) -> str:
    m = cpu["machine"]
    out = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {m['date']} (commit {m['commit']}). CPU machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['ram_gb']} GB RAM; Python {m['python']}, torch {m['torch']}, Lightning {m['lightning']}.",
        "Every comparison ran both sides in the same invocation; absolute times on a shared machine are noisy,",
        "the ratios are the figures to read.",
        "",
    ]
    measured = cpu.get("measured", {})
    kept = [s for s in SECTIONS if s in cpu and s not in measured]
    if measured or kept:
        out += ["When each section's figures were taken: " + "; ".join(
            [f"{s}: {when}" for s, when in measured.items()] + [f"{s}: an earlier invocation (see its text)" for s in kept])
            + ".", ""]
    if m.get("skipped"):
        out += [f"Not rerun in this invocation, figures kept from an earlier run: {'; '.join(m['skipped'])}.", ""]
    if "overhead" in cpu:
        out += ["## 1. Lightning overhead (CPU)", "",
                "Our `train()` (default callbacks, CSV logger) against a plain PyTorch loop in `bench/overhead.py`: "
                "same model, Collatz batches, AdamW groups, warmup-cosine, clipping 1.0, fp32. Target ratio <= 1.03.", "",
                "| model | batch x block | plain ms/step | trainer ms/step | ratio |", "|---|---|---|---|---|"]
        for r in cpu["overhead"]:
            out.append(f"| {r['model']} | {r['batch']} x {r['block']} | {r['plain_ms']:.1f} | {r['trainer_ms']:.1f} | "
                       f"{r['ratio']:.3f} |")
        out.append("")
    if "tax" in cpu:
        t, opt = cpu["tax"]["framework_tax"], cpu["tax"]["optimizer"]
        out += ["**The trainer's own cost per step.** At `model=small` the model's compute hides it; with "
                "`model=tiny` at batch 4 x 16 a step is almost all Python, so the difference is what Lightning, our "
                "callbacks and logging add to every step (one thread, median per-step times, both sides alternated "
                f"{t['repeats']} times, {t['steps']} steps each): plain loop {t['plain_ms']:.2f} ms/step, trainer "
                f"{t['trainer_ms']:.2f} ms/step, **{t['tax_ms']:.2f} ms per step**. This is the figure that decides the "
                "GPU ratio for small models, whose steps are CPU-bound (section 6).", "",
                "**Fused AdamW on the CPU** (the default now; median of one optimizer step over the preset's parameters, "
                "same groups, random gradients):", "",
                "| model | parameters | per-tensor loop ms | foreach ms | fused ms | fused speed-up |", "|---|---|---|---|---|---|"]
        for r in opt:
            out.append(f"| {r['model']} | {r['params']:,} | {r['single_tensor_ms']:.2f} | {r['foreach_ms']:.2f} | "
                       f"{r['fused_ms']:.2f} | {r['single_tensor_ms'] / r['fused_ms']:.1f}x |")
        out.append("")
    if "shakespeare" in cpu and "nanogpt" in cpu["shakespeare"]:
        out += render_shakespeare(cpu["shakespeare"])
    if "recipe" in cpu:
        out += render_recipe(cpu["recipe"])
    if "collatz" in cpu:
        c = cpu["collatz"]
        sp = c["speed"]
        out += ["## 3. Collatz data", "",
                "Vectorized generator (`collatz.parity_batch`) against the pure-Python per-number loop "
                "(`collatz.reference_batch`), batch 512, max_len 256, same numbers, outputs checked equal:", "",
                "| mode | vectorized samples/s | reference samples/s | speed-up |", "|---|---|---|---|"]
        for mode in ("hard", "normal"):
            r = sp[mode]
            out.append(f"| {mode} | {r['vectorized_samples_per_s']:,.0f} | {r['reference_samples_per_s']:,.0f} | "
                       f"{r['speedup']:.1f}x |")
        d = c["default_run"]
        out += ["", f"Default `python train.py` run (model=small, batch 64, num_workers 0): {d['ms_per_step']:.1f} ms/step, "
                f"{d['samples_per_s']:,.0f} samples/s, waiting for data {100 * d['data_wait_fraction']:.1f}% of step time "
                "(target < 5%).", ""]
    if "memory" in cpu:
        r = cpu["memory"]
        out += ["## 4. Memory", "", f"Streaming {r['steps']} micro-batches of {r['batch']} x {r['block']} random "
                f"windows from a {r['file_gb']:.1f} GB synthetic token file ({r['workers']} dataloader workers): "
                f"resident memory of the process and its workers went from {r['rss_before_mb']:.0f} MB to "
                f"{r['rss_after_mb']:.0f} MB, growth {r['rss_growth_mb']:.1f} MB at most (target < 200 MB).", ""]
    if "startup" in cpu:
        r = cpu["startup"]
        out += ["## 5. Start-up", "", f"`python train.py` to the end of the first training step: {r['startup_s']:.1f} s "
                f"(median of {len(r['all'])}: {', '.join(f'{v:.1f}' for v in r['all'])}; target <= 12 s). "
                f"Heavy optional packages imported by the Collatz run: {r['heavy_imported']}.", ""]
        # bench.startup.tree_startup: before and after a change, the trees alternating
        for title, sr in [("`experiment=shakespeare_char_speedrun`", r.get("speedrun")),
                          *[(c["title"], c) for c in r.get("compare", [])]]:
            if not sr:
                continue
            out += [f"{title} ({sr['steps']} step, `logger=none`), {sr['note']}, "
                    f"{len(next(iter(sr['trees'].values()))['runs'])} runs each, alternating:", "",
                    "| tree | start-up s (median) | runs | whole process s (median) |", "|---|---|---|---|"]
            for name, t in sr["trees"].items():
                each = ", ".join(f"{x['startup_s']:.2f}" for x in t["runs"])
                out.append(f"| {name} | {t['startup_s']:.2f} | {each} | {t['wall_s']:.2f} |")
            out.append("")
    out += ["## 6. GPU", ""]
    if not have_gpu:
        out += ["This machine has no GPU; the figures below are the last recorded by `python -m bench.gpu` on a GPU "
                "machine.", ""]
    if gpu:
        g = gpu["mfu"]
        at = f", commit {gpu['commit']}" if gpu.get("commit") else ""
        out += [f"Recorded {gpu['date']} on {gpu['device']} (torch {gpu['torch']}, Lightning {gpu['lightning']}{at}).", "",
                f"- `model=base` (GPT-2 124M shape), bf16, `model.compile=true`, block 1024, micro-batch {g['micro_batch']} "
                f"(largest that fits): {g['ms_per_step']:.1f} ms/step, {g['tokens_per_s']:,.0f} tokens/s, "
                f"**MFU {100 * g['mfu']:.1f}%** (989 TFLOP/s peak, {g['flops_per_token'] / 1e6:.0f} MFLOP/token; "
                f"target >= 45%).", ""]
        out += ["| Lightning overhead | batch | plain ms/step | trainer ms/step | ratio |", "|---|---|---|---|---|"]
        for r in gpu["overhead"]:
            out.append(f"| {r['model']} | {r['batch']} | {r['plain_ms']:.1f} | {r['trainer_ms']:.1f} | {r['ratio']:.3f} |")
        out += ["", "| Collatz, batch 512 | ms/step | samples/s | data wait |", "|---|---|---|---|"]
        for r in gpu["collatz"]:
            out.append(f"| num_workers={r['num_workers']} | {r['ms_per_step']:.1f} | {r['samples_per_s']:,.0f} | "
                       f"{100 * r['data_wait_fraction']:.1f}% |")
        out.append("")
        if gpu.get("activation_checkpointing"):
            out += ["| `model=base`, eager, bf16 | micro-batch | ms/step | peak GPU memory |", "|---|---|---|---|"]
            for r in gpu["activation_checkpointing"]:
                label = "activation checkpointing" if r["activation_checkpointing"] else "no checkpointing"
                out.append(f"| {label} | {r['batch']} | {r['ms_per_step']:.1f} | {r['peak_memory_gb']:.1f} GB |")
            out.append("")
    out += __import__("bench.tokenize").tokenize.render(cpu["tokenize"]) if "tokenize" in cpu else []
    notes = ROOT / "bench" / "NOTES.md"
    if notes.is_file():
        out += [notes.read_text().strip(), ""]
    return "\n".join(out) + "\n"


def render_shakespeare(s: dict) -> list[str]:
    n = s["nanogpt"]
    pairs = s.get("pairs")
    source = s.get("table_source")  # the table from an older invocation than the pairs below it
    out = ["## 2. nanoGPT's CPU recipe beside ours (tiny-shakespeare)", "",
           (f"The table is from {source}. " if source else "")
           + "nanoGPT (karpathy/nanoGPT 3adf61e, MIT, `../shared/anchors/nanogpt`) ran its README's CPU recipe from a "
           "temporary copy in this same invocation (`bench/nanogpt.py`)"
           + (f", {len(pairs['pairs'])} times, each run followed at once by `experiment=shakespeare_char_speedrun`; "
              "the nanoGPT and speedrun rows are the medians of those runs" if pairs and not source else ", just before ours")
           + ". Both sides are timed the "
           "same way: whole-run wall time of the process (start-up, every iteration and every evaluation), and the "
           "median time per training iteration leaving out iterations that evaluate (nanoGPT: its logged `time` of "
           "every 10th iteration; ours: step-to-step times, `bench/timing.py`). Val loss is at the last step over a "
           "20-batch estimate on both sides (nanoGPT: 20 random batches; ours: the first 20 sequential batches), and "
           "ours also over the whole validation split (`python -m lm_lightning.evaluate split=val`, every token once).",
           "",
           "| run | steps | ms/iter (median) | vs nanoGPT | val loss (20 batches) | val loss (whole split) | "
           "wall s | vs nanoGPT |", "|---|---|---|---|---|---|---|---|",
           f"| nanoGPT `train_shakespeare_char` (CPU recipe) | {n['final_step']} | {n['ms_per_iter']:.1f} | 1 | "
           f"{n['val_loss']:.4f} | | {n['wall_s']:.0f} | 1 |"]
    for r in s["ours"]:
        out.append(f"| `experiment={r['experiment']}` | {r['steps']:.0f} | {r['ms_per_iter']:.1f} | "
                   f"{r['ms_per_iter'] / n['ms_per_iter']:.3f} | {r['val_loss']:.4f} | {r['val_loss_whole']:.4f} | "
                   f"{r['wall_s']:.0f} | **{r['wall_s'] / n['wall_s']:.2f}** |")
    if pairs:
        out += ["", "Back to back, nanoGPT then the speedrun, in the order they ran (the spread; the ratio is taken "
                "pair by pair)" + (f"; {pairs['note']}" if pairs.get("note") else "") + ":", "",
                "| pair | nanoGPT wall s | nanoGPT val | speedrun wall s | speedrun start-up s | speedrun val (20 batches) "
                "| speedrun val (whole split) | ratio |", "|---|---|---|---|---|---|---|---|"]
        for i, p in enumerate(pairs["pairs"], 1):
            start = f"{p['startup_s']:.1f}" if p.get("startup_s") is not None else ""
            out.append(f"| {i} | {p['nanogpt_wall_s']:.1f} | {p['nanogpt_val']:.4f} | {p['wall_s']:.1f} | {start} | "
                       f"{p['val_loss']:.4f} | {p['val_loss_whole']:.4f} | {p['ratio']:.3f} |")
        out += ["", f"Ratio median **{pairs['ratio_median']:.3f}**, min {pairs['ratio_min']:.3f}, max "
                f"{pairs['ratio_max']:.3f} (goal <= 0.25)."]
    return out + [""]


def _table(intro: str, header: list[str], rows: list[list]) -> list[str]:
    """A paragraph and a markdown table under it."""
    return [intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]


def _to_target(r: dict) -> tuple[str, str, str]:
    """(steps, tokens, seconds) to the target as table cells; '-' when a seed never reached it."""
    steps = f"{r['steps_to_target']:.0f}" if r.get("steps_to_target") is not None else "-"
    tokens = f"{r['tokens_to_target'] / 1e3:.0f}k" if r.get("tokens_to_target") is not None else "-"
    t = f"{r['time_to_target']:.1f}" if r.get("time_to_target") is not None else "-"
    return steps, tokens, t


def render_recipe(rec: dict) -> list[str]:
    from bench.speedrun import BASELINE_LR, BASELINE_LR_TUNING, SEEDS, STEPS, TARGET, VAL_EVERY

    out = ["## 2b. The 2026 recipe, piece by piece", "",
           f"`experiment=shakespeare_char_speedrun` with pieces switched off, same model (4 x 128, RoPE), data and "
           f"batch, for {STEPS['shakespeare']} steps on tiny-shakespeare (longer than the speedrun so that every "
           f"variant can reach the target; the schedules stretch with it) and {STEPS['wikitext2']} on WikiText-2; "
           f"seeds {', '.join(map(str, SEEDS))}, medians over the seeds. Each run validates every {VAL_EVERY} steps "
           f"over the same 20 batches (a real speedrun run validates once). Steps and tokens to {TARGET} are the "
           "machine-independent figures: optimizer steps and training tokens up to the first validation at or below "
           f"it; seconds to {TARGET} count from the process start (start-up included); '-' if a seed never reached "
           "it. On tiny-shakespeare a run stops at that validation (`bench.timing.StopAtLoss`), so its val loss is "
           "the first at or below the target and its wall time ends there. The baseline is AdamW on all parameters, "
           "warmup-cosine, GELU, no QK-norm or softcap, at the experiment's lr; `baseline, tuned lr` at "
           f"{BASELINE_LR:g}, the best of the lrs tried ({BASELINE_LR_TUNING}). ms/iter includes the validations "
           f"every {VAL_EVERY} steps.", ""]
    if "shakespeare" in rec:
        source = rec.get("shakespeare_source")  # older figures that ran every step (no stop at the target)
        out += ["**tiny-shakespeare** (`bench/ablation_shakespeare.png`: val loss against wall time)"
                + (f"; these rows are from {source}, steps and tokens to the target read off their stored curves"
                   if source else ""), "",
                f"| variant | steps to {TARGET} | tokens to {TARGET} | s to {TARGET} | reached | "
                f"{'val loss at the end' if source else 'val loss at stop'} | ms/iter | wall s |",
                "|---|---|---|---|---|---|---|---|"]
        for r in rec["shakespeare"]:
            steps, tokens, t = _to_target(r)
            out.append(f"| {r['variant']} | {steps} | {tokens} | {t} | {r['reached']} | {r['val_loss']:.4f} | "
                       f"{r['ms_per_iter']:.1f} | {r['wall_s']:.0f} |")
        out += ["", "![ablation](bench/ablation_shakespeare.png)", ""]
    if "ns" in rec:
        ns = rec["ns"]
        out += [f"**Newton-Schulz precision on this CPU** (`bench.speedrun.ns_precision`: one speedrun optimizer "
                f"step's orthogonalisations, the 16 hidden matrices of the 4 x 128 model, 3 iterations, "
                f"{ns['threads']} threads, alternating, median): bf16 (torch's Muon) {ns['bfloat16']:.1f} ms, fp32 "
                f"{ns['float32']:.1f} ms. `optimizer.muon_ns_dtype=auto` is fp32 on a CPU, bf16 on a GPU.", ""]
    if "switches" in rec:
        out += _table("**modded-nanogpt's switches** on tiny-shakespeare, each toggled against the recipe at its own "
                      f"length (`bench.speedrun.SWITCHES`; `+` added, `-` taken out of the recipe), validating every "
                      f"{VAL_EVERY} steps to the end of the schedule:",
                      ["variant", f"steps to {TARGET}", f"tokens to {TARGET}", f"s to {TARGET}", "reached",
                       "final val loss", "ms/iter", "wall s"],
                      [[r["variant"], *_to_target(r), r["reached"], f"{r['val_loss']:.4f}", f"{r['ms_per_iter']:.1f}",
                        f"{r['wall_s']:.0f}"] for r in rec["switches"]])
    if "switches_explore" in rec:
        out += _table("**Choosing the switches** (runs that picked what the recipe turned on: the recipe at its own "
                      "375 steps, validating every 25, each switch on top; one thread (`OMP_NUM_THREADS=1`) while the "
                      "machine was shared, so only the machine-independent figures are given):",
                      ["variant", "seeds", "val loss at the end (per seed: 1337, 2024)", f"steps to {TARGET}",
                       f"tokens to {TARGET}", "reached"],
                      [[r["variant"], r["seeds"], ", ".join(f"{v:.4f}" for v in r["vals"]), *_to_target(r)[:2],
                        r["reached"]] for r in rec["switches_explore"]])
    if "tuning" in rec:
        out += _table("**Tuning the recipe for its length** (issue 19, 2026-12-03: what moved it from 375 steps to 275; "
                      "val loss over the same 20 batches at the last step of a schedule of that length, seed 1337 and, "
                      "where given, 2024; one thread (`OMP_NUM_THREADS=1`), two runs at a time; + = one change against "
                      "the row's base):",
                      ["variant", "steps", "training tokens", "val loss at the end (per seed)", f"<= {TARGET}"],
                      [[r["variant"], r["steps"], f"{r['tokens'] // 1000}k", ", ".join(f"{v:.4f}" for v in r["vals"]),
                        "yes" if all(v <= TARGET for v in r["vals"]) else "no"] for r in rec["tuning"]])
    if "wikitext2" in rec:
        import math

        out += ["**WikiText-2** (word-level text, char tokenizer; trained on `valid.txt` with its last 10% as the "
                "validation split, `test.txt` scored whole; per-character perplexity; no target)", "",
                "| variant | val loss | test loss | test ppl (per char) | ms/iter | wall s |", "|---|---|---|---|---|---|"]
        for r in rec["wikitext2"]:
            out.append(f"| {r['variant']} | {r['val_loss']:.4f} | {r['test_loss']:.4f} | {math.exp(r['test_loss']):.3f} | "
                       f"{r['ms_per_iter']:.1f} | {r['wall_s']:.0f} |")
        out += ["", "![ablation](bench/ablation_wikitext2.png)", ""]
    return out


# Records inside a section that a rerun of the section does not measure again (each carries its
# own date and commits): start-up's before/after tables (python -m bench.startup --before COMMIT).
KEEP = {"startup": ("speedrun", "compare")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    args = ap.parse_args()
    wanted = [s for s in args.only.split(",") if s] or list(SECTIONS)
    cpu = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    cpu["machine"] = machine()
    for name in wanted:
        print(f"== {name}", flush=True)
        try:
            kept = {k: cpu.get(name, {}).get(k) for k in KEEP.get(name, ()) if cpu.get(name, {}).get(k)}
            cpu[name] = SECTIONS[name]() | kept  # dated before/after records stay with their section
        except FileNotFoundError as exc:  # e.g. ../shared is not beside this checkout
            print(f"skipped {name}: missing {exc}; BENCHMARKS.md keeps its last recorded figures", flush=True)
            cpu["machine"].setdefault("skipped", []).append(f"{name} (missing {exc})")
            continue
        print(json.dumps(cpu[name], indent=1), flush=True)
        cpu.setdefault("measured", {})[name] = f"{cpu['machine']['date']} (commit {cpu['machine']['commit']})"
        RESULTS.write_text(json.dumps(cpu, indent=1) + "\n")
    gpu = json.loads(GPU_RESULTS.read_text()) if GPU_RESULTS.is_file() else None
    text = render(cpu, gpu, torch.cuda.is_available())
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
