"""lm_lightning: a PyTorch Lightning + Hydra trainer for transformer language models."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """Config resolvers the conf/ tree uses; registered on any import of the package."""
    from omegaconf import OmegaConf

    # `${lm.or:${run_name},DEFAULT}`: oc.select falls back only for a *missing* key, and gives
    # back null for `run_name: null`, which made every unnamed run write to outputs/None.
    if not OmegaConf.has_resolver("lm.or"):
        OmegaConf.register_new_resolver("lm.or", lambda value, default: default if value is None else value)


_register_resolvers()


def load_best(path, metric=None):
    """``(model, tokenizer, cfg)`` from the best checkpoint of a run or sweep directory.

    See :func:`lm_lightning.best.load_best`; imported lazily so ``import lm_lightning`` stays light.
    """
    from lm_lightning.best import load_best as _load_best

    return _load_best(path, metric)
