"""``python -m lm_lightning.export``: a checkpoint as a transformers folder, a GGUF file, or both.

    python -m lm_lightning.export ckpt=PATH out=DIR [format=auto|hf|native|gguf|all] [outtype=f16] [overwrite=false]

Always written: ``lm_lightning_config.json``, ``tokenizer_spec.json`` and a ``README.md`` model
card. GPT-2's shape (``model=gpt2``) and Llama's (``model=llama``) become folders that
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load;
any other architecture is written in our own parameter names, and a ``note`` says why.
``format=gguf`` writes one ``DIR/<run name>-<outtype>.gguf`` (llama.cpp, Ollama, LM Studio,
transformers' GGUF loader), ``outtype`` f16 (default), f32, bf16 or q8_0; ``format=all`` both.
Every refusal comes before anything is written. The work is :mod:`lm_lightning.convert.export`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lm_lightning.cli.args import parse_args
from lm_lightning.errors import UserError, exit_on_user_error
from lm_lightning.startup import start_up

USAGE = ("python -m lm_lightning.export ckpt=PATH out=DIR [format=auto|hf|native|gguf|all] "
         "[outtype=f16|f32|bf16|q8_0] [overwrite=false]")
DEFAULTS: dict[str, Any] = {"ckpt": "", "out": "", "format": "auto", "outtype": "f16", "overwrite": False}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        args, _ = parse_args(argv, DEFAULTS, USAGE)
        if not args["out"]:
            raise UserError(f"out=DIR is required; usage: {USAGE}")
        if args["format"] in ("gguf", "all"):
            from lm_lightning.convert.gguf_writer import check_outtype

            check_outtype(args["outtype"])
        from lm_lightning.ckpt.load import load_for_inference
        from lm_lightning.ckpt.payload import export_source
        from lm_lightning.ckpt.read import DCP_INDEX, SHARDED_META, is_sharded
        from lm_lightning.convert.export import export

        if args["ckpt"] and Path(args["ckpt"]).is_dir() and not is_sharded(args["ckpt"]):
            # A complete sharded (FSDP) checkpoint is consolidated by load_for_inference.
            raise UserError(f"ckpt={args['ckpt']} is a folder (a sharded checkpoint?) without {SHARDED_META} and "
                            f"{DCP_INDEX}: an unfinished save, or not a checkpoint")
        with start_up():  # the imports and the checkpoint: no collections, then frozen
            inf = load_for_inference(args["ckpt"])
        source = export_source(inf.loaded, args["ckpt"], "python -m lm_lightning.export " + " ".join(argv))
        result = export(inf.model, inf.tokenizer, args["out"], args["format"], source, args["outtype"],
                        args["overwrite"])
        print(json.dumps(result), flush=True)
        if result.get("note"):
            print(f"note: {result['note']}", file=sys.stderr, flush=True)
