"""``ckd.predict``: the fixed public entry point (SPEC §4).

Validation lives here so that the Python API and the CLI reject the same inputs
with the same messages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .descent import descend
from .kernels import check_kernel

BACKENDS = ("descent", "transformer")
TOKENS = ("augmented", "raw")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def as_batch(x: Any, dtype: torch.dtype, name: str = "x") -> tuple[Tensor, bool]:
    """Check x is a finite, non-empty (T, d) or (B, T, d) numeric array; return (B, T, d)
    as a tensor of ``dtype`` (on x's device) and whether x had no batch axis."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except Exception as err:  # ragged lists and the like
            raise TypeError(f"{name} must be a numeric array: {err}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise TypeError(f"{name} must be real, got {t.dtype}")
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (T, d) or (B, T, d), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    t = t.to(dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    unbatched = t.ndim == 2
    return (t[None] if unbatched else t), unbatched


def as_dtype(dtype: Any) -> torch.dtype:
    """torch.float64/float32 or their names."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if dtype in DTYPES.values():
        return dtype
    raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")


def parse_depth(depth: Any) -> int | str:
    """An int >= 0, or "inf" (also accepts math.inf and the string "inf")."""
    if isinstance(depth, str):
        if depth.strip().lower() in ("inf", "infinity"):
            return "inf"
        try:
            depth = int(depth)
        except ValueError:
            raise ValueError(f"depth must be an integer >= 0 or 'inf', got {depth!r}") from None
    bad = ValueError(f"depth must be an integer >= 0 or 'inf', got {depth!r}")
    if isinstance(depth, bool):
        raise bad
    if isinstance(depth, (float, np.floating)):
        if math.isinf(depth) and depth > 0:
            return "inf"
        if not float(depth).is_integer():
            raise bad
        depth = int(depth)
    if not isinstance(depth, (int, np.integer)):
        raise bad
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return int(depth)


def check_number(value: Any, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """A finite real number (>= minimum, or > minimum if strict)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return v


def check_options(kernel: str, beta: Any, sigma: Any, depth: Any, step: Any, ridge: Any,
                  backend: str, tokens: str, sweeps: Any = 1) -> dict:
    """Validate every option of ``predict``; return them normalised."""
    check_kernel(kernel)
    if isinstance(sweeps, bool) or not float(check_number(sweeps, "sweeps", minimum=1)).is_integer():
        raise ValueError(f"sweeps must be an integer >= 1, got {sweeps!r}")
    if sweeps != 1 and (str(depth).strip().lower() not in ("inf", "infinity") and depth != math.inf):
        raise ValueError("sweeps > 1 need depth 'inf' (the descent backend)")
    if sweeps != 1 and kernel == "softmax":
        raise ValueError("sweeps > 1 need a symmetric kernel: linear, exp or gaussian, not softmax")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if tokens not in TOKENS:
        raise ValueError(f"unknown tokens {tokens!r}; choose one of {', '.join(TOKENS)}")
    depth = parse_depth(depth)
    if backend == "descent" and tokens != "augmented":
        raise ValueError("tokens='raw' applies to the transformer backend only")
    if backend == "transformer" and depth == "inf":
        raise ValueError("depth 'inf' needs the descent backend: a transformer has finitely many layers")
    return dict(
        kernel=kernel,
        beta=check_number(beta, "beta"),
        sigma=check_number(sigma, "sigma", minimum=0.0, strict=True),
        depth=depth,
        step=None if step is None else check_number(step, "step", minimum=0.0),
        ridge=check_number(ridge, "ridge", minimum=0.0),
        sweeps=int(sweeps),
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
    sweeps: int = 1,
) -> Any:
    """Next-token predictions of causal kernel descent. Row t predicts x_{t+1}.

    x: array or tensor (T, d) or (B, T, d); returns the same type and shape
    (numpy in, numpy out; a tensor stays on its device), in ``dtype``.
    kernel: linear | exp | softmax | gaussian (SPEC §2); depth: int >= 0 or "inf"
    (descent only); step None means eta = 0.5 / max_t (R[t,t] + ridge) over the
    batch; backend: descent | transformer; tokens: augmented | raw (transformer).
    memory_budget: bytes of (T, T) working memory for the descent backend (default 4 GiB);
    above it rows are processed in blocks, with the same result (``ckd.descent.descend``).
    sweeps: K >= 1 sweeps over the prompt at depth "inf" (SPEC §7, ``ckd.descent.swept``):
    1 is depth inf; K -> inf tends to kernel ridge regression on the pairs.

    Raises ``ValueError``/``TypeError`` with a one-line message on bad input and
    warns ``ckd.StabilityWarning`` for a step outside the convergence region.
    """
    dtype = as_dtype(dtype)
    opts = check_options(kernel, beta, sigma, depth, step, ridge, backend, tokens, sweeps)
    batch, unbatched = as_batch(x, dtype)
    if backend == "descent":
        out = descend(batch, memory_budget=memory_budget, **opts)
    else:
        opts.pop("sweeps")  # 1: checked above
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
