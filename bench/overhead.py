"""Lightning overhead: our trainer against a plain PyTorch loop doing the same work.

Both sides use the same LMModule weights and forward, the same Collatz batches, AdamW with the
same parameter groups, the warmup-cosine schedule, gradient clipping at 1.0 and the same
precision. The trainer side is the real ``train(cfg)`` with the default callbacks and a CSV
logger; the plain loop is what a user would write by hand.
"""

from __future__ import annotations

import contextlib
import time

import torch

from bench.compose import compose


def overrides_for(model: str, steps: int, device: str, batch: int, block: int, precision: str) -> list[str]:
    return [
        f"model={model}", f"data.batch_size={batch}", f"data.block_size={block}", "data.val_samples=64",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={10 * steps}", "trainer.limit_val_batches=0",
        f"trainer.accelerator={device}", f"trainer.precision={precision}", "logger=csv",
        "~callbacks.checkpointing", "+callbacks.step_timer._target_=bench.timing.StepTimer",
        "+callbacks.step_timer.warmup=3", "trainer.enable_model_summary=false",
    ]


def trainer_ms_per_step(overrides: list[str], runs_root: str, stat: str = "mean") -> tuple[float, float]:
    from bench import timing
    from lm_lightning.run.session import train

    cfg = compose([*overrides, f"paths.runs_root={runs_root}"])
    with contextlib.redirect_stdout(None):
        train(cfg)
    t = timing.RESULTS["step_timer"]
    return (t.median_ms if stat == "median" else t.ms_per_step), t.data_wait_fraction


def plain_ms_per_step(overrides: list[str], warmup: int = 3, stat: str = "mean") -> float:
    """Mean ms per step over steps [warmup, end); ``stat="median"``: the median step-to-step
    time instead, which shrugs off a shared machine's stalls (CPU only: on a GPU the steps
    are asynchronous and only the mean is meaningful)."""
    from hydra.utils import instantiate

    from lm_lightning.lit.module import LMModule
    from lm_lightning.lit.objectives import multi_task_loss
    from lm_lightning.optim.build import build_optimizer
    from lm_lightning.run.plan import prepare

    cfg = compose(overrides)
    checked = prepare(cfg)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
    dm = checked.datamodule
    module = LMModule(checked.model_cfg, {k: v for k, v in cfg.loss.weights.items() if k in dm.objectives}).to(device)
    opt = build_optimizer(instantiate(cfg.optimizer), module, device)
    sched = instantiate(cfg.scheduler)(opt, total_steps=cfg.trainer.max_steps)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(checked.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype is torch.float16)
    loader = iter(dm.train_dataloader())
    steps = cfg.trainer.max_steps
    t0 = None
    ends: list[float] = []
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        batch = next(loader)
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss, _ = multi_task_loss(module(batch), batch, module.loss_weights)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if t0 is not None:
            ends.append(time.perf_counter())
    if device.type == "cuda":
        torch.cuda.synchronize()
    if stat == "median":
        gaps = sorted(b - a for a, b in zip(ends, ends[1:]))
        return 1000.0 * gaps[len(gaps) // 2]
    return 1000.0 * (time.perf_counter() - t0) / (steps - warmup)


def measure(model: str, steps: int, device: str = "cpu", batch: int = 64, block: int = 64,
            precision: str = "32-true", repeats: int = 2, runs_root: str = "/tmp/lm_bench") -> dict:
    """Alternate plain and trainer runs; report the median ms/step of each and the ratio."""
    ov = overrides_for(model, steps, device, batch, block, precision)
    plain, ours = [], []
    for _ in range(repeats):
        plain.append(plain_ms_per_step(ov))
        ours.append(trainer_ms_per_step(ov, runs_root)[0])
    plain.sort()
    ours.sort()
    p, o = plain[len(plain) // 2], ours[len(ours) // 2]
    return {"model": model, "device": device, "batch": batch, "block": block, "precision": precision,
            "steps": steps, "plain_ms": p, "trainer_ms": o, "ratio": o / p}


def framework_tax(steps: int = 300, repeats: int = 5, runs_root: str = "/tmp/lm_bench") -> dict:
    """The trainer's own per-step cost in ms: a model so small (model=tiny, batch 4 x 16) that a
    step is almost all Python, so the difference between the trainer and the plain loop is what
    Lightning, our callbacks and logging add to every step. One thread, medians of per-step
    times, both sides alternated; this is the cost that decides the GPU ratio for small models,
    whose steps are CPU-bound."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ov = overrides_for("tiny", steps, "cpu", 4, 16, "32-true")
        plain, ours = [], []
        for _ in range(repeats):
            plain.append(plain_ms_per_step(ov, stat="median"))
            ours.append(trainer_ms_per_step(ov, runs_root, stat="median")[0])
    finally:
        torch.set_num_threads(threads)
    p, o = sorted(plain)[len(plain) // 2], sorted(ours)[len(ours) // 2]
    return {"plain_ms": p, "trainer_ms": o, "tax_ms": o - p, "steps": steps, "repeats": repeats}


def optimizer_step_ms(model: str = "small", repeats: int = 50) -> dict:
    """One AdamW step over a model preset's parameters with the three PyTorch implementations
    (per-tensor loop, foreach, fused), same groups and random gradients, on the CPU."""
    from hydra.utils import instantiate

    from lm_lightning.lit.module import LMModule
    from lm_lightning.optim.build import build_optimizer
    from lm_lightning.run.plan import prepare

    cfg = compose([f"model={model}"])
    checked = prepare(cfg)
    module = LMModule(checked.model_cfg, {k: v for k, v in cfg.loss.weights.items() if k in checked.datamodule.objectives})
    params = [p for p in module.parameters() if p.requires_grad]
    out = {"model": model, "params": sum(p.numel() for p in params)}
    for name, kw in (("single_tensor", {"foreach": False, "fused": False}), ("foreach", {"foreach": True, "fused": False}),
                     ("fused", {"fused": True})):
        for p in params:
            p.grad = torch.randn_like(p)
        factory = instantiate(cfg.optimizer)
        factory.keywords.update(kw)
        opt = build_optimizer(factory, module, torch.device("cpu"))
        for _ in range(5):
            opt.step()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        out[f"{name}_ms"] = 1000.0 * sorted(times)[len(times) // 2]
    return out
