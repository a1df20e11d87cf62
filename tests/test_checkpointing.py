"""Checkpoints: atomic writes (kill -9 mid-write), periodic/best/last/final, poisoned weights refused."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import train_run

from lm_lightning import atomic
from lm_lightning.callbacks.checkpointing import Checkpointing, rng_states, set_rng_states
from lm_lightning.ckpt.load import load_checkpoint
from lm_lightning.ckpt.read import read_checkpoint

WRITER = textwrap.dedent("""
    import sys, torch
    from lm_lightning.atomic import atomic_torch_save
    i = 0
    while True:  # rewrite the same checkpoint forever, each version ~8 MB and self-checking
        i += 1
        atomic_torch_save({"version": i, "w": torch.full((2_000_000,), float(i))}, sys.argv[1])
        print(i, flush=True)
""")


def test_kill_9_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        proc.stdout.readline()  # the first version is complete
        for _ in range(8):  # kills land in the middle of torch.save, fsync or rename
            time.sleep(random.uniform(0.0, 0.15))
            ckpt = torch.load(path, weights_only=True)
            assert torch.all(ckpt["w"] == float(ckpt["version"]))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = read_checkpoint(path)  # after the kill: still the complete previous version
    assert torch.all(ckpt["w"] == float(ckpt["version"]))


def test_crash_between_write_and_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic.atomic_torch_save({"version": 1}, path)

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        atomic.atomic_torch_save({"version": 2}, path)
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert (tmp_path / "last.ckpt.tmp").exists()  # the half-done write is only ever a .tmp


def test_rng_states_round_trip_through_weights_only_loading(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic.atomic_torch_save({"rng": rng_states()}, tmp_path / "r.ckpt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_states(torch.load(tmp_path / "r.ckpt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.slow
def test_periodic_best_last_and_final(tmp_path):
    s = train_run(tmp_path, ["trainer.max_steps=12", "callbacks.checkpointing.every_n_steps=2",
                             "callbacks.checkpointing.keep_last=2", "trainer.val_check_interval=4"], run_name="c")
    d = tmp_path / "c" / "checkpoints"
    names = sorted(p.name for p in d.iterdir())
    assert [n for n in names if n.startswith("step-")] == ["step-10.ckpt", "step-12.ckpt"]  # keep_last=2
    assert len([n for n in names if n.startswith("best-step")]) == 1  # save_top_k=1
    assert not [n for n in names if n.endswith(".tmp")]
    # last is refreshed on every save: it is the step-12 training state
    assert os.path.samefile(d / "last.ckpt", d / "step-12.ckpt")
    assert s["last_checkpoint"] == str(d / "last.ckpt") and Path(s["best_checkpoint"]).is_file()
    assert s["best_score"] == pytest.approx(read_checkpoint(s["best_checkpoint"])["callbacks"]["Checkpointing"]
                                            ["best_k"][s["best_checkpoint"]])
    full = read_checkpoint(d / "last.ckpt")
    for key in ("optimizer_states", "lr_schedulers", "loops", "rng_states", "data_position", "run_config"):
        assert key in full, key
    assert full["global_step"] == 12
    # the final model: weights only, loadable as a GPT, and as safetensors with the same weights
    final = read_checkpoint(d / "final.ckpt")
    assert "optimizer_states" not in final
    model = load_checkpoint(d / "final.ckpt").model
    from safetensors.torch import load_file

    tensors = load_file(d / "final.safetensors")
    for name, value in model.state_dict().items():
        key = "wte.weight" if name == "lm_head.weight" else name  # tied: stored once
        assert torch.equal(tensors[key], value), name
    # Resuming from the step-12 periodic save (written before that step's best one) still knows
    # every best file: top-k stays k across resumes, no orphans.
    s2 = train_run(tmp_path, ["trainer.max_steps=16", "callbacks.checkpointing.every_n_steps=2",
                              "callbacks.checkpointing.keep_last=2", "trainer.val_check_interval=4"], run_name="c")
    bests = sorted(p.name for p in d.glob("best-step*.ckpt"))
    assert len(bests) == 1 and s2["best_checkpoint"] == str(d / bests[0])


def test_non_finite_weights_never_replace_the_last_good_checkpoint(tmp_path):
    class FakeTrainer:
        global_step, is_global_zero, fast_dev_run = 7, True, False

        def save_checkpoint(self, path, weights_only=False):
            raise AssertionError("must not write poisoned weights")

    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    cb = Checkpointing(dirpath=str(tmp_path))
    (tmp_path / "last.ckpt").write_bytes(b"good")
    assert cb.save_now(FakeTrainer(), module, "periodic") is None
    assert cb.refused == 1 and (tmp_path / "last.ckpt").read_bytes() == b"good"
