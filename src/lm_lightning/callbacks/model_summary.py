"""The model summary printed at the start of fit, without Lightning's FLOPs column.

Lightning 2.6 fills its FLOPs column by running ``example_input_array`` through the model under
torch's FlopCounterMode. LMModule has no example input (one would cost an extra forward at every
start, a second compilation with ``model.compile`` and a forward through sharded parameters under
FSDP), so every row and the total read 0. This summary leaves the column out and prints instead
the training FLOPs per token that MFU uses (``LMModule.flops_per_token``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size

from lm_lightning.callbacks.protocols import CountsFlops

DROPPED_COLUMNS = ("FLOPs",)
RIGHT_ALIGNED = ("Params", "Params per Device", "In sizes", "Out sizes")


def flops_per_token(pl_module: Any) -> float | None:
    return float(pl_module.flops_per_token()) if isinstance(pl_module, CountsFlops) else None


class ModelSummary(RichModelSummary):
    """Lightning's rich model summary less the FLOPs column; train() adds it when
    ``trainer.enable_model_summary`` is true (and turns Lightning's own off)."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self._flops_per_token: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._flops_per_token = flops_per_token(pl_module)
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data: list[tuple[str, list[str]]], total_parameters: int,
                  trainable_parameters: int, model_size: float, total_training_modes: dict[str, int],
                  total_flops: int = 0, **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, cells) for name, cells in summary_data if name not in DROPPED_COLUMNS]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, justify="right" if name in RIGHT_ALIGNED else "left",
                             style="dim" if not name.strip() else None, no_wrap=name == "Name")
        for row in zip(*(cells for _, cells in columns)):
            table.add_row(*row)

        grid = Table.grid(expand=True)
        grid.add_column()
        frozen = total_parameters - trainable_parameters
        lines = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(frozen))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes["train"])),
            ("Modules in eval mode", str(total_training_modes["eval"])),
        ]
        if self._flops_per_token:
            lines.append(("Estimated training FLOPs per token (6N + 12·L·H·Q·T)",
                          get_human_readable_count(int(self._flops_per_token))))
        for label, value in lines:
            grid.add_row(f"[bold]{label}[/]: {value}")
        console = get_console()
        console.print(table)
        console.print(grid)


def summary_callbacks(enabled: Any, callbacks: list[Any]) -> list[Any]:
    """``[ModelSummary()]`` unless the summary is off (``enable_model_summary: false``) or the
    callbacks already hold one of Lightning's summaries."""
    from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary

    if enabled is False or any(isinstance(c, LightningModelSummary) for c in callbacks):
        return []
    return [ModelSummary()]
