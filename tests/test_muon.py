"""optimizer=muon: Muon on the blocks' Linear weights, AdamW on the rest, as one torch optimizer
that Lightning, clipping, the scheduler, the anomaly guard, checkpoints and DDP all accept."""

from __future__ import annotations

import io
import json
import types

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, compose, run_train
from hydra.utils import instantiate
from reliability_helpers import read_losses, train_run

from lm_lightning.callbacks.anomaly import AnomalyGuard
from lm_lightning.ckpt.read import read_checkpoint
from lm_lightning.cli.train import precheck
from lm_lightning.lit.module import LMModule
from lm_lightning.model import GPT, ModelConfig
from lm_lightning.optim.build import build_optimizer
from lm_lightning.optim.grad_norm import total_grad_norm
from lm_lightning.optim.lookahead import Lookahead
from lm_lightning.optim.muon import MuonAdamW

BLOCK_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def build(model: torch.nn.Module, *overrides: str) -> torch.optim.Optimizer:
    return build_optimizer(instantiate(compose(["optimizer=muon", *overrides]).optimizer), model, torch.device("cpu"))


def gpt(**arch) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=8, block_size=8, **arch))


def owners(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["optimizer"] for g in opt.param_groups for p in g["params"]}


def test_muon_owns_the_block_matrices_and_adamw_the_rest():
    torch.manual_seed(0)
    module = LMModule(model=ModelConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=8, block_size=8, bias=True,
                                        qk_norm=True, tie_weights=False, pos_emb="learned"),
                      loss_weights={"next_token": 1.0, "stopping_time": 1.0})
    opt = build(module)
    assert isinstance(opt, MuonAdamW) and isinstance(opt, torch.optim.Optimizer)
    owner = owners(module, opt)
    assert sorted(owner) == sorted(n for n, _ in module.named_parameters())  # each parameter once
    assert {n for n, o in owner.items() if o == "muon"} == {
        f"model.h.{i}.{m}.weight" for i in range(2) for m in BLOCK_MATRICES}
    for name in ("model.wte.weight", "model.wpe.weight", "model.lm_head.weight", "model.ln_f.weight",
                 "model.h.0.attn.c_attn.bias", "model.h.1.attn.q_norm.weight", "regression_head.weight",
                 "regression_head.bias"):
        assert owner[name] == "adamw", name
    names = {id(p): n for n, p in module.named_parameters()}
    decay = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay["model.wte.weight"] == decay["model.lm_head.weight"] == 0.1
    assert decay["model.ln_f.weight"] == decay["model.h.0.attn.c_attn.bias"] == 0.0
    assert {(g["optimizer"], g["lr"], round(g["lr_scale"], 6)) for g in opt.param_groups} == {
        ("adamw", 3e-3, 1.0), ("muon", 0.02, round(0.02 / 3e-3, 6))}
    # The inner optimizers hold the very same group dicts (a scheduler's lr reaches them) and state.
    assert all(a is b for a, b in zip(opt.param_groups, [*opt.adamw.param_groups, *opt.muon.param_groups]))
    assert opt.adamw.state is opt.state and opt.muon.state is opt.state
    assert opt.defaults["lr"] == 3e-3 and not opt.defaults.get("fused")  # Lightning's clipping path
    assert opt.adamw.defaults["fused"]  # the AdamW part stays fused on the CPU
    # Tied by default: the output head is the token embedding, an AdamW parameter.
    tied = gpt()
    assert owners(tied, build(tied))["wte.weight"] == "adamw"


def steps(model: GPT, opt: torch.optim.Optimizer, first: int, n: int) -> list[float]:
    """n optimizer steps on fixed batches, through step(closure) as Lightning calls it."""
    losses = []
    for s in range(first, first + n):
        x = torch.randint(0, 8, (4, 8), generator=torch.Generator().manual_seed(s))

        def closure(x=x):
            opt.zero_grad()
            loss = F.cross_entropy(model(x)[:, :-1].reshape(-1, 8), x[:, 1:].reshape(-1))
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
    return losses


@pytest.mark.parametrize("lookahead", [0, 2])
def test_both_optimizers_update_and_state_dict_round_trips_exactly(lookahead):
    model = gpt()
    opt = build(model, f"optimizer.lookahead.k={lookahead}")
    assert isinstance(opt, Lookahead) == bool(lookahead)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps(model, opt, 0, 3)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters()), "every parameter moved"
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    inner = state["inner"] if lookahead else state
    kinds = {frozenset(s) for s in inner["state"].values()}
    assert kinds == {frozenset({"step", "exp_avg", "exp_avg_sq"}), frozenset({"momentum_buffer"})}
    copy = gpt()
    copy.load_state_dict(model.state_dict())
    resumed = build(copy, f"optimizer.lookahead.k={lookahead}")
    resumed.load_state_dict(state)
    combined = resumed.optimizer if lookahead else resumed
    assert combined.adamw.state is combined.state and combined.muon.param_groups[0] is combined.param_groups[-1]
    assert steps(model, opt, 3, 3) == steps(copy, resumed, 3, 3)
    for (name, p), q in zip(model.named_parameters(), copy.parameters()):
        assert torch.equal(p, q), name  # bitwise: nothing of either optimizer's state was lost


class GradNorms(pl.Callback):
    """The gradient norm after each optimizer step (clipped by then), one JSON number a line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            norm = total_grad_norm(pl_module.parameters())  # None after a skipped step: no gradients
            f.write(json.dumps(None if norm is None else float(norm)) + "\n")


@pytest.mark.slow
def test_lightning_trains_clips_and_skips_bad_steps(tmp_path):
    # Bad gradients at steps 1 and 3 of 6: the anomaly guard decides on the host (Muon has no
    # found_inf) and drops every gradient, so neither optimizer moves: AdamW counts 4 steps.
    norms = tmp_path / "norms.jsonl"
    s = train_run(tmp_path, ["optimizer=muon", "scheduler=wsd", "trainer.max_steps=6", "trainer.gradient_clip_val=0.01",
                             "+callbacks.poison._target_=reliability_helpers.PoisonGrads", "+callbacks.poison.steps=[1,3]",
                             "+callbacks.norms._target_=test_muon.GradNorms", f"+callbacks.norms.path={norms}"])
    assert (s["status"], s["global_step"]) == ("finished", 6)
    ckpt = read_checkpoint(s["last_checkpoint"])
    assert ckpt["callbacks"]["AnomalyGuard"]["skipped"] == 2
    (state,) = ckpt["optimizer_states"]
    assert {g["optimizer"] for g in state["param_groups"]} == {"adamw", "muon"}
    assert {float(v["step"]) for v in state["state"].values() if "step" in v} == {4.0}
    assert sum("momentum_buffer" in v for v in state["state"].values()) == 4 * 2  # tiny: 2 blocks
    trained = ckpt["state_dict"]
    assert all(torch.isfinite(v).all() for v in trained.values())
    # Lightning's own clipping ran on this optimizer (grads of the 4 good steps <= 0.01).
    recorded = [json.loads(line) for line in norms.read_text().splitlines()]
    good = [n for n in recorded if n is not None]
    assert len(recorded) == 6 and len(good) == 4 and max(good) <= 0.01 * (1 + 1e-5), recorded
    pl.seed_everything(1337, workers=True, verbose=False)  # train()'s seed and init order
    init = LMModule(model=ckpt["hyper_parameters"]["model"], loss_weights=ckpt["hyper_parameters"]["loss_weights"])
    for name, p in init.named_parameters():
        assert not torch.equal(trained[name], p), f"{name} never moved"


def test_guard_skip_leaves_muon_and_adamw_untouched():
    model = gpt()
    opt = build(model)
    guard = AnomalyGuard(check_every_n_steps=100)
    trainer = types.SimpleNamespace(precision_plugin=None, global_step=0, max_steps=100, is_global_zero=True,
                                    accumulate_grad_batches=1, optimizers=[opt], callbacks=[])
    module = types.SimpleNamespace(grad_norm=lambda: total_grad_norm(model.parameters()),
                                   named_parameters=model.named_parameters)
    x = torch.randint(0, 8, (4, 8), generator=torch.Generator().manual_seed(0))

    def step(poison: bool) -> None:
        loss = F.cross_entropy(model(x)[:, :-1].reshape(-1, 8), x[:, 1:].reshape(-1))
        guard.on_before_backward(trainer, module, loss)
        opt.zero_grad()
        loss.backward()
        if poison:
            opt.muon.param_groups[0]["params"][0].grad[0, 0] = float("nan")
        guard.on_before_optimizer_step(trainer, module, opt)
        opt.step()
        guard.on_train_batch_end(trainer, module, None, None, 0)
        trainer.global_step += 1

    step(False)
    params = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    step(True)
    assert guard.skipped == 1  # decided on the host at this step
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(torch.equal(opt.state[p][k], v) for p in opt.state for k, v in state[id(p)].items())
    step(False)
    assert not torch.equal(next(model.parameters()), params[0])


STOP, TOTAL = 3, 6
EXACT = ["optimizer=muon", "scheduler=wsd", "scheduler.warmup_steps=2", "model.dropout=0.1",
         "trainer.deterministic=true", f"trainer.max_steps={TOTAL}", "trainer.accumulate_grad_batches=2",
         f"trainer.val_check_interval={STOP * 2}"]


@pytest.mark.slow
def test_stop_and_resume_is_bitwise(tmp_path):
    def run(name: str, extra: list[str]) -> dict:
        return train_run(tmp_path, [*EXACT, *extra, "+callbacks.recorder._target_=reliability_helpers.LossRecorder",
                                    f"+callbacks.recorder.path={tmp_path / name}.jsonl"], run_name=name)

    run("straight", [])
    first = run("split", ["+callbacks.stopper._target_=reliability_helpers.StopAt", f"+callbacks.stopper.step={STOP}"])
    assert (first["status"], first["global_step"]) == ("stopped", STOP)
    second = run("split", [])
    assert (second["status"], second["global_step"]) == ("finished", TOTAL)
    straight, split = read_losses(tmp_path / "straight.jsonl"), read_losses(tmp_path / "split.jsonl")
    assert len(straight) == TOTAL * 2 and split == straight  # the same micro-batches, bitwise-equal losses
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=True) for n in ("straight", "split"))
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    sa, sb = a["optimizer_states"][0], b["optimizer_states"][0]
    assert sa["param_groups"] == sb["param_groups"]
    assert all(torch.equal(v, sb["state"][i][k]) for i, s in sa["state"].items() for k, v in s.items())


PROBE = '''
import os
import lightning.pytorch as pl
import torch

class Probe(pl.Callback):
    def __init__(self, out):
        self.out = out

    def _save(self, trainer, name, pl_module):
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.out, f"{name}_rank{trainer.global_rank}.pt"))

    def on_train_start(self, trainer, pl_module):
        self._save(trainer, "init", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            self._save(trainer, "step1", pl_module)
'''


@pytest.mark.slow
def test_ddp_update_matches_one_process_on_the_global_batch(tmp_path):
    """Two gloo ranks, one optimizer step: the update equals one process's on both micro-batches."""
    import os

    from omegaconf import OmegaConf

    from lm_lightning.data.collatz import CollatzDataModule, CollatzStream
    from lm_lightning.lit.objectives import multi_task_loss
    from lm_lightning.run.session import scheduler_factory

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "muon_probe.py").write_text(PROBE)
    env = {"PYTHONPATH": os.pathsep.join([str(probe), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    # block_size 16: every row has 16 labels, so per-rank token means average to the global mean.
    proc = run_train(["trainer=ddp_cpu", "model=tiny", "data.block_size=16", "data.batch_size=4",
                      "data.val_samples=12", "trainer.max_steps=1", "trainer.val_check_interval=1", "logger=none",
                      "callbacks.control.stdin=false", "callbacks.monitoring.plots=false", "optimizer=muon",
                      "scheduler=wsd", "scheduler.warmup_steps=0", f"paths.runs_root={tmp_path / 'out'}",
                      "run_name=ddp", "+callbacks.probe._target_=muon_probe.Probe", f"+callbacks.probe.out={probe}"],
                     cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "out" / "ddp"
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    init = torch.load(probe / "init_rank0.pt", weights_only=True)
    after = [torch.load(probe / f"step1_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(v, after[1][k]) for k, v in after[0].items()), "ranks disagree after the step"

    dm = CollatzDataModule(**{k: v for k, v in OmegaConf.to_container(cfg.data).items() if k != "_target_"})
    stream = CollatzStream(dm.seed, dm.batch_size, dm.block_size, dm.sampling, dm.max_steps)
    parts = [stream.batch(0), stream.batch(1)]  # step 0 of ranks 0 and 1
    keys = ("input_ids", "labels", "padding_mask", "lengths", "stopping_time")
    batch = {k: torch.cat([p[k] for p in parts]) for k in keys}
    hp = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    module = LMModule(model=hp["model"], loss_weights=hp["loss_weights"])
    module.load_state_dict(init)
    opt = build_optimizer(instantiate(cfg.optimizer), module, torch.device("cpu"))
    scheduler_factory(cfg)(opt, total_steps=1)
    multi_task_loss(module(batch), batch, module.loss_weights)[0].backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val)
    opt.step()
    owner = owners(module, opt)
    for name, p in module.named_parameters():
        ddp, one = after[0][name] - init[name], p.detach() - init[name]
        assert one.abs().max() > 0, name
        err = float((ddp - one).norm() / one.norm())
        # Muon orthogonalises in bf16: gradients that differ in the last fp32 bits (all-reduce
        # order) can round one bf16 step apart (2**-8); seen here: up to 1.3e-3. A rank stepping
        # on its own micro-batch's gradient would be off by O(1).
        assert err < (3e-2 if owner[name] == "muon" else 1e-4), (name, owner[name], err)


@pytest.mark.parametrize("override, message", [
    ("optimizer.layer_decay=0.8", "optimizer=muon does not support optimizer.layer_decay"),
    ("optimizer.muon_lr=0", "optimizer.muon_lr must be positive, got 0"),
    ("optimizer.muon_adjust_lr_fn=rms", "optimizer.muon_adjust_lr_fn must be one of original, match_rms_adamw"),
    # FSDP1 (Lightning's "fsdp"): flat shards. trainer=fsdp is FSDP2 now, where Muon runs (test_fsdp2).
    ("+trainer.strategy=fsdp", "optimizer=muon needs whole 2-D weight matrices and FSDP1 hands the optimizer flat shards"),
])
def test_bad_combinations_exit_2_with_one_line(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exc:
        precheck(["model=tiny", "logger=none", f"paths.runs_root={tmp_path}", "run_name=x", "optimizer=muon",
                  "trainer=debug", override])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith(f"error: {message}") and "\n" not in err, err
    assert not (tmp_path / "x").exists()
