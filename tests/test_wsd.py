"""scheduler=wsd: warmup, a constant stage, then decay over the last decay_fraction of the steps."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate
from test_control import fit_to_time_for_four_steps

from lm_lightning.cli.train import precheck
from lm_lightning.optim.schedules import WarmupStableDecay, wsd
from lm_lightning.run.session import scheduler_factory

# warmup 10, 100 steps, the last 20 % decay: steps 0-9 warm up, 10-79 are constant, 80-100 decay.
LEFT_AT_90 = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - math.sqrt(0.5)}


def lrs(shape: str, total: int = 100, **kw) -> list[float]:
    """The lr at every step 0..total (lr=1 so the lr is the factor), as LambdaLR applies it."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = wsd(opt, total_steps=total, warmup_steps=10, shape=shape, **kw)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("shape", sorted(LEFT_AT_90))
def test_lr_at_warmup_stable_decay_and_end(shape):
    lr = lrs(shape, min_lr_ratio=0.1)
    assert lr[0] == pytest.approx(1 / 11) and lr[9] == pytest.approx(10 / 11)
    assert lr[10] == lr[50] == lr[79] == lr[80] == 1.0  # warmup end, stable stage, decay start
    assert lr[81] < 1.0
    assert lr[90] == pytest.approx(0.1 + 0.9 * LEFT_AT_90[shape])
    assert lr[100] == pytest.approx(0.1)
    assert lr[80:] == sorted(lr[80:], reverse=True)
    assert WarmupStableDecay(10, 100, 0.0, shape=shape)(150) == pytest.approx(0.0)  # stays at the floor


def test_decay_fraction_one_and_absolute_min_lr():
    # decay_fraction=1: the decay starts right after the warmup (a warmup-then-decay schedule).
    fn = WarmupStableDecay(10, 100, 0.0, decay_fraction=1.0, shape="linear")
    assert fn.decay_start == 10 and fn(10) == 1.0 and fn(55) == pytest.approx(0.5)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.5)
    with pytest.raises(ValueError, match="min_lr"):
        wsd(opt, total_steps=10, min_lr=1.0)
    assert wsd(opt, total_steps=10, min_lr=0.05).lr_lambdas[0].floor == pytest.approx(0.1)


def test_preset_scales_both_muon_groups_and_state_round_trips():
    cfg = compose(["optimizer=muon", "scheduler=wsd", "scheduler.warmup_steps=2", "scheduler.shape=1-sqrt",
                   "scheduler.min_lr_ratio=0.1"])
    from lm_lightning.model import GPT, ModelConfig
    from lm_lightning.optim.build import build_optimizer

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=8, block_size=8))
    opt = build_optimizer(instantiate(cfg.optimizer), model, torch.device("cpu"))
    sched = scheduler_factory(cfg)(opt, total_steps=10)
    for step in range(10):
        factors = {g["optimizer"]: g["lr"] / g["initial_lr"] for g in opt.param_groups}
        assert factors["adamw"] == pytest.approx(factors["muon"]) == pytest.approx(sched.lr_lambdas[0](step))
        opt.step()
        sched.step()
    by = {g["optimizer"]: g["lr"] for g in opt.param_groups}
    assert by["adamw"] == pytest.approx(0.1 * cfg.optimizer.lr) and by["muon"] == pytest.approx(0.1 * cfg.optimizer.muon_lr)
    # LambdaLR keeps the callable's attributes in its state dict: a resized schedule resumes resized.
    fn = sched.lr_lambdas[0]
    fn.total_steps, fn.fitted = 40, True
    state = pickle.loads(pickle.dumps(sched.state_dict()))
    fresh = scheduler_factory(cfg)(build_optimizer(instantiate(cfg.optimizer), model, torch.device("cpu")),
                                   total_steps=10)
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0].total_steps == 40 and fresh.lr_lambdas[0].decay_start == 32
    assert fresh.lr_lambdas[0].fitted and fresh.lr_lambdas[0].shape == "1-sqrt"


def test_fit_to_time_moves_the_decay_start(monkeypatch, caplog):
    """As for the cosine: throughput measured in warmup resizes total_steps, keeping the warmup;
    the decay then starts decay_fraction before the time budget runs out."""

    caplog.set_level("INFO", logger="lm_lightning")
    fn = WarmupStableDecay(warmup_steps=4, total_steps=1000, floor=0.0, decay_fraction=0.2, shape="cosine")
    assert fn.decay_start == 800
    fit_to_time_for_four_steps(monkeypatch, fn)
    # At step 4, 96 s remain at 1 s/step: the run ends at step 100, the decay starts at 80.
    assert (fn.total_steps, fn.warmup_steps, fn.decay_start) == (100, 4, 80) and fn.fitted
    assert fn(79) == 1.0 and fn(80) == 1.0 and fn(90) == pytest.approx(0.5) and fn(100) == pytest.approx(0.0)
    assert "the schedule now ends at step 100, its decay starts at step 80" in caplog.text


@pytest.mark.parametrize("override, message", [
    ("scheduler.decay_fraction=0", "scheduler.decay_fraction must be in (0, 1], got 0"),
    ("scheduler.decay_fraction=1.5", "scheduler.decay_fraction must be in (0, 1], got 1.5"),
    ("scheduler.shape=sqrt", "scheduler.shape must be one of linear, cosine, 1-sqrt, got 'sqrt'"),
])
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exc:
        precheck(["model=tiny", "trainer=debug", "logger=none", f"paths.runs_root={tmp_path}", "run_name=x",
                  "scheduler=wsd", override])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == f"error: {message}"
    assert not (tmp_path / "x").exists()
