"""Learning-rate schedules: plain functions of the step, so the lr of any step is known without state.

`lr_at(step, ...)` is the lr used for optimizer step `step` (0-based). Warmup is linear from lr/warmup to lr
over `warmup_steps` steps (step 0 already trains). After warmup:
- constant: lr.
- cosine: lr -> lr * min_lr_ratio along half a cosine, reaching the minimum at the last step.
- linear: lr -> lr * min_lr_ratio linearly, reaching the minimum at the last step.
- wsd (warmup-stable-decay): lr until the last `decay_fraction` of the steps (at least one step), which decay
  linearly: the first of them is already below lr, the last is at lr * min_lr_ratio.
"""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, lr: float, kind: str = "cosine", warmup_steps: int = 0,
          min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    min_lr = lr * min_lr_ratio
    last = max(total_steps - 1, 1)
    if kind == "constant":
        return lr
    if kind == "cosine":
        span = max(last - warmup_steps, 1)
        progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        span = max(last - warmup_steps, 1)
        progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
        return lr + (min_lr - lr) * progress
    if kind == "wsd":
        decay_steps = max(1, round(total_steps * decay_fraction))
        decay_start = max(total_steps - decay_steps, warmup_steps)
        if step < decay_start:
            return lr
        # every one of the decay steps is below the peak, and the last one is at the minimum (even with 1 step)
        progress = min((step - decay_start + 1) / (total_steps - decay_start), 1.0)
        return lr + (min_lr - lr) * progress
    raise ValueError(f"unknown schedule {kind!r}")


def schedule_fn(cfg, total_steps: int, lr: float, warmup: bool = True):
    """`step -> lr` for a `ScheduleConfig` (warmup off when re-warming is disabled)."""
    warmup_steps = cfg.warmup_steps if warmup else 0
    return lambda step: lr_at(step, total_steps, lr, cfg.kind, warmup_steps, cfg.min_lr_ratio, cfg.decay_fraction)
