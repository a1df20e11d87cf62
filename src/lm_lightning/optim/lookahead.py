"""Lookahead (Zhang et al., 2019): k fast steps of an inner optimizer, then pull slow weights.

Every ``k`` steps the slow weights move ``alpha`` of the way towards the fast weights and the
fast weights restart from there. The wrapper is a real ``torch.optim.Optimizer`` sharing its
param groups with the inner one, so Lightning, gradient scalers and lr schedulers see one
optimizer, and its state dict carries both the inner state and the slow weights (resume-safe).
"""

from __future__ import annotations

from typing import Any

import torch


class Lookahead(torch.optim.Optimizer):
    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        self.check(k, alpha)
        self.optimizer = optimizer
        self.k, self.alpha = int(k), float(alpha)
        self.fast_steps = 0
        # Optimizer.__init__ appends the very same group dicts, so an lr written by a scheduler
        # to one is seen by both.
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups

    @staticmethod
    def check(k: int, alpha: float) -> None:
        if int(k) < 1:
            raise ValueError(f"optimizer.lookahead.k must be >= 1, got {k}")
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"optimizer.lookahead.alpha must be in (0, 1], got {alpha}")

    def _params(self):
        for group in self.param_groups:
            yield from group["params"]

    def step(self, closure=None):
        with torch.no_grad():
            for p in self._params():
                if "slow" not in self.state[p]:
                    self.state[p]["slow"] = p.detach().clone()
        loss = self.optimizer.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            with torch.no_grad():
                for p in self._params():
                    slow = self.state[p]["slow"]
                    slow.add_(p.detach() - slow, alpha=self.alpha)
                    p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        slow = super().state_dict()
        return {"inner": self.optimizer.state_dict(), "slow": slow["state"], "param_groups": slow["param_groups"],
                "fast_steps": self.fast_steps, "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({"state": state_dict["slow"], "param_groups": state_dict["param_groups"]})
        self.optimizer.load_state_dict(state_dict["inner"])
        # Optimizer.load_state_dict rebuilt our group dicts: share the inner ones again.
        self.param_groups = self.optimizer.param_groups
        self.fast_steps = int(state_dict.get("fast_steps", 0))
