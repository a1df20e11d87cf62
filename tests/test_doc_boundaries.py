"""Document boundaries: the end-of-text token between documents, per source; tokenizers, cache keys, defaults.

bos_aligned windows and validation coverage: test_bos_aligned.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hydra.utils import instantiate
from reliability_helpers import compose
from test_text_data import make_dm

from lm_lightning.data import cache
from lm_lightning.data import documents as D
from lm_lightning.data import tokenizers as T
from lm_lightning.data.text import TextDataModule
from lm_lightning.data.tokens import TokenFile, read_meta
from lm_lightning.errors import UserError
from lm_lightning.run.plan import prepare

WORDS = "the cat sat on a mat and the dog ran far away into the dark woods".split()


def story(rng: random.Random, lines: int) -> str:
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) + "\n" for _ in range(lines))


def stories(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [story(rng, rng.randint(1, 12)) for _ in range(n)]




def split_tokens(dm: TextDataModule, split: str) -> np.ndarray:
    dm.prepare_data()
    dm.setup()
    f = dm._datasets[split]
    return f.read(0, len(f))


def documents_of(ids: np.ndarray, eot: int) -> list[np.ndarray]:
    """The token array cut at (and without) its EOT tokens."""
    return [d if k == 0 else d[1:] for k, d in enumerate(np.split(ids, np.flatnonzero(ids == eot)))]


def hf_files(files: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}:'{v}'" for k, v in files.items()) + "}"


def encode(tok, text: str) -> list[int]:
    return tok.encode_array(text).tolist()


# -- the end-of-text token between documents, never inside one -----------------------------------
@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_several_files_are_documents_with_eot_between(tmp_path, monkeypatch, kind):
    monkeypatch.setattr("lm_lightning.data.sources.CHUNK_CHARS", 64)  # documents span several chunks
    docs = stories(6)
    for i, d in enumerate(docs):
        (tmp_path / f"part{i}.txt").write_text(d)
    (tmp_path / "val.txt").write_text(docs[0])
    tok = {"kind": kind, "vocab_size": 300} if kind == "bpe" else {"kind": kind}
    dm = make_dm(tmp_path, train_path=str(tmp_path / "part*.txt"), val_path=str(tmp_path / "val.txt"),
                 tokenizer=tok, doc_boundaries="auto")
    ids = split_tokens(dm, "train")
    t = dm.tokenizer
    assert t.eot_id is not None and (ids == t.eot_id).sum() == len(docs) - 1
    assert [d.tolist() for d in documents_of(ids, t.eot_id)] == [encode(t, d) for d in docs]
    assert (split_tokens(dm, "val") != t.eot_id).all()  # one file: one document
    assert t.decode(ids.tolist()) == D.EOT_TEXT.join(docs)


@pytest.mark.parametrize("sep, given", [("\n\n\n", "\\n\\n\\n"), ("<|endoftext|>", "<|endoftext|>")])
def test_doc_separator_splits_a_single_file_and_is_dropped(tmp_path, sep, given):
    docs = stories(40, seed=1)
    text = sep.join(docs)
    (tmp_path / "a.txt").write_text(text)
    dm = make_dm(tmp_path, train_path=str(tmp_path / "a.txt"), doc_separator=given, doc_boundaries="auto")
    cut = int(len(text) * 0.9)
    assert text.find(sep, cut - len(sep) + 1) >= cut  # the split point is not inside a separator
    t = dm.tokenizer
    for split, part in (("train", text[:cut]), ("val", text[cut:])):  # nanoGPT's character-exact split
        ids = split_tokens(dm, split)
        want = [d for d in part.split(sep) if d]
        assert [d.tolist() for d in documents_of(ids, t.eot_id)] == [encode(t, d) for d in want]
    # The documents' characters (not the separator's "<|>") and the end-of-text id last.
    assert t.vocab_size == len(set("".join(docs))) + 1 and t.eot_id == t.vocab_size - 1


def test_wikitext_articles_are_documents_and_sections_are_not(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows, titles = [], ["Valkyria Chronicles III", "Tower Building", "Robert Boulter"]
    for i, title in enumerate(titles):
        rows += ["\n", f" = {title} = \n", "\n", f" {title} is article {i} .\n", "\n", " = = Career = = \n",
                 " = = = 2000 – 05 = = = \n", f" More about {title} , a = b .\n"]
    files = {}
    for split in ("train", "validation", "test"):
        datasets.Dataset.from_dict({"text": rows}).to_parquet(str(tmp_path / f"{split}.parquet"))
        files[split] = str(tmp_path / f"{split}.parquet")
    dm = make_dm(tmp_path, source="hf", hf_path="parquet", hf_data_files=files, separator="",
                 tokenizer={"kind": "byte"}, documents="wikitext", doc_boundaries="auto")
    ids = split_tokens(dm, "train")
    articles = [bytes(d.tolist()).decode() for d in documents_of(ids, 256)]
    assert len(articles) == 3 and "".join(articles) == "".join(rows)
    assert [a.split("\n")[1 if i == 0 else 0] for i, a in enumerate(articles)] == [f" = {t} = " for t in titles]
    assert all(a.count(" = = Career = = ") == 1 for a in articles)
    assert D.is_article_heading(" = Title = \n") and not D.is_article_heading(" = = Section = = \n")


def test_tinystories_rows_are_documents(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = stories(30, seed=2) + [""] + ["Once upon a time.\n\nThe end."]  # an empty row is no document
    files = {}
    for split in ("train", "validation"):
        datasets.Dataset.from_dict({"text": docs}).to_json(str(tmp_path / f"{split}.json"))
        files[split] = str(tmp_path / f"{split}.json")
    cfg = compose(tmp_path, ["data=tinystories", "data.hf_path=json", f"data.hf_data_files={hf_files(files)}",
                             "tokenizer.vocab_size=300", f"data.cache_dir={tmp_path / 'cache'}"])
    assert cfg.data.documents == "rows" and cfg.data.doc_boundaries == "auto" and not cfg.data.bos_aligned
    dm = instantiate(cfg.data)
    ids = split_tokens(dm, "train")
    t = dm.tokenizer
    assert (ids == t.eot_id).sum() == len(docs) - 2
    assert [d.tolist() for d in documents_of(ids, t.eot_id)] == [t.encode(d) for d in docs if d]


def test_document_chunks_and_separators_across_pieces():
    text = "ab||cd|||e||" * 50
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    events = list(D.normalise(D.split_on(pieces, "||")))
    docs, cur = [], ""
    for e in events + [D.BOUNDARY]:
        if e is D.BOUNDARY:
            docs, cur = docs + [cur], ""
        else:
            cur += e
    assert docs == [d for d in text.split("||") if d]
    chunks = list(D.doc_chunks(iter(events), size=10))
    assert len(chunks) > 5 and all(isinstance(c, list) for c in chunks)
    tok = T.ByteTokenizer(eot=True)
    ids = np.concatenate([D.encode_chunk(tok, c) for c in chunks])
    assert [bytes(d.tolist()).decode() for d in documents_of(ids, 256)] == docs


@pytest.mark.slow
def test_parallel_tokenization_of_documents_equals_serial(tmp_path, monkeypatch):
    from lm_lightning.data.sources import TextFiles

    monkeypatch.setattr("lm_lightning.data.sources.CHUNK_CHARS", 2048)
    docs = stories(400, seed=8)
    (tmp_path / "a.txt").write_text("<|endoftext|>".join(docs))
    src = TextFiles(str(tmp_path / "a.txt"), val_path=str(tmp_path / "a.txt"), doc_boundaries=True,
                    doc_separator="<|endoftext|>")
    tok = T.CharTokenizer(src.text("train"), eot=True)
    for name, workers in (("serial", 1), ("parallel", 2)):
        cache.write_tokens(src.chunks("train"), tok, tmp_path / f"{name}.bin", tok.vocab_size, workers=workers)
    a, b = (np.fromfile(tmp_path / f"{n}.bin", dtype=np.uint16) for n in ("serial", "parallel"))
    np.testing.assert_array_equal(a, b)
    assert tok.decode(a.tolist()) == "<|endoftext|>".join(docs)


# -- tokenizers: an end-of-text id for every kind ------------------------------------------------
def test_byte_and_char_get_an_extra_end_of_text_id_only_when_asked():
    plain_bytes = T.ByteTokenizer()
    assert (plain_bytes.vocab_size, plain_bytes.eot_id, plain_bytes.spec()) == (256, None, {"kind": "byte"})
    b = T.ByteTokenizer(eot=True)
    assert (b.vocab_size, b.eot_id) == (257, 256) and b.decode([104, 105, 256, 195, 169]) == "hi<|endoftext|>é"
    assert T.from_spec(b.spec()).eot_id == 256
    plain, eot = T.CharTokenizer("hello\n"), T.CharTokenizer("hello\n", eot=True)
    assert plain.spec() == {"kind": "char", "chars": "\nehlo"} and plain.eot_id is None
    assert (eot.vocab_size, eot.eot_id) == (6, 5) and eot.encode("hello") == plain.encode("hello")
    assert eot.decode(eot.encode("he") + [5] + eot.encode("lo")) == "he<|endoftext|>lo"
    assert T.from_spec(eot.spec()).vocab_size == 6


def test_a_tokenizer_without_end_of_text_is_a_user_error(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["a b c\n"] * 10, trainers.BpeTrainer(vocab_size=270, show_progress=False,
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tok.json"))
    for i in range(2):
        (tmp_path / f"d{i}.txt").write_text("a b c\n")
    dm = make_dm(tmp_path, train_path=str(tmp_path / "d*.txt"), doc_boundaries="auto",
                 tokenizer={"kind": "bpe", "path": str(tmp_path / "tok.json")})
    with pytest.raises(UserError, match="no end-of-text token.*doc_boundaries=false"):
        dm.prepare_data()


def test_a_checkpoint_tokenizer_without_end_of_text_turns_auto_boundaries_off(tmp_path):
    # evaluate with a checkpoint from before document boundaries, on a several-file glob
    for i in range(2):
        (tmp_path / f"d{i}.txt").write_text(f"doc {i}\n")
    old = T.CharTokenizer("doc 01\n")
    files = dict(train_path=str(tmp_path / "d*.txt"), val_path=str(tmp_path / "d0.txt"))
    dm = make_dm(tmp_path, **files, doc_boundaries="auto")
    dm.use_tokenizer(old)
    assert not dm.source.doc_boundaries and split_tokens(dm, "train").tolist() == old.encode("doc 0\ndoc 1\n")
    forced = make_dm(tmp_path, **files, doc_boundaries=True)
    forced.use_tokenizer(old)
    with pytest.raises(UserError, match="char tokenizer has no end-of-text token"):
        forced.prepare_data()


# -- cache keys and defaults ---------------------------------------------------------------------
def test_cache_key_follows_the_boundary_settings(tmp_path):
    for i in range(3):
        (tmp_path / f"p{i}.txt").write_text(f"doc {i}\n\n\nsecond half {i}\n")
    base = dict(train_path=str(tmp_path / "p*.txt"), tokenizer={"kind": "byte"})
    paths = {}
    settings = {"off": {"doc_boundaries": False}, "auto": {"doc_boundaries": "auto"}, "on": {"doc_boundaries": True},
                "sep": {"doc_boundaries": True, "doc_separator": "\\n\\n\\n"}}
    for name, kw in settings.items():
        dm = make_dm(tmp_path, **base, **kw)
        dm.prepare_data()
        paths[name] = dm.paths["train"]
    assert paths["auto"] == paths["on"] and len({paths["off"], paths["on"], paths["sep"]}) == 3
    off = TokenFile(paths["off"])
    assert 256 not in off.read(0, len(off)).tolist()
    assert read_meta(paths["sep"])["source"]["docs"] == {"eot": True, "sep": "\n\n\n"}
    assert "docs" not in read_meta(paths["off"])["source"]


def test_defaults_on_for_documents_off_for_one_file(tmp_path):
    (tmp_path / "input.txt").write_text("".join(stories(200, seed=5)))
    for i in range(2):
        (tmp_path / f"f{i}.txt").write_text(stories(3, seed=i)[0])
    on = {"data=wikitext2": True, "data=tinystories": True, f"data=text data.train_path={tmp_path}/f*.txt": True,
          f"data=text data.train_path={tmp_path}/input.txt": False}
    for overrides, want in on.items():
        dm = instantiate(compose(tmp_path, overrides.split()).data)
        assert dm.source.doc_boundaries is want, overrides


@pytest.mark.parametrize("name", ["shakespeare_char", "shakespeare_char_fast"])
def test_shakespeare_recipes_are_unchanged(tmp_path, name):
    text = "".join(stories(300, seed=6)) + "ROMEO: O, she doth teach the torches to burn bright!\n"
    (tmp_path / "input.txt").write_text(text)
    from conftest import compose as compose_plain

    cfg = compose_plain([f"experiment={name}", f"data.train_path={tmp_path / 'input.txt'}",
                         f"data.cache_dir={tmp_path / 'cache'}"])
    dm = instantiate(cfg.data)
    assert not dm.source.doc_boundaries and not dm.bos_aligned
    chars = "".join(sorted(set(text)))
    assert dm.vocab_size == len(chars) and dm.tokenizer.spec() == {"kind": "char", "chars": chars}
    cut = int(len(text) * 0.9)  # nanoGPT's split: the first 90% of the characters train
    assert split_tokens(dm, "train").tolist() == dm.tokenizer.encode(text[:cut])
    assert split_tokens(dm, "val").tolist() == dm.tokenizer.encode(text[cut:])
    # The same cache file as before document boundaries existed.
    before = {"kind": "text", "files": dm.source.identity("train")["files"], "part": "train", "val_fraction": 0.1}
    assert dm.paths["train"] == cache.cache_path(dm.cache_dir, before, "train", dm.tokenizer.spec())


@pytest.mark.parametrize("bad, match", [
    (["data.doc_boundaries=maybe"], "doc_boundaries must be true, false or auto"),
    (["+data.documents=rows"], "data.documents is for Hugging Face datasets"),
    (["data.bos_aligned=1"], "bos_aligned must be true or false"),
    (["data=tokens", "data.val_path=A", "data.dtype=uint16", "data.doc_boundaries=yes"],
     "doc_boundaries must be true, false or auto"),
])
def test_bad_boundary_settings_are_one_line_user_errors(tmp_path, bad, match):
    (tmp_path / "a.txt").write_text("hello\n" * 100)
    data = [] if bad[0].startswith("data=") else ["data=text"]
    bad = [o.replace("=A", f"={tmp_path / 'a.txt'}") for o in bad]
    cfg = compose(tmp_path, [*data, f"data.train_path={tmp_path / 'a.txt'}", *bad])
    with pytest.raises(UserError, match=match):
        prepare(cfg)


def test_hub_boundaries_need_to_know_what_a_document_is(tmp_path):
    with pytest.raises(UserError, match="needs data.documents"):
        make_dm(tmp_path, source="hf", hf_path="json", doc_boundaries=True)
    with pytest.raises(UserError, match="doc_separator is for local text"):
        make_dm(tmp_path, source="hf", hf_path="json", documents="rows", doc_separator="x")
    assert not make_dm(tmp_path, source="hf", hf_path="json", doc_boundaries="auto").source.doc_boundaries
