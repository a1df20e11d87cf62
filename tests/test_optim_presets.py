"""Optimizer and scheduler presets and techniques: Lookahead, layer-wise lr decay, freezing,
scheduled dropout, warmup schedules and ReduceLROnPlateau."""

from __future__ import annotations

import pytest
import torch
from exp_helpers import TINY, compose
from hydra.utils import instantiate

from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig
from lm_lightning.optim.build import build_optimizer
from lm_lightning.optim.groups import layer_id, param_groups
from lm_lightning.optim.lookahead import Lookahead
from lm_lightning.optim.schedules import constant, warmup_linear
from lm_lightning.run.plan import prepare
from lm_lightning.run.session import train


def net(n_layer: int = 3) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=n_layer, n_head=2, n_embd=16, vocab_size=8, block_size=8))


def build(*overrides: str, model: torch.nn.Module | None = None):
    cfg = compose(list(overrides))
    return build_optimizer(instantiate(cfg.optimizer), model or net(), torch.device("cpu"))


@pytest.mark.parametrize("preset,cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                        ("sgd", torch.optim.SGD)])
def test_optimizer_presets(preset, cls):
    opt = build(f"optimizer={preset}")
    assert type(opt) is cls
    # Decay on matrices only, whatever the optimizer.
    assert {g["weight_decay"] for g in opt.param_groups} >= {0.0}


def test_lookahead_preset_wraps_adam():
    opt = build("optimizer=lookahead")
    assert isinstance(opt, Lookahead) and type(opt.optimizer) is torch.optim.Adam
    assert (opt.k, opt.alpha) == (5, 0.5)
    assert type(build("optimizer=sgd", "optimizer.lookahead.k=3")) is Lookahead


def test_lookahead_pulls_slow_weights_every_k_steps_and_round_trips():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = Lookahead(torch.optim.SGD([w], lr=0.1), k=2, alpha=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for _ in range(2):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
        sched.step()
    # fast: 1 -> 0.8 -> 0.64; slow: 1 + 0.5 * (0.64 - 1) = 0.82, and the fast weights restart there.
    assert w.item() == pytest.approx(0.82)
    state = opt.state_dict()
    w2 = torch.nn.Parameter(torch.tensor([0.82]))
    opt2 = Lookahead(torch.optim.SGD([w2], lr=0.1), k=2, alpha=0.5)
    opt2.load_state_dict(state)
    assert opt2.fast_steps == 2 and opt2.state[w2]["slow"].item() == pytest.approx(0.82)
    opt2.param_groups[0]["lr"] = 0.01  # a scheduler writes here; the inner optimizer must see it
    assert opt2.optimizer.param_groups[0]["lr"] == 0.01
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(torch.optim.SGD([w], lr=0.1), k=5, alpha=1.5)


def test_layer_decay_scales_lr_from_the_top():
    model = net(n_layer=3)
    groups = param_groups(model, 0.1, layer_decay=0.5, lr=1.0)
    by_layer = {g["layer"]: g["lr"] for g in groups}
    assert by_layer == {0: 0.5 ** 4, 1: 0.5 ** 3, 2: 0.5 ** 2, 3: 0.5, 4: 1.0}
    assert layer_id("model._orig_mod.h.2.attn.c_attn.weight", 3) == 3  # compile prefixes are fine
    opt = build("optimizer.layer_decay=0.5", "optimizer.lr=1e-3", model=net(3))
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * 0.5 ** 4)
    # The cosine floor is relative to the top lr, not to the first (embedding) group.
    sched = instantiate(compose(["scheduler.min_lr=1e-4", "scheduler.warmup_steps=0"]).scheduler)(opt, total_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()
    top = max(opt.param_groups, key=lambda g: g["layer"])
    assert top["lr"] == pytest.approx(1e-4)


def test_freezing_embeddings_and_first_layers(tmp_path):
    model = net(n_layer=3)
    opt = build("optimizer.freeze_embeddings=true", "optimizer.freeze_layers=2", model=model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("wte", "h.0.", "h.1.")) for n in trainable)
    assert any(n.startswith("h.2.") for n in trainable) and "ln_f.weight" in trainable
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    with pytest.raises(UserError, match="freeze_layers must be in"):
        prepare(compose(["model=tiny", "optimizer.freeze_layers=3"]))


def test_frozen_weights_do_not_move_in_training(tmp_path):
    cfg = compose([*TINY, "trainer.max_steps=3", "trainer.val_check_interval=3", "optimizer.freeze_layers=1",
                   "optimizer.freeze_embeddings=true", "logger=none", f"paths.runs_root={tmp_path}", "run_name=fr"])
    summary = train(cfg)
    from lm_lightning.ckpt.load import load_checkpoint

    trained = load_checkpoint(summary["last_checkpoint"]).model.state_dict()
    torch.manual_seed(cfg.seed)
    # Same seed, same init: rebuild the untrained model the run started from.
    import lightning.pytorch as pl

    from lm_lightning.lit.module import LMModule

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    init = LMModule(model=prepare(cfg).model_cfg, loss_weights=dict(cfg.loss.weights)).model.state_dict()
    assert torch.equal(trained["wte.weight"], init["wte.weight"])
    assert torch.equal(trained["h.0.attn.c_attn.weight"], init["h.0.attn.c_attn.weight"])
    assert not torch.equal(trained["h.1.attn.c_attn.weight"], init["h.1.attn.c_attn.weight"])


def test_scheduled_dropout_ramps_during_training(tmp_path):
    cfg = compose([*TINY, "callbacks=[default,scheduled_dropout]", "callbacks.scheduled_dropout.start=0.0",
                   "callbacks.scheduled_dropout.end=0.5", "trainer.max_steps=10", "trainer.val_check_interval=10",
                   "trainer.log_every_n_steps=1", "logger=csv", f"paths.runs_root={tmp_path}", "run_name=dr"])
    train(cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "dr" / "csv" / "metrics.csv")))
    rates = [float(r["train/dropout"]) for r in rows if r.get("train/dropout")]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[-1] == pytest.approx(0.45)


def test_warmup_schedules():
    def lrs(factory, steps=10, **kw):
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr=1.0)
        sched = factory(opt, total_steps=steps, **kw)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out + [opt.param_groups[0]["lr"]]

    lin = lrs(warmup_linear, warmup_steps=2, min_lr_ratio=0.0)
    assert lin[0] == pytest.approx(1 / 3) and lin[2] == pytest.approx(1.0) and lin[-1] == pytest.approx(0.0)
    assert lin[2:] == sorted(lin[2:], reverse=True)
    const = lrs(constant, warmup_steps=2)
    assert const[0] < const[1] < const[2] == const[-1] == 1.0


def test_plateau_reduces_lr_after_validations_without_improvement(tmp_path):
    # threshold=10 (relative): no validation can count as an improvement, so with patience 0
    # every validation after the first halves the lr.
    cfg = compose([*TINY, "scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=10",
                   "trainer.max_steps=9", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
                   "optimizer.lr=1e-3", "logger=csv", f"paths.runs_root={tmp_path}", "run_name=pl"])
    assert cfg.scheduler.monitor == "val/loss"
    train(cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "pl" / "csv" / "metrics.csv")))
    lrs = [float(r["train/learning_rate"]) for r in rows if r.get("train/learning_rate")]
    assert lrs[0] == pytest.approx(1e-3) and min(lrs) < 1e-3, lrs


def test_lookahead_state_travels_in_lightning_checkpoints(tmp_path):
    cfg = compose([*TINY, "optimizer=lookahead", "optimizer.lookahead.k=2", "trainer.max_steps=3",
                   "trainer.val_check_interval=3", "logger=none", f"paths.runs_root={tmp_path}", "run_name=la"])
    summary = train(cfg)
    ckpt = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=True)
    (state,) = ckpt["optimizer_states"]
    assert state["fast_steps"] == 3 and state["k"] == 2 and state["slow"] and state["inner"]["state"]
