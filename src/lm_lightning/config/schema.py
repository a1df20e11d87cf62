"""The typed schema of the composed config, checked once before anything is built or written.

Every leaf of a composed, resolved config is looked up here by its dotted key (``*`` matches one
name: ``callbacks.*.log_every_n_steps``). A value of the wrong type, out of range, or a list of
the wrong length is one :class:`~lm_lightning.errors.UserError` naming the key, what it must be
and what it got; ``train.py`` turns that into one line and exit 2 before Hydra creates the run
directory. Keys the schema does not name (paths, ``_target_``, a Lightning argument the presets
never set) pass through untouched; ``tests/test_config_schema.py`` composes every preset and
fails when a number or switch that a preset sets has no entry here, so a new key cannot go
unchecked by accident.

Cross-key rules that need objects (the model shape against the data, a tokenizer file that must
exist, an optimizer technique against the strategy) stay in ``train.check`` and the modules that
own them; this table holds what one value alone can get wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from typing import Any

from lm_lightning.config.spec import Bool, Float, Int, ListOf, Str, choice, maybe, one_of
from lm_lightning.errors import UserError

COUNT = Int(ge=1)          # a positive count
COUNT0 = Int(ge=0)         # a count where 0 means off
FRACTION = Float(ge=0, le=1)
PROB = Float(ge=0, lt=1)   # dropout-like: 1 would zero everything
POSITIVE = Float(gt=0)
NONNEG = Float(ge=0)
MODE = choice("min", "max")
TEXT = maybe(Str())
# Lightning's own spellings, plus our "auto" (resolved at start from the GPU).
PRECISIONS = ("auto", "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
              "bf16-mixed", "32-true", "64-true", "16", "32", "64", "bf16", 16, 32, 64)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Lightning's limit_*_batches / overfit_batches: a whole number of batches or a fraction of them.
BATCHES = maybe(one_of(COUNT0, FRACTION))

SCHEMA: dict[str, Any] = {
    # --- root ---
    "seed": Int(),
    "test": Bool(),
    "run_name": maybe(one_of(Str(), Int())),
    "optimized_metric": Str(),
    "resume": choice("auto", "never", "must"),
    "overwrite": Bool(),
    "fresh": Bool(),
    "ckpt_path": TEXT,
    "max_training_hours": maybe(POSITIVE),
    # Recipes fix the what, hardware presets the how (lm_lightning/config/recipes.py); effective_batch_size
    # and hardware.micro_batch_tokens/num_workers are below.
    "wandb_project": Str(),
    "hardware.name": Str(),
    "loss.weights.*": NONNEG,
    "loss.z_loss": NONNEG,
    "early_stopping.monitor": Str(),
    "early_stopping.mode": MODE,
    "early_stopping.patience": maybe(COUNT),
    "early_stopping.min_delta": NONNEG,
    "early_stopping.stop_at": maybe(Float()),
    "effective_batch_size": maybe(COUNT),
    # hardware presets: what the machine can hold (recipes reach their effective batch from it)
    "hardware.micro_batch_tokens": maybe(COUNT),
    "hardware.num_workers": maybe(COUNT0),
    # --- model ---
    "model.n_layer": COUNT,
    "model.n_head": COUNT,
    "model.n_embd": COUNT,
    "model.n_kv_head": maybe(COUNT),
    "model.d_ff": maybe(COUNT),
    "model.block_size": maybe(COUNT),
    "model.vocab_size": maybe(COUNT),
    "model.dropout": PROB,
    "model.pos_emb": choice("rope", "learned"),
    "model.rope_theta": POSITIVE,
    "model.norm": choice("layernorm", "rmsnorm"),
    "model.norm_eps": maybe(POSITIVE),
    "model.mlp": choice("gelu", "swiglu", "relu2"),
    "model.bias": Bool(),
    "model.tie_weights": Bool(),
    "model.qk_norm": Bool(),
    "model.logit_softcap": maybe(POSITIVE),
    "model.value_embeds": COUNT0,
    "model.unet_skips": Bool(),
    "model.activation_checkpointing": Bool(),
    "model.compile": one_of(Bool(), choice(*COMPILE_MODES)),
    "model.init_from": TEXT,
    # --- optimizer ---
    "optimizer.lr": POSITIVE,
    "optimizer.betas": ListOf(PROB, length=2),
    "optimizer.eps": POSITIVE,
    "optimizer.weight_decay": NONNEG,
    "optimizer.momentum": FRACTION,
    "optimizer.nesterov": Bool(),
    "optimizer.fused": maybe(Bool()),
    "optimizer.lookahead.k": COUNT0,
    "optimizer.lookahead.alpha": Float(gt=0, le=1),
    "optimizer.layer_decay": maybe(Float(gt=0, le=1)),
    "optimizer.freeze_embeddings": Bool(),
    "optimizer.freeze_layers": COUNT0,
    "optimizer.muon_lr": POSITIVE,
    "optimizer.muon_momentum": PROB,
    "optimizer.muon_nesterov": Bool(),
    "optimizer.muon_ns_steps": COUNT,
    "optimizer.muon_weight_decay": NONNEG,
    "optimizer.muon_adjust_lr_fn": choice("original", "match_rms_adamw"),
    "optimizer.muon_ns_dtype": choice("auto", "float32", "bfloat16"),
    "optimizer.muon_momentum_warmup_steps": COUNT0,
    "optimizer.muon_momentum_start": PROB,
    "optimizer.embed_lr": maybe(POSITIVE),
    "optimizer.head_lr": maybe(POSITIVE),
    # --- scheduler ---
    "scheduler.warmup_steps": COUNT0,
    "scheduler.min_lr": maybe(NONNEG),
    "scheduler.min_lr_ratio": FRACTION,
    "scheduler.decay_fraction": Float(gt=0, le=1),
    "scheduler.shape": choice("linear", "cosine", "1-sqrt"),
    "scheduler.fit_to_time": Bool(),
    "scheduler.monitor": Str(),
    "scheduler.mode": MODE,
    "scheduler.factor": Float(gt=0, lt=1),
    "scheduler.patience": COUNT0,
    "scheduler.threshold": NONNEG,
    # --- trainer (Lightning's Trainer arguments) ---
    "trainer.accelerator": choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "trainer.devices": one_of(Int(ge=-1, not_=0), choice("auto"), Str(), ListOf(COUNT0, min_length=1)),
    "trainer.num_nodes": COUNT,
    "trainer.precision": choice(*PRECISIONS),
    "trainer.max_steps": Int(ge=-1, not_=0),
    "trainer.max_epochs": maybe(Int(ge=-1)),
    "trainer.max_time": TEXT,
    "trainer.val_check_interval": maybe(one_of(COUNT, Float(gt=0, le=1))),
    "trainer.check_val_every_n_epoch": maybe(COUNT),
    "trainer.limit_val_batches": BATCHES,
    "trainer.limit_train_batches": BATCHES,
    "trainer.limit_test_batches": BATCHES,
    "trainer.overfit_batches": BATCHES,
    "trainer.num_sanity_val_steps": Int(ge=-1),
    "trainer.log_every_n_steps": COUNT,
    "trainer.gradient_clip_val": maybe(NONNEG),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.deterministic": maybe(one_of(Bool(), choice("warn"))),
    "trainer.benchmark": maybe(Bool()),
    "trainer.enable_model_summary": Bool(),
    "trainer.fast_dev_run": one_of(Bool(), COUNT0),
    "trainer.strategy.cpu_offload": Bool(),
    "trainer.strategy.find_unused_parameters": Bool(),
    "trainer.strategy.gradient_as_bucket_view": Bool(),
    "trainer.strategy.process_group_backend": maybe(choice("gloo", "nccl", "mpi")),
    "trainer.strategy.data_parallel_size": one_of(choice("auto"), COUNT),
    "trainer.strategy.tensor_parallel_size": one_of(choice("auto"), COUNT),
    "trainer.strategy.save_distributed_checkpoint": Bool(),
    "trainer.strategy.reshard_after_forward": Bool(),
    # --- data (every data module) ---
    "data.block_size": COUNT,
    "data.batch_size": COUNT,
    "data.eval_batch_size": maybe(COUNT),
    "data.eval_batches": maybe(COUNT),
    "data.num_workers": COUNT0,
    "data.prefetch_factor": maybe(COUNT),
    "data.seed": Int(),
    "data.hard_fraction": FRACTION,
    "data.normal_start": COUNT,
    "data.hard_bits": ListOf(Int(ge=2), length=2),
    "data.max_steps": COUNT,
    "data.val_samples": COUNT,
    "data.augment_p": FRACTION,
    "data.seq_warmup_steps": COUNT0,
    "data.seq_warmup_start": COUNT,
    "data.epoch_tokens": maybe(COUNT),
    "data.prepare_workers": maybe(COUNT),
    "data.doc_boundaries": one_of(Bool(), choice("auto")),
    "data.bos_aligned": Bool(),
    "data.val_fraction": Float(gt=0, lt=1),
    "data.val_batches": COUNT,
    "data.vocab_size": maybe(COUNT),
    "data.dtype": maybe(choice("uint8", "uint16", "int32", "uint32", "int64")),
    "data.source": choice("text", "hf", "tokens"),
    "tokenizer.kind": choice("char", "byte", "bpe", "gpt2", "hf"),
    "tokenizer.vocab_size": COUNT,
    "tokenizer.min_frequency": COUNT,
    "data.tokenizer.vocab_size": COUNT,     # text data modules carry the tokenizer group
    "data.tokenizer.min_frequency": COUNT,
    # --- callbacks (by key name, whichever callback carries it) ---
    "callbacks.*.log_every_n_steps": COUNT,
    "callbacks.*.every_n_steps": COUNT0,
    "callbacks.*.every_n_epochs": COUNT0,
    "callbacks.*.every_n_train_steps": COUNT0,
    "callbacks.*.save_top_k": Int(ge=-1),
    "callbacks.*.mode": MODE,
    "callbacks.*.save_last": Bool(),
    "callbacks.*.auto_insert_metric_name": Bool(),
    "callbacks.checkpointing.keep_last": COUNT,
    "callbacks.checkpointing.final_model": Bool(),
    "callbacks.anomaly.policy": choice("skip", "stop", "off"),
    "callbacks.anomaly.max_consecutive": COUNT,
    "callbacks.anomaly.spike_factor": Float(gt=1),
    "callbacks.anomaly.spike_window": COUNT,
    "callbacks.anomaly.check_every_n_steps": COUNT,
    "callbacks.alerts.progress_every_n_steps": COUNT0,
    "callbacks.monitoring.per_layer_every": COUNT0,
    "callbacks.monitoring.plots": Bool(),
    "callbacks.progress_bar.refresh_rate": COUNT0,
    "callbacks.control.stdin": Bool(),
    "callbacks.monitoring.histograms": Bool(),
    "callbacks.monitoring.histogram_every_n_steps": COUNT,
    "callbacks.monitoring.check_gradients": Bool(),
    "callbacks.monitoring.check_every_n_steps": COUNT,
    "callbacks.monitoring.large_grad_norm": POSITIVE,
    "callbacks.monitoring.max_grad_param_ratio": POSITIVE,
    "callbacks.monitoring.max_warnings": COUNT,
    "callbacks.control.signals": Bool(),
    "callbacks.control.fit_to_time": Bool(),
    "callbacks.early_stopping.patience": maybe(COUNT),   # interpolated from early_stopping.*
    "callbacks.early_stopping.min_delta": NONNEG,
    "callbacks.early_stopping.stop_at": maybe(Float()),
    "callbacks.scheduled_dropout.start": PROB,
    "callbacks.scheduled_dropout.end": PROB,
    "callbacks.scheduled_dropout.warmup_fraction": FRACTION,
    "logger.*.log_model": one_of(Bool(), choice("all")),
    "logger.*.default_hp_metric": Bool(),
}

# Subtrees whose leaves are not ours to type (Hydra's own, a profiler's constructor arguments).
SKIP = ("hydra", "trainer.profiler")


def spec_for(key: str) -> Any | None:
    """The spec of a dotted key: an exact entry first, else the first ``*`` pattern that matches."""
    if key in SCHEMA:
        return SCHEMA[key]
    depth = key.count(".")
    for pattern, spec in SCHEMA.items():
        if "*" in pattern and pattern.count(".") == depth and fnmatchcase(key, pattern):
            return spec
    return None


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a plain nested dict; lists are leaves; Hydra's own
    ``_underscored_`` keys are not config values."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted in SKIP or str(key).startswith("_"):  # Hydra's _target_, _partial_, ...
            continue
        if isinstance(value, Mapping):
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, value


def validate(cfg: Any) -> None:
    """Check every leaf the schema names; raise one UserError for the first bad value.

    ``cfg``: a resolved DictConfig or a plain nested dict.
    """
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    for key, value in leaves(plain):
        spec = spec_for(key)
        if spec is None:
            continue
        problem = spec(value)
        if problem is not None:
            raise UserError(f"{key} must be {problem}, got {value!r}")
