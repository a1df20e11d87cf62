"""What a new user runs into first: warnings on every run, the model summary, the runs CLI's
arguments, and a plain (non-editable) ``pip install`` that must find its configs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from exp_helpers import TINY
from omegaconf import OmegaConf

from lm_lightning.cli import runs
from lm_lightning.known_warnings import LEAFSPEC_MESSAGE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def first_fit(tmp_path_factory):
    """One tiny in-process fit with every warning recorded ("always", as pytest's recwarn does)
    and its console output captured: (warnings, stdout, model config)."""
    from conftest import compose

    from lm_lightning.run.plan import prepare
    from lm_lightning.run.session import train

    out_root = tmp_path_factory.mktemp("first") / "outputs"
    cfg = compose([*TINY, f"paths.runs_root={out_root}", "run_name=first", "trainer.max_steps=2",
                   "trainer.enable_model_summary=true", "logger=none"])
    model_cfg = prepare(cfg.copy()).model_cfg
    buf = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buf):
        warnings.simplefilter("always")
        train(cfg)
    return [str(w.message) for w in caught], buf.getvalue(), model_cfg


def test_lightning_still_emits_the_leafspec_warning_we_filter():
    """Control: without our filter Lightning's dataloader flattening warns; if this stops, the
    filter in lm_lightning.known_warnings can go."""
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten([1, 2])
    if not any(LEAFSPEC_MESSAGE in str(w.message) for w in caught):
        pytest.skip("this torch/Lightning no longer warns about LeafSpec; the filter is unused")


def test_fit_prints_no_leafspec_warning(first_fit):
    messages, _, _ = first_fit
    assert not [m for m in messages if "LeafSpec" in m]


def test_model_summary_has_no_flops_column_and_a_right_flops_estimate(first_fit):
    from lightning.pytorch.utilities.model_summary import get_human_readable_count

    from lm_lightning.model import GPT

    _, out, model_cfg = first_fit
    header = next(line for line in out.splitlines() if "Name" in line and "Params" in line)
    assert "Mode" in header and "FLOPs" not in header
    assert "Total FLOPs" not in out
    c = model_cfg
    expected = 6 * GPT(model_cfg).num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size
    line = next(line for line in out.splitlines() if "training FLOPs per token" in line)
    assert line.split(":")[-1].strip() == get_human_readable_count(int(expected)) != "0"


def _index(root: Path) -> Path:
    root.mkdir(parents=True)
    run_dir = root / "r1"
    events = [{"event": "start", "run_id": "a1", "run_dir": str(run_dir), "status": "running", "start": 1.0,
               "overrides": ["model=tiny"]},
              {"event": "end", "run_id": "a1", "status": "finished", "global_step": 7, "end": 61.0,
               "metrics": {"val/loss": 1.25}}]
    (root / "runs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return root


@pytest.mark.parametrize("style", ["key=value", "--option"])
def test_runs_cli_takes_root_both_ways(tmp_path, capsys, style):
    root = _index(tmp_path / "outputs")
    args = [f"root={root}", "no_plot=true"] if style == "key=value" else ["--root", str(root), "--no-plot"]
    assert runs.main(args) == 0
    out = capsys.readouterr().out
    assert "1 runs" in out and "r1" in out and "finished" in out and "1.25" in out
    assert not (root / "runs_comparison.png").exists()


def test_runs_cli_key_value_errors_are_one_line_exit_2(tmp_path, capsys):
    for args, message in [(["rot=x"], "unknown argument 'rot'"),
                          ([f"root={tmp_path / 'none'}"], "pass root=DIR"),
                          (["max=maybe"], "max must be true or false")]:
        with pytest.raises(SystemExit) as info:
            runs.main(args)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and err.count("\n") == 1, err


def _conf_files(conf: Path) -> set[str]:
    return {p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")}


@pytest.mark.slow
def test_wheel_ships_the_configs_and_trains_from_them(tmp_path):
    """A wheel built from this checkout, installed with --target (no network, torch and Lightning
    come from this environment), composes configs from its own copy of conf/."""
    proj = tmp_path / "proj"  # a copy: building in the checkout would write build/ and egg-info there
    proj.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, proj / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", proj / "src", ignore=ignore)
    shutil.copytree(ROOT / "conf", proj / "conf", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(proj),
                    "-w", str(tmp_path / "wheel")], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("lm_lightning-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"lm_lightning/conf/hydra/launcher/submitit_slurm.yaml", "lm_lightning/conf/model/_arch.yaml",
            "lm_lightning/conf/train.yaml"} <= names
    shipped = {n.removeprefix("lm_lightning/conf/") for n in names if n.startswith("lm_lightning/conf/")}
    assert shipped == _conf_files(proj / "conf")  # every config, every subdirectory, nothing else

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, timeout=300, cwd=tmp_path)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LM_LIGHTNING_CONF", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1")

    def py(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = py("-c", "import lm_lightning, lm_lightning.config.location as t; print(lm_lightning.__file__); print(t.CONF_DIR)")
    module_file, conf_dir = where.split()
    assert Path(module_file).is_relative_to(site), f"imported {module_file}, not the wheel's copy"
    assert Path(conf_dir) == site / "lm_lightning" / "conf"

    medium = OmegaConf.load(ROOT / "conf" / "model" / "medium.yaml")
    out = py("-m", "lm_lightning.train", "--cfg", "job", "model=medium", "optimizer=sgd", "trainer=cpu")
    cfg = OmegaConf.create(out)
    assert cfg.model.n_layer == medium.n_layer and cfg.model.n_embd == medium.n_embd
    assert cfg.model.pos_emb == OmegaConf.load(ROOT / "conf" / "model" / "_arch.yaml").pos_emb  # via _arch
    assert "SGD" in cfg.optimizer._target_ and cfg.trainer.accelerator == "cpu"

    fast = OmegaConf.load(ROOT / "conf" / "experiment" / "shakespeare_char_fast.yaml")
    cfg = OmegaConf.create(py("-m", "lm_lightning.train", "--cfg", "job", "experiment=shakespeare_char_fast"))
    assert cfg.trainer.max_steps == fast.trainer.max_steps and cfg.optimizer.lr == fast.optimizer.lr
    # The recipe's shape is its model preset (model=shakespeare_char_fast), which the command line can replace.
    assert cfg.model.pos_emb == OmegaConf.load(ROOT / "conf" / "model" / "shakespeare_char_fast.yaml").pos_emb
