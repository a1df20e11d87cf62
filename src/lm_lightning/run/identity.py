"""The run's identity: where an unnamed run lives.

An unnamed run's directory is ``<runs_root>/<experiment>-<config id>`` (:func:`run_dir_name`,
behind ``${lm.run_id:...}`` in ``conf/paths``), so rerunning the same command finds the same
directory and resumes (:mod:`lm_lightning.run.resume`); ``fresh=true`` gives a new timestamped one.
"""

from __future__ import annotations

from typing import Any

# Keys that say where, how long, on what hardware or how visibly a run trains, not what it
# trains: left out of the identity, so rerunning with a longer horizon, another logger, more
# loader workers or another machine carries on in the same directory.
IDENTITY_SKIP = frozenset({
    "paths", "hydra", "hardware", "run_name", "fresh", "resume", "overwrite", "ckpt_path", "max_training_hours",
    "callbacks", "logger", "wandb_project", "test", "optimized_metric", "early_stopping",
    "model.compile",
    "data.num_workers", "data.prefetch_factor", "data.pin_memory", "data.persistent_workers",
    "data.prepare_workers", "data.cache_dir", "data.eval_batches", "data.eval_batch_size", "data.val_samples",
    "scheduler.fit_to_time",
})
# Of the trainer, only what changes the optimization itself.
IDENTITY_TRAINER = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")


def _identity_data(node: Any, prefix: str = "") -> Any:
    """The node's values, each leaf resolved on its own (a skipped key is never resolved)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig):
        out = {}
        for key in node.keys():
            path = f"{prefix}{key}"
            if path in IDENTITY_SKIP or (prefix == "trainer." and key not in IDENTITY_TRAINER):
                continue
            out[str(key)] = _identity_leaf(node, key, f"{path}.")
        return out
    if isinstance(node, ListConfig):
        return [_identity_leaf(node, i, f"{prefix}{i}.") for i in range(len(node))]
    return node


def _identity_leaf(node: Any, key: Any, prefix: str) -> Any:
    try:
        value = node[key]
    except Exception:  # a missing value or an unresolvable one: its text identifies it
        raw = node._get_node(key)
        return str(raw._value()) if raw is not None else None
    return _identity_data(value, prefix)


def config_identity(root: Any) -> str:
    """8 hex digits of what the run trains: the resolved config minus where/how-long/run-only keys."""
    import hashlib
    import json

    data = _identity_data(root)
    # A hardware preset splits the recipe's batch into micro-batch x accumulation: the product is
    # what the run trains with, so the same recipe on another machine is the same run.
    micro = (data.get("data") or {}).pop("batch_size", None)
    accumulate = (data.get("trainer") or {}).pop("accumulate_grad_batches", 1)
    try:
        data["effective_batch"] = int(micro) * int(accumulate or 1)
    except (TypeError, ValueError):
        data["effective_batch"] = [micro, accumulate]
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def experiment_choice(root: Any) -> str | None:
    """``experiment=NAME`` of this config: from its hydra node, else from Hydra's runtime."""
    from omegaconf import OmegaConf

    name = None
    if "hydra" in root:
        name = OmegaConf.select(root, "hydra.runtime.choices.experiment", default=None)
    else:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            name = HydraConfig.get().runtime.choices.get("experiment")
    return str(name).replace("/", "-") if name else None


def run_dir_name(root: Any, timestamp: str) -> str:
    """The directory name of an unnamed run (``${lm.run_id:...}`` in conf/paths): the experiment
    and the config identity (``collatz-1a2b3c4d``), so rerunning the same command resumes it;
    ``fresh=true``: the timestamp, a new run every time."""
    if root.get("fresh"):
        return timestamp
    return f"{experiment_choice(root) or 'run'}-{config_identity(root)}"
