"""Causal self-attention of ckd's Transformer (SPEC §3): the score functions, their exact fast
forms (``attend``) and the multi-head module (``CausalSelfAttention``) with its options.

Score functions, per head, for a query q_t and keys k_s:

    linear    a[t, s] = q_t . k_s
    exp       a[t, s] = exp(q_t . k_s)                           not normalised
    softmax   a[t, s] = exp(q_t . k_s) / sum_s' exp(q_t . k_s')  (scaled_dot_product_attention)
    gaussian  a[t, s] = exp(-|q_t - k_s|^2 / 2)                  distance attention, not normalised

and the head output is o_t = sum_s a[t, s] v_s over the keys row t sees. Options of the module:

    mask_first        token 0 is never a key (it carries no pair x_{-1} -> x_0); row 0 then sees no
                      key and gets 0, for softmax too. Row t sees n_t = t keys (1..t), else t + 1 (0..t).
    norm = "keys"     position-normalised attention: o_t <- o_t / n_t, the mean of a[t, s] v_s over
                      the visible keys (a row that sees no key keeps 0). In CKD terms a head with
                      output gain c then runs the per-row step eta_t = c / t (SPEC §10). It applies to
                      every score function: for softmax, whose weights already sum to 1, it is an
                      extra 1 / n_t factor (the per-row step c / t of the softmax kernel).
    gains = n > 0     per-row gains: a buffer ``row_gain`` (n,), ones at init, multiplies every head's
                      output at row t before W_o: o_t <- row_gain[t] o_t (a fixed, position-dependent
                      output scaling; the construction writes a per-row step eta_t there). T <= n.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear_time.chunk import causal_linear_attention

ATTENTION = ("linear", "exp", "softmax", "gaussian")
ATTENTION_NORMS = ("none", "keys")


def attend(q: Tensor, k: Tensor, v: Tensor, kind: str) -> Tensor:
    """Causal attention o_t = sum_{s <= t} a[t, s] v_s with the score function ``kind`` (module doc).

    q, k: (B, H, T, E); v: (B, H, T, Ev). Returns (B, H, T, Ev). Exact (no approximation);
    no (T, T) matrix is stored:

    linear    o_t = q_t^T C_t with C_t = sum_{s <= t} k_s v_s^T: chunked prefix sums,
              O(T (C + E) Ev) time with chunks of C = 16 tokens and O(T (E + Ev)) memory
              (``ckd.linear_time.causal_linear_attention``; Katharopoulos et al. 2020).
    softmax   ``scaled_dot_product_attention`` (flash kernel on CPU, float64 included).
    exp       softmax attention over the keys plus one "sink" key of score 0 whose value is a unit
              vector in an extra channel: that channel returns 1 / (Z_t + 1), Z_t = sum_s exp(q_t.k_s),
              and the other channels sum_s exp(q_t.k_s) v_s / (Z_t + 1); their ratio is o_t.
    gaussian  exp attention with q' = (q, -|q|^2/2, 1), k' = (k, 1, -|k|^2/2): q'.k' = -|q - k|^2/2.
    """
    T, Ev = q.shape[-2], v.shape[-1]
    if T == 0:
        return v.new_zeros(v.shape)
    if kind == "linear":
        return causal_linear_attention(q, k, v)
    if kind == "softmax":
        return _sdpa(q, k, v)
    if kind == "gaussian":
        half_q = -0.5 * q.square().sum(-1, keepdim=True)
        half_k = -0.5 * k.square().sum(-1, keepdim=True)
        q = torch.cat([q, half_q, torch.ones_like(half_q)], dim=-1)
        k = torch.cat([k, torch.ones_like(half_k), half_k], dim=-1)
    # exp (and gaussian): token 0 of the padded sequence is the sink (query and key 0, value e_Ev)
    sink_value = torch.zeros(Ev + 1, dtype=v.dtype, device=v.device)
    sink_value[Ev] = 1.0
    v = torch.cat([sink_value.expand(*v.shape[:-2], 1, Ev + 1), F.pad(v, (0, 1))], dim=-2)
    o = _sdpa(F.pad(q, (0, 0, 1, 0)), F.pad(k, (0, 0, 1, 0)), v)[..., 1:, :]
    return o[..., :Ev] / o[..., Ev:]


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax attention, scale 1. Query/key and value sizes are padded with zero channels to
    the same size (which leaves scores and outputs unchanged): the CPU flash kernel needs E == Ev."""
    E, Ev = q.shape[-1], v.shape[-1]
    n = max(E, Ev)
    if E < n:
        q, k = F.pad(q, (0, n - E)), F.pad(k, (0, n - E))
    o = F.scaled_dot_product_attention(q, k, F.pad(v, (0, n - Ev)) if Ev < n else v, is_causal=True, scale=1.0)
    return o[..., :Ev]


def visible_keys(T: int, mask_first: bool = True) -> Tensor:
    """n_t, the number of keys row t = 0..T-1 sees (float64): t with ``mask_first`` (keys 1..t), else t + 1."""
    return torch.arange(T, dtype=torch.float64) + (0.0 if mask_first else 1.0)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: Attn(h)_t = W_o concat_heads(g_t o_t / n_t^[keys]) with
    o_t = sum_s a[t, s] W_v h_s over the keys row t sees (module doc: ``mask_first``, ``norm``, ``gains``).

    h: (B, T, width) -> (B, T, width). ``source`` (B, T, n), when given, is what the queries and keys
    read instead of h (scores a[t, s] of W_q source_t and W_k source_s; the query and key maps then
    take n inputs): a looped model's scores on the input tokens (``ckd.looped``, ``qk="input"``).
    """

    def __init__(self, width: int, n_heads: int, head_dim: int, value_dim: int, kind: str,
                 bias: bool = False, mask_first: bool = True, norm: str = "none", gains: int = 0):
        super().__init__()
        if norm not in ATTENTION_NORMS:
            raise ValueError(f"unknown attention norm {norm!r}; choose one of {', '.join(ATTENTION_NORMS)}")
        self.n_heads, self.head_dim, self.value_dim = n_heads, head_dim, value_dim
        self.kind, self.mask_first, self.norm = kind, mask_first, norm
        self.query = nn.Linear(width, n_heads * head_dim, bias=bias)
        self.key = nn.Linear(width, n_heads * head_dim, bias=bias)
        self.value = nn.Linear(width, n_heads * value_dim, bias=bias)
        self.out = nn.Linear(n_heads * value_dim, width, bias=bias)
        self.register_buffer("row_gain", torch.ones(gains) if gains else None)

    def forward(self, h: Tensor, source: Tensor | None = None) -> Tensor:
        B, T, _ = h.shape
        H = self.n_heads
        src = h if source is None else source
        q = self.query(src).view(B, T, H, self.head_dim).transpose(1, 2)  # (B, H, T, E)
        k = self.key(src).view(B, T, H, self.head_dim).transpose(1, 2)
        v = self.value(h).view(B, T, H, self.value_dim).transpose(1, 2)  # (B, H, T, Ev)
        if self.mask_first:  # rows and keys 1..T-1 only; row 0 gets 0
            o = attend(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], self.kind)
        else:
            o = attend(q, k, v, self.kind)
        if self.norm == "keys":  # row i of o sees i + 1 keys either way
            o = o / torch.arange(1, o.shape[-2] + 1, dtype=o.dtype, device=o.device)[:, None]
        if self.mask_first:
            o = F.pad(o, (0, 0, 1, 0))
        if self.row_gain is not None:
            o = o * self.row_gain[:T, None]
        return self.out(o.transpose(1, 2).reshape(B, T, H * self.value_dim))
