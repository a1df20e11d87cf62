"""The five guides' command-line flags, answered with the Hydra override to type instead.

``python train.py --epochs 10`` (guide 001's own command) would otherwise get Hydra's argparse
usage, which says nothing about ``trainer.max_epochs``. :func:`check_argv` runs first in
``cli.train.main()``: every guide flag on the command line becomes one line, exit 2::

    error: --epochs is not a Hydra override; type trainer.max_epochs=10

The value given with the flag (``--epochs 10`` or ``--epochs=10``) is carried over; several
flags give one line with all of their overrides, ready to paste. Hydra's own flags (``-m``,
``--cfg``, ``--help``, ...) are not in the table and pass through untouched. A bare data file
name (guide 003's positional ``data/processed/train.txt``) is answered with ``data.train_path=``.
"""

from __future__ import annotations

from pathlib import PurePath

from lm_lightning.errors import UserError

# flag -> (override template, whether the flag takes a value, placeholder when the value is missing).
# "{v}" is the value. Templates without "{v}" are switches (--use-amp) whose answer is fixed.
GUIDE_FLAGS: dict[str, tuple[str, bool, str]] = {
    # guide 001, Fragment_LLM (python train.py --epochs 10 ...)
    "--vocab-size": ("tokenizer.vocab_size={v}", True, "N"),
    "--block-size": ("data.block_size={v}", True, "N"),
    "--n-layer": ("model.n_layer={v}", True, "N"),
    "--n-head": ("model.n_head={v}", True, "N"),
    "--n-embd": ("model.n_embd={v}", True, "N"),
    "--dropout": ("model.dropout={v}", True, "P"),
    "--batch-size": ("data.batch_size={v}", True, "N"),
    "--grad-accum-steps": ("trainer.accumulate_grad_batches={v}", True, "N"),
    "--learning-rate": ("optimizer.lr={v}", True, "LR"),
    "--epochs": ("trainer.max_epochs={v}", True, "N"),
    "--max-iters": ("trainer.max_steps={v}", True, "N"),
    "--use-amp": ("trainer.precision=16-mixed (bf16-mixed on Ampere or later; the default auto already "
                  "picks mixed precision on a GPU)", False, ""),
    "--no-amp": ("trainer.precision=32-true", False, ""),
    "--retrain-tokenizer": ("data.cache_dir=NEW_DIR (a fresh cache trains the tokenizer again)", False, ""),
    "--use-wandb": ("logger=wandb", False, ""),
    # guide 002, GPT-2 on WikiText-2 (python -m ...main train --max_training_hours 8.0 ...)
    "--max_training_hours": ("max_training_hours={v}", True, "H"),
    "--max_epochs": ("trainer.max_epochs={v}", True, "N"),
    "--batch_size": ("data.batch_size={v}", True, "N"),
    "--learning_rate": ("optimizer.lr={v}", True, "LR"),
    "--d_model": ("model.n_embd={v}", True, "N"),
    "--num_layers": ("model.n_layer={v}", True, "N"),
    "--num_heads": ("model.n_head={v}", True, "N"),
    "--d_ff": ("model.d_ff={v}", True, "N"),
    "--checkpoint_dir": ("{run_dir}", True, "DIR"),
    "--resume_from": ("ckpt_path={v}", True, "PATH"),
    "--model_path": ("python -m lm_lightning.evaluate ckpt={v} (train.py does not evaluate)", True, "PATH"),
    "--logdir": ("tensorboard --logdir outputs (train.py writes outputs/<run>/tensorboard itself)", True, "DIR"),
    # guide 003, fundamentallm (fundamentallm train data/processed/train.txt --validation-data ...)
    "--validation-data": ("data.val_path={v}", True, "PATH"),
    "--output-dir": ("{run_dir}", True, "DIR"),
    "--model-dim": ("model.n_embd={v}", True, "N"),
    "--num-layers": ("model.n_layer={v}", True, "N"),
    "--num-heads": ("model.n_head={v}", True, "N"),
    "--lr-schedule": ("{schedule}", True, "NAME"),
    "--warmup-steps": ("scheduler.warmup_steps={v}", True, "N"),
    "--gradient-clip": ("trainer.gradient_clip_val={v}", True, "X"),
    "--mixed-precision": ("trainer.precision=16-mixed (bf16-mixed on Ampere or later; the default auto "
                          "already picks mixed precision on a GPU)", False, ""),
    "--early-stopping": ("early_stopping.patience=10", False, ""),
    "--patience": ("early_stopping.patience={v}", True, "N"),
    "--data": ("python -m lm_lightning.evaluate ckpt=CKPT split=val data=text data.train_path=TRAIN "
               "data.val_path={v} (train.py does not evaluate)", True, "PATH"),
    # guide 004, cs336 (python -m cs336_basics.training_together --train_data_path ... --max_iters ...)
    "--train_data_path": ("data=tokens data.train_path={v} data.dtype=uint16", True, "PATH"),
    "--val_data_path": ("data.val_path={v}", True, "PATH"),
    "--vocab_size": ("data.vocab_size={v}", True, "N"),
    "--context_length": ("data.block_size={v}", True, "N"),
    "--rope_theta": ("model.rope_theta={v}", True, "X"),
    "--lr": ("optimizer.lr={v}", True, "LR"),
    "--min_lr": ("scheduler.min_lr={v}", True, "LR"),
    "--weight_decay": ("optimizer.weight_decay={v}", True, "X"),
    "--beta1": ("optimizer.betas=[{v},0.95]", True, "B1"),
    "--beta2": ("optimizer.betas=[0.9,{v}]", True, "B2"),
    "--eps": ("optimizer.eps={v}", True, "X"),
    "--max_iters": ("trainer.max_steps={v}", True, "N"),
    "--warmup_iters": ("scheduler.warmup_steps={v}", True, "N"),
    "--grad_clip": ("trainer.gradient_clip_val={v}", True, "X"),
    "--checkpoint_interval": ("callbacks.checkpointing.every_n_steps={v}", True, "N"),
    "--eval_interval": ("trainer.val_check_interval={v}", True, "N"),
    "--log_interval": ("trainer.log_every_n_steps={v}", True, "N"),
    "--eval_iters": ("data.eval_batches={v}", True, "N"),
    "--device": ("{device}", True, "cpu|cuda"),
    "--seed": ("seed={v}", True, "N"),
    "--use_wandb": ("logger=wandb", False, ""),
    "--wandb_project": ("logger=wandb logger.wandb.project={v}", True, "NAME"),
    "--wandb_run_name": ("logger=wandb logger.wandb.name={v}", True, "NAME"),
}

# A bare file name (guide 003: `fundamentallm train data/processed/train.txt ...`) is the training data.
DATA_SUFFIXES = (".txt", ".ids", ".bin", ".jsonl", ".parquet")

SCHEDULES = {"cosine": "scheduler=cosine_warmup", "linear": "scheduler=linear_warmup",
             "constant": "scheduler=constant", "wsd": "scheduler=wsd", "plateau": "scheduler=plateau"}


def _special(template: str, value: str | None, placeholder: str) -> str:
    v = value if value is not None else placeholder
    if template == "{run_dir}":
        # Our run directory is <paths.runs_root>/<run_name>; checkpoints go to its checkpoints/.
        if value is None:
            return "run_name=NAME (checkpoints in outputs/NAME/checkpoints)"
        p = PurePath(value)
        parent = str(p.parent)
        root = "" if parent in (".", "") else f"paths.runs_root={parent} "
        return f"{root}run_name={p.name}"
    if template == "{schedule}":
        return SCHEDULES.get(str(value), "scheduler=cosine_warmup (or linear_warmup, constant, wsd, plateau)")
    if template == "{device}":
        if value is not None and value.startswith("cuda"):
            return "trainer.accelerator=gpu (or a hardware preset: trainer=rtx3060, trainer=a100, ...)"
        return "trainer=cpu" if value is not None else "trainer=cpu (or trainer.accelerator=gpu)"
    return template.replace("{v}", v)


def hint(flag: str, value: str | None = None) -> str | None:
    """The override that replaces a guide's ``flag`` (with its value, when given), or None."""
    if flag not in GUIDE_FLAGS:
        return None
    template, _, placeholder = GUIDE_FLAGS[flag]
    return _special(template, value, placeholder)


def translate(argv: list[str]) -> tuple[list[str], list[str]]:
    """The guide flags found in ``argv`` and the overrides that replace them, in order."""
    flags: list[str] = []
    hints: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if arg.startswith("--") and name in GUIDE_FLAGS:
            takes_value = GUIDE_FLAGS[name][1]
            value: str | None = inline if eq else None
            if takes_value and value is None and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            flags.append(name)
            hints.append(hint(name, value if takes_value else None) or "")
        elif "=" not in arg and not arg.startswith("-") and arg.lower().endswith(DATA_SUFFIXES):
            flags.append(arg)
            hints.append(f"data.train_path={arg}")
        i += 1
    return flags, hints


def message(argv: list[str]) -> str | None:
    """The one-line error for a command line holding guide flags, or None."""
    flags, hints = translate(argv)
    if not flags:
        return None
    if len(flags) == 1:
        return f"{flags[0]} is not a Hydra override; type {hints[0]}"
    return f"{', '.join(flags)} are not Hydra overrides; type {' '.join(dict.fromkeys(hints))}"


def check_argv(argv: list[str]) -> None:
    """Raise UserError (one line, exit 2 in main) when ``argv`` uses a guide's flags."""
    text = message(argv)
    if text:
        raise UserError(text)
