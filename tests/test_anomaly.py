"""The anomaly guard: non-finite steps skipped or stopped, spikes, Collatz data anomalies."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from reliability_helpers import train_run

from lm_lightning.callbacks.anomaly import AnomalyGuard
from lm_lightning.ckpt.load import load_checkpoint
from lm_lightning.ckpt.read import read_checkpoint

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


@pytest.mark.slow
def test_fused_adamw_skips_on_the_device_and_the_host_reads_only_at_checks(tmp_path, monkeypatch):
    # The default optimizer is fused AdamW, so a bad step is skipped by the kernel itself
    # (found_inf) and the guard brings its flags to the host every check_every_n_steps only.
    reads = []
    real_read = AnomalyGuard._read

    def counting_read(self, trainer, *a, **k):
        if self._pending:
            reads.append(trainer.global_step)
        return real_read(self, trainer, *a, **k)

    monkeypatch.setattr(AnomalyGuard, "_read", counting_read)
    s = train_run(tmp_path, [POISON, "+callbacks.poison.steps=[2,3]", "trainer.max_steps=12",
                             "callbacks.anomaly.check_every_n_steps=5", "callbacks.checkpointing.every_n_steps=6"],
                  run_name="dev")
    assert s["status"] == "finished" and s["global_step"] == 12
    # Steps 0-4 are read at step 4, then the checkpoint at global_step 6 reads what is pending
    # (so the skip count it saves is right), then steps 6-9 at step 9 and the last two at 11:
    # 4 reads in 12 steps instead of 12.
    assert reads == [4, 6, 9, 11]
    ckpt = read_checkpoint(s["last_checkpoint"])
    assert ckpt["callbacks"]["AnomalyGuard"]["skipped"] == 2
    # Two of the 12 steps never happened for the optimizer: no update, no moment, no step count.
    steps = {float(st["step"]) for st in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {10.0}
    assert finite(s["last_checkpoint"])


def test_device_skip_leaves_parameters_moments_and_step_count_untouched():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    guard = AnomalyGuard(check_every_n_steps=100)
    trainer = types.SimpleNamespace(precision_plugin=None, global_step=0, max_steps=1000, is_global_zero=True,
                                    accumulate_grad_batches=1, optimizers=[opt], callbacks=[])
    module = types.SimpleNamespace(grad_norm=lambda: torch.linalg.vector_norm(p.grad))

    def step(grad: float) -> None:
        p.grad = torch.full((3,), grad)
        guard.on_before_backward(trainer, module, torch.tensor(1.0))
        guard.on_before_optimizer_step(trainer, module, opt)
        opt.step()
        guard.on_train_batch_end(trainer, module, None, None, 0)
        trainer.global_step += 1

    step(1.0)
    state = {k: v.clone() for k, v in opt.state[p].items()}
    before = p.detach().clone()
    step(float("nan"))
    assert torch.equal(p.detach(), before) and all(torch.equal(opt.state[p][k], v) for k, v in state.items())
    assert guard.skipped == 0 and len(guard._pending) == 2  # not read yet: no sync was made
    assert "found_inf" not in opt.__dict__  # cleared after the step, so it cannot skip a later one
    step(1.0)
    assert float(opt.state[p]["step"]) == 2.0 and not torch.equal(p.detach(), before)
    guard._read(trainer, module, None, current_step=None)
    assert guard.skipped == 1 and guard.events[-1]["step"] == 1
