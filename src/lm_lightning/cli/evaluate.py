"""Test loss and perplexity of a checkpoint, as one JSON line.

    python -m lm_lightning.evaluate ckpt=PATH [split=test] [data=... data.KEY=VALUE ...]

Without ``data`` overrides the data are the run's own (from the config stored in the
checkpoint); with them, the named data config is composed as in ``train.py``. Either way the
text is tokenized with the checkpoint's tokenizer, and the split is covered by sequential
non-overlapping windows, so every token after the first is scored exactly once.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from lm_lightning.cli.args import parse_args
from lm_lightning.errors import UserError, exit_on_user_error
from lm_lightning.startup import start_up

USAGE = ("python -m lm_lightning.evaluate ckpt=PATH [split=test|val] [batch_size=N] [max_batches=N] "
         "[device=cpu] [data=NAME data.KEY=VALUE ...]")
DEFAULTS: dict[str, Any] = {"ckpt": "", "split": "test", "batch_size": 0, "max_batches": 0, "device": "cpu"}


def data_config(run_config: dict[str, Any] | None, overrides: list[str]) -> dict[str, Any]:
    """The data config to evaluate on: composed from overrides, else the checkpoint's own."""
    from omegaconf import OmegaConf

    if overrides:
        from hydra import compose, initialize_config_dir

        from lm_lightning.config.location import CONF_DIR

        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="train", overrides=overrides)
            return OmegaConf.to_container(cfg.data, resolve=True)
        except Exception as exc:
            raise UserError(f"data overrides {overrides}: {' '.join(str(exc).split())[:300]}") from exc
    if not run_config or "data" not in run_config:
        raise UserError("the checkpoint has no stored data config; name the data: data=text data.train_path=...")
    return dict(run_config["data"])


def build_datamodule(data_cfg: dict[str, Any], tokenizer: Any, vocab_size: int):
    from hydra.utils import instantiate

    if tokenizer is None:
        raise UserError("the checkpoint carries no tokenizer; it was not trained on text data")
    try:
        dm = instantiate(data_cfg)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(" ".join(str(exc.__cause__ or exc).split())) from exc
    from lm_lightning.data.base import LMDataModule

    if not (isinstance(dm, LMDataModule) and dm.uses_tokenizer):
        raise UserError(f"{data_cfg.get('_target_')} is not a text data module")
    dm.use_tokenizer(tokenizer, vocab_size)
    return dm


def evaluate(model, datamodule, split: str = "test", max_batches: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Summed next-token cross-entropy over the split's windows; mean loss and perplexity."""
    import torch
    import torch.nn.functional as F

    from lm_lightning.lit.objectives import IGNORE_INDEX

    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader(capped=False)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            x, y = batch["input_ids"].to(device), batch["labels"].to(device)
            logits = model(x).float()
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX,
                                     reduction="sum").item()
            count += int((y != IGNORE_INDEX).sum())
    if count == 0:
        raise UserError(f"the {split} split has no tokens to score")
    loss = total / count
    return {"split": split, "loss": round(loss, 6), "ppl": round(math.exp(min(loss, 50.0)), 4), "tokens": count}


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE,
                                     passthrough=("data", "tokenizer"))
        if args["split"] not in ("test", "val"):
            raise UserError(f"split must be test or val, got {args['split']!r}")
        start = time.time()
        with start_up():  # the imports and the checkpoint: no collections, then frozen
            from lm_lightning.ckpt.load import load_for_inference

            inf = load_for_inference(args["ckpt"], args["device"])
        data_cfg = data_config(inf.loaded.config, overrides)
        if args["batch_size"]:
            data_cfg["eval_batch_size"] = args["batch_size"]
        data_cfg["block_size"] = min(int(data_cfg.get("block_size") or inf.model.config.block_size),
                                     inf.model.config.block_size)
        dm = build_datamodule(data_cfg, inf.tokenizer, inf.model.config.vocab_size)
        result = evaluate(inf.model, dm, args["split"], args["max_batches"], args["device"])
        result.update({"checkpoint": str(args["ckpt"]), "seconds": round(time.time() - start, 2)})
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
