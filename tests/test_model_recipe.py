"""Grouped-query attention and the 2026 recipe switches: QK-norm, logit softcap, ReLU², z-loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lm_lightning.lit.objectives import IGNORE_INDEX, multi_task_loss, z_loss
from lm_lightning.model import GPT, ModelConfig


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=13, block_size=24, pos_emb="rope",
                norm="rmsnorm", mlp="swiglu")
    base.update(kw)
    return ModelConfig(**base)


# -- grouped-query attention --------------------------------------------------------------
@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_shapes_and_parameter_count(n_kv_head):
    cfg = tiny(n_kv_head=n_kv_head)
    model = GPT(cfg)
    hs = cfg.head_size
    attn = model.h[0].attn
    assert attn.c_attn.weight.shape == (cfg.n_embd + 2 * n_kv_head * hs, cfg.n_embd)
    full = GPT(tiny(n_kv_head=4)).num_params()
    # Each layer saves 2 * (n_head - n_kv_head) * hs * n_embd weights in K and V.
    assert full - model.num_params() == cfg.n_layer * 2 * (4 - n_kv_head) * hs * cfg.n_embd
    # Attention FLOPs depend on the query heads, the matrix FLOPs on the parameters.
    assert model.flops_per_token(16) == 6 * model.num_params() + 12 * 2 * 4 * hs * 16


def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    """GQA with K/V heads shared by groups equals MHA whose K/V weights are those heads repeated."""
    torch.manual_seed(0)
    gqa = GPT(tiny(n_kv_head=2)).eval()
    mha = GPT(tiny(n_kv_head=4)).eval()
    state = gqa.state_dict()
    hs, C = 8, 32
    for i in range(2):
        w = state[f"h.{i}.attn.c_attn.weight"]
        q, k, v = w.split([C, 2 * hs, 2 * hs])
        rep = lambda t: t.view(2, hs, C).repeat_interleave(2, dim=0).reshape(4 * hs, C)  # noqa: E731
        state[f"h.{i}.attn.c_attn.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    x = torch.randint(0, 13, (2, 20))
    assert torch.allclose(gqa(x), mha(x), atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_kv_cache_generate_equals_no_cache_with_gqa(n_kv_head):
    torch.manual_seed(1)
    model = GPT(tiny(n_kv_head=n_kv_head, qk_norm=True)).eval()
    prompt = torch.randint(0, 13, (2, 5))
    cached = model.generate(prompt, 12, temperature=0, use_cache=True)
    plain = model.generate(prompt, 12, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)
    caches = [{} for _ in model.h]
    model.hidden_states(prompt, kv_caches=caches)
    assert caches[0]["k"].shape == (2, n_kv_head, 5, 8)  # only the K/V heads are cached


@pytest.mark.parametrize("kw, message", [
    (dict(n_kv_head=3), "divisible by model.n_kv_head"),
    (dict(n_kv_head=0), "n_kv_head must be a positive integer"),
    (dict(logit_softcap=-1.0), "logit_softcap must be positive"),
    (dict(mlp="relu3"), "model.mlp must be"),
    (dict(norm_eps=0.0), "norm_eps must be positive"),
])
def test_bad_architecture_values_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


# The recipe keys' bad values (n_kv_head, logit_softcap, z_loss) are cases of
# test_bad_input.test_impossible_configs_exit_2_with_one_line.


# -- QK-norm -------------------------------------------------------------------------------
def test_qk_norm_normalises_each_heads_queries_and_keys():
    torch.manual_seed(2)
    cfg = tiny(qk_norm=True, n_kv_head=2)
    attn = GPT(cfg).h[0].attn.eval()
    assert attn.q_norm.weight.shape == (cfg.head_size,)
    with torch.no_grad():
        attn.q_norm.weight.fill_(1.0)
        attn.k_norm.weight.fill_(1.0)
        attn.c_attn.weight.mul_(50)  # huge activations: without the norm, the scores would explode
    seen = {}
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen["q"], seen["k"] = q, k
        return orig(q, k, v, **kw)

    x = torch.randn(1, 6, cfg.n_embd)
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        attn(x, None)  # no RoPE: q and k reach SDPA as the norm left them
    finally:
        torch.nn.functional.scaled_dot_product_attention = orig
    for t in (seen["q"], seen["k"]):
        rms = t.pow(2).mean(-1).sqrt()
        assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)
    assert GPT(tiny(qk_norm=False)).h[0].attn.q_norm is None


# -- logit softcap -------------------------------------------------------------------------
def test_logit_softcap_bounds_logits_as_cap_tanh():
    torch.manual_seed(3)
    plain = GPT(tiny()).eval()
    capped = GPT(tiny(logit_softcap=2.0)).eval()
    capped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.lm_head.weight.mul_(20)
    capped.load_state_dict(plain.state_dict())
    x = torch.randint(0, 13, (2, 10))
    raw, out = plain(x), capped(x)
    assert raw.abs().max() > 2.0
    assert out.abs().max() <= 2.0
    assert torch.allclose(out, 2.0 * torch.tanh(raw / 2.0), atol=1e-5)
    # generation reads the same capped logits
    assert torch.equal(capped.generate(x[:, :3], 4, temperature=0)[:, 3:],
                       capped.generate(x[:, :3], 4, temperature=0, use_cache=False)[:, 3:])


# -- ReLU² ---------------------------------------------------------------------------------
def test_relu2_mlp_is_relu_squared():
    torch.manual_seed(4)
    cfg = tiny(mlp="relu2")
    assert cfg.d_ff == 4 * cfg.n_embd
    mlp = GPT(cfg).h[0].mlp
    x = torch.randn(3, cfg.n_embd)
    expected = mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2)
    assert torch.allclose(mlp(x), expected, atol=1e-6)
    assert mlp.c_fc.weight.shape == (cfg.d_ff, cfg.n_embd)  # one matrix in, not two as SwiGLU


# -- z-loss --------------------------------------------------------------------------------
def test_z_loss_is_mean_squared_logsumexp_over_scored_tokens():
    logits = torch.tensor([[[0.0, 0.0], [1.0, 3.0], [5.0, 5.0]]])  # (1, 3, 2)
    labels = torch.tensor([[0, IGNORE_INDEX, 1]])
    z = z_loss({"logits": logits}, {"labels": labels})
    expected = (math.log(2.0) ** 2 + (5.0 + math.log(2.0)) ** 2) / 2
    assert z.item() == pytest.approx(expected, rel=1e-6)
    batch = {"labels": labels}
    plain, parts0 = multi_task_loss({"logits": logits}, batch, {"next_token": 1.0})
    total, parts = multi_task_loss({"logits": logits}, batch, {"next_token": 1.0}, z_loss_weight=1e-2)
    assert "z_loss" not in parts0
    assert total.item() == pytest.approx(plain.item() + 1e-2 * expected, rel=1e-6)
    assert torch.equal(parts["next_token"], parts0["next_token"])  # perplexity stays pure CE


def test_z_loss_gradient_pulls_log_normaliser_down():
    logits = torch.full((1, 4, 5), 3.0, requires_grad=True)
    labels = torch.zeros(1, 4, dtype=torch.long)
    z_loss({"logits": logits}, {"labels": labels}).backward()
    assert (logits.grad > 0).all()  # descending the z-loss lowers every logit, so log Z shrinks
