"""Bad input fails before training: exit 2, one line naming the problem, no run directory touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import ROOT, train_run

from lm_lightning.ckpt.read import read_checkpoint
from lm_lightning.cli.train import precheck
from lm_lightning.errors import UserError

BASE = ["model=tiny", "trainer=debug", "logger=none"]


class RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def one_line_exit_2(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        precheck(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("override, message", [
    ("model.n_embd=33", "divisible"),
    ("optimizer.lr=-0.1", "optimizer.lr must be positive"),
    ("model=gigantic", "gigantic"),
    ("model.block_size=16", "exceeds model.block_size"),
    ("resume=sometimes", "resume must be one of"),
    ("ckpt_path=/nonexistent/x.ckpt", "checkpoint not found"),
    ("model.compile=fastest", "model.compile must be true, false or one of"),
    # the 2026 recipe's keys
    ("model.n_kv_head=3", "divisible by model.n_kv_head"),
    ("model.logit_softcap=0", "logit_softcap must be positive"),
    ("loss.z_loss=-1", "loss.z_loss must be a number >= 0"),
])
def test_impossible_configs_exit_2_with_one_line(tmp_path, capsys, override, message):
    err = one_line_exit_2([*BASE, f"paths.runs_root={tmp_path}", "run_name=x", override], capsys)
    assert message in err
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    return Path(train_run(root, ["trainer.max_steps=2", "callbacks.checkpointing.final_model=false"],
                          run_name="g")["last_checkpoint"])


def test_corrupt_and_incompatible_checkpoints(tmp_path, capsys, good_ckpt):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(good_ckpt.read_bytes()[:1000])
    err = one_line_exit_2([*BASE, f"paths.runs_root={tmp_path}", f"ckpt_path={corrupt}"], capsys)
    assert f"cannot load checkpoint {corrupt}" in err
    err = one_line_exit_2([*BASE, f"paths.runs_root={tmp_path}", f"ckpt_path={good_ckpt}", "model.n_layer=3"], capsys)
    assert "incompatible model" in err and "n_layer" in err


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, evil)
    with pytest.raises(UserError, match="refused by weights_only loading"):
        read_checkpoint(evil)
    err = one_line_exit_2([*BASE, f"paths.runs_root={tmp_path}", f"ckpt_path={evil}"], capsys)
    assert "refused by weights_only" in err
    assert not marker.exists()  # the payload never ran
    torch.load(evil, weights_only=False)  # proof that the file really does run code when trusted
    assert marker.exists()


@pytest.mark.slow
def test_cli_bad_checkpoint_leaves_the_existing_run_untouched(tmp_path, good_ckpt):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(good_ckpt.read_bytes()[:2000])  # truncated
    (run / "summary.json").write_text("{}")
    before = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*"))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "train.py", *BASE, f"paths.runs_root={tmp_path}", "run_name=r",
                           "resume=must"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert lines == [f"error: resume=must but there is no valid checkpoint in {run / 'checkpoints'} "
                     "(unusable: last.ckpt)"]
    assert "Traceback" not in proc.stderr
    assert sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")) == before
