"""Pre-tokenized token files as a data module: ``data=tokens``.

One of ``data.path=DIR`` (a shard folder written by ``prepare tokenize ... out=DIR``: its
``train_*`` shards train, its ``val_*`` validate, its ``test_*``, if any, test),
``data.mixture`` (a list of ``{path: DIR_OR_GLOB, weight: w}``, see
:mod:`lm_lightning.data.mixture`), or ``data.train_path`` + ``data.val_path`` (a file or a glob;
several files are read as their concatenation). The test split is ``data.test_path``, else
validation (:func:`~lm_lightning.data.splits.resolve_split`). The vocabulary comes from the
folder's ``meta.json`` or the first file's sidecar, else ``data.vocab_size`` or the configured
tokenizer; the tokenizer (kept in the checkpoints for generate/export) likewise.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lm_lightning.data.documents import boundary_flag, check_bos_aligned
from lm_lightning.data.splits import resolve_split
from lm_lightning.data.tokenizers import KINDS, from_spec, load_bpe_file, ready_made
from lm_lightning.data.tokens import TokenShards, open_shard_split, open_tokens, read_meta, shard_dir_meta
from lm_lightning.data.windows import TokenWindowsModule
from lm_lightning.errors import UserError

log = logging.getLogger("lm_lightning")


class TokenDataModule(TokenWindowsModule):
    source_kind = "tokens"

    def __init__(self, path: Any = None, mixture: Any = None, train_path: Any = None, val_path: Any = None,
                 test_path: Any = None, dtype: str | None = None, vocab_size: int | None = None,
                 tokenizer: dict[str, Any] | None = None, doc_boundaries: bool | str = False,
                 bos_aligned: bool = False, cache_dir: Any = None, prepare_workers: int | None = None,
                 **windows: Any) -> None:
        # cache_dir and prepare_workers are the text recipes' shared keys (conf/data/_text.yaml):
        # token files are read where they are, nothing is cached.
        super().__init__(tokenizer=tokenizer, vocab_size=vocab_size, **windows)
        if self.seq_warmup_steps and mixture:
            raise ValueError("data.seq_warmup_steps does not combine with data.mixture")
        boundary_flag(doc_boundaries)  # checked only: token files hold their ids already
        self.bos_aligned = check_bos_aligned(bos_aligned, None)
        self.token_paths = {"train": train_path, "val": val_path, "test": test_path}
        self.files, self.shard_meta, self.mixture = self._open(path, mixture, dtype)
        self._per_source: Any = None  # the mixture's per-source validation callback, once made
        if path is not None and "test" not in self.files:
            test = open_shard_split(path, "test")
            if test is not None:
                self.files["test"] = test

    def _open(self, path: Any, mixture: Any, dtype: str | None) -> tuple[dict[str, Any], dict, Any]:
        """Train/val files or globs, a shard folder (data.path) or a mixture."""
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

    def _meta(self) -> dict[str, Any]:
        """The token files' metadata: a shard folder's meta.json, else the first file's sidecar."""
        if self.shard_meta:
            return self.shard_meta
        train = self.files["train"]
        return read_meta(train.files[0].path if isinstance(train, TokenShards) else train.path)

    def _token_file(self, split: str):
        return self.files[resolve_split(split, self.files)]

    # -- tokenizer: the files' own, else the configured one ----------------------------------------
    def _configured_vocab(self) -> int:
        meta = self._meta()
        if meta.get("vocab_size"):
            return int(meta["vocab_size"])
        if self.tok_cfg.get("kind") in KINDS:
            return self.tokenizer.vocab_size
        raise UserError(f"{self.files['train'].path}: vocabulary size unknown; set data.vocab_size "
                        f"(or tokenizer=... for the tokenizer that produced the ids)")

    def _build_tokenizer(self):
        spec = self._meta().get("tokenizer")
        if spec:
            return from_spec(spec)
        kind = self.tok_cfg.get("kind")
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
        return ready_made(self.tok_cfg, eot=False)

    def prepare_data(self) -> None:
        _ = self.tokenizer  # resolve (or report) the tokenizer before training starts
        if self.bos_aligned:
            self.doc_starts()  # a split without documents is reported before the run starts

    # -- mixtures: proportional windows, per-source validation -------------------------------------
    def _train_stream(self, rank: int, world: int):
        return self._mixture_stream(rank, world) if self.mixture else super()._train_stream(rank, world)

    def _mixture_stream(self, rank: int, world: int):
        from lightning.pytorch.utilities import rank_zero_info

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
        # On the console and in train.log (Lightning's logger; this module's goes to the file only).
        rank_zero_info(f"data.mixture over micro-batches {stream.start}-{stream.start + steps - 1}: " + ", ".join(
            f"{s.name} {p:.3f} (weight {w:.3f})" for s, p, w in zip(self.mixture, got, stream.proportions)))
        self.mixture_realized = {s.name: float(p) for s, p in zip(self.mixture, got)}
        return stream

    def val_dataloader(self, capped: bool = True):
        trainer = self.trainer
        if self.mixture and trainer is not None:
            if self._per_source is None:
                from lm_lightning.data.mixture import PerSourceValidation

                self._per_source = PerSourceValidation.make(self.mixture, self.eval_batch_size, self.block_size,
                                                            self.eval_batches if capped else None)
            if self._per_source not in trainer.callbacks:
                # val/<name>/loss per source, beside the overall val/loss over all of them.
                trainer.callbacks.append(self._per_source)
        return super().val_dataloader(capped)
