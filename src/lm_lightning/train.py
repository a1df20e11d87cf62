"""``python -m lm_lightning.train``: the training command lives in :mod:`lm_lightning.cli.train`."""

from lm_lightning.cli.train import main

if __name__ == "__main__":
    main()
