"""``python -m lm_lightning.prepare``: the command lives in :mod:`lm_lightning.cli.prepare`."""

from lm_lightning.cli.prepare import main

if __name__ == "__main__":
    main()
