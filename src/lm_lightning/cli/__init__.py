"""The commands: one module per `python -m lm_lightning.X` command and `python train.py`."""
