"""Recipes fix the what, presets the how (issue 17, item 4), for every experiment by glob.

An experiment states its recipe: effective batch, lr, schedule, steps and, through its own model
preset, its shape. ``model=``, ``trainer=`` and any ``key=value`` on the command line win over it;
a hardware preset picks micro-batch x accumulation x precision x workers to reach the recipe's
effective batch. All in-process with Hydra's compose API: no training here.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
import yaml
from exp_helpers import CONF, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lm_lightning.config import recipes
from lm_lightning.errors import UserError
from lm_lightning.run.plan import prepare

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if not p.stem.startswith("_"))
# preset: (accelerator, precision, workers); each also states hardware.micro_batch_tokens.
HARDWARE = {"cpu": ("cpu", "32-true", 2), "gtx1660": ("gpu", "16-mixed", 4), "rtx3060": ("gpu", "bf16-mixed", 8),
            "a100": ("gpu", "bf16-mixed", 8), "h100": ("gpu", "bf16-mixed", 16)}


@functools.cache
def _compose(overrides: tuple[str, ...]):
    return compose(list(overrides))  # about 0.4 s each on a 2-core machine: each config composed once


def cfg_of(*overrides: str):
    return _compose(tuple(overrides))


def model_of(*overrides: str) -> dict:
    return OmegaConf.to_container(cfg_of(*overrides).model, resolve=True)


def experiment_yaml(name: str) -> dict:
    return yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text()) or {}


def _chain(experiment: str) -> list[dict]:
    """The experiment's YAML and its parents' (shakespeare_char_fast -> shakespeare_char), parents first."""
    out: list[dict] = []
    body = experiment_yaml(experiment)
    for d in body.get("defaults", []):
        if isinstance(d, str) and d != "_self_":
            out += _chain(d)
    return out + [body]


def test_every_experiment_is_found():
    assert {"collatz", "fragment_llm", "fragment_llm_low", "fragment_llm_high", "fundamentallm",
            "gpt2_wikitext2", "cs336_tinystories", "shakespeare_char"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_body_sets_no_model_key(experiment):
    # The shape comes from a model preset in the defaults list, never from the body: a body key
    # would silently beat `model=...` on the command line (the 6x384 fragment_llm bug).
    assert "model" not in experiment_yaml(experiment), f"{experiment}: move model keys to a conf/model preset"


def test_without_model_on_the_command_line_the_recipe_has_its_own_preset():
    # fragment_llm's 6x384 (the case) now comes from model=fragment_llm; model=tiny replaces it.
    assert model_of("experiment=fragment_llm") == model_of("model=fragment_llm")


@pytest.mark.parametrize("i,experiment", list(enumerate(EXPERIMENTS)))
def test_presets_on_the_command_line_win_and_reach_the_recipes_batch(i, experiment):
    """model=tiny and a hardware preset (each preset by turns over the glob) beat the body."""
    preset = sorted(HARDWARE)[i % len(HARDWARE)]
    recipe = cfg_of(f"experiment={experiment}")
    cfg = cfg_of(f"experiment={experiment}", "model=tiny", f"trainer={preset}")
    assert model_of(f"experiment={experiment}", "model=tiny", f"trainer={preset}") == model_of("model=tiny")
    effective = recipe.effective_batch_size
    micro, accumulation = cfg.data.batch_size, cfg.trainer.accumulate_grad_batches
    assert micro * accumulation == effective, (micro, accumulation)
    # The micro-batch is the largest divisor of the effective batch that fits the machine's tokens.
    fits = max(1, cfg.hardware.micro_batch_tokens // cfg.data.block_size)
    assert micro == max(d for d in range(1, min(fits, effective) + 1) if effective % d == 0)
    accelerator, precision, workers = HARDWARE[preset]
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == (accelerator, precision)
    pinned = any(isinstance((body.get("data") or {}).get("num_workers"), int) for body in _chain(experiment))
    assert cfg.data.num_workers == (recipe.data.num_workers if pinned else workers)
    # Everything else of the recipe stays: lr, schedule, steps.
    assert cfg.optimizer == recipe.optimizer and cfg.scheduler == recipe.scheduler
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (recipe.trainer.max_steps, recipe.trainer.max_epochs)
    # A step-based validation interval stays the same number of optimizer steps.
    if isinstance(recipe.trainer.val_check_interval, int):
        assert (cfg.trainer.val_check_interval // accumulation
                == recipe.trainer.val_check_interval // recipe.trainer.accumulate_grad_batches)


@pytest.mark.parametrize("experiment,preset", [("cs336_tinystories", "gtx1660"), ("fragment_llm", "cpu"),
                                               ("shakespeare_char_speedrun", "h100")])
def test_command_line_keys_win(experiment, preset):
    # The presets test above covers every experiment; these are the key=value spellings.
    effective = cfg_of(f"experiment={experiment}").effective_batch_size
    cfg = cfg_of(f"experiment={experiment}", f"trainer={preset}", "data.batch_size=1", "trainer.max_steps=7",
                 "model.n_layer=1", "trainer.precision=32-true")
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (1, effective)  # the batch is kept
    assert (cfg.trainer.max_steps, cfg.model.n_layer, cfg.trainer.precision) == (7, 1, "32-true")


def test_both_batch_keys_and_the_effective_batch_win():
    cfg = cfg_of("experiment=collatz", "data.batch_size=8", "trainer.accumulate_grad_batches=3")
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (8, 3)
    cfg = cfg_of("experiment=collatz", "trainer=gtx1660", "effective_batch_size=1024")
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (128, 8)


def test_a_micro_batch_that_does_not_divide_is_one_user_error():
    cfg = compose(["experiment=collatz", "data.batch_size=3"])
    with pytest.raises(UserError, match=r"data.batch_size=3 does not divide effective_batch_size=512") as info:
        prepare(cfg)
    assert "\n" not in str(info.value)


def test_collatz_recipe_with_and_without_hardware():
    cfg = cfg_of("experiment=collatz")  # no hardware preset: the guide's 512 in one micro-batch
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.val_check_interval) == (512, 1, 1000)
    cpu = cfg_of("experiment=collatz", "trainer=cpu")  # 1024 tokens / 64 per sequence = 16
    assert (cpu.data.batch_size, cpu.trainer.accumulate_grad_batches, cpu.trainer.val_check_interval) == (16, 32, 32000)


# Guide 001's three hardware tiers: model, block, epochs and the guide's micro-batch x accumulation.
TIERS = {
    "fragment_llm_low": ((4, 4, 256), 256, 5, (4, 16), "cpu"),
    "fragment_llm": ((6, 6, 384), 512, 10, (16, 4), "gtx1660"),
    "fragment_llm_high": ((12, 12, 768), 1024, 20, (32, 2), "rtx3060"),
}


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_fragment_tiers_are_one_word_each(tier):
    shape, block, epochs, batch, machine = TIERS[tier]
    cfg = cfg_of(f"experiment={tier}")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.dropout) == (*shape, 0.1)
    assert (cfg.data.block_size, cfg.trainer.max_epochs) == (block, epochs)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == batch
    assert cfg.optimizer.lr == 3e-4 and cfg.tokenizer.kind == "bpe" and cfg.tokenizer.vocab_size == 10000
    # On the tier's own machine the hardware preset lands on the guide's split too.
    on_machine = cfg_of(f"experiment={tier}", f"trainer={machine}")
    assert (on_machine.data.batch_size, on_machine.trainer.accumulate_grad_batches) == batch


def _model_chain(name: str) -> list[str]:
    body = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text()) or {}
    parents = [d for d in body.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return [name] + [p for parent in parents for p in _model_chain(parent)]


@pytest.mark.parametrize("model", MODELS)
def test_init_from_is_on_every_model_preset(model):
    # Every preset builds on _arch, which has init_from (so model.init_from=DIR is never Hydra's
    # "Could not override"); composing each of them is test_configs' job.
    assert "_arch" in _model_chain(model)
    assert "init_from" in yaml.safe_load((CONF / "model" / "_arch.yaml").read_text())


def test_init_from_with_the_default_model_and_an_experiment():
    assert cfg_of("model.init_from=some/dir").model.init_from == "some/dir"  # model=small, the default
    assert cfg_of("experiment=fragment_llm", "model.init_from=gpt2").model.init_from == "gpt2"
    assert cfg_of().model.init_from is None


def test_fundamentallm_cosine_ends_at_zero():
    cfg = cfg_of("experiment=fundamentallm")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    sched = instantiate(cfg.scheduler)(opt, total_steps=2400)
    lr = [cfg.optimizer.lr * sched.lr_lambdas[0](step) for step in range(2401)]  # LambdaLR's factor per step
    assert max(lr) == pytest.approx(1e-3) and lr[2000] == pytest.approx(1e-3)  # warmup 2000, then cosine
    assert lr[2200] == pytest.approx(0.5e-3) and lr[2400] == pytest.approx(0.0, abs=1e-12)  # to 0 (was 0.1 x lr)


def test_wandb_project_per_experiment():
    assert cfg_of("experiment=cs336_tinystories", "logger=wandb").logger.wandb.project == "transformer-lm"
    assert cfg_of("experiment=fundamentallm", "logger=wandb").logger.wandb.project == "fundamentallm"
    assert cfg_of("logger=wandb").logger.wandb.project == "lm_lightning"  # no experiment
    projects = {e: cfg_of(f"experiment={e}").wandb_project for e in EXPERIMENTS}
    assert all(projects.values()), projects


def test_collatz_loader_workers_and_prefetch():
    cfg = cfg_of("experiment=collatz")
    assert cfg.data.prefetch_factor == 4
    assert cfg.data.num_workers == min(20, os.cpu_count() or 1)  # the guide's 20, capped by the cores
    assert cfg_of("experiment=collatz", "trainer=cpu").data.num_workers == 2
    assert cfg_of("experiment=collatz", "trainer=h100").data.num_workers == 16
    assert cfg_of("experiment=collatz", "data.num_workers=0").data.num_workers == 0
    assert cfg_of().data.num_workers == 0  # plain `python train.py`: in-process, as before


def test_recipe_arithmetic():
    assert recipes.micro_batch(64, 256, None, 16) == 16
    assert recipes.micro_batch(512, 64, None) == 512
    assert recipes.micro_batch(64, 512, 8192) == 16
    assert recipes.micro_batch(12, 64, 1024) == 12
    assert recipes.micro_batch(8, 1024, 1024) == 1
    assert recipes.micro_batch(48, 256, 1024) == 4 and recipes.micro_batch(48, 128, 1024) == 8
    assert recipes.accumulation(64, 16) == 4
    with pytest.raises(ValueError, match="does not divide"):
        recipes.accumulation(64, 3)
    with pytest.raises(ValueError, match="positive integer"):
        recipes.micro_batch(0, 64, None)
    assert recipes.times(250, 4) == 1000
    assert recipes.workers(10_000) == (os.cpu_count() or 1)
