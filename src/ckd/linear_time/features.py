"""Random feature maps phi with phi(a).phi(b) ~ k(a, b): the feature kernels of SPEC §9 (opt-in).

Any kernel written k(a, b) = phi(a).phi(b) with a finite map phi: R^d -> R^D runs through the
linear-time recurrences of ``ckd.linear_time`` with phi(x) in place of x. The result is *exact*
CKD for the kernel phi.phi (tested against the dense path on phi's Gram matrix) and an
*approximation* of CKD for k, whose error is measured in ``docs/performance.md``.

Maps (omega_j ~ N(0, I_d) i.i.d., drawn from ``torch.Generator().manual_seed(feature_seed)`` in
float64 on the CPU, so the same seed gives the same map on every device and dtype):

    gaussian  phi(x) = (cos(Omega x / sigma), sin(Omega x / sigma)) / sqrt(m),  m = D / 2 (D even)
              trigonometric random Fourier features (Rahimi & Recht 2007, the sin/cos pairs of
              Sutherland & Schneider 2015): phi(a).phi(b) = (1/m) sum_j cos(omega_j.(a - b) / sigma),
              E = exp(-|a - b|^2 / (2 sigma^2)), and phi(a).phi(a) = 1 exactly, as k(a, a).
    exp       phi(x) = exp(sqrt(beta) omega_j.x - beta |x|^2 / 2) / sqrt(D),  j = 1..D, beta >= 0
              positive random features (Choromanski et al. 2021, FAVOR+ with i.i.d. omega):
              E[phi(a).phi(b)] = exp(beta a.b), every phi_j > 0. The exponent is at most
              |omega_j|^2 / 2 (AM-GM), so phi never overflows; it underflows for large beta |x|^2.
    softmax   the exp map, with the normalisation of SPEC §2 applied to phi.phi: for row t,

                  P[t, s] = phi(x_t).phi(x_{s-1})     / (phi(x_t).Z_t)
                  R[t, s] = phi(x_{t-1}).phi(x_{s-1}) / (phi(x_{t-1}).Z_t),   Z_t = sum_{s'=1}^t phi(x_{s'-1})

              (one prefix sum Z shared by P and R). A constant factor on phi cancels in both
              ratios, so phi is computed as exp(log phi - m) with m the largest log-feature of the
              sequence: no overflow, the same P and R.

Negative beta (exp(beta a.b) = exp(|beta| a.(-b))) would need different maps for queries and keys,
which the residual recursion (the keys are also R's queries) cannot use: it is refused.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels import CausalMatrices, causal_matrices
from ..validation import MAX_INT, check_integer

FEATURE_KERNELS = ("exp", "softmax", "gaussian")


def check_features(kernel: str, features, feature_seed, beta: float) -> int | None:
    """Validate ``features`` (None, or an integer D >= 1 for exp / softmax / gaussian; even for
    gaussian) and ``feature_seed`` (an integer in [0, 2^63)); return D or None. One clear ``ValueError`` /
    ``TypeError`` per mistake."""
    feature_seed = check_integer(feature_seed, "feature_seed", 0, MAX_INT, "in [0, 2**63)")
    if features is None:
        if feature_seed != 0:  # never ignored: it seeds the features, and there are none
            raise ValueError(f"feature_seed applies with features=D (random features), got feature_seed="
                             f"{feature_seed!r} without features")
        return None
    features = check_integer(features, "features", 1)
    if kernel not in FEATURE_KERNELS:
        raise ValueError(f"features apply to the {', '.join(FEATURE_KERNELS)} kernels; the {kernel} kernel "
                         "runs exactly in linear time without them")
    if kernel == "gaussian" and features % 2:
        raise ValueError(f"features must be even for the gaussian kernel (cos and sin pairs), got {features}")
    if kernel != "gaussian" and beta < 0:
        raise ValueError(f"positive random features need beta >= 0, got beta={beta!r}")
    return features


def features_bytes(B: int, T: int, d: int, features: int, itemsize: int) -> int:
    """Bytes of the random-feature path besides its T x T or depth-N work: Omega (m, d) drawn in float64 and
    cast, the projection and phi(x) (B, T, D), the keys, queries and prefix sums built from it (about six
    (B, T, D) arrays), and the D x d state of the delta rule."""
    return 16 * features * d + itemsize * (6 * B * T * features + 2 * B * features * d)


def frequencies(kernel: str, features: int, dim: int, feature_seed: int = 0) -> Tensor:
    """Omega (m, dim) float64 on the CPU: m = features / 2 (gaussian) or features (exp, softmax)."""
    m = features // 2 if kernel == "gaussian" else features
    g = torch.Generator().manual_seed(int(feature_seed))
    return torch.randn(m, dim, generator=g, dtype=torch.float64)


def feature_map(x: Tensor, kernel: str, features: int, feature_seed: int = 0, *, beta: float = 1.0,
                sigma: float = 1.0) -> Tensor:
    """phi(x) (..., D) of x (..., d) in x's dtype and device (module doc). For ``softmax`` every
    sequence (all axes but the last two) is divided by its largest feature (cancels in the ratios)."""
    omega = frequencies(kernel, features, x.shape[-1], feature_seed).to(device=x.device, dtype=x.dtype)
    proj = x @ omega.T  # (..., m)
    if kernel == "gaussian":
        proj = proj / sigma
        return torch.cat([proj.cos(), proj.sin()], -1) / math.sqrt(features // 2)
    log_phi = math.sqrt(beta) * proj - 0.5 * beta * x.square().sum(-1, keepdim=True)
    if kernel == "softmax" and x.ndim >= 2 and log_phi.numel():
        log_phi = log_phi - log_phi.amax((-2, -1), keepdim=True)
    else:
        log_phi = log_phi - 0.5 * math.log(features)
    return log_phi.exp()


def feature_matrices(x: Tensor, kernel: str, features: int, feature_seed: int = 0, *, beta: float = 1.0,
                     sigma: float = 1.0) -> CausalMatrices:
    """The causal matrices P, R (B, T, T) of the kernel phi.phi (dense, for reference and tests):
    the linear kernel's matrices of phi(x), row-normalised for ``softmax`` (module doc)."""
    phi = feature_map(x, kernel, features, feature_seed, beta=beta, sigma=sigma)
    mats = causal_matrices(phi, "linear")
    if kernel == "softmax":
        for M in (mats.P, mats.R):
            total = M.sum(-1, keepdim=True)
            M.div_(torch.where(total > 0, total, torch.ones_like(total)))
    return mats
