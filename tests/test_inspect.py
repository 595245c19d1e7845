"""``ckd.inspect.attention_blocks``: W_QK and W_OV per layer and head, and their distance to the construction."""

import math

import pytest
import torch

import ckd
from ckd.construction import construct
from ckd.inspect import attention_blocks, summary
from ckd.transformer import CausalTransformer, TransformerConfig

D = 3
QK_SCALE = {"linear": lambda beta, sigma: 1.0, "exp": lambda beta, sigma: beta, "softmax": lambda beta, sigma: beta,
            "gaussian": lambda beta, sigma: 1 / sigma**2}


@pytest.mark.parametrize("kernel", ["linear", "exp", "softmax", "gaussian"])
def test_the_construction_is_at_distance_zero(kernel):
    beta, sigma, eta = 4.0, 0.5, 0.3
    model = construct(kernel, dim=D, depth=2, step=eta, beta=beta, sigma=sigma)
    a = QK_SCALE[kernel](beta, sigma)
    for basis in ("residual", "tokens"):
        blocks = attention_blocks(model, basis=basis)
        assert [(b["layer"], b["head"]) for b in blocks] == [(1, 0), (1, 1), (2, 0), (2, 1)]
        for b in blocks:
            mine = b["construction"]["residual" if b["head"] == 0 else "prediction"]
            other = b["construction"]["prediction" if b["head"] == 0 else "residual"]
            assert mine["W_QK"]["distance"] < 1e-12 and mine["W_QK"]["scale"] == pytest.approx(a, rel=1e-12)
            assert other["W_QK"]["distance"] == pytest.approx(1.0) and other["W_QK"]["scale"] == 0.0
            if basis == "tokens" and b["head"] == 0:  # the residual head writes r: the read-out sees nothing
                assert b["W_OV"].abs().max() == 0 and math.isnan(mine["W_OV"]["distance"])
            else:
                assert mine["W_OV"]["distance"] < 1e-12 and mine["W_OV"]["scale"] == pytest.approx(eta, rel=1e-12)


def test_blocks_in_token_and_slot_coordinates():
    eta, beta = 0.3, 2.0
    model = construct("softmax", dim=D, depth=1, step=eta, beta=beta)
    eye = torch.eye(D, dtype=torch.float64)
    res, pred = attention_blocks(model)
    assert list(pred["query"]) == ["x_{t-1}", "x_t", "one"] and list(pred["key"]) == ["x_{s-1}", "x_s", "one"]
    for (q, k), block in pred["blocks"]["W_QK"].items():
        want = beta * eye if (q, k) == ("x_t", "x_{s-1}") else torch.zeros_like(block)
        assert torch.equal(block, want), (q, k)
    assert torch.equal(res["blocks"]["W_QK"]["x_{t-1}", "x_{s-1}"], beta * eye)
    assert torch.allclose(pred["blocks"]["W_OV"]["prediction", "x_s"], eta * eye, rtol=1e-15, atol=0)
    assert pred["W_OV"].shape == (D, 2 * D + 1) and pred["W_QK"].shape == (2 * D + 1, 2 * D + 1)
    res, pred = attention_blocks(model, basis="residual")
    assert list(res["query"]) == ["x_{t-1}", "x_t", "r_t", "p_t", "one"]
    assert torch.allclose(res["blocks"]["W_OV"]["r_t", "r_s"], -eta * eye, rtol=1e-15, atol=0)
    assert torch.allclose(pred["blocks"]["W_OV"]["p_t", "r_s"], eta * eye, rtol=1e-15, atol=0)
    assert float(pred["W_OV"].abs().sum()) == pytest.approx(D * eta)  # nothing else is written


def test_definition_and_layernorm_fold_on_a_random_model():
    torch.manual_seed(0)
    model = CausalTransformer(TransformerConfig(dim=D, n_layers=2, attention="linear", layernorm=True)).double()
    for ln in (model.blocks[1].ln_attn, model.ln_out):  # gamma != 1, so that the fold is tested
        ln.weight.data = torch.rand(ln.weight.shape, dtype=torch.float64) + 0.5
    blocks = {(b["layer"], b["head"]): b for b in attention_blocks(model, basis="residual")}
    h = torch.randn(5, model.config.d_model, dtype=torch.float64)
    attn = model.blocks[1].attn
    E = model.config.d_head
    normed = model.blocks[1].ln_attn(h)
    std = (h.var(-1, unbiased=False) + model.blocks[1].ln_attn.eps).sqrt()
    for head in range(2):
        q = attn.query(normed)[:, head * E:(head + 1) * E]
        k = attn.key(normed)[:, head * E:(head + 1) * E]
        W = blocks[2, head]["W_QK"]  # LayerNorm: scores = h^T W_QK h' / (std std'), no bias
        assert torch.allclose(q @ k.T, (h @ W @ h.T) / std[:, None] / std[None, :], rtol=1e-12, atol=1e-15)
        v = attn.value(normed)[:, head * E:(head + 1) * E]
        written = v @ attn.out.weight[:, head * E:(head + 1) * E].T
        assert torch.allclose(written, (h @ blocks[2, head]["W_OV"].T) / std[:, None], rtol=1e-12, atol=1e-15)
    tok = attention_blocks(model)  # tokens: W_in^T W_QK W_in, W_out' W_OV W_in
    Win = model.embed.weight
    assert torch.allclose(tok[2]["W_QK"], Win.T @ blocks[2, 0]["W_QK"] @ Win, rtol=1e-12, atol=1e-15)
    assert tok[2]["W_OV"].shape == (D, 2 * D + 1)
    for b in tok + list(blocks.values()):  # far from the construction at any scale
        for head in ("residual", "prediction"):
            assert b["construction"][head]["W_QK"]["distance"] > 0.5
            assert b["construction"][head]["W_OV"]["distance"] > 0.5
    assert "W_QK to prediction" in summary(tok) and len(summary(tok).splitlines()) == 5


def test_raw_tokens_other_widths_and_bad_input():
    model = construct("linear", dim=2, depth=1, step=0.5, tokens="raw", max_len=6)
    res, pred = attention_blocks(model)
    assert list(pred["query"]) == ["x_{t-1}", "x_t", "one", "pos_t"] and pred["W_QK"].shape == (11, 11)
    assert pred["construction"]["prediction"]["W_QK"]["distance"] < 1e-12
    assert list(attention_blocks(model, basis="residual")[0]["query"])[-1] == "pos_t"
    wide = CausalTransformer(TransformerConfig(dim=2, n_layers=1, n_heads=1, width=16, attention="softmax"))
    (b,) = attention_blocks(wide, basis="residual")
    assert list(b["query"]) == ["h_t"] and b["construction"]["prediction"]["W_QK"] == {"distance": None,
                                                                                       "scale": None}
    assert attention_blocks(wide)[0]["construction"]["prediction"]["W_QK"]["distance"] > 0.5
    with pytest.raises(TypeError, match="CausalTransformer"):
        attention_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown basis"):
        attention_blocks(model, basis="slots")
    assert ckd.inspect.attention_blocks is attention_blocks
