"""Exact auto-resume, and where a run starts (resume=auto|never|must, ckpt_path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from reliability_helpers import compose, read_losses, train_run

from lm_lightning.errors import UserError
from lm_lightning.run.resume import candidates, plan_resume


def _token_files() -> list[str]:
    """Small uint16 token files (train and val) in a temporary directory, made once."""
    import atexit
    import shutil
    import tempfile

    import numpy as np

    d = Path(tempfile.mkdtemp(prefix="lm_resume_tokens_"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    for i, split in enumerate(("train", "val")):
        np.random.default_rng(i).integers(0, 256, 20_000, dtype=np.uint16).tofile(d / f"{split}.bin")
    return ["data=tokens", f"data.train_path={d / 'train.bin'}", f"data.val_path={d / 'val.bin'}",
            "data.dtype=uint16", "tokenizer=byte", "data.block_size=32", "data.batch_size=4"]


# One entry per data module; dropout > 0 so that the restored RNG state matters.
DATASETS = {
    "collatz": ["model.dropout=0.1"],
    "tokens": ["model.dropout=0.1", *_token_files()],
}


def run_with_losses(tmp_path: Path, name: str, overrides: list[str], loss_file: Path) -> dict:
    return train_run(tmp_path, [*overrides, "+callbacks.recorder._target_=reliability_helpers.LossRecorder",
                                f"+callbacks.recorder.path={loss_file}"], run_name=name)


STOP, TOTAL = 5, 9


def exact(accumulate: int) -> list[str]:
    # Validation is due exactly where the run stops (it counts micro-batches): the uninterrupted
    # run validates there, the resumed one does not repeat it; validation draws from torch's
    # generator, so this checks that it does not shift the training randomness.
    return ["trainer.deterministic=true", f"trainer.max_steps={TOTAL}",
            f"trainer.accumulate_grad_batches={accumulate}", f"trainer.val_check_interval={STOP * accumulate}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Per-step losses of uninterrupted runs (workers never change the data, so one per setting)."""
    cache: dict[tuple, list] = {}

    def get(dataset: str, accumulate: int) -> list:
        if (dataset, accumulate) not in cache:
            root = tmp_path_factory.mktemp(f"straight-{dataset}-{accumulate}")
            run_with_losses(root, "straight", [*DATASETS[dataset], *exact(accumulate)], root / "losses.jsonl")
            cache[dataset, accumulate] = read_losses(root / "losses.jsonl")
        return cache[dataset, accumulate]

    return get


def stop_resume_losses(tmp_path: Path, overrides: list[str], capsys) -> list:
    """Stop at optimizer step STOP (mid-epoch: the stream is endless), rerun the same command."""
    losses = tmp_path / "split.jsonl"
    first = run_with_losses(tmp_path, "split", [*overrides, "+callbacks.stopper._target_=reliability_helpers.StopAt",
                                                f"+callbacks.stopper.step={STOP}"], losses)
    assert (first["status"], first["stop_reason"], first["global_step"]) == ("stopped", "stop", STOP)
    capsys.readouterr()
    second = run_with_losses(tmp_path, "split", overrides, losses)
    ckpt = tmp_path / "split" / "checkpoints" / "last.ckpt"
    assert f"Resumed from step {STOP} ({ckpt})" in capsys.readouterr().out
    assert second["status"] == "finished" and second["global_step"] == TOTAL
    return read_losses(losses)


@pytest.mark.slow
@pytest.mark.parametrize("num_workers, accumulate", [(0, 1), (2, 1), (0, 2)])
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_stop_and_resume_is_exact(tmp_path, capsys, uninterrupted, dataset, num_workers, accumulate):
    straight = uninterrupted(dataset, accumulate)
    assert len(straight) == TOTAL * accumulate  # one loss per micro-batch
    resumed = stop_resume_losses(
        tmp_path, [*DATASETS[dataset], *exact(accumulate), f"data.num_workers={num_workers}"], capsys)
    assert resumed == straight  # the same micro-batches with bitwise-equal losses


@pytest.mark.slow
def test_resume_restores_step_before_the_dataloader_is_built(tmp_path):
    """Lightning 2.6 restores global_step before train_dataloader(); configure_optimizers does not
    build the dataloader first (the module sizes the schedule from max_steps)."""
    probe = tmp_path / "probe.jsonl"
    data = ["data._target_=reliability_helpers.ProbeCollatz", f"+data.probe_file={probe}"]
    train_run(tmp_path, [*data, "trainer.max_steps=6", "+callbacks.stopper._target_=reliability_helpers.StopAt",
                         "+callbacks.stopper.step=4"], run_name="probe")
    train_run(tmp_path, [*data, "trainer.max_steps=6", "trainer.accumulate_grad_batches=1"], run_name="probe")
    calls = [json.loads(x) for x in probe.read_text().splitlines()]
    assert calls == [{"global_step": 0, "start": 0}, {"global_step": 4, "start": 4}]
    ckpt = torch.load(tmp_path / "probe" / "checkpoints" / "step-4.ckpt", weights_only=True)
    assert ckpt["data_position"] == {"global_step": 4, "micro_batches": 4}
    assert {"python", "numpy", "torch"} <= set(ckpt["rng_states"])
    assert ckpt["run_config"]["run_name"] == "probe"  # resolved config as plain containers


# -- where a run starts ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    summary = train_run(root, ["trainer.max_steps=4", "callbacks.checkpointing.every_n_steps=2",
                               "trainer.val_check_interval=2"], run_name="done")
    return root, summary


def copy_run(src_root: Path, dst: Path) -> Path:
    shutil.copytree(src_root / "done", dst)
    return dst


def test_auto_picks_newest_and_skips_corrupt_with_a_warning(finished_run, tmp_path, capsys):
    root, summary = finished_run
    run = copy_run(root, tmp_path / "r")
    cfg = compose(tmp_path, [], run_name="r")
    newest = candidates(run / "checkpoints")[0]
    assert newest.name == "last.ckpt"
    plan = plan_resume(cfg, run, None)
    assert plan.path == newest and plan.global_step == 4
    # Without last.ckpt the highest step comes first; a truncated one is skipped and named.
    data = newest.read_bytes()
    newest.unlink()
    bad = run / "checkpoints" / "step-6.ckpt"
    bad.write_bytes(data[:5000])
    assert candidates(run / "checkpoints")[0] == bad
    plan = plan_resume(cfg, run, None)
    assert f"warning: skipping unusable checkpoint {bad}: cannot load checkpoint" in capsys.readouterr().err
    assert plan.path == run / "checkpoints" / "step-4.ckpt" and plan.skipped == (bad,)
    assert plan.global_step == 4
    # Weights-only final models and half-written temp files are never resume candidates.
    assert not {"final.ckpt"} & {p.name for p in candidates(run / "checkpoints")}
    (run / "checkpoints" / "step-9.ckpt.tmp").write_bytes(b"partial")
    assert all(p.suffix == ".ckpt" for p in candidates(run / "checkpoints"))


def test_resume_modes(finished_run, tmp_path):
    root, _ = finished_run
    run = copy_run(root, tmp_path / "r")
    # never: an existing run directory is refused unless overwrite=true
    with pytest.raises(UserError, match="already holds a run and resume=never"):
        plan_resume(compose(tmp_path, ["resume=never"], "r"), run, None)
    assert plan_resume(compose(tmp_path, ["resume=never", "overwrite=true"], "r"), run, None).path is None
    # must: an error when there is nothing (valid) to resume
    with pytest.raises(UserError, match="resume=must but there is no checkpoint"):
        plan_resume(compose(tmp_path, ["resume=must"], "new"), tmp_path / "new", None)
    # explicit ckpt_path: must exist, must load, must be a full training checkpoint
    with pytest.raises(UserError, match="checkpoint not found"):
        plan_resume(compose(tmp_path, ["ckpt_path=/nonexistent/x.ckpt"], "new"), tmp_path / "new", None)
    with pytest.raises(UserError, match="holds weights only"):
        plan_resume(compose(tmp_path, [f"ckpt_path={run}/checkpoints/final.ckpt"], "new"), tmp_path / "new", None)
    with pytest.raises(UserError, match="resume must be one of"):
        plan_resume(compose(tmp_path, ["resume=sometimes"], "new"), tmp_path / "new", None)


def test_incompatible_checkpoint_is_a_user_error_before_anything_is_written(finished_run, tmp_path):
    root, _ = finished_run
    run = copy_run(root, tmp_path / "r")
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    with pytest.raises(UserError, match="incompatible model .*n_embd"):
        train_run(tmp_path, ["model.n_embd=64"], run_name="r")
    after = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert before == after  # the existing run directory was not touched


def test_overwrite_replaces_the_old_run(finished_run, tmp_path):
    root, _ = finished_run
    run = copy_run(root, tmp_path / "r")
    (run / "marker").write_text("old")
    summary = train_run(tmp_path, ["resume=never", "overwrite=true", "trainer.max_steps=2"], run_name="r")
    assert summary["status"] == "finished" and summary["global_step"] == 2
    assert not (run / "marker").exists()
    assert not (run / "checkpoints" / "step-4.ckpt").exists()


def test_unnamed_runs_resume_unless_fresh(finished_run, tmp_path):
    # An unnamed run lives in <experiment>-<config id>/, the same directory for the same command:
    # it resumes there (issue 17: rerun = resume); fresh=true is a new run that never resumes.
    root, _ = finished_run
    run = copy_run(root, tmp_path / "r")
    assert plan_resume(compose(tmp_path, ["run_name=null"], run_name="r"), run, None).path == run / "checkpoints" / "last.ckpt"
    assert plan_resume(compose(tmp_path, ["run_name=null", "fresh=true"], run_name="r"), run, None).path is None


def test_multirun_jobs_write_to_their_own_directory(tmp_path):
    """Each Hydra job's callbacks and loggers resolve ${paths.output_dir} to the job directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lm_lightning.config.location import CONF_DIR
    from lm_lightning.run.plan import prepare
    from lm_lightning.run.rundir import output_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=["model=tiny", f"paths.runs_root={tmp_path}",
                                                            "run_name=grid", "logger=csv"],
                            return_hydra_config=True)
    job_dir = str(tmp_path / "grid" / "1")
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = job_dir
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir(cfg))  # what train() does first
            del cfg["hydra"]
        prepare(cfg)  # resolves every interpolation
    finally:
        HydraConfig.instance().cfg = None
    assert cfg.callbacks.checkpointing.dirpath == f"{job_dir}/checkpoints"
    assert cfg.logger.csv.save_dir == job_dir
