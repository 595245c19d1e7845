"""``ckd.predict``: the fixed public entry point (SPEC §4).

Validation lives in ``ckd.validation`` (one module for every entry point), so that the Python
API and the CLI reject the same inputs with the same messages; its names used to live here and
are re-exported for compatibility.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .descent import descend
from .validation import (  # noqa: F401 - re-exported: other modules import these from ckd.api
    BACKENDS,
    DTYPES,
    TOKENS,
    as_batch,
    as_dtype,
    check_memory_budget,
    check_number,
    check_options,
    parse_depth,
)


def predict(
    x: Any,
    kernel: str = "exp",
    *,
    beta: float = 1.0,
    sigma: float = 1.0,
    depth: int | str = 16,
    step: float | None = None,
    ridge: float = 0.0,
    backend: str = "descent",
    tokens: str = "augmented",
    dtype: Any = torch.float64,
    memory_budget: float | None = None,
) -> Any:
    """Next-token predictions of causal kernel descent. Row t predicts x_{t+1}.

    x: array or tensor (T, d) or (B, T, d); returns the same type and shape
    (numpy in, numpy out; a tensor stays on its device), in ``dtype``.
    kernel: linear | exp | softmax | gaussian (SPEC §2); depth: int >= 0 or "inf"
    (descent only); step None means eta = 0.5 / max_t (R[t,t] + ridge) over the
    batch; backend: descent | transformer; tokens: augmented | raw (transformer).
    memory_budget: bytes of (T, T) working memory for the descent backend (default 4 GiB);
    above it rows are processed in blocks, with the same result (``ckd.descent.descend``).

    Raises ``ValueError``/``TypeError`` with a one-line message on bad input and
    warns ``ckd.StabilityWarning`` for a step outside the convergence region.
    """
    dtype = as_dtype(dtype)
    opts = check_options(kernel, beta, sigma, depth, step, ridge, backend, tokens)
    memory_budget = check_memory_budget(memory_budget)
    batch, unbatched = as_batch(x, dtype)
    if backend == "descent":
        out = descend(batch, memory_budget=memory_budget, **opts)
    else:
        out = _transformer_backend(batch, tokens=tokens, **opts)
    out = out[0] if unbatched else out
    return out if isinstance(x, Tensor) else out.cpu().numpy()


def _transformer_backend(x: Tensor, *, kernel: str, beta: float, sigma: float, depth: int,
                         step: float | None, ridge: float, tokens: str) -> Tensor:
    try:
        from .construction import run_constructed  # the Transformer issue provides it
    except ImportError:
        raise ValueError("the transformer backend is not available yet; use backend='descent'") from None
    return run_constructed(x, kernel=kernel, beta=beta, sigma=sigma, depth=depth, step=step,
                           ridge=ridge, tokens=tokens)
