"""Text language modelling as a LightningDataModule: local text, hub datasets or token files.

``prepare_data`` resolves the tokenizer (reads the characters, trains or reuses a BPE, loads
GPT-2's) and tokenizes each split once into a cached token file; ``setup`` opens those files
and the loaders cut windows from them (see :mod:`lm_lightning.data.tokens`). The tokenizer's
plain spec is the module's ``state_dict()``, so it is stored in every checkpoint and
evaluate / generate / export need nothing else. Document boundaries (the tokenizer's
end-of-text id between documents) and ``bos_aligned`` training windows: see
:mod:`lm_lightning.data.documents`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from lm_lightning.data import cache
from lm_lightning.data.base import LMDataModule
from lm_lightning.data.documents import (
    boundary_flag,
    check_bos_aligned,
    check_doc_options,
    no_eot_message,
    strings,
    training_doc_starts,
)
from lm_lightning.data.sources import SPLITS, HubDataset, TextFiles
from lm_lightning.data.streams import EpochLoader
from lm_lightning.data.tokenizers import (
    GPT2_VOCAB_SIZE,
    KINDS,
    ByteTokenizer,
    CharTokenizer,
    from_spec,
    load_bpe_file,
    load_gpt2,
    load_hf_tokenizer,
    save_bpe_file,
    train_bpe,
)
from lm_lightning.data.tokens import (
    RandomWindows,
    SequentialWindows,
    TokenFile,
    TokenShards,
    open_shard_split,
    open_tokens,
    read_meta,
    shard_dir_meta,
)
from lm_lightning.errors import UserError

log = logging.getLogger("lm_lightning")

class TextDataModule(LMDataModule):
    task = "text"
    uses_tokenizer = True
    # train() prepares (downloads, tokenizes) before creating the run directory.
    prepare_before_run = True
    metric_titles = {"val/next_token": "next-token cross-entropy (nats)", "val/next_token_acc": "next-token accuracy"}

    def __init__(self, source: str = "text", tokenizer: dict[str, Any] | None = None,
                 block_size: int = 256, batch_size: int = 32, eval_batch_size: int | None = None,
                 eval_batches: int | None = None, num_workers: int = 0, seed: int = 0,
                 cache_dir: str = ".cache/lm_lightning", prepare_workers: int | None = None,
                 augment_p: float = 0.0, epoch_tokens: int | None = None,
                 train_path: Any = None, val_path: Any = None, test_path: Any = None,
                 val_fraction: float = 0.1, dtype: str | None = None, vocab_size: int | None = None,
                 hf_path: str | None = None, hf_name: str | None = None, hf_data_files: Any = None,
                 hf_splits: dict[str, str] | None = None, text_field: str = "text", separator: str = "\n",
                 pin_memory: bool | None = None, doc_boundaries: bool | str = False,
                 doc_separator: str | None = None, documents: str | None = None,
                 bos_aligned: bool = False, path: Any = None, mixture: Any = None,
                 seq_warmup_steps: int = 0, seq_warmup_start: int = 16) -> None:
        super().__init__()
        if block_size < 1:
            raise ValueError(f"data.block_size must be positive, got {block_size}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        if not 0.0 <= augment_p < 0.5:
            raise ValueError(f"data.augment_p must be in [0, 0.5), got {augment_p}")
        self.block_size, self.batch_size = int(block_size), int(batch_size)
        if int(seq_warmup_steps) < 0 or (seq_warmup_steps and not 1 <= int(seq_warmup_start) <= self.block_size):
            raise ValueError(f"data.seq_warmup_steps must be >= 0 and data.seq_warmup_start in [1, data.block_size="
                             f"{self.block_size}], got {seq_warmup_steps} and {seq_warmup_start}")
        if seq_warmup_steps and mixture:
            raise ValueError("data.seq_warmup_steps does not combine with data.mixture")
        self.seq_warmup_steps, self.seq_warmup_start = int(seq_warmup_steps), int(seq_warmup_start)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.eval_batches = int(eval_batches) if eval_batches else None
        self.num_workers, self.seed, self.augment_p = int(num_workers), int(seed), float(augment_p)
        self.cache_dir, self.prepare_workers, self.epoch_tokens = Path(cache_dir), prepare_workers, epoch_tokens
        self.pin_memory = pin_memory
        self.tok_cfg = dict(tokenizer or {})
        kind = self.tok_cfg.get("kind")
        if source == "tokens":
            boundary_flag(doc_boundaries)  # checked only: token files hold their ids already
            self.source = None
            self.token_paths = {"train": train_path, "val": val_path, "test": test_path}
            self.files, self.shard_meta, self.mixture = self._open_tokens(path, mixture, dtype)
        elif source == "text":
            check_doc_options(source, documents, doc_separator)
            self.source = TextFiles(train_path, val_path, test_path, val_fraction, doc_boundaries, doc_separator)
        elif source == "hf":
            check_doc_options(source, documents, doc_separator)
            self.source = HubDataset(hf_path, hf_name, hf_data_files, hf_splits, text_field, separator,
                                     documents, doc_boundaries)
        else:
            raise ValueError(f"data.source must be text, hf or tokens, got {source!r}")
        self.bos_aligned = check_bos_aligned(bos_aligned, self.source)
        self._doc_starts: Any = None
        if self.source is not None and kind not in KINDS:
            raise ValueError(f"tokenizer.kind must be one of {list(KINDS)}, got {kind!r}")
        self.source_kind = source
        self._vocab_size = int(vocab_size) if vocab_size else None
        self._tokenizer = None
        self.paths: dict[str, Path] = {}
        self._datasets: dict[str, Any] = {}

    def _open_tokens(self, path: Any, mixture: Any, dtype: str | None) -> tuple[dict[str, Any], dict, Any]:
        """data=tokens: train/val files or globs, a shard folder (data.path) or a mixture."""
        paths = self.token_paths
        if (path is not None) + bool(mixture) + (paths["train"] is not None) > 1:
            raise UserError("data=tokens takes one of data.path (a shard folder), data.mixture or data.train_path")
        files: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        sources = None
        if mixture:
            from lm_lightning.data.mixture import parse_mixture

            sources = parse_mixture(mixture, dtype)
            metas = [s.meta for s in sources if s.meta]
            keys = {json.dumps(m.get("tokenizer_key"), sort_keys=True) for m in metas}
            if len(keys) > 1:
                raise UserError("data.mixture: the shard folders were tokenized with different tokenizers: "
                                + ", ".join(f"{s.name} ({s.meta.get('tokenizer', {}).get('kind')})" for s in sources))
            meta = dict(metas[0]) if metas else {}
            if metas:
                meta["vocab_size"] = max(int(m.get("vocab_size") or 0) for m in metas)
            flat = [f for s in sources for f in (s.train.files if isinstance(s.train, TokenShards) else [s.train])]
            files["train"] = TokenShards(flat, "data.mixture")
            vals = [s.val for s in sources if s.val is not None]
            if vals:
                files["val"] = TokenShards([f for v in vals for f in v.files], "data.mixture (validation)")
        elif path is not None:
            meta = shard_dir_meta(path)
            files["train"] = open_shard_split(path, "train")
            if files["train"] is None:
                raise UserError(f"data.path={path} has no training shards")
            val = open_shard_split(path, "val")
            if val is not None:
                files["val"] = val
        elif paths["train"] is None:
            raise UserError("data=tokens needs data.path=DIR (a shard folder from prepare tokenize), data.mixture, "
                            "or data.train_path and data.val_path (token files or globs)")
        else:
            files["train"] = open_tokens(paths["train"], dtype, "data.train_path")
        for split in ("val", "test"):
            if paths[split] is not None:
                files[split] = open_tokens(paths[split], dtype, f"data.{split}_path")
        if "val" not in files:
            where = "its shard folder has no val_* shards (prepare tokenize ... val_tokens=N)" if path or mixture \
                else "data.val_path is not set"
            raise UserError(f"data=tokens needs validation tokens: {where}; or set data.val_path")
        return files, meta, sources

    def _tokens_meta(self) -> dict[str, Any]:
        """The token files' metadata: a shard folder's meta.json, else the first file's sidecar."""
        if self.shard_meta:
            return self.shard_meta
        train = self.files["train"]
        return read_meta(train.files[0].path if isinstance(train, TokenShards) else train.path)

    # -- tokenizer ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: cheap where it can be (BPE: the configured size)."""
        if self._vocab_size is None:
            kind = self.tok_cfg.get("kind")
            if self.source is None:
                self._vocab_size = self._token_vocab()
            elif kind == "bpe" and not self.tok_cfg.get("path"):
                self._vocab_size = int(self.tok_cfg.get("vocab_size", 10000))
            elif kind == "gpt2":
                self._vocab_size = max(GPT2_VOCAB_SIZE, self.tokenizer.vocab_size)
            else:
                self._vocab_size = self.tokenizer.vocab_size
        return self._vocab_size

    def _token_vocab(self) -> int:
        meta = self._tokens_meta()
        if meta.get("vocab_size"):
            return int(meta["vocab_size"])
        if self.tok_cfg.get("kind") in KINDS:
            return self.tokenizer.vocab_size
        raise UserError(f"{self.files['train'].path}: vocabulary size unknown; set data.vocab_size "
                        f"(or tokenizer=... for the tokenizer that produced the ids)")

    def use_tokenizer(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        """Tokenize with a given tokenizer (a checkpoint's) instead of building one from config."""
        self._tokenizer = tokenizer
        self._vocab_size = int(vocab_size or tokenizer.vocab_size)
        self.paths, self._datasets, self._doc_starts = {}, {}, None
        source = self.source
        if source is not None and source.doc_boundaries and getattr(tokenizer, "eot_id", None) is None \
                and source.auto_boundaries:
            source.no_documents()  # a checkpoint from before document boundaries: its data had none

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer()
        return self._tokenizer

    def _build_tokenizer(self):
        kind = self.tok_cfg.get("kind")
        if self.source is None:  # token files: the sidecar's tokenizer, else the configured one
            spec = self._tokens_meta().get("tokenizer")
            if spec:
                return from_spec(spec)
            if kind not in KINDS or kind == "char":
                return None
            if kind == "bpe":
                if not self.tok_cfg.get("path"):
                    # Ids from elsewhere (cs336 .ids files): train on them; the checkpoint then carries
                    # no tokenizer, and generate asks for one.
                    log.warning("data=tokens: no tokenizer for %s (set tokenizer.path=tokenizer.json to keep one "
                                "with the checkpoints)", self.files["train"].path)
                    return None
                return load_bpe_file(self.tok_cfg["path"])
        eot = self.source is not None and bool(self.source.doc_boundaries)
        if kind == "byte":
            return ByteTokenizer(eot=eot)
        if kind == "gpt2":
            return load_gpt2(self.tok_cfg.get("name") or "gpt2")
        if kind == "hf":  # a local transformers folder's tokenizer (train.check usually sets it first)
            return load_hf_tokenizer(self.tok_cfg.get("path"))
        if kind == "char":
            # nanoGPT's vocabulary: every character of the corpus (val/test characters included).
            chars: set[str] = set()
            for split in SPLITS:
                for text in strings(self.source.chunks(split)):
                    chars.update(text)
            return CharTokenizer("".join(chars), eot=eot)
        if kind == "bpe":
            return self._bpe()
        raise UserError(f"tokenizer.kind {kind!r} needs a text source")

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
    def prepare_data(self) -> None:
        """Tokenize every split into the cache (once; later runs reuse the files)."""
        if self.source is None:
            _ = self.tokenizer  # token files: resolve (or report) the tokenizer before training starts
        else:
            tok = self.tokenizer
            if self.source.doc_boundaries and getattr(tok, "eot_id", None) is None:
                raise UserError(no_eot_message(tok))
            for split in SPLITS:
                if split == "test" and not self._has_test():
                    continue
                self.paths[split] = cache.build_split(self.source, split, tok, self.vocab_size, self.cache_dir,
                                                      self.prepare_workers)
        if self.bos_aligned:
            self.doc_starts()  # a split without documents is reported before the run starts

    def doc_starts(self):
        """Where the training split's documents start (0 and after each end-of-text token)."""
        if self._doc_starts is None:
            self._doc_starts = training_doc_starts(self.tokenizer, self._token_file("train"))
        return self._doc_starts

    def _has_test(self) -> bool:
        if isinstance(self.source, HubDataset):
            return "test" in self.source.splits
        return True  # local text: the test split falls back to the validation split

    def _token_file(self, split: str) -> TokenFile | None:
        if self.source is None:
            return self.files.get(split) or (self.files["val"] if split == "test" else None)
        if split not in self.paths:
            if split == "test" and not self._has_test():
                return self._token_file("val")
            self.paths[split] = cache.cache_path(self.cache_dir, self.source.identity(split), split,
                                                 self.tokenizer.spec())
            if not self.paths[split].is_file():
                self.prepare_data()
        return TokenFile(self.paths[split])

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self._datasets:
                self._datasets[split] = self._token_file(split)

    def split_tokens(self, split: str) -> int:
        self.setup()
        return len(self._datasets[split])

    def size_lines(self) -> list[str]:
        parts = []
        for split, title in (("train", "Train data"), ("val", "Validation data")):
            try:
                parts.append(f"{title}: {int(self.split_tokens(split)):,} tokens")
            except Exception:  # a mixture or a source without that split: say what is known
                continue
        return parts

    def train_eval_batches(self, n_batches: int):
        self.setup("fit")
        windows = SequentialWindows(self._datasets["train"], self.eval_batch_size, self.block_size, n_batches)
        return (windows[i] for i in range(len(windows)))

    # -- loaders -----------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch: one pass over the training tokens (or data.epoch_tokens)."""
        _, world = self.rank()
        tokens = int(self.epoch_tokens or self.split_tokens("train"))
        steps = math.ceil(tokens / (self.batch_size * self.block_size * world))
        accum = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        return max(accum, math.ceil(steps / accum) * accum)

    def _loader(self, dataset, start_fn=None) -> DataLoader:
        pin = self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()
        if start_fn is None:  # evaluation windows: a plain map-style loader (samplers work as usual)
            return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin)
        # Workers are not persistent: each epoch hands them the current resume position.
        return EpochLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=pin,
                            start_fn=start_fn)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self.rank()
        if self.source is None and self.mixture:
            return self._loader(self._mixture_stream(rank, world), start_fn=self.start_step)
        stream = RandomWindows(self._datasets["train"], self.batch_size, self.block_size, self.seed,
                               self.steps_per_epoch(), rank=rank, world_size=world, start=self.start_step(),
                               augment_p=self.augment_p, doc_starts=self.doc_starts() if self.bos_aligned else None,
                               seq_warmup=self._seq_warmup())
        return self._loader(stream, start_fn=self.start_step)

    def _seq_warmup(self) -> tuple[int, int, int] | None:
        """(start length, optimizer steps, micro-batches per step) for RandomWindows; None when off."""
        if not self.seq_warmup_steps:
            return None
        accum = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        return self.seq_warmup_start, self.seq_warmup_steps, accum

    def _mixture_stream(self, rank: int, world: int):
        from lm_lightning.data.mixture import MixtureWindows

        if self.bos_aligned or self.augment_p > 0:
            raise UserError("data.mixture does not combine with data.bos_aligned or data.augment_p")
        stream = MixtureWindows([s.train for s in self.mixture], [s.weight for s in self.mixture], self.batch_size,
                                self.block_size, self.seed, self.steps_per_epoch(), rank=rank, world_size=world,
                                start=self.start_step())
        trainer = self.trainer
        planned = (trainer.max_steps * trainer.accumulate_grad_batches if trainer is not None and trainer.max_steps
                   and trainer.max_steps > 0 else stream.steps_per_epoch)
        steps = max(1, min(planned - stream.start, 20000))
        got = stream.realized(steps, stream.start)
        from lightning.pytorch.utilities import rank_zero_info

        # On the console and in train.log (Lightning's logger; this module's goes to the file only).
        rank_zero_info(f"data.mixture over micro-batches {stream.start}-{stream.start + steps - 1}: " + ", ".join(
            f"{s.name} {p:.3f} (weight {w:.3f})" for s, p, w in zip(self.mixture, got, stream.proportions)))
        self.mixture_realized = {s.name: float(p) for s, p in zip(self.mixture, got)}
        return stream

    def val_dataloader(self, capped: bool = True) -> DataLoader:
        self.setup("validate")
        trainer = self.trainer
        if self.source is None and self.mixture and trainer is not None and not any(
                getattr(cb, "is_mixture_validation", False) for cb in trainer.callbacks):
            from lm_lightning.data.mixture import PerSourceValidation

            # val/<name>/loss per source, beside the overall val/loss over all of them.
            trainer.callbacks.append(PerSourceValidation.make(self.mixture, self.eval_batch_size, self.block_size,
                                                              self.eval_batches if capped else None))
        return self._loader(SequentialWindows(self._datasets["val"], self.eval_batch_size, self.block_size,
                                              self.eval_batches if capped else None))

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(SequentialWindows(self._datasets["test"], self.eval_batch_size, self.block_size))

    # -- checkpoint state: the tokenizer travels with the weights ----------------------------
    def state_dict(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {"tokenizer": tok.spec() if tok is not None else None, "vocab_size": int(self.vocab_size),
                "block_size": self.block_size, "source": self.source_kind, "bos_aligned": self.bos_aligned,
                "doc_boundaries": bool(self.source.doc_boundaries) if self.source is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("tokenizer")
        tok = self.tokenizer
        if saved and tok is not None and cache.tokenizer_key(saved) != cache.tokenizer_key(tok.spec()):
            raise UserError("the checkpoint was trained with a different tokenizer than this run's "
                            f"({saved.get('kind')} vs {tok.kind}); resume with the same data and tokenizer")

    # -- baselines for the final table -------------------------------------------------------
    def baselines(self) -> dict[str, float]:
        """Unigram entropy of the validation tokens (nats): what a context-free model scores."""
        import numpy as np

        self.setup("validate")
        f = self._datasets["val"]
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for s in range(0, len(f), 1 << 22):
            counts += np.bincount(f.read(s, min(1 << 22, len(f) - s)), minlength=self.vocab_size)[: self.vocab_size]
        p = counts[counts > 0] / counts.sum()
        return {"next_token_unigram": float(-(p * np.log(p)).sum())}
