"""Export a checkpoint's weights, model config and tokenizer to a folder.

    python -m lm_lightning.export ckpt=PATH out=DIR

Always written: ``lm_lightning_config.json`` (our model config and the tokenizer spec) and
``tokenizer_spec.json``. A model with GPT-2's shape (``model=gpt2``: learned positions,
LayerNorm with bias, GELU, tied weights) becomes a transformers folder, ``config.json`` plus
``model.safetensors`` in GPT2LMHeadModel's layout, with the tokenizer saved for
``AutoTokenizer`` when it is a BPE, so ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it.
Any other architecture is written as ``model.safetensors`` in our own parameter names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lm_lightning.errors import UserError, exit_on_user_error
from lm_lightning.tools import load_for_inference, parse_args

USAGE = "python -m lm_lightning.export ckpt=PATH out=DIR [format=auto|hf|native]"
DEFAULTS: dict[str, Any] = {"ckpt": "", "out": "", "format": "auto"}


def export(model: Any, tokenizer: Any, out: str | Path, fmt: str = "auto") -> dict[str, Any]:
    from lm_lightning.hf_gpt2 import gpt2_shape_problems

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} exists and is not a directory")
    problems = gpt2_shape_problems(model.config)
    if fmt not in ("auto", "hf", "native"):
        raise UserError(f"format must be auto, hf or native, got {fmt!r}")
    if fmt == "hf" and problems:
        raise UserError("format=hf needs GPT-2's architecture: " + ", ".join(problems))
    as_hf = fmt == "hf" or (fmt == "auto" and not problems)
    out.mkdir(parents=True, exist_ok=True)
    spec = tokenizer.spec() if tokenizer is not None else None
    if as_hf:
        _save_hf(model, out)
        if tokenizer is not None and tokenizer.kind in ("bpe", "gpt2"):
            _save_hf_tokenizer(tokenizer, out)
    else:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
                 if not (model.config.tie_weights and k == "lm_head.weight")}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "lm_lightning"})
    (out / "lm_lightning_config.json").write_text(json.dumps(
        {"model": model.config.to_dict(), "format": "hf" if as_hf else "native",
         "tokenizer_kind": spec.get("kind") if spec else None}, indent=2) + "\n")
    if spec is not None:
        (out / "tokenizer_spec.json").write_text(json.dumps(spec))
    return {"out": str(out), "format": "hf" if as_hf else "native", "files": sorted(p.name for p in out.iterdir())}


def _save_hf(model: Any, out: Path) -> None:
    from transformers import GPT2LMHeadModel

    from lm_lightning.hf_gpt2 import hf_config, to_hf_state

    hf = GPT2LMHeadModel(hf_config(model.config))
    missing, unexpected = hf.load_state_dict(to_hf_state(model), strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise UserError(f"export: weights do not map onto GPT2LMHeadModel (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    hf.save_pretrained(str(out))


def _save_hf_tokenizer(tokenizer: Any, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    eot = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, bos_token=eot, eos_token=eot, unk_token=eot)
    fast.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        args, _ = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
        if not args["out"]:
            raise UserError(f"out=DIR is required; usage: {USAGE}")
        inf = load_for_inference(args["ckpt"])
        result = export(inf.model, inf.tokenizer, args["out"], args["format"])
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
