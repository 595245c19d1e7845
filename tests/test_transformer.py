"""CausalTransformer as a plain module: causality, attention kinds against their definitions,
hidden states, state_dict, dtype moves, gradients, and clear errors."""

import math

import pytest
import torch
from conftest import rel_err

from ckd.transformer import (
    ATTENTION,
    CausalSelfAttention,
    CausalTransformer,
    TransformerConfig,
    attend,
    positional_table,
)

OPTIONS = [
    dict(),
    dict(mlp=True, layernorm=True, bias=True),
    dict(tokens="raw", max_len=32),
    dict(tokens="raw", positional="sinusoidal", max_len=32, mlp=True),
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
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "mlp-ln-bias", "raw-onehot", "raw-sin"])
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
