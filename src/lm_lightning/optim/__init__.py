"""Optimizers and learning-rate schedules, as a package of small parts.

- :mod:`.groups`: which parameters decay, which are frozen, layer-wise lr scales;
- :mod:`.build`: the optimizer techniques (``lookahead``, ``layer_decay``, freezing), the one
  fused-kernel decision and :func:`~.build.build_optimizer`, which turns Hydra's ``_partial_``
  optimizer factory into the run's optimizer;
- :mod:`.grad_norm`: the total gradient norm (plain tensors and FSDP2 DTensors);
- :mod:`.schedules`: the warmup-then-decay multipliers (one warmup formula, each with
  ``resize``), their ``_partial_`` factories for ``conf/scheduler/*`` and the resume re-fit;
- :mod:`.muon` / :mod:`.muon_ns`: ``optimizer=muon`` (Muon for hidden matrices + AdamW);
- :mod:`.lookahead`: the Lookahead wrapper.

Nothing is re-exported here: import from the module that owns a name.
"""
