"""Third-party warnings that every run would print and that the user can do nothing about.

Each filter names the exact message and the module that triggers it, so the same warning from
anywhere else (our own code included) still shows.
"""

from __future__ import annotations

import re
import warnings

# Lightning 2.6's CombinedLoader flattens the dataloaders with lightning.pytorch.utilities._pytree,
# which builds torch's LeafSpec; recent torch (2.13 here) deprecates constructing it, a FutureWarning
# on every fit, validate and test. Lightning's code, not ours: nothing to fix on our side.
LEAFSPEC_MESSAGE = "`isinstance(treespec, LeafSpec)` is deprecated"
LEAFSPEC_MODULE = r"lightning\.pytorch\.utilities\._pytree"


def silence_known_warnings() -> None:
    """Install the filters; idempotent (the warnings module drops a duplicate filter first)."""
    warnings.filterwarnings("ignore", message=re.escape(LEAFSPEC_MESSAGE), category=FutureWarning,
                            module=LEAFSPEC_MODULE)
