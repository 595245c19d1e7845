"""Baselines (SPEC §6): each equals its per-prefix definition, is strictly causal, and
relates to CKD the way the module doc says."""

import pytest
import torch
from conftest import RTOL, rel_err

from ckd.baselines import BASELINES, analogues, kernel_ridge, last_value, least_squares, oracle
from ckd.descent import descend
from ckd.kernels import kernel_matrix
from ckd.sequences import make_task


def _x(B=2, T=12, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=g, dtype=torch.float64)


def _ls_reference(x, ridge):
    """Loop over prefixes: min-norm / ridge solution of A X_prev = X_next."""
    B, T, d = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(1, T):
            Xp, Xn = x[b, :t], x[b, 1:t + 1]
            C = Xp.T @ Xp + ridge * torch.eye(d, dtype=x.dtype)
            A = (Xn.T @ Xp) @ torch.linalg.pinv(C)
            out[b, t] = A @ x[b, t]
    return out


def _krr_reference(x, kernel, ridge, **kw):
    B, T, d = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(1, T):
            keys, Y = x[b, :t], x[b, 1:t + 1]
            K = kernel_matrix(keys, keys, kernel, **kw) + ridge * torch.eye(t, dtype=x.dtype)
            kq = kernel_matrix(x[b, t:t + 1], keys, kernel, **kw)
            out[b, t] = (kq @ torch.linalg.solve(K, Y))[0]
    return out


def _analogues_reference(x, k):
    B, T, d = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(1, T):
            dist = (x[b, :t] - x[b, t]).norm(dim=-1)
            idx = dist.argsort()[: min(k, t)]
            out[b, t] = x[b, idx + 1].mean(0)
    return out


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_least_squares_matches_per_prefix_definition(ridge):
    x = _x(T=10, d=4)  # t < d: rank-deficient prefixes use the minimum-norm solution
    assert rel_err(least_squares(x, ridge), _ls_reference(x, ridge)) < 1e-8


def test_least_squares_recovers_linear_map_after_d_pairs():
    task = make_task("gaussian-linear", 3, 12, 4, seed=1)
    pred = least_squares(task.x)
    assert rel_err(pred[:, 4:], oracle(task)[:, 4:]) < 1e-8


@pytest.mark.parametrize("kernel,ridge,kw", [("gaussian", 0.0, {"sigma": 1.5}), ("gaussian", 0.1, {"sigma": 0.7}),
                                             ("exp", 0.01, {"beta": 0.5}), ("linear", 0.2, {})])
def test_kernel_ridge_matches_per_prefix_definition(kernel, ridge, kw):
    x = _x(T=9)
    assert rel_err(kernel_ridge(x, kernel, ridge=ridge, **kw), _krr_reference(x, kernel, ridge, **kw)) < 1e-8


def test_linear_kernel_ridge_is_ridge_least_squares():
    x = _x(T=15)
    assert rel_err(kernel_ridge(x, "linear", ridge=0.5), least_squares(x, ridge=0.5)) < RTOL


def test_kernel_ridge_differs_from_ckd_depth_inf_in_general():
    """Full interpolation on the prefix is not one Kaczmarz sweep (CKD depth inf)."""
    x = _x(T=10)
    krr = kernel_ridge(x, "gaussian", sigma=1.0)
    ckd = descend(x, "gaussian", sigma=1.0, depth="inf")
    assert rel_err(krr, ckd) > 1e-2


@pytest.mark.parametrize("ridge", [0.0, 0.4])
def test_kernel_ridge_equals_ckd_depth_inf_on_orthogonal_keys(ridge):
    """With orthogonal keys R is diagonal and both solve the same (diagonal) system."""
    d = 5
    q, _ = torch.linalg.qr(torch.randn(2, d, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    x = torch.cat([q.transpose(-1, -2), _x(B=2, T=1, d=d)], dim=1)  # x_0..x_{d-1} orthonormal, T = d + 1
    krr = kernel_ridge(x, "linear", ridge=ridge)
    ckd = descend(x, "linear", depth="inf", ridge=ridge)
    assert rel_err(krr, ckd) < RTOL


def test_kernel_ridge_singular_gram_is_a_clear_error():
    x = torch.zeros(1, 6, 2, dtype=torch.float64)  # every key equal: K singular
    with pytest.raises(ValueError, match="ridge > 0"):
        kernel_ridge(x, "gaussian")
    assert torch.isfinite(kernel_ridge(x, "gaussian", ridge=1e-3)).all()
    with pytest.raises(ValueError, match="softmax"):
        kernel_ridge(_x(), "softmax")


@pytest.mark.parametrize("k", [1, 2, 5])
def test_analogues_matches_definition(k):
    x = _x(T=14)
    assert rel_err(analogues(x, k), _analogues_reference(x, k)) < RTOL


def test_analogues_is_exact_on_periodic_sequences_after_one_period():
    task = make_task("periodic", 3, 20, 4, period=5, seed=2)
    pred = analogues(task.x)
    assert rel_err(pred[:, 5:], oracle(task)[:, 5:]) < RTOL


def test_bad_k_and_ridge():
    with pytest.raises(ValueError):
        analogues(_x(), 0)
    with pytest.raises(ValueError):
        least_squares(_x(), -1.0)
    with pytest.raises(ValueError):
        oracle(make_task("linear", 1, 4, 2).__class__("real", _x()))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_is_strictly_causal(name):
    """Changing rows after t never changes rows <= t."""
    x = _x(T=16)
    t = 7
    y = x.clone()
    y[:, t + 1:] = torch.randn_like(y[:, t + 1:]) * 3
    a, b = BASELINES[name](x), BASELINES[name](y)
    assert a.shape == x.shape
    assert torch.equal(a[:, : t + 1], b[:, : t + 1]) or rel_err(a[:, : t + 1], b[:, : t + 1]) < 1e-12


def test_last_value():
    x = _x()
    assert torch.equal(last_value(x), x)
