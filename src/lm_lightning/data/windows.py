"""The part of the data contract shared by every data module whose splits are token arrays.

:class:`TokenWindowsModule` is the base of :class:`~lm_lightning.data.text.TextDataModule`
(text files and hub datasets, tokenized into the cache) and
:class:`~lm_lightning.data.token_data.TokenDataModule` (token files, shard folders, mixtures).
A subclass says where each split's tokens are (``_token_file``) and how its tokenizer and
vocabulary are found (``_build_tokenizer``, ``_configured_vocab``); the windows, loaders, epoch
size, resume position, baselines and the checkpoint state are the same for all of them (see
:mod:`lm_lightning.data.tokens` for the windows themselves).
"""

from __future__ import annotations

import math
from typing import Any

from torch.utils.data import DataLoader

from lm_lightning.data import cache
from lm_lightning.data.base import LMDataModule
from lm_lightning.data.documents import training_doc_starts
from lm_lightning.data.splits import SPLITS
from lm_lightning.data.streams import EpochLoader
from lm_lightning.data.tokens import RandomWindows, SequentialWindows, TokenFile, TokenShards
from lm_lightning.errors import UserError


class TokenWindowsModule(LMDataModule):
    task = "text"
    uses_tokenizer = True
    # train() prepares (downloads, tokenizes, checks the token files) before creating the run directory.
    prepare_before_run = True
    metric_titles = {"val/next_token": "next-token cross-entropy (nats)", "val/next_token_acc": "next-token accuracy"}
    source_kind = "text"

    def __init__(self, tokenizer: dict[str, Any] | None = None, block_size: int = 256, batch_size: int = 32,
                 eval_batch_size: int | None = None, eval_batches: int | None = None, num_workers: int = 0,
                 seed: int = 0, augment_p: float = 0.0, epoch_tokens: int | None = None,
                 vocab_size: int | None = None, pin_memory: bool | None = None, seq_warmup_steps: int = 0,
                 seq_warmup_start: int = 16) -> None:
        super().__init__()
        self.set_sizes(block_size, batch_size)
        if not 0.0 <= augment_p < 0.5:
            raise ValueError(f"data.augment_p must be in [0, 0.5), got {augment_p}")
        if int(seq_warmup_steps) < 0 or (seq_warmup_steps and not 1 <= int(seq_warmup_start) <= self.block_size):
            raise ValueError(f"data.seq_warmup_steps must be >= 0 and data.seq_warmup_start in [1, data.block_size="
                             f"{self.block_size}], got {seq_warmup_steps} and {seq_warmup_start}")
        self.seq_warmup_steps, self.seq_warmup_start = int(seq_warmup_steps), int(seq_warmup_start)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.eval_batches = int(eval_batches) if eval_batches else None
        self.num_workers, self.seed, self.augment_p = int(num_workers), int(seed), float(augment_p)
        self.epoch_tokens, self.pin_memory = epoch_tokens, pin_memory
        self.tok_cfg = dict(tokenizer or {})
        self.bos_aligned = False
        self._vocab_size = int(vocab_size) if vocab_size else None
        self._tokenizer: Any = None
        self._datasets: dict[str, Any] = {}
        self._doc_starts: Any = None

    # -- what a subclass provides ------------------------------------------------------------
    def _token_file(self, split: str) -> TokenFile | TokenShards:
        """The tokens of ``split`` (tokenizing them first where needed)."""
        raise NotImplementedError

    def _build_tokenizer(self) -> Any:
        raise NotImplementedError

    def _configured_vocab(self) -> int:
        """The vocabulary when nobody set it: cheap where it can be."""
        raise NotImplementedError

    def _doc_boundaries(self) -> bool | None:
        """Whether the tokens have end-of-text ids between documents (None: as the files hold them)."""
        return None

    # -- tokenizer ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self._vocab_size is None:
            self._vocab_size = self._configured_vocab()
        return self._vocab_size

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer()
        return self._tokenizer

    def use_tokenizer(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = int(vocab_size or tokenizer.vocab_size)
        self._datasets, self._doc_starts = {}, None

    # -- splits --------------------------------------------------------------------------------
    def doc_starts(self):
        """Where the training split's documents start (0 and after each end-of-text token)."""
        if self._doc_starts is None:
            self._doc_starts = training_doc_starts(self.tokenizer, self._token_file("train"))
        return self._doc_starts

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
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
            except Exception:  # a source without that split: say what is known
                continue
        return parts

    # -- loaders -------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch: one pass over the training tokens (or data.epoch_tokens)."""
        _, world = self.rank()
        tokens = int(self.epoch_tokens or self.split_tokens("train"))
        steps = math.ceil(tokens / (self.batch_size * self.block_size * world))
        accum = self.accumulation()
        return max(accum, math.ceil(steps / accum) * accum)

    def _loader(self, dataset, start_fn=None) -> DataLoader:
        pin = self.pin()
        if start_fn is None:  # evaluation windows: a plain map-style loader (samplers work as usual)
            return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin)
        # Workers are not persistent: each epoch hands them the current resume position.
        return EpochLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=pin,
                           start_fn=start_fn)

    def _train_stream(self, rank: int, world: int):
        return RandomWindows(self._datasets["train"], self.batch_size, self.block_size, self.seed,
                             self.steps_per_epoch(), rank=rank, world_size=world, start=self.start_step(),
                             augment_p=self.augment_p, doc_starts=self.doc_starts() if self.bos_aligned else None,
                             seq_warmup=self._seq_warmup())

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self.rank()
        return self._loader(self._train_stream(rank, world), start_fn=self.start_step)

    def _seq_warmup(self) -> tuple[int, int, int] | None:
        """(start length, optimizer steps, micro-batches per step) for RandomWindows; None when off."""
        if not self.seq_warmup_steps:
            return None
        return self.seq_warmup_start, self.seq_warmup_steps, self.accumulation()

    def val_dataloader(self, capped: bool = True) -> DataLoader:
        self.setup("validate")
        return self._loader(SequentialWindows(self._datasets["val"], self.eval_batch_size, self.block_size,
                                              self.eval_batches if capped else None))

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(SequentialWindows(self._datasets["test"], self.eval_batch_size, self.block_size))

    def train_eval_batches(self, n_batches: int):
        self.setup("fit")
        windows = SequentialWindows(self._datasets["train"], self.eval_batch_size, self.block_size, n_batches)
        return (windows[i] for i in range(len(windows)))

    # -- checkpoint state: the tokenizer travels with the weights ----------------------------
    def state_dict(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {"tokenizer": tok.spec() if tok is not None else None, "vocab_size": int(self.vocab_size),
                "block_size": self.block_size, "source": self.source_kind, "bos_aligned": self.bos_aligned,
                "doc_boundaries": self._doc_boundaries()}

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
