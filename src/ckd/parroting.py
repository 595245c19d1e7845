"""The rollouts that need no fit -- context parroting, last value, context mean -- in NumPy only.

``ckd forecast --horizon H --method parrot|last|mean`` runs them without importing torch (its
start-up is then ~0.2 s instead of ~2 s, docs/performance.md), and the library's
``ckd.baselines.context_parrot`` and ``ckd.rollout`` call these same functions, so the command
and the library give the same bits. Arrays are (B, T, d) float; results (B, H, d) of the same dtype.
"""

from __future__ import annotations

import numpy as np

SIMPLE_METHODS = ("parrot", "last", "mean")


def parrot(series: np.ndarray, horizon: int, embed: int = 5) -> np.ndarray:
    """Context parroting (SPEC §8; *Context parroting*, arXiv 2505.11349): for each coordinate
    u_0..u_{T-1} on its own, with the last window w = (u_{T-D}, ..., u_{T-1}) (dimension D,
    lag 1), find the earlier window (u_{j-D+1}, ..., u_j), D-1 <= j <= T-2, nearest to w in
    Euclidean distance (ties: the earliest j), and copy what followed it, c = (u_{j+1}, ...,
    u_{T-1}) of length L = T-1-j, repeated until H values exist: u^_{T+h} = c[h mod L].

    series: (T,), (T, d) or (B, T, d); returns (H,), (H, d) or (B, H, d).
    Needs T >= D + 1 (one earlier window); raises ``ValueError`` otherwise.
    """
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    if isinstance(embed, bool) or int(embed) != embed or embed < 1:
        raise ValueError(f"embed must be an integer >= 1, got {embed!r}")
    H, D = int(horizon), int(embed)
    series = np.asarray(series)
    x = series[None, :, None] if series.ndim == 1 else (series[None] if series.ndim == 2 else series)
    T = x.shape[1]
    if T < D + 1:
        raise ValueError(f"context parroting with embed {D} needs a context of at least {D + 1} values, got {T}")
    u = np.swapaxes(x, 1, 2)  # (B, d, T)
    # distances of each series scaled by a power of two into (-1, 1): the same argmin, exact, and no square
    # beyond the float range at any scale (values near 1e154 and above)
    windows = np.lib.stride_tricks.sliding_window_view(unit_scaled(u, -1)[0], D, axis=-1)  # (B, d, T-D+1, D)
    dist = np.square(windows[..., :-1, :] - windows[..., -1:, :]).sum(-1)  # candidates j = D-1..T-2
    j = dist.argmin(-1) + D - 1  # (B, d); argmin returns the first minimum
    L = T - 1 - j
    idx = j[..., None] + 1 + np.arange(H) % L[..., None]  # (B, d, H)
    out = np.swapaxes(np.take_along_axis(u, idx, -1), 1, 2)  # (B, H, d)
    return out[0, :, 0] if series.ndim == 1 else (out[0] if series.ndim == 2 else out)


def unit_scaled(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(a / 2^k, k) for a finite float array: k (integers, kept along ``axis``) the binary exponent of the
    largest |entry| along ``axis``, so every entry of a / 2^k lies in (-1, 1). Exact (a power of two,
    applied in two halves: 2^k alone may not be a float), so argmins and means need no square or sum
    beyond the float range at any scale; ``unit_unscaled`` undoes it."""
    k = np.frexp(np.abs(a).max(axis, keepdims=True))[1]
    return np.ldexp(np.ldexp(a, -(k // 2)), -(k - k // 2)), k


def unit_unscaled(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """a 2^k (``unit_scaled``'s inverse), exact unless the result leaves the float range."""
    return np.ldexp(np.ldexp(a, k // 2), k - k // 2)


def simple_rollout(x: np.ndarray, horizon: int, method: str, embed: int = 5) -> tuple[np.ndarray, list[dict]]:
    """The H states after each context x (B, T, d) by ``method`` (``SIMPLE_METHODS``) and the
    settings used per sequence: parrot (per coordinate, window ``embed``), last (x^_{T+h} =
    x_{T-1}) or mean (x^_{T+h} = the mean of the context). Validated inputs."""
    B, _, d = x.shape
    if method == "parrot":
        return parrot(x, horizon, embed), [{"embed": int(embed)}] * B
    if method == "last":
        row = x[:, -1:]
    elif method == "mean":  # on x / 2^k: no sum beyond the float range at any scale
        z, k = unit_scaled(x, 1)
        row = unit_unscaled(z.mean(1, keepdims=True), k)
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(SIMPLE_METHODS)}")
    return np.ascontiguousarray(np.broadcast_to(row, (B, int(horizon), d))), [{}] * B
