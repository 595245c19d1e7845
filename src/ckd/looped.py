"""Looped (weight-tied) Transformers: K blocks applied L times (issue 20).

A ``LoopedTransformer`` is a ``CausalTransformer`` whose ``blocks`` (K of them, usually one) form
the body of a loop run L times with the same weights, optionally re-injecting the input tokens
before every pass:

    tokens      e_t (augmented or raw, as ``CausalTransformer``)
    embedding   h^0 = W_in e_t                  [raw: then the previous-token layer, once]
    loop l      h^l = B_K( ... B_1(h^{l-1} + W_r e_t) ... )     l = 1..L, W_r = 0 without reinjection
    read-out    prediction = W_out LN(h^L)

``qk="input"``: the blocks' queries and keys read the input tokens e_t instead of the stream
(scores of W_q e_t . W_k e_s): the attention pattern A(x) is the same in every pass, as CKD's kernel
k(x_t, x_s) is, and with ``norm="none"`` and no MLP every pass is affine in the stream,
h <- h + W_o A(x) W_v (h + W_r e): the loop is a fixed linear iteration, like CKD's
r <- r - eta R r, p <- p + eta P r (SPEC §2). The construction looped so is still CKD at depth L
(its query and key maps composed with the embedding: W_q W_in; it never writes the x slots).

The depth it runs is L K. CKD's layers are all the same map (SPEC §3: every constructed layer has
the same weights), so the construction is already looped: one constructed layer looped L times is
CKD at depth L, exactly (``build_model`` of ``ckd.train`` with ``init="construction"`` and ``loop``;
tested to 1e-9 in float64). ``loops`` is a plain attribute: the same weights run more (or fewer)
loops than they were trained with (``forward(x, loops=K)``, ``with_loops``).

Random init: that of ``CausalTransformer`` with K blocks, the residual writes then scaled to
N(0, 0.02^2 / (2 L K)) (GPT-2's 1/sqrt(2 x depth) for the depth it runs), W_r = 0 (a reinjecting
model starts as the one without); with ``qk="input"`` the query and key maps (d_in inputs) N(0, 0.02^2).

Reference: F. Yang, K. Lee, R. Nowak, D. Papailiopoulos, *Looped Transformers are Better at
Learning Learning Algorithms*, ICLR 2024 (the input re-injected each loop, a loop count drawn per
training step; ``ckd.train``'s ``loop_range``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from .transformer import LAYER_OBJECTS, CausalTransformer, TransformerConfig, memory_bytes, parameter_count
from .validation import check_int

LOOP_QK = ("stream", "input")  # what a looped model's queries and keys read: the residual stream, or e_t
LOOP_SHAPES = ("free", "ckd")  # a looped model's weights: every entry learned, or CKD's layout (``ckd_shape``)


class LoopedTransformer(CausalTransformer):
    """``config.n_layers`` blocks looped ``loops`` times (module doc); ``reinject`` adds W_r e_t before each pass;
    ``qk="input"``: the blocks' queries and keys read e_t."""

    def __init__(self, config: TransformerConfig, loops: int, reinject: bool = False, qk: str = "stream"):
        super().__init__(config)
        self.loops = check_int(loops, "loops", minimum=1)
        if qk not in LOOP_QK:
            raise ValueError(f"unknown loop_qk {qk!r}; choose one of {', '.join(LOOP_QK)}")
        self.qk = qk
        self.reinject = nn.Linear(config.d_in, config.d_model, bias=False) if reinject else None
        if qk == "input":
            for block in self.blocks:
                a = block.attn
                for name in ("query", "key"):
                    layer = nn.Linear(config.d_in, a.n_heads * a.head_dim, bias=config.bias)
                    self._init_weights(layer)
                    setattr(a, name, layer)
        with torch.no_grad():
            if self.reinject is not None:
                self.reinject.weight.zero_()
            scale = math.sqrt(max(1, config.n_layers) / (config.n_layers * self.loops)) if config.n_layers else 1.0
            for name, p in self.named_parameters():  # 1/sqrt(2 x the depth it runs), no RNG drawn
                if name.startswith("blocks.") and name.endswith(("attn.out.weight", "mlp.down.weight")):
                    p.mul_(scale)

    @property
    def depth(self) -> int:
        """Layers run by a forward pass: loops x blocks."""
        return self.loops * len(self.blocks)

    def forward(self, x: Tensor, return_hidden: bool = False, loops: int | None = None, every_pass: bool = False):
        """x (B, T, d) -> predictions (B, T, d) after ``loops`` passes (default ``self.loops``); with
        ``return_hidden`` also the residual streams after the embedding, the previous-token layer (raw
        tokens) and every block of every pass (1 + [1] + loops K states). ``every_pass``: the list of the
        predictions W_out LN(h^l) read out after every pass l = 1..loops instead."""
        loops = self.loops if loops is None else check_int(loops, "loops", minimum=1)
        self.check_input(x)
        e = self.input_tokens(x)
        h = self.embed(e)
        hidden = [h]
        if self.prev is not None:
            h = self.prev(h)
            hidden.append(h)
        inject = self.reinject(e) if self.reinject is not None else None
        source = e if self.qk == "input" else None
        passes = []
        for _ in range(loops):
            if inject is not None:
                h = h + inject
            for block in self.blocks:
                h = block(h, source)
                hidden.append(h)
            if every_pass:
                passes.append(self.readout(self.ln_out(h)))
        if every_pass:
            return passes
        pred = self.readout(self.ln_out(h))
        return (pred, hidden) if return_hidden else pred


def loop_model(model: CausalTransformer, loops: int, reinject: bool = False, *,
               rescale: bool = True, qk: str = "stream") -> LoopedTransformer:
    """``model``'s weights (its blocks the loop body) as a ``LoopedTransformer`` of ``loops`` loops, in
    its dtype and on its device. ``rescale``: scale the residual writes as a random init of the looped
    depth (module doc); False keeps the weights as they are (the construction). ``qk="input"``: the
    query and key maps read e_t; with ``rescale`` they are the looped model's own (random) init, without
    it model's composed with its embedding (W_q W_in, b_q + W_q b_in: the same scores while the stream
    keeps the embedded tokens, as the construction's does). The global RNG is left alone."""
    first = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        looped = LoopedTransformer(model.config, loops, reinject, qk).to(first.device, first.dtype)
    state = model.state_dict()
    if rescale:  # the writes of model's own init (1/sqrt(2 K)) scaled to 1/sqrt(2 K loops)
        for k in state:
            if k.startswith("blocks.") and k.endswith(("attn.out.weight", "mlp.down.weight")):
                state[k] = state[k] / math.sqrt(loops)
    if qk == "input":
        own = looped.state_dict()
        w_in, b_in = state["embed.weight"], state.get("embed.bias")
        for k in list(state):
            if k.startswith("blocks.") and k.endswith(("attn.query.weight", "attn.key.weight")):
                bias = k[:-len("weight")] + "bias"
                if rescale:
                    state[k] = own[k]
                    if bias in state:
                        state[bias] = own[bias]
                else:
                    if bias in state and b_in is not None:
                        state[bias] = state[bias] + state[k] @ b_in
                    state[k] = state[k] @ w_in
    looped.load_state_dict(state, strict=False)  # the same keys, and reinject (zero) when asked
    return looped.train(model.training)


def with_loops(cfg, model: nn.Module, loops: int | None):
    """(config, model) running ``loops`` loops instead of the trained count: the config's ``loop`` and
    ``layers`` (= loop x loop_blocks, the depth CKD is compared at) follow. ``loops`` None: unchanged.
    A model trained without ``--loop`` is refused with one line."""
    if loops is None:
        return cfg, model
    if not cfg.loop or not isinstance(model, LoopedTransformer):
        raise ValueError("--loops runs a looped model for more or fewer loops; this model is not looped "
                         "(trained without --loop)")
    loops = check_int(loops, "loops", minimum=1)
    model.loops = loops
    return replace(cfg, loop=loops, layers=loops * cfg.loop_blocks), model


def looped_memory_bytes(c: TransformerConfig, loops: int, batch: int, T: int, itemsize: int, *,
                        training: bool = False, hidden: bool = False) -> int:
    """A floor of the bytes ``LoopedTransformer(c, loops)`` needs (``ckd.transformer.memory_bytes``, whose
    weights are those of c's blocks, plus the activations (training) and hidden states (``hidden``) of the
    other loops - 1 passes)."""
    base = memory_bytes(c, batch, T, itemsize, training=training, hidden=hidden)
    if loops <= 1 or c.n_layers == 0:
        return base
    two = replace(c, n_layers=2 * c.n_layers)  # one more pass: its weights and objects are not needed
    per_pass = memory_bytes(two, batch, T, itemsize, training=training, hidden=hidden) - base
    per_pass -= ((parameter_count(two) - parameter_count(c)) * itemsize * (4 if training else 1)
                 + c.n_layers * LAYER_OBJECTS)
    return base + (loops - 1) * per_pass



def check_loop_fields(qk: str, shape: str, *, tokens: str, norm: str, mlp: bool, bias: bool, blocks: int,
                      reinject: bool, heads: int, width: int | None, dim: int, init: str) -> None:
    """The ``loop_qk`` and ``loop_shape`` fields of a run (``ckd.train.TrainConfig``) and what they need; one-line
    ``ValueError``."""
    if qk not in LOOP_QK:
        raise ValueError(f"unknown loop_qk {qk!r}; choose one of {', '.join(LOOP_QK)}")
    if shape not in LOOP_SHAPES:
        raise ValueError(f"unknown loop_shape {shape!r}; choose one of {', '.join(LOOP_SHAPES)}")
    if shape == "ckd" and (qk != "input" or tokens != "augmented" or norm != "none" or mlp or bias or blocks != 1
                           or reinject or heads != 2 or width not in (None, 4 * dim + 1)):
        raise ValueError("--loop-shape ckd is one block of 2 heads, width 4 d + 1, augmented tokens, no norm, "
                         "MLP, bias or --reinject, with --loop-qk input")
    if qk == "input" and init == "construction" and tokens == "raw":
        raise ValueError("--loop-qk input with --init construction needs augmented tokens (the construction's "
                         "queries read x_{t-1}, which raw tokens do not hold)")


def shape_masks(model: LoopedTransformer) -> dict[str, Tensor]:
    """name -> bool mask of the entries a CKD-shaped loop learns (``ckd_shape``); the other entries stay 0,
    and the embedding (absent: no entry learned) keeps the construction's copy of the tokens.

    Slots of ``ckd.construction`` (x_{t-1}, x_t, r, p, one; width 4 d + 1): every head's value reads the
    r slot, head 0 writes the r slot, head 1 the p slot, the read-out reads p; queries and keys (which
    read the input tokens, ``qk="input"``) are free."""
    from .construction import slots  # construction imports transformer, not this module

    c = model.config
    S, d, w = slots(c.dim), c.dim, c.d_model
    masks = {}
    for i, block in enumerate(model.blocks):
        v = torch.zeros(c.n_heads, c.d_value, w, dtype=torch.bool)
        v[:, :, S["r"]] = True
        o = torch.zeros(w, c.n_heads, c.d_value, dtype=torch.bool)
        o[S["r"], 0] = True
        o[S["p"], 1] = True
        masks[f"blocks.{i}.attn.value.weight"] = v.reshape(block.attn.value.weight.shape)
        masks[f"blocks.{i}.attn.out.weight"] = o.reshape(block.attn.out.weight.shape)
        for name in ("query", "key"):
            weight = getattr(block.attn, name).weight
            masks[f"blocks.{i}.attn.{name}.weight"] = torch.ones_like(weight, dtype=torch.bool)
    r = torch.zeros(d, w, dtype=torch.bool)
    r[:, S["p"]] = True
    masks["readout.weight"] = r
    return masks


def ckd_shape(model: LoopedTransformer, *, init: bool) -> LoopedTransformer:
    """Constrain ``model`` to CKD's layout (``shape_masks``): a loop body of two heads whose queries and keys
    read the input tokens and whose values and writes are those of CKD's residual head (r <- r - G_0 A_0 r)
    and prediction head (p <- p + G_1 A_1 r), with A_h and G_h learned (the construction: G_h = -+eta I,
    A_h its kernel). ``init``: the embedding set to the construction's (x_{t-1}, x_t, r = x_t, one) and the
    entries outside the masks zeroed (a random init keeps its entries inside them). Gradient hooks zero the
    gradients outside the masks, so AdamW (decoupled decay included) leaves those entries at 0; the embedding
    does not require a gradient. In place; returns the model."""
    c = model.config
    if (c.tokens != "augmented" or c.norm != "none" or c.mlp or c.n_heads != 2 or c.bias or len(model.blocks) != 1
            or c.d_model != 4 * c.dim + 1 or c.d_value != c.dim or model.qk != "input" or c.n_layers != 1):
        raise ValueError("a CKD-shaped loop is one block of 2 heads, width 4 d + 1, value size d, augmented tokens, "
                         "no norm, MLP or bias, queries and keys on the input tokens (--loop-qk input)")
    masks = shape_masks(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        if init:
            from .construction import slots

            S, d, W = slots(c.dim), c.dim, params["embed.weight"]
            eye = torch.eye(d, dtype=W.dtype, device=W.device)
            W.zero_()
            W[S["xprev"], 0:d] = eye
            W[S["xcur"], d:2 * d] = eye
            W[S["r"], d:2 * d] = eye
            W[S["one"], 2 * d] = 1.0
            for name, mask in masks.items():
                params[name].mul_(mask.to(params[name].device))
    for name, p in params.items():
        if name not in masks:  # the embedding: no gradient, so the optimizer (and its weight decay) skips it
            p.requires_grad_(False)
        else:
            keep = masks[name].to(p.device)
            p.register_hook(lambda g, keep=keep: g * keep)
    return model
