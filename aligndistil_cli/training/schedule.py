"""Learning-rate schedules: linear warmup, then cosine or linear decay to a minimum."""

from __future__ import annotations

import math
from typing import Callable

import torch

DECAYS: dict[str, Callable[[float], float]] = {
    # progress in [0, 1] after warmup -> multiplier in [0, 1] before the floor is applied
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


def lr_lambda(total_steps: int, warmup_steps: int, decay: str, min_lr_ratio: float
              ) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Warmup goes linearly from 1/warmup to 1 (step 0 already trains); decay ends at
    ``min_lr_ratio`` (the official recipe's cosine_with_min_lr uses 0.1).
    """
    decay_fn = DECAYS[decay]

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay_fn(progress)

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                    decay: str, min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, decay, min_lr_ratio))
