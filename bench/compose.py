"""Compose the product's Hydra config in-process (as the tests do)."""

from __future__ import annotations

from lm_lightning.config.location import CONF_DIR


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))
