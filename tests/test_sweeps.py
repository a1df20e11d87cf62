"""Multirun and Optuna sweeps, the runs index, load_best and the notebooks, on one tiny sweep.

The sweep (three jobs, one an invalid combination) runs once per module, in-process through
train.py's real entry point; the tests below read what it left behind.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
from pathlib import Path

import pytest
import torch
from exp_helpers import ROOT, TINY, compose, run_main

import lm_lightning
from lm_lightning.cli.runs import main as runs_main
from lm_lightning.run import index as runs

SWEEP_ARGS = [*TINY, "experiment=collatz", "effective_batch_size=8", "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "logger=csv"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "outputs"
    with pytest.MonkeyPatch.context() as mp_:
        run_main(mp_, ["-m", *SWEEP_ARGS, "optimizer.lr=3e-3,1e-4,-1", f"paths.runs_root={root}", "run_name=grid"])
    return root, root / "grid"


def test_multirun_each_job_own_dir_and_failed_job_recorded(sweep, capsys):
    root, sweep_dir = sweep
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]  # job 2 left nothing
    records = sorted(runs.select(runs.read_runs(root), sweep=str(sweep_dir)), key=lambda r: r["job"])
    assert [r["job"] for r in records] == [0, 1, 2]
    assert [r["status"] for r in records] == ["finished", "finished", "failed"]
    assert "optimizer.lr must be positive" in records[2]["error"]
    for r in records[:2]:
        assert r["experiment"] == "collatz"
        assert ("optimizer.lr=0.003" in r["overrides"]) != ("optimizer.lr=0.0001" in r["overrides"])
        assert Path(r["run_dir"]).is_dir() and r["global_step"] == 6
        assert math.isfinite(r["best_metric"]) and Path(r["best_checkpoint"]).is_file()
        assert r["end"] >= r["start"] and r["metric"] == "val/loss"
        assert len(r["config_hash"]) == 12 and "git_commit" in r
    assert records[0]["config_hash"] != records[1]["config_hash"]


def test_config_hash_ignores_where_a_run_writes():
    a = compose(["paths.runs_root=/a", "run_name=x"])
    b = compose(["paths.runs_root=/b", "run_name=y"])
    c = compose(["optimizer.lr=0.5"])
    assert runs.config_hash(a) == runs.config_hash(b) != runs.config_hash(c)


def test_runs_cli_table_filters_and_plot(sweep, capsys):
    root, sweep_dir = sweep
    plot = root / "cmp.png"
    assert runs_main(["--root", str(root), "--sweep", str(sweep_dir), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished") == 2 and "UserError: optimizer.lr must be positive" in out
    assert "optimizer.lr=0.003" in out and "trainer=debug" not in out  # only what differs is shown
    assert plot.is_file() and plot.stat().st_size > 1000
    assert runs_main(["--root", str(root), "--experiment", "collatz", "--status", "failed", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "1 runs" in out and "failed" in out and "finished" not in out
    with pytest.raises(SystemExit) as info:
        runs_main(["--root", str(root), "--experiment", "no_such_experiment"])
    assert info.value.code == 2 and "no runs match" in capsys.readouterr().err


def _append_many(path: str, worker: int) -> None:
    for i in range(100):
        runs._append(Path(path), {"event": "start", "run_id": f"{worker}-{i}", "pad": "x" * 9000})


def test_index_is_safe_with_concurrent_writers(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path / "runs.jsonl"), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 400 and all(json.loads(line)["pad"] == "x" * 9000 for line in lines)
    assert len(runs.read_runs(tmp_path)) == 400


def test_load_best_of_sweep_and_of_run(sweep):
    root, sweep_dir = sweep
    summaries = {j: json.loads((sweep_dir / j / "summary.json").read_text()) for j in ("0", "1")}
    best_job = min(summaries, key=lambda j: summaries[j]["best_score"])
    model, tok, cfg = lm_lightning.load_best(sweep_dir)
    assert Path(cfg.loaded_from.run_dir) == sweep_dir / best_job
    assert cfg.optimizer.lr == (3e-3 if best_job == "0" else 1e-4)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert hasattr(model, "regression_head")  # the stopping-time head comes along
    assert tok.encode("0101") == [2, 0, 1, 0, 1] and tok.decode(tok.encode("0101")) == "0101"
    out = model.generate(torch.tensor([tok.encode("1")]), max_new_tokens=5)
    assert out.shape == (1, 7) and set(tok.decode(out[0])) <= {"0", "1"}
    # A metric where higher is better picks by maximum.
    accs = {j: summaries[j]["metrics"]["val/next_token_acc"] for j in summaries}
    _, _, cfg_acc = lm_lightning.load_best(sweep_dir, metric="val/next_token_acc")
    assert Path(cfg_acc.loaded_from.run_dir).name == max(accs, key=accs.get)
    # A single run directory: its own best checkpoint.
    _, _, cfg_run = lm_lightning.load_best(sweep_dir / "1")
    assert Path(cfg_run.loaded_from.checkpoint).name.startswith("best")


def test_load_best_tolerates_compile_prefixes(sweep, tmp_path):
    _, sweep_dir = sweep
    ckpt = torch.load(next((sweep_dir / "0" / "checkpoints").glob("best*.ckpt")), map_location="cpu",
                      weights_only=True)
    ckpt["state_dict"] = {k.replace("model.", "model._orig_mod.", 1) if k.startswith("model.") else k: v
                          for k, v in ckpt["state_dict"].items()}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    path = tmp_path / "run" / "checkpoints" / "best-compiled.ckpt"
    torch.save(ckpt, path)
    model, tok, cfg = lm_lightning.load_best(path)
    assert model.config.n_layer == 2 and tok is not None


def test_load_best_user_errors(tmp_path):
    from lm_lightning.errors import UserError

    with pytest.raises(UserError, match="not found"):
        lm_lightning.load_best(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no finished run"):
        lm_lightning.load_best(tmp_path / "empty")


def test_import_lm_lightning_stays_light():
    import subprocess

    code = "import sys, lm_lightning; print(sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# -- failed trials -----------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["nan", "oom"])
def test_failed_sweep_job_returns_none_and_is_recorded(monkeypatch, tmp_path, failure):
    from lm_lightning.cli import train as train_mod

    cfg = compose([f"paths.runs_root={tmp_path}", "run_name=job"])

    def fake_train(cfg, prepared=None):
        (tmp_path / "job").mkdir(exist_ok=True)
        if failure == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"status": "finished", "metrics": {"val/loss": float("nan")}}

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(train_mod, "is_multirun", lambda: True)
    assert train_mod.task(cfg) is None
    if failure == "oom":
        (rec,) = runs.read_runs(tmp_path)
        assert rec["status"] == "failed" and "out of memory" in rec["error"]
        assert "OutOfMemoryError" in (tmp_path / "job" / "traceback.txt").read_text()
        monkeypatch.setattr(train_mod, "is_multirun", lambda: False)
        with pytest.raises(torch.cuda.OutOfMemoryError):  # a single run fails loudly
            train_mod.task(cfg)


def test_nan_metric_counts_as_failed_in_the_index():
    cfg = compose([])
    assert runs.end_status(cfg, {"status": "finished", "metrics": {"val/loss": float("nan")}})[0] == "failed"
    assert runs.end_status(cfg, {"status": "finished", "metrics": {"val/loss": 1.0}}) == ("finished", None)
    assert runs.end_status(cfg, {"status": "time_limit", "metrics": {}}) == ("time_limit", None)


@pytest.mark.slow
def test_optuna_search_survives_a_failed_trial(monkeypatch, tmp_path, capsys):
    root = tmp_path / "outputs"
    run_main(monkeypatch, ["hparams_search=optuna", *TINY, "trainer.max_steps=2", "trainer.val_check_interval=2",
                           "logger=none", "callbacks=none", "hydra.sweeper.n_trials=3",
                           "hydra.sweeper.params={optimizer.lr:'choice(1e-3,-1.0)',model.n_embd:'choice(32)',"
                           "model.n_layer:'choice(2)',optimizer.weight_decay:'choice(0.1)'}",
                           f"paths.runs_root={root}", "run_name=opt"])
    import yaml

    results = yaml.safe_load((root / "opt" / "optimization_results.yaml").read_text())
    assert results["best_params"]["optimizer.lr"] == 1e-3 and math.isfinite(results["best_value"])
    statuses = sorted(r["status"] for r in runs.read_runs(root))
    assert len(statuses) == 3 and "failed" in statuses and "finished" in statuses
    assert "failed: optimizer.lr must be positive" in capsys.readouterr().err


# -- notebooks ---------------------------------------------------------------------------------
def _kernel(tmp_path) -> str:
    """A kernelspec for this interpreter, so the notebooks run in the project's venv on any machine."""
    spec = tmp_path / "jupyter" / "kernels" / "lm-lightning-test"
    spec.mkdir(parents=True)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lm_lightning test", "language": "python", "env": env}))
    return "lm-lightning-test"


def _execute(name: str, tmp_path, monkeypatch, **env: str):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is stored with outputs"
    NotebookClient(nb, kernel_name=_kernel(tmp_path), timeout=300, resources={"metadata": {"path": str(ROOT)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_notebook_01_load_best_checkpoint(sweep, tmp_path, monkeypatch):
    _, sweep_dir = sweep
    text = _execute("01_load_best_checkpoint.ipynb", tmp_path, monkeypatch, LM_RUN_DIR=str(sweep_dir / "0"))
    assert "next-token cross-entropy" in text and "stopping-time MAE" in text and "prompt '1011'" in text


@pytest.mark.slow
def test_notebook_02_compare_sweep(sweep, tmp_path, monkeypatch):
    root, sweep_dir = sweep
    text = _execute("02_compare_sweep.ipynb", tmp_path, monkeypatch, LM_SWEEP_DIR=str(sweep_dir),
                    LM_RUNS_ROOT=str(root))
    assert "3 jobs, 2 finished, 1 failed" in text and "best job:" in text
