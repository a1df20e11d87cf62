"""What gets written from a trained model: safetensors weights and the final-model file.

- ``write_safetensors``: the bare GPT (and heads) in safetensors, a tied head once; the run's
  ``final.safetensors`` and a native-format export both are this.
- ``final_payload`` / ``write_final_model``: the one final-model file (``final_model.pt``), plain
  containers only (weights, hyperparameters, data module state, step, run config), so it loads
  with ``torch.load(weights_only=True)`` and :func:`lm_lightning.ckpt.load.load_checkpoint` reads
  it like a Lightning checkpoint.
- ``export_source``: what an export records about its checkpoint (model card, GGUF metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_lightning.ckpt.state import weights


def write_safetensors(state: dict[str, Any], path: str | Path, tie_weights: bool,
                      metadata: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> None:
    """``state`` less the ``drop`` prefixes (e.g. metric states) as safetensors, atomically."""
    from safetensors.torch import save_file

    from lm_lightning.atomic import fsync_replace, tmp_path

    path = Path(path)
    tmp = tmp_path(path)
    save_file(weights(state, tie_weights, drop), str(tmp), metadata=metadata)
    fsync_replace(tmp, path)


def final_payload(state: dict[str, Any], hparams: dict[str, Any], global_step: int,
                  datamodule: Any = None, run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A final-model file's contents, in a Lightning checkpoint's layout."""
    payload: dict[str, Any] = {"state_dict": {k: v.detach().cpu() for k, v in state.items()},
                               "hyper_parameters": dict(hparams), "global_step": int(global_step)}
    if datamodule is not None:
        payload[type(datamodule).__qualname__] = datamodule.state_dict()
    if run_config is not None:
        payload["run_config"] = run_config
    return payload


def write_final_model(path: str | Path, payload: dict[str, Any]) -> None:
    from lm_lightning.atomic import atomic_torch_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)


def export_source(loaded: Any, ckpt: str, command: str) -> dict[str, Any]:
    """The checkpoint an export came from: path, step, run config and the export command."""
    return {"ckpt": ckpt, "global_step": loaded.global_step, "run_config": loaded.config, "command": command}
