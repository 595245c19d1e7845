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


# ----------------------------------------------------------------------------- long-term statistics

SPECTRUM_SMOOTHING = 2.0  # sd of the gaussian smoothing of power spectra, in frequency bins


def power_spectrum(x: ArrayLike, smoothing: float = SPECTRUM_SMOOTHING) -> np.ndarray:
    """Normalised, smoothed power spectrum of each coordinate: x (n, d) -> p (n // 2 + 1, d).

    P(f) = |sum_t (x_t - mean(x)) e^{-2 pi i f t / n}|^2 for f = 0..n/2 (``numpy.fft.rfft``), then
    smoothed over f by a gaussian of sd ``smoothing`` bins truncated at 4 sd (weights
    exp(-k^2 / (2 sd^2)), |k| <= int(4 sd + 0.5), normalised to sum 1; the spectrum reflected at
    both ends, i.e. ``scipy.ndimage.gaussian_filter1d`` with its defaults), then divided by its
    sum. A coordinate that is constant has no spectrum: its column is 0. ``smoothing`` 0: none.
    """
    x = np.asarray(x, dtype=np.float64)
    P = np.abs(np.fft.rfft(x - x.mean(0), axis=0)) ** 2
    if smoothing > 0:
        r = int(4.0 * smoothing + 0.5)
        k = np.arange(-r, r + 1)
        w = np.exp(-0.5 * k * k / (smoothing * smoothing))
        w /= w.sum()
        padded = np.pad(P, ((r, r), (0, 0)), mode="symmetric")  # scipy's "reflect": d c b a | a b c d | d c b a
        P = np.stack([np.convolve(padded[:, j], w, mode="valid") for j in range(P.shape[1])], 1)
    total = P.sum(0)
    return np.divide(P, total, out=np.zeros_like(P), where=total > 0)


def spectral_hellinger(truth: ArrayLike, pred: ArrayLike, smoothing: float = SPECTRUM_SMOOTHING) -> float:
    """Hellinger distance between power spectra, averaged over coordinates (the D_H of the
    dynamical-systems reconstruction literature: Mikhaeil, Monfared & Durstewitz, NeurIPS 2022;
    Hess et al., ICML 2023; DynaMix, Hemmer & Durstewitz, arXiv 2505.13192; Panda, arXiv 2505.13755):

        D_H = 1/d sum_i H(p_i, q_i),   H(p, q) = sqrt(1/2 sum_f (sqrt p(f) - sqrt q(f))^2),

    p_i, q_i the ``power_spectrum`` of coordinate i of truth and pred (n, d), same n. H is 0 for
    identical spectra and 1 for spectra with disjoint supports (it equals sqrt(1 - sum_f
    sqrt(p q)) for normalised spectra; this form has no cancellation). A constant coordinate
    against a non-constant one counts 1, two constant ones 0; a non-finite pred (or one so large
    that its spectrum is not finite) counts 1.
    """
    truth, pred = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(f"truth and pred must both be (n, d), got {truth.shape} and {pred.shape}")
    if not np.isfinite(pred).all():
        return 1.0
    with np.errstate(all="ignore"):  # a rollout near the float64 limit has a spectrum of inf / NaN: counts 1
        p, q = power_spectrum(truth, smoothing), power_spectrum(pred, smoothing)
        h = np.sqrt(0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(0))
    empty_p, empty_q = p.sum(0) == 0, q.sum(0) == 0
    h = np.where(empty_p & empty_q, 0.0, np.where(empty_p | empty_q | ~np.isfinite(h), 1.0, h))
    return float(h.mean())
