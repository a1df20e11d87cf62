"""``python -m lm_lightning.runs``: the command lives in :mod:`lm_lightning.cli.runs`."""

import sys

from lm_lightning.cli.runs import main

if __name__ == "__main__":
    sys.exit(main())
