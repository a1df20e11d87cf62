"""Which of our shapes a converter may claim: a switch GPT-2 or Llama does not have is refused by
both the HF export and the GGUF writer (one rule per architecture, shared by both)."""

from __future__ import annotations

import pytest

from lm_lightning.convert.gguf_writer import gguf_arch
from lm_lightning.convert.gpt2 import gpt2_shape_problems
from lm_lightning.convert.llama import llama_shape_problems
from lm_lightning.model import ModelConfig

GPT2 = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=64, block_size=16, pos_emb="learned", norm="layernorm",
            mlp="gelu", bias=True, tie_weights=True)
LLAMA = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=64, block_size=16, pos_emb="rope", norm="rmsnorm",
             mlp="swiglu", bias=False, tie_weights=False)


def test_the_plain_shapes_pass():
    assert gpt2_shape_problems(ModelConfig(**GPT2)) == []
    assert llama_shape_problems(ModelConfig(**LLAMA)) == []
    assert gguf_arch(ModelConfig(**GPT2)) == "gpt2" and gguf_arch(ModelConfig(**LLAMA)) == "llama"


@pytest.mark.parametrize("extra, key", [
    ({"n_kv_head": 2}, "n_kv_head"), ({"qk_norm": True}, "qk_norm"), ({"logit_softcap": 15.0}, "logit_softcap"),
    ({"value_embeds": 1}, "value_embeds"), ({"unet_skips": True}, "unet_skips"),
])
def test_gpt2_refuses_what_gpt2_lacks(extra, key):
    problems = gpt2_shape_problems(ModelConfig(**{**GPT2, **extra}))
    assert len(problems) == 1 and problems[0].startswith(f"model.{key}=")


@pytest.mark.parametrize("extra, key", [
    ({"qk_norm": True}, "qk_norm"), ({"value_embeds": 1}, "value_embeds"), ({"unet_skips": True}, "unet_skips"),
])
def test_llama_refuses_what_llama_lacks(extra, key):
    problems = llama_shape_problems(ModelConfig(**{**LLAMA, **extra}))
    assert len(problems) == 1 and problems[0].startswith(f"model.{key}=")


def test_the_registry_finds_each_converter_by_name_shape_and_folder(tmp_path):
    import json

    from lm_lightning.convert import for_config, for_name, for_source
    from lm_lightning.errors import UserError

    assert for_name("llama").hf_architecture == "LlamaForCausalLM" and for_name("gpt2").gguf_arch == "gpt2"
    with pytest.raises(UserError, match="no Hugging Face converter for 'mamba'"):
        for_name("mamba")
    assert for_config(ModelConfig(**GPT2))[0] is for_name("gpt2")
    found, problems = for_config(ModelConfig(**{**LLAMA, "qk_norm": True}))
    assert found is None and problems["llama"] == ["model.qk_norm=True (Llama has False)"]
    for kind in ("llama", "gpt2"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "config.json").write_text(json.dumps({"model_type": kind}))
        assert for_source(str(tmp_path / kind)) is for_name(kind)
    with pytest.raises(UserError, match="no config.json in that folder"):
        for_source(str(tmp_path))
