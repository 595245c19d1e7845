"""Shared test settings: float64 everywhere, deterministic, bounded hypothesis runs."""

import os

import torch
from hypothesis import settings

settings.register_profile("ckd", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ckd"))
torch.set_num_threads(min(2, torch.get_num_threads()))

RTOL = 1e-9  # the project's exactness standard in float64 (DEVELOPERS.md)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|b|, tiny): relative error over a whole array."""
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return float((a - b).abs().max() / scale)
