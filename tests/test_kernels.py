import math

import numpy as np
import pytest
import torch
from conftest import RTOL, rel_err
from reference import matrices

from ckd.kernels import KERNELS, causal_matrices, kernel_matrix


def _x(seed=0, B=3, T=9, d=4, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, T, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("beta,sigma", [(1.0, 1.0), (0.3, 2.0), (2.5, 0.5)])
def test_causal_matrices_equal_definition(kernel, beta, sigma):
    x = _x()
    mats = causal_matrices(x, kernel, beta, sigma)
    P, R = mats.true_matrices()
    for b in range(x.shape[0]):
        P_ref, R_ref = matrices(x[b].numpy(), kernel, beta, sigma)
        assert rel_err(P[b], torch.from_numpy(P_ref)) < RTOL
        assert rel_err(R[b], torch.from_numpy(R_ref)) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_masks_row0_and_key0(kernel):
    mats = causal_matrices(_x(), kernel)
    assert (mats.P[:, :, 0] == 0).all() and (mats.R[:, :, 0] == 0).all()
    assert (mats.R[:, 0] == 0).all() and (mats.P[:, 0] == 0).all()
    upper = torch.ones(9, 9, dtype=torch.bool).triu(1)
    assert (mats.P[:, upper] == 0).all() and (mats.R[:, upper] == 0).all()


def test_softmax_rows_sum_to_one():
    mats = causal_matrices(_x(T=20), "softmax", beta=7.0)
    for M in (mats.P, mats.R):
        sums = M.sum(-1)
        assert torch.allclose(sums[:, 1:], torch.ones_like(sums[:, 1:]), rtol=0, atol=1e-12)
        assert (sums[:, 0] == 0).all()


def test_softmax_large_beta_does_not_overflow():
    mats = causal_matrices(_x(T=30, scale=10.0), "softmax", beta=1e4)
    assert torch.isfinite(mats.P).all() and torch.isfinite(mats.R).all()
    assert torch.allclose(mats.R.sum(-1)[:, 1:], torch.ones(3, 29, dtype=torch.float64))


def test_gaussian_diagonal_is_exactly_one():
    mats = causal_matrices(_x(scale=100.0), "gaussian", sigma=0.3)
    assert (torch.diagonal(mats.R, dim1=-2, dim2=-1)[:, 1:] == 1.0).all()


def test_exp_large_beta_is_rescaled_exactly():
    x = _x(T=12)
    x = x / x.norm(dim=-1, keepdim=True)  # unit vectors: log-weights = beta a.b <= beta
    beta = 2000.0  # exp(2000) overflows float64
    mats = causal_matrices(x, "exp", beta=beta)
    assert torch.isfinite(mats.P).all() and (mats.log_scale > 700).all()
    # log of the stored weight + log_scale is the true log-weight beta x_t . x_{s-1}
    mask = mats.P > 0
    log_true = mats.P.log() + mats.log_scale[:, None, None]
    prev = torch.nn.functional.pad(x[:, :-1], (0, 0, 1, 0))
    expected = beta * x @ prev.transpose(-1, -2)
    assert rel_err(log_true[mask], expected[mask]) < RTOL


def test_exp_small_beta_is_not_rescaled():
    mats = causal_matrices(_x(), "exp", beta=1.0)
    assert (mats.log_scale == 0).all()


def test_kernel_matrix_overflow_is_a_clear_error():
    a = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="overflows"):
        kernel_matrix(a, a, "exp", beta=1000.0)
    assert math.isclose(float(kernel_matrix(a, a, "exp", beta=0.5)[0, 0]), math.exp(1.5))


def test_unknown_kernel():
    with pytest.raises(ValueError, match="unknown kernel 'cosine'"):
        causal_matrices(_x(), "cosine")


def test_single_token_sequence():
    mats = causal_matrices(_x(T=1), "exp")
    assert mats.P.shape == (3, 1, 1) and (mats.P == 0).all()
    np.testing.assert_array_equal(mats.R.numpy(), 0)


@pytest.mark.parametrize("sigma", [1e-300, 1e-160, 1e160, 1e300])
def test_gaussian_sigma_beyond_the_float_range_of_its_square(sigma):
    """2 sigma^2 underflows (1e-300) or overflows (1e300): no ZeroDivisionError, no NaN; the
    kernel's limits: 1 on equal points and 0 elsewhere (tiny sigma), 1 everywhere (huge sigma)."""
    import ckd
    from ckd.streaming import Streaming

    x = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]], dtype=torch.float64)
    mats = causal_matrices(x, "gaussian", sigma=sigma)
    G = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    if sigma > 1:
        G = torch.ones(4, 4, dtype=torch.float64)
    P, R = matrices(x[0], "gaussian", 1.0, 1.0)  # the reference's masks, filled with the limit kernel
    assert torch.equal(mats.P[0], torch.where(torch.as_tensor(P) != 0, torch.nn.functional.pad(G[:, :-1], (1, 0)), 0.0))
    for depth in (3, "inf"):
        out = ckd.predict(x, "gaussian", sigma=sigma, depth=depth)
        assert torch.isfinite(out).all()
    s = Streaming("gaussian", sigma=sigma, dim=2)
    stream = torch.stack([s.push(t) for t in x[0]])
    assert rel_err(stream, ckd.predict(x, "gaussian", sigma=sigma, depth="inf")[0]) < RTOL
