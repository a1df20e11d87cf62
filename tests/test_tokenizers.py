"""Every tokenizer kind: round trips, specs that rebuild the same tokenizer, offline errors."""

from __future__ import annotations

import json
import pickle

import pytest

from lm_lightning.data import tokenizers as T
from lm_lightning.errors import UserError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def test_char_round_trip_and_vocabulary():
    tok = T.CharTokenizer(TEXT)
    assert tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT) and max(ids) < tok.vocab_size
    assert tok.decode(ids) == TEXT
    # Ids follow sorted character order (nanoGPT's stoi).
    assert tok.encode("\n") == [0] and tok.chars == "".join(sorted(set(TEXT)))
    with pytest.raises(UserError, match="not in the vocabulary"):
        tok.encode("Zebra!")


def test_char_beyond_bmp_uses_slow_path():
    text = "ab😀c\n"
    tok = T.CharTokenizer(text)
    assert tok.decode(tok.encode(text)) == text


def test_byte_round_trip_any_text():
    tok = T.ByteTokenizer()
    text = "héllo wörld — 😀\n"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and tok.vocab_size == 256
    assert tok.decode(ids) == text


def test_bpe_trains_compresses_and_round_trips():
    tok = T.train_bpe(iter([TEXT]), vocab_size=300)
    assert 257 <= tok.vocab_size <= 300
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode()) / 2  # merges learned from the corpus
    unseen = "Unseen wörds 123\n"
    assert tok.decode(tok.encode(unseen)) == unseen  # byte-level: nothing is out of vocabulary
    assert tok.eot_id is not None


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_spec_is_plain_data_and_rebuilds_the_same_tokenizer(kind):
    tok = {"char": lambda: T.CharTokenizer(TEXT), "byte": T.ByteTokenizer,
           "bpe": lambda: T.train_bpe(iter([TEXT]), 300)}[kind]()
    spec = tok.spec()
    assert json.loads(json.dumps(spec)) == spec  # plain containers only: weights_only-safe
    again = T.from_spec(pickle.loads(pickle.dumps(spec)))
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    assert again.encode(TEXT) == tok.encode(TEXT)


def test_gpt2_spec_embeds_its_tokenizer_so_it_works_offline():
    # A GPT-2-kind spec carries its tokenizer.json; rebuilding it needs no hub (here a small
    # byte-level BPE stands in for GPT-2's file, which cannot be downloaded in tests).
    bpe = T.train_bpe(iter([TEXT]), 300)
    spec = {"kind": "gpt2", "name": "gpt2", "json": bpe.to_json()}
    tok = T.from_spec(spec)
    assert tok.kind == "gpt2" and tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.spec()["json"] == bpe.to_json()


def test_gpt2_unavailable_offline_is_one_line_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        T.load_gpt2("gpt2")
    msg = str(info.value)
    assert "\n" not in msg and "'gpt2'" in msg and "HF_HOME" in msg and "data=text data.train_path=" in msg


def test_bpe_file_cache_round_trip(tmp_path):
    tok = T.train_bpe(iter([TEXT]), 280)
    path = tmp_path / "tok" / "tokenizer.json"
    T.save_bpe_file(tok, path)
    again = T.load_bpe_file(path)
    assert again.encode(TEXT) == tok.encode(TEXT)
    with pytest.raises(UserError, match="not found"):
        T.load_bpe_file(tmp_path / "missing.json")


def test_unknown_kind_is_user_error():
    with pytest.raises(UserError, match="unknown tokenizer kind"):
        T.from_spec({"kind": "sentencepiece"})
    assert T.from_spec(None) is None
