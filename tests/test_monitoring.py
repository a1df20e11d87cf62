"""Monitoring: gradient norms, the guides' metric names, plots, and the W&B logger's mode."""

from __future__ import annotations

import csv

import pytest
from reliability_helpers import compose, train_run

from lm_lightning.callbacks.monitoring import layer_of
from lm_lightning.loggers.wandb_logger import wandb_mode


@pytest.mark.slow
def test_metrics_and_plots(tmp_path):
    train_run(tmp_path, ["trainer.max_steps=6", "logger=csv", "trainer.log_every_n_steps=2",
                         "trainer.val_check_interval=3", "callbacks.monitoring.per_layer_every=2",
                         "callbacks.monitoring.plots=true"], run_name="m")
    run = tmp_path / "m"
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    for name in ("train/loss", "train/learning_rate", "train/tokens_per_sec", "train/iter_time_ms",
                 "train/grad_norm", "grad_norm/h.0", "grad_norm/h.1", "grad_norm/wte",
                 "val/loss", "eval/val_loss", "final/val_loss"):
        assert name in logged, name
    assert "train/mfu" not in logged  # no known peak on a CPU
    final = [float(r["final/val_loss"]) for r in rows if r.get("final/val_loss")]
    evals = [float(r["eval/val_loss"]) for r in rows if r.get("eval/val_loss")]
    assert final == [evals[-1]] and len(evals) == 2
    for png in ("loss_curve.png", "gradient_flow.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # A resumed run appends to metrics.csv (Lightning's CSVLogger would delete it).
    train_run(tmp_path, ["trainer.max_steps=8", "logger=csv", "trainer.log_every_n_steps=2"], run_name="m")
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # the interrupted run's rows are kept, and the resumed run logs at the steps an
    # uninterrupted one would (Lightning's stepped-batch count is corrected in the checkpoint)
    loss_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert loss_steps == [1, 3, 5, 7]


def test_layer_grouping():
    assert layer_of("model.h.3.attn.c_attn.weight") == "h.3"
    assert layer_of("model._orig_mod.h.0.mlp.c_fc.weight") == "h.0"
    assert layer_of("model.wte.weight") == "wte"
    assert layer_of("regression_head.bias") == "regression_head"


def test_wandb_is_offline_without_a_key_and_honours_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"


def test_wandb_logger_config_builds_an_offline_logger(monkeypatch, tmp_path):
    from hydra.utils import instantiate

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(tmp_path, ["logger=wandb"], run_name="w")
    logger = instantiate(cfg.logger.wandb)  # the wandb run itself starts lazily, on first log
    assert type(logger).__name__ == "WandbLogger"
    assert logger._offline and logger._wandb_init["name"] == "w"


@pytest.mark.slow
def test_train_metrics_reach_lightning_only_at_log_steps_and_are_never_stale(tmp_path, monkeypatch):
    # self.log costs ~0.6 ms of Python per call in Lightning 2.6, so the module logs only at the
    # batches Lightning's loggers write, and each written value is that very step's loss.
    from reliability_helpers import read_losses

    from lm_lightning.lit.module import LMModule

    calls = []
    real_log = LMModule.log
    monkeypatch.setattr(LMModule, "log", lambda self, name, *a, **k: (calls.append(name), real_log(self, name, *a, **k)))
    train_run(tmp_path, ["trainer.max_steps=10", "logger=csv", "trainer.log_every_n_steps=5",
                         "trainer.val_check_interval=100", "trainer.limit_val_batches=0",
                         "+callbacks.rec._target_=reliability_helpers.LossRecorder",
                         f"+callbacks.rec.path={tmp_path / 'losses.jsonl'}"], run_name="l")
    assert calls.count("train/loss") == 2
    per_step = {step: float.fromhex(h) for step, h in read_losses(tmp_path / "losses.jsonl")}
    with open(tmp_path / "l" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    # CSV `step` is the batch index; the recorder keys by global_step after that batch's update.
    assert [int(r["step"]) for r in rows] == [4, 9]
    for r in rows:
        assert float(r["train/loss"]) == pytest.approx(per_step[int(r["step"]) + 1], rel=1e-6)
