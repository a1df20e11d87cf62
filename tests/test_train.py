"""End to end: the Hydra app trains, writes its run directory, sweeps, and rejects user errors."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, run_train

from lm_lightning.run.session import train

FAST = ["model=tiny", "trainer=debug", "data.batch_size=16", "data.block_size=32", "data.val_samples=64"]


def test_fast_dev_run_in_process(make_cfg):
    cfg = make_cfg(*FAST, "trainer.fast_dev_run=true", "run_name=fdr")
    summary = train(cfg)
    assert summary["status"] == "finished"
    assert summary["global_step"] == 1


@pytest.mark.parametrize("value, expected", [("true", {}), ("max-autotune", {"mode": "max-autotune"})])
def test_model_compile_compiles_forward_and_loss_with_the_mode(make_cfg, monkeypatch, value, expected):
    # torch.compile itself (inductor) is too slow for the suite: record the call, run eagerly.
    import torch

    calls = []

    def fake_compile(fn, **kwargs):
        calls.append((fn.__name__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    summary = train(make_cfg(*FAST, "trainer.fast_dev_run=true", f"model.compile={value}", f"run_name=c{len(value)}"))
    assert summary["status"] == "finished"
    assert calls == [("_forward_loss", expected)]


def test_short_run_writes_run_directory(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, "run_name=short")
    summary = train(cfg)
    run = tmp_path / "outputs" / "short"
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("status", "global_step", "best_checkpoint", "last_checkpoint", "metrics", "elapsed_s",
                "samples_per_s", "tokens_per_s"):
        assert key in on_disk, key
    assert on_disk["status"] == "finished" and on_disk["global_step"] == 20
    assert on_disk["samples_per_s"] > 0
    for name in ("val/loss", "val/next_token", "val/stopping_time", "val/next_token_acc", "val/stopping_time_mae"):
        assert name in on_disk["metrics"], name
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "train.log").is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    from pathlib import Path

    assert Path(on_disk["best_checkpoint"]).is_file() and Path(on_disk["last_checkpoint"]).is_file()
    # The checkpoint carries the resolved config and loads with weights_only.
    from lm_lightning.ckpt.load import load_checkpoint

    loaded = load_checkpoint(on_disk["last_checkpoint"])
    assert loaded.config["model"]["n_layer"] == 2
    assert loaded.model.config.vocab_size == 4


@pytest.mark.slow
def test_collatz_model_beats_baselines(make_cfg, capsys):
    cfg = make_cfg("model=tiny", "trainer=debug", "trainer.max_steps=150", "trainer.val_check_interval=150",
                   "trainer.limit_val_batches=null", "data.batch_size=32", "data.block_size=32",
                   "data.val_samples=256", "optimizer.lr=3e-3", "scheduler.warmup_steps=10", "run_name=learn")
    summary = train(cfg)
    from hydra.utils import instantiate

    base = instantiate(cfg.data).baselines()
    m = summary["metrics"]
    assert m["val/next_token"] < base["next_token_unigram"] - 0.05
    assert m["val/stopping_time_mae"] < 0.5 * base["stopping_time_mae_mean"]
    out = capsys.readouterr().out
    assert "final validation metrics" in out and "unigram" in out and "train mean" in out


def _main_exit(monkeypatch, capsys, argv):
    from lm_lightning.cli import train as train_mod

    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    with pytest.raises(SystemExit) as info:
        train_mod.main()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["model=huge"], "Could not find 'model/huge'"),
        (["model.n_head=3"], "divisible by model.n_head"),
        (["trainer=rtx3060"], "use trainer=cpu"),
        (["nonexistent_key=1"], "Could not override"),
        (["optimizer.lr=-0.1"], "optimizer.lr must be positive"),
    ],
)
def test_user_errors_exit_2_with_one_line(monkeypatch, capsys, tmp_path, argv, message):
    code, err = _main_exit(monkeypatch, capsys, [*argv, f"paths.runs_root={tmp_path}/outs", "run_name=x"])
    if "rtx3060" in argv[0]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "outs").exists(), "a user error must not create a run directory"


@pytest.mark.slow
def test_multirun_two_jobs_subprocess(tmp_path):
    proc = run_train(["-m", "optimizer.lr=1e-3,3e-4", *FAST, "trainer.max_steps=4", "trainer.val_check_interval=4",
                      "logger=csv", f"paths.runs_root={tmp_path}", "run_name=sweep"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    lrs = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["global_step"] == 4
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        lrs.add([line for line in overrides.splitlines() if "optimizer.lr" in line][0])
    assert len(lrs) == 2
    # The resolved config tree is printed at the start of each job.
    assert proc.stdout.count("optimized_metric") == 2
