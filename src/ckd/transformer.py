"""A causal Transformer for in-context next-token prediction (SPEC §3), nanoGPT style.

The model reads a sequence x (B, T, d) and returns predictions (B, T, d): row t
predicts x_{t+1} from x_0..x_t. Top to bottom:

    tokens      augmented: e_t = (x_{t-1}, x_t, 1)              x_{-1} = 0
                raw:       e_t = (x_t, 1, pos_t)                one-hot or sinusoidal pos_t
    embedding   h = W_in e_t                                    (learned, in_dim -> width)
    [raw only]  h <- h + PrevAttn(h)                            one previous-token head
    L blocks    norm "none"    h <- h + Attn(h) [+ MLP(h)]       parallel MLP (GPT-J style), off by default
                norm "pre"     h <- h + Attn(LN(h)) [+ MLP(LN(h))]        (GPT-2; ``layernorm=True``)
                norm "post"    h <- LN(h + Attn(h) [+ MLP(h)])            (Vaswani et al. 2017)
                norm "output"  h <- h + LN(Attn(h)) [+ LN(MLP(h))]        (LayerNorm on each branch's
                                                                output: Sander et al. 2024's code)
    read-out    prediction = W_out LN(h) ("pre"), W_out h (otherwise)       (learned, width -> d)

The attention (``ckd.attention``: score functions linear / exp / softmax / gaussian, scores
q.k with no 1/sqrt(head_dim) factor) lets the blocks' row t attend to tokens 1 <= s <= t
(``mask_first``: token 0 carries no pair (x_{-1} -> x_0), so it is never a key; row 0 then
sees no key and its attention output is 0, for softmax too); the previous-token layer of raw
tokens attends to 0 <= s <= t. Options of the blocks: ``attention_norm="keys"`` divides each
head's sum by the number t of keys row t sees (position-normalised attention: in CKD terms the
per-row step eta_t = c / t, SPEC §10); ``row_gain`` adds fixed per-row gains g (buffers
``blocks.l.attn.row_gain`` and ``blocks.l.mlp.row_gain``, ones at init, saved in the
state_dict) that multiply row t of every head's output and of the MLP's hidden units: a
position-dependent output scaling, where the construction writes a per-row step eta_t.
``bias`` puts biases on every linear map (and LayerNorm).

Everything is a plain parameter or buffer: the module trains from random init
(nanoGPT's: weights N(0, 0.02^2), residual writes scaled by 1/sqrt(2 L);
``CausalTransformer(TransformerConfig(...))``), and ``ckd.construction.construct``
only writes weights into the same class (see that module for the weight layout).

Reference: M. E. Sander, G. Peyré, *Towards Understanding the Universality of
Transformers for Next-Token Prediction*, ICLR 2025 (arXiv 2410.03011).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import ATTENTION, ATTENTION_NORMS, CausalSelfAttention, attend  # noqa: F401 - public here too
from .linear_time.chunk import ATTENTION_CHUNK

TOKENS = ("augmented", "raw")
POSITIONAL = ("onehot", "sinusoidal")
NORMS = ("none", "pre", "post", "output")


@dataclass
class TransformerConfig:
    """Shape and options of a ``CausalTransformer``. ``None`` sizes take the construction's needs:

    width = 4 dim + 1 (+ pos_dim for raw tokens): slots x_{t-1}, x_t, r, p, one (, pos);
    head_dim = dim; value_dim = head_dim; mlp_width = 4 width;
    pos_dim = max_len (one-hot) or 32 (sinusoidal);
    prev_attention = attention.

    Options (defaults: the model of earlier versions): ``norm`` none | pre | post | output, where
    the LayerNorms sit (module doc; None: "pre" if ``layernorm`` else "none"; ``layernorm`` is kept
    as the older spelling and is True exactly when norm is "pre"); ``attention_norm`` none | keys
    (position-normalised attention in the L blocks); ``row_gain``: per-row gain buffers of length
    max_len in the L blocks (sequences then have T <= max_len).
    """

    dim: int  # token dimension d of the sequence x
    n_layers: int  # CKD layers (raw tokens add the previous-token layer in front)
    n_heads: int = 2
    width: int | None = None  # residual-stream width
    head_dim: int | None = None  # query/key size per head
    attention: str = "softmax"  # linear | exp | softmax | gaussian
    tokens: str = "augmented"  # augmented | raw
    positional: str = "onehot"  # onehot | sinusoidal (raw tokens only)
    max_len: int = 1024  # positional table size (raw tokens)
    mlp: bool = False
    layernorm: bool = False
    bias: bool = False
    value_dim: int | None = None  # value size per head
    mlp_width: int | None = None
    pos_dim: int | None = None  # size of pos_t (one-hot: must be max_len)
    prev_attention: str | None = None  # score function of the previous-token layer (raw tokens)
    mask_first: bool = True  # blocks never attend to token 0 (it carries no pair)
    attention_norm: str = "none"  # none | keys: each block head divides its sum by the keys it sees
    norm: str | None = None  # none | pre | post | output (None: from layernorm)
    row_gain: bool = False  # fixed per-row gains (buffers, ones at init) on the blocks' heads and MLPs

    def __post_init__(self):
        if self.norm is None:
            self.norm = "pre" if self.layernorm else "none"
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.layernorm and self.norm != "pre":
            raise ValueError(f"layernorm=True is norm='pre'; it contradicts norm={self.norm!r}")
        self.layernorm = self.norm == "pre"
        if self.attention_norm not in ATTENTION_NORMS:
            raise ValueError(f"unknown attention_norm {self.attention_norm!r}; "
                             f"choose one of {', '.join(ATTENTION_NORMS)}")
        for name in ("attention", "prev_attention"):
            kind = getattr(self, name)
            if kind is not None and kind not in ATTENTION:
                raise ValueError(f"unknown {name} kind {kind!r}; choose one of {', '.join(ATTENTION)}")
        if self.tokens not in TOKENS:
            raise ValueError(f"unknown tokens {self.tokens!r}; choose one of {', '.join(TOKENS)}")
        if self.positional not in POSITIONAL:
            raise ValueError(f"unknown positional {self.positional!r}; choose one of {', '.join(POSITIONAL)}")
        for name in ("dim", "n_heads", "max_len"):
            _check_size(getattr(self, name), name, minimum=1)
        _check_size(self.n_layers, "n_layers", minimum=0)
        for name in ("width", "head_dim", "value_dim", "mlp_width", "pos_dim"):
            if getattr(self, name) is not None:
                _check_size(getattr(self, name), name, minimum=1)
        if self.tokens == "raw" and self.positional == "onehot" and self.pos_dim not in (None, self.max_len):
            raise ValueError(f"one-hot positions need pos_dim == max_len ({self.max_len}), got {self.pos_dim}")
        if self.tokens == "raw" and self.positional == "sinusoidal" and self.d_pos % 2:
            raise ValueError(f"sinusoidal positions need an even pos_dim, got {self.d_pos}")

    @property
    def d_pos(self) -> int:
        """Size of the positional encoding (0 for augmented tokens)."""
        if self.tokens != "raw":
            return 0
        if self.pos_dim is not None:
            return self.pos_dim
        return self.max_len if self.positional == "onehot" else 32

    @property
    def d_in(self) -> int:
        """Size of the input token: 2 d + 1 (augmented) or d + 1 + pos_dim (raw)."""
        return 2 * self.dim + 1 if self.tokens == "augmented" else self.dim + 1 + self.d_pos

    @property
    def d_model(self) -> int:
        return self.width if self.width is not None else 4 * self.dim + 1 + self.d_pos

    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim

    @property
    def d_value(self) -> int:
        return self.value_dim if self.value_dim is not None else self.d_head

    @property
    def d_mlp(self) -> int:
        return self.mlp_width if self.mlp_width is not None else 4 * self.d_model

    @property
    def prev_kind(self) -> str:
        return self.prev_attention if self.prev_attention is not None else self.attention


def _check_size(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def positional_table(kind: str, max_len: int, pos_dim: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """(max_len, pos_dim) positional encodings.

    onehot:     pos_t = e_t (pos_dim = max_len).
    sinusoidal: pos_t[2i] = sin(w_i t), pos_t[2i+1] = cos(w_i t), w_i = 10000^(-2i / pos_dim)
                (Vaswani et al. 2017). pos_{t-1} is a fixed rotation of pos_t, which is what a
                previous-token head uses.
    """
    if kind == "onehot":
        return torch.eye(max_len, pos_dim, dtype=dtype)
    t = torch.arange(max_len, dtype=torch.float64)[:, None]
    angles = t * sinusoidal_frequencies(pos_dim)[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(max_len, pos_dim).to(dtype)


def sinusoidal_frequencies(pos_dim: int) -> Tensor:
    """w_i = 10000^(-2i / pos_dim), i < pos_dim / 2, float64."""
    return 10000.0 ** (-torch.arange(0, pos_dim, 2, dtype=torch.float64) / pos_dim)


class MLP(nn.Module):
    """Per-token MLP(h) = W_2 (g_t relu(W_1 h)), g_t = 1 unless ``gains`` = n > 0: then a buffer
    ``row_gain`` (n,) of fixed per-row gains (ones at init) scales row t of the hidden units."""

    def __init__(self, width: int, hidden: int, bias: bool = False, gains: int = 0):
        super().__init__()
        self.up = nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)
        self.register_buffer("row_gain", torch.ones(gains) if gains else None)

    def forward(self, h: Tensor) -> Tensor:
        hidden = F.relu(self.up(h))
        if self.row_gain is not None:
            hidden = hidden * self.row_gain[:h.shape[-2], None]
        return self.down(hidden)


class Block(nn.Module):
    """One layer; attention and MLP read the same h (parallel block). ``norm`` places the LayerNorms:

        none    h + Attn(h) + MLP(h)                pre     h + Attn(LN_1(h)) + MLP(LN_2(h))
        post    LN(h + Attn(h) + MLP(h))            output  h + LN_1(Attn(h)) + LN_2(MLP(h))
    """

    def __init__(self, width: int, attention: CausalSelfAttention, mlp_width: int | None,
                 norm: str | bool, bias: bool, gains: int = 0):
        super().__init__()
        if isinstance(norm, bool):  # the older signature: layernorm
            norm = "pre" if norm else "none"
        branch = norm in ("pre", "output")  # one LayerNorm per branch, before it or after it
        self.norm = norm
        self.ln_attn = nn.LayerNorm(width, bias=bias) if branch else nn.Identity()
        self.attn = attention
        self.ln_mlp = nn.LayerNorm(width, bias=bias) if (branch and mlp_width) else nn.Identity()
        self.mlp = MLP(width, mlp_width, bias, gains) if mlp_width else None
        if norm == "post":
            self.ln_post = nn.LayerNorm(width, bias=bias)

    def forward(self, h: Tensor, source: Tensor | None = None) -> Tensor:
        """h (B, T, width) -> the next stream; ``source``: what the attention's queries and keys read
        instead of h (``CausalSelfAttention``)."""
        if self.norm == "output":
            update = self.ln_attn(self.attn(h, source))
            if self.mlp is not None:
                update = update + self.ln_mlp(self.mlp(h))
            return h + update
        update = self.attn(self.ln_attn(h), source)  # ln_* are the identity unless norm is "pre"
        if self.mlp is not None:
            update = update + self.mlp(self.ln_mlp(h))
        return self.ln_post(h + update) if self.norm == "post" else h + update


class CausalTransformer(nn.Module):
    """Causal Transformer over a sequence x (B, T, d); row t of the output predicts x_{t+1}."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        width = c.d_model
        self.embed = nn.Linear(c.d_in, width, bias=c.bias)
        self.prev = None
        if c.tokens == "raw":
            self.register_buffer("positions", positional_table(c.positional, c.max_len, c.d_pos), persistent=False)
            attn = CausalSelfAttention(width, 1, c.d_pos, c.dim, c.prev_kind, c.bias, mask_first=False)
            self.prev = Block(width, attn, None, c.norm, c.bias)
        gains = c.max_len if c.row_gain else 0
        self.blocks = nn.ModuleList(
            Block(width,
                  CausalSelfAttention(width, c.n_heads, c.d_head, c.d_value, c.attention, c.bias, c.mask_first,
                                      c.attention_norm, gains),
                  c.d_mlp if c.mlp else None, c.norm, c.bias, gains)
            for _ in range(c.n_layers)
        )
        self.ln_out = nn.LayerNorm(width, bias=c.bias) if c.norm == "pre" else nn.Identity()
        self.readout = nn.Linear(width, c.dim, bias=c.bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual writes scaled by 1/sqrt(2 L)
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(1, c.n_layers)))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """nanoGPT init: linear weights N(0, 0.02^2), biases 0 (LayerNorm keeps 1 and 0)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def input_tokens(self, x: Tensor) -> Tensor:
        """(B, T, d_in): augmented (x_{t-1}, x_t, 1) with x_{-1} = 0, or raw (x_t, 1, pos_t)."""
        B, T, _ = x.shape
        one = x.new_ones(B, T, 1)
        if self.config.tokens == "augmented":
            return torch.cat([F.pad(x[:, :-1], (0, 0, 1, 0)), x, one], dim=-1)
        return torch.cat([x, one, self.positions[:T].to(x.dtype).expand(B, T, -1)], dim=-1)

    def check_input(self, x: Tensor) -> None:
        """Raise a one-line ``ValueError`` unless x is (B, T, dim) with T <= max_len (raw tokens, row gains)."""
        c = self.config
        if not isinstance(x, Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"the transformer expects x of shape (B, T, {c.dim}), got {shape}")
        if x.shape[-1] != c.dim:
            raise ValueError(f"x has feature dimension {x.shape[-1]} but this transformer was built for dim={c.dim}")
        if c.tokens == "raw" and x.shape[1] > c.max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the positional table (max_len={c.max_len})")
        if c.row_gain and x.shape[1] > c.max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the per-row gains (max_len={c.max_len})")

    def forward(self, x: Tensor, return_hidden: bool = False):
        """x: the sequence (B, T, d). Returns predictions (B, T, d) (row t predicts x_{t+1}),
        or (predictions, hidden) with hidden the residual streams (B, T, width) after the
        embedding and after each layer (the previous-token layer of raw tokens included)."""
        self.check_input(x)
        h = self.embed(self.input_tokens(x))
        hidden = [h]
        layers = ([self.prev] if self.prev is not None else []) + list(self.blocks)
        for layer in layers:
            h = layer(h)
            hidden.append(h)
        pred = self.readout(self.ln_out(h))
        return (pred, hidden) if return_hidden else pred


# --------------------------------------------------------------------------- memory, before building

LAYER_OBJECTS = 24 * 1024  # bytes of Python/torch objects per block besides its weights (measured ~19-23 KiB)
# Training keeps more than one forward's activations per layer: autograd saves the inputs of every op (LayerNorm
# inputs, the padded and reshaped q, k, v and outputs, the sink channel of exp / gaussian attention, the chunk
# states of linear attention: 0.9-1.8x the forward term, tests/test_hardening.py) and backward holds gradient
# buffers besides. Peak RSS of one training step: 1.1-2.6x the old 1x estimate, 0.35-0.71x this one
# (benchmarks/train_memory.py, 16 configurations).
TRAINING_ACTIVATIONS = 3


def parameter_count(c: TransformerConfig) -> int:
    """Number of weights of ``CausalTransformer(c)``, from the config alone (nothing is built)."""
    w, b = c.d_model, int(c.bias)
    ln = (1 + b) * w  # one LayerNorm
    branch, post, pre = int(c.norm in ("pre", "output")), int(c.norm == "post"), int(c.norm == "pre")

    def block(heads: int, E: int, Ev: int, mlp: bool) -> int:
        n = heads * (2 * E + Ev) * w + heads * Ev * w + b * (heads * (2 * E + Ev) + w) + (branch + post) * ln
        if mlp:
            n += 2 * w * c.d_mlp + b * (c.d_mlp + w) + branch * ln
        return n

    n = (c.d_in + b) * w + (w + b) * c.dim + pre * ln
    n += c.n_layers * block(c.n_heads, c.d_head, c.d_value, c.mlp)
    if c.tokens == "raw":  # the previous-token block: one head, queries/keys of pos_dim, values of dim
        n += block(1, c.d_pos, c.dim, False)
    return n


def memory_bytes(c: TransformerConfig, batch: int, T: int, itemsize: int, *, training: bool = False,
                 hidden: bool = False) -> int:
    """A floor of the bytes ``CausalTransformer(c)`` needs on x (batch, T, dim) in a dtype of ``itemsize``:

        weights            P itemsize (x 4 when training: gradients and two AdamW moments)
        objects            (L + 1) ``LAYER_OBJECTS``
        positional table   max_len pos_dim 8 (raw tokens)
        activations        per layer B T (2 width + H (2 E + 2 Ev) [+ mlp width]) itemsize, (+ B H T^2 for
                           linear attention with E Ev > T; else, when training, B H T C for the chunks' scores,
                           C = ``ATTENTION_CHUNK``, and B T H (2 (E + 2) + 2 (Ev + 1)) for exp and gaussian
                           attention's padded copies); when training, ``TRAINING_ACTIVATIONS`` times
                           that for every layer (what autograd saves, and backward's gradient buffers);
                           the residual stream of every layer when ``hidden``.
    """
    raw = c.tokens == "raw"
    layers = c.n_layers + raw
    w = c.d_model
    weights = parameter_count(c) * itemsize * (4 if training else 1)
    objects = (layers + 1) * LAYER_OBJECTS
    table = c.max_len * c.d_pos * 8 if raw else 0
    per_layer = batch * T * (2 * w + c.n_heads * (2 * c.d_head + 2 * c.d_value) + (c.d_mlp if c.mlp else 0))
    if c.attention == "linear" and c.d_head * c.d_value > T:
        per_layer += batch * c.n_heads * T * T
    elif c.attention == "linear" and training:  # autograd keeps the chunks' (C, C) scores
        per_layer += batch * c.n_heads * T * min(T, ATTENTION_CHUNK)
    elif c.attention in ("exp", "gaussian") and training:  # and the sink's padded q, k (E + 2), v, o (Ev + 1)
        per_layer += batch * c.n_heads * T * (2 * (c.d_head + 2) + 2 * (c.d_value + 1))
    acts = per_layer * (layers * TRAINING_ACTIVATIONS if training else 1) + batch * T * (c.d_in + w)
    if hidden:
        acts += batch * T * w * (layers + 1)
    return weights + objects + table + acts * itemsize
