"""The anomaly guard: non-finite steps skipped or stopped, spikes, Collatz data anomalies."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from reliability_helpers import train_run

from lm_lightning.callbacks.anomaly import AnomalyGuard
from lm_lightning.loading import load_checkpoint, read_checkpoint

POISON = "+callbacks.poison._target_=reliability_helpers.PoisonGrads"


def finite(path) -> bool:
    model = load_checkpoint(path).model
    return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_skip_policy_skips_the_step_and_stops_after_n_in_a_row(tmp_path):
    # Bad at global_step 1 (alone: skipped, counted, training goes on), then from 4 on: with
    # max_consecutive 3, the skips at 4, 5, 6 stop the run at step 7 with finite weights.
    s = train_run(tmp_path, [POISON, "+callbacks.poison.steps=[1,4,5,6,7,8,9]", "trainer.max_steps=20",
                             "callbacks.anomaly.max_consecutive=3"], run_name="skip")
    assert (s["status"], s["stop_reason"], s["global_step"]) == ("stopped", "anomaly", 7)
    assert read_checkpoint(s["last_checkpoint"])["callbacks"]["AnomalyGuard"]["skipped"] == 4
    assert finite(s["last_checkpoint"])
    # Without the guard the NaN reaches the weights; the checkpoint callback then refuses every
    # save, so last.ckpt stays the step-2 state instead of being overwritten with NaNs.
    off = train_run(tmp_path, [POISON, "+callbacks.poison.steps=[3]", "trainer.max_steps=6",
                               "callbacks.anomaly.policy=off", "callbacks.checkpointing.every_n_steps=2"],
                    run_name="off")
    assert read_checkpoint(off["last_checkpoint"])["global_step"] == 2 and finite(off["last_checkpoint"])
    assert off["final_model"] is None


@pytest.mark.slow
def test_stop_policy_writes_a_diagnostic_and_keeps_good_weights(tmp_path):
    s = train_run(tmp_path, [POISON, "+callbacks.poison.steps=[4]", "trainer.max_steps=20",
                             "callbacks.anomaly.policy=stop", "callbacks.checkpointing.every_n_steps=2"],
                  run_name="stop")
    assert (s["status"], s["stop_reason"]) == ("stopped", "anomaly")
    diag = json.loads((tmp_path / "stop" / "anomaly-step4.json").read_text())
    assert diag["kind"] == "non_finite" and diag["bad_grads"] and "params" in diag
    assert finite(s["last_checkpoint"])
    assert finite(Path(s["last_checkpoint"]).parent / "step-4.ckpt")


def test_loss_spikes_are_logged(caplog):
    guard = AnomalyGuard(spike_factor=5.0, spike_window=20)
    logged = []
    trainer = types.SimpleNamespace(is_global_zero=True, callbacks=[],
                                    lightning_module=types.SimpleNamespace(log=lambda k, v: logged.append((k, v))))
    for step in range(15):
        guard._check_spike(trainer, step, 1.0 + 0.01 * step)
    guard._check_spike(trainer, 15, 50.0)
    assert guard.spikes == 1 and guard.events[-1]["kind"] == "loss_spike"
    assert "loss spike at step 15" in caplog.text
    assert logged == [("anomaly/loss_spikes", 1.0)]


@pytest.mark.slow
def test_collatz_data_anomalies_reach_the_guard(tmp_path):
    # A trajectory step cap of 20 makes most numbers anomalies (step_cap): they must arrive here.
    s = train_run(tmp_path, ["data.max_steps=20", "trainer.max_steps=2"], run_name="data")
    assert s["status"] == "finished"
    lines = (tmp_path / "data" / "data_anomalies.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["kind"] == "step_cap" and int(first["n"]) > 1 and first["step"] == 0
    state = read_checkpoint(s["last_checkpoint"])["callbacks"]["AnomalyGuard"]
    assert state["data_anomalies"] == len(lines)
