"""Export a checkpoint's weights, model config and tokenizer to a folder.

    python -m lm_lightning.export ckpt=PATH out=DIR

Always written: ``lm_lightning_config.json`` (our model config and the tokenizer kind),
``tokenizer_spec.json`` and a ``README.md`` model card. A model with a shape that transformers
has a class for becomes a transformers folder that ``AutoModelForCausalLM.from_pretrained(DIR)``
and ``AutoTokenizer.from_pretrained(DIR)`` load:

- GPT-2's shape (``model=gpt2``: learned positions, LayerNorm with bias, GELU, tied weights):
  ``config.json`` + ``model.safetensors`` in GPT2LMHeadModel's layout;
- Llama's shape (``model=llama``: RoPE, RMSNorm, SwiGLU, no biases, any GQA): LlamaForCausalLM's
  ``config.json``, ``model.safetensors`` and ``generation_config.json``.

The tokenizer is saved as a fast tokenizer for every kind (bpe, gpt2, hf, byte, char; see
hf_tokenizers.py). Any other architecture is written as ``model.safetensors`` in our own
parameter names, and the printed JSON carries a ``note`` saying why.

``format=gguf`` writes one ``DIR/<run name>-<outtype>.gguf`` instead (llama.cpp, Ollama, LM Studio,
llama-cpp-python and transformers' GGUF loader read it; see gguf_export.py), ``outtype=f16`` by
default, or f32, bf16, q8_0. ``format=all`` writes the folder above and the ``.gguf`` into it. Every
refusal (architecture, tokenizer, outtype, an existing ``.gguf`` without ``overwrite=true``) comes
before anything is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lm_lightning.errors import UserError, exit_on_user_error
from lm_lightning.tools import load_for_inference, parse_args

USAGE = ("python -m lm_lightning.export ckpt=PATH out=DIR [format=auto|hf|native|gguf|all] "
         "[outtype=f16|f32|bf16|q8_0] [overwrite=false]")
DEFAULTS: dict[str, Any] = {"ckpt": "", "out": "", "format": "auto", "outtype": "f16", "overwrite": False}
FORMATS = ("auto", "hf", "native", "gguf", "all")


def hf_target(cfg: Any) -> tuple[str | None, dict[str, list[str]]]:
    """('gpt2' | 'llama' | None, the problems for each transformers class)."""
    from lm_lightning.hf_gpt2 import gpt2_shape_problems
    from lm_lightning.hf_llama import llama_shape_problems

    problems = {"gpt2": gpt2_shape_problems(cfg), "llama": llama_shape_problems(cfg)}
    return next((k for k, v in problems.items() if not v), None), problems


def export(model: Any, tokenizer: Any, out: str | Path, fmt: str = "auto",
           source: dict[str, Any] | None = None, outtype: str = "f16", overwrite: bool = False) -> dict[str, Any]:
    """Write the folder; ``source`` (checkpoint path, step, run config, command) feeds the model card."""
    from lm_lightning.model_card import write_model_card

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} exists and is not a directory")
    if fmt not in FORMATS:
        raise UserError(f"format must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, got {fmt!r}")
    gguf_path = _gguf_precheck(model, tokenizer, out, source or {}, outtype, overwrite) if fmt in ("gguf", "all") else None
    if fmt == "gguf":
        from lm_lightning.gguf_export import write_gguf

        return {"out": str(out), "format": "gguf",
                **write_gguf(model, tokenizer, gguf_path, outtype, source, overwrite=overwrite)}
    if fmt == "all":
        result = export(model, tokenizer, out, "auto", source)
        from lm_lightning.gguf_export import write_gguf

        result.update(write_gguf(model, tokenizer, gguf_path, outtype, source, overwrite=overwrite))
        with (out / "README.md").open("a") as card:
            card.write(f"GGUF ({outtype}): `{gguf_path.name}`; run it with `llama-cli -m {gguf_path}`, or in "
                       f"transformers: `AutoModelForCausalLM.from_pretrained(\"{out}\", gguf_file=\"{gguf_path.name}\")`.\n")
        result["files"] = sorted(p.name for p in out.iterdir())
        return result
    target, problems = hf_target(model.config)
    if fmt == "hf" and target is None:
        raise UserError("format=hf needs GPT-2's architecture (model=gpt2) or Llama's (model=llama); this model: "
                        + "; ".join(problems["gpt2"] + problems["llama"]))
    as_hf = target is not None and fmt != "native"
    out.mkdir(parents=True, exist_ok=True)
    spec = tokenizer.spec() if tokenizer is not None else None
    result: dict[str, Any] = {"out": str(out), "format": "hf" if as_hf else "native"}
    if as_hf:
        _save_gpt2(model, out) if target == "gpt2" else _save_llama(model, tokenizer, out)
        result["architecture"] = "GPT2LMHeadModel" if target == "gpt2" else "LlamaForCausalLM"
        if tokenizer is not None:
            _save_hf_tokenizer(tokenizer, out)
    else:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
                 if not (model.config.tie_weights and k == "lm_head.weight")}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "lm_lightning"})
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
    from lm_lightning.gguf_export import check_outtype, gguf_arch, gguf_name
    from lm_lightning.gguf_tokenizer import gguf_vocab

    check_outtype(outtype)
    gguf_arch(model.config)
    gguf_vocab(tokenizer, model.config.vocab_size)
    path = gguf_name(out, source, outtype)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=true to replace it")
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise UserError("format=gguf needs the gguf package: pip install -e '.[gguf]' (or pip install gguf)") from exc
    return path


def _save_gpt2(model: Any, out: Path) -> None:
    from transformers import GPT2LMHeadModel

    from lm_lightning.hf_gpt2 import hf_config, to_hf_state

    hf = GPT2LMHeadModel(hf_config(model.config))
    missing, unexpected = hf.load_state_dict(to_hf_state(model), strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise UserError(f"export: weights do not map onto GPT2LMHeadModel (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    hf.save_pretrained(str(out))


def _save_llama(model: Any, tokenizer: Any, out: Path) -> None:
    from transformers import GenerationConfig

    from lm_lightning.hf_llama import hf_llama_from_gpt
    from lm_lightning.hf_tokenizers import bos_id, eos_id

    bos, eos = bos_id(tokenizer), eos_id(tokenizer)
    hf = hf_llama_from_gpt(model, bos, eos)
    hf.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    hf.save_pretrained(str(out))
    if not (out / "generation_config.json").is_file():  # older transformers skip a default one
        hf.generation_config.save_pretrained(str(out))


def _save_hf_tokenizer(tokenizer: Any, out: Path) -> None:
    from lm_lightning.hf_tokenizers import fast_tokenizer

    fast = fast_tokenizer(tokenizer)
    if fast is not None:
        fast.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        args, _ = parse_args(argv, DEFAULTS, USAGE)
        if not args["out"]:
            raise UserError(f"out=DIR is required; usage: {USAGE}")
        if args["format"] in ("gguf", "all"):
            from lm_lightning.gguf_export import check_outtype

            check_outtype(args["outtype"])
        from lm_lightning.loading import DCP_INDEX, SHARDED_META, is_sharded

        if args["ckpt"] and Path(args["ckpt"]).is_dir() and not is_sharded(args["ckpt"]):
            # A complete sharded (FSDP) checkpoint is consolidated by load_for_inference.
            raise UserError(f"ckpt={args['ckpt']} is a folder (a sharded checkpoint?) without {SHARDED_META} and "
                            f"{DCP_INDEX}: an unfinished save, or not a checkpoint")
        inf = load_for_inference(args["ckpt"])
        source = {"ckpt": args["ckpt"], "global_step": inf.loaded.global_step, "run_config": inf.loaded.config,
                  "command": "python -m lm_lightning.export " + " ".join(argv)}
        result = export(inf.model, inf.tokenizer, args["out"], args["format"], source, args["outtype"],
                        args["overwrite"])
        print(json.dumps(result), flush=True)
        if result.get("note"):
            print(f"note: {result['note']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
