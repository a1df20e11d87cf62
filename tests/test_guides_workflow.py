"""The guides' workflows (issue 17): rerun = resume, plain progress lines, epochs that are epochs,
cs336's evaluation metrics and a schedule re-fitted to a longer horizon.

Every run here is an in-process train() at toy size; the experiments come from a glob over
conf/experiment/, with the offline fixtures of test_experiments.py.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from exp_helpers import CONF, compose
from test_experiments import fixture_overrides

from lm_lightning.run.session import train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
# A model, batch and evaluation small enough for seconds on a CPU, whatever the recipe's size.
SMALL = ["trainer=cpu", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.d_ff=64",
         "data.block_size=32", "++effective_batch_size=2", "data.batch_size=2", "test=false", "logger=none",
         "callbacks.control.stdin=false", "callbacks.monitoring.plots=false", "trainer.limit_val_batches=2",
         "callbacks.checkpointing.final_model=false", "trainer.enable_model_summary=false"]


def toy(experiment: str, tmp_path: Path, *extra: str) -> list[str]:
    target = compose([f"experiment={experiment}"]).data._target_
    collatz = ["data.val_samples=16"] if target.endswith("CollatzDataModule") else []
    return [f"experiment={experiment}", *SMALL, *collatz, f"paths.runs_root={tmp_path / 'outputs'}",
            *fixture_overrides(experiment, tmp_path), *extra]


# -- 1. rerun = resume ------------------------------------------------------------------------
# collatz (through the CLI) and cs336_tinystories (with a longer horizon) rerun in their own tests below.
RERUN_ELSEWHERE = {"collatz", "cs336_tinystories"}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e not in RERUN_ELSEWHERE])
def test_rerunning_the_same_command_resumes(experiment, tmp_path, capsys):
    """No run_name: the second run of the same command finds the first one's directory and
    carries on from its newest checkpoint (stopped at step 2 of 3, as a killed run would be)."""
    command = toy(experiment, tmp_path, "trainer.max_steps=3", "trainer.max_epochs=-1", "trainer.val_check_interval=1000",
                  "trainer.check_val_every_n_epoch=null")
    stopper = ["+callbacks.stopper._target_=reliability_helpers.StopAt", "+callbacks.stopper.step=2"]
    cfg = compose([*command, *stopper])
    run_dir = Path(cfg.paths.run_dir)
    assert re.fullmatch(r"run-[0-9a-f]{8}", run_dir.name)  # <experiment>-<config id> under Hydra
    first = train(cfg)
    assert (first["status"], first["global_step"]) == ("stopped", 2)
    capsys.readouterr()
    again = compose(command)
    assert Path(again.paths.run_dir) == run_dir
    second = train(again)
    out = capsys.readouterr().out
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"Loading checkpoint: {last}" in out
    assert f"Resumed from step 2 ({last})" in out
    assert "lr schedule:" not in out  # the same max_steps: the schedule is not touched
    assert (second["status"], second["global_step"]) == ("finished", 3)


def test_run_identity_ignores_where_and_how_long(tmp_path):
    import lm_lightning  # noqa: F401 - registers the config resolvers

    base = ["experiment=collatz", f"paths.runs_root={tmp_path}"]
    same = [[], ["trainer.max_steps=20", "logger=csv", "data.num_workers=2", "trainer=cpu", "resume=must",
                 "callbacks.checkpointing.every_n_steps=5"]]
    dirs = {compose([*base, *o]).paths.run_dir for o in same}
    assert len(dirs) == 1, dirs
    other = {compose([*base, *o]).paths.run_dir for o in (["model=medium"], ["optimizer.lr=3e-3"])}
    assert len(other) == 2 and not other & dirs
    assert compose([*base, "run_name=mine"]).paths.run_dir == f"{tmp_path}/mine"
    fresh = compose([*base, "fresh=true"]).paths.run_dir
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d+", Path(fresh).name)


def test_cli_names_the_directory_after_the_experiment_and_resumes(tmp_path, monkeypatch, capsys):
    """`python train.py experiment=collatz ...` twice: outputs/collatz-<id>/, resumed the second time."""
    from exp_helpers import run_main

    argv = ["experiment=collatz", "model=tiny", "trainer=debug", "++effective_batch_size=8", "data.batch_size=8",
            "data.block_size=16", "data.val_samples=16", "logger=none", "callbacks.control.stdin=false",
            "callbacks.monitoring.plots=false", f"paths.runs_root={tmp_path}", "trainer.log_every_n_steps=1",
            "trainer.val_check_interval=2", "callbacks.checkpointing.every_n_steps=1", "trainer.max_steps=2"]
    run_main(monkeypatch, argv)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert re.fullmatch(r"collatz-[0-9a-f]{8}", run_dir.name)
    check_plain_lines(capsys.readouterr().out, run_dir)
    run_main(monkeypatch, [*argv[:-1], "trainer.max_steps=3"])
    out = capsys.readouterr().out
    assert f"Resumed from step 2 ({run_dir / 'checkpoints' / 'last.ckpt'})" in out
    assert "lr schedule: the run now ends at step 3 (was 2)" in out
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [run_dir.name]
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 3
    # The finished run's command once more: it loads, has nothing left to do, and says so.
    run_main(monkeypatch, [*argv[:-1], "trainer.max_steps=3"])
    out = capsys.readouterr().out
    assert "Resumed from step 3" in out and "lr schedule:" not in out and "Step 4" not in out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


# -- 2. plain progress lines --------------------------------------------------------------------
def check_plain_lines(out: str, run_dir: Path) -> None:
    """stdout (pytest's capture: not a terminal) and train.log of a 2-step Collatz run."""
    steps = re.findall(r"^Step (\d+) \| Loss: ([\d.]+) \(Stop: ([\d.]+), Seq: ([\d.]+)\) \| LR: \S+ \| "
                       r"Time: [\d.]+s \| Elapsed: \d+:\d\d:\d\d \| Tokens/s: [\d,]+$", out, re.M)
    assert [int(s[0]) for s in steps] == [1, 2]
    assert "Validation data: 16 samples" in out and "Train data: generated on the fly" in out
    assert "Starting training from step 0 (max steps 2)" in out
    assert re.search(r"^Evaluating at step 2 \| Val loss: [\d.]+", out, re.M)
    ckpts = run_dir / "checkpoints"
    for name in ("step-1.ckpt", "step-2.ckpt", "final.ckpt"):
        assert f"Saved checkpoint to {ckpts / name}\n" in out
    log = (run_dir / "train.log").read_text()
    assert "Step 2 | Loss:" in log and "Evaluating at step 2" in log and f"Saved checkpoint to {ckpts}" in log


def test_plain_lines_stay_out_of_a_terminal(monkeypatch, capsys, caplog):
    from lm_lightning.callbacks import progress

    monkeypatch.setattr(progress, "stdout_is_terminal", lambda: True)
    with caplog.at_level("INFO", logger="lm_lightning"):
        progress.announce_line("Step 1 | Loss: 1.0000")
    assert capsys.readouterr().out == ""  # the rich bar has the terminal
    assert "Step 1 | Loss: 1.0000" in caplog.text  # train.log still gets it


def test_the_bar_is_off_in_a_log_and_on_in_a_terminal(monkeypatch):
    from lm_lightning.callbacks import progress

    for terminal in (False, True):
        monkeypatch.setattr(progress, "stdout_is_terminal", lambda terminal=terminal: terminal)
        bar = progress.ProgressBar()
        bar.setup(SimpleNamespace(is_global_zero=True), None, "fit")
        assert bar.is_disabled is (not terminal)


def test_progress_bar_counts_one_unit():
    """Position and total in optimizer steps (it read `1060/200` with accumulation)."""
    from lm_lightning.callbacks.progress import ProgressBar

    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_steps=200, max_epochs=-1, accumulate_grad_batches=4,
                                   num_training_batches=float("inf"), global_step=150)
    assert bar.total_train_batches == 200 and bar._position(bar._trainer, 599) == 150
    bar._trainer = SimpleNamespace(max_steps=-1, max_epochs=3, accumulate_grad_batches=4,
                                   num_training_batches=400, global_step=175)
    assert bar.total_train_batches == 100 and bar._position(bar._trainer, 299) == 75


# -- 3. epochs --------------------------------------------------------------------------------
def _epoch_run(experiment: str, tmp_path: Path, steps_per_epoch: int, *extra: str) -> tuple[dict, str]:
    tokens = 2 * 32 * steps_per_epoch  # data.epoch_tokens: an epoch of exactly this many steps
    cfg = compose(toy(experiment, tmp_path, "trainer.max_steps=-1", f"data.epoch_tokens={tokens}", *extra))
    summary = train(cfg)
    return summary, cfg.paths.output_dir


@pytest.mark.slow
def test_fragment_llm_numbers_epoch_checkpoints_from_one(tmp_path, capsys):
    summary, run_dir = _epoch_run("fragment_llm", tmp_path, 1)
    assert (summary["status"], summary["global_step"]) == ("finished", 10)  # 10 epochs of one step
    names = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("checkpoint_epoch_*"))
    assert names == ["checkpoint_epoch_10.ckpt", "checkpoint_epoch_5.ckpt"]
    out = capsys.readouterr().out
    assert out.count("checkpoint_epoch_5.ckpt\n") == 1 and out.count("checkpoint_epoch_10.ckpt\n") == 1
    # the guide validates every epoch
    assert re.findall(r"^Evaluating at step (\d+)", out, re.M) == [str(s) for s in range(1, 11)]


@pytest.mark.slow
def test_an_epoch_cut_short_by_max_steps_gets_no_epoch_checkpoint(tmp_path, capsys):
    # epochs of 3 steps, every epoch checkpointed, max_steps=4 ends the run inside the second epoch
    summary, run_dir = _epoch_run("fragment_llm", tmp_path, 3, "trainer.max_steps=4",
                                  "callbacks.checkpointing.every_n_epochs=1")
    assert summary["global_step"] == 4
    names = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("checkpoint_epoch_*"))
    assert names == ["checkpoint_epoch_1.ckpt"]


@pytest.mark.slow
def test_gpt2_wikitext2_validates_every_500_steps_and_each_epoch_end(tmp_path, capsys):
    # 3 steps per epoch, validation every 2 steps (the recipe's 500), 2 epochs
    summary, run_dir = _epoch_run("gpt2_wikitext2", tmp_path, 3, "trainer.max_epochs=2",
                                  "trainer.val_check_interval=2", "trainer.max_time=null")
    assert summary["global_step"] == 6
    out = capsys.readouterr().out
    assert [int(s) for s in re.findall(r"^Evaluating at step (\d+)", out, re.M)] == [2, 3, 4, 6]
    assert "(max epochs 2: 3 steps per epoch, 6 steps in all; lr warmup 2,000 steps = 33333% of the run)" in out
    names = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("checkpoint_epoch_*"))
    assert names == ["checkpoint_epoch_1.ckpt", "checkpoint_epoch_2.ckpt"]
    # once per epoch, never at the step-interval validations
    assert out.count("checkpoint_epoch_1.ckpt\n") == 1 and out.count("checkpoint_epoch_2.ckpt\n") == 1


# -- 6. cs336: train and validation loss, final evaluation, a longer horizon --------------------
@pytest.mark.slow
def test_cs336_metrics_and_a_longer_rerun(tmp_path, capsys):
    command = toy("cs336_tinystories", tmp_path, "logger=csv", "trainer.val_check_interval=2", "data.eval_batches=2",
                  "trainer.log_every_n_steps=1", "scheduler.warmup_steps=1",
                  "callbacks.periodic_checkpoint.every_n_train_steps=2")  # the recipe's iter<N> files
    first = train(compose([*command, "trainer.max_steps=4"]))
    run_dir = Path(compose(command).paths.run_dir)
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    assert {"eval/train_loss", "eval/val_loss", "final/train_loss", "final/val_loss"} <= logged
    evals = [int(r["step"]) for r in rows if r.get("eval/train_loss")]
    assert len(evals) == 2
    for key in ("final/train_loss", "final/val_loss", "eval/train_loss"):
        assert math.isfinite(first["metrics"][key]), key
    saved = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert saved["final/train_loss"] == first["metrics"]["final/train_loss"]
    out = capsys.readouterr().out
    assert re.search(r"^Evaluating at step 2 \| Train loss: [\d.]+ \| Val loss: [\d.]+", out, re.M)
    assert re.search(r"^Final evaluation at step 4 .*Train loss: [\d.]+ \| Val loss: [\d.]+", out, re.M)
    for name in ("iter2.ckpt", "iter4.ckpt"):  # Lightning's ModelCheckpoint files get their line too
        assert out.count(f"Saved checkpoint to {run_dir / 'checkpoints' / name}\n") == 1, name

    # guide 004's `--resume_from ... --max_iters 20000`: the same command with a larger max_steps
    second = train(compose([*command, "trainer.max_steps=8"]))
    out = capsys.readouterr().out
    assert "Resumed from step 4" in out and second["global_step"] == 8
    assert re.search(r"^lr schedule: the run now ends at step 8 \(was 4\); re-fitted from step 4 \(lr \S+\)",
                     out, re.M)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    fn = ckpt["lr_schedulers"][0]["lr_lambdas"][0]
    assert fn["total_steps"] == 8 and fn["refit"][0] == 4
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(6e-5)  # min_lr at the new end


def test_refitted_schedule_shape():
    from lm_lightning.optim.schedules import WarmupConstant, WarmupCosine, WarmupLinear, WarmupStableDecay

    fn = WarmupCosine(warmup_steps=10, total_steps=100, floor=0.1)
    before = [fn(s) for s in range(101)]
    assert fn.refit_to(60, 100) is None  # the same horizon: untouched (a resume stays exact)
    v60 = fn.refit_to(60, 200)
    assert v60 == before[60] and fn.total_steps == 200
    after = [fn(s) for s in range(60, 201)]
    assert after[0] == v60 and after[-1] == pytest.approx(0.1) and fn(250) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(after, after[1:]))  # no jump: a smooth decay to the floor
    assert fn(130) == pytest.approx(0.1 + (v60 - 0.1) * 0.5)  # cosine's midpoint, halfway to the new end

    lin = WarmupLinear(0, 100, 0.0)
    v = lin.refit_to(50, 150)
    assert lin(100) == pytest.approx(v / 2) and lin(150) == 0.0
    warm = WarmupCosine(50, 100, 0.0)
    assert warm.refit_to(10, 400) is not None and warm.refit is None  # within warmup: only the end moves
    assert warm(20) == WarmupCosine(50, 400, 0.0)(20)
    wsd = WarmupStableDecay(0, 100, 0.0, decay_fraction=0.2)
    assert wsd.refit_to(50, 1000) == 1.0 and wsd.refit is None and wsd.decay_start == 800
    wsd_late = WarmupStableDecay(0, 100, 0.0, decay_fraction=0.2)
    # WSD already decaying (step 90 of 100): the longer horizon (120) decays over its own last 20%
    # from step 96, so the run is back in the stable stage until then
    assert wsd_late.refit_to(90, 120) == pytest.approx(0.5) and wsd_late.refit is None
    assert wsd_late(95) == 1.0 and wsd_late(120) == 0.0
    wsd_end = WarmupStableDecay(0, 100, 0.0, decay_fraction=0.2)
    v = wsd_end.refit_to(98, 101)  # past the new decay start (81): carries on from its value
    assert wsd_end.refit == (98, v) and wsd_end(101) == 0.0 and wsd_end(99) < v
    const = WarmupConstant(0, 100, 1.0)
    assert const.refit_to(50, 200) == 1.0 and const(150) == 1.0
