"""Error measures shared by the demo, experiments, training and benchmarks."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from torch import Tensor


def next_token_error(pred: Tensor, x: Tensor) -> Tensor:
    """e[b, t] = |pred[b, t] - x[b, t+1]| (Euclidean), for t = 0..T-2: (B, T-1).

    pred: (..., T, d) predictions (row t predicts x_{t+1}); x: (..., T, d).
    """
    return (pred[..., :-1, :] - x[..., 1:, :]).norm(dim=-1)


# ----------------------------------------------------------------------------- multi-step forecasts (SPEC §8)

def smape_terms(truth: ArrayLike, pred: ArrayLike) -> np.ndarray:
    """The terms of sMAPE on the 0-200 scale, elementwise: 200 |x - x^| / (|x| + |x^|).

    0/0 (x = x^ = 0) is defined as 0 (an exact forecast); a non-finite x^ scores 200 (the
    maximum). Shapes broadcast; float64.
    """
    x, p = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    with np.errstate(all="ignore"):
        num, den = np.abs(x - p), np.abs(x) + np.abs(p)
        t = np.where(den > 0, 200.0 * num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(np.isfinite(p), t, 200.0)


def smape(truth: ArrayLike, pred: ArrayLike) -> float:
    """sMAPE = 200 / n sum_i |x_i - x^_i| / (|x_i| + |x^_i|), over every entry (0-200 scale;
    not dysts' default 0-100 scale). See ``smape_terms`` for 0/0 and non-finite forecasts."""
    return float(smape_terms(truth, pred).mean())


def rolling_smape(truth: ArrayLike, pred: ArrayLike) -> np.ndarray:
    """r[..., h-1] = sMAPE over steps 1..h and all coordinates, h = 1..H.

    truth, pred: (..., H, d) -> (..., H).
    """
    per_step = smape_terms(truth, pred).mean(-1)  # (..., H)
    return np.cumsum(per_step, -1) / np.arange(1, per_step.shape[-1] + 1)


def vpt(truth: ArrayLike, pred: ArrayLike, threshold: float = 30.0, pts_per_lyapunov: int = 30) -> np.ndarray:
    """Valid prediction time in Lyapunov times: h* / pts_per_lyapunov, where h* is the first
    h (1-based) with rolling sMAPE > ``threshold``, and h* = H when it never exceeds it (so
    10 Lyapunov times for H = 300 at 30 points each).

    truth, pred: (..., H, d) -> (...,) (a 0-d array for one forecast).
    """
    r = rolling_smape(truth, pred)
    over = r > threshold
    first = np.where(over.any(-1), over.argmax(-1) + 1, r.shape[-1])
    return first / pts_per_lyapunov
