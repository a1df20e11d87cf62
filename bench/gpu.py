"""The GPU section of `make bench`: run on a CUDA machine, writes bench/gpu_results.json.

- model=base (GPT-2 124M shape), bf16, torch.compile, block 1024, the largest micro-batch
  that fits: tokens/s and MFU (989 TFLOP/s dense bf16 peak for H100/H200, nanoGPT's FLOPs
  per token);
- the Lightning-overhead ratio against the plain loop, as on the CPU;
- the Collatz model at batch 512: samples/s and the fraction of step time waiting for data.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

from bench import overhead, timing
from bench.compose import compose

PEAK = 989e12


def _base_overrides(batch: int, steps: int, compile_: bool | str) -> list[str]:
    return [
        "data=synthetic", f"data.batch_size={batch}", "data.block_size=1024", "data.num_workers=2",
        "model=base", f"model.compile={str(compile_).lower()}", "loss.weights={next_token: 1.0}",
        "trainer.accelerator=gpu", "trainer.precision=bf16-mixed", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={10 * steps}", "trainer.limit_val_batches=0", "logger=csv",
        "~callbacks.checkpointing", "+callbacks.step_timer._target_=bench.timing.StepTimer",
        "+callbacks.step_timer.warmup=10", "trainer.enable_model_summary=false",
    ]


def fits(batch: int) -> bool:
    """One eager forward/backward at this micro-batch (eager needs more memory than compiled)."""
    from lm_lightning.model import GPT, ModelConfig

    torch.cuda.empty_cache()
    try:
        m = GPT(ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, block_size=1024)).cuda()
        x = torch.randint(0, 50304, (batch, 1024), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(x).float().view(-1, 50304), x.view(-1))
        loss.backward()
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del m
        torch.cuda.empty_cache()


def mfu_run(runs_root: str, steps: int = 60, compile_mode: str = "true") -> dict:
    from lm_lightning.model import GPT, ModelConfig
    from lm_lightning.run.session import train

    batch = next(b for b in (96, 64, 48, 32, 24, 16, 8) if fits(b))
    cfg = compose([*_base_overrides(batch, steps, compile_mode), f"paths.runs_root={runs_root}", "run_name=mfu"])
    with contextlib.redirect_stdout(None):
        train(cfg)
    t = timing.RESULTS["step_timer"]
    tokens_per_s = batch * 1024 / (t.ms_per_step / 1000)
    fpt = GPT(ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, block_size=1024)).flops_per_token()
    return {"micro_batch": batch, "compile": compile_mode, "ms_per_step": t.ms_per_step, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * fpt / PEAK, "flops_per_token": fpt, "data_wait_fraction": t.data_wait_fraction}


def base_overhead(runs_root: str, batch: int, steps: int = 40) -> dict:
    ov = _base_overrides(batch, steps, False)
    ov = [o for o in ov if "step_timer.warmup" not in o] + ["+callbacks.step_timer.warmup=3"]
    plain = overhead.plain_ms_per_step(ov)
    ours, _ = overhead.trainer_ms_per_step(ov, runs_root)
    return {"model": "base", "batch": batch, "plain_ms": plain, "trainer_ms": ours, "ratio": ours / plain}


def activation_checkpointing(runs_root: str, batch: int, steps: int = 30) -> list[dict]:
    """The cost of model.activation_checkpointing=true: time per step against peak memory."""
    from lm_lightning.run.session import train

    out = []
    for flag in (False, True):
        torch.cuda.reset_peak_memory_stats()
        ov = [*_base_overrides(batch, steps, False), f"model.activation_checkpointing={str(flag).lower()}",
              f"paths.runs_root={runs_root}"]
        with contextlib.redirect_stdout(None):
            train(compose(ov))
        t = timing.RESULTS["step_timer"]
        out.append({"activation_checkpointing": flag, "batch": batch, "ms_per_step": t.ms_per_step,
                    "peak_memory_gb": t.peak_memory_gb})
    return out


def collatz_gpu(runs_root: str, workers: int, steps: int = 150) -> dict:
    ov = ["data.batch_size=512", f"data.num_workers={workers}", "trainer.accelerator=gpu",
          "trainer.precision=bf16-mixed", f"trainer.max_steps={steps}", f"trainer.val_check_interval={10 * steps}",
          "trainer.limit_val_batches=0", "logger=csv", "~callbacks.checkpointing",
          "+callbacks.step_timer._target_=bench.timing.StepTimer", "+callbacks.step_timer.warmup=20",
          f"paths.runs_root={runs_root}"]
    from lm_lightning.run.session import train

    with contextlib.redirect_stdout(None):
        train(compose(ov))
    t = timing.RESULTS["step_timer"]
    return {"batch": 512, "num_workers": workers, "ms_per_step": t.ms_per_step,
            "samples_per_s": 512 / (t.ms_per_step / 1000), "data_wait_fraction": t.data_wait_fraction}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/gpu_results.json")
    ap.add_argument("--runs-root", default="/tmp/lm_bench_gpu")
    ap.add_argument("--compile", default="true", help="model.compile for the MFU run: true or a torch.compile mode")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "date": datetime.date.today().isoformat(), "python": platform.python_version(),
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True).stdout.strip() or "unknown"}
    import lightning

    res["lightning"] = lightning.__version__
    res["mfu"] = mfu_run(args.runs_root, compile_mode=args.compile)
    print(json.dumps(res["mfu"]), flush=True)
    res["overhead"] = [base_overhead(args.runs_root, min(16, res["mfu"]["micro_batch"])),
                       {**overhead.measure("small", 200, device="gpu", precision="bf16-mixed", repeats=2,
                                           runs_root=args.runs_root)},
                       {**overhead.measure("medium", 100, device="gpu", precision="bf16-mixed", repeats=2,
                                           runs_root=args.runs_root)}]
    print(json.dumps(res["overhead"]), flush=True)
    res["collatz"] = [collatz_gpu(args.runs_root, w) for w in (0, 6)]
    print(json.dumps(res["collatz"]), flush=True)
    res["activation_checkpointing"] = activation_checkpointing(args.runs_root, 32)
    print(json.dumps(res["activation_checkpointing"]), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
