"""``python -m lm_lightning.evaluate``: the command lives in :mod:`lm_lightning.cli.evaluate`."""

from lm_lightning.cli.evaluate import main

if __name__ == "__main__":
    main()
