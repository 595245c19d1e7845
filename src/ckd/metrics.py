"""Error measures shared by the demo, experiments, training and benchmarks."""

from __future__ import annotations

from torch import Tensor


def next_token_error(pred: Tensor, x: Tensor) -> Tensor:
    """e[b, t] = |pred[b, t] - x[b, t+1]| (Euclidean), for t = 0..T-2: (B, T-1).

    pred: (..., T, d) predictions (row t predicts x_{t+1}); x: (..., T, d).
    """
    return (pred[..., :-1, :] - x[..., 1:, :]).norm(dim=-1)
