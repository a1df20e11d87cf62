"""lm_lightning: a PyTorch Lightning + Hydra trainer for transformer language models."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """Config resolvers the conf/ tree uses; registered on any import of the package."""
    from omegaconf import OmegaConf

    # `${lm.or:${run_name},DEFAULT}`: oc.select falls back only for a *missing* key, and gives
    # back null for `run_name: null`, which made every unnamed run write to outputs/None.
    if not OmegaConf.has_resolver("lm.or"):
        OmegaConf.register_new_resolver("lm.or", lambda value, default: default if value is None else value)
    # `${lm.run_id:TIMESTAMP}`: an unnamed run's directory name, stable for the same command
    # (rerunning resumes), or TIMESTAMP with fresh=true (lm_lightning.run.identity.run_dir_name).
    if not OmegaConf.has_resolver("lm.run_id"):

        def run_id(timestamp, _root_):
            from lm_lightning.run.identity import run_dir_name

            return run_dir_name(_root_, str(timestamp))

        OmegaConf.register_new_resolver("lm.run_id", run_id)
    # Recipes fix the what (effective batch), hardware presets the how (lm_lightning.config.recipes).
    from lm_lightning.config.recipes import RESOLVERS

    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


_register_resolvers()


def load_best(path, metric=None):
    """``(model, tokenizer, cfg)`` from the best checkpoint of a run or sweep directory.

    See :func:`lm_lightning.ckpt.best.load_best`; imported lazily so ``import lm_lightning`` stays light.
    """
    from lm_lightning.ckpt.best import load_best as _load_best

    return _load_best(path, metric)
