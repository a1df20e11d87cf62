"""Llama models in and out through transformers: parity, export, import + fine-tune, tokenizers, errors.

Hermetic: tiny random LlamaForCausalLM folders are built with save_pretrained under tmp_path.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lm_lightning.data.tokenizers import ByteTokenizer, CharTokenizer, from_spec  # noqa: E402
from lm_lightning.errors import UserError  # noqa: E402
from lm_lightning.model import GPT, ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat and the dog ran far away into the dark woods".split()
TEXTS = ["hello world", "héllo → 世界 🎉\n\ttabs  and  spaces .", " leading space, trailing ", "a\r\nb\x00c"]


def corpus(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) + "\n" for _ in range(n))


def llama_config(**kw):
    base = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, initializer_range=0.1)
    return transformers.LlamaConfig(**{**base, **kw})


def random_llama(**kw):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_config(**kw)).eval()
    with torch.no_grad():  # non-trivial norms, so a mapping mistake shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return hf


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama folder with a byte tokenizer (vocabulary 300 > the tokenizer's 256), and a corpus."""
    from lm_lightning.convert.tokenizers import fast_tokenizer

    tmp = tmp_path_factory.mktemp("llama")
    hf = random_llama(max_position_embeddings=128)
    hf.save_pretrained(str(tmp / "tiny-llama"))
    fast_tokenizer(ByteTokenizer()).save_pretrained(str(tmp / "tiny-llama"))
    (tmp / "train.txt").write_text(corpus(300))
    return {"tmp": tmp, "dir": tmp / "tiny-llama", "hf": hf, "train": tmp / "train.txt"}


# -- parity -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied,n_kv,theta", [(True, 1, 10000.0), (False, 2, 10000.0), (True, 4, 500000.0),
                                             (False, 4, 1234.5)])
def test_parity_both_directions(tied, n_kv, theta):
    from lm_lightning.convert.llama import _hf_rows_to_ours, gpt_from_hf, hf_llama_from_gpt, to_hf_state

    hf = random_llama(tie_word_embeddings=tied, num_key_value_heads=n_kv, rope_theta=theta)
    x = torch.randint(0, 300, (2, 48))
    ours = gpt_from_hf(hf)  # HF -> ours
    assert ours.config.tie_weights == tied and ours.config.n_kv_head == n_kv and ours.config.rope_theta == theta
    with torch.no_grad():
        ref = hf(x).logits
        assert ref.abs().max() > 1.0  # logits large enough that a layout mistake cannot hide
        assert max_diff(ours(x), ref) <= 1e-4
        back = to_hf_state(ours)  # ours -> HF, exactly the original tensors
        assert all(torch.equal(back[k], v) for k, v in hf.state_dict().items())
        torch.manual_seed(1)
        fresh = GPT(ours.config).eval()  # a model of ours that never was HF's
        for p in fresh.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        assert max_diff(hf_llama_from_gpt(fresh)(x).logits, fresh(x)) <= 1e-4
        # The q/k row permutation is what makes RoPE agree: without it the logits differ.
        hs = ours.config.head_size
        for layer in hf.model.layers:
            w = layer.self_attn.q_proj.weight
            w.copy_(_hf_rows_to_ours(w, 4, hs))
        assert max_diff(hf(x).logits, ref) > 1e-2


def test_hf_config_fields_and_refusals():
    from lm_lightning.convert.llama import config_from_hf, hf_config, llama_shape_problems

    cfg = ModelConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, d_ff=96, vocab_size=300, block_size=32,
                      norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", rope_theta=5e5, tie_weights=False)
    c = hf_config(cfg, eos_token_id=7, bos_token_id=7)
    assert (c.rms_norm_eps, c.num_key_value_heads, c.intermediate_size, c.max_position_embeddings) == (1e-5, 2, 96, 32)
    assert (c.head_dim, c.tie_word_embeddings, c.attention_bias, c.mlp_bias, c.eos_token_id) == (16, False, False,
                                                                                                    False, 7)
    assert config_from_hf(c) == ModelConfig(**{**cfg.to_dict(), "dropout": 0.0})
    assert hf_config(cfg).bos_token_id is None and hf_config(cfg).eos_token_id is None
    assert [p.split("=")[0] for p in llama_shape_problems(ModelConfig())] == ["model.norm", "model.mlp"]
    with pytest.raises(UserError, match="not Llama's architecture"):
        hf_config(ModelConfig(qk_norm=True))
    d = llama_config().to_dict()
    with pytest.raises(UserError, match="rope scaling 'llama3' is not supported"):
        config_from_hf({**d, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}})
    with pytest.raises(UserError, match="rope scaling 'linear'"):
        config_from_hf({**d, "rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(UserError, match="head_dim 32 != hidden_size / num_attention_heads"):
        config_from_hf({**d, "head_dim": 32})


# -- tokenizers ---------------------------------------------------------------------------------------
def _eot(cls, *args):
    try:
        return cls(*args, eot=True)
    except TypeError:  # a tokenizer module without end-of-text ids
        pytest.skip("this tokenizer has no eot option")


@pytest.mark.parametrize("make", [lambda: ByteTokenizer(), lambda: CharTokenizer("".join(TEXTS)),
                                  lambda: _eot(ByteTokenizer), lambda: _eot(CharTokenizer, "".join(TEXTS))],
                         ids=["byte", "char", "byte-eot", "char-eot"])
def test_tokenizer_round_trip_through_autotokenizer(make, tmp_path):
    from lm_lightning.convert.tokenizers import fast_tokenizer

    tok = make()
    fast_tokenizer(tok).save_pretrained(str(tmp_path))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(auto) == tok.vocab_size
    for text in TEXTS:  # ASCII, multi-byte UTF-8, whitespace runs, control characters
        ids = auto(text)["input_ids"]
        assert ids == tok.encode(text)
        assert auto.decode(ids) == text == tok.decode(ids)
    if getattr(tok, "eot_id", None) is not None:
        assert auto.eos_token_id == tok.eot_id and auto.decode([tok.eot_id]) == tok.decode([tok.eot_id])


def test_hf_tokenizer_kind_is_plain_data_and_adds_no_special_tokens(tmp_path):
    from lm_lightning.convert.tokenizers import fast_tokenizer
    from lm_lightning.data.tokenizers import load_hf_tokenizer, train_bpe

    bpe = train_bpe(iter([corpus(200)]), 300)
    fast = fast_tokenizer(bpe)
    fast.backend_tokenizer.post_processor = __import__("tokenizers").processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bpe.eot_id)])  # a BOS, as Llama's add
    fast.save_pretrained(str(tmp_path))
    tok = load_hf_tokenizer(tmp_path)
    assert tok.encode("the cat sat") == bpe.encode("the cat sat") and tok.eot_id == bpe.eot_id
    torch.save({"tokenizer": tok.spec()}, tmp_path / "spec.pt")
    spec = torch.load(tmp_path / "spec.pt", weights_only=True)["tokenizer"]
    again = from_spec(spec)
    assert spec["kind"] == "hf" and again.encode("the dog ran") == bpe.encode("the dog ran")
    with pytest.raises(UserError, match="tokenizer=hf needs tokenizer.path=DIR"):
        load_hf_tokenizer(tmp_path / "missing")
    # A data module built directly (not through train.check) builds the hf tokenizer itself.
    from lm_lightning.data.text import TextDataModule

    (tmp_path / "train.txt").write_text(corpus(50))
    dm = TextDataModule(source="text", tokenizer={"kind": "hf", "path": str(tmp_path)},
                        train_path=str(tmp_path / "train.txt"), block_size=8, batch_size=2,
                        cache_dir=str(tmp_path / "cache"))
    assert dm.tokenizer.kind == "hf" and dm.tokenizer.encode("the cat sat") == bpe.encode("the cat sat")


# -- import, fine-tune, export --------------------------------------------------------------------------
def compose(folder, *overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lm_lightning.config.location import CONF_DIR

    base = [f"paths.runs_root={folder['tmp'] / 'runs'}", f"data.cache_dir={folder['tmp'] / 'cache'}", "logger=none",
            "model=llama", f"model.init_from={folder['dir']}", "data=text", f"data.train_path={folder['train']}",
            "data.block_size=32", "data.batch_size=4", "trainer=debug"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=base + list(overrides))


def test_init_from_sets_the_shape_and_loads_the_weights(folder):
    from lm_lightning.convert.llama import from_hf_state
    from lm_lightning.run.plan import prepare
    from lm_lightning.run.session import init_weights

    cfg = compose(folder, "tokenizer=byte")  # the llama preset says 8 layers, 8 heads, 512 wide
    model_cfg = prepare(cfg).model_cfg
    want = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, d_ff=96, vocab_size=300, block_size=32, norm_eps=1e-5,
                tie_weights=True, norm="rmsnorm", mlp="swiglu", pos_emb="rope", bias=False)
    assert {k: getattr(model_cfg, k) for k in want} == want
    assert cfg.model.n_layer == 2  # the printed / saved config says what the run has
    state = init_weights(cfg, model_cfg)
    expected = from_hf_state(folder["hf"].state_dict(), model_cfg)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


@pytest.fixture(scope="module")
def finetuned(folder):
    """model=llama model.init_from=DIR tokenizer=hf (its path: the init_from folder), 2 steps."""
    from lm_lightning.run.session import train

    summary = train(compose(folder, "tokenizer=hf", "run_name=ft", "trainer.max_steps=2",
                            "trainer.val_check_interval=2"))
    assert summary["status"] == "finished" and summary["global_step"] == 2
    return summary


def test_import_train_export_round_trip(folder, finetuned, capsys):
    from lm_lightning import export
    from lm_lightning.ckpt.load import checkpoint_tokenizer as tokenizer_of
    from lm_lightning.ckpt.load import load_checkpoint

    loaded = load_checkpoint(finetuned["last_checkpoint"])
    tok = tokenizer_of(loaded)
    assert tok.kind == "hf" and loaded.model.config.vocab_size == 300
    out = folder["tmp"] / "exported"
    export.main([f"ckpt={finetuned['last_checkpoint']}", f"out={out}"])
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "hf" and result["architecture"] == "LlamaForCausalLM" and "note" not in result
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= set(
        result["files"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    prompt = "the dog ran; the cat sat"
    ids = auto(prompt, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tok.encode(prompt)
    with torch.no_grad():
        assert max_diff(hf(ids).logits, loaded.model(ids)) <= 1e-4
        moved = max_diff(loaded.model.wte.weight, folder["hf"].model.embed_tokens.weight)
    assert 0 < moved < 0.05  # trained from the folder's weights, not from scratch
    greedy = hf.generate(ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1]:]
    assert greedy.tolist() == loaded.model.generate(ids, 5, temperature=0)[0, ids.shape[1]:].tolist()
    text = transformers.pipeline("text-generation", model=str(out))("the cat", max_new_tokens=8, do_sample=False)
    assert text[0]["generated_text"].startswith("the cat") and len(text[0]["generated_text"]) > len("the cat")
    card = (out / "README.md").read_text()
    assert "- **steps**: 2" in card and "val loss " in card and "LlamaForCausalLM" in card
    assert "python -m lm_lightning.export ckpt=" in card
    # train() ran in-process, so there is no command line to record; the resolved config is named.
    assert "- **trained with**: not recorded (resolved config: " in card


def test_lm_eval_hflm_loglikelihood_on_an_export(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional `eval` extra (pip install -e '.[eval]')")
    pytest.importorskip("accelerate", reason="lm_eval's HF model needs accelerate (lm-eval[hf])")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_lightning.convert.export import export
    from lm_lightning.convert.llama import gpt_from_hf
    from lm_lightning.data.tokenizers import train_bpe

    ours = gpt_from_hf(random_llama())
    tok = train_bpe(iter([corpus(200)]), 300)
    export(ours, tok, tmp_path / "hf")
    lm = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=1)
    (logprob, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("the cat", " sat on the mat"), 0)])
    ctx, whole = tok.encode("the cat"), tok.encode("the cat sat on the mat")
    with torch.no_grad():
        lp = ours(torch.tensor([whole])).log_softmax(-1)[0]
    assert logprob == pytest.approx(sum(lp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))), abs=1e-3)


def test_other_architectures_export_natively_with_a_note(tmp_path):
    from lm_lightning.convert.export import export

    result = export(GPT(ModelConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=256, block_size=16)), ByteTokenizer(),
                    tmp_path / "native")
    assert result["format"] == "native" and "no transformers class fits" in result["note"]
    assert "model.norm='layernorm' (Llama has 'rmsnorm')" in result["note"] and "\n" not in result["note"]
    assert "Note: native format" in (tmp_path / "native" / "README.md").read_text()


# -- bad inputs: one line, exit 2, no run directory -------------------------------------------------------
def _bad_folders(tmp: Path) -> dict[str, Path]:
    out = {}
    out["mistral"] = tmp / "mistral"
    transformers.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                               vocab_size=300).save_pretrained(str(out["mistral"]))
    out["empty"] = tmp / "empty"
    out["empty"].mkdir()
    out["llama3"] = tmp / "llama3"
    llama_config(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
                 ).save_pretrained(str(out["llama3"]))
    return out


@pytest.mark.parametrize("case,extra,message", [
    ("mistral", [], "a 'mistral' model (unknown class); only Llama (LlamaForCausalLM) and GPT-2"),
    ("empty", [], "no config.json in that folder"),
    ("llama3", [], "rope scaling 'llama3' is not supported"),
    ("good", ["model.n_kv_head=4"], "model.n_kv_head=4 but the folder has 2"),
    ("good", ["data.block_size=256"], "block_size 256 exceeds the model's max_position_embeddings 128"),
    ("good", ["tokenizer=char", "+model.vocab_size=512"], "model.vocab_size=512 but the folder has 300"),
])
def test_bad_init_from_is_one_line_and_exit_2(folder, case, extra, message, capsys):
    from lm_lightning.cli.train import precheck

    path = folder["dir"] if case == "good" else _bad_folders(folder["tmp"] / f"bad-{case}")[case]
    argv = [f"paths.runs_root={folder['tmp'] / 'bad-runs'}", "run_name=bad", f"data.cache_dir={folder['tmp'] / 'c'}",
            "model=llama", f"model.init_from={path}", "data=text", f"data.train_path={folder['train']}",
            "data.block_size=32", "tokenizer=byte", *extra]
    with pytest.raises(SystemExit) as info:
        precheck(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert message in err, err
    assert not (folder["tmp"] / "bad-runs").exists()


def test_train_cli_refuses_a_mistral_folder(folder):
    from conftest import run_train

    bad = _bad_folders(folder["tmp"] / "cli")["mistral"]
    runs = folder["tmp"] / "cli-runs"
    proc = run_train([f"paths.runs_root={runs}", "run_name=x", "model=llama", f"model.init_from={bad}", "data=text",
                      f"data.train_path={folder['train']}", "tokenizer=byte", f"data.cache_dir={folder['tmp'] / 'c'}"],
                     cwd=folder["tmp"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.init_from=")
    assert not runs.exists()


def test_init_from_hub_name_offline_is_user_error(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from lm_lightning.run.session import init_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = OmegaConf.create({"model": {"init_from": "someone/tiny-llama"}})
    with pytest.raises(UserError, match="model.init_from=someone/tiny-llama: weights could not be loaded"):
        init_weights(cfg, ModelConfig(norm="rmsnorm", mlp="swiglu"))
    assert sys.modules.get("lm_lightning.convert.llama") is not None
