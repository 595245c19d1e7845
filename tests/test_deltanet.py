"""Depth-inf linear CKD as flash-linear-attention's delta rule (``ckd.linear_time.deltanet``): the
mapping benchmarks/gpu_run.py relies on to compare our linear-time path with ``chunk_delta_rule``.

Always: a loop written here in fla's convention (S += beta k (v - S^T k)^T, o = scale S^T q) on
``deltanet_inputs`` equals ``ckd.predict(x, "linear", depth="inf")``. With fla installed (fla-core,
no GPU needed): fla's own plain references in ``fla/ops/delta_rule/naive.py`` do too, to 1e-9 in
float64 (``delta_rule_chunkwise``) and to float32's precision (``delta_rule_recurrence`` computes in
float32). With CUDA and Triton: fla's kernels, to their dtype's precision."""

import math

import pytest
import torch
from conftest import RTOL, rel_err

import ckd
from ckd.linear_time import delta_rule_naive, deltanet_inputs, deltanet_rows, fla_reference, pairs

FLA = fla_reference()
needs_fla = pytest.mark.skipif(FLA is None, reason="flash-linear-attention (fla-core) and einops not installed")


def sequences(B=2, T=300, d=5, zero=None, seed=0):
    x = torch.randn(B, T, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) / math.sqrt(d)
    if zero is not None:
        x[:, zero] = 0.0  # a zero token: beta 0 in fla's form, coefficient 0 in ours
    return x


def fla_loop(q, k, v, beta, scale):
    """fla's delta rule as written in its docs, one step at a time, [B, T, H, K] layout."""
    B, n, H, K = k.shape
    S = v.new_zeros(B, H, K, v.shape[-1])
    o = torch.zeros_like(v)
    for i in range(n):
        ki = k[:, i]
        new = v[:, i] - (S * ki[..., None]).sum(-2)  # v_i - S^T k_i
        S = S + beta[:, i, :, None, None] * ki[..., None] * new[..., None, :]
        o[:, i] = scale * (S * q[:, i, ..., None]).sum(-2)  # scale S^T q_i
    return o


def head_first(t, pad=0):
    """[B, T, H, ...] -> [B, H, T + pad, ...], zero rows appended (they come after every real row)."""
    t = t.transpose(1, 2)
    return torch.nn.functional.pad(t, (0, 0) * (t.ndim - 3) + (0, pad)) if pad else t


@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("zero", [None, 7])
def test_deltanet_inputs_equal_predict(ridge, zero):
    x = sequences(zero=zero)
    args = deltanet_inputs(x, ridge)
    assert args["q"].shape == (2, 299, 1, 5) and args["beta"].shape == (2, 299, 1) and args["scale"] == 1.0
    assert rel_err(deltanet_rows(fla_loop(**args)), ckd.predict(x, "linear", depth="inf", ridge=ridge)) < RTOL


def test_zero_channels_change_nothing():
    x = sequences(T=120)
    padded = deltanet_inputs(x, 0.1, channels=16)
    assert padded["k"].shape[-1] == 16 and bool((padded["k"][..., 5:] == 0).all())
    assert rel_err(deltanet_rows(fla_loop(**padded), 5), ckd.predict(x, "linear", depth="inf", ridge=0.1)) < RTOL
    with pytest.raises(ValueError, match="fewer"):
        deltanet_inputs(x, channels=4)
    with pytest.raises(ValueError, match="real x"):
        deltanet_inputs(x[0])


@needs_fla
@pytest.mark.parametrize("chunk", [16, 32, 64])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("zero", [None, 11])
def test_fla_chunkwise_reference_float64(chunk, ridge, zero):
    """fla's chunked reference (WY form, in the input's dtype) equals ckd's depth-inf prediction to
    1e-9, and its final state is W^T = sum_i k_i a_i^T (a: our coefficients); T - 1 = 299 pairs are
    padded with zero rows to a multiple of the chunk, as it requires."""
    x = sequences(zero=zero)
    args = deltanet_inputs(x, ridge)
    n = x.shape[1] - 1
    pad = -n % chunk
    q, k, v, beta = (head_first(args[name], pad) for name in ("q", "k", "v", "beta"))
    o, S = FLA.delta_rule_chunkwise(q * math.sqrt(x.shape[-1]), k, v, beta, chunk_size=chunk)
    assert o.dtype == torch.float64
    want = ckd.predict(x, "linear", depth="inf", ridge=ridge)
    assert rel_err(deltanet_rows(o[:, :, :n].transpose(1, 2)), want) < RTOL
    if zero is None:  # (a zero key with ridge 0 divides by 0 in the plain loop; predict masks it)
        keys, _, queries, y = pairs(x)
        a = delta_rule_naive(keys, keys, queries, y, ridge)[1]
        assert rel_err(S[:, 0], torch.einsum("bnk,bnv->bkv", keys, a)) < RTOL


@needs_fla
def test_fla_recurrence_reference_float32():
    """fla's sequential reference computes in float32: equal to float32's precision."""
    x = sequences(T=200)
    args = deltanet_inputs(x)
    q, k, v, beta = (head_first(args[name]) for name in ("q", "k", "v", "beta"))
    o, S = FLA.delta_rule_recurrence(q * math.sqrt(5), k, v, beta)
    assert rel_err(deltanet_rows(o.transpose(1, 2)), ckd.predict(x, "linear", depth="inf")) < 1e-5


def fla_kernels():
    """fla's Triton kernels, or None (no CUDA, no Triton or no fla)."""
    if FLA is None or not torch.cuda.is_available():
        return None
    try:
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
    except ImportError:
        return None
    return chunk_delta_rule, fused_recurrent_delta_rule


@pytest.mark.skipif(fla_kernels() is None, reason="needs CUDA, Triton and flash-linear-attention")
def test_fla_kernels_on_cuda():
    """fla's kernels on CKD's inputs (d = 16, a size Triton's products take): fused_recurrent in float32
    equals ckd to 1e-4 (float32 updates, no reduced-precision products); chunk_delta_rule, which refuses
    float32, in bfloat16 (unit roundoff 2^-8 = 3.9e-3) to 5e-2."""
    chunk_delta_rule, fused_recurrent_delta_rule = fla_kernels()
    x = sequences(B=2, T=2049, d=16).cuda()
    want = ckd.predict(x, "linear", depth="inf")
    f32 = {k: v.float() if torch.is_tensor(v) else v for k, v in deltanet_inputs(x).items()}
    o, _ = fused_recurrent_delta_rule(**f32)
    assert rel_err(deltanet_rows(o).double(), want) < 1e-4
    bf16 = {k: v.bfloat16() if torch.is_tensor(v) else v for k, v in deltanet_inputs(x).items()}
    o, _ = chunk_delta_rule(**bf16)
    assert rel_err(deltanet_rows(o).double(), want) < 5e-2
