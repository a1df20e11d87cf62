"""The plain-PyTorch transformer: causality, parameter count, padding mask, overfitting, generation."""

import pytest
import torch

from lm_lightning.model import GPT, ModelConfig


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=11, block_size=16)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
@pytest.mark.parametrize("mlp,norm", [("gelu", "layernorm"), ("swiglu", "rmsnorm")])
def test_causality(pos_emb, mlp, norm):
    torch.manual_seed(0)
    model = GPT(tiny(pos_emb=pos_emb, mlp=mlp, norm=norm)).eval()
    x = torch.randint(0, 11, (2, 12))
    t = 7
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % 11
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6), "logits before t changed"
    assert not torch.allclose(a[:, t:], b[:, t:]), "logits from t on should depend on token t"


def test_parameter_count_matches_formula():
    cfg = tiny(pos_emb="learned", bias=True, tie_weights=True)
    model = GPT(cfg)
    C, V, T, L, F = cfg.n_embd, cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.d_ff
    per_block = (2 * 2 * C) + (C * 3 * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)
    expected = V * C + T * C + L * per_block + 2 * C  # wte (tied head), wpe, blocks, ln_f
    assert model.num_params(non_embedding=False) == expected
    assert model.num_params() == expected - T * C
    untied = GPT(tiny(pos_emb="learned", bias=True, tie_weights=False))
    assert untied.num_params(non_embedding=False) == expected + V * C


def test_padding_mask_makes_padding_irrelevant():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 11, (1, 10))
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[:, 6:] = False
    noise = x.clone()
    noise[:, 6:] = torch.randint(0, 11, (1, 4))
    a = model(x, mask)
    b = model(noise, mask)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    # Left padding: real tokens must not attend to padded keys.
    lmask = torch.ones(1, 10, dtype=torch.bool)
    lmask[:, :3] = False
    c = model(x, lmask)
    d = model(noise.index_fill(1, torch.arange(3), 5), lmask)
    assert torch.isfinite(c).all()
    assert torch.allclose(c[:, 3:6], d[:, 3:6], atol=1e-5)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny(n_embd=64, n_head=4))
    x = torch.randint(0, 11, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_generate_with_cache_matches_without():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    prompt = torch.randint(0, 11, (2, 5))
    greedy = dict(max_new_tokens=20, temperature=0.0)  # 25 tokens: the window slides past block_size 16
    with_cache = model.generate(prompt, use_cache=True, **greedy)
    without = model.generate(prompt, use_cache=False, **greedy)
    assert with_cache.shape == (2, 25)
    assert torch.equal(with_cache, without)
    g = torch.Generator().manual_seed(1)
    sampled = model.generate(prompt, max_new_tokens=5, temperature=0.8, top_k=3, top_p=0.9, generator=g)
    assert sampled.shape == (2, 10) and int(sampled.max()) < 11


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(n_embd=30, n_head=4), "divisible"),
        (dict(pos_emb="alibi"), "pos_emb"),
        (dict(norm="batchnorm"), "norm"),
        (dict(dropout=1.5), "dropout"),
        (dict(n_layer=0), "n_layer"),
        (dict(n_embd=6, n_head=2), "even head size"),
    ],
)
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(**kw)


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = GPT(tiny())
    b = GPT(tiny(activation_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 11, (2, 16))
    for m in (a, b):
        m(x).sum().backward()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def _real_rope(x, cos, sin):
    """The rotation written out: pairs (2i, 2i+1) turned by angle t * theta_i."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def test_rope_complex_path_equals_the_rotation_forward_and_backward(monkeypatch):
    # On a CPU in fp32, apply_rope multiplies complex pairs (the speedrun's fast path): the same
    # values and gradients as the real arithmetic, on the transposed (B, nh, T, hs) views
    # attention hands it and on a one-token slice as generation does.
    from lm_lightning.model import layers

    calls = []
    monkeypatch.setattr(torch, "view_as_complex", lambda t, _f=torch.view_as_complex: calls.append(1) or _f(t))
    cos, sin = layers.rope_cache(16, 24, 10000.0)
    x = torch.randn(3, 24, 4, 16).transpose(1, 2).requires_grad_()
    g = torch.randn(3, 4, 24, 16)
    fast, real = layers.apply_rope(x, cos, sin), _real_rope(x, cos, sin)
    assert calls, "the complex path ran"
    torch.testing.assert_close(fast, real, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(fast, x, g)[0], torch.autograd.grad(real, x, g)[0], rtol=0, atol=1e-6)
    one = x[:, :, 5:6].detach()
    torch.testing.assert_close(layers.apply_rope(one, cos[5:6], sin[5:6]), _real_rope(one, cos[5:6], sin[5:6]))


def test_rope_keeps_the_real_path_for_bf16_and_odd_views():
    from lm_lightning.model import layers

    cos, sin = layers.rope_cache(16, 8, 10000.0)
    x = torch.randn(2, 4, 8, 16)
    assert layers._complex_rotation(x)
    assert not layers._complex_rotation(x.bfloat16()), "there is no bf16 complex type"
    assert not layers._complex_rotation(torch.randn(2, 4, 8, 17)[..., 1:]), "odd storage offset"
    y = x.bfloat16()
    torch.testing.assert_close(layers.apply_rope(y, cos, sin), _real_rope(y, cos.bfloat16(), sin.bfloat16()))


def test_relu_squared_equals_autograd_of_relu_then_square():
    from lm_lightning.model.layers import ReLUSquared

    h = torch.randn(6, 10, 40, requires_grad=True)
    h.data[0, 0, :4] = 0.0  # the kink: relu's gradient at 0 is 0 in both
    g = torch.randn(6, 10, 40)
    ours, ref = ReLUSquared.apply(h), torch.nn.functional.relu(h).square()
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, h, g)[0], torch.autograd.grad(ref, h, g)[0], rtol=0, atol=0)
    assert torch.autograd.gradcheck(ReLUSquared.apply, (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))
