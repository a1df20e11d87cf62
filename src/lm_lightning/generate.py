"""``python -m lm_lightning.generate``: the command lives in :mod:`lm_lightning.cli.generate`."""

from lm_lightning.cli.generate import main

if __name__ == "__main__":
    main()
