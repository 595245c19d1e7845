"""Exact power-of-two scaling of the linear kernel's inputs (huge or tiny x keep every digit)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def power_of_two_scale(x: Tensor) -> int:
    """k such that x / 2^k has its largest |entry| in [1/2, 1), when that entry is beyond 2^+-64
    in float64 (2^+-8 in float32: |x|^3 of a layer must stay inside the dtype's range); else 0.
    Dividing by a power of two is exact (no rounding), so the linear kernel's CKD on x / 2^k, with
    eta 4^k and lambda / 4^k, gives exactly p / 2^k: huge or tiny inputs keep every digit instead
    of overflowing (|x|^3 past the float range) or underflowing (|x|^2 to 0)."""
    big = float(x.abs().amax()) if x.numel() else 0.0
    if big == 0.0:
        return 0
    k = math.frexp(big)[1]
    exact = x.is_floating_point() or x.is_complex()  # complex: its parts' precision (abs is the modulus)
    limit = math.frexp(torch.finfo(x.dtype).max)[1] // 16 if exact else 64  # 64, or 8 in float32 / complex64
    return k if abs(k) > limit else 0


def mixed_scales(x: Tensor) -> bool:
    """Whether the sequences of x (B, T, d) need different power-of-two scales (``power_of_two_scale``)."""
    return len({power_of_two_scale(x[b:b + 1]) for b in range(x.shape[0])}) > 1
