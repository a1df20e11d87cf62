"""Temporary: the name train.py imported before lm_lightning.convert; removed once it switches."""

from lm_lightning.convert.gpt2 import GPT2

pretrained_state = GPT2.pretrained_state
