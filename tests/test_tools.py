"""evaluate / generate / export CLIs, Hugging Face GPT-2 parity and model.init_from."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lm_lightning.config.location import CONF_DIR
from lm_lightning.errors import UserError
from lm_lightning.run.session import train

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat and the dog ran far away".split()


def corpus(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(6)) + "\n" for _ in range(n))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny char-level run with a checkpoint (trained in-process, a few steps)."""
    tmp = tmp_path_factory.mktemp("tools")
    (tmp / "train.txt").write_text(corpus(400, 0))
    (tmp / "val.txt").write_text(corpus(60, 1))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "data=text", f"data.train_path={tmp / 'train.txt'}", f"data.val_path={tmp / 'val.txt'}",
            "data.block_size=32", "data.batch_size=8", f"data.cache_dir={tmp / 'cache'}", "model=tiny",
            "trainer=debug", "trainer.max_steps=4", "trainer.val_check_interval=4", "logger=none",
            f"paths.runs_root={tmp / 'runs'}", "run_name=r"])
    summary = train(cfg)
    return {"ckpt": summary["last_checkpoint"], "tmp": tmp, "val_chars": len(corpus(60, 1))}


def cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", f"lm_lightning.{module}", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_evaluate_cli_prints_one_json_line_over_the_whole_split(run):
    out = cli("evaluate", f"ckpt={run['ckpt']}", cwd=run["tmp"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    # No test file: the validation split; every character after the first is scored once.
    assert result["split"] == "test" and result["tokens"] == run["val_chars"] - 1
    assert result["ppl"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-4)
    bad = cli("evaluate", "ckpt=missing.ckpt", cwd=run["tmp"])
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: checkpoint not found")
    assert "Traceback" not in bad.stderr


def test_evaluate_in_process_on_other_data(run, capsys):
    from lm_lightning import evaluate

    other = run["tmp"] / "other.txt"
    other.write_text(corpus(30, 5))
    evaluate.main([f"ckpt={run['ckpt']}", "split=val", "data=text", f"data.train_path={other}",
                   f"data.val_path={other}", f"data.cache_dir={run['tmp'] / 'cache2'}"])
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["tokens"] == len(corpus(30, 5)) - 1


def test_generate_is_seeded_and_uses_the_checkpoint_tokenizer(run, capsys):
    from lm_lightning import generate

    args = [f"ckpt={run['ckpt']}", "prompt=the cat", "max_new_tokens=50", "temperature=0.8", "top_k=50",
            "top_p=0.95"]
    generate.main(args + ["seed=1"])
    first = capsys.readouterr().out
    generate.main(args + ["seed=1"])
    again = capsys.readouterr().out
    generate.main(args + ["seed=2"])
    other = capsys.readouterr().out
    assert first.startswith("the cat") and len(first.rstrip("\n")) >= len("the cat") + 40
    assert first == again and first != other
    assert set(first) <= set(corpus(400, 0) + corpus(60, 1))  # only the char vocabulary


def test_generate_user_errors(run, capsys):
    from lm_lightning import generate

    with pytest.raises(SystemExit) as info:
        generate.main([f"ckpt={run['ckpt']}", "prompt=XYZ"])  # characters outside the vocabulary
    assert info.value.code == 2 and "not in the vocabulary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        generate.main([f"ckpt={run['ckpt']}", "temperature=hot"])
    assert info.value.code == 2 and "temperature must be a float" in capsys.readouterr().err


def test_export_cli_native_format(run, capsys):
    from safetensors.torch import load_file

    from lm_lightning import export
    from lm_lightning.ckpt.load import load_checkpoint

    out = run["tmp"] / "export"
    export.main([f"ckpt={run['ckpt']}", f"out={out}"])
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "native"  # model=tiny uses RoPE: not GPT-2's shape
    state = load_file(out / "model.safetensors")
    model = load_checkpoint(run["ckpt"]).model
    assert torch.equal(state["wte.weight"], model.wte.weight)
    spec = json.loads((out / "tokenizer_spec.json").read_text())
    assert spec["kind"] == "char"
    with pytest.raises(SystemExit):
        export.main([f"ckpt={run['ckpt']}", f"out={out}", "format=hf"])
    assert "GPT-2's architecture" in capsys.readouterr().err


# -- Hugging Face GPT-2 ------------------------------------------------------------------------
def random_hf_gpt2(vocab=300, positions=64):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a mapping mistake shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_hf_gpt2_parity_without_download():
    from lm_lightning.convert.gpt2 import gpt_from_hf, to_hf_state

    hf = random_hf_gpt2()
    ours = gpt_from_hf(hf)
    x = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)
    back = to_hf_state(ours)
    for k, v in hf.state_dict().items():
        if k in back:
            assert torch.equal(back[k], v), k


def test_export_gpt2_shape_loads_in_transformers_with_equal_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lm_lightning.convert.export import export
    from lm_lightning.convert.gpt2 import gpt_from_hf
    from lm_lightning.data.tokenizers import train_bpe

    ours = gpt_from_hf(random_hf_gpt2())
    tok = train_bpe(iter([corpus(300, 0)]), 300)
    result = export(ours, tok, tmp_path / "hf")
    assert result["format"] == "hf"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    x = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ours(x), atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok("the cat sat")["input_ids"] == tok.encode("the cat sat")


def test_init_from_local_gpt2_weights_and_mismatch_errors(tmp_path):
    from omegaconf import OmegaConf

    from lm_lightning.convert.gpt2 import from_hf_state
    from lm_lightning.model import ModelConfig
    from lm_lightning.run.session import init_weights

    hf = random_hf_gpt2()
    hf.save_pretrained(str(tmp_path / "gpt2-local"))
    cfg = OmegaConf.create({"model": {"init_from": str(tmp_path / "gpt2-local")}})
    shape = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=300, block_size=32, pos_emb="learned",
                 bias=True, tie_weights=True)
    state = init_weights(cfg, ModelConfig(**shape))
    expected = from_hf_state(hf.state_dict(), block_size=32)
    assert state.keys() == expected.keys() and torch.equal(state["wpe.weight"], hf.transformer.wpe.weight[:32])
    with pytest.raises(UserError, match="does not fit this model"):
        init_weights(cfg, ModelConfig(**dict(shape, n_layer=3)))
    with pytest.raises(UserError, match="does not fit this model"):
        init_weights(cfg, ModelConfig(**dict(shape, pos_emb="rope")))


def test_init_from_hub_offline_is_user_error(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from omegaconf import OmegaConf

    from lm_lightning.model import ModelConfig
    from lm_lightning.run.session import init_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = OmegaConf.create({"model": {"init_from": "gpt2"}})
    with pytest.raises(UserError, match="model.init_from=gpt2: weights could not be loaded"):
        init_weights(cfg, ModelConfig(pos_emb="learned", bias=True))


def test_sampling_stays_within_top_k_and_nucleus():
    from lm_lightning.model import sample_token

    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0, 3.0]]).repeat(400, 1)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_token(logits, 1.0, top_k=1, generator=gen).flatten(), torch.ones(400, dtype=torch.long))
    picks = sample_token(logits, 1.0, top_k=3, generator=gen).flatten()
    assert set(picks.tolist()) == {1, 2, 4}
    # Nucleus: token 1 has ~64% of the mass, token 2 ~24%; top_p=0.7 keeps exactly those two.
    picks = sample_token(logits, 1.0, top_p=0.7, generator=gen).flatten()
    assert set(picks.tolist()) == {1, 2}
    picks = sample_token(logits, 1.0, top_k=4, top_p=0.7, generator=gen).flatten()
    assert set(picks.tolist()) == {1, 2}
    assert torch.equal(sample_token(logits, 0.0).flatten(), torch.ones(400, dtype=torch.long))


# -- prepare ------------------------------------------------------------------------------------
def test_prepare_clean_split_analyze(tmp_path, capsys):
    from lm_lightning import prepare

    raw = tmp_path / "raw.txt"
    raw.write_text("Hello\x07 world   \r\n\n\n\nSecond line\n" + "".join(f"line {i}\n" for i in range(18)))
    prepare.main(["clean", str(raw), str(tmp_path / "clean.txt")])
    clean = (tmp_path / "clean.txt").read_text()
    assert clean.startswith("Hello world\n\nSecond line\n") and "\x07" not in clean and "\r" not in clean
    capsys.readouterr()
    prepare.main(["split", str(tmp_path / "clean.txt"), str(tmp_path / "train.txt"), str(tmp_path / "val.txt"),
                  "--val-lines", "4"])
    assert (tmp_path / "val.txt").read_text() == "line 14\nline 15\nline 16\nline 17\n"
    assert (tmp_path / "train.txt").read_text() + (tmp_path / "val.txt").read_text() == clean
    capsys.readouterr()
    prepare.main(["analyze", str(tmp_path / "val.txt"), "--bins", "2"])
    stats = json.loads(capsys.readouterr().out)
    assert (stats["lines"], stats["words"], stats["unique_words"], stats["chars"]) == (4, 8, 5, 32)
    assert stats["word_coverage_top_k"]["100"] == 1.0
    assert sum(b["lines"] for b in stats["line_length"]["histogram"]) == 4
    with pytest.raises(SystemExit) as info:
        prepare.main(["analyze", str(tmp_path / "missing.txt")])
    assert info.value.code == 2


def test_prepare_tokenize_feeds_data_tokens(tmp_path, capsys):
    import numpy as np

    from lm_lightning import prepare
    from lm_lightning.data.token_data import TokenDataModule
    from lm_lightning.data.tokenizers import load_bpe_file

    text = corpus(300, 3)
    (tmp_path / "a.txt").write_text(text)
    prepare.main(["tokenize", str(tmp_path / "a.txt"), "--out", str(tmp_path / "a.bin"), "--tokenizer", "bpe",
                  "--vocab-size", "300"])
    meta = json.loads(capsys.readouterr().out)
    tok = load_bpe_file(tmp_path / "a.bin.tokenizer.json")
    ids = np.fromfile(tmp_path / "a.bin", dtype=np.uint16)
    assert meta["tokens"] == len(ids) and ids.tolist() == tok.encode(text)
    dm = TokenDataModule(train_path=str(tmp_path / "a.bin"), val_path=str(tmp_path / "a.bin"),
                         block_size=16, batch_size=2, tokenizer={})
    assert dm.vocab_size == tok.vocab_size and dm.tokenizer.decode(ids.tolist()) == text  # from the sidecar
