"""The hub recipes (data=wikitext2, wikitext103, tinystories) tokenize once into a shard folder in
the cache and train through the token-window path of data=tokens data.path=DIR (issue 21 item 4).

Hermetic: the recipes read local parquet/json files in the hub datasets' schema (hf_path=parquet|json
with hf_data_files), as the other hub tests do; no network, no fit.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate

from lm_lightning.data import cache
from lm_lightning.data.text import TextDataModule
from lm_lightning.data.token_data import TokenDataModule
from lm_lightning.data.tokens import TokenShards

datasets = pytest.importorskip("datasets")

ROWS = {"train": [" = Valkyria = \n", "\n", " The game began development in 2010 .\n"] * 60,
        "validation": [" = Tower Building = \n", "\n", " It was built in 1920 .\n"] * 20,
        "test": [" = Robert Boulter = \n", " He is an English actor .\n"] * 20}


def wikitext(tmp_path, splits=("train", "validation", "test")) -> dict[str, str]:
    files = {}
    for split in splits:
        path = tmp_path / f"{split}.parquet"
        datasets.Dataset.from_dict({"text": ROWS[split]}).to_parquet(str(path))
        files[split] = str(path)
    return files


def recipe(tmp_path, files, *extra: str) -> TextDataModule:
    given = "{" + ",".join(f"{k}:'{v}'" for k, v in files.items()) + "}"
    cfg = compose(["data=wikitext2", "data.hf_path=parquet", f"data.hf_data_files={given}", "tokenizer=byte",
                   "data.block_size=16", "data.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}", *extra])
    return instantiate(cfg.data)


def test_a_hub_recipe_trains_from_a_shard_folder_in_the_cache(tmp_path):
    dm = recipe(tmp_path, wikitext(tmp_path))
    dm.prepare_data()
    folder = dm.shard_dir
    assert folder is not None and folder.parent == tmp_path / "cache" and (folder / "meta.json").is_file()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["shards"] == {"train": ["train_000000.bin"], "val": ["val_000000.bin"], "test": ["test_000000.bin"]}
    assert meta["tokenizer"]["kind"] == "byte" and meta["dtype"] == "uint16"
    for split, names in meta["shards"].items():
        side = json.loads((folder / f"{names[0]}.json").read_text())
        assert side["tokens"] == meta["tokens"][split] and side["split"] == split
    dm.setup()
    # Every split is read from the folder, through the shard reader of data.path=DIR.
    for split in ("train", "val", "test"):
        f = dm._datasets[split]
        assert isinstance(f, TokenShards) and all(s.path.parent == folder for s in f.files)
    # The same windows as data=tokens data.path=<that folder>.
    tokens = TokenDataModule(path=str(folder), tokenizer={}, block_size=16, batch_size=4, seed=dm.seed)
    tokens.setup()
    assert tokens.vocab_size == dm.vocab_size and tokens.tokenizer.spec() == dm.tokenizer.spec()
    for step in (0, 5, 31):
        assert torch.equal(dm.train_dataloader().dataset.batch(step)["input_ids"],
                           tokens.train_dataloader().dataset.batch(step)["input_ids"])
    assert torch.equal(next(iter(dm.val_dataloader()))["labels"], next(iter(tokens.val_dataloader()))["labels"])
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_later_runs_share_the_folder_and_the_cache_key_still_applies(tmp_path):
    files = wikitext(tmp_path)
    first = recipe(tmp_path, files)
    first.prepare_data()
    stamp = (first.shard_dir / "train_000000.bin").stat().st_mtime_ns
    again = recipe(tmp_path, files)
    again.setup()  # no prepare_data: setup finds the folder
    assert again.shard_dir == first.shard_dir
    assert (first.shard_dir / "train_000000.bin").stat().st_mtime_ns == stamp  # not rewritten
    others = [recipe(tmp_path, files, "tokenizer=char"),  # another tokenizer
              recipe(tmp_path, files, "data.doc_boundaries=false"),  # what a document is
              recipe(tmp_path, files, "data.separator='\\n'")]  # how rows are joined
    for other in others:
        other.prepare_data()
    folders = {first.shard_dir} | {o.shard_dir for o in others}
    assert len(folders) == 4
    # The test split without a test file: test falls back to validation, in the same folder.
    no_test = recipe(tmp_path, {k: v for k, v in files.items() if k != "test"}, "~data.hf_splits.test")
    no_test.prepare_data()
    assert json.loads((no_test.shard_dir / "meta.json").read_text())["shards"].keys() == {"train", "val"}
    no_test.setup()
    assert no_test._datasets["test"].files[0].path.name == "val_000000.bin"


def test_a_half_written_folder_is_never_used(tmp_path, monkeypatch):
    files = wikitext(tmp_path)
    dm = recipe(tmp_path, files)
    final = cache.shard_dir_path(dm.cache_dir, dm.source, ["train", "val", "test"], dm.tokenizer.spec())
    real, calls = cache.write_tokens, []

    def dies_on_the_second_split(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill in the middle of tokenizing
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "write_tokens", dies_on_the_second_split)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    assert calls[0].parent != final and not final.exists()  # built elsewhere, and nothing under the final name
    monkeypatch.setattr(cache, "write_tokens", real)
    killed = final.with_name(f".{final.name}.{2**22 + 1}.tmp")  # a kill -9's leftover (no such pid)
    killed.mkdir()
    final.mkdir(parents=True)  # a folder without meta.json (not ours) is rebuilt, not read
    (final / "train_000000.bin").write_bytes(b"\0\0")
    again = recipe(tmp_path, files)
    again.setup()
    assert again.shard_dir == final and (final / "meta.json").is_file()
    train = again._datasets["train"]
    ids = train.read(0, len(train))
    assert bytes(ids[ids != again.tokenizer.eot_id].tolist()).decode() == "".join(ROWS["train"])  # whole
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [final.name]  # the leftover is cleared too


def test_an_old_tokens_config_still_builds_the_token_module(tmp_path):
    # A checkpoint's run config from before data=tokens had its own module (evaluate reads it).
    ids = tmp_path / "t.bin"
    ids.write_bytes(bytes(range(200)) * 4)
    (tmp_path / "t.bin.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 65536}))
    dm = TextDataModule(source="tokens", train_path=str(ids), val_path=str(ids), tokenizer={},
                        cache_dir=str(tmp_path / "cache"), block_size=8, batch_size=2)
    assert isinstance(dm, TokenDataModule) and dm.vocab_size == 65536
