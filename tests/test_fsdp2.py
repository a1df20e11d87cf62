"""trainer=fsdp on FSDP2, proven on 2 CPU processes (gloo): parity with one process, what each rank
holds, Muon on DTensors, exact resume, resharding 2 -> 1 and 1 -> 2, and the readers of sharded
checkpoints.

One torchrun job (2 ranks, tests/fsdp2_job.py) does every 2-process run, so Lightning is imported
twice, not once per check; the one-process runs happen in this pytest process. The module-scoped
fixture runs everything once and the tests assert on what it recorded.

Why one process with 2 micro-batches of 4 is "the same run": rank r's micro-batch at step s is
stream batch 2s + r, and the one process accumulates stream batches 2s and 2s + 1; at
block_size=16 every row has 16 labels, so the mean of the two losses (and gradients) is the
global batch's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
STEPS = 20
BASE = ["model=tiny", "model.dropout=0.0", "logger=none", "callbacks.control.stdin=false",
        "callbacks.monitoring.plots=false", "data.batch_size=4", "data.block_size=16", "data.val_samples=16",
        f"trainer.max_steps={STEPS}", "callbacks.checkpointing.every_n_steps=10", "trainer.precision=32-true",
        "seed=11", "data.num_workers=0"]
FSDP = [*BASE, "trainer=fsdp_cpu", "trainer.val_check_interval=10"]
SINGLE = [*BASE, "trainer=cpu", "trainer.devices=1", "trainer.accumulate_grad_batches=2",
          "trainer.val_check_interval=20"]
# bfloat16 Newton-Schulz, as on a GPU (on a CPU optimizer.muon_ns_dtype=auto is float32).
MUON = ["optimizer=muon", "optimizer.muon_ns_dtype=bfloat16", "trainer.max_steps=3", "callbacks.checkpointing.every_n_steps=0",
        "trainer.val_check_interval=1000"]
JOB_TIMEOUT = 400


def _rec(root: Path, name: str) -> list[str]:
    return ["+callbacks.rec._target_=fsdp2_job.Recorder", f"+callbacks.rec.out={root / name}"]


def _stop(step: int) -> list[str]:
    return ["+callbacks.stop._target_=reliability_helpers.StopAt", f"+callbacks.stop.step={step}"]


def _held(root: Path, name: str, rank: int = 0) -> dict:
    data = json.loads((root / f"{name}.rank{rank}.json").read_text())
    data["losses"] = {int(k): v for k, v in data["losses"].items()}
    return data


def _train_here(root: Path, name: str, overrides: list[str]) -> dict:
    """A one-process run in this pytest process (the test directory is on sys.path)."""
    from hydra import compose, initialize_config_dir

    from lm_lightning.config.location import CONF_DIR
    from lm_lightning.run.session import train

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"paths.runs_root={root}", f"run_name={name}"])
    return train(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2")
    # 1. One process: the reference run (its step-10 checkpoint is also the 1 -> 2 source) and Muon.
    single = _train_here(root, "single", [*SINGLE, *_rec(root, "single")])
    _train_here(root, "single_muon", [*SINGLE, *MUON, *_rec(root, "single_muon")])

    # 2. Two ranks, one torchrun job: the same 20 steps; the same run stopped at 10 and resumed
    # (auto-resume from its sharded checkpoint); the one-process checkpoint resumed on 2 ranks; Muon.
    def run(name, *overrides):
        return {"summary": str(root / f"{name}.summary.json"),
                "overrides": [*FSDP, *overrides, f"paths.runs_root={root}", f"run_name={name}", *_rec(root, name)]}

    single_ckpt = root / "single" / "checkpoints" / "step-10.ckpt"
    # The resumed leg also checkpoints activations (per block, inside its FSDP unit): recomputing
    # the forward in backward changes no number, so it must still equal the uninterrupted run.
    spec = [run("fsdp"), run("resumed", *_stop(10)), run("resumed", "model.activation_checkpointing=true"),
            run("from1", f"ckpt_path={single_ckpt}", *_stop(11), "trainer.val_check_interval=1000"),
            run("fsdp_muon", *MUON)]
    spec[1]["summary"] = str(root / "resumed_leg1.summary.json")
    spec[1]["overrides"] = [o.replace(f"{root / 'resumed'}", f"{root / 'resumed_leg1'}") for o in spec[1]["overrides"]]
    # A character-level text run (evaluate and generate read text checkpoints only).
    words = "the cat sat on a mat and the dog ran far away".split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(6)) for i in range(400)]
    (root / "train.txt").write_text("\n".join(lines[:340]) + "\n")
    (root / "val.txt").write_text("\n".join(lines[340:]) + "\n")
    spec.append({"summary": str(root / "fsdp_text.summary.json"), "overrides": [
        "trainer=fsdp_cpu", "model=tiny", "logger=none", "callbacks.control.stdin=false",
        "callbacks.monitoring.plots=false", "data=text", f"data.train_path={root / 'train.txt'}",
        f"data.val_path={root / 'val.txt'}", "data.block_size=32", "data.batch_size=8", "data.num_workers=0",
        f"data.cache_dir={root / 'cache'}", "trainer.max_steps=4", "trainer.val_check_interval=4",
        "trainer.limit_val_batches=2", f"paths.runs_root={root}", "run_name=fsdp_text"]})
    # Last: 12 validation samples are 3 batches of 4, 2 on one rank and 1 on the other; under FSDP
    # (a collective in every forward) that would hang at the first validation: refused at step 1.
    spec.append({**run("uneven", "data.val_samples=12", "trainer.max_steps=2"), "expect_error": True})
    (root / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "fsdp2_job.py"), str(root / "spec.json")]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=env)
    (root / "job.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])

    # 3. The 2-rank checkpoint at step 10 resumed by one process (consolidated for trainer=cpu).
    two_to_one = _train_here(root, "from2", [*SINGLE, *_rec(root, "from2"), *_stop(11),
                                             f"ckpt_path={root / 'fsdp' / 'checkpoints' / 'step-10.ckpt'}"])
    return {"root": root, "single": single, "two_to_one": two_to_one, "job": proc}


def test_parity_with_one_process(runs):
    root = runs["root"]
    fsdp, single = _held(root, "fsdp"), _held(root, "single")
    assert sorted(fsdp["losses"]) == sorted(single["losses"]) == list(range(1, STEPS + 1))
    diffs = [abs(fsdp["losses"][s] - single["losses"][s]) for s in range(1, STEPS + 1)]
    print(f"fsdp_cpu vs one process, {STEPS} steps: max |dloss| = {max(diffs):.3g}")
    assert max(diffs) <= 1e-5, diffs
    assert fsdp["losses"][STEPS] < fsdp["losses"][1]


def test_each_rank_holds_half(runs):
    root = runs["root"]
    ranks = [_held(root, "fsdp", r) for r in (0, 1)]
    full = ranks[0]["param_numel_full"]
    single = _held(root, "single")
    assert single["param_numel"] == full and single["sharded_params"] == 0
    # AdamW keeps two moments per parameter: a whole copy each, twice, in one process.
    assert single["optimizer_state_numel"] == 2 * full
    for held in ranks:
        print(f"rank {held['rank']}: {held['param_numel']:,} of {full:,} parameter elements, "
              f"{held['optimizer_state_numel']:,} of {2 * full:,} optimizer-state elements")
        assert held["sharded_params"] > 0
        assert abs(held["param_numel"] - full / 2) <= 0.02 * full, held
        assert abs(held["optimizer_state_numel"] - full) <= 0.04 * full, held
    assert sum(h["param_numel"] for h in ranks) == full
    assert sum(h["optimizer_state_numel"] for h in ranks) == 2 * full


def test_exact_resume_from_sharded_checkpoint(runs):
    root = runs["root"]
    leg1 = json.loads((root / "resumed_leg1.summary.json").read_text())
    assert leg1["status"] == "stopped" and leg1["global_step"] == 10
    resumed, fsdp = _held(root, "resumed"), _held(root, "fsdp")
    assert sorted(resumed["losses"]) == list(range(11, STEPS + 1)), "auto-resumed at step 10"
    assert resumed["checkpointed_blocks"] == 2 and fsdp["checkpointed_blocks"] == 0
    for step in range(11, STEPS + 1):
        assert resumed["losses"][step] == fsdp["losses"][step], step
    ckpts = root / "resumed" / "checkpoints"
    # Sharded saves: a directory per checkpoint, one shard per rank, only visible when complete.
    step10 = ckpts / "step-10.ckpt"
    assert sorted(p.name for p in step10.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert not list(ckpts.glob("*.tmp")), "no unfinished save left behind"
    assert (ckpts / "last.ckpt").resolve() == (ckpts / f"step-{STEPS}.ckpt").resolve()
    assert (ckpts / "final.ckpt").is_dir() and (ckpts / "final.safetensors").is_file()
    summary = json.loads((root / "resumed.summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == STEPS


def test_resharding_two_to_one_and_one_to_two(runs):
    root = runs["root"]
    fsdp, single = _held(root, "fsdp"), _held(root, "single")
    from2, from1 = _held(root, "from2"), _held(root, "from1")
    assert runs["two_to_one"]["global_step"] == 11 and sorted(from2["losses"]) == [11]
    assert sorted(from1["losses"]) == [11] and from1["world_size"] == 2 and from2["world_size"] == 1
    d21 = abs(from2["losses"][11] - fsdp["losses"][11])
    d12 = abs(from1["losses"][11] - single["losses"][11])
    print(f"next-step loss after resharding: 2->1 |dloss| = {d21:.3g}, 1->2 |dloss| = {d12:.3g}")
    assert d21 <= 1e-5 and d12 <= 1e-5


def test_muon_under_fsdp2_matches_one_process(runs):
    from safetensors.torch import load_file

    root = runs["root"]
    fsdp, single = _held(root, "fsdp_muon"), _held(root, "single_muon")
    a = load_file(str(root / "fsdp_muon" / "checkpoints" / "final.safetensors"))
    b = load_file(str(root / "single_muon" / "checkpoints" / "final.safetensors"))
    assert a.keys() == b.keys()
    muon_keys = [k for k in a if k.startswith("h.") and k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))]
    assert muon_keys
    worst = max((a[k] - b[k]).abs().max().item() for k in muon_keys)
    diffs = [abs(fsdp["losses"][s] - single["losses"][s]) for s in (1, 2, 3)]
    print(f"Muon under FSDP2 vs one process after 3 steps: max |dW| = {worst:.3g} (muon_lr 0.02), "
          f"max |dloss| = {max(diffs):.3g}")
    # Muon orthogonalises in bf16: the update of an element is ~muon_lr (0.02); bf16 keeps 8 bits.
    assert worst <= 0.02 * 2 ** -6 * 3, worst
    assert max(diffs) <= 1e-3, diffs


def test_readers_consolidate_a_sharded_checkpoint(runs, capsys, tmp_path):
    from safetensors.torch import load_file

    from lm_lightning import evaluate, export, generate
    from lm_lightning.ckpt.best import load_best
    from lm_lightning.ckpt.load import load_checkpoint

    run_dir = runs["root"] / "fsdp"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and last.is_dir()
    loaded = load_checkpoint(last)
    assert loaded.global_step == STEPS
    final = load_file(str(run_dir / "checkpoints" / "final.safetensors"))
    state = {**loaded.model.state_dict(), **loaded.heads}  # task heads travel beside the GPT
    for key, value in final.items():
        assert torch.equal(state[key], value), key

    model, tokenizer, cfg = load_best(run_dir)
    assert Path(cfg.loaded_from.checkpoint).is_dir() and tokenizer is not None
    assert model.regression_head is not None

    assert export.main([f"ckpt={last}", f"out={tmp_path / 'exported'}"]) in (None, 0)
    assert any((tmp_path / "exported").iterdir())
    # evaluate and generate read text checkpoints: the 2-rank character-level run's.
    text_last = runs["root"] / "fsdp_text" / "checkpoints" / "last.ckpt"
    assert text_last.is_dir() and (text_last / "__1_0.distcp").is_file()
    capsys.readouterr()
    evaluate.main([f"ckpt={text_last}", "split=val"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["checkpoint"] == str(text_last) and "loss" in json.dumps(result)
    generate.main([f"ckpt={text_last}", "prompt=the cat", "max_new_tokens=8", "seed=1"])
    assert len(capsys.readouterr().out.strip()) >= 8  # 8 new characters (with or without the prompt)

    # An unfinished save (no meta.pt/.metadata) is one line, not a traceback.
    from lm_lightning.errors import UserError

    broken = tmp_path / "step-3.ckpt"
    broken.mkdir()
    (broken / "__0_0.distcp").write_bytes(b"\0")
    with pytest.raises(UserError, match="not a complete sharded checkpoint"):
        load_checkpoint(broken)


def test_uneven_evaluation_split_is_refused_on_every_rank(runs):
    root = runs["root"]
    for rank in (0, 1):
        message = (root / f"uneven.summary.json.rank{rank}").read_text()
        assert message == ("FSDP needs the same number of evaluation batches on every rank, got [1, 2]: make the "
                           "validation split a multiple of 2 x data.batch_size"), message
    assert not _held_exists(root, "uneven"), "refused before the first optimizer step"


def _held_exists(root: Path, name: str) -> bool:
    return (root / f"{name}.rank0.json").exists()


def test_presets_and_refusals():
    from conftest import compose
    from hydra.utils import instantiate

    from lm_lightning.errors import UserError
    from lm_lightning.lit.parallel import TP_REFUSAL, FSDP2Strategy
    from lm_lightning.run.distributed import build_bare_trainer, is_fsdp, is_fsdp1

    fsdp = compose(["trainer=fsdp"])
    strategy = instantiate(fsdp.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy) and is_fsdp(strategy) and is_fsdp(fsdp.trainer.strategy)
    assert strategy._save_distributed_checkpoint and fsdp.trainer.precision == "bf16-mixed"
    cpu = build_bare_trainer(compose(["trainer=fsdp_cpu"]).trainer, "32-true")
    assert isinstance(cpu.strategy, FSDP2Strategy) and cpu.world_size == 2
    assert not is_fsdp(compose(["trainer=ddp_cpu"]).trainer.strategy) and not is_fsdp(None)
    # Muon refuses FSDP1's flat shards only: FSDP2 hands it 2-D DTensors.
    assert is_fsdp1("fsdp") and is_fsdp1("lightning.pytorch.strategies.FSDPStrategy")
    assert not is_fsdp1(fsdp.trainer.strategy) and not is_fsdp1(strategy) and not is_fsdp1("ddp")

    # Tensor parallel: refused with one line before anything is sharded.
    class Mesh:
        mesh_dim_names = ("data_parallel", "tensor_parallel")

        def __getitem__(self, name):
            return type("Sub", (), {"size": lambda self: 2 if name == "tensor_parallel" else 1,
                                    "device_type": "cpu"})()

    from lm_lightning.lit.parallel import is_parallelized, parallelize
    from lm_lightning.model import GPT, ModelConfig

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=8, block_size=8))
    with pytest.raises(UserError) as exc:
        parallelize(model, Mesh())
    assert str(exc.value) == TP_REFUSAL and "\n" not in TP_REFUSAL and not is_parallelized(model)


def test_sharded_save_commit_and_aliases(tmp_path):
    """The file-system side of sharded saves: a directory appears under its name only complete,
    replaces an older one or a file of the same name, and last/best aliases follow either kind."""
    from lm_lightning.callbacks.checkpoint_files import alias, commit_dir, remove_checkpoint

    def shards(path, tag):
        path.mkdir()
        for name in ("__0_0.distcp", "__1_0.distcp", "meta.pt", ".metadata"):
            (path / name).write_text(tag)
        return path

    ckpt = tmp_path / "step-10.ckpt"
    commit_dir(shards(tmp_path / "step-10.ckpt.tmp", "a"), ckpt)
    assert not (tmp_path / "step-10.ckpt.tmp").exists() and (ckpt / "meta.pt").read_text() == "a"
    commit_dir(shards(tmp_path / "step-10.ckpt.tmp", "b"), ckpt)  # a re-save of the same name
    assert (ckpt / "meta.pt").read_text() == "b" and sorted(p.name for p in tmp_path.iterdir()) == ["step-10.ckpt"]
    final = tmp_path / "final.ckpt"
    final.write_text("a file from a one-process leg")
    commit_dir(shards(tmp_path / "final.ckpt.tmp", "c"), final)
    assert final.is_dir() and (final / "meta.pt").read_text() == "c"

    last = tmp_path / "last.ckpt"
    alias(ckpt, last)
    assert last.is_symlink() and os.readlink(last) == "step-10.ckpt" and (last / "meta.pt").read_text() == "b"
    single = tmp_path / "step-20.ckpt"
    single.write_text("one process")
    alias(single, last)  # back to a file checkpoint: a hard link (or copy) replaces the symlink
    assert not last.is_symlink() and last.read_text() == "one process"
    alias(ckpt, last)
    assert last.is_symlink()
    remove_checkpoint(last)
    assert not last.exists() and ckpt.is_dir(), "removing an alias keeps its target"
    remove_checkpoint(ckpt)
    assert not ckpt.exists()
