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

# Each override once, with every guide's spelling of it (001 Fragment_LLM, 002 GPT-2 on WikiText-2,
# 003 fundamentallm, 004 cs336, 005 nanoGPT): (override template, placeholder) -> flags. "{v}" is
# the value given with the flag; a template without it is a switch (--use-amp, placeholder "") whose
# answer is fixed, or a special answer ({run_dir}, {schedule}, {device}).
OVERRIDES: dict[tuple[str, str], str] = {
    ("tokenizer.vocab_size={v}", "N"): "--vocab-size",
    ("data.block_size={v}", "N"): "--block-size --context_length",
    ("model.n_layer={v}", "N"): "--n-layer --num_layers --num-layers",
    ("model.n_head={v}", "N"): "--n-head --num_heads --num-heads",
    ("model.n_embd={v}", "N"): "--n-embd --d_model --model-dim",
    ("model.dropout={v}", "P"): "--dropout",
    ("data.batch_size={v}", "N"): "--batch-size --batch_size",
    ("trainer.accumulate_grad_batches={v}", "N"): "--grad-accum-steps",
    ("optimizer.lr={v}", "LR"): "--learning-rate --learning_rate --lr",
    ("trainer.max_epochs={v}", "N"): "--epochs --max_epochs",
    ("trainer.max_steps={v}", "N"): "--max-iters --max_iters",
    ("trainer.precision=16-mixed (bf16-mixed on Ampere or later; the default auto already picks mixed precision on a GPU)",
     ""): "--use-amp --mixed-precision",
    ("trainer.precision=32-true", ""): "--no-amp",
    ("data.cache_dir=NEW_DIR (a fresh cache trains the tokenizer again)", ""): "--retrain-tokenizer",
    ("logger=wandb", ""): "--use-wandb --use_wandb",
    ("max_training_hours={v}", "H"): "--max_training_hours",
    ("model.d_ff={v}", "N"): "--d_ff",
    ("{run_dir}", "DIR"): "--checkpoint_dir --output-dir",
    ("ckpt_path={v}", "PATH"): "--resume_from",
    ("python -m lm_lightning.evaluate ckpt={v} (train.py does not evaluate)", "PATH"): "--model_path",
    ("tensorboard --logdir outputs (train.py writes outputs/<run>/tensorboard itself)", "DIR"): "--logdir",
    ("data.val_path={v}", "PATH"): "--validation-data --val_data_path",
    ("{schedule}", "NAME"): "--lr-schedule",
    ("scheduler.warmup_steps={v}", "N"): "--warmup-steps --warmup_iters",
    ("trainer.gradient_clip_val={v}", "X"): "--gradient-clip --grad_clip",
    ("early_stopping.patience=10", ""): "--early-stopping",
    ("early_stopping.patience={v}", "N"): "--patience",
    ("python -m lm_lightning.evaluate ckpt=CKPT split=val data=text data.train_path=TRAIN data.val_path={v} (train.py does not evaluate)",
     "PATH"): "--data",
    ("data=tokens data.train_path={v} data.dtype=uint16", "PATH"): "--train_data_path",
    ("data.vocab_size={v}", "N"): "--vocab_size",
    ("model.rope_theta={v}", "X"): "--rope_theta",
    ("scheduler.min_lr={v}", "LR"): "--min_lr",
    ("optimizer.weight_decay={v}", "X"): "--weight_decay",
    ("optimizer.betas=[{v},0.95]", "B1"): "--beta1",
    ("optimizer.betas=[0.9,{v}]", "B2"): "--beta2",
    ("optimizer.eps={v}", "X"): "--eps",
    ("callbacks.checkpointing.every_n_steps={v}", "N"): "--checkpoint_interval",
    ("trainer.val_check_interval={v}", "N"): "--eval_interval",
    ("trainer.log_every_n_steps={v}", "N"): "--log_interval",
    ("data.eval_batches={v}", "N"): "--eval_iters",
    ("{device}", "cpu|cuda"): "--device",
    ("seed={v}", "N"): "--seed",
    ("logger=wandb logger.wandb.project={v}", "NAME"): "--wandb_project",
    ("logger=wandb logger.wandb.name={v}", "NAME"): "--wandb_run_name",
}
# flag -> (override template, whether the flag takes a value, placeholder when the value is missing)
GUIDE_FLAGS: dict[str, tuple[str, bool, str]] = {
    flag: (template, bool(placeholder), placeholder)
    for (template, placeholder), flags in OVERRIDES.items() for flag in flags.split()
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
