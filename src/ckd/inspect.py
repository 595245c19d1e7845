"""Read a Transformer's attention: W_QK and W_OV per layer and head, and their distance to the
construction that runs CKD (SPEC §3).

Head h of a layer of a ``ckd.transformer.CausalTransformer`` has query, key, value and output
weights W_Q, W_K (E x w), W_V (Ev x w) and W_O (w x Ev) on the residual stream h_t of width w:

    score   q_t . k_s = h_t^T W_QK h_s,     W_QK = W_Q^T W_K     (w x w)
    write   W_O v_s   = W_OV h_s,           W_OV = W_O W_V       (w x w)

A LayerNorm in front of the attention (or of the read-out) is folded in as its linear part
diag(gamma) (I - 1 1^T / w); its per-token factor 1/std and every bias are left out: W_QK and W_OV
are the bilinear and linear parts of the head. The weights are read through the module's named
parameters (``blocks.L.attn.query.weight``, ...), in float64.

Coordinates (``basis``):

- ``"tokens"`` (default): through the embedding W_in (w x d_in) and the read-out W_out (d x w),

      W_QK^tok = W_in^T W_QK W_in   (d_in x d_in),        W_OV^tok = W_out W_OV W_in   (d x d_in),

  indexed by the slots of the input token: (x_{t-1}, x_t, one) for augmented tokens (query side t,
  key side s); raw tokens (x_t, one, pos_t) gain x_{t-1} in front, mapped to W_OV' W_in x by the
  previous-token head (W_OV' its value-output map: exact when it attends to t-1 alone). The
  (x_t, x_{s-1}) block of W_QK^tok is what a query x_t scores against a key x_{s-1}; W_OV^tok is
  what a head writes into the prediction from each slot of the token it attends to. Any invertible
  change of basis of the residual stream cancels (without LayerNorm), so these compare a trained
  model with the construction; after the first layer they describe the path that reads the embedded
  token directly. The construction's residual head writes r, which the read-out
  does not read: its W_OV^tok is 0.
- ``"residual"``: W_QK and W_OV themselves, blocks named by the construction's slots
  (x_{t-1}, x_t, r, p, one [, pos]; ``ckd.construction.slots``) when w is the construction's width.
  Meaningful for the construction and for models trained from it.

Distance to the construction: W_c, the same matrix of each of the construction's two heads
("residual": query x_{t-1}, writes -eta R r into r; "prediction": query x_t, writes +eta P r into p),
built for the model's kernel and tokens with beta = sigma = eta = 1 and read in the same basis:

    a = <W, W_c> / |W_c|^2,     distance = |W - a W_c| / |W|       (Frobenius)

the relative distance after the best scalar; a = 0 where W_c = 0, NaN distance where W = 0, None
when the widths differ (residual basis). For the construction a = beta (exp, softmax), 1/sigma^2
(gaussian) or 1 (linear) for W_QK, and a = eta for W_OV.

Reference: M. E. Sander, G. Peyré, *Towards Understanding the Universality of Transformers for
Next-Token Prediction*, ICLR 2025 (arXiv 2410.03011); W_QK / W_OV in token coordinates as in
Sander, Giryes, Suzuki, Blondel, Peyré, *How do Transformers Perform In-Context Autoregressive
Learning?*, ICML 2024 (arXiv 2402.05787).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .construction import construct, slots
from .transformer import CausalTransformer

BASES = ("tokens", "residual")
HEADS = ("residual", "prediction")  # the construction's two heads, in its order


def attention_blocks(model: CausalTransformer, *, basis: str = "tokens") -> list[dict]:
    """Per layer (1..L, the CKD blocks; not the previous-token layer of raw tokens) and head:

    {"layer", "head", "W_QK", "W_OV" (float64 tensors), "query", "key", "output" (slot name -> slice of
    the rows / columns), "blocks": {"W_QK": {(query slot, key slot): tensor}, "W_OV": {(output slot,
    key slot): tensor}}, "construction": {"residual" | "prediction": {"W_QK" | "W_OV": {"distance",
    "scale"}}}} (module doc). Raises ``TypeError`` for a model that is not a ``CausalTransformer``.
    """
    if not isinstance(model, CausalTransformer):
        raise TypeError(f"attention_blocks reads a ckd.transformer.CausalTransformer, got {type(model).__name__}")
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; choose one of {', '.join(BASES)}")
    mine = head_matrices(model, basis)
    ref = head_matrices(reference(model), basis)  # one layer: every layer of the construction is the same
    names = coordinates(model, basis)
    out = []
    for (layer, head), (qk, ov) in mine.items():
        construction = {}
        for h, name in enumerate(HEADS):
            qk_c, ov_c = ref.get((1, h), (None, None))
            construction[name] = {"W_QK": distance(qk, qk_c), "W_OV": distance(ov, ov_c)}
        out.append(dict(layer=layer, head=head, W_QK=qk, W_OV=ov, **names,
                        blocks={"W_QK": split(qk, names["query"], names["key"]),
                                "W_OV": split(ov, names["output"], names["key"])},
                        construction=construction))
    return out


def head_matrices(model: CausalTransformer, basis: str) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
    """{(layer, head): (W_QK, W_OV)} in ``basis`` (float64), layers numbered from 1."""
    params = {name: p.detach().to("cpu", torch.float64) for name, p in model.named_parameters()}
    c = model.config
    embed, readout = weight(params, "embed.weight"), weight(params, "readout.weight")
    if c.tokens == "raw":  # x_{t-1}: what the previous-token head writes from the embedded x_{t-1}
        v, o = weight(params, "prev.attn.value.weight"), weight(params, "prev.attn.out.weight")
        if isinstance(getattr(model.prev, "ln_attn", None), nn.LayerNorm) and getattr(c, "norm", "pre") != "post":
            v = v @ layernorm_part(params, "prev.ln_attn", v.shape[1])
        embed = torch.cat([o @ v @ embed[:, :c.dim], embed], dim=1)
    if isinstance(getattr(model, "ln_out", None), nn.LayerNorm):
        readout = readout @ layernorm_part(params, "ln_out", readout.shape[1])
    out = {}
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        H = getattr(attn, "n_heads", c.n_heads)
        q, k, v = (weight(params, f"blocks.{layer}.attn.{n}.weight") for n in ("query", "key", "value"))
        o = weight(params, f"blocks.{layer}.attn.out.weight")
        w = q.shape[1]
        if isinstance(getattr(block, "ln_attn", None), nn.LayerNorm) and getattr(c, "norm", "pre") != "post":
            ln = layernorm_part(params, f"blocks.{layer}.ln_attn", w)
            q, k, v = q @ ln, k @ ln, v @ ln
        q, k, v = q.view(H, -1, w), k.view(H, -1, w), v.view(H, -1, w)
        o = o.view(w, H, -1)
        for h in range(H):
            qk, ov = q[h].T @ k[h], o[:, h] @ v[h]
            if basis == "tokens":
                qk, ov = embed.T @ qk @ embed, readout @ ov @ embed
            out[layer + 1, h] = (qk, ov)
    return out


def layernorm_part(params: dict, prefix: str, width: int) -> Tensor:
    """diag(gamma) (I - 1 1^T / w): the linear part of a LayerNorm (gamma = 1 without weights)."""
    gamma = params.get(f"{prefix}.weight", torch.ones(width, dtype=torch.float64))
    centre = torch.eye(width, dtype=torch.float64) - 1.0 / width
    return gamma[:, None] * centre


def weight(params: dict, name: str) -> Tensor:
    if name not in params:
        raise ValueError(f"the model has no parameter {name!r}: attention_blocks reads a ckd CausalTransformer")
    return params[name]


def reference(model: CausalTransformer) -> CausalTransformer:
    """The construction for the model's kernel, tokens and positions, one layer, beta = sigma = eta = 1."""
    c = model.config
    return construct(c.attention, dim=c.dim, depth=1, step=1.0, tokens=c.tokens, max_len=c.max_len,
                     positional=c.positional, prev_beta=1.0 if c.positional == "sinusoidal" else None)


def coordinates(model: CausalTransformer, basis: str) -> dict[str, dict[str, slice]]:
    """Slot names -> slices of the query (row t), key (row s) and output coordinates."""
    c = model.config
    d = c.dim
    if basis == "tokens":
        if c.tokens == "augmented":
            cols = [("x_{%s-1}", slice(0, d)), ("x_%s", slice(d, 2 * d)), ("one", slice(2 * d, 2 * d + 1))]
        else:
            cols = [("x_{%s-1}", slice(0, d)), ("x_%s", slice(d, 2 * d)), ("one", slice(2 * d, 2 * d + 1)),
                    ("pos_%s", slice(2 * d + 1, d + c.d_in))]
        out = {"prediction": slice(0, d)}
    else:
        if c.d_model != 4 * d + 1 + c.d_pos:  # not the construction's layout: no slot names
            cols = [("h_%s", slice(0, c.d_model))]
        else:
            S = slots(d)
            cols = [("x_{%s-1}", S["xprev"]), ("x_%s", S["xcur"]), ("r_%s", S["r"]), ("p_%s", S["p"]),
                    ("one", S["one"])] + ([("pos_%s", slice(4 * d + 1, c.d_model))] if c.d_pos else [])
        out = None
    query = {name.replace("%s", "t"): sl for name, sl in cols}
    return dict(query=query, key={name.replace("%s", "s"): sl for name, sl in cols},
                output=out if out is not None else query)


def split(M: Tensor, rows: dict[str, slice], cols: dict[str, slice]) -> dict[tuple[str, str], Tensor]:
    """The blocks of M: {(row slot, column slot): M[rows, cols]}."""
    return {(r, c): M[rs, cs] for r, rs in rows.items() for c, cs in cols.items()}


def distance(W: Tensor, W_c: Tensor | None) -> dict:
    """{"distance": |W - a W_c| / |W|, "scale": a} with a = <W, W_c> / |W_c|^2 (module doc)."""
    if W_c is None or W_c.shape != W.shape:
        return {"distance": None, "scale": None}
    norm_c = float(W_c.square().sum())
    a = float((W * W_c).sum()) / norm_c if norm_c > 0 else 0.0
    norm = float(W.norm())
    return {"distance": float((W - a * W_c).norm()) / norm if norm > 0 else math.nan, "scale": a}


def summary(blocks: list[dict]) -> str:
    """A plain-text table: per layer and head, the distance and scale to each construction head."""
    lines = [f"{'layer':>5}{'head':>5}  " + "".join(f"{f'{m} to {h}':>26}" for h in HEADS for m in ("W_QK", "W_OV"))]
    for b in blocks:
        cells = []
        for h in HEADS:
            for m in ("W_QK", "W_OV"):
                d = b["construction"][h][m]
                cells.append(f"{'-':>26}" if d["distance"] is None else
                             f"{d['distance']:>12.3g} (a = {d['scale']:<8.3g})")
        lines.append(f"{b['layer']:>5}{b['head']:>5}  " + "".join(cells))
    return "\n".join(lines)
