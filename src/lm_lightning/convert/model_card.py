"""The README.md model card of an exported folder: what the model is and where it came from.

Figures come from the checkpoint and its run directory only: the run config (data), the step,
the run's ``summary.json`` (final validation metrics) or, without one, the best score the
checkpoint callback recorded; anything missing is written as "not recorded".
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"


def run_dir_of(source: dict[str, Any]) -> Path | None:
    ckpt = Path(source["ckpt"]) if source.get("ckpt") else None
    if ckpt is not None and ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent
    out = ((source.get("run_config") or {}).get("paths") or {}).get("output_dir")
    return Path(out) if out else None


def final_metrics(source: dict[str, Any]) -> tuple[str, str]:
    """(validation loss/ppl line, where it came from)."""
    run_dir = run_dir_of(source)
    summary = run_dir / "summary.json" if run_dir else None
    if summary is not None and summary.is_file():
        try:
            metrics = json.loads(summary.read_text()).get("metrics") or {}
        except ValueError:
            metrics = {}
        if "val/loss" in metrics:
            loss = float(metrics["val/loss"])
            ppl = float(metrics.get("val/ppl", math.exp(loss)))
            return f"val loss {loss:.4f}, val ppl {ppl:.3f}", f"{summary}"
    best = _callback_best(source.get("ckpt"))
    if best is not None:
        monitor, score = best
        return f"best {monitor} {score:.4f}", "the checkpoint callback's record"
    return NOT_RECORDED, ""


def _callback_best(ckpt: str | None) -> tuple[str, float] | None:
    if not ckpt:
        return None
    try:
        from lm_lightning.ckpt.read import read_checkpoint

        states = (read_checkpoint(ckpt).get("callbacks") or {}).values()
    except Exception:
        return None
    for state in states:
        if isinstance(state, dict) and state.get("best_k"):
            pick = min if state.get("mode", "min") == "min" else max
            return str(state.get("monitor")), float(pick(state["best_k"].values()))
    return None


def train_command(source: dict[str, Any]) -> str:
    run_dir = run_dir_of(source)
    f = run_dir / ".hydra" / "overrides.yaml" if run_dir else None
    if f is None or not f.is_file():  # a run started in-process (no Hydra command line)
        resolved = run_dir / ".hydra" / "config.yaml" if run_dir else None
        return NOT_RECORDED + (f" (resolved config: {resolved})" if resolved and resolved.is_file() else "")
    from omegaconf import OmegaConf

    overrides = OmegaConf.to_container(OmegaConf.load(f))
    return "python train.py " + " ".join(shlex.quote(str(o)) for o in overrides)


def data_line(run_config: dict[str, Any] | None) -> str:
    data = (run_config or {}).get("data") or {}
    if not data:
        return NOT_RECORDED
    keys = ("source", "train_path", "val_path", "test_path", "hf_path", "hf_name", "block_size")
    parts = [f"{k}={data[k]}" for k in keys if data.get(k) is not None]
    return ", ".join(parts) or NOT_RECORDED


def _code(text: str) -> str:
    return text if text.startswith(NOT_RECORDED) else f"`{text}`"


def write_model_card(out: Path, model: Any, tokenizer: Any, result: dict[str, Any], source: dict[str, Any]) -> None:
    c = model.config
    arch = result.get("architecture") or "lm_lightning GPT (native format: no transformers class)"
    shape = (f"{c.n_layer} layers, {c.n_head} heads ({c.n_kv_head} key/value), {c.n_embd} wide, d_ff {c.d_ff}, "
             f"{c.pos_emb} positions (theta {c.rope_theta:g})" if c.pos_emb == "rope" else
             f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, d_ff {c.d_ff}, learned positions")
    shape += (f", {c.norm} (eps {c.norm_eps:g}), {c.mlp} MLP, bias {c.bias}, tied embeddings {c.tie_weights}, "
              f"vocabulary {c.vocab_size}, context {c.block_size}")
    metrics, where = final_metrics(source)
    lines = [
        f"# {out.name}", "",
        "Exported by lm_lightning (`python -m lm_lightning.export`).", "",
        f"- **architecture**: {arch}: {shape}",
        f"- **parameters**: {sum(p.numel() for p in model.parameters()):,}",
        f"- **tokenizer**: {getattr(tokenizer, 'kind', None) or NOT_RECORDED}",
        f"- **data**: {data_line(source.get('run_config'))}",
        f"- **steps**: {source['global_step'] if source.get('global_step') is not None else NOT_RECORDED}",
        f"- **final validation**: {metrics}" + (f" (from {where})" if where else ""),
        f"- **checkpoint**: {source.get('ckpt') or NOT_RECORDED}",
        f"- **trained with**: {_code(train_command(source))}",
        f"- **exported with**: {_code(source.get('command') or NOT_RECORDED)}", "",
    ]
    if result.get("format") == "hf":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
                  f'model = AutoModelForCausalLM.from_pretrained("{out}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
                  f'print(pipeline("text-generation", model="{out}")("Hello", max_new_tokens=20))', "```", "",
                  f"Evaluation with lm-evaluation-harness: `lm_eval --model hf --model_args pretrained={out} "
                  "--tasks TASKS --device cpu`.", ""]
    else:
        lines += [f"Note: {result.get('note', 'native format')}", ""]
    (out / "README.md").write_text("\n".join(lines))
