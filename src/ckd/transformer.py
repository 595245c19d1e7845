"""A causal Transformer for in-context next-token prediction (SPEC §3), nanoGPT style.

The model reads a sequence x (B, T, d) and returns predictions (B, T, d): row t
predicts x_{t+1} from x_0..x_t. Top to bottom:

    tokens      augmented: e_t = (x_{t-1}, x_t, 1)              x_{-1} = 0
                raw:       e_t = (x_t, 1, pos_t)                one-hot or sinusoidal pos_t
    embedding   h = W_in e_t                                    (learned, in_dim -> width)
    [raw only]  h <- h + PrevAttn(h)                            one previous-token head
    L blocks    h <- h + Attn(LN(h)) [+ MLP(LN(h))]             parallel MLP (GPT-J style), off by default
    read-out    prediction = W_out LN(h)                        (learned, width -> d)

Attention score functions (SPEC §3), per head, for a query q_t and keys k_s:

    linear    a[t, s] = q_t . k_s
    exp       a[t, s] = exp(q_t . k_s)                           not normalised
    softmax   a[t, s] = exp(q_t . k_s) / sum_s' exp(q_t . k_s')  (scaled_dot_product_attention)
    gaussian  a[t, s] = exp(-|q_t - k_s|^2 / 2)                  distance attention, not normalised

and the head output is sum_s a[t, s] v_s. Scores are q.k with no 1/sqrt(head_dim)
factor (the query weights carry any temperature). Causality: the blocks let row t
attend to tokens 1 <= s <= t (``mask_first``: token 0 carries no pair
(x_{-1} -> x_0), so it is never a key; row 0 then sees no key and its attention
output is 0, for softmax too). The previous-token layer of raw tokens attends to
0 <= s <= t.

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

from .linear_time.chunk import causal_linear_attention

ATTENTION = ("linear", "exp", "softmax", "gaussian")
TOKENS = ("augmented", "raw")
POSITIONAL = ("onehot", "sinusoidal")


@dataclass
class TransformerConfig:
    """Shape and options of a ``CausalTransformer``. ``None`` sizes take the construction's needs:

    width = 4 dim + 1 (+ pos_dim for raw tokens): slots x_{t-1}, x_t, r, p, one (, pos);
    head_dim = dim; value_dim = head_dim; mlp_width = 4 width;
    pos_dim = max_len (one-hot) or 32 (sinusoidal);
    prev_attention = attention.
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

    def __post_init__(self):
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


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: Attn(h)_t = W_o concat_heads(sum_s a[t, s] W_v h_s).

    mask_first: token 0 is never a key, and row 0 gets 0 (it sees no key).
    """

    def __init__(self, width: int, n_heads: int, head_dim: int, value_dim: int, kind: str,
                 bias: bool = False, mask_first: bool = True):
        super().__init__()
        self.n_heads, self.head_dim, self.value_dim = n_heads, head_dim, value_dim
        self.kind, self.mask_first = kind, mask_first
        self.query = nn.Linear(width, n_heads * head_dim, bias=bias)
        self.key = nn.Linear(width, n_heads * head_dim, bias=bias)
        self.value = nn.Linear(width, n_heads * value_dim, bias=bias)
        self.out = nn.Linear(n_heads * value_dim, width, bias=bias)

    def forward(self, h: Tensor) -> Tensor:
        B, T, _ = h.shape
        H = self.n_heads
        q = self.query(h).view(B, T, H, self.head_dim).transpose(1, 2)  # (B, H, T, E)
        k = self.key(h).view(B, T, H, self.head_dim).transpose(1, 2)
        v = self.value(h).view(B, T, H, self.value_dim).transpose(1, 2)  # (B, H, T, Ev)
        if self.mask_first:  # rows and keys 1..T-1 only; row 0 gets 0
            o = F.pad(attend(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], self.kind), (0, 0, 1, 0))
        else:
            o = attend(q, k, v, self.kind)
        return self.out(o.transpose(1, 2).reshape(B, T, H * self.value_dim))


class MLP(nn.Module):
    """Per-token MLP(h) = W_2 relu(W_1 h)."""

    def __init__(self, width: int, hidden: int, bias: bool = False):
        super().__init__()
        self.up = nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.down(F.relu(self.up(h)))


class Block(nn.Module):
    """h <- h + Attn(LN_1(h)) + MLP(LN_2(h)): attention and MLP read the same h (parallel block)."""

    def __init__(self, width: int, attention: CausalSelfAttention, mlp_width: int | None,
                 layernorm: bool, bias: bool):
        super().__init__()
        self.ln_attn = nn.LayerNorm(width, bias=bias) if layernorm else nn.Identity()
        self.attn = attention
        self.ln_mlp = nn.LayerNorm(width, bias=bias) if (layernorm and mlp_width) else nn.Identity()
        self.mlp = MLP(width, mlp_width, bias) if mlp_width else None

    def forward(self, h: Tensor) -> Tensor:
        update = self.attn(self.ln_attn(h))
        if self.mlp is not None:
            update = update + self.mlp(self.ln_mlp(h))
        return h + update


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
            self.prev = Block(width, attn, None, c.layernorm, c.bias)
        self.blocks = nn.ModuleList(
            Block(width,
                  CausalSelfAttention(width, c.n_heads, c.d_head, c.d_value, c.attention, c.bias, c.mask_first),
                  c.d_mlp if c.mlp else None, c.layernorm, c.bias)
            for _ in range(c.n_layers)
        )
        self.ln_out = nn.LayerNorm(width, bias=c.bias) if c.layernorm else nn.Identity()
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
        """Raise a one-line ``ValueError`` unless x is (B, T, dim) with T <= max_len (raw tokens)."""
        c = self.config
        if not isinstance(x, Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"the transformer expects x of shape (B, T, {c.dim}), got {shape}")
        if x.shape[-1] != c.dim:
            raise ValueError(f"x has feature dimension {x.shape[-1]} but this transformer was built for dim={c.dim}")
        if c.tokens == "raw" and x.shape[1] > c.max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the positional table (max_len={c.max_len})")

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


def parameter_count(c: TransformerConfig) -> int:
    """Number of weights of ``CausalTransformer(c)``, from the config alone (nothing is built)."""
    w, b, ln = c.d_model, int(c.bias), int(c.layernorm)

    def block(heads: int, E: int, Ev: int, mlp: bool) -> int:
        n = heads * (2 * E + Ev) * w + heads * Ev * w + b * (heads * (2 * E + Ev) + w) + ln * (1 + b) * w
        if mlp:
            n += 2 * w * c.d_mlp + b * (c.d_mlp + w) + ln * (1 + b) * w
        return n

    n = (c.d_in + b) * w + (w + b) * c.dim + ln * (1 + b) * w
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
                           linear attention with E Ev > T), kept for every layer when training;
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
    acts = per_layer * (layers if training else 1) + batch * T * (c.d_in + w)
    if hidden:
        acts += batch * T * w * (layers + 1)
    return weights + objects + table + acts * itemsize
