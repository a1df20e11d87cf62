"""Weight decay goes to matrices (Linear/Embedding weights) only, chosen by module type."""

import torch

from lm_lightning.model import GPT, ModelConfig
from lm_lightning.optim.groups import param_groups


def test_decay_on_matrices_only_and_tied_weight_once():
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=10, block_size=8, bias=True,
                            pos_emb="learned"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert "wte.weight" in decayed and "wpe.weight" in decayed and "h.0.attn.c_attn.weight" in decayed
    assert all(n.endswith(".bias") or ".ln_" in n or n.startswith("ln_f") for n in plain), plain
    assert not decayed & plain
    # Every parameter exactly once; the tied output layer is not counted twice.
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_flattened_weights_still_decay():
    # FSDP hands the optimizer flat 1-D shards: the choice must not depend on p.dim().
    lin = torch.nn.Linear(4, 4)
    lin.weight = torch.nn.Parameter(lin.weight.detach().flatten())
    decay, _ = param_groups(torch.nn.Sequential(lin), 0.1)
    assert any(p is lin.weight for p in decay["params"])
