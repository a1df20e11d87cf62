"""Text language modelling as a data module: local text files or a Hugging Face dataset.

``prepare_data`` resolves the tokenizer (reads the characters, trains or reuses a BPE, loads
GPT-2's) and tokenizes each split once into a cached token file; ``setup`` opens those files
and the loaders cut windows from them (the shared part: :mod:`lm_lightning.data.windows`). The
tokenizer's plain spec is the module's ``state_dict()``, so it is stored in every checkpoint and
evaluate / generate / export need nothing else. Document boundaries (the tokenizer's
end-of-text id between documents) and ``bos_aligned`` training windows: see
:mod:`lm_lightning.data.documents`. Token files and shard folders are ``data=tokens``
(:class:`~lm_lightning.data.token_data.TokenDataModule`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_lightning.data import cache
from lm_lightning.data.documents import check_bos_aligned, check_doc_options, no_eot_message, strings
from lm_lightning.data.sources import HubDataset, TextFiles
from lm_lightning.data.splits import SPLITS, resolve_split
from lm_lightning.data.tokenizers import (
    GPT2_VOCAB_SIZE,
    KINDS,
    CharTokenizer,
    load_bpe_file,
    ready_made,
    save_bpe_file,
    train_bpe,
)
from lm_lightning.data.tokens import TokenFile, TokenShards, open_shard_split, shard_dir_meta
from lm_lightning.data.windows import TokenWindowsModule
from lm_lightning.errors import UserError


class TextDataModule(TokenWindowsModule):
    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is TextDataModule and kwargs.get("source") == "tokens":
            # A run config saved before data=tokens had its own module (a checkpoint's, read by
            # evaluate): its keys are TokenDataModule's.
            from lm_lightning.data.token_data import TokenDataModule

            return TokenDataModule(**{k: v for k, v in kwargs.items() if k != "source"})
        return super().__new__(cls)

    def __init__(self, source: str = "text", tokenizer: dict[str, Any] | None = None,
                 cache_dir: str = ".cache/lm_lightning", prepare_workers: int | None = None,
                 train_path: Any = None, val_path: Any = None, test_path: Any = None,
                 val_fraction: float = 0.1, hf_path: str | None = None, hf_name: str | None = None,
                 hf_data_files: Any = None, hf_splits: dict[str, str] | None = None, text_field: str = "text",
                 separator: str = "\n", doc_boundaries: bool | str = False, doc_separator: str | None = None,
                 documents: str | None = None, bos_aligned: bool = False, **windows: Any) -> None:
        super().__init__(tokenizer=tokenizer, **windows)
        self.cache_dir, self.prepare_workers = Path(cache_dir), prepare_workers
        if source == "text":
            check_doc_options(source, documents, doc_separator)
            self.source: TextFiles | HubDataset = TextFiles(train_path, val_path, test_path, val_fraction,
                                                            doc_boundaries, doc_separator)
        elif source == "hf":
            check_doc_options(source, documents, doc_separator)
            self.source = HubDataset(hf_path, hf_name, hf_data_files, hf_splits, text_field, separator,
                                     documents, doc_boundaries)
        else:
            raise ValueError(f"data.source must be text or hf (token files: data=tokens), got {source!r}")
        self.source_kind = source
        self.bos_aligned = check_bos_aligned(bos_aligned, self.source)
        if self.tok_cfg.get("kind") not in KINDS:
            raise ValueError(f"tokenizer.kind must be one of {list(KINDS)}, got {self.tok_cfg.get('kind')!r}")
        self.paths: dict[str, Path] = {}
        self.shard_dir: Path | None = None  # a hub dataset's shard folder in the cache, once prepared

    def _doc_boundaries(self) -> bool:
        return bool(self.source.doc_boundaries)

    # -- tokenizer ---------------------------------------------------------------------------
    def _configured_vocab(self) -> int:
        kind = self.tok_cfg.get("kind")
        if kind == "bpe" and not self.tok_cfg.get("path"):
            return int(self.tok_cfg.get("vocab_size", 10000))
        if kind == "gpt2":
            return max(GPT2_VOCAB_SIZE, self.tokenizer.vocab_size)
        return self.tokenizer.vocab_size

    def use_tokenizer(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        super().use_tokenizer(tokenizer, vocab_size)
        self.paths = {}
        source = self.source
        if source.doc_boundaries and getattr(tokenizer, "eot_id", None) is None and source.auto_boundaries:
            source.no_documents()  # a checkpoint from before document boundaries: its data had none

    def _build_tokenizer(self):
        kind = self.tok_cfg.get("kind")
        eot = bool(self.source.doc_boundaries)
        if kind == "char":
            # nanoGPT's vocabulary: every character of the corpus (val/test characters included).
            chars: set[str] = set()
            for split in SPLITS:
                for text in strings(self.source.chunks(split)):
                    chars.update(text)
            return CharTokenizer("".join(chars), eot=eot)
        if kind == "bpe":
            return self._bpe()
        return ready_made(self.tok_cfg, eot)

    def _bpe(self):
        path = self.tok_cfg.get("path")
        if path and Path(path).is_file():
            return load_bpe_file(path)
        size = int(self.tok_cfg.get("vocab_size", 10000))
        if not path:
            key = cache.digest({"source": self.source.identity("train"), "vocab_size": size,
                                "min_frequency": self.tok_cfg.get("min_frequency", 2)})
            path = self.cache_dir / f"tokenizer-bpe{size}-{key}.json"
            if path.is_file():
                return load_bpe_file(path)
        tok = train_bpe(strings(self.source.chunks("train")), size, int(self.tok_cfg.get("min_frequency", 2)))
        save_bpe_file(tok, path)
        return tok

    # -- preparation -------------------------------------------------------------------------
    def _has_split(self, split: str) -> bool:
        if isinstance(self.source, HubDataset):
            return split in self.source.splits
        return True  # local text: TextFiles reads the validation text for a test split without files

    def _splits(self) -> list[str]:
        return [s for s in SPLITS if resolve_split(s, self._has_split) == s]

    def prepare_data(self) -> None:
        """Tokenize every split into the cache (once; later runs reuse the files).

        A hub dataset becomes one shard folder (:func:`lm_lightning.data.cache.build_shard_dir`),
        read as ``data=tokens data.path=DIR`` reads one; local text one token file per split.
        """
        tok = self.tokenizer
        if self.source.doc_boundaries and getattr(tok, "eot_id", None) is None:
            raise UserError(no_eot_message(tok))
        if isinstance(self.source, HubDataset):
            self.shard_dir = cache.build_shard_dir(self.source, self._splits(), tok, self.vocab_size,
                                                   self.cache_dir, self.prepare_workers)
            meta = shard_dir_meta(self.shard_dir)
            self.paths = {s: self.shard_dir / names[0] for s, names in meta["shards"].items()}
        else:
            for split in self._splits():
                self.paths[split] = cache.build_split(self.source, split, tok, self.vocab_size, self.cache_dir,
                                                      self.prepare_workers)
        if self.bos_aligned:
            self.doc_starts()  # a split without documents is reported before the run starts

    def _token_file(self, split: str) -> TokenFile | TokenShards:
        split = resolve_split(split, self._has_split)
        if isinstance(self.source, HubDataset):
            folder = cache.shard_dir_path(self.cache_dir, self.source, self._splits(), self.tokenizer.spec())
            if not (folder / "meta.json").is_file():
                self.prepare_data()
            self.shard_dir = folder
            return open_shard_split(folder, split)
        if split not in self.paths:
            self.paths[split] = cache.cache_path(self.cache_dir, self.source.identity(split), split,
                                                 self.tokenizer.spec())
            if not self.paths[split].is_file():
                self.prepare_data()
        return TokenFile(self.paths[split])
