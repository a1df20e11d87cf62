"""Every option of every config group composes, validates and instantiates."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig
from lm_lightning.optim.build import build_optimizer
from lm_lightning.run.plan import prepare
from lm_lightning.run.session import instantiate_group

# Groups whose options are exercised elsewhere (experiments have their own smoke test) or that
# configure Hydra itself.
# Tokenizers are composed with every data source in test_text_train and tested in test_tokenizers.
SKIP_GROUPS = {"experiment", "hydra", "hparams_search", "tokenizer"}
GPU_ONLY = object()


def options():
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir()):
        if group_dir.name in SKIP_GROUPS:
            continue
        for f in sorted(group_dir.glob("*.yaml")):
            if not f.stem.startswith("_"):
                yield group_dir.name, f.stem


def fixture_overrides(group: str, option: str, tmp_path) -> list[str]:
    """Overrides that make an option runnable offline (local files in place of downloads)."""
    if group != "data" or option in ("collatz", "synthetic"):
        return []
    from test_text_train import corpus, wikitext_files

    if option == "text":
        text = tmp_path / "input.txt"
        text.write_text(corpus(300))
        return [f"data.train_path={text}"]
    if option == "tokens":
        import numpy as np

        paths = []
        for i, split in enumerate(("train", "val")):
            path = tmp_path / f"{split}.bin"
            np.random.default_rng(i).integers(0, 256, 5000, dtype=np.uint16).tofile(path)
            paths.append(path)
        return [f"data.train_path={paths[0]}", f"data.val_path={paths[1]}", "data.dtype=uint16", "tokenizer=byte"]
    # Hub datasets: the same `datasets` loading path over local files in WikiText's schema.
    splits = ("train", "validation") if option == "tinystories" else ("train", "validation", "test")
    return ["data.hf_path=parquet", f"data.hf_data_files={wikitext_files(tmp_path, splits)}", "tokenizer=byte"]


@pytest.mark.parametrize("group,option", list(options()), ids=lambda v: str(v))
def test_option_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.runs_root={tmp_path}", *fixture_overrides(group, option, tmp_path)]
    cfg = compose(overrides)
    if group == "trainer" and cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        with pytest.raises(UserError, match="trainer=cpu"):
            prepare(cfg)
        return
    checked = prepare(cfg)
    model_cfg = checked.model_cfg
    assert isinstance(model_cfg, ModelConfig)
    assert model_cfg.vocab_size == checked.datamodule.vocab_size
    if group == "model":
        assert model_cfg.n_layer == cfg.model.n_layer and model_cfg.n_embd == cfg.model.n_embd
    if group == "optimizer" or group == "scheduler":
        net = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=8, block_size=8))
        opt = build_optimizer(instantiate(cfg.optimizer), net, torch.device("cpu"))
        assert opt.param_groups[0]["lr"] > 0
        if cfg.get("scheduler"):
            sched = instantiate(cfg.scheduler)(opt, total_steps=10)
            assert sched is not None
    if group == "callbacks":
        for cb in instantiate_group(cfg.callbacks):
            assert hasattr(cb, "on_train_start")
    if group == "logger":
        for lg in instantiate_group(cfg.logger):
            assert hasattr(lg, "log_metrics")
    if group in ("trainer", "debug"):
        trainer = instantiate(cfg.trainer, precision=checked.precision, logger=False,
                              enable_checkpointing=False, enable_progress_bar=False)
        if cfg.trainer.get("fast_dev_run"):
            assert trainer.fast_dev_run
        else:
            assert trainer.max_steps == cfg.trainer.max_steps
    if group == "data":
        dm = checked.datamodule
        assert dm.block_size >= 2 and dm.vocab_size >= 2


def test_default_config_shape():
    cfg = compose([])
    assert cfg.model.n_layer == 4 and cfg.model.n_head == 4 and cfg.model.n_embd == 128
    assert cfg.data._target_.endswith("CollatzDataModule")
    assert cfg.paths.runs_root == "outputs"
    assert OmegaConf.select(cfg, "loss.weights.stopping_time") == 2.0
    for group in ("data", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths"):
        assert group in cfg, group


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.n_head=3"], "divisible"),
        (["optimizer.lr=-1"], "optimizer.lr must be positive"),
        (["model.block_size=16"], "exceeds model.block_size"),
        (["+loss.weights.bogus=1.0"], "unknown loss objective"),
        (["data.batch_size=0"], "batch_size"),
        (["+trainer.bogus_arg=1"], None),
    ],
)
def test_bad_values_are_user_errors(overrides, message):
    cfg = compose(overrides)
    if message is None:
        # An unknown Trainer argument only fails when the trainer is built: it must still be a
        # clean error from instantiate, not a silent pass.
        prepare(cfg)
        with pytest.raises(Exception, match="bogus_arg"):
            instantiate(cfg.trainer, precision="32-true", logger=False)
        return
    with pytest.raises(UserError, match=message):
        prepare(cfg)
