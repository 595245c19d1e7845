"""Depth-inf linear CKD as a DeltaNet call: the inputs of flash-linear-attention's delta rule.

flash-linear-attention (``fla.ops.delta_rule``, version 0.6: ``chunk_delta_rule``,
``fused_recurrent_delta_rule``, and the plain references of ``fla/ops/delta_rule/naive.py``) runs,
per sequence and head, with a state S (K x V) starting at 0 and no normalisation of q or k
(``use_qk_l2norm_in_kernel=False``):

    S_i = S_{i-1} + beta_i k_i (v_i - S_{i-1}^T k_i)^T,      o_i = scale * S_i^T q_i

Our normalised delta rule (SPEC §9, ``naive.delta_rule_naive`` with u = k, the linear kernel) is
a_i = (y_i - W_{i-1} k_i) / (|k_i|^2 + lambda), W_i = W_{i-1} + a_i k_i^T, p_i = W_i q_i on the pairs
i = 0..T-2 of x (B, T, d). With S_i = W_i^T the two are the same recurrence for

    q_i = x_{i+1},  k_i = x_i,  v_i = x_{i+1},  beta_i = 1 / (|x_i|^2 + lambda),  scale = 1,

initial state 0, and o_i = p_i is row i + 1 of ``ckd.predict(x, "linear", depth="inf", ridge=lambda)``
(row 0 is 0). A zero token with lambda = 0 gets beta 0 (its key is 0, so no update either way: ours
sets its coefficient to 0). Zero channels appended to q, k and v (``channels``) change nothing: they
add nothing to |k|^2 or to q.k, and S's extra rows and columns stay 0.

Layouts: fla 0.6's kernels are sequence-first, [B, T, H, K] with beta [B, T, H] (``head_first`` was
removed); its plain references in ``naive.py`` (``delta_rule_recurrence``, which computes in float32,
and ``delta_rule_chunkwise``, in the input's dtype, T a multiple of the chunk) take head-first
[B, H, T, K] and a fixed scale K^-1/2, so their q must be multiplied by K^1/2.
``tests/test_deltanet.py`` checks the mapping against those references when fla is installed, and
against a loop written in the test always.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch.nn.functional as F
from torch import Tensor

__all__ = ["deltanet_inputs", "deltanet_rows", "fla_reference"]


def deltanet_inputs(x: Tensor, ridge: float = 0.0, channels: int | None = None) -> dict:
    """fla's delta-rule arguments for x (B, T, d) real (module doc): q, k, v (B, T-1, 1, c) and beta
    (B, T-1, 1), sequence-first with one head, and ``scale=1.0``; c = ``channels`` (>= d: zero channels
    appended, e.g. for kernels that need 16) or d. Contiguous tensors of x's dtype and device."""
    if x.ndim != 3 or x.is_complex():
        raise ValueError(f"deltanet_inputs needs real x of shape (B, T, d); got {tuple(x.shape)} {x.dtype}")
    d = x.shape[-1]
    if channels is not None and channels < d:
        raise ValueError(f"channels={channels} is fewer than the {d} of x")
    k, q = x[:, :-1], x[:, 1:]
    norm = k.square().sum(-1) + ridge
    beta = norm.reciprocal().masked_fill(norm == 0, 0.0)
    pad = (0, (channels or d) - d)
    k, q = F.pad(k, pad)[:, :, None].contiguous(), F.pad(q, pad)[:, :, None].contiguous()
    return {"q": q, "k": k, "v": q.clone(), "beta": beta[:, :, None].contiguous(), "scale": 1.0}


def deltanet_rows(o: Tensor, d: int | None = None) -> Tensor:
    """fla's output o (B, T-1, 1, c) -> the rows (B, T, d) of ``ckd.predict`` (row 0 = 0; the first d
    channels, all of them when d is None)."""
    return F.pad(o[:, :, 0, :d], (0, 0, 1, 0))


def fla_reference() -> ModuleType | None:
    """fla's plain delta-rule references (the file ``fla/ops/delta_rule/naive.py``, needing torch and
    einops only), loaded without importing the ``fla`` package (whose kernels import Triton); None when
    fla (the ``fla-core`` distribution) or einops is not installed."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("einops") is None:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "ops" / "delta_rule" / "naive.py"
        if path.is_file():
            file_spec = importlib.util.spec_from_file_location("fla_delta_rule_naive", path)
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            return module
    return None
