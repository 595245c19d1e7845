"""Choosing a rollout's settings from the context alone, by held-out rollouts (SPEC §8).

For each origin o in ``heldout_origins(T)`` (``ORIGINS``: fractions of the context length T) a
method is fitted on z_0..z_{T-1-o} and rolled out for o steps; the score of a setting is the mean,
over origins and steps, of the clipped error min(|z^ - z|, ``CLIP``) in standardised units. The
setting with the smallest score is refitted on the whole context. Only context values are read.
Shared by the kernel rollouts (``ckd.rollout``), the reservoir baselines (``ckd.reservoir``) and
the layer-bounded iterations.
"""

from __future__ import annotations

import math

from torch import Tensor

ORIGINS = (0.1875, 0.3125)  # held-out ends of the context scoring a setting (fractions of T: 96, 160 of 512)
CLIP = 1.0


def heldout_origins(T: int) -> list[int]:
    """The held-out ends o of a context of length T (``ORIGINS``, fractions of T; at least 1 step)."""
    return sorted({max(1, round(f * T)) for f in ORIGINS})


def heldout_error(pred: Tensor, truth: Tensor) -> Tensor:
    """Mean clipped error min(|z^ - z|, 1) over the steps of held-out rollouts: pred (G, o, c) of G
    settings against truth (o, c) -> (G,); a non-finite step counts 1."""
    return (pred - truth[None]).norm(dim=-1).nan_to_num(nan=math.inf).clamp_max(CLIP).mean(-1)


def best(scores: dict) -> tuple:
    """The key with the smallest score; ties go to the first inserted (grid order)."""
    return min(scores, key=scores.get)
