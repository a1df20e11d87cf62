"""Every key of an ``optimizer`` or ``scheduler`` node must be an argument of its ``_target_``.

An experiment sets keys of the preset it composes (``experiment=shakespeare_char_speedrun`` sets
``scheduler.decay_fraction`` for ``scheduler=wsd`` and ``optimizer.muon_lr`` for ``optimizer=muon``).
Swapping the preset on the command line keeps those keys, and the new target would fail with a
TypeError deep inside the run, after the run directory exists. :func:`check_target_keys` names the
key and how to drop it, before any work.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any


def accepted_arguments(target: Any) -> list[str] | None:
    """Argument names a target takes from the config (None: it takes any, through ``**kwargs``).

    A class's are its constructor's, plus those of its ``from_model`` builder (``MuonAdamW``).
    """
    names: list[str] = []
    for fn in (target, getattr(target, "from_model", None)):
        if fn is None:
            continue
        params = inspect.signature(fn).parameters.values()
        if fn is target and any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
    return names


def check_target_keys(group: str, node: Mapping[str, Any] | None, ignore: Iterable[str] = (), skip: int = 1) -> None:
    """Raise ValueError (one line) for a key of ``node`` that its ``_target_`` does not take.

    ``ignore``: keys the builder consumes itself; ``skip``: leading arguments the builder passes
    (the parameters or the optimizer), left out of the message's list.
    """
    if not node or not node.get("_target_"):
        return
    from hydra.utils import get_object

    target = node["_target_"]
    names = accepted_arguments(get_object(target))
    if names is None:
        return
    ignore = set(ignore)
    unknown = [k for k in node if not str(k).startswith("_") and k not in names and k not in ignore]
    if unknown:
        key = unknown[0]
        raise ValueError(f"{group}.{key} is not an argument of {target} (it takes {', '.join(names[skip:])}); "
                         f"an experiment may have set it for another {group} preset: drop it with ~{group}.{key}")
