"""Text runs end to end (in-process, Hydra compose API): learning, offline errors, experiments."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lm_lightning.ckpt.load import load_checkpoint
from lm_lightning.config.location import CONF_DIR
from lm_lightning.errors import UserError
from lm_lightning.run.session import train

WORDS = "the cat sat on a mat and the dog ran far away into the dark woods".split()


def corpus(n_lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n" for _ in range(n_lines))


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def common(tmp_path: Path, name: str) -> list[str]:
    return [f"paths.runs_root={tmp_path / 'runs'}", f"run_name={name}", f"data.cache_dir={tmp_path / 'cache'}",
            "logger=none"]


@pytest.mark.slow
def test_short_text_run_beats_the_unigram_entropy(tmp_path):
    (tmp_path / "train.txt").write_text(corpus(3000))
    (tmp_path / "val.txt").write_text(corpus(300, seed=1))
    cfg = compose_cfg(common(tmp_path, "learn")[:-1] + ["logger=csv", "trainer.log_every_n_steps=10",
        "data=text", f"data.train_path={tmp_path / 'train.txt'}", f"data.val_path={tmp_path / 'val.txt'}",
        "data.block_size=32", "data.batch_size=16", "model=tiny", "trainer=debug", "trainer.max_steps=60",
        "trainer.val_check_interval=60", "trainer.limit_val_batches=null", "optimizer.lr=5e-3",
        "scheduler.warmup_steps=10"])
    summary = train(cfg)
    dm_cfg = cfg.data
    from hydra.utils import instantiate

    dm = instantiate(dm_cfg)
    unigram = dm.baselines()["next_token_unigram"]
    val = summary["metrics"]["val/loss"]
    assert summary["status"] == "finished" and summary["global_step"] == 60
    # Characters inside words are nearly determined by the previous ones: a model that learned
    # anything sits far below the entropy of the character frequencies.
    assert val < unigram - 0.6, (val, unigram)
    assert summary["metrics"]["val/ppl"] == pytest.approx(2.718281828 ** val, rel=1e-3)
    metrics = (tmp_path / "runs" / "learn" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/ppl", "train/tokens_per_s", "val/ppl"} <= set(metrics)
    loaded = load_checkpoint(summary["last_checkpoint"])
    assert loaded.datamodule_state["tokenizer"]["kind"] == "char"
    assert loaded.config["data"]["train_path"] == str(tmp_path / "train.txt")
    assert (tmp_path / "runs" / "learn" / "summary.json").is_file()


def test_offline_hub_tokenizer_is_a_user_error_before_any_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = compose_cfg(common(tmp_path, "offline") + ["data=wikitext2"])
    with pytest.raises(UserError, match="tokenizer 'gpt2'.*HF_HOME.*data=text data.train_path="):
        train(cfg)
    assert not (tmp_path / "runs" / "offline").exists()


def test_offline_hub_dataset_is_a_user_error_before_any_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    cfg = compose_cfg(common(tmp_path, "offline") + ["data=wikitext2", "tokenizer=byte", "model=tiny"])
    with pytest.raises(UserError, match="Salesforce/wikitext.*HF_DATASETS_CACHE.*data=text data.train_path="):
        train(cfg)
    assert not (tmp_path / "runs" / "offline").exists()


def test_missing_text_file_is_a_user_error(tmp_path):
    cfg = compose_cfg(common(tmp_path, "missing") + ["data=text", f"data.train_path={tmp_path / 'nope.txt'}"])
    with pytest.raises(UserError, match="no file matches"):
        train(cfg)


# -- experiments: first steps on local fixtures ------------------------------------------------
SMALL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.d_ff=64", "data.block_size=32",
         "data.batch_size=2", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.fast_dev_run=true"]


def wikitext_files(tmp_path: Path, splits=("train", "validation", "test"), fmt="parquet") -> str:
    import datasets

    files = {}
    for i, split in enumerate(splits):
        lines = [f" = Heading {i} = \n", "\n"] + [line + "\n" for line in corpus(200, seed=i).splitlines()]
        path = tmp_path / f"{split}.{fmt}"
        ds = datasets.Dataset.from_dict({"text": lines})
        ds.to_parquet(str(path)) if fmt == "parquet" else ds.to_json(str(path))
        files[split] = str(path)
    return "{" + ",".join(f"{k}:'{v}'" for k, v in files.items()) + "}"


def experiment_overrides(name: str, tmp_path: Path) -> list[str]:
    text = tmp_path / "input.txt"
    text.write_text(corpus(1500))
    local = [f"data.train_path={text}"]
    if name == "gpt2_wikitext2":  # WikiText's schema in local parquet files; a local tokenizer
        return ["data.hf_path=parquet", f"data.hf_data_files={wikitext_files(tmp_path)}", "tokenizer=byte"]
    if name == "cs336_tinystories":
        files = wikitext_files(tmp_path, ("train", "validation"), fmt="json")
        return ["data.hf_path=json", f"data.hf_data_files={files}", "tokenizer.vocab_size=300"]
    if name.startswith("fragment_llm"):  # and its tiers fragment_llm_low / fragment_llm_high
        return local + ["tokenizer.vocab_size=300", "trainer.accumulate_grad_batches=1"]
    return local


# Every experiment's first steps run in test_experiments.py (a glob over conf/experiment/, with
# experiment_overrides above as the text fixtures); here only what fragment_llm adds on top.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["fragment_llm"])
def test_text_experiment_runs_its_first_steps(tmp_path, name):
    pytest.importorskip("datasets")
    cfg = compose_cfg([f"experiment={name}"] + common(tmp_path, name) + experiment_overrides(name, tmp_path) + SMALL)
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["global_step"] == 1
    if name == "fragment_llm":
        final = tmp_path / "runs" / name / "models" / "final_model.pt"
        loaded = load_checkpoint(final)
        assert loaded.datamodule_state["tokenizer"]["kind"] == "bpe"


def test_shakespeare_char_is_nanogpts_recipe():
    cfg = compose_cfg(["experiment=shakespeare_char"])
    d, m, o, s, t = cfg.data, cfg.model, cfg.optimizer, cfg.scheduler, cfg.trainer
    assert cfg.tokenizer.kind == "char" and d.val_fraction == 0.1
    assert (d.block_size, d.batch_size, d.eval_batches) == (64, 12, 20)
    assert (m.n_layer, m.n_head, m.n_embd, m.dropout) == (4, 4, 128, 0.0)
    assert (m.pos_emb, m.norm, m.mlp, m.bias, m.tie_weights) == ("learned", "layernorm", "gelu", False, True)
    assert (o.lr, list(o.betas), o.weight_decay) == (1e-3, [0.9, 0.99], 0.1)
    assert (s.warmup_steps, s.min_lr) == (100, 1e-4)
    assert (t.max_steps, t.val_check_interval, t.gradient_clip_val, t.accumulate_grad_batches) == (2000, 250, 1.0, 1)


def test_fast_recipe_stays_under_one_million_parameters():
    from lm_lightning.model import GPT, ModelConfig

    cfg = compose_cfg(["experiment=shakespeare_char_fast"])
    arch = {k: v for k, v in cfg.model.items() if k not in ("compile", "init_from")}
    arch.update(vocab_size=65, block_size=cfg.data.block_size)
    model = GPT(ModelConfig.from_dict(arch))
    assert sum(p.numel() for p in model.parameters()) <= 1_000_000


def test_every_data_and_tokenizer_option_composes():
    for data in ("text", "tokens", "wikitext2", "wikitext103", "tinystories"):
        for tok in ("char", "byte", "bpe", "gpt2"):
            cfg = compose_cfg([f"data={data}", f"tokenizer={tok}"])
            assert cfg.data.tokenizer.kind == tok
    assert json.loads(json.dumps(dict(compose_cfg(["data=wikitext2"]).data.hf_splits)))["val"] == "validation"
