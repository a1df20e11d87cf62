"""Sample text from a checkpoint with the tokenizer that travelled with it.

    python -m lm_lightning.generate ckpt=PATH prompt="ROMEO:" max_new_tokens=200 \\
        temperature=0.8 top_k=50 top_p=0.95 seed=1 [num_samples=1] [device=cpu]

Prints the prompt and its continuation (samples separated by a line of dashes). Decoding uses
the model's KV cache, so each new token costs one position, not the whole context.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lm_lightning.cli.args import parse_args
from lm_lightning.errors import UserError, exit_on_user_error
from lm_lightning.startup import start_up

USAGE = ("python -m lm_lightning.generate ckpt=PATH prompt=TEXT max_new_tokens=200 temperature=0.8 "
         "top_k=50 top_p=0.95 seed=1 [num_samples=1] [device=cpu] [threads=1] [timing=false]")
DEFAULTS: dict[str, Any] = {"ckpt": "", "prompt": "", "max_new_tokens": 200, "temperature": 0.8, "top_k": 50,
                            "top_p": 0.95, "seed": 1, "num_samples": 1, "device": "cpu", "timing": False,
                            "threads": 1}


def start_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from end-of-text (BPE) or a newline (chars)."""
    if prompt:
        ids = tokenizer.encode(prompt)
        if ids:
            return ids
    eot = getattr(tokenizer, "eot_id", None)
    if eot is not None:
        return [eot]
    nl = tokenizer.encode("\n")
    return nl[:1] if nl else [0]


def generate(model: Any, tokenizer: Any, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, top_p: float | None = 0.95, seed: int = 1, num_samples: int = 1,
             device: str = "cpu") -> list[str]:
    import torch

    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    ids = start_ids(tokenizer, prompt)
    bad = [i for i in ids if i >= model.config.vocab_size]
    if bad:
        raise UserError(f"the prompt has token ids {bad[:3]} outside the model's vocabulary")
    idx = torch.tensor([ids] * max(1, num_samples), dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k or None,
                         top_p=top_p, generator=gen)
    skip = 0 if prompt else len(ids)  # the implicit start token is not part of the text
    return [tokenizer.decode(row[skip:].tolist()) for row in out]


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        args, _ = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
        import torch

        previous = torch.get_num_threads()
        if args["device"] == "cpu" and args["threads"]:
            # Decoding multiplies one row at a time: extra intra-op threads add synchronisation,
            # not speed, and on a shared CPU they made 200 tokens 9x slower (threads=0: torch's default).
            torch.set_num_threads(args["threads"])
        from lm_lightning.ckpt.load import load_for_inference

        try:
            with start_up():  # the imports and the checkpoint: no collections, then frozen
                inf = load_for_inference(args["ckpt"], args["device"])
            if inf.tokenizer is None:
                raise UserError("the checkpoint carries no tokenizer; it was not trained on text data")
            start = time.perf_counter()
            texts = generate(inf.model, inf.tokenizer, args["prompt"], args["max_new_tokens"], args["temperature"],
                             args["top_k"], args["top_p"], args["seed"], args["num_samples"], args["device"])
            elapsed = time.perf_counter() - start
        finally:
            torch.set_num_threads(previous)
        print(("\n" + "-" * 40 + "\n").join(texts), flush=True)
        if args["timing"]:
            n = args["max_new_tokens"] * max(1, args["num_samples"])
            print(f"[{n} tokens in {elapsed:.3f} s, {n / max(elapsed, 1e-9):.1f} tokens/s]", file=sys.stderr)


if __name__ == "__main__":
    main()
