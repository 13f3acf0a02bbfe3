"""Learning-rate schedules stepped every optimizer step; built from torch's own schedulers."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def cosine(optimizer: Optimizer, total_steps: int, min_lr_ratio: float = 0.0):
    base = optimizer.param_groups[0]["lr"]
    return CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=base * min_lr_ratio)


def warmup_linear(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.1):
    """Linear warm-up from ~0 over ``warmup_ratio`` of the steps, then linear decay to 0."""
    warmup = max(int(total_steps * warmup_ratio), 1)
    return SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup),
            LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=max(total_steps - warmup, 1)),
        ],
        milestones=[warmup],
    )
