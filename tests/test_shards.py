"""Issue 21: `prepare tokenize ... out=DIR` shards (inputs, workers, resume, bad input) and
`data=tokens data.path=DIR` / `data.mixture` windows (coverage, proportions, exact resume).

Hermetic: every corpus is generated here. One subprocess (the kill -9 stand-in must end a
process); everything else calls prepare.main in this process.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_lightning import prepare
from lm_lightning.data import shards
from lm_lightning.data.mixture import MixtureWindows
from lm_lightning.data.token_data import TokenDataModule
from lm_lightning.data.tokens import TokenFile, TokenShards
from lm_lightning.errors import UserError

WORDS = "the cat sat on a mat and the dog ran far away into the dark woods é ü 😀".split()


def docs(n: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) + ("\n" if i % 3 else "")
            for i in range(n)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    with (gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else open(path, "w")) as fh:
        for t in texts:
            fh.write(json.dumps({field: t, "id": 1}) + "\n")
    return path


def run(argv: list[str], capsys) -> dict:
    prepare.main(["tokenize", *argv])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def byte_ids(texts: list[str]) -> list[int]:
    out: list[int] = []
    for t in texts:
        out += list(t.encode("utf-8")) + [256]
    return out


def shard_bytes(d: Path, split: str = "train") -> bytes:
    meta = json.loads((d / "meta.json").read_text())
    return b"".join((d / n).read_bytes() for n in meta["shards"][split])


def folder_digest(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("corpus")
    texts = docs()
    write_jsonl(d / "a.jsonl", texts[:400])
    write_jsonl(d / "b.jsonl", texts[400:])
    return d, texts


# -- writing shards ------------------------------------------------------------------------------
def test_shards_equal_one_file_and_documents_end_with_eot(tmp_path, corpus, capsys):
    d, texts = corpus
    glob = str(d / "*.jsonl")
    one = run([glob, f"out={tmp_path / 'one.bin'}"], capsys)
    ids = np.fromfile(tmp_path / "one.bin", dtype=np.uint16)
    assert ids.tolist() == byte_ids(texts) and one["tokens"] == len(ids)  # EOT (256) after every document
    side = json.loads((tmp_path / "one.bin.json").read_text())
    assert (side["dtype"], side["vocab_size"], side["eot_id"]) == ("uint16", 257, 256)

    res = run([glob, f"out={tmp_path / 'sh'}", "shard_tokens=5000", "val_tokens=3000"], capsys)
    sh = tmp_path / "sh"
    meta = json.loads((sh / "meta.json").read_text())
    val = np.frombuffer(shard_bytes(sh, "val"), dtype=np.uint16)
    # Validation: the first documents until 3000 tokens, ending at a document end.
    assert len(val) >= 3000 and val[-1] == 256 and (val[:-1] == 256).sum() < len(texts)
    n_val_docs = int((val == 256).sum())
    assert len(val) - len(byte_ids(texts[:n_val_docs - 1])) < 3000 + len(byte_ids(texts[n_val_docs - 1:n_val_docs]))
    assert shard_bytes(sh, "val") + shard_bytes(sh, "train") == ids.tobytes()  # shards = one file, concatenated
    sizes = [len(np.fromfile(sh / n, dtype=np.uint16)) for n in meta["shards"]["train"]]
    assert sizes[:-1] == [5000] * (len(sizes) - 1) and 0 < sizes[-1] <= 5000
    assert meta["tokens"] == {"val": len(val), "train": sum(sizes)} == {k: res["tokens"][k] for k in ("val", "train")}
    assert meta["tokenizer"]["kind"] == "byte" and meta["dtype"] == "uint16" and meta["inputs"] == sorted(
        meta["inputs"])
    for n in meta["shards"]["train"]:  # each shard's sidecar: TokenFile reads it
        assert len(TokenFile(sh / n)) == json.loads((sh / f"{n}.json").read_text())["tokens"]
    assert not list(sh.glob("*.tmp"))
    # Rerunning a finished folder does nothing.
    again = run([glob, f"out={sh}", "shard_tokens=5000", "val_tokens=3000"], capsys)
    assert again["complete"] == "already"


def test_one_or_two_workers_give_the_same_bytes(tmp_path, corpus, capsys, monkeypatch):
    d, texts = corpus
    monkeypatch.setattr(shards, "BATCH_DOCS", 50)  # several batches in flight
    args = [str(d / "*.jsonl"), "tokenizer=bpe", "vocab_size=300", "shard_tokens=2000", "val_tokens=500"]
    run([*args, f"out={tmp_path / 'w1'}", "workers=1"], capsys)
    # The BPE trained by the first run, so that both runs share it.
    tok_file = tmp_path / "w1" / "tokenizer.json"
    run([*args, f"out={tmp_path / 'w1b'}", "workers=1", f"tokenizer_path={tok_file}"], capsys)
    run([*args, f"out={tmp_path / 'w2'}", "workers=2", f"tokenizer_path={tok_file}"], capsys)
    a, b = folder_digest(tmp_path / "w1b"), folder_digest(tmp_path / "w2")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "plan.json")
    assert shard_bytes(tmp_path / "w1", "train") == shard_bytes(tmp_path / "w2", "train")
    from lm_lightning.data.tokenizers import load_bpe_file

    tok = load_bpe_file(tok_file)
    ids = np.frombuffer(shard_bytes(tmp_path / "w2", "val") + shard_bytes(tmp_path / "w2", "train"), np.uint16)
    expect = [i for t in texts for i in tok.encode(t) + [tok.eot_id]]
    assert ids.tolist() == expect


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_run_resumes_to_identical_shards(tmp_path, corpus, capsys, workers, monkeypatch):
    d, _ = corpus
    monkeypatch.setattr(shards, "BATCH_DOCS", 50)  # the killed run's batching (its rerun reads it from plan.json)
    args = [str(d / "*.jsonl"), "shard_tokens=4000", "val_tokens=2000", f"workers={workers}"]
    run([*args, f"out={tmp_path / 'straight'}"], capsys)
    out = tmp_path / "killed"
    k = 2 if workers == 1 else 0  # after two finished shards (val and train_0), or before any
    code = ("import os, sys; from lm_lightning.data import shards; shards.BATCH_DOCS = 50; "
            "from lm_lightning import prepare; prepare.main(sys.argv[1:])")
    env = dict(os.environ, **{shards.EXIT_AFTER_ENV: str(k)})
    proc = subprocess.run([sys.executable, "-c", code, "tokenize", *args, f"out={out}"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    left = sorted(p.name for p in out.iterdir())
    half = [n for n in left if n.endswith(".bin.tmp")]
    assert len(half) == 1 and (out / half[0]).stat().st_size > 0  # died inside a shard...
    finished = [n for n in left if n.endswith(".bin")]
    assert all(f"{n}.json" in left for n in finished) and len(finished) == k  # ...none visible half-written
    assert "meta.json" not in left
    with pytest.raises(UserError, match="did not finish"):
        TokenDataModule(path=str(out), tokenizer={})
    monkeypatch.setattr(shards, "BATCH_DOCS", 1000)
    res = run([*args[:-1], "workers=1", f"out={out}"], capsys)  # workers do not change the bytes, nor resuming
    assert res["tokens_kept"] > 0 if k else res["tokens_kept"] == 0
    assert folder_digest(out) == folder_digest(tmp_path / "straight")


def test_a_killed_single_file_run_leaves_nothing_behind_its_rerun(tmp_path, corpus, capsys):
    d, _ = corpus
    args = [str(d / "*.jsonl")]
    run([*args, f"out={tmp_path / 'straight.bin'}"], capsys)
    out = tmp_path / "killed" / "one.bin"
    out.parent.mkdir()
    code = "import sys; from lm_lightning import prepare; prepare.main(sys.argv[1:])"
    env = dict(os.environ, **{shards.EXIT_AFTER_ENV: "0"})  # dies inside its (only) shard
    proc = subprocess.run([sys.executable, "-c", code, "tokenize", *args, f"out={out}"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert [p.name for p in out.parent.iterdir()] == ["one.bin.parts"]  # the killed run's work folder
    res = run([*args, f"out={out}"], capsys)
    assert res["tokens"] > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["one.bin", "one.bin.json"]  # nothing else
    assert out.read_bytes() == (tmp_path / "straight.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "straight.bin", "straight.bin.json"]


def test_ctrl_c_keeps_the_finished_shards(tmp_path, corpus, capsys, monkeypatch):
    d, _ = corpus
    monkeypatch.setattr(shards, "BATCH_DOCS", 50)
    args = [str(d / "*.jsonl"), "shard_tokens=3000", "val_tokens=1000"]
    run([*args, f"out={tmp_path / 'straight'}"], capsys)
    real, calls = shards.encode, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shards, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.main(["tokenize", *args, f"out={tmp_path / 'cut'}"])
    assert "rerun the same command" in capsys.readouterr().err
    kept = shards.finished_shards(tmp_path / "cut", "train")
    assert kept and not (tmp_path / "cut" / "meta.json").exists()
    monkeypatch.setattr(shards, "encode", real)
    assert run([*args, f"out={tmp_path / 'cut'}"], capsys)["tokens_kept"] > 0
    assert folder_digest(tmp_path / "cut") == folder_digest(tmp_path / "straight")


def test_every_input_kind_gives_the_same_tokens(tmp_path, capsys):
    texts = docs(60, seed=1)
    ref = byte_ids(texts)
    jl = write_jsonl(tmp_path / "c.jsonl", texts)
    gz = write_jsonl(tmp_path / "c.jsonl.gz", texts)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), tmp_path / "c.parquet", row_group_size=7)
    import datasets

    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "hfds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:5]}),
                          "validation": datasets.Dataset.from_dict({"text": texts})}).save_to_disk(
        str(tmp_path / "hfdict"))
    for i, t in enumerate(texts[:3]):  # text files: each file is a document
        (tmp_path / f"t{i}.txt").write_text(t)
    for name, inp, expect in [("jsonl", jl, ref), ("gz", gz, ref), ("parquet", tmp_path / "c.parquet", ref),
                              ("hf", f"hf:{tmp_path / 'hfds'}", ref),
                              ("hfsplit", f"hf:{tmp_path / 'hfdict'}/validation", ref),
                              ("txt", tmp_path / "t*.txt", byte_ids([t for t in texts[:3] if t]))]:
        run([str(inp), f"out={tmp_path / name}.bin"], capsys)
        assert np.fromfile(tmp_path / f"{name}.bin", dtype=np.uint16).tolist() == expect, name
    # char tokenizer: vocabulary from the corpus plus the end-of-text id
    run([str(jl), f"out={tmp_path / 'ch'}", "tokenizer=char", "val_tokens=100"], capsys)
    meta = json.loads((tmp_path / "ch" / "meta.json").read_text())
    assert meta["eot_id"] == meta["vocab_size"] - 1 == len(set("".join(texts)))
    dm = TokenDataModule(path=str(tmp_path / "ch"), tokenizer={}, block_size=8, batch_size=2)
    ids = np.frombuffer(shard_bytes(tmp_path / "ch", "val") + shard_bytes(tmp_path / "ch", "train"), np.uint16)
    assert dm.tokenizer.decode(ids.tolist()) == "<|endoftext|>".join(texts) + "<|endoftext|>"


def test_hf_tokenizer_folder(tmp_path, capsys):
    from transformers import PreTrainedTokenizerFast

    from lm_lightning.data.tokenizers import train_bpe

    texts = docs(80, seed=2)
    bpe = train_bpe(iter(texts), 300)
    PreTrainedTokenizerFast(tokenizer_object=bpe.tok, eos_token="<|endoftext|>").save_pretrained(
        str(tmp_path / "tokdir"))
    jl = write_jsonl(tmp_path / "c.jsonl", texts)
    run([str(jl), f"out={tmp_path / 'o'}", "tokenizer=hf", f"tokenizer_path={tmp_path / 'tokdir'}"], capsys)
    ids = np.frombuffer(shard_bytes(tmp_path / "o"), np.uint16).tolist()
    assert ids == [i for t in texts for i in bpe.encode(t) + [bpe.eot_id]]
    assert json.loads((tmp_path / "o" / "tokenizer.json").read_text())["model"]["type"] == "BPE"  # self-contained


def bad(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        prepare.main(["tokenize", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_are_one_line_exit_2_and_leave_nothing(tmp_path, capsys, monkeypatch):
    good = write_jsonl(tmp_path / "good.jsonl", docs(20))
    out = tmp_path / "out"
    assert "no file matches" in bad([str(tmp_path / "nope*.jsonl"), f"out={out}"], capsys)
    assert "input not found" in bad([str(tmp_path / "missing.jsonl"), f"out={out}"], capsys)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in bad([str(tmp_path / "latin1.txt"), f"out={out}"], capsys)
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    assert "cannot read" in bad([str(tmp_path / "broken.jsonl.gz"), f"out={out}"], capsys)
    assert "no field 'body'" in bad([str(good), f"out={out}", "text_field=body"], capsys)
    # A bad line far into a file: found while tokenizing, and the shards written so far are removed.
    monkeypatch.setattr(shards, "BATCH_DOCS", 5)
    late = write_jsonl(tmp_path / "late.jsonl", docs(40))
    with open(late, "a") as fh:
        fh.write('{"text": "ok"}\n{"other": 1}\n')
    assert "late.jsonl:42: no field 'text'" in bad([str(late), f"out={out}", "shard_tokens=100"], capsys)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    assert "no column 'text'" in bad([str(tmp_path / "p.parquet"), f"out={out}"], capsys)
    wide = "".join(chr(0x10000 + i) for i in range(70000))  # 70,000 characters: ids past uint16
    write_jsonl(tmp_path / "wide.jsonl", [wide])
    assert "does not fit dtype=uint16" in bad([str(tmp_path / "wide.jsonl"), f"out={out}", "tokenizer=char",
                                               "dtype=uint16"], capsys)
    write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    assert "no training tokens" in bad([str(tmp_path / "empty.jsonl"), f"out={out}"], capsys)
    assert "empty" in bad([str(tmp_path / "empty.jsonl"), f"out={out}", "tokenizer=char"], capsys)
    assert "unknown option 'shards'" in bad([str(good), f"out={out}", "shards=3"], capsys)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "could not be loaded" in bad(["hf:no-such-owner/no-such-dataset", f"out={out}"], capsys)
    assert not out.exists() and not list(tmp_path.glob("*.parts"))
    # The command line itself: exit status 2 and one line (the only subprocess of these checks).
    proc = subprocess.run([sys.executable, "-m", "lm_lightning.prepare", "tokenize", str(tmp_path / "none.jsonl"),
                           f"out={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: input not found: {tmp_path / 'none.jsonl'}"]
    # An existing folder of another tokenization is refused, untouched.
    bad_args = [str(good), f"out={out}", "shard_tokens=100"]
    run(bad_args, capsys)
    before = folder_digest(out)
    assert "another tokenization" in bad([str(good), f"out={out}", "shard_tokens=200"], capsys)
    assert folder_digest(out) == before


# -- training on shards ----------------------------------------------------------------------------
def position_shards(tmp_path: Path, sizes: list[int], val: int = 300, name: str = "pos",
                    base: int = 0) -> Path:
    """A shard folder whose token values are their position in the stream (plus base)."""
    d = tmp_path / name
    d.mkdir()
    names, pos = [], base
    for i, n in enumerate(sizes):
        (np.arange(pos, pos + n) % 65536).astype(np.uint16).tofile(d / f"train_{i:06d}.bin")
        names.append(f"train_{i:06d}.bin")
        pos += n
    (np.arange(val) % 65536).astype(np.uint16).tofile(d / "val_000000.bin")
    (d / "meta.json").write_text(json.dumps({
        "dtype": "uint16", "vocab_size": 65536, "tokenizer": {"kind": "byte", "eot": True}, "eot_id": 256,
        "tokenizer_key": {"kind": "byte", "eot": True}, "shards": {"train": names, "val": ["val_000000.bin"]},
        "tokens": {"train": sum(sizes), "val": val}}))
    return d


def test_data_path_windows_are_deterministic_and_cover_every_shard(tmp_path):
    sizes = [4000, 12000, 2000, 6000]
    d = position_shards(tmp_path, sizes)
    dm = TokenDataModule(path=str(d), tokenizer={}, block_size=16, batch_size=8, seed=3,
                         epoch_tokens=10**7)
    dm.setup()
    loader = iter(dm.train_dataloader())
    firsts = []
    for step in range(300):
        b = next(loader)
        x = b["input_ids"]
        assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows of the stream, across shard ends too
        firsts += x[:, 0].tolist()
        if step in (0, 123):
            again = dm.train_dataloader().dataset.batch(step)  # a pure function of (seed, step, rank)
            assert torch.equal(again["input_ids"], x)
    shard_of = np.searchsorted(np.cumsum(sizes), np.asarray(firsts), side="right")
    share = np.bincount(shard_of, minlength=len(sizes)) / len(firsts)
    assert (share > 0).all()  # every shard
    np.testing.assert_allclose(share, np.asarray(sizes) / sum(sizes), atol=0.04)  # weighted by size
    val = dm.val_dataloader(capped=False)
    labels = torch.cat([b["labels"][b["labels"] >= 0] for b in val])
    assert sorted(labels.tolist()) == list(range(1, 300))  # validation covers val_* whole
    # Globs of token files keep working, read as one array.
    glob_dm = TokenDataModule(train_path=str(d / "train_*.bin"), val_path=str(d / "val_*.bin"),
                              dtype="uint16", vocab_size=65536, tokenizer={}, block_size=16, batch_size=8, seed=3)
    glob_dm.setup()
    assert len(glob_dm._datasets["train"]) == sum(sizes)
    assert torch.equal(glob_dm.train_dataloader().dataset.batch(7)["input_ids"],
                       dm.train_dataloader().dataset.batch(7)["input_ids"])
    shards_ = glob_dm._datasets["train"]
    assert isinstance(shards_, TokenShards) and shards_.read(3990, 20).tolist() == list(range(3990, 4010))
    with pytest.raises(UserError, match="one of data.path"):
        TokenDataModule(path=str(d), train_path=str(d / "train_*.bin"), tokenizer={})
    with pytest.raises(UserError, match="no meta.json"):
        TokenDataModule(path=str(tmp_path), tokenizer={})


def test_mixture_proportions_over_many_batches(tmp_path):
    a = position_shards(tmp_path, [3000, 3000], name="a")
    b = position_shards(tmp_path, [5000], name="b", base=30000)
    dm = TokenDataModule(mixture=[{"path": str(a), "weight": 0.7}, {"path": str(b), "weight": 0.3}],
                         tokenizer={}, block_size=16, batch_size=10, seed=0)
    dm.setup()
    stream = dm._mixture_stream(0, 1)
    from_b = []
    for step in range(400):
        x = stream.batch(step)["input_ids"]
        n_b = int((x[:, 0] >= 30000).sum())
        assert abs(n_b - 10 * 0.3) <= 1  # each micro-batch in proportion, to within one window
        from_b.append(n_b)
        if step == 57:
            assert torch.equal(stream.batch(step)["input_ids"], x)
    assert abs(sum(from_b) / (400 * 10) - 0.3) < 0.005
    assert dm.mixture_realized["b"] == pytest.approx(0.3, abs=0.005)
    # Two ranks: the same global shares, different windows.
    r0 = MixtureWindows([s.train for s in dm.mixture], [0.7, 0.3], 10, 16, 0, 100, rank=0, world_size=2)
    r1 = MixtureWindows([s.train for s in dm.mixture], [0.7, 0.3], 10, 16, 0, 100, rank=1, world_size=2)
    assert not torch.equal(r0.batch(5)["input_ids"], r1.batch(5)["input_ids"])
    assert r0.realized(200)[1] == pytest.approx(0.3, abs=0.005)
    assert len(dm._datasets["val"]) == 600  # overall validation: every source's val_* shards
    with pytest.raises(UserError, match="weight must be a positive"):
        TokenDataModule(mixture=[{"path": str(a), "weight": 0}], tokenizer={})


@pytest.mark.slow
def test_exact_resume_on_a_mixture_of_shard_folders(tmp_path, capsys):
    """Stop at step 3 and rerun: the same losses bit for bit (the data.path windows are the same
    code with one source: RandomWindows, checked pure in the test above)."""
    from reliability_helpers import read_losses, train_run

    rng = np.random.default_rng(0)
    folders = []
    for name in ("s1", "s2"):
        d = tmp_path / name
        texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))) for _ in range(300)]
        write_jsonl(tmp_path / f"{name}.jsonl", texts)
        run([str(tmp_path / f"{name}.jsonl"), f"out={d}", "shard_tokens=3000", "val_tokens=1000"], capsys)
        folders.append(d)
    over = ["data=tokens", f"data.mixture=[{{path: '{folders[0]}', weight: 2}}, {{path: '{folders[1]}', weight: 1}}]",
            "data.block_size=32", "data.batch_size=4", "model.dropout=0.1", "trainer.deterministic=true",
             "trainer.max_steps=6", "trainer.val_check_interval=3", "data.eval_batches=2",
             "+callbacks.recorder._target_=reliability_helpers.LossRecorder"]
    straight = tmp_path / "straight.jsonl"
    train_run(tmp_path, [*over, f"+callbacks.recorder.path={straight}"], run_name="straight")
    split = tmp_path / "split.jsonl"
    first = train_run(tmp_path, [*over, f"+callbacks.recorder.path={split}",
                                 "+callbacks.stopper._target_=reliability_helpers.StopAt", "+callbacks.stopper.step=3"],
                      run_name="split")
    assert first["global_step"] == 3
    second = train_run(tmp_path, [*over, f"+callbacks.recorder.path={split}"], run_name="split")
    assert second["global_step"] == 6
    assert read_losses(split) == read_losses(straight) and len(read_losses(straight)) == 6
    # Validation per source and overall.
    assert {"val/loss", "val/s1/loss", "val/s2/loss"} <= set(second["metrics"])
    assert all(2.0 < second["metrics"][f"val/{n}/loss"] < 7.0 for n in ("s1", "s2"))
