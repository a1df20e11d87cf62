"""The typed config: every preset passes the schema, every number or switch a preset sets has a
spec, and a bad value in any group is one line, exit 2, with no run directory (issue 16)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
from conftest import CONF, compose, run_train
from omegaconf import OmegaConf

from lm_lightning.cli.train import precheck
from lm_lightning.config.schema import leaves, spec_for, validate
from lm_lightning.config.spec import Float, Int, ListOf, choice, maybe
from lm_lightning.errors import UserError

# Presets whose keys only appear when selected (text data, Muon, SGD, WSD, plateau, DDP, a tokenizer).
BASES = [
    [],
    ["data=tokens"],
    ["data=text", "tokenizer=bpe"],
    ["optimizer=muon"],
    ["optimizer=sgd", "scheduler=plateau"],
    ["scheduler=wsd"],
    ["trainer=ddp_cpu"],
    ["callbacks=[default,scheduled_dropout]"],
]


def every_preset() -> list[list[str]]:
    out = []
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",)):
        for f in sorted(group.glob("*.yaml")):
            if not f.name.startswith("_"):
                out.append([f"{group.name}={f.stem}"])
    return out


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("overrides", every_preset(), ids=lambda o: o[0])
def test_every_preset_passes_and_every_number_has_a_spec(overrides):
    cfg = plain(compose(overrides))
    validate(cfg)  # a shipped preset is valid
    unchecked = [k for k, v in leaves(cfg)
                 if isinstance(v, (bool, int, float, list)) and not k.startswith("trainer.profiler")
                 and spec_for(k) is None]
    assert not unchecked, f"keys without a schema entry: {unchecked}"


@functools.cache
def composed(base: tuple[str, ...]) -> dict:
    return plain(compose(list(base)))


def reachable_keys() -> dict[str, tuple[str, ...]]:
    """Every number, switch and list any base config sets, with a base that has it."""
    keys: dict[str, tuple[str, ...]] = {}
    for base in BASES:
        for key, value in leaves(composed(tuple(base))):
            if isinstance(value, (bool, int, float, list)) and spec_for(key) is not None:
                keys.setdefault(key, tuple(base))
    return keys


KEYS = reachable_keys()


def exits_2_with_one_line(argv: list[str], root: Path, capsys) -> str:
    """The whole pre-Hydra path: compose, check, report; nothing written under paths.runs_root."""
    with pytest.raises(SystemExit) as exc:
        precheck([f"paths.runs_root={root}", "run_name=bad", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not root.exists() or not any(root.iterdir()), "a user error must not create a run directory"
    return err


def rejected(key: str, value) -> str:
    """Set ``key`` in its base config (as a ``key=value`` override would) and validate it: the
    one-line message. The full CLI path is the same function (test_named_bad_values below)."""
    cfg = OmegaConf.create(copy.deepcopy(composed(KEYS[key])))
    OmegaConf.update(cfg, key, value, merge=False)
    with pytest.raises(UserError) as exc:
        validate(cfg)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{key} must be "), message
    return message


def test_the_reachable_keys_cover_every_group():
    groups = {k.split(".")[0] for k in KEYS}
    assert {"model", "optimizer", "scheduler", "trainer", "data", "tokenizer", "callbacks", "loss",
            "early_stopping"} <= groups
    assert len(KEYS) > 80


@pytest.mark.parametrize("key", sorted(KEYS))
def test_a_string_in_any_typed_key_is_rejected(key):
    if spec_for(key)("abc") is None:  # a key that may hold a string (trainer.devices, run_name)
        pytest.skip(f"{key} accepts a string")
    assert rejected(key, "abc").endswith("got 'abc'")


def negative_count_keys() -> list[str]:
    out = []
    for key in KEYS:
        spec = spec_for(key)
        if spec(1) is None and spec(-2) is not None and spec(0.5) is not None:  # an integer count
            out.append(key)
    return sorted(out)


@pytest.mark.parametrize("key", negative_count_keys())
def test_a_negative_count_is_rejected(key):
    assert rejected(key, -2).endswith("got -2")


def test_the_sweep_through_the_cli(tmp_path, capsys):
    """A sample of the sweep through precheck itself: one line, exit 2, no run directory."""
    for key in ("model.n_layer", "data.batch_size", "scheduler.warmup_steps", "callbacks.checkpointing.keep_last",
                "trainer.log_every_n_steps", "loss.z_loss", "early_stopping.min_delta"):
        assert f"{key} must be" in exits_2_with_one_line([*KEYS[key], f"{key}=abc"], tmp_path / "runs", capsys)


@pytest.mark.parametrize("override, message", [
    ("trainer.max_steps=abc", "trainer.max_steps must be an integer >= -1 other than 0, got 'abc'"),
    ("optimizer.betas=[0.9]", "optimizer.betas must be a list of 2 items"),
    ("optimizer.betas=[0.9,0.99,0.999]", "optimizer.betas must be a list of 2 items"),
    ("optimizer.betas=[0.9,1.5]", "each in [0, 1)"),
    ("data.hard_bits=[69]", "data.hard_bits must be a list of 2 items"),
    ("trainer.precision=17", "trainer.precision must be one of"),
    ("trainer.val_check_interval=-5", "trainer.val_check_interval must be"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval must be"),
    ("scheduler.warmup_steps=-1", "scheduler.warmup_steps must be an integer >= 0, got -1"),
    ("scheduler.min_lr_ratio=2", "scheduler.min_lr_ratio must be in [0, 1]"),
    ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
    ("model.n_layer=2.5", "model.n_layer must be a positive integer"),
    ("model.qk_norm=1", "model.qk_norm must be true or false, got 1"),
    ("trainer.max_steps=0", "other than 0"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be a positive integer"),
    ("optimizer.lr=nan", "optimizer.lr must be positive"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0"),
    ("callbacks.anomaly.policy=maybe", "callbacks.anomaly.policy must be one of skip, stop, off"),
    ("loss.weights.stopping_time=-1", "loss.weights.stopping_time must be a number >= 0"),
    ("seed=1.5", "seed must be an integer"),
])
def test_named_bad_values_say_what_the_key_must_be(override, message, tmp_path, capsys):
    assert message in exits_2_with_one_line([override], tmp_path / "runs", capsys)


def test_a_whole_process_exits_2_and_writes_nothing(tmp_path):
    proc = run_train([f"paths.runs_root={tmp_path / 'runs'}", "trainer.max_steps=abc"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: trainer.max_steps must be an integer >= -1 other than 0, got 'abc'"
    assert not (tmp_path / "runs").exists()


def test_specs_read_like_the_rest_of_the_code_base():
    assert Float(gt=0)(0) == "positive"
    assert Float(gt=0, le=1)(0) == "in (0, 1]"
    assert Int(ge=1)(0) == "a positive integer"
    assert maybe(Int(ge=1))(None) is None
    assert Int()(True) == "an integer"  # a bool is not a number
    assert choice(16, "16")("16") is None and choice(16)("16") is not None
    assert ListOf(Float(ge=0), length=2)([1, 2]) is None
    with pytest.raises(UserError, match=r"^trainer.devices must be"):
        validate({"trainer": {"devices": 0}})
