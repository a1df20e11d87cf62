"""Two of modded-nanogpt's extra paths for small GPTs, used by :class:`lm_lightning.model.gpt.GPT`.

Plain PyTorch, off by default: ``model.value_embeds`` (a count of tables) and
``model.unet_skips`` (a switch).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def value_embed_layers(n_tables: int, n_layer: int) -> list[int | None]:
    """For each layer, the value-embedding table it reads (None: none).

    Table j feeds layer j and its mirror n_layer - 1 - j, as modded-nanogpt shares each table
    between one of the first and one of the last layers.
    """
    out: list[int | None] = [None] * n_layer
    for j in range(n_tables):
        out[j] = out[n_layer - 1 - j] = j
    return out


class ValueEmbeddings(nn.Module):
    """Token-embedding tables whose rows are added to the attention values (v + gate * table[idx]).

    Each fed layer has its own learnable gate (initialised to 1); the tables are plain
    ``nn.Embedding`` (AdamW, ``optimizer.embed_lr``), ``width`` = the key/value width.
    """

    def __init__(self, n_tables: int, n_layer: int, vocab_size: int, width: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(vocab_size, width) for _ in range(n_tables))
        self.layer_table = value_embed_layers(n_tables, n_layer)
        fed = [i for i, j in enumerate(self.layer_table) if j is not None]
        self.gate_index = {layer: k for k, layer in enumerate(fed)}
        self.gates = nn.Parameter(torch.ones(len(fed)))

    def forward(self, idx: torch.Tensor) -> list[torch.Tensor | None]:
        """Per layer, the (B, T, width) values to add, or None."""
        rows = [t(idx) for t in self.tables]
        return [None if j is None else self.gates[self.gate_index[i]] * rows[j]
                for i, j in enumerate(self.layer_table)]


class UNetSkips(nn.Module):
    """Skips across the stack: layer j's output (first half), times a learnable weight
    (initialised to 1), joins the input of its mirror layer n_layer - 1 - j (second half).
    An odd middle layer takes part in neither."""

    def __init__(self, n_layer: int) -> None:
        super().__init__()
        self.n_layer, self.half = n_layer, n_layer // 2
        self.weight = nn.Parameter(torch.ones(self.half))

    def before(self, i: int, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        j = self.n_layer - 1 - i
        return x + self.weight[j] * saved[j] if j < self.half else x

    def after(self, i: int, x: torch.Tensor, saved: list[torch.Tensor]) -> None:
        if i < self.half:
            saved.append(x)
