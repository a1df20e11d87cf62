"""lm_lightning: a PyTorch Lightning + Hydra trainer for transformer language models."""

__version__ = "0.1.0"


def load_best(path, metric=None):
    """``(model, tokenizer, cfg)`` from the best checkpoint of a run or sweep directory.

    See :func:`lm_lightning.best.load_best`; imported lazily so ``import lm_lightning`` stays light.
    """
    from lm_lightning.best import load_best as _load_best

    return _load_best(path, metric)
