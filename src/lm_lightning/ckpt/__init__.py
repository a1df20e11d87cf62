"""Checkpoint I/O: everything that reads or writes a trained model's files.

- read.py: a checkpoint file or sharded (FSDP2) directory as plain data (``read_checkpoint``);
- state.py: parameter names (wrapper prefixes, the tied head, metric states), written once;
- load.py: a checkpoint as a GPT with its config, heads and tokenizer (``load_checkpoint``,
  ``load_for_inference``);
- payload.py: what is written (safetensors weights, the final-model file, an export's source);
- best.py: ``load_best``, the best checkpoint of a run or sweep directory.
"""
