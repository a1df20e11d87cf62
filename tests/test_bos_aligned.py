"""bos_aligned training windows (start at a document start, resume exactly) and validation coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reliability_helpers import read_losses, train_run
from test_doc_boundaries import make_dm, split_tokens, stories

from lm_lightning.data import documents as D
from lm_lightning.data.tokens import RandomWindows, SequentialWindows, TokenFile
from lm_lightning.errors import UserError
from lm_lightning.lit.objectives import IGNORE_INDEX


# -- bos_aligned training windows -----------------------------------------------------------------
def doc_token_file(tmp_path, n_docs=300, seed=0):
    """Documents [1, 2, 3, ...] of random lengths (1 marks a document start), EOT (0) between."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(n_docs):
        parts += ([0] if k else []) + list(range(1, int(rng.integers(1, 40)) + 1))
    path = tmp_path / "docs.npy"
    np.save(path, np.asarray(parts, dtype=np.uint16))
    return TokenFile(path)


def test_bos_aligned_windows_start_at_document_starts_and_are_resumable(tmp_path):
    tf = doc_token_file(tmp_path)
    starts = D.doc_starts(tf, 0)
    assert starts[0] == 0 and (tf.read(0, len(tf))[starts] == 1).all() and len(starts) == 300
    aligned = RandomWindows(tf, 8, 32, seed=3, steps_per_epoch=12, doc_starts=starts)
    batches = [b["input_ids"] for b in aligned]
    assert all((b[:, 0] == 1).all() for b in batches) and all(b.shape == (8, 32) for b in batches)
    # Documents shorter than the window run on into the next one, after an EOT.
    assert any((b == 0).any() for b in batches)
    plain = RandomWindows(tf, 8, 32, seed=3, steps_per_epoch=12)
    assert not all((b["input_ids"][:, 0] == 1).all() for b in plain)
    resumed = list(RandomWindows(tf, 8, 32, seed=3, steps_per_epoch=12, start=5, doc_starts=starts))
    assert all(torch.equal(p, q["input_ids"]) for p, q in zip(batches[5:], resumed)) and len(resumed) == 7
    # Starts too close to the end for a full window are never drawn.
    assert aligned.doc_starts.max() <= len(tf) - 33 and len(aligned.doc_starts) < len(starts) + 1


def test_bos_aligned_through_the_data_module(tmp_path):
    docs = stories(40, seed=3)
    for i, d in enumerate(docs):
        (tmp_path / f"s{i:02d}.txt").write_text(d)
    dm = make_dm(tmp_path, train_path=str(tmp_path / "s*.txt"), val_fraction=0.2, doc_boundaries="auto",
                 bos_aligned=True, batch_size=16)
    ids = split_tokens(dm, "train")
    starts = set(dm.doc_starts().tolist())
    assert starts == {0, *(np.flatnonzero(ids == dm.tokenizer.eot_id) + 1).tolist()}
    batch = next(iter(dm.train_dataloader()))
    full = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], 1).numpy()
    for row in full:
        assert any(np.array_equal(ids[s:s + len(row)], row) for s in starts)
    assert dm.state_dict()["bos_aligned"] is True and dm.state_dict()["doc_boundaries"] is True


def test_bos_aligned_needs_documents(tmp_path):
    (tmp_path / "one.txt").write_text(stories(5)[0] * 20)
    with pytest.raises(UserError, match="bos_aligned=true needs document boundaries"):
        make_dm(tmp_path, train_path=str(tmp_path / "one.txt"), doc_boundaries="auto", bos_aligned=True)
    ids = tmp_path / "t.npy"
    np.save(ids, (np.arange(5000) % 200 + 1).astype(np.uint16))
    dm = make_dm(tmp_path, source="tokens", train_path=str(ids), val_path=str(ids), vocab_size=257,
                 tokenizer={"kind": "byte"}, bos_aligned=True)
    with pytest.raises(UserError, match="needs the tokenizer's end-of-text id"):
        dm.prepare_data()
    raw = tmp_path / "t.bin"
    (np.arange(5000) % 200 + 1).astype(np.uint16).tofile(raw)
    raw.with_name("t.bin.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 257,
                                                       "tokenizer": {"kind": "byte", "eot": True}}))
    dm = make_dm(tmp_path, source="tokens", train_path=str(raw), val_path=str(raw), tokenizer={}, bos_aligned=True)
    with pytest.raises(UserError, match="no end-of-text token .id 256., so it is one document"):
        dm.prepare_data()


# -- validation: every token once, whatever the training layout ---------------------------------
def test_validation_scores_every_token_once_with_boundaries(tmp_path):
    for i, d in enumerate(stories(12, seed=4)):
        (tmp_path / f"v{i}.txt").write_text(d)
    kw = dict(train_path=str(tmp_path / "v*.txt"), val_path=str(tmp_path / "v*.txt"), doc_boundaries=True,
              eval_batch_size=3, block_size=24)
    dm, aligned = make_dm(tmp_path, **kw), make_dm(tmp_path, bos_aligned=True, **kw)
    ids = split_tokens(dm, "val")
    labels = torch.cat([b["labels"].flatten() for b in dm.val_dataloader(capped=False)])
    kept = labels[labels != IGNORE_INDEX]
    assert kept.tolist() == ids[1:].tolist()
    assert (kept == dm.tokenizer.eot_id).sum() == 11  # the EOT tokens are scored too
    assert SequentialWindows(dm._datasets["val"], 3, 24).num_labels() == len(ids) - 1
    other = [b["labels"] for b in aligned.val_dataloader(capped=False)]
    assert all(torch.equal(a["labels"], b) for a, b in zip(dm.val_dataloader(capped=False), other))


@pytest.mark.slow
def test_bos_aligned_resume_is_exact(tmp_path, capsys):
    for i, d in enumerate(stories(60, seed=7)):
        (tmp_path / f"r{i:02d}.txt").write_text(d)
    common = ["data=text", f"data.train_path={tmp_path}/r*.txt", "data.bos_aligned=true", "data.num_workers=2",
              f"data.cache_dir={tmp_path / 'cache'}", "model.dropout=0.1", "trainer.deterministic=true",
              "trainer.max_steps=6", "trainer.val_check_interval=3"]
    rec = "+callbacks.recorder._target_=reliability_helpers.LossRecorder"
    train_run(tmp_path, [*common, rec, f"+callbacks.recorder.path={tmp_path / 'a.jsonl'}"], "straight")
    stop = ["+callbacks.stopper._target_=reliability_helpers.StopAt", "+callbacks.stopper.step=3"]
    first = train_run(tmp_path, [*common, rec, f"+callbacks.recorder.path={tmp_path / 'b.jsonl'}", *stop], "split")
    assert first["global_step"] == 3
    train_run(tmp_path, [*common, rec, f"+callbacks.recorder.path={tmp_path / 'b.jsonl'}"], "split")
    straight = read_losses(tmp_path / "a.jsonl")
    assert read_losses(tmp_path / "b.jsonl") == straight and len(straight) == 6
