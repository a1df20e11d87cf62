"""Control while it runs: stdin commands, signals, time limits, early stopping, fit_to_time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
from reliability_helpers import finish, spawn_train, train_run, wait_for

from lm_lightning.callbacks.control import RunControl, parse_time, time_limit_s
from lm_lightning.optim.schedules import WarmupCosine

ARGS = ["model=tiny", "trainer=debug", "logger=none", "callbacks.monitoring.plots=false", "data.batch_size=8",
        "data.block_size=32", "data.val_samples=16", "trainer.val_check_interval=100000",
        "callbacks.checkpointing.every_n_steps=3", "callbacks.checkpointing.final_model=false"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_commands_and_signals_in_a_real_process(tmp_path):
    """stdin status/stop through a pipe, SIGUSR1, then SIGTERM (143) and SIGINT (130) on resumed runs."""
    run = tmp_path / "ctl"
    args = [*ARGS, f"paths.runs_root={tmp_path}", "run_name=ctl", "trainer.max_steps=100000"]
    seen: list[str] = []

    proc = spawn_train(args)
    proc.stdin.write("status\n")  # read by the background thread, answered at the next step
    proc.stdin.flush()
    wait_for(proc, "status: step", seen)
    proc.send_signal(signal.SIGUSR1)
    assert "eta" in wait_for(proc, "status: step", seen)
    proc.stdin.write("stop\n")
    proc.stdin.close()
    assert finish(proc, seen) == 0, "".join(seen)[-2000:]
    first = summary(run)
    assert (first["status"], first["stop_reason"]) == ("stopped", "stop")
    step = first["global_step"]
    assert (run / "checkpoints" / f"step-{step}.ckpt").is_file()
    assert os.path.samefile(first["last_checkpoint"], run / "checkpoints" / f"step-{step}.ckpt")

    # Rerunning the same command resumes; stdin closed (like CI or nohup) must not hang or spin.
    for sig, code, name in ((signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")):
        seen = []
        proc = spawn_train(args, stdin=subprocess.DEVNULL)
        wait_for(proc, f"Resumed from step {step} (", seen)
        wait_for(proc, "SIGUSR1: status", seen)
        proc.send_signal(sig)
        assert finish(proc, seen) == code, "".join(seen)[-2000:]
        result = summary(run)
        assert (result["status"], result["stop_reason"], result["exit_code"]) == ("stopped", name, code)
        assert result["global_step"] > step
        step = result["global_step"]
        assert (run / "checkpoints" / f"step-{step}.ckpt").is_file()


def test_closed_stdin_ends_the_reader(monkeypatch):
    control = RunControl()
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        control._start_stdin_reader()
        assert control._thread is not None
        control._thread.join(5)
        assert not control._thread.is_alive()  # EOF ends the thread: no busy loop
    r, w = os.pipe()
    with os.fdopen(r) as rf, os.fdopen(w, "w") as wf:
        monkeypatch.setattr(sys, "stdin", rf)
        control = RunControl()
        control._start_stdin_reader()
        wf.write("status\nbogus\nstop\n")
        wf.flush()
        wf.close()
        control._thread.join(5)
    assert control._pending == "stop" and control._status_requested


def test_time_limit_parsing():
    assert parse_time("00:01:30:00") == 5400
    assert parse_time({"hours": 1, "minutes": 30}) == 5400
    assert time_limit_s("00:02:00:00", 1.5) == 5400  # the tighter of the two
    assert time_limit_s(None, None) is None
    with pytest.raises(ValueError):
        parse_time("90 minutes")


@pytest.mark.slow
def test_time_limit_checkpoints_and_resume_carries_on(tmp_path, capsys):
    first = train_run(tmp_path, ["trainer.max_steps=100000", "trainer.max_time=00:00:00:02",
                                 "trainer.val_check_interval=4"], run_name="t")
    assert (first["status"], first["stop_reason"], first["exit_code"]) == ("time_limit", "time_limit", 0)
    out = capsys.readouterr().out
    assert "elapsed" in out and "left of 0:00:02" in out  # printed at each validation
    step = first["global_step"]
    assert Path(first["last_checkpoint"]).is_file()
    second = train_run(tmp_path, [f"trainer.max_steps={step + 3}", "trainer.val_check_interval=4"], run_name="t")
    assert second["status"] == "finished" and second["global_step"] == step + 3


@pytest.mark.slow
def test_early_stopping_target_and_patience(tmp_path):
    target = train_run(tmp_path, ["early_stopping.stop_at=100.0", "trainer.val_check_interval=2"], run_name="a")
    assert (target["status"], target["stop_reason"], target["global_step"]) == ("stopped", "target_reached", 2)
    # min_delta larger than any improvement: the first validation sets the best, the next ones
    # do not improve it, and patience 1 stops at the second.
    patience = train_run(tmp_path, ["early_stopping.patience=1", "early_stopping.min_delta=100",
                                    "trainer.val_check_interval=2"], run_name="b")
    assert (patience["status"], patience["stop_reason"], patience["global_step"]) == \
        ("stopped", "early_stopping", 4)
    assert Path(patience["last_checkpoint"]).is_file()


def fit_to_time_for_four_steps(monkeypatch, fn) -> None:
    """RunControl with a 100 s budget and fit_to_time, 4 steps at 1 s each, on schedule ``fn``."""
    import lm_lightning.callbacks.control as control_mod

    trainer = types.SimpleNamespace(
        lr_scheduler_configs=[types.SimpleNamespace(scheduler=types.SimpleNamespace(lr_lambdas=[fn]))],
        global_step=0, max_steps=1000, is_global_zero=True)
    clock = {"t": 0.0}
    monkeypatch.setattr(control_mod.time, "monotonic", lambda: clock["t"])
    control = RunControl(max_time="00:00:01:40", fit_to_time=True)  # 100 s
    control._start, control._start_step = 0.0, 0
    for step in range(1, 5):  # 1 s per step; the first step is not timed
        clock["t"], trainer.global_step = float(step), step
        control._maybe_fit_schedule(trainer)


def test_fit_to_time_resizes_the_cosine(monkeypatch):
    """Throughput measured in warmup sizes the schedule to end at the time limit."""

    fn = WarmupCosine(warmup_steps=4, total_steps=1000, floor=0.1)
    fit_to_time_for_four_steps(monkeypatch, fn)
    # at step 4 (end of warmup), 96 s remain at 1 s/step: the decay ends at step 100
    assert fn.total_steps == 100 and fn.fitted
    assert fn(100) == pytest.approx(0.1)
