"""A checkpoint written before a model switch existed still resumes: the missing key means the
switch's default (value_embeds, unet_skips, ... added later), while a real difference is refused."""

from __future__ import annotations

import pytest
import torch

from lm_lightning.errors import UserError
from lm_lightning.model import ModelConfig
from lm_lightning.run.resume import validate, with_new_defaults


def write(path, model: dict) -> None:
    torch.save({"optimizer_states": [], "loops": {}, "state_dict": {}, "hyper_parameters": {"model": model}}, path)


def test_an_older_checkpoint_without_new_switches_resumes(tmp_path):
    arch = ModelConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=10, block_size=8).to_dict()
    old = {k: v for k, v in arch.items() if k not in ("value_embeds", "unet_skips")}
    write(tmp_path / "old.ckpt", old)
    assert validate(tmp_path / "old.ckpt", arch)["hyper_parameters"]["model"] == old
    assert with_new_defaults(old) == arch


def test_a_real_difference_is_still_refused(tmp_path):
    arch = ModelConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=10, block_size=8).to_dict()
    write(tmp_path / "other.ckpt", {**arch, "unet_skips": True})
    with pytest.raises(UserError, match="incompatible model .*unet_skips"):
        validate(tmp_path / "other.ckpt", arch)
