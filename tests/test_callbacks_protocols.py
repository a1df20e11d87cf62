"""The written contracts between the parts (callbacks/protocols.py): each part that relies on
another finds it by its contract, so every part named there must keep fulfilling it. No fits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lm_lightning.callbacks import protocols
from lm_lightning.callbacks.alerts import Alerts, announce
from lm_lightning.callbacks.anomaly import AnomalyGuard
from lm_lightning.callbacks.checkpointing import Checkpointing
from lm_lightning.callbacks.control import RunControl, run_outcome
from lm_lightning.callbacks.early_stop import EarlyStop
from lm_lightning.callbacks.progress import horizon_text
from lm_lightning.lit.module import LMModule
from lm_lightning.model import ModelConfig
from lm_lightning.optim.schedules import WarmupConstant, WarmupCosine, WarmupLinear, WarmupStableDecay


def test_each_part_fulfils_its_contracts(tmp_path):
    control = RunControl(stdin=False, signals=False)
    assert isinstance(Checkpointing(dirpath=str(tmp_path)), protocols.SavesNow)
    for stopper in (control, EarlyStop(), AnomalyGuard()):
        assert isinstance(stopper, protocols.StopsRun) and stopper.reason is None
    for listener in (AnomalyGuard(), Alerts()):
        assert isinstance(listener, protocols.DataAnomalyListener)
    assert isinstance(Alerts(), protocols.RunEventListener)
    assert not isinstance(control, protocols.SavesNow | protocols.DataAnomalyListener | protocols.RunEventListener)
    cfg = ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)
    module = LMModule(model=cfg, loss_weights={"next_token": 1.0})
    for contract in (protocols.GradNormSource, protocols.CountsFlops, protocols.WeighsObjectives):
        assert isinstance(module, contract)
    assert module.flops_per_token() == module.model.flops_per_token()
    assert not isinstance(torch.nn.Linear(2, 2), protocols.GradNormSource | protocols.CountsFlops)


@pytest.mark.parametrize("fn", [WarmupCosine(10, 100, 0.1), WarmupLinear(10, 100, 0.0), WarmupConstant(10, 100, 1.0),
                                WarmupStableDecay(10, 100, 0.0)])
def test_every_schedule_can_be_resized(fn):
    assert isinstance(fn, protocols.ResizableSchedule) and not fn.fitted
    fn.resize(50)
    assert fn.total_steps == 50 and fn.fitted
    fn.resize(3)  # never before the warmup has ended
    assert fn.total_steps == 11


def test_contract_lookups():
    """A stop reason becomes the outcome; events reach only the listeners; the schedules behind
    LambdaLR are found, a plateau scheduler (no multiplier) is passed over."""
    seen = []
    alerts = Alerts(notifier=SimpleNamespace(send=seen.append))
    trainer = SimpleNamespace(callbacks=[RunControl(stdin=False, signals=False), alerts], is_global_zero=True)
    announce(trainer, "stop", "stopped at step 3")
    assert seen == ["stopped at step 3"]
    assert protocols.listeners(trainer, protocols.RunEventListener) == [alerts]
    assert protocols.listeners(None, protocols.RunEventListener) == []
    trainer.callbacks[0].reason = "time_limit"
    assert run_outcome(trainer) == ("time_limit", "time_limit", 0)
    assert set(protocols.STOP_OUTCOMES) == set(protocols.StopReason.__args__)
    fn = WarmupCosine(5, 100, 0.1)
    sched = SimpleNamespace(scheduler=SimpleNamespace(lr_lambdas=[fn]))
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=object()), sched], max_steps=100,
                              accumulate_grad_batches=1, num_training_batches=10)
    assert protocols.schedules(trainer) == [fn]
    assert horizon_text(trainer) == "max steps 100; lr warmup 5 steps = 5% of the run"
