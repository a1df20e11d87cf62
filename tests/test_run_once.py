"""One start prepares once (issue 16): the command line's precheck builds the data module and
reads the resume checkpoint, and the Hydra task reuses them instead of doing both again.

Counted with spies on the data module's constructor and the checkpoint reader; the fit itself is
replaced by a stub, so no Lightning trainer runs here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from exp_helpers import TINY, compose, run_main

from lm_lightning.data.collatz import CollatzDataModule
from lm_lightning.run import resume, session


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Spies: data modules built, checkpoints read, fits started; one resumable checkpoint in the run."""
    calls = {"datamodule": 0, "checkpoint": 0, "fit": []}
    init = CollatzDataModule.__init__

    def counting_init(self, *args, **kwargs):
        calls["datamodule"] += 1
        init(self, *args, **kwargs)

    def read(path, model_arch):
        calls["checkpoint"] += 1
        return {"global_step": 5, "optimizer_states": [], "loops": {}}

    def fit(cfg, run_dir, prepared, resume_plan, init_state):
        calls["fit"].append((prepared, resume_plan))
        return {"status": "finished", "metrics": {}}

    ckpt = tmp_path / "runs" / "once" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(CollatzDataModule, "__init__", counting_init)
    monkeypatch.setattr(resume, "candidates", lambda ckpt_dir: [ckpt] if ckpt_dir == ckpt.parent else [])
    monkeypatch.setattr(resume, "validate", read)
    monkeypatch.setattr(session, "fit_and_finish", fit)
    return calls, ckpt


def test_a_start_builds_the_data_and_reads_the_checkpoint_once(monkeypatch, tmp_path, counted):
    calls, ckpt = counted
    run_main(monkeypatch, [*TINY, "logger=none", f"paths.runs_root={tmp_path / 'runs'}", "run_name=once"])
    assert calls["datamodule"] == 1, "precheck's data module is the run's"
    assert calls["checkpoint"] == 1, "precheck's resume plan is the run's"
    ((prepared, plan),) = calls["fit"]
    assert plan.path == ckpt and plan.global_step == 5
    assert prepared.datamodule.block_size == 16 and prepared.model_cfg.block_size == 16


def test_a_job_without_precheck_prepares_itself_once(tmp_path, counted):
    """Multirun jobs and ranks Lightning starts have no precheck: train() prepares, once."""
    calls, ckpt = counted
    cfg = compose([*TINY, "logger=none", f"paths.runs_root={tmp_path / 'runs'}", "run_name=once"])
    session.train(cfg)
    assert (calls["datamodule"], calls["checkpoint"]) == (1, 1)
    assert calls["fit"][0][1].path == ckpt


def test_a_different_config_is_prepared_again(tmp_path, counted):
    """The command line's preparation is only reused for the config it was made from."""
    from lm_lightning.run.plan import plan_resume, prepare

    calls, _ = counted
    base = [*TINY, "logger=none", f"paths.runs_root={tmp_path / 'runs'}", "run_name=once"]
    cfg = compose(base)
    prepared = prepare(cfg)
    plan_resume(cfg, Path(cfg.paths.output_dir), prepared)
    session.train(compose(base), prepared)
    assert (calls["datamodule"], calls["checkpoint"]) == (1, 1)
    session.train(compose([*base, "data.block_size=8"]), prepared)
    assert (calls["datamodule"], calls["checkpoint"]) == (2, 2)
    assert calls["fit"][-1][0].model_cfg.block_size == 8


def test_check_and_derive_change_nothing(tmp_path, counted):
    """check() validates the config alone (no data module); derive() returns the shape, cfg untouched."""
    from omegaconf import OmegaConf

    from lm_lightning.config.resolve import check, derive, resolve
    from lm_lightning.run.plan import build_datamodule

    calls, _ = counted
    cfg = compose([*TINY, "logger=none", f"paths.runs_root={tmp_path / 'runs'}", "run_name=once"])
    resolve(cfg)
    before = OmegaConf.to_container(cfg)
    assert check(cfg) == "32-true"
    assert calls["datamodule"] == 0 and OmegaConf.to_container(cfg) == before
    datamodule = build_datamodule(cfg)
    derived = derive(cfg, datamodule, [])
    assert OmegaConf.to_container(cfg) == before and derived.shown == {}
    assert (derived.model_cfg.block_size, derived.model_cfg.vocab_size) == (16, datamodule.vocab_size)


def test_an_init_from_folder_config_is_read_once(tmp_path, monkeypatch):
    """derive() reads an init_from folder's config.json once: the architecture and its converter together."""
    import json

    from lm_lightning.config.resolve import derive, resolve
    from lm_lightning.convert import registry
    from lm_lightning.run.plan import build_datamodule

    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 48,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}))
    reads = []
    real = registry.read_hf_config
    monkeypatch.setattr(registry, "read_hf_config", lambda name: reads.append(name) or real(name))
    from lm_lightning.convert import init_from
    monkeypatch.setattr(init_from, "read_hf_config", registry.read_hf_config)
    cfg = compose([*TINY, "logger=none", f"paths.runs_root={tmp_path / 'runs'}", f"model.init_from={folder}"])
    resolve(cfg)
    derived = derive(cfg, build_datamodule(cfg), [])
    assert reads == [str(folder)]
    assert derived.init_kind == "llama"
    assert (derived.model_cfg.n_layer, derived.model_cfg.n_kv_head, derived.model_cfg.vocab_size) == (2, 2, 48)
