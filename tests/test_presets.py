"""Hardware and debug presets: what each sets, and that the debug presets do what they say."""

from __future__ import annotations

import csv

import pytest
import torch
from exp_helpers import TINY, compose

from lm_lightning.errors import UserError
from lm_lightning.run.plan import prepare
from lm_lightning.run.session import train

HARDWARE = {
    # preset: (accelerator, precision, micro-batch, accumulation, workers)
    "cpu": ("cpu", "32-true", 4, 16, 2),
    "gtx1660": ("gpu", "16-mixed", 16, 4, 4),
    "rtx3060": ("gpu", "bf16-mixed", 32, 2, 8),
    "a100": ("gpu", "bf16-mixed", 64, 1, 8),
    "h100": ("gpu", "bf16-mixed", 64, 1, 16),
}


@pytest.mark.parametrize("preset", sorted(HARDWARE))
def test_hardware_preset_sets_precision_batch_accumulation_workers(preset):
    cfg = compose(["model=small", f"trainer={preset}"])
    accelerator, precision, batch, accum, workers = HARDWARE[preset]
    assert cfg.trainer.accelerator == accelerator
    assert cfg.trainer.precision == precision
    assert cfg.data.batch_size == batch and cfg.trainer.accumulate_grad_batches == accum
    assert cfg.data.num_workers == workers
    assert batch * accum == 64, "every preset keeps the effective batch"
    # The rest of the trainer comes from trainer/default.yaml, and command-line values still win.
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer" and cfg.trainer.gradient_clip_val == 1.0
    assert compose([f"trainer={preset}", "data.batch_size=3"]).data.batch_size == 3
    if accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is available on this machine; use trainer=cpu"):
            prepare(cfg)


def test_documented_gpu_form_exits_2_with_hint_on_cpu(monkeypatch, capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from exp_helpers import run_main

    with pytest.raises(SystemExit) as info:
        run_main(monkeypatch, ["model=small", "trainer=rtx3060", f"paths.runs_root={tmp_path}/o"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "trainer=cpu" in err[0]
    assert not (tmp_path / "o").exists()


def _train_log(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_overfit_preset_drives_training_loss_near_zero(tmp_path):
    # One Collatz sequence: its parity prefix determines every next bit, so the loss can reach ~0
    # (with several sequences a shared prefix leaves irreducible uncertainty).
    cfg = compose(["debug=overfit", *TINY, "data.batch_size=1", "data.block_size=32", "trainer.max_steps=100",
                   "optimizer.lr=1e-2", "scheduler.warmup_steps=5", "logger=csv", "callbacks=none",
                   f"paths.runs_root={tmp_path}", "run_name=overfit"])
    assert cfg.trainer.overfit_batches == 1
    summary = train(cfg)
    assert summary["global_step"] == 100
    losses = [float(r["train/loss"]) for r in _train_log(tmp_path / "overfit") if r.get("train/loss")]
    assert losses[0] > 0.3, losses
    assert losses[-1] < 0.05, losses


def test_limit_preset_caps_batches(tmp_path):
    cfg = compose(["debug=limit", *TINY, "logger=csv", "callbacks=none", f"paths.runs_root={tmp_path}", "run_name=lim"])
    summary = train(cfg)
    assert summary["status"] == "finished"
    assert summary["global_step"] == 20  # limit_train_batches=20, one epoch
    assert "val/loss" in summary["metrics"]


def test_profiler_preset_writes_a_report(tmp_path):
    cfg = compose(["debug=profiler", *TINY, "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=none",
                   "callbacks=none", f"paths.runs_root={tmp_path}", "run_name=prof"])
    train(cfg)
    reports = list((tmp_path / "prof").glob("*profile*.txt"))
    assert reports, list((tmp_path / "prof").iterdir())
    assert "run_training_batch" in reports[0].read_text()


def test_fdr_preset_is_fast_dev_run():
    assert compose(["debug=fdr"]).trainer.fast_dev_run is True
