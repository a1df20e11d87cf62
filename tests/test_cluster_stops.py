"""Cluster-grade stops and launches (issue 18, parts 4 and 5).

- SIGTERM to the whole process group (``scancel``, ``timeout``, systemd), data-loader workers
  included, stops like SIGTERM to the main process: a checkpoint at the current step, exit 143,
  ``summary.json`` status ``stopped``; one process and DDP (ddp_cpu).
- The run lock: a second start of a live run is refused (one line naming the holder, exit 2,
  the first run untouched, no new run directory); a lock left by a dead holder is taken over
  with a warning; ranks above 0 neither take nor are refused the lock.
- Two ``torchrun --nnodes=2`` processes on 127.0.0.1 train to the end in one run directory, and
  a ``hydra/launcher=submitit_local`` sweep runs its jobs.

The end-to-end runs start train.py in its own session (``start_new_session=True``), wait until
it has logged optimizer steps (a file the LossRecorder callback appends to), then signal the
whole group with ``os.killpg``: deterministic, no sleeps that guess at timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import group_alive, signal_and_reap
from torch.utils.data import IterableDataset

from lm_lightning.data.streams import Loader
from lm_lightning.errors import UserError
from lm_lightning.run import runlock

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ARGS = ["model=tiny", "trainer=debug", "logger=none", "callbacks.control.stdin=false",
        "callbacks.monitoring.plots=false", "data.batch_size=8", "data.block_size=32", "data.val_samples=16",
        "trainer.val_check_interval=100000", "callbacks.checkpointing.final_model=false"]
TIMEOUT = 300


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.pop("DISCORD_WEBHOOK_URL", None)
    return env


def _dead_pid() -> int:
    """A pid that existed a moment ago and no longer does."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_lock(run_dir: Path, **fields) -> Path:
    path = runlock.lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {**runlock.holder_info(), "token": "someone-else", **fields}
    path.write_text(json.dumps(holder))
    return path


# -- the run lock, in-process --------------------------------------------------------------------
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys, monkeypatch):
    run = tmp_path / "outputs" / "r"
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    # Free: taken, beside the run directory (which it does not create), and released.
    lock = runlock.acquire(run)
    assert lock.path == tmp_path / "outputs" / "r.lock" and not run.exists()
    held = json.loads(lock.path.read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started_utc"]
    # This process already holds it: a second start (even from the same process) is refused.
    with pytest.raises(UserError, match=rf"in use by pid {os.getpid()} on host "):
        runlock.acquire(run)
    lock.release()
    assert not lock.path.exists() and not (tmp_path / "outputs").exists(), "the lock's own directories go too"

    # A live process on this host holds it: refused with one line naming pid, host, start time.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        path = _write_lock(run, pid=sleeper.pid, proc_start=runlock._proc_start(sleeper.pid))
        with pytest.raises(UserError) as info:
            runlock.acquire(run)
        msg = str(info.value)
        assert "\n" not in msg and f"pid {sleeper.pid} on host {socket.gethostname()} (started " in msg, msg
        assert json.loads(path.read_text())["pid"] == sleeper.pid, "the holder's lock is untouched"
        # The same pid but a different process start time: the pid was reused, the holder is gone.
        _write_lock(run, pid=sleeper.pid, proc_start="1")
        runlock.acquire(run).release()
        assert "its pid now belongs to another process" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()

    # A dead pid on this host: taken over with a one-line warning naming the old holder.
    dead = _dead_pid()
    _write_lock(run, pid=dead)
    lock = runlock.acquire(run)
    err = capsys.readouterr().err
    assert f"warning: taking over the run lock {lock.path} left by pid {dead}" in err
    assert "no longer exists" in err and json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()

    # An unreadable lock (not one we wrote: ours appear complete or not at all) is taken over.
    runlock.lock_path(run).write_text("{not json")
    runlock.acquire(run).release()
    assert "unreadable" in capsys.readouterr().err


def test_lock_of_another_host_heartbeat_and_slurm_requeue(tmp_path, capsys, monkeypatch):
    """Another host's pids cannot be checked: its heartbeat (the lock's mtime) decides, or SLURM's
    job id shows that the holder was an earlier incarnation of this very (requeued) job."""
    run = tmp_path / "r"
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    path = _write_lock(run, pid=4242, host="node-elsewhere")
    with pytest.raises(UserError, match=r"pid 4242 on host node-elsewhere \(started .*heartbeat \d+ s ago\)"):
        runlock.acquire(run)
    old = time.time() - runlock.stale_after_s() - 60
    os.utime(path, (old, old))
    runlock.acquire(run).release()
    assert "heartbeat is" in capsys.readouterr().err

    # A requeued SLURM job keeps its job id and gets a new restart count.
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _write_lock(run, pid=4242, host="node-elsewhere", slurm_job_id="777", slurm_restart_count="0")
    runlock.acquire(run).release()
    assert "earlier run of SLURM job 777" in capsys.readouterr().err
    # Another job (or the same incarnation elsewhere) with a fresh heartbeat: refused.
    _write_lock(run, pid=4242, host="node-elsewhere", slurm_job_id="778", slurm_restart_count="0")
    with pytest.raises(UserError, match="in use by pid 4242"):
        runlock.acquire(run)
    # The heartbeat thread refreshes the mtime while the run lives.
    runlock.lock_path(run).unlink()
    lock = runlock.acquire(run)
    os.utime(lock.path, (old, old))
    lock._stop.set()
    lock._thread.join()
    lock._stop.clear()
    lock.start_heartbeat(every_s=0.05)
    for _ in range(200):
        if lock.path.stat().st_mtime > old + 10:
            break
        time.sleep(0.05)
    assert lock.path.stat().st_mtime > old + 10, "heartbeat never touched the lock"
    lock.release()


def test_ranks_above_zero_share_the_run(tmp_path, monkeypatch):
    """Rank 1 of the same job neither takes nor is refused the lock rank 0 holds."""
    run = tmp_path / "r"
    lock = runlock.acquire(run)
    try:
        for key, value in {"RANK": "1", "LOCAL_RANK": "0", "NODE_RANK": "1"}.items():
            monkeypatch.setenv(key, value)
        with runlock.run_lock(run) as held:
            assert held is None
        assert json.loads(lock.path.read_text())["token"] == lock.holder["token"]
    finally:
        monkeypatch.delenv("RANK")
        lock.release()


def test_ranks_lightning_started_exit_0_after_a_clean_stop(monkeypatch):
    """Lightning's launcher SIGKILLs all its processes once one of its children exits non-zero, so
    after a checkpointed SIGTERM stop the ranks it started exit 0 and rank 0 reports 143; ranks
    that torchrun, SLURM or a person started report 143 themselves."""
    from types import SimpleNamespace

    from lightning.fabric.plugins.environments import LightningEnvironment, TorchElasticEnvironment

    from lm_lightning.callbacks.control import run_outcome

    def outcome(env):
        return run_outcome(SimpleNamespace(callbacks=[SimpleNamespace(reason="SIGTERM")],
                                           strategy=SimpleNamespace(cluster_environment=env)))

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert outcome(LightningEnvironment()) == ("stopped", "SIGTERM", 143)  # rank 0 (or node 1's first)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert outcome(LightningEnvironment()) == ("stopped", "SIGTERM", 0)
    assert outcome(TorchElasticEnvironment()) == ("stopped", "SIGTERM", 143)


# -- data-loader workers leave the stop signals to the main process -------------------------------
class _Pids(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.tensor([os.getpid(), int(os.environ.get("_INNER_RAN", "0"))])


def _mark_inner(worker_id: int) -> None:
    os.environ["_INNER_RAN"] = "1"


def test_loader_workers_leave_stop_signals_to_main_and_keep_their_init_fn():
    """A SIGTERM/SIGINT from outside (a signal to the group) does not end a worker; a SIGTERM from
    the main process (PyTorch's shutdown, multiprocessing's clean-up at exit) still does, so a
    main process that exits with live workers does not hang joining them."""
    loader = Loader(_Pids(), batch_size=None, num_workers=1, worker_init_fn=_mark_inner)
    it = iter(loader)
    worker_pid, inner_ran = next(it).tolist()
    assert worker_pid != os.getpid() and inner_ran == 1, "the loader's own worker_init_fn still runs"
    assert loader.worker_init_fn is _mark_inner, "the wrap is not left on the loader"
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set(), "main thread's signal mask restored"
    for name in ("TERM", "INT"):  # sent by another process, as by kill(-pgid) from timeout or slurmstepd
        subprocess.run(["kill", f"-{name}", str(worker_pid)], check=True)
    for _ in range(5):  # a killed worker would fail the next batch ("killed by signal: Terminated")
        assert next(it)[0].item() == worker_pid
    (worker,) = it._workers
    assert worker.is_alive()
    worker.terminate()  # SIGTERM from this, the main process
    worker.join(timeout=60)
    assert worker.exitcode == -signal.SIGTERM, worker.exitcode
    it._shutdown_workers()


# -- end to end: group SIGTERM, the double start, torchrun, submitit_local --------------------------
def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_steps(proc: subprocess.Popen, steps_file: Path, n: int) -> None:
    deadline = time.time() + TIMEOUT
    while not (steps_file.exists() and len(steps_file.read_text().splitlines()) >= n):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was signalled:\n{proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, "no steps logged"
        time.sleep(0.2)


def _term_group_and_wait(proc: subprocess.Popen) -> str:
    # every other process of the group (workers, rank 1) ends too
    return signal_and_reap(proc, signal.SIGTERM, whole_group=True, timeout=TIMEOUT, grace_s=60)


def _assert_stopped_at_current_step(run: Path, steps_file: Path, out: str) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["stop_reason"], summary["exit_code"]) == ("stopped", "SIGTERM", 143), summary
    step = summary["global_step"]
    logged = max(json.loads(line)[0] for line in steps_file.read_text().splitlines())
    assert step >= logged >= 1, (step, logged)
    ckpt = run / "checkpoints" / f"step-{step}.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (run / "checkpoints").iterdir())
    if ckpt.is_dir():  # FSDP2: a sharded checkpoint, one shard written by every rank
        assert {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= {p.name for p in ckpt.iterdir()}
    else:
        assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == step
    assert "killed by signal" not in out and "Traceback" not in out, out[-3000:]
    assert f"SIGTERM: stopping at step {step}" in out
    return summary


@pytest.mark.slow
def test_group_sigterm_with_workers_and_a_refused_second_start(tmp_path, monkeypatch, capsys):
    """One process with a data-loader worker. While it trains, a second start of the same run is
    refused (exit 2, one line naming the holder, nothing new on disk); then SIGTERM to the whole
    group checkpoints the current step and exits 143."""
    from exp_helpers import run_main

    runs_root, steps = tmp_path / "outputs", tmp_path / "steps.jsonl"
    args = [*ARGS, "data.num_workers=1", "trainer.max_steps=100000", f"paths.runs_root={runs_root}", "run_name=g"]
    proc = _start([*args, "+callbacks.rec._target_=reliability_helpers.LossRecorder", f"+callbacks.rec.path={steps}"])
    try:
        _wait_for_steps(proc, steps, 2)
        run = runs_root / "g"
        before = sorted(p.name for p in runs_root.iterdir())
        hydra_before = (run / ".hydra" / "config.yaml").read_text()
        with pytest.raises(SystemExit) as info:
            run_main(monkeypatch, args)  # the same command, in this process
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1, err
        assert f"in use by pid {proc.pid} on host {socket.gethostname()} (started " in err[0], err
        assert sorted(p.name for p in runs_root.iterdir()) == before, "no new run directory, no new file"
        assert (run / ".hydra" / "config.yaml").read_text() == hydra_before
        assert json.loads(runlock.lock_path(run).read_text())["pid"] == proc.pid
        assert proc.poll() is None, "the first run goes on"
        _wait_for_steps(proc, steps, 3)  # ...and keeps training
    finally:
        out = _term_group_and_wait(proc)
    assert proc.returncode == 143, out[-3000:]
    _assert_stopped_at_current_step(run, steps, out)
    assert not runlock.lock_path(run).exists(), "the lock goes with the run"


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp_cpu"])
def test_group_sigterm_under_ddp_and_fsdp_and_stale_lock_takeover(tmp_path, trainer):
    """2 ranks with a data-loader worker each (DDP, FSDP2): group SIGTERM stops both ranks at one
    step with a checkpoint there (FSDP: every rank's shard) and exit 143. The run starts over a lock
    left by a dead process (taken over with a warning), and rank 1 shares the run rank 0 locked."""
    runs_root, steps = tmp_path / "outputs", tmp_path / "steps.jsonl"
    run = runs_root / "d"
    dead = _dead_pid()
    _write_lock(run, pid=dead)
    proc = _start([*ARGS, f"trainer={trainer}", "data.num_workers=1", "data.block_size=16", "data.batch_size=4",
                   "data.val_samples=16", "trainer.max_steps=100000", f"paths.runs_root={runs_root}", "run_name=d",
                   "+callbacks.rec._target_=reliability_helpers.LossRecorder", f"+callbacks.rec.path={steps}"])
    try:
        _wait_for_steps(proc, steps, 4)  # both ranks append: two optimizer steps each
        assert json.loads(runlock.lock_path(run).read_text())["pid"] == proc.pid
    finally:
        out = _term_group_and_wait(proc)
    assert proc.returncode == 143, out[-3000:]
    assert f"warning: taking over the run lock {runlock.lock_path(run)} left by pid {dead}" in out
    assert out.count("taking over the run lock") == 1 and "is in use by" not in out, "rank 1 left the lock alone"
    summary = _assert_stopped_at_current_step(run, steps, out)
    assert summary["world_size"] == 2
    assert not runlock.lock_path(run).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_NODES = {
    "ddp": ["trainer=multinode", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.strategy.process_group_backend=gloo", "trainer.precision=32-true"],
    "fsdp": ["trainer=fsdp_cpu", "+trainer.num_nodes=2", "trainer.devices=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TWO_NODES))
def test_two_node_torchrun_on_localhost(tmp_path, kind):
    """`torchrun --nnodes=2 --node_rank=0|1` on 127.0.0.1, one process per 'node' (trainer=multinode,
    and FSDP2): one run directory, trained to the end, rank 0 alone holding (then removing) the lock."""
    torchrun = Path(sys.executable).with_name("torchrun")
    runs_root, port = tmp_path / "outputs", _free_port()
    cmd = [str(torchrun), "--nnodes=2", "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
           None, str(ROOT / "train.py"), *ARGS, *TWO_NODES[kind], "trainer.max_steps=4", "data.block_size=16",
           "data.batch_size=4", "data.val_samples=16", f"paths.runs_root={runs_root}", "run_name=mn"]
    procs = [subprocess.Popen([c if c is not None else f"--node-rank={rank}" for c in cmd], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for rank in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if group_alive(p.pid):
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    summary = json.loads((runs_root / "mn" / "summary.json").read_text())
    assert (summary["status"], summary["global_step"], summary["world_size"]) == ("finished", 4, 2), summary
    assert sorted(p.name for p in runs_root.iterdir()) == ["mn", "runs.jsonl"], "one run directory, lock removed"
    if kind == "fsdp":  # sharded: every rank wrote its shard of the final step's checkpoint
        assert {"__0_0.distcp", "__1_0.distcp"} <= {p.name for p in (runs_root / "mn/checkpoints/step-4.ckpt").iterdir()}
    assert "effective batch size: 8 = 4 micro-batch x 1 accumulation x 2 processes" in outs[0]


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path, monkeypatch):
    """`-m hydra/launcher=submitit_local`: each job in its own process and directory, finished."""
    from exp_helpers import run_main

    from lm_lightning.run import index as runs

    runs_root = tmp_path / "outputs"
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    run_main(monkeypatch, ["-m", "hydra/launcher=submitit_local", *ARGS, "trainer.max_steps=2",
                           "optimizer.lr=1e-3,3e-4", f"paths.runs_root={runs_root}", "run_name=sw",
                           "hydra.launcher.timeout_min=10"])
    sweep = runs_root / "sw"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert (summary["status"], summary["global_step"]) == ("finished", 2), (job, summary)
        assert not runlock.lock_path(sweep / job).exists()
    records = runs.select(runs.read_runs(runs_root), sweep=str(sweep))
    assert sorted(r["status"] for r in records) == ["finished", "finished"]
    assert {r["job"] for r in records} == {0, 1}
    assert any((sweep / ".submitit").glob("*/*_result.pkl")), "the jobs ran through submitit"
