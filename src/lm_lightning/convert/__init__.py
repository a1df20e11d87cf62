"""Conversion to and from other formats: Hugging Face transformers folders, GGUF files, model cards.

- base.py: the ``Converter`` interface (config and weights both ways, shape problems, GGUF layout);
- gpt2.py, llama.py: the two converters; registry.py: ``for_name``, ``for_config``, ``for_source``;
- init_from.py: ``model.init_from`` (``derive_arch``, ``pretrained_state``, ``user_model_keys``);
- tokenizers.py: our tokenizers as transformers fast tokenizers; gguf_vocab.py: as GGUF metadata;
- gguf_writer.py: one .gguf file; model_card.py: README.md; export.py: the export folder.
"""

from lm_lightning.convert.init_from import derive_arch, pretrained_state, user_model_keys
from lm_lightning.convert.registry import for_config, for_name, for_source

__all__ = ["derive_arch", "for_config", "for_name", "for_source", "pretrained_state", "user_model_keys"]
