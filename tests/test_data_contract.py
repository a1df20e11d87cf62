"""The data contract (issue 16 item 3): every data module derives from LMDataModule, and one
resolve_split holds the "test falls back to val" rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class

from lm_lightning.config.location import CONF_DIR
from lm_lightning.data.base import LMDataModule
from lm_lightning.data.splits import resolve_split
from lm_lightning.errors import UserError


def targets() -> dict[str, str]:
    out = {}
    for path in sorted(Path(CONF_DIR, "data").glob("*.yaml")):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if target:
            out[path.stem] = target
    return out


def test_every_data_config_targets_a_module_of_the_contract():
    found = targets()
    assert {"_text", "tokens", "collatz", "synthetic"} <= set(found)  # _text: data=text and the hub recipes
    assert found["tokens"].endswith("TokenDataModule") and found["_text"].endswith("TextDataModule")
    for name, target in found.items():
        cls = get_class(target)
        assert issubclass(cls, LMDataModule), name
        assert cls.objectives and "next_token" in cls.objectives, name
        assert isinstance(cls.prepare_before_run, bool) and isinstance(cls.uses_tokenizer, bool), name


def test_the_defaults_of_a_module_without_a_tokenizer():
    from lm_lightning.data.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(vocab_size=64, block_size=8, batch_size=2)
    assert dm.tokenizer is None and not dm.uses_tokenizer and not dm.prepare_before_run
    assert dm.baselines() == {} and dm.size_lines() == [] and dm.state_dict() == {}
    assert dm.rank() == (0, 1) and dm.start_step() == 0 and dm.steps_per_epoch() is None
    with pytest.raises(UserError, match="takes no tokenizer"):
        dm.use_tokenizer(object())
    with pytest.raises(ValueError, match="no training-split evaluation"):
        dm.train_eval_batches(1)


def test_resolve_split():
    assert resolve_split("test", {"train", "val"}) == "val"
    assert resolve_split("test", {"train", "val", "test"}) == "test"
    assert resolve_split("test", lambda s: s != "test") == "val"
    assert [resolve_split(s, ()) for s in ("train", "val")] == ["train", "val"]  # only test falls back
    with pytest.raises(ValueError):
        resolve_split("validation", {"val"})


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": 1}, "data.block_size must be at least 2, got 1"),
    ({"batch_size": 0}, "data.batch_size must be positive, got 0"),
])
def test_collatz_sizes_are_checked_by_the_contract(kwargs, message):
    from lm_lightning.data.collatz import CollatzDataModule

    with pytest.raises(ValueError, match=message):
        CollatzDataModule(**kwargs)
    dm = CollatzDataModule(block_size=8, batch_size=3)
    assert (dm.block_size, dm.batch_size) == (8, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": 0}, "data.block_size must be positive, got 0"),
    ({"batch_size": -1}, "data.batch_size must be positive, got -1"),
])
def test_window_module_sizes_are_checked_by_the_contract(kwargs, message):
    from lm_lightning.data.token_data import TokenDataModule

    with pytest.raises(ValueError, match=message):
        TokenDataModule(train_path="unused.bin", **kwargs)
