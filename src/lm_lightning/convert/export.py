"""A model and its tokenizer as an export folder (the library side of ``python -m lm_lightning.export``).

Always written: ``lm_lightning_config.json`` (our model config and the tokenizer kind),
``tokenizer_spec.json`` and a ``README.md`` model card. A model with a shape that a registered
converter has (convert/registry.py) becomes a transformers folder that
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load:

- GPT-2's shape (``model=gpt2``: learned positions, LayerNorm with bias, GELU, tied weights):
  ``config.json`` + ``model.safetensors`` in GPT2LMHeadModel's layout;
- Llama's shape (``model=llama``: RoPE, RMSNorm, SwiGLU, no biases, any GQA): LlamaForCausalLM's
  ``config.json``, ``model.safetensors`` and ``generation_config.json``.

The tokenizer is saved as a fast tokenizer for every kind (bpe, gpt2, hf, byte, char; see
convert/tokenizers.py). Any other architecture is written as ``model.safetensors`` in our own
parameter names, and the result carries a ``note`` saying why.

``fmt="gguf"`` writes one ``DIR/<run name>-<outtype>.gguf`` instead (gguf_writer.py); ``fmt="all"``
writes the folder above and the ``.gguf`` into it. Every refusal (architecture, tokenizer,
outtype, an existing ``.gguf`` without ``overwrite``) comes before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lm_lightning.errors import UserError

FORMATS = ("auto", "hf", "native", "gguf", "all")


def export(model: Any, tokenizer: Any, out: str | Path, fmt: str = "auto",
           source: dict[str, Any] | None = None, outtype: str = "f16", overwrite: bool = False) -> dict[str, Any]:
    """Write the folder; ``source`` (checkpoint path, step, run config, command) feeds the model card."""
    from lm_lightning.convert.model_card import write_model_card

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} exists and is not a directory")
    if fmt not in FORMATS:
        raise UserError(f"format must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, got {fmt!r}")
    gguf_path = _gguf_precheck(model, tokenizer, out, source or {}, outtype, overwrite) if fmt in ("gguf", "all") else None
    if fmt == "gguf":
        from lm_lightning.convert.gguf_writer import write_gguf

        return {"out": str(out), "format": "gguf",
                **write_gguf(model, tokenizer, gguf_path, outtype, source, overwrite=overwrite)}
    if fmt == "all":
        result = export(model, tokenizer, out, "auto", source)
        from lm_lightning.convert.gguf_writer import write_gguf

        result.update(write_gguf(model, tokenizer, gguf_path, outtype, source, overwrite=overwrite))
        with (out / "README.md").open("a") as card:
            card.write(f"GGUF ({outtype}): `{gguf_path.name}`; run it with `llama-cli -m {gguf_path}`, or in "
                       f"transformers: `AutoModelForCausalLM.from_pretrained(\"{out}\", gguf_file=\"{gguf_path.name}\")`.\n")
        result["files"] = sorted(p.name for p in out.iterdir())
        return result
    from lm_lightning.convert.registry import for_config

    converter, problems = for_config(model.config)
    if fmt == "hf" and converter is None:
        raise UserError("format=hf needs GPT-2's architecture (model=gpt2) or Llama's (model=llama); this model: "
                        + "; ".join(problems["gpt2"] + problems["llama"]))
    as_hf = converter is not None and fmt != "native"
    out.mkdir(parents=True, exist_ok=True)
    spec = tokenizer.spec() if tokenizer is not None else None
    result: dict[str, Any] = {"out": str(out), "format": "hf" if as_hf else "native"}
    if as_hf:
        _save_hf(converter, model, tokenizer, out)
        result["architecture"] = converter.hf_architecture
        if tokenizer is not None:
            _save_hf_tokenizer(tokenizer, out)
    else:
        from lm_lightning.ckpt.payload import write_safetensors

        write_safetensors(model.state_dict(), out / "model.safetensors", model.config.tie_weights,
                          {"format": "lm_lightning"})
        if fmt == "auto":
            result["note"] = ("native format (lm_lightning parameter names): no transformers class fits this "
                              "architecture; GPT2LMHeadModel needs " + ", ".join(problems["gpt2"])
                              + "; LlamaForCausalLM needs " + ", ".join(problems["llama"]))
    (out / "lm_lightning_config.json").write_text(json.dumps(
        {"model": model.config.to_dict(), "format": result["format"],
         "tokenizer_kind": spec.get("kind") if spec else None}, indent=2) + "\n")
    if spec is not None:
        (out / "tokenizer_spec.json").write_text(json.dumps(spec))
    write_model_card(out, model, tokenizer, result, source or {})
    result["files"] = sorted(p.name for p in out.iterdir())
    return result


def _gguf_precheck(model: Any, tokenizer: Any, out: Path, source: dict[str, Any], outtype: str,
                   overwrite: bool) -> Path:
    """The .gguf path, after every check that can refuse (so format=all writes nothing on a refusal)."""
    from lm_lightning.convert.gguf_vocab import gguf_vocab
    from lm_lightning.convert.gguf_writer import check_outtype, gguf_converter, gguf_name

    check_outtype(outtype)
    gguf_converter(model.config)
    gguf_vocab(tokenizer, model.config.vocab_size)
    path = gguf_name(out, source, outtype)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=true to replace it")
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise UserError("format=gguf needs the gguf package: pip install -e '.[gguf]' (or pip install gguf)") from exc
    return path


def _save_hf(converter: Any, model: Any, tokenizer: Any, out: Path) -> None:
    """The transformers model (config.json, model.safetensors, generation_config.json when it has ids)."""
    from lm_lightning.convert.tokenizers import bos_id, eos_id

    bos, eos = bos_id(tokenizer), eos_id(tokenizer)
    hf = converter.hf_model(model, bos, eos)
    if not converter.ids_from_tokenizer:  # e.g. GPT-2's config carries its own ids (50256)
        hf.save_pretrained(str(out))
        return
    from transformers import GenerationConfig

    hf.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    hf.save_pretrained(str(out))
    if not (out / "generation_config.json").is_file():  # older transformers skip a default one
        hf.generation_config.save_pretrained(str(out))


def _save_hf_tokenizer(tokenizer: Any, out: Path) -> None:
    from lm_lightning.convert.tokenizers import fast_tokenizer

    fast = fast_tokenizer(tokenizer)
    if fast is not None:
        fast.save_pretrained(str(out))
