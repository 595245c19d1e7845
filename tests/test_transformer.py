"""CausalTransformer as a plain module: causality, attention kinds against their definitions,
hidden states, state_dict, dtype moves, gradients, and clear errors."""

import math

import pytest
import torch
from conftest import rel_err
from torch import nn

from ckd.attention import visible_keys
from ckd.transformer import (
    ATTENTION,
    NORMS,
    CausalSelfAttention,
    CausalTransformer,
    TransformerConfig,
    attend,
    parameter_count,
    positional_table,
)

OPTIONS = [
    dict(),
    dict(mlp=True, layernorm=True, bias=True),
    dict(tokens="raw", max_len=32),
    dict(tokens="raw", positional="sinusoidal", max_len=32, mlp=True),
    dict(norm="post", mlp=True, bias=True),
    dict(norm="output", attention_norm="keys", mlp=True, n_heads=1),
    dict(row_gain=True, attention_norm="keys", max_len=16, mlp=True, tokens="raw"),
]


def model(kind="softmax", **kw) -> CausalTransformer:
    torch.manual_seed(0)
    return CausalTransformer(TransformerConfig(dim=3, n_layers=2, attention=kind, **kw)).double()


def reference_attention(q, k, v, kind):
    """sum_{s <= t} a[t, s] v_s straight from the SPEC §3 definitions (loops over rows)."""
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for t in range(q.shape[-2]):
        qt, ks, vs = q[..., t:t + 1, :], k[..., : t + 1, :], v[..., : t + 1, :]
        dots = (qt * ks).sum(-1)
        if kind == "linear":
            a = dots
        elif kind == "exp":
            a = dots.exp()
        elif kind == "softmax":
            a = torch.softmax(dots, -1)
        else:
            a = (-(qt - ks).square().sum(-1) / 2).exp()
        out[..., t, :] = (a[..., None] * vs).sum(-2)
    return out


@pytest.mark.parametrize("kind", ATTENTION)
def test_attend_matches_definition(kind):
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 3, 9, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, 9, 5, generator=g, dtype=torch.float64)
    assert rel_err(attend(q, k, v, kind), reference_attention(q, k, v, kind)) < 1e-12


@pytest.mark.parametrize("kind", ATTENTION)
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "mlp-ln-bias", "raw-onehot", "raw-sin", "post-bias",
                                               "output-keys-1head", "row-gain-raw"])
def test_causal_and_shapes(kind, opts):
    m = model(kind, **opts)
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    y, hidden = m(x, return_hidden=True)
    assert y.shape == x.shape
    assert len(hidden) == 1 + m.config.n_layers + (opts.get("tokens") == "raw")
    assert all(h.shape == (2, 12, m.config.d_model) for h in hidden)
    x2 = x.clone()
    x2[:, 7:] += torch.randn(2, 5, 3, dtype=torch.float64)
    y2 = m(x2)
    assert torch.equal(y[:, :7], y2[:, :7])  # rows 0..6 never see x_7..
    assert not torch.allclose(y[:, 7:], y2[:, 7:])


@pytest.mark.parametrize("kind", ATTENTION)
def test_first_token_is_not_a_key(kind):
    """mask_first: token 0 is never a key and row 0 sees no key, so its output is exactly 0."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(6, 2, 3, 4, kind).double()
    h = torch.randn(2, 5, 6, dtype=torch.float64)
    h2 = h.clone()
    h2[:, 0] += 1.0
    out = attn(h)
    assert torch.equal(out[:, 1:], attn(h2)[:, 1:])
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    full = CausalSelfAttention(6, 2, 3, 4, kind, mask_first=False).double()
    full.load_state_dict(attn.state_dict())
    assert not torch.equal(full(h)[:, 1:], full(h2)[:, 1:])


def test_state_dict_round_trip_and_float32():
    m = model("exp", mlp=True, layernorm=True, bias=True)
    m2 = CausalTransformer(m.config).double()
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    assert torch.equal(m(x), m2(x))
    m32 = m2.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in m32.parameters())
    with torch.no_grad():
        assert rel_err(m32(x.float()).double(), m(x)) < 1e-5


def test_gradients_reach_every_parameter():
    m = model("softmax", tokens="raw", mlp=True, layernorm=True, bias=True, max_len=16)
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_positional_tables():
    assert torch.equal(positional_table("onehot", 5, 5), torch.eye(5, dtype=torch.float64))
    pe = positional_table("sinusoidal", 7, 4)
    assert pe.shape == (7, 4)
    assert math.isclose(float(pe[3, 0]), math.sin(3.0)) and math.isclose(float(pe[3, 1]), math.cos(3.0))
    assert torch.allclose(pe.square().sum(-1), torch.full((7,), 2.0, dtype=torch.float64))


def test_single_token_and_empty_history():
    m = model("softmax")
    y = m(torch.randn(3, 1, 3, dtype=torch.float64))
    assert y.shape == (3, 1, 3) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(attention="cosine"), "unknown attention kind 'cosine'"),
        (dict(prev_attention="relu"), "unknown prev_attention kind"),
        (dict(tokens="words"), "unknown tokens"),
        (dict(positional="rope"), "unknown positional"),
        (dict(n_heads=0), "n_heads must be an integer >= 1"),
        (dict(width=2.5), "width must be an integer"),
        (dict(tokens="raw", pos_dim=3, max_len=8), "pos_dim == max_len"),
        (dict(tokens="raw", positional="sinusoidal", pos_dim=5), "even pos_dim"),
        (dict(norm="sandwich"), "unknown norm 'sandwich'"),
        (dict(layernorm=True, norm="post"), "layernorm=True is norm='pre'; it contradicts norm='post'"),
        (dict(attention_norm="tokens"), "unknown attention_norm 'tokens'"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(dim=3, n_layers=1, **kw)


def test_input_errors():
    m = model("linear", tokens="raw", max_len=8)
    with pytest.raises(ValueError, match="feature dimension 4 but this transformer was built for dim=3"):
        m(torch.randn(1, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="sequence length 9 exceeds the positional table"):
        m(torch.randn(1, 9, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(5, 3, dtype=torch.float64))


# --------------------------------------------------------------------------- options of issue 16


@pytest.mark.parametrize("kind", ATTENTION)
@pytest.mark.parametrize("mask_first", [True, False])
@torch.no_grad()
def test_position_normalised_attention_divides_by_the_visible_keys(kind, mask_first):
    """attention_norm "keys": row t's head output is the plain one divided by the n_t keys it sees
    (t with mask_first, t + 1 without; row 0 then keeps 0). Softmax too: an extra 1/n_t."""
    torch.manual_seed(1)
    plain = CausalSelfAttention(6, 2, 3, 4, kind, mask_first=mask_first).double()
    keys = CausalSelfAttention(6, 2, 3, 4, kind, mask_first=mask_first, norm="keys").double()
    keys.load_state_dict(plain.state_dict())
    h = torch.randn(2, 9, 6, dtype=torch.float64)
    n = visible_keys(9, mask_first)
    assert n.tolist() == [*range(0 if mask_first else 1, 9 + (not mask_first))]
    got, want = keys(h), plain(h)
    assert rel_err(got[:, 1:], want[:, 1:] / n[1:, None]) < 1e-14
    assert torch.equal(got[:, 0], want[:, 0] / max(n[0], 1.0))
    # against the definition: the mean over the visible keys of a[t, s] v_s
    q = plain.query(h).view(2, 9, 2, 3).transpose(1, 2)
    k = plain.key(h).view(2, 9, 2, 3).transpose(1, 2)
    v = plain.value(h).view(2, 9, 2, 4).transpose(1, 2)
    first = 1 if mask_first else 0
    o = reference_attention(q[:, :, first:], k[:, :, first:], v[:, :, first:], kind)
    o = o / torch.arange(1, o.shape[-2] + 1, dtype=torch.float64)[:, None]
    o = torch.nn.functional.pad(o, (0, 0, first, 0)).transpose(1, 2).reshape(2, 9, 8)
    assert rel_err(got, plain.out(o)) < 1e-12


@torch.no_grad()
def test_row_gains_scale_each_row():
    torch.manual_seed(2)
    c = TransformerConfig(dim=3, n_layers=1, attention="linear", mlp=True, row_gain=True, max_len=10)
    m = CausalTransformer(c).double()
    block = m.blocks[0]
    h = torch.randn(2, 7, c.d_model, dtype=torch.float64)
    attn0 = block.attn(h)
    assert torch.equal(block.attn.row_gain, torch.ones(10, dtype=torch.float64))
    g = torch.rand(10, dtype=torch.float64)
    block.attn.row_gain.copy_(g)
    block.mlp.row_gain.copy_(2 * g)
    assert rel_err(block.attn(h), g[:7, None] * attn0) < 1e-14  # no bias: W_o is linear
    hidden = torch.relu(block.mlp.up(h))
    assert rel_err(block.mlp(h), block.mlp.down(2 * g[:7, None] * hidden)) < 1e-14
    assert {"blocks.0.attn.row_gain", "blocks.0.mlp.row_gain"} <= set(m.state_dict())
    with pytest.raises(ValueError, match="sequence length 11 exceeds the per-row gains \\(max_len=10\\)"):
        m(torch.randn(1, 11, 3, dtype=torch.float64))


@torch.no_grad()
def test_norm_placements():
    """pre: LN before each branch and the read-out (2L + 1 LayerNorms with an MLP); post: every
    block's output is standardised per token (L); output: each branch's output is (2L); none: 0.
    (LayerNorm's eps set to 1e-300 so that standardised means variance 1 to rounding.)"""
    x = torch.randn(2, 10, 3, dtype=torch.float64)

    def built(**kw):
        torch.manual_seed(3)
        m = CausalTransformer(TransformerConfig(dim=3, n_layers=2, attention="linear", **kw)).double()
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.eps = 1e-300
        return m, m(x, return_hidden=True)[1]

    def standard(h):
        return h.mean(-1).abs().max() < 1e-12 and (h.var(-1, unbiased=False) - 1).abs().max() < 1e-12

    counts = {}
    for norm in NORMS:
        m, hidden = built(mlp=True, norm=norm)
        assert m.config.layernorm == (norm == "pre")
        counts[norm] = sum(isinstance(mod, nn.LayerNorm) for mod in m.modules())
        assert all(standard(h) for h in hidden[1:]) == (norm == "post")
    assert counts == {"none": 0, "pre": 5, "post": 2, "output": 4}
    _, hidden = built(norm="output")
    for before, after in zip(hidden, hidden[1:]):
        assert standard((after - before)[:, 1:])  # LN(Attn(h))
        assert torch.equal(after[:, 0], before[:, 0])  # row 0 sees no key: LN(0) = 0
    assert TransformerConfig(dim=3, n_layers=1, layernorm=True).norm == "pre"
    assert TransformerConfig(dim=3, n_layers=1, norm="pre").layernorm


@pytest.mark.parametrize("norm", NORMS)
def test_every_option_is_a_plain_module(norm):
    """parameter_count, state_dict round trip, float32, gradients to every parameter."""
    import itertools

    for bias, mlp, heads, tokens in itertools.product([False, True], [False, True], [1, 2], ["augmented", "raw"]):
        c = TransformerConfig(dim=2, n_layers=2, norm=norm, bias=bias, mlp=mlp, n_heads=heads, tokens=tokens,
                              max_len=8, attention_norm="keys", row_gain=mlp)
        assert parameter_count(c) == sum(p.numel() for p in CausalTransformer(c).parameters()), (bias, mlp, heads)
    m = model("exp", norm=norm, bias=True, mlp=True, attention_norm="keys", row_gain=True, max_len=16)
    m2 = CausalTransformer(m.config).double()
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    assert torch.equal(m(x), m2(x))
    with torch.no_grad():
        assert rel_err(m2.to(torch.float32)(x.float()).double(), m(x)) < 1e-4
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_train_flags_name_the_same_options():
    """ckd.train keeps its own copies of the option names (no torch import to parse flags): the same."""
    import ckd.train
    from ckd.attention import ATTENTION_NORMS

    assert ckd.train.NORMS == NORMS and ckd.train.ATTENTION_NORMS == ATTENTION_NORMS
    assert set(ckd.train.ATTENTIONS) == set(ATTENTION)
