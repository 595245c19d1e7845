"""Looped (weight-tied) Transformers: K blocks applied L times (issue 20).

A ``LoopedTransformer`` is a ``CausalTransformer`` whose ``blocks`` (K of them, usually one) form
the body of a loop run L times with the same weights, optionally re-injecting the input tokens
before every pass:

    tokens      e_t (augmented or raw, as ``CausalTransformer``)
    embedding   h^0 = W_in e_t                  [raw: then the previous-token layer, once]
    loop l      h^l = B_K( ... B_1(h^{l-1} + W_r e_t) ... )     l = 1..L, W_r = 0 without reinjection
    read-out    prediction = W_out LN(h^L)

The depth it runs is L K. CKD's layers are all the same map (SPEC §3: every constructed layer has
the same weights), so the construction is already looped: one constructed layer looped L times is
CKD at depth L, exactly (``build_model`` of ``ckd.train`` with ``init="construction"`` and ``loop``;
tested to 1e-9 in float64). ``loops`` is a plain attribute: the same weights run more (or fewer)
loops than they were trained with (``forward(x, loops=K)``, ``with_loops``).

Random init: that of ``CausalTransformer`` with K blocks, the residual writes then scaled to
N(0, 0.02^2 / (2 L K)) (GPT-2's 1/sqrt(2 x depth) for the depth it runs), W_r = 0 (a reinjecting
model starts as the one without).

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


class LoopedTransformer(CausalTransformer):
    """``config.n_layers`` blocks looped ``loops`` times (module doc); ``reinject`` adds W_r e_t before each pass."""

    def __init__(self, config: TransformerConfig, loops: int, reinject: bool = False):
        super().__init__(config)
        self.loops = check_int(loops, "loops", minimum=1)
        self.reinject = nn.Linear(config.d_in, config.d_model, bias=False) if reinject else None
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
        passes = []
        for _ in range(loops):
            if inject is not None:
                h = h + inject
            for block in self.blocks:
                h = block(h)
                hidden.append(h)
            if every_pass:
                passes.append(self.readout(self.ln_out(h)))
        if every_pass:
            return passes
        pred = self.readout(self.ln_out(h))
        return (pred, hidden) if return_hidden else pred


def loop_model(model: CausalTransformer, loops: int, reinject: bool = False, *,
               rescale: bool = True) -> LoopedTransformer:
    """``model``'s weights (its blocks the loop body) as a ``LoopedTransformer`` of ``loops`` loops, in
    its dtype and on its device. ``rescale``: scale the residual writes as a random init of the looped
    depth (module doc); False keeps the weights as they are (the construction). The global RNG is left
    alone."""
    first = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        looped = LoopedTransformer(model.config, loops, reinject).to(first.device, first.dtype)
    state = model.state_dict()
    if rescale:  # the writes of model's own init (1/sqrt(2 K)) scaled to 1/sqrt(2 K loops)
        for k in state:
            if k.startswith("blocks.") and k.endswith(("attn.out.weight", "mlp.down.weight")):
                state[k] = state[k] / math.sqrt(loops)
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
