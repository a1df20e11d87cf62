"""GGUF export checked by a reader no one here wrote: transformers' GGUF loader (with the gguf package).

Hermetic: tiny models and tokenizers are built in-process; files go under tmp_path.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf", reason="the optional `gguf` extra (pip install -e '.[gguf]')")

from test_hf_llama import WORDS, corpus, max_diff, random_llama  # noqa: E402

from lm_lightning.convert.export import export  # noqa: E402
from lm_lightning.convert.gguf_writer import write_gguf  # noqa: E402
from lm_lightning.convert.llama import _our_rows_to_hf, gpt_from_hf  # noqa: E402
from lm_lightning.data.tokenizers import ByteTokenizer, CharTokenizer, train_bpe  # noqa: E402
from lm_lightning.errors import UserError  # noqa: E402
from lm_lightning.model import GPT, ModelConfig  # noqa: E402

# ASCII prose, punctuation, newlines and runs of spaces, tabs, non-ASCII (2-, 3- and 4-byte UTF-8).
TEXTS = ["the cat sat on the mat, and the dog ran far away into the dark woods.",
         "Hello, World!? (yes) -- 'quoted' \"double\"; a:b/c 3.14 42 1,000\n\nnext   line    here\n",
         "   leading spaces\n\t\ttabs\r\n  trailing   ",
         "héllo wörld → 世界 🎉 naïve café"]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter([corpus(300) + "Hello, World!? 'quoted' 3.14 42\n"]), 300)


def load(path):
    """(model, tokenizer) through transformers' GGUF loader."""
    kw = {"gguf_file": path.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kw).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(path.parent), **kw)


def assert_same_ids(auto, tok, texts=TEXTS):
    for text in texts:
        ids = auto(text, add_special_tokens=True)["input_ids"]
        assert ids == tok.encode(text), text
        assert auto.decode(ids) == text


def llama(tied: bool, n_kv: int, theta: float = 10000.0):
    return gpt_from_hf(random_llama(tie_word_embeddings=tied, num_key_value_heads=n_kv, rope_theta=theta))


X = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(0))


# -- Llama: f32 parity, GQA, tied/untied heads, the q/k layout --------------------------------------------
@pytest.mark.parametrize("tied,n_kv,theta", [(True, 1, 10000.0), (False, 2, 500000.0), (True, 4, 1234.5)])
def test_llama_f32_logits_and_token_ids_through_transformers(bpe, tmp_path, tied, n_kv, theta):
    ours = llama(tied, n_kv, theta)
    result = write_gguf(ours, bpe, tmp_path / "m.gguf", "f32")
    assert result["gguf_architecture"] == "llama" and result["gguf_tokenizer"] == "gpt2/gpt-2"
    hf, auto = load(tmp_path / "m.gguf")
    c = hf.config
    assert type(hf).__name__ == "LlamaForCausalLM" and c.tie_word_embeddings == tied
    assert (c.num_attention_heads, c.num_key_value_heads, c.hidden_size, c.intermediate_size) == (4, n_kv, 64, 96)
    assert (c.num_hidden_layers, c.vocab_size, c.max_position_embeddings) == (2, 300, 64)
    assert c.rms_norm_eps == pytest.approx(1e-5) and hf.config.rope_parameters["rope_theta"] == pytest.approx(theta)
    names = [t.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors]
    assert ("output.weight" in names) != tied  # a tied head is token_embd.weight, as llama.cpp expects
    with torch.no_grad():
        ref = ours(X)
        assert ref.abs().max() > 1.0
        assert max_diff(hf(X).logits, ref) <= 1e-4
    assert_same_ids(auto, bpe)
    assert auto.eos_token_id == bpe.eot_id and auto.bos_token_id == bpe.eot_id


def test_hugging_face_rotate_half_rows_would_be_wrong(bpe, tmp_path):
    """llama.cpp wants interleaved RoPE rows, which ours are: HF's rotate-half layout breaks the logits."""
    ours = llama(False, 2)
    wrong = GPT(ours.config).eval()
    wrong.load_state_dict(ours.state_dict())
    C, kv, hs = ours.config.n_embd, ours.config.kv_size, ours.config.head_size
    with torch.no_grad():
        for block in wrong.h:
            w = block.attn.c_attn.weight
            w[:C] = _our_rows_to_hf(w[:C].clone(), 4, hs)
            w[C:C + kv] = _our_rows_to_hf(w[C:C + kv].clone(), 2, hs)
    write_gguf(wrong, bpe, tmp_path / "w.gguf", "f32")
    hf, _ = load(tmp_path / "w.gguf")
    with torch.no_grad():
        assert max_diff(hf(X).logits, ours(X)) > 1e-2


def rounded(model, qtype):
    """Our model with every matrix rounded through a GGUF type (1-D tensors stay f32, as in the file)."""
    from gguf.quants import dequantize, quantize

    out = GPT(model.config).eval()
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in out.parameters():
            if p.ndim == 2:
                q = dequantize(quantize(p.numpy().astype("float32"), qtype), qtype)
                p.copy_(torch.from_numpy(q.astype("float32")).reshape(p.shape))
    return out


# Measured on this model (max |logit| about 3): f16 4.7e-3, bf16 2.2e-2, q8_0 1.3e-1 from the f32 model's logits,
# and 2e-6 from those of our model with its matrices rounded to the type.
@pytest.mark.parametrize("outtype,qtype,bound", [("f16", "F16", 1e-2), ("bf16", "BF16", 6e-2),
                                                  ("q8_0", "Q8_0", 0.2)])
def test_llama_reduced_types_are_our_weights_rounded(bpe, tmp_path, outtype, qtype, bound):
    ours = llama(False, 2)
    path = tmp_path / f"m-{outtype}.gguf"
    write_gguf(ours, bpe, path, outtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == qtype and types["output.weight"] == qtype
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    hf, _ = load(path)
    with torch.no_grad():
        got = hf(X).logits
        # The file holds exactly our weights rounded to the type: equal to that model's logits ...
        assert max_diff(got, rounded(ours, getattr(gguf.GGMLQuantizationType, qtype))(X)) <= 1e-4
        # ... and within the stated bound of the f32 model's.
        assert max_diff(got, ours(X)) <= bound


def test_q8_0_writes_f16_where_rows_do_not_fill_its_blocks(bpe, tmp_path):
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=40, d_ff=64, vocab_size=300, block_size=64, norm="rmsnorm",
                      mlp="swiglu", norm_eps=1e-5, tie_weights=False)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    write_gguf(ours, bpe, tmp_path / "q.gguf", "q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "F16"  # rows of 40
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 64
    hf, _ = load(tmp_path / "q.gguf")
    with torch.no_grad():
        assert max_diff(hf(X).logits, ours(X)) <= 1e-2


# -- tokenizers -------------------------------------------------------------------------------------------
def _hf_kind(bpe, tmp_path):
    """tokenizer=hf: a transformers folder's byte-level BPE tokenizer with its own special tokens."""
    from lm_lightning.convert.tokenizers import fast_tokenizer
    from lm_lightning.data.tokenizers import load_hf_tokenizer

    fast_tokenizer(bpe).save_pretrained(str(tmp_path / "tok"))
    return load_hf_tokenizer(tmp_path / "tok")


@pytest.mark.parametrize("kind", ["byte", "byte-eot", "char", "char-eot", "hf"])
def test_tokenizer_kinds_round_trip(bpe, tmp_path, kind):
    ascii_texts = TEXTS[:3]
    tok = {"byte": lambda: ByteTokenizer(), "byte-eot": lambda: ByteTokenizer(eot=True),
           "char": lambda: CharTokenizer("".join(ascii_texts)), "char-eot": lambda: CharTokenizer("".join(ascii_texts), eot=True),
           "hf": lambda: _hf_kind(bpe, tmp_path)}[kind]()
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, d_ff=64, vocab_size=tok.vocab_size + 3, block_size=128,
                      norm="rmsnorm", mlp="swiglu", norm_eps=1e-5)  # 3 padding rows: [PAD] tokens in the file
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    write_gguf(ours, tok, tmp_path / "t.gguf", "f32")
    hf, auto = load(tmp_path / "t.gguf")
    assert_same_ids(auto, tok, ascii_texts if kind.startswith("char") else TEXTS)
    if getattr(tok, "eot_id", None) is not None:
        assert auto.eos_token_id == tok.eot_id
    x = torch.tensor([tok.encode(ascii_texts[1])])
    with torch.no_grad():
        assert max_diff(hf(x).logits, ours(x)) <= 1e-4


def test_tokenizers_that_gguf_cannot_express_are_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lm_lightning.data.tokenizers import HFTokenizer

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=300, norm="rmsnorm", mlp="swiglu")
    model = GPT(cfg)
    with pytest.raises(UserError, match=r"the char tokenizer .* non-ASCII characters \('é'") as info:
        write_gguf(model, CharTokenizer("abcé"), tmp_path / "c.gguf")
    assert "\n" not in str(info.value)
    ws = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    ws.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UserError, match="the hf tokenizer .* its pre-tokenizer is Whitespace"):
        write_gguf(model, HFTokenizer("hf", ws), tmp_path / "w.gguf")
    with pytest.raises(UserError, match="no tokenizer"):
        write_gguf(model, None, tmp_path / "n.gguf")
    with pytest.raises(UserError, match="257 tokens but the model only 256 embedding rows"):
        write_gguf(GPT(ModelConfig(**{**cfg.to_dict(), "vocab_size": 256})), ByteTokenizer(eot=True), tmp_path / "v.gguf")
    assert not list(tmp_path.iterdir())


# -- GPT-2's shape: GGUF gpt2 -------------------------------------------------------------------------------
def test_gpt2_shape_as_gguf_gpt2(bpe, tmp_path):
    # GPT-2's context (1024): transformers' GGUF loader ignores gpt2.context_length (see gguf_export.py).
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=300, block_size=1024, pos_emb="learned", bias=True)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial biases and norms
    assert write_gguf(ours, bpe, tmp_path / "g.gguf", "f32")["gguf_architecture"] == "gpt2"
    hf, auto = load(tmp_path / "g.gguf")
    assert type(hf).__name__ == "GPT2LMHeadModel"
    with torch.no_grad():
        ref = ours(X)
        assert ref.abs().max() > 1.0 and max_diff(hf(X).logits, ref) <= 1e-4
    assert_same_ids(auto, bpe)


@pytest.mark.parametrize("kw,message", [
    (dict(pos_emb="learned", bias=True, n_kv_head=1), "model.n_kv_head=1 (GPT-2 has n_head=2)"),
    (dict(pos_emb="learned", bias=True, qk_norm=True), "model.qk_norm=True (GPT-2 has False)"),
    (dict(), "llama needs model.norm='layernorm' (Llama has 'rmsnorm')"),
])
def test_other_shapes_are_refused_with_one_line(bpe, tmp_path, kw, message):
    with pytest.raises(UserError, match="format=gguf needs Llama's architecture") as info:
        write_gguf(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=64, vocab_size=300, **kw)), bpe, tmp_path / "x.gguf")
    assert message in str(info.value) and "\n" not in str(info.value)


# -- the CLI: format=gguf / all, outtype, overwrite, bad input ------------------------------------------------
@pytest.fixture
def ckpt(bpe, tmp_path):
    """A checkpoint file as training writes one (model hparams, prefixed state, the tokenizer spec)."""
    model = llama(True, 2)
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model": model.config.to_dict()}, "global_step": 3,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "datamodule": {"tokenizer": bpe.spec()}, "run_config": {"run_name": "tiny"}}, path)
    return path, model


def cli(capsys, *args):
    from lm_lightning import export as export_cli

    try:
        export_cli.main(list(args))
    except SystemExit as exc:
        err = capsys.readouterr().err.strip()
        return exc.code, err
    return 0, json.loads(capsys.readouterr().out)


def test_cli_format_gguf_and_all(ckpt, tmp_path, capsys):
    path, ours = ckpt
    code, result = cli(capsys, f"ckpt={path}", f"out={tmp_path / 'g'}", "format=gguf", "outtype=f32")
    assert code == 0 and result["format"] == "gguf" and result["gguf"] == str(tmp_path / "g" / "tiny-f32.gguf")
    hf, _ = load(tmp_path / "g" / "tiny-f32.gguf")
    with torch.no_grad():
        assert max_diff(hf(X).logits, ours(X)) <= 1e-4
    meta = gguf.GGUFReader(str(tmp_path / "g" / "tiny-f32.gguf")).fields
    text = {k: bytes(meta[k].parts[-1]).decode() for k in ("general.name", "general.training.steps",
                                                             "general.export.command", "tokenizer.ggml.pre")}
    assert text == {"general.name": "tiny-f32", "general.training.steps": "3", "tokenizer.ggml.pre": "gpt-2",
                    "general.export.command": f"python -m lm_lightning.export ckpt={path} out={tmp_path / 'g'} "
                                              "format=gguf outtype=f32"}
    code, result = cli(capsys, f"ckpt={path}", f"out={tmp_path / 'a'}", "format=all")
    assert code == 0 and result["format"] == "hf" and result["outtype"] == "f16"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "tiny-f16.gguf"} <= set(result["files"])
    assert "llama-cli -m " in (tmp_path / "a" / "README.md").read_text()
    assert transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "a")).config.model_type == "llama"


def test_cli_bad_input_is_one_line_exit_2_and_leaves_no_gguf(ckpt, tmp_path, capsys, monkeypatch):
    path, _ = ckpt
    out = tmp_path / "o"

    def refused(*args, message):
        code, err = cli(capsys, f"ckpt={path}", f"out={out}", *args)
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err

    refused("format=gguf", "outtype=q4_k", message="outtype must be one of f32, f16, bf16, q8_0, got 'q4_k'")
    refused("format=all", "outtype=f64", message="outtype must be one of")
    assert not out.exists()
    shards = tmp_path / "sharded.ckpt"
    shards.mkdir()
    (shards / "__0_0.distcp").write_bytes(b"\0" * 8)
    code, err = cli(capsys, f"ckpt={shards}", f"out={out}", "format=gguf")
    assert code == 2 and "sharded checkpoint" in err and len(err.splitlines()) == 1, err
    (shards / "meta.pt").write_bytes(b"not a checkpoint")  # a complete-looking sharded folder that cannot be read
    (shards / ".metadata").write_bytes(b"\0" * 8)
    code, err = cli(capsys, f"ckpt={shards}", f"out={out}", "format=gguf")
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not out.exists()
    assert cli(capsys, f"ckpt={path}", f"out={out}", "format=gguf")[0] == 0
    before = (out / "tiny-f16.gguf").stat().st_mtime_ns
    refused("format=gguf", message="tiny-f16.gguf exists; pass overwrite=true to replace it")
    refused("format=all", message="tiny-f16.gguf exists; pass overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == ["tiny-f16.gguf"]  # format=all wrote nothing either
    assert (out / "tiny-f16.gguf").stat().st_mtime_ns == before
    assert cli(capsys, f"ckpt={path}", f"out={out}", "format=gguf", "overwrite=true")[0] == 0
    # A failure while writing leaves neither a partial .gguf nor the temporary file.
    def disk_full(self, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(llama(True, 1), train_bpe(iter([" ".join(WORDS)]), 300), tmp_path / "p" / "x.gguf")
    assert list((tmp_path / "p").iterdir()) == []
    with pytest.raises(UserError, match="format must be auto, hf, native, gguf or all"):
        export(llama(True, 1), None, tmp_path / "q", "gguff")
    # format=all refuses what GGUF cannot hold before writing the transformers folder too.
    with pytest.raises(UserError, match="format=gguf needs Llama's architecture"):
        export(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=300)), None, tmp_path / "r", "all")
    with pytest.raises(UserError, match="the char tokenizer"):
        export(llama(True, 1), CharTokenizer("abcé"), tmp_path / "r", "all")
    assert not (tmp_path / "r").exists()
