"""Every experiment in conf/experiment/ runs with fast_dev_run, on local fixtures instead of downloads.

The list is a glob: a new experiment file is tested without anyone remembering to add it. An
experiment whose data module has no fixture below FAILS (it does not skip): add its fixture to
FIXTURES, keyed by the data module's class name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from exp_helpers import CONF, compose

from lm_lightning.run.session import train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("_"))


def _no_fixture(tmp_path: Path) -> list[str]:
    return []


def _text_file(tmp_path: Path) -> list[str]:
    """A small local corpus standing in for a download (text data modules)."""
    text = "".join(f"The quick brown fox {i} jumps over the lazy dog. " for i in range(400))
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    return [f"data.train_path={f}"]


# data module class name -> overrides that make it run offline. Text data modules (branch
# `text`) register theirs here, e.g. "TextDataModule": _text_file plus a local tokenizer fixture.
FIXTURES: dict[str, Callable[[Path], list[str]]] = {
    "CollatzDataModule": _no_fixture,
}


def fixture_overrides(experiment: str, tmp_path: Path) -> list[str]:
    cfg = compose([f"experiment={experiment}"])
    target = str(cfg.data.get("_target_", ""))
    kind = target.rsplit(".", 1)[-1]
    if kind not in FIXTURES and kind != "TextDataModule":
        raise LookupError(
            f"experiment {experiment!r} uses data module {target!r}, which has no offline fixture; "
            f"add one to FIXTURES in tests/test_experiments.py"
        )
    if kind == "TextDataModule":
        # Local files in the hub datasets' schema and local tokenizers, per experiment.
        from test_text_train import experiment_overrides

        return experiment_overrides(experiment, tmp_path)
    return FIXTURES[kind](tmp_path)


def test_experiments_are_found():
    assert "collatz" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, tmp_path):
    # The recipe's own sizes (GPT-2 at block 1024) would cost minutes on a CPU for nothing a
    # smaller model does not also prove: the experiment composes, its data and tokenizer load
    # from the fixtures, and a training and a validation step run.
    small = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.d_ff=64", "data.block_size=32",
             "data.batch_size=2"]
    overrides = [f"experiment={experiment}", "trainer.fast_dev_run=true", "trainer=cpu", *small,
                 f"paths.runs_root={tmp_path / 'outputs'}", "run_name=fdr", "logger=csv",
                 *fixture_overrides(experiment, tmp_path)]
    cfg = compose(overrides)
    summary = train(cfg)
    assert summary["status"] == "finished"
    assert summary["global_step"] == 1
    assert (tmp_path / "outputs" / "fdr" / "summary.json").is_file()


def test_missing_fixture_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr("test_experiments.FIXTURES", {})
    with pytest.raises(LookupError, match="add one to FIXTURES"):
        fixture_overrides("collatz", tmp_path)


def test_collatz_recipe_carries_the_guide_hyperparameters():
    cfg = compose(["experiment=collatz"])
    assert cfg.data.batch_size == 512 and cfg.trainer.accumulate_grad_batches == 1
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (4, 4, 128)
    assert cfg.optimizer.lr == 1e-4 and cfg.scheduler.min_lr == 1e-6
    assert cfg.scheduler._target_.endswith("warmup_cosine")
    assert cfg.trainer.max_steps == 1_000_000
    assert cfg.callbacks.checkpointing.every_n_steps == 1000
    assert cfg.callbacks.alerts.progress_every_n_steps == 500
    assert dict(cfg.loss.weights) == {"next_token": 1.0, "stopping_time": 1.0}
    # The recipe's batch wins over a hardware preset's micro-batch; the preset's precision stays.
    gpu = compose(["experiment=collatz", "trainer=rtx3060"])
    assert gpu.data.batch_size == 512 and gpu.trainer.accumulate_grad_batches == 1
    assert gpu.trainer.precision == "bf16-mixed"


def test_command_line_presets_win_over_the_experiment():
    # `python train.py -m experiment=collatz model=small,medium` must really sweep the model size.
    for preset, width in (("small", 128), ("medium", 384)):
        assert compose(["experiment=collatz", f"model={preset}"]).model.n_embd == width
