"""A preset swapped under an experiment that set the old preset's own keys is one line and exit 2,
naming the key (optim/targets.py), not a TypeError after the run directory exists."""

from __future__ import annotations

import pytest
from conftest import CONF, compose
from omegaconf import OmegaConf
from test_config_schema import every_preset, exits_2_with_one_line

from lm_lightning.optim.build import TECHNIQUE_KEYS
from lm_lightning.optim.muon import MuonAdamW
from lm_lightning.optim.targets import accepted_arguments, check_target_keys

EXPERIMENTS = sorted(f.stem for f in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("overrides", [o for o in every_preset() if o[0].split("=")[0] in ("optimizer", "scheduler")]
                         + [[f"experiment={e}"] for e in EXPERIMENTS], ids=lambda o: o[0])
def test_every_shipped_preset_and_experiment_passes(overrides):
    cfg = OmegaConf.to_container(compose(overrides))
    check_target_keys("optimizer", cfg["optimizer"], ignore=TECHNIQUE_KEYS)
    check_target_keys("scheduler", cfg["scheduler"], skip=2)


def test_muon_takes_its_constructor_and_builder_arguments():
    names = accepted_arguments(MuonAdamW)
    assert {"muon_lr", "muon_momentum_start", "embed_lr", "head_lr", "weight_decay"} <= set(names)
    assert accepted_arguments(lambda optimizer, **kw: None) is None, "**kwargs takes anything"


@pytest.mark.parametrize("swap, message", [
    ("scheduler=cosine_warmup", "error: scheduler.decay_fraction is not an argument of "
                                "lm_lightning.optim.schedules.warmup_cosine (it takes warmup_steps, min_lr, "
                                "min_lr_ratio); an experiment may have set it for another scheduler preset: "
                                "drop it with ~scheduler.decay_fraction"),
    ("optimizer=adamw", "error: optimizer.muon_lr is not an argument of torch.optim.AdamW"),
])
def test_swapping_a_preset_under_the_speedrun_names_the_key(swap, message, tmp_path, capsys):
    text = tmp_path / "input.txt"
    text.write_text("to be or not to be, that is the question\n" * 200)
    err = exits_2_with_one_line(["experiment=shakespeare_char_speedrun", f"data.train_path={text}", swap],
                                tmp_path / "outputs", capsys)
    assert err.startswith(message), err
    # Dropping what the messages name, one key at a time, leaves a config the target takes.
    group = swap.split("=")[0]
    drops = [err.rsplit("~", 1)[1]]
    for _ in range(10):
        node = OmegaConf.to_container(compose(["experiment=shakespeare_char_speedrun", f"data.train_path={text}",
                                               swap, *(f"~{k}" for k in drops)]))[group]
        try:
            check_target_keys(group, node, ignore=TECHNIQUE_KEYS, skip=2 if group == "scheduler" else 1)
            break
        except ValueError as exc:
            drops.append(str(exc).rsplit("~", 1)[1])
    else:
        pytest.fail(f"still refused after dropping {drops}")
    assert drops == ["scheduler.decay_fraction"] if group == "scheduler" else all(
        k.startswith("optimizer.muon_") for k in drops), drops
