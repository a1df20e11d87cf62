"""The guides' flags (issue 17, item 5): one line naming the Hydra override, exit 2.

Every flag that the five guides in the original specs use is listed here (hermetic: no read of
the specs at test time), answered in-process; one subprocess checks the real exit code and that
Hydra's argparse usage never shows.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from exp_helpers import ROOT, run_main

from lm_lightning.cli.guide_flags import GUIDE_FLAGS, check_argv, hint, message, translate
from lm_lightning.errors import UserError

# Every `--flag` in the five guides (grep -oh -- "--[a-z][a-z0-9_-]*" on them), with the override
# it must name when given the value 7.
EXPECTED = {
    "--batch-size": "data.batch_size=7", "--batch_size": "data.batch_size=7",
    "--beta1": "optimizer.betas=[7,0.95]", "--beta2": "optimizer.betas=[0.9,7]",
    "--block-size": "data.block_size=7", "--checkpoint_dir": "run_name=7",
    "--checkpoint_interval": "callbacks.checkpointing.every_n_steps=7", "--context_length": "data.block_size=7",
    "--d_ff": "model.d_ff=7", "--d_model": "model.n_embd=7", "--data": "split=val data=text data.train_path=TRAIN data.val_path=7",
    "--device": "trainer=cpu", "--dropout": "model.dropout=7", "--early-stopping": "early_stopping.patience=10",
    "--epochs": "trainer.max_epochs=7", "--eps": "optimizer.eps=7", "--eval_interval": "trainer.val_check_interval=7",
    "--eval_iters": "data.eval_batches=7", "--grad-accum-steps": "trainer.accumulate_grad_batches=7",
    "--grad_clip": "trainer.gradient_clip_val=7", "--gradient-clip": "trainer.gradient_clip_val=7",
    "--learning-rate": "optimizer.lr=7", "--learning_rate": "optimizer.lr=7", "--log_interval": "trainer.log_every_n_steps=7",
    "--logdir": "tensorboard --logdir outputs", "--lr": "optimizer.lr=7",
    "--lr-schedule": "scheduler=cosine_warmup", "--max-iters": "trainer.max_steps=7",
    "--max_epochs": "trainer.max_epochs=7", "--max_iters": "trainer.max_steps=7",
    "--max_training_hours": "max_training_hours=7", "--min_lr": "scheduler.min_lr=7",
    "--mixed-precision": "trainer.precision=16-mixed", "--model-dim": "model.n_embd=7",
    "--model_path": "python -m lm_lightning.evaluate ckpt=7", "--n-embd": "model.n_embd=7",
    "--n-head": "model.n_head=7", "--n-layer": "model.n_layer=7", "--no-amp": "trainer.precision=32-true",
    "--num-heads": "model.n_head=7", "--num-layers": "model.n_layer=7", "--num_heads": "model.n_head=7",
    "--num_layers": "model.n_layer=7", "--output-dir": "run_name=7", "--patience": "early_stopping.patience=7",
    "--resume_from": "ckpt_path=7", "--retrain-tokenizer": "data.cache_dir=", "--rope_theta": "model.rope_theta=7",
    "--seed": "seed=7", "--train_data_path": "data=tokens data.train_path=7 data.dtype=uint16", "--use-amp": "trainer.precision=16-mixed",
    "--use-wandb": "logger=wandb", "--use_wandb": "logger=wandb", "--val_data_path": "data.val_path=7",
    "--validation-data": "data.val_path=7", "--vocab-size": "tokenizer.vocab_size=7",
    "--vocab_size": "data.vocab_size=7", "--wandb_project": "logger=wandb logger.wandb.project=7",
    "--wandb_run_name": "logger=wandb logger.wandb.name=7", "--warmup-steps": "scheduler.warmup_steps=7",
    "--warmup_iters": "scheduler.warmup_steps=7", "--weight_decay": "optimizer.weight_decay=7",
}


def test_every_guide_flag_is_answered_and_nothing_else_is_in_the_table():
    assert set(GUIDE_FLAGS) == set(EXPECTED)


@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_each_flag_names_its_override_with_the_value_carried_over(flag):
    text = message([flag, "7"])
    assert text is not None and "\n" not in text
    assert text.startswith(f"{flag} is not a Hydra override; type ")
    assert EXPECTED[flag] in text, text
    assert hint(flag, "7") in text
    # --flag=7 is the same flag; without a value a placeholder stands in its place.
    assert message([f"{flag}=7"]) == text
    if GUIDE_FLAGS[flag][1] and "{v}" in GUIDE_FLAGS[flag][0]:
        assert "=7" not in message([flag])


def test_the_issue_example_exactly():
    assert message(["--epochs", "10"]) == "--epochs is not a Hydra override; type trainer.max_epochs=10"


def test_a_guide_command_becomes_one_line_ready_to_paste():
    # Guide 001's low-tier command.
    argv = "--batch-size 4 --grad-accum-steps 16 --n-layer 4 --n-head 4 --n-embd 256 --block-size 256 --epochs 5".split()
    assert message(argv) == (
        "--batch-size, --grad-accum-steps, --n-layer, --n-head, --n-embd, --block-size, --epochs are not Hydra "
        "overrides; type data.batch_size=4 trainer.accumulate_grad_batches=16 model.n_layer=4 model.n_head=4 "
        "model.n_embd=256 data.block_size=256 trainer.max_epochs=5")
    # Guide 004's resume: the value of a switch-less flag is the next word, overrides stay untouched.
    flags, hints = translate(["experiment=cs336_tinystories", "--resume_from", "ckpts/iter5000.ckpt",
                              "--max_iters", "20000", "trainer=cpu"])
    assert flags == ["--resume_from", "--max_iters"]
    assert hints == ["ckpt_path=ckpts/iter5000.ckpt", "trainer.max_steps=20000"]


def test_a_bare_data_file_is_the_training_data():
    # Guide 003: fundamentallm train data/processed/train.txt --validation-data data/processed/val.txt
    assert message(["data/processed/train.txt", "--validation-data", "data/processed/val.txt"]) == (
        "data/processed/train.txt, --validation-data are not Hydra overrides; type "
        "data.train_path=data/processed/train.txt data.val_path=data/processed/val.txt")
    assert message(["data.train_path=a.txt"]) is None


def test_directories_and_switches():
    assert hint("--output-dir", "experiments/baseline") == "paths.runs_root=experiments run_name=baseline"
    assert hint("--checkpoint_dir", "my_checkpoints") == "run_name=my_checkpoints"
    assert hint("--lr-schedule", "linear") == "scheduler=linear_warmup"
    assert hint("--device", "cuda").startswith("trainer.accelerator=gpu")
    assert message(["--use-amp", "experiment=fragment_llm"]).startswith("--use-amp is not a Hydra override; type ")
    # A switch does not swallow the next word.
    assert translate(["--use-wandb", "--epochs", "3"])[1] == ["logger=wandb", "trainer.max_epochs=3"]


@pytest.mark.parametrize("argv", [[], ["experiment=collatz", "trainer.max_steps=2"], ["--cfg", "job"], ["-m", "seed=1,2"],
                                  ["--help"], ["--multirun", "x=1"], ["--info"], ["hydra.verbose=true"]])
def test_overrides_and_hydras_own_flags_pass(argv):
    assert message(argv) is None
    check_argv(argv)


def test_check_argv_raises_one_user_error():
    with pytest.raises(UserError, match=r"^--max_iters is not a Hydra override; type trainer.max_steps=N$"):
        check_argv(["--max_iters"])


def test_main_answers_before_precheck_and_hydra(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        run_main(monkeypatch, ["--resume_from", "x.pt", f"paths.runs_root={tmp_path}/o"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err == ["error: --resume_from is not a Hydra override; type ckpt_path=x.pt"]
    assert list(tmp_path.iterdir()) == []


def test_train_py_epochs_exits_2_with_one_line(tmp_path):
    # Guide 001's literal command, through the real script: no argparse usage, nothing written.
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--epochs", "10"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --epochs is not a Hydra override; type trainer.max_epochs=10"]
    assert "usage" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_readme_maps_every_flag():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Coming from a guide"):]
    section = section[:section.index("\n## ", 1)]
    missing = [f for f in GUIDE_FLAGS if f"`{f}" not in section and f" {f}" not in section]
    assert not missing, f"README 'Coming from a guide' does not mention {missing}"
