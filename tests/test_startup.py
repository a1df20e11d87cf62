"""The commands' start-up: the cyclic garbage collector paused, then what start-up built frozen."""

from __future__ import annotations

import gc
import sys

import pytest

from lm_lightning.startup import start_up


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_start_up_pauses_the_collector_then_freezes_and_restores_it():
    assert gc.isenabled()
    before = gc.get_freeze_count()
    with start_up():
        assert not gc.isenabled(), "no collections during start-up"
        kept = [Node() for _ in range(100)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + 100, "what start-up built is in the permanent generation"
    assert all(n.me is n for n in kept)


def test_start_up_collects_older_garbage_before_freezing():
    # Garbage from before the block (a notebook's or the test suite's earlier work) is collected,
    # not frozen for the rest of the process.
    import weakref

    gc.disable()
    try:
        node = Node()
        ref = weakref.ref(node)
        del node
        assert ref() is not None
        with start_up():
            pass
        assert ref() is None
    finally:
        gc.enable()


def test_start_up_restores_a_disabled_collector_and_survives_errors():
    gc.disable()
    try:
        with pytest.raises(RuntimeError), start_up():
            raise RuntimeError("boom")
        assert not gc.isenabled(), "a collector the caller disabled stays disabled"
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), start_up():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_train_prepares_the_run_inside_start_up(monkeypatch, tmp_path):
    # python train.py: the config, the imports and the data module are built with the collector
    # paused (precheck), and the Hydra task runs with it enabled again.
    from lm_lightning.cli import train as train_mod

    seen = {}

    def fake_precheck(argv):
        seen["precheck"] = gc.isenabled()
        return None

    def fake_task(cfg, prepared=None):
        seen["task"] = gc.isenabled()
        return None

    monkeypatch.setattr(train_mod, "precheck", fake_precheck)
    monkeypatch.setattr(train_mod, "refuse_multirun_ddp", lambda argv: None)
    monkeypatch.setattr(train_mod, "task", fake_task)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py", "hydra.run.dir=.", "hydra.output_subdir=null",
                                      "hydra/job_logging=none", "hydra/hydra_logging=none"])
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    try:
        train_mod.main()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    assert seen == {"precheck": False, "task": True}
