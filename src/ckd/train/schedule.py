"""The run's schedules over the steps: the prompt-length curriculum (``length_at``) and the lr (``lr_factor``)."""

from __future__ import annotations

import math

from .config import TrainConfig


def length_at(cfg: TrainConfig, step: int) -> int:
    """Prompt length trained on at ``step``: with a curriculum of C steps,
    T_s = T0 + floor((T - T0) s / C) for s < C (T0 = min(4, T)), then T; without one, T.
    The prompts are drawn at full length and cut, so a curriculum changes no prompt's map f."""
    if step >= cfg.curriculum:
        return cfg.length
    start = min(4, cfg.length)
    return start + (cfg.length - start) * step // cfg.curriculum


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """lr(step) / lr: linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
