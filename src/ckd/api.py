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
    CHECKPOINT,
    DTYPES,
    PRETRAINED,
    TOKENS,
    as_batch,
    as_dtype,
    check_complex,
    check_memory_budget,
    check_number,
    check_options,
    parse_depth,
    parse_step,
)


def predict(
    x: Any,
    kernel: str = "exp",
    *,
    beta: float = 1.0,
    sigma: float = 1.0,
    depth: int | str = 16,
    step: float | Any | None = None,
    ridge: float = 0.0,
    backend: str = "descent",
    tokens: str = "augmented",
    dtype: Any = torch.float64,
    memory_budget: float | None = None,
    method: str = "auto",
    features: int | None = None,
    feature_seed: int = 0,
    sweeps: int = 1,
    loops: int | None = None,
) -> Any:
    """Next-token predictions of causal kernel descent. Row t predicts x_{t+1}.

    x: array or tensor (T, d) or (B, T, d); returns the same type and shape
    (numpy in, numpy out; a tensor stays on its device), in ``dtype``.
    Complex x (SPEC §10; the linear kernel and the descent backend only, any depth, path and
    sweeps): k(a, b) = b^H a, complex predictions. ``dtype`` then names the precision: a complex
    x is computed in complex128 for float64 (the default) and complex64 for float32, never with
    its imaginary part dropped; dtype complex128 / complex64 also turns a real x complex.
    kernel: linear | exp | softmax | gaussian (SPEC §2); depth: int >= 0 or "inf"
    (descent only); step None means eta = 0.5 / max_t (R[t,t] + ridge) over the
    batch; a vector of length T (list, NumPy array or tensor) is a per-row step eta_0..eta_{T-1}
    (SPEC §10; eta_0 unused, eta_t >= 0): D = diag(eta), each layer p <- p + D P r,
    r <- r - D (R r + ridge r); depth inf is then D P (R + ridge I)^{-1} D^{-1} y, which needs
    eta_t > 0 and differs from the uniform-step answer unless eta is constant (``ckd.descent.descend``);
    backend: descent | transformer | "pretrained:NAME" (a trained model of ``ckd.pretrained``,
    which brings its own attention, depth and tokens: kernel, beta, sigma, depth, step, ridge and
    tokens must then stay at their defaults), or "checkpoint:PATH" (the model of a ``ckd train``
    checkpoint, likewise); tokens: augmented | raw (transformer). loops: a looped trained model
    (``ckd train --loop``) run for this many loops instead of its trained count (those two backends only).
    memory_budget: bytes of (T, T) working memory for the descent backend (default 4 GiB);
    above it rows are processed in blocks, with the same result (``ckd.descent.descend``).
    method: auto | dense | linear (descent backend): "auto" runs the linear kernel in linear time
    (``ckd.linear_time``, exact; O(T d^2) instead of O(T^2 d)) and every other kernel densely;
    "dense" forces the T x T path. features=D, feature_seed: random features for exp / softmax /
    gaussian, run in linear time (exact CKD for the kernel phi.phi, an approximation of the
    kernel: ``docs/performance.md``); off unless given.
    sweeps: K >= 1 sweeps over the prompt at depth "inf" (SPEC §7, ``ckd.descent.swept``):
    1 is depth inf; K -> inf tends to kernel ridge regression on the pairs.

    Raises ``ValueError``/``TypeError`` with a one-line message on bad input and
    warns ``ckd.StabilityWarning`` for a step outside the convergence region.
    """
    dtype = as_dtype(dtype, complex_ok=True)
    opts = check_options(kernel, beta, sigma, depth, step, ridge, backend, tokens, sweeps)
    memory_budget = check_memory_budget(memory_budget)
    linear_opts = _linear_time_options(opts, backend, method, features, feature_seed)
    batch, unbatched = as_batch(x, dtype, allow_complex=True)
    if batch.is_complex():
        if backend != "descent":
            raise ValueError(f"complex x runs on the descent backend only (backend {backend!r} is real)")
        check_complex(batch, kernel)
    opts["step"] = parse_step(opts["step"], batch.shape[1])  # a per-row step: its length is T
    if loops is not None and not backend.startswith((PRETRAINED, CHECKPOINT)):
        raise ValueError("loops applies to a trained looped model: backend 'pretrained:NAME' or 'checkpoint:PATH'")
    if backend == "descent":
        out = descend(batch, memory_budget=memory_budget, **opts, **linear_opts)
    elif backend.startswith((PRETRAINED, CHECKPOINT)):
        given = [k for k, v in dict(opts, tokens=tokens).items()
                 if (v is not None if k == "step" else v != _PREDICT_DEFAULTS[k])]
        if given:
            raise ValueError(f"backend {backend!r} runs the model's own attention and layers; {given[0]} does not "
                             "apply to it")
        from .pretrained import trained_model  # lazy: loading a model needs the training code

        with torch.no_grad():
            source = backend.removeprefix(CHECKPOINT) if backend.startswith(CHECKPOINT) else backend
            out = trained_model(source, batch.shape, batch.device, loops=loops).to(dtype)(batch)
    else:
        opts.pop("sweeps")  # 1: checked above
        out = _transformer_backend(batch, tokens=tokens, **opts)
    out = out[0] if unbatched else out
    return out if isinstance(x, Tensor) else out.cpu().numpy()


_PREDICT_DEFAULTS = dict(kernel="exp", beta=1.0, sigma=1.0, depth=16, step=None, ridge=0.0, sweeps=1,
                         tokens="augmented")


def _transformer_backend(x: Tensor, *, kernel: str, beta: float, sigma: float, depth: int,
                         step: float | Tensor | None, ridge: float, tokens: str) -> Tensor:
    from .construction import run_constructed
    check_transformer_memory(x, kernel=kernel, depth=depth, ridge=ridge, tokens=tokens)
    if isinstance(step, Tensor):  # a per-row step (T,), validated: float64 on x's device
        step = step.to(x.device)
    return run_constructed(x, kernel=kernel, beta=beta, sigma=sigma, depth=depth, step=step,
                           ridge=ridge, tokens=tokens)


def _linear_time_options(opts: dict, backend: str, method: Any, features: Any, feature_seed: Any) -> dict:
    """Validate method / features / feature_seed (``ckd.linear_time``); they apply to the descent backend."""
    from .linear_time import check_features, uses_linear_time

    features = check_features(opts["kernel"], features, feature_seed, opts["beta"])
    uses_linear_time(opts["kernel"], method, features)
    if backend != "descent" and (method != "auto" or features is not None):
        raise ValueError("method and features apply to the descent backend only")
    return dict(method=method, features=features, feature_seed=int(feature_seed))


def check_transformer_memory(x: Tensor, *, kernel: str, depth: int, ridge: float, tokens: str) -> None:
    """Refuse (one line) a constructed transformer that cannot fit in memory, before building it:
    its layers, weights and the residual stream of every layer (``ckd.transformer.memory_bytes``)
    plus the (B, T, T) kernel matrices the step is computed from."""
    from .transformer import TransformerConfig, memory_bytes
    from .validation import check_fits

    B, T, d = x.shape
    config = TransformerConfig(dim=d, n_layers=depth, n_heads=2, value_dim=d, attention=kernel, tokens=tokens,
                               max_len=max(T, 1), mlp=ridge > 0, mlp_width=2 * d, prev_attention="linear")
    need = memory_bytes(config, B, T, x.element_size(), hidden=True) + 2 * B * T * T * x.element_size()
    check_fits(need, f"the transformer backend at depth {depth} on x of shape {tuple(x.shape)}",
            "use a smaller depth, or backend='descent' (same predictions, no per-layer weights)", x.device)
