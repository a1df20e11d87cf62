"""`python -m lm_lightning.collatz`: see :mod:`lm_lightning.cli.collatz`."""
from lm_lightning.cli.collatz import main

raise SystemExit(main())
