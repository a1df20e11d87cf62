"""``python -m lm_lightning.export``: the command lives in :mod:`lm_lightning.cli.export`."""

from lm_lightning.cli.export import main

if __name__ == "__main__":
    main()
