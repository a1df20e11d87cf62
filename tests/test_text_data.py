"""Text data: every source, the token cache, memmap windows, evaluation coverage, augmentation."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from lm_lightning.data import cache
from lm_lightning.data.sources import TextFiles, _cut_chunks
from lm_lightning.data.text import TextDataModule
from lm_lightning.data.token_data import TokenDataModule
from lm_lightning.data.tokens import RandomWindows, SequentialWindows, TokenFile
from lm_lightning.errors import UserError
from lm_lightning.lit.objectives import IGNORE_INDEX

WORDS = "the cat sat on a mat and the dog ran far away into the dark woods".split()


def corpus(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n" for _ in range(n_lines))


def make_dm(tmp_path, **kw) -> TextDataModule | TokenDataModule:
    kw.setdefault("tokenizer", {"kind": "char"})
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("block_size", 16)
    kw.setdefault("batch_size", 4)
    if kw.get("source") == "tokens":  # token files have their own data module
        return TokenDataModule(**{k: v for k, v in kw.items() if k != "source"})
    return TextDataModule(**kw)


# -- sources ---------------------------------------------------------------------------------
def test_text_source_fraction_split_is_character_exact(tmp_path):
    text = corpus()
    (tmp_path / "a.txt").write_text(text)
    src = TextFiles(str(tmp_path / "a.txt"), val_fraction=0.1)
    cut = int(len(text) * 0.9)
    assert src.text("train") == text[:cut] and src.text("val") == text[cut:]
    assert src.text("test") == src.text("val")  # no test file: the validation split


def test_text_source_globs_and_missing_files(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(f"file {i}\n")
    (tmp_path / "val.txt").write_text("validation\n")
    src = TextFiles(str(tmp_path / "part*.txt"), val_path=str(tmp_path / "val.txt"))
    assert src.text("train") == "file 0\nfile 1\nfile 2\n" and src.text("val") == "validation\n"
    with pytest.raises(UserError, match="no file matches"):
        TextFiles(str(tmp_path / "nope*.txt"))
    with pytest.raises(UserError, match="train_path is required"):
        TextFiles(None)


def test_chunks_cut_at_line_starts_and_lose_nothing():
    text = corpus(2000)
    pieces = [text[i:i + 777] for i in range(0, len(text), 777)]
    chunks = list(_cut_chunks(iter(pieces), size=3000))
    assert "".join(chunks) == text and len(chunks) > 3
    assert all(c.endswith("\n") for c in chunks[:-1])


def test_hf_datasets_path_with_local_files_in_wikitext_schema(tmp_path):
    # WikiText rows are lines that keep their newline, with empty rows, in a "text" column.
    datasets = pytest.importorskip("datasets")
    rows = {"train": [" = Valkyria = \n", "\n", " The game began development in 2010 .\n"] * 40,
            "validation": [" = Tower Building = \n", "\n", " It was built in 1920 .\n"] * 10,
            "test": [" = Robert Boulter = \n", " He is an English actor .\n"] * 10}
    files = {}
    for split, lines in rows.items():
        path = tmp_path / f"{split}.parquet"
        datasets.Dataset.from_dict({"text": lines}).to_parquet(str(path))
        files[split] = str(path)
    dm = make_dm(tmp_path, source="hf", hf_path="parquet", hf_data_files=files, separator="",
                 tokenizer={"kind": "byte"})
    dm.prepare_data()
    dm.setup()
    for split, ours in (("train", "train"), ("validation", "val"), ("test", "test")):
        tokens = dm._datasets[ours].read(0, len(dm._datasets[ours]))
        assert bytes(tokens.tolist()).decode() == "".join(rows[split])


def test_hub_dataset_offline_is_one_line_user_error(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty"))
    dm = make_dm(tmp_path, source="hf", hf_path="Salesforce/wikitext", hf_name="wikitext-2-raw-v1",
                 tokenizer={"kind": "byte"})
    with pytest.raises(UserError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "\n" not in msg and "Salesforce/wikitext" in msg and "HF_DATASETS_CACHE" in msg
    assert "data=text data.train_path=" in msg


@pytest.mark.parametrize("fmt", ["npy", "bin-sidecar", "ids-dtype"])
def test_token_files(tmp_path, fmt):
    ids = np.arange(70000, dtype=np.uint32)  # ids above 65535 need uint32
    train = tmp_path / {"npy": "t.npy", "bin-sidecar": "t.bin", "ids-dtype": "t.ids"}[fmt]
    if fmt == "npy":
        np.save(train, ids)
    else:
        ids.tofile(train)
    if fmt == "bin-sidecar":
        train.with_name("t.bin.json").write_text(json.dumps({"dtype": "uint32", "vocab_size": 70000}))
    kw = {"dtype": "uint32", "vocab_size": 70000} if fmt == "ids-dtype" else {}
    if fmt == "npy":
        kw["vocab_size"] = 70000
    dm = make_dm(tmp_path, source="tokens", train_path=str(train), val_path=str(train), tokenizer={}, **kw)
    assert dm.vocab_size == 70000
    dm.setup()
    assert len(dm._datasets["train"]) == 70000
    np.testing.assert_array_equal(dm._datasets["val"].read(65530, 10), np.arange(65530, 65540))
    b = next(iter(dm.train_dataloader()))
    assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])


def test_token_file_errors(tmp_path):
    raw = tmp_path / "x.bin"
    np.arange(11, dtype=np.uint16).tofile(raw)
    with pytest.raises(UserError, match="dtype unknown"):
        TokenFile(raw)
    with pytest.raises(UserError, match="not a multiple"):
        TokenFile(raw, "uint32")
    with pytest.raises(UserError, match="not found"):
        TokenFile(tmp_path / "missing.bin", "uint16")


# -- cache ------------------------------------------------------------------------------------
def test_cache_is_reused_and_keyed_by_tokenizer_and_content(tmp_path):
    (tmp_path / "a.txt").write_text(corpus())
    dm = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"))
    dm.prepare_data()
    path = dm.paths["train"]
    stamp = path.stat().st_mtime_ns
    meta = json.loads(open(f"{path}.json").read())
    assert meta["dtype"] == "uint16" and meta["tokens"] == len(TokenFile(path))
    again = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"))
    again.prepare_data()
    assert again.paths["train"] == path and path.stat().st_mtime_ns == stamp  # not rewritten
    other = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"), tokenizer={"kind": "byte"})
    other.prepare_data()
    assert other.paths["train"] != path
    (tmp_path / "a.txt").write_text(corpus(seed=1) + "changed\n")
    os.utime(tmp_path / "a.txt", (1, 1))
    changed = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"))
    changed.prepare_data()
    assert changed.paths["train"] != path


def test_bpe_tokenizer_is_trained_once_and_cached(tmp_path):
    (tmp_path / "a.txt").write_text(corpus(800))
    dm = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"), tokenizer={"kind": "bpe", "vocab_size": 300})
    assert dm.vocab_size == 300  # known without training
    dm.prepare_data()
    files = list((tmp_path / "cache").glob("tokenizer-bpe300-*.json"))
    assert len(files) == 1
    again = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"), tokenizer={"kind": "bpe", "vocab_size": 300})
    assert again.tokenizer.to_json() == dm.tokenizer.to_json()
    text = (tmp_path / "a.txt").read_text()
    assert dm.tokenizer.decode(dm.tokenizer.encode(text)) == text


@pytest.mark.slow
def test_parallel_tokenization_equals_serial(tmp_path, monkeypatch):
    text = corpus(6000)
    (tmp_path / "a.txt").write_text(text)
    src = TextFiles(str(tmp_path / "a.txt"), val_path=str(tmp_path / "a.txt"))
    tok = __import__("lm_lightning.data.tokenizers", fromlist=["x"]).CharTokenizer(text)
    monkeypatch.setattr("lm_lightning.data.sources.CHUNK_CHARS", 4096)
    cache.write_tokens(src.chunks("train"), tok, tmp_path / "serial.bin", tok.vocab_size, workers=1)
    cache.write_tokens(src.chunks("train"), tok, tmp_path / "parallel.bin", tok.vocab_size, workers=2)
    a = np.fromfile(tmp_path / "serial.bin", dtype=np.uint16)
    b = np.fromfile(tmp_path / "parallel.bin", dtype=np.uint16)
    np.testing.assert_array_equal(a, b)
    assert tok.decode(a.tolist()) == text


# -- windows ----------------------------------------------------------------------------------
def token_file(tmp_path, n=10_000, vocab=1000) -> TokenFile:
    path = tmp_path / "tok.npy"
    np.save(path, (np.arange(n) % vocab).astype(np.uint16))
    return TokenFile(path)


def test_training_windows_are_a_pure_function_of_seed_step_rank(tmp_path):
    tf = token_file(tmp_path)
    a = RandomWindows(tf, 4, 32, seed=7, steps_per_epoch=100)
    b = RandomWindows(token_file(tmp_path), 4, 32, seed=7, steps_per_epoch=100)
    assert torch.equal(a.batch(5)["input_ids"], b.batch(5)["input_ids"])
    assert not torch.equal(a.batch(5)["input_ids"], a.batch(6)["input_ids"])
    assert not torch.equal(RandomWindows(tf, 4, 32, seed=8, steps_per_epoch=100).batch(5)["input_ids"],
                           a.batch(5)["input_ids"])
    r0 = RandomWindows(tf, 4, 32, seed=7, steps_per_epoch=100, rank=0, world_size=2).batch(5)
    r1 = RandomWindows(tf, 4, 32, seed=7, steps_per_epoch=100, rank=1, world_size=2).batch(5)
    assert not torch.equal(r0["input_ids"], r1["input_ids"])
    # Windows are contiguous and labels are the inputs shifted by one.
    x, y = a.batch(3)["input_ids"], a.batch(3)["labels"]
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.all((y - x) % 1000 == 1)


def test_resume_replays_the_same_stream_and_epochs_end_on_boundaries(tmp_path):
    tf = token_file(tmp_path)
    full = [b["input_ids"] for b in RandomWindows(tf, 2, 8, seed=1, steps_per_epoch=10)]
    assert len(full) == 10
    resumed = [b["input_ids"] for b in RandomWindows(tf, 2, 8, seed=1, steps_per_epoch=10, start=4)]
    assert len(resumed) == 6 and all(torch.equal(p, q) for p, q in zip(full[4:], resumed))
    second_epoch = list(RandomWindows(tf, 2, 8, seed=1, steps_per_epoch=10, start=10))
    assert len(second_epoch) == 10


def test_workers_split_steps_without_changing_the_stream(tmp_path):
    tf = token_file(tmp_path)
    ds = RandomWindows(tf, 2, 8, seed=3, steps_per_epoch=6)
    serial = [b["input_ids"] for b in torch.utils.data.DataLoader(ds, batch_size=None)]
    parallel = [b["input_ids"] for b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)]
    assert len(parallel) == 6 and all(torch.equal(p, q) for p, q in zip(serial, parallel))


def test_eval_windows_cover_every_token_exactly_once(tmp_path):
    n = 1000
    path = tmp_path / "v.npy"
    np.save(path, np.arange(n, dtype=np.uint16))
    ds = SequentialWindows(TokenFile(path), batch_size=3, block_size=64)
    labels = torch.cat([ds[i]["labels"].flatten() for i in range(len(ds))])
    labels = labels[labels != IGNORE_INDEX]
    assert sorted(labels.tolist()) == list(range(1, n))  # each token after the first, once
    assert ds.num_labels() == n - 1
    capped = SequentialWindows(TokenFile(path), batch_size=3, block_size=64, max_batches=2)
    firsts = [int(capped[i]["input_ids"][0, 0]) for i in range(len(capped))]
    assert len(capped) == 2 and firsts[0] == 0 and firsts[1] > n // 2  # spread over the split


def test_augmentation_changes_training_windows_only_and_deterministically(tmp_path):
    tf = token_file(tmp_path)
    plain = RandomWindows(tf, 8, 64, seed=1, steps_per_epoch=10).batch(0)
    aug = RandomWindows(tf, 8, 64, seed=1, steps_per_epoch=10, augment_p=0.1).batch(0)
    again = RandomWindows(tf, 8, 64, seed=1, steps_per_epoch=10, augment_p=0.1).batch(0)
    assert torch.equal(aug["input_ids"], again["input_ids"])
    assert aug["input_ids"].shape == plain["input_ids"].shape
    steps = torch.diff(aug["input_ids"].flatten().remainder(1000))
    assert (steps == 0).any() and (steps == 2).any()  # duplicated and deleted tokens
    assert torch.equal(aug["labels"][:, :-1], aug["input_ids"][:, 1:])


def test_reading_a_large_token_file_keeps_memory_flat(tmp_path):
    psutil = pytest.importorskip("psutil")
    path = tmp_path / "big.bin"
    n = 48 << 20  # 96 MB of uint16
    with open(path, "wb") as fh:
        block = (np.arange(1 << 22) % 50000).astype(np.uint16).tobytes()
        for _ in range(n // (1 << 22)):
            fh.write(block)
    tf = TokenFile(path, "uint16")
    ds = RandomWindows(tf, 64, 512, seed=0, steps_per_epoch=10 ** 6)
    proc = psutil.Process()
    ds.batch(0)
    before = proc.memory_info().rss
    for step in range(300):  # ~10M tokens read from random places
        ds.batch(step)
    assert proc.memory_info().rss - before < 32 << 20


def test_datamodule_state_carries_the_tokenizer(tmp_path):
    text = corpus()
    (tmp_path / "a.txt").write_text(text)
    dm = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"))
    state = dm.state_dict()
    assert state["tokenizer"]["kind"] == "char" and state["vocab_size"] == dm.vocab_size
    json.dumps(state)  # plain data
    other = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"), tokenizer={"kind": "byte"})
    with pytest.raises(UserError, match="different tokenizer"):
        other.load_state_dict(state)
    dm.load_state_dict(state)  # the same tokenizer resumes fine


def test_token_files_from_elsewhere_train_without_a_tokenizer(tmp_path):
    # cs336-style .ids: raw uint16, no sidecar, no tokenizer file; the bpe choice of the
    # experiment cannot be honoured, so the run trains on the ids and carries no tokenizer.
    ids = tmp_path / "train.ids"
    (np.arange(3000) % 500).astype(np.uint16).tofile(ids)
    dm = make_dm(tmp_path, source="tokens", train_path=str(ids), val_path=str(ids), dtype="uint16",
                 vocab_size=500, tokenizer={"kind": "bpe", "vocab_size": 10000, "path": None})
    dm.prepare_data()
    assert dm.vocab_size == 500 and dm.state_dict()["tokenizer"] is None
