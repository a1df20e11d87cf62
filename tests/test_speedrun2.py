"""Speedrun II (issue 19): Newton-Schulz precision per device, modded-nanogpt's switches for a small
char model (untied embedding/head lrs, value embeddings, U-net skips, a sequence-length warmup,
a Muon momentum warmup), and exact resume of the speedrun recipe with all of them on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_bad_input import BASE, one_line_exit_2

from lm_lightning.data.tokens import RandomWindows
from lm_lightning.model import GPT, ModelConfig
from lm_lightning.model.skips import value_embed_layers
from lm_lightning.optim.muon import MuonAdamW
from lm_lightning.optim.muon_ns import Muon, momentum_at, resolve_ns_dtype, zeropower


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=4, n_head=2, n_embd=16, vocab_size=11, block_size=16, pos_emb="rope", mlp="relu2")
    base.update(kw)
    return ModelConfig(**base)


def matrices(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(24, 8, generator=g), torch.randn(8, 24, generator=g), torch.randn(16, 16, generator=g)]


def muon_steps(opt_cls, n: int = 4, set_momentum=None, **kw) -> list[torch.Tensor]:
    """n steps of a Muon on fixed matrices with fixed gradients per step; the parameters after."""
    params = [torch.nn.Parameter(m.clone()) for m in matrices(0)]
    opt = opt_cls(params, lr=0.02, weight_decay=0.01, momentum=0.95, ns_steps=3, adjust_lr_fn="original", **kw)
    for s in range(n):
        if set_momentum is not None:
            opt.param_groups[0]["momentum"] = set_momentum(s)
        for p, g in zip(params, matrices(100 + s)):
            p.grad = g
        opt.step()
    return [p.detach() for p in params]


# -- Newton-Schulz precision -----------------------------------------------------------------
def test_auto_ns_dtype_is_fp32_on_cpu_and_bf16_on_gpus():
    assert resolve_ns_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_ns_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_ns_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_ns_dtype("float32", torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="muon_ns_dtype must be one of"):
        Muon([torch.nn.Parameter(torch.ones(2, 2))], ns_dtype="float16")


def test_bf16_step_is_torch_muon_bitwise():
    ours = muon_steps(Muon, ns_dtype="bfloat16")
    theirs = muon_steps(torch.optim.Muon)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_fp32_step_equals_torch_muon_run_in_fp32(monkeypatch):
    """torch's Muon casts with .bfloat16() inside its Newton-Schulz; made a float32 copy, it is
    torch's Muon at fp32, and ours at fp32 matches it within 1e-6."""
    import torch.optim._muon as tm

    # on a fixed matrix, the orthogonalisation itself
    g = matrices(7)[0]
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self.float().clone())
        theirs = tm._zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        theirs_steps = muon_steps(torch.optim.Muon)
    assert theirs.dtype == torch.float32
    ours = zeropower(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert (ours - theirs).abs().max() <= 1e-6
    # ... and whole optimizer steps; auto is fp32 on this CPU
    for a, b in zip(muon_steps(Muon, ns_dtype="auto"), theirs_steps):
        assert (a - b).abs().max() <= 1e-6
    # bf16 really is another result: the test would see a wrong dtype
    assert (tm._zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float() - ours).abs().max() > 1e-4
    # the iteration orthogonalises: singular values pulled towards 1 from a wide spread
    s = torch.linalg.svdvals(zeropower(g, (3.4445, -4.7750, 2.0315), 5, 1e-7))
    assert s.min() > 0.5 and s.max() < 1.3


# -- Muon momentum warmup --------------------------------------------------------------------
def test_momentum_warmup_is_linear_from_start_to_target():
    assert [momentum_at(t, 0.95, 4, 0.85) for t in range(6)] == pytest.approx([0.85, 0.875, 0.9, 0.925, 0.95, 0.95])
    assert momentum_at(0, 0.95, 0, 0.85) == 0.95


def test_momentum_warmup_equals_torch_muon_with_that_momentum_per_step():
    ours = muon_steps(Muon, ns_dtype="bfloat16", momentum_warmup_steps=3, momentum_start=0.6)
    theirs = muon_steps(torch.optim.Muon, set_momentum=lambda s: momentum_at(s, 0.95, 3, 0.6))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    plain = muon_steps(Muon, ns_dtype="bfloat16")
    assert not all(torch.equal(a, b) for a, b in zip(ours, plain))


# -- untied embedding and head with their own lrs ---------------------------------------------
def test_embed_and_head_lrs_are_their_own_adamw_groups():
    torch.manual_seed(0)
    model = GPT(tiny(tie_weights=False, value_embeds=1))
    opt = MuonAdamW.from_model(model, lr=1e-3, embed_lr=0.05, head_lr=2e-3, weight_decay=0.0)
    lr_of = {id(p): (g["optimizer"], g["lr"], g["lr_scale"]) for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.wte.weight)] == ("adamw", 0.05, pytest.approx(50.0))
    assert lr_of[id(model.value_embeds.tables[0].weight)][1] == 0.05
    assert lr_of[id(model.lm_head.weight)] == ("adamw", 2e-3, pytest.approx(2.0))
    assert lr_of[id(model.ln_f.weight)][1] == 1e-3 and lr_of[id(model.h[0].attn.c_attn.weight)][0] == "muon"
    # One step: Adam's first update is lr * sign(grad) (bias-corrected m / sqrt(v)), each at its own lr.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    F.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
    opt.step()
    for name, lr in (("wte.weight", 0.05), ("lm_head.weight", 2e-3), ("ln_f.weight", 1e-3)):
        p, g = dict(model.named_parameters())[name], dict(model.named_parameters())[name].grad
        moved = g.abs() > 1e-6
        assert torch.allclose((before[name] - p.detach())[moved], lr * g.sign()[moved], rtol=1e-3), name
    # Tied: the one matrix follows embed_lr; head_lr has nothing of its own to apply to.
    tied = GPT(tiny())
    groups = MuonAdamW.from_model(tied, lr=1e-3, embed_lr=0.05, head_lr=2e-3).param_groups
    assert sorted(g["lr"] for g in groups if g["optimizer"] == "adamw") == [1e-3, 0.05]  # norms; wte
    assert [p for g in groups if g["lr"] == 0.05 for p in g["params"]] == [tied.wte.weight]


# -- value embeddings ------------------------------------------------------------------------
def test_value_embedding_tables_feed_mirrored_layers():
    assert value_embed_layers(1, 4) == [0, None, None, 0]
    assert value_embed_layers(2, 4) == [0, 1, 1, 0]
    assert value_embed_layers(2, 5) == [0, 1, None, 1, 0]
    with pytest.raises(ValueError, match="value_embeds must be in"):
        tiny(value_embeds=3)


def test_value_embeddings_are_added_to_the_attention_values():
    torch.manual_seed(5)
    model = GPT(tiny(value_embeds=2, n_kv_head=1)).eval()
    ve = model.value_embeds
    with torch.no_grad():
        ve.gates.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
    x = torch.randint(0, 11, (2, 9))
    assert [None if v is None else v.shape for v in ve(x)] == [(2, 9, 8)] * 4  # kv width: 1 head x 8
    # layer 2 reads table 1 scaled by its gate; check the attention against a hand-made one
    attn, h = model.h[2].attn, torch.randn(2, 9, 16)
    q, k, v = attn.c_attn(h).split([16, 8, 8], dim=2)
    v = v + 2.0 * ve.tables[1](x)
    q = q.view(2, 9, 2, 8).transpose(1, 2)
    k, v = (t.view(2, 9, 1, 8).transpose(1, 2) for t in (k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(2, 9, 16)
    assert torch.allclose(attn(h, None, ve=ve(x)[2]), attn.c_proj(y), atol=1e-6)
    # zero tables: the model is the plain model with the same weights
    plain = GPT(tiny(n_kv_head=1)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("value_embeds")})
    with torch.no_grad():
        for t in ve.tables:
            t.weight.zero_()
    assert torch.allclose(model(x), plain(x), atol=1e-6)
    assert model.num_params() == plain.num_params() + 4  # the gates; the tables are lookups only
    # the cache path sees the same values (ve of each new token)
    with torch.no_grad():
        for t in ve.tables:
            t.weight.normal_()
    assert torch.equal(model.generate(x[:, :3], 6, temperature=0), model.generate(x[:, :3], 6, temperature=0,
                                                                                   use_cache=False))


# -- U-net skips -------------------------------------------------------------------------------
def test_unet_skips_add_first_half_outputs_to_mirrored_inputs():
    torch.manual_seed(6)
    model = GPT(tiny(unet_skips=True)).eval()
    with torch.no_grad():
        model.unet.weight.copy_(torch.tensor([0.3, -0.7]))
    x = torch.randint(0, 11, (2, 10))
    rope = (model.rope_cos[:10], model.rope_sin[:10])
    b = model.h
    o0 = b[0](model.wte(x), rope)
    o1 = b[1](o0, rope)
    o2 = b[2](o1 - 0.7 * o1, rope)  # layer 2's input gets layer 1's output
    o3 = b[3](o2 + 0.3 * o0, rope)  # layer 3's input gets layer 0's output
    assert torch.allclose(model.hidden_states(x), model.ln_f(o3), atol=1e-6)
    with torch.no_grad():
        model.unet.weight.zero_()
    plain = GPT(tiny()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("unet")})
    assert torch.allclose(model(x), plain(x), atol=1e-6)
    # activation checkpointing recomputes the same thing
    model.train()
    model.config.activation_checkpointing = True
    with torch.no_grad():
        model.unet.weight.fill_(0.5)
        a = model(x)
        model.config.activation_checkpointing = False
        assert torch.allclose(a, model(x), atol=1e-6)


# -- sequence-length warmup --------------------------------------------------------------------
class Tokens:
    """A TokenFile stand-in: read(start, n) over an array."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.path = a, "mem"

    def __len__(self) -> int:
        return len(self.a)

    def read(self, start: int, n: int) -> np.ndarray:
        return self.a[start:start + n]


def test_sequence_length_warmup_is_a_pure_function_of_seed_step_rank():
    toks = Tokens(np.arange(5000, dtype=np.int64) % 97)
    plain = RandomWindows(toks, 3, 64, seed=5, steps_per_epoch=100, rank=1, world_size=2)
    warm = RandomWindows(toks, 3, 64, seed=5, steps_per_epoch=100, rank=1, world_size=2, seq_warmup=(16, 10, 2))
    # optimizer step = micro-batch // 2; lengths grow linearly from 16 in multiples of 8, then block_size
    assert [warm.length(s) for s in range(0, 24, 2)] == [16, 16, 24, 24, 32, 40, 40, 48, 48, 56, 64, 64]
    assert warm.length(4) == warm.length(5)  # both micro-batches of one optimizer step
    for step in (0, 7, 19, 20, 33):
        a, b = warm.batch(step), plain.batch(step)
        L = warm.length(step)
        assert a["input_ids"].shape == (3, L)
        # the same random windows, cut to the step's length: labels stay the next tokens
        assert torch.equal(a["input_ids"], b["input_ids"][:, :L]) and torch.equal(a["labels"], b["labels"][:, :L])
        again = RandomWindows(toks, 3, 64, seed=5, steps_per_epoch=100, rank=1, world_size=2, seq_warmup=(16, 10, 2),
                              start=step)
        assert torch.equal(next(iter(again))["input_ids"], a["input_ids"])  # a resumed stream: same batch


# -- config keys: bad values are one line, exit 2 ----------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("optimizer.muon_ns_dtype=float16", "optimizer.muon_ns_dtype"),
    ("optimizer.embed_lr=-1", "optimizer.embed_lr"),
    ("model.value_embeds=-1", "model.value_embeds"),
])
def test_bad_switch_values_exit_2_with_one_line(tmp_path, capsys, override, message):
    err = one_line_exit_2([*BASE, "optimizer=muon", f"paths.runs_root={tmp_path}", "run_name=x", override], capsys)
    assert message in err
    assert not (tmp_path / "x").exists()


# -- exact resume with the speedrun recipe and every switch on ---------------------------------
def test_speedrun_with_every_switch_resumes_bitwise(tmp_path):
    from hydra import compose, initialize_config_dir

    from lm_lightning.config.location import CONF_DIR
    from lm_lightning.run.session import train

    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "the", "king", "shall", "love", "\n", "sweet"]
    (tmp_path / "input.txt").write_text(" ".join(rng.choice(words, size=3000)))
    switches = ["model.tie_weights=false", "model.value_embeds=2", "model.unet_skips=true",
                "optimizer.embed_lr=0.01", "optimizer.head_lr=0.004", "optimizer.muon_momentum_warmup_steps=3",
                "data.seq_warmup_steps=3", "data.seq_warmup_start=8"]

    def run(name: str, extra: list[str]) -> dict:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[
                "experiment=shakespeare_char_speedrun", f"data.train_path={tmp_path / 'input.txt'}",
                "model.n_layer=4", "model.n_embd=32", "model.n_head=2", "data.block_size=32",
                "effective_batch_size=8", "data.batch_size=4", "trainer.max_steps=4", "trainer.val_check_interval=4",
                "scheduler.warmup_steps=1", "data.eval_batches=1", "trainer.deterministic=true", "logger=none",
                "callbacks.control.stdin=false", "callbacks.monitoring.plots=false", f"paths.runs_root={tmp_path}",
                f"run_name={name}", f"data.cache_dir={tmp_path / 'cache'}", *switches, *extra,
                "+callbacks.recorder._target_=reliability_helpers.LossRecorder",
                f"+callbacks.recorder.path={tmp_path / name}.jsonl"])
        return train(cfg)

    from reliability_helpers import read_losses

    run("straight", [])
    first = run("split", ["+callbacks.stopper._target_=reliability_helpers.StopAt", "+callbacks.stopper.step=2"])
    assert (first["status"], first["global_step"]) == ("stopped", 2)
    second = run("split", [])
    assert (second["status"], second["global_step"]) == ("finished", 4)
    straight, split = read_losses(tmp_path / "straight.jsonl"), read_losses(tmp_path / "split.jsonl")
    assert len(straight) == 8 and split == straight  # accumulation 2: the same micro-batches, bitwise
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=True) for n in ("straight", "split"))
    assert any(k.startswith("model.value_embeds") for k in a["state_dict"])
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    sa, sb = a["optimizer_states"][0], b["optimizer_states"][0]
    assert sa["param_groups"] == sb["param_groups"]
    assert [g["muon_step"] for g in sa["param_groups"] if g["optimizer"] == "muon"] == [4]
    assert all(torch.equal(v, sb["state"][i][k]) for i, s in sa["state"].items() for k, v in s.items())
