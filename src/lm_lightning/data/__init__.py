"""Data modules, one per source. Each exposes ``vocab_size``, ``block_size`` and ``objectives``."""
