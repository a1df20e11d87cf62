"""Shared helpers for the reliability tests: composing tiny runs, recording losses, stopping.

The callbacks here are instantiated by Hydra from test overrides (``+callbacks.x._target_=
reliability_helpers.X``); pytest puts this directory on sys.path, and so does train.py
subprocesses' PYTHONPATH in the signal tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lm_lightning.data.collatz import CollatzDataModule

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "trainer=debug", "logger=none", "callbacks.control.stdin=false", "callbacks.monitoring.plots=false",
        "data.batch_size=8", "data.block_size=32", "data.val_samples=16"]


def compose(tmp_path: Path, overrides: list[str], run_name: str = "run"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lm_lightning.config.location import CONF_DIR

    base = TINY
    if any(o.startswith("data=") for o in overrides):  # another data source: no Collatz-only keys
        base = [o for o in TINY if not o.startswith("data.val_samples")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[
            *base, f"paths.runs_root={tmp_path}", f"run_name={run_name}", *overrides])


def train_run(tmp_path: Path, overrides: list[str], run_name: str = "run") -> dict[str, Any]:
    from lm_lightning.run.session import train

    return train(compose(tmp_path, overrides, run_name))


class LossRecorder(pl.Callback):
    """Appends (global_step, loss as float.hex) per optimizer step to a JSONL file: bitwise comparable."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.global_step, float(outputs["loss"]).hex()]) + "\n")


def read_losses(path: Path) -> list[tuple[int, str]]:
    return [tuple(json.loads(line)) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


class StopAt(pl.Callback):
    """Asks RunControl to stop during optimizer step ``step`` (as the `stop` command would)."""

    def __init__(self, step: int, reason: str = "stop") -> None:
        self.step, self.reason = step, reason

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1:
            for cb in trainer.callbacks:
                if hasattr(cb, "request_stop"):
                    cb.request_stop(self.reason)


class PoisonGrads(pl.Callback):
    """Makes one gradient NaN at the given optimizer steps (global_step before the update)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step in self.steps:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("nan")


class ProbeCollatz(CollatzDataModule):
    """Records the trainer's global_step each time the training dataloader is built."""

    def __init__(self, probe_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probe_file = probe_file

    def train_dataloader(self):
        with open(self.probe_file, "a") as f:
            f.write(json.dumps({"global_step": self.trainer.global_step,
                                "start": self.start_step()}) + "\n")
        return super().train_dataloader()


# -- subprocess runs of train.py ------------------------------------------------------------
def spawn_train(args: list[str], stdin=subprocess.PIPE) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
               PYTHONUNBUFFERED="1", COLUMNS="200")
    env.pop("DISCORD_WEBHOOK_URL", None)
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def wait_for(proc: subprocess.Popen, needle: str, seen: list[str], timeout: float = 120.0) -> str:
    """Read the process's output line by line until a line contains ``needle``."""
    import threading

    killer = threading.Timer(timeout, proc.kill)  # readline blocks: a hung run is killed instead
    killer.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if needle in line:
                return line
    finally:
        killer.cancel()
    raise AssertionError(f"{needle!r} never appeared; output:\n{''.join(seen)[-3000:]}")


def finish(proc: subprocess.Popen, seen: list[str], timeout: float = 120.0) -> int:
    if proc.stdin is not None and proc.stdin.closed:
        proc.stdin = None
    out, _ = proc.communicate(timeout=timeout)
    seen.append(out or "")
    return proc.returncode



def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def signal_and_reap(proc, signum: int, whole_group: bool, timeout: float, grace_s: float) -> str:
    """Send ``signum`` to the run (its main process, or its whole process group: the run was
    started with start_new_session=True), collect its output, and assert that every process of
    the group (data-loader workers, other ranks) is gone within ``grace_s``; SIGKILL leftovers."""
    import signal
    import time

    try:
        if whole_group:
            os.killpg(proc.pid, signum)  # the session leader's pid is the group id
        else:
            proc.send_signal(signum)
        out, _ = proc.communicate(timeout=timeout)
        deadline = time.time() + grace_s
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.5)
        assert not group_alive(proc.pid), "a process of the group survived the signal"
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    return out
