"""The row-blocked long-sequence path (``memory_budget``) gives the same results as the
whole-matrix path: for every kernel, finite and infinite depth, ridge, exp rescaling."""

import warnings

import pytest
import torch
from conftest import RTOL, rel_err
from test_descent import OPTS
from test_descent import _x as _unit_x

import ckd
from ckd.descent import StabilityWarning, block_rows, descend
from ckd.kernels import KERNELS, causal_matrices, causal_rows, exp_log_scale


def _x(B=2, T=23):
    return _unit_x(B=B, T=T)


def _budget(x, rows):
    """A memory budget that gives blocks of ``rows`` rows."""
    B, T, _ = x.shape
    budget = 3 * B * T * x.element_size() * rows
    assert block_rows(x, budget) == rows
    return budget


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("start,stop", [(0, 23), (0, 5), (5, 12), (17, 23), (22, 23)])
def test_causal_rows_are_the_rows_of_the_causal_matrices(kernel, start, stop):
    x = _x()
    mats = causal_matrices(x, kernel, **OPTS[kernel])
    P, R = causal_rows(x, kernel, OPTS[kernel].get("beta", 1.0), OPTS[kernel].get("sigma", 1.0), start, stop)
    assert P.shape == R.shape == (2, stop - start, stop)
    assert rel_err(P, mats.P[:, start:stop, :stop]) < RTOL
    assert rel_err(R, mats.R[:, start:stop, :stop]) < RTOL
    assert (mats.P[:, start:stop, stop:] == 0).all() and (mats.R[:, start:stop, stop:] == 0).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", [1, 4, 7, 22])
@pytest.mark.parametrize("ridge", [0.0, 0.2])
def test_blocked_finite_depth_equals_whole(kernel, rows, ridge):
    x = _x()
    whole = descend(x, kernel, depth=6, ridge=ridge, **OPTS[kernel])
    blocked = descend(x, kernel, depth=6, ridge=ridge, memory_budget=_budget(x, rows), **OPTS[kernel])
    assert rel_err(blocked, whole) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", [1, 4, 7, 22])
@pytest.mark.parametrize("ridge", [0.0, 0.2])
def test_blocked_infinite_depth_is_blocked_forward_substitution(kernel, rows, ridge):
    x = _x()
    whole = descend(x, kernel, depth="inf", ridge=ridge, **OPTS[kernel])
    blocked = descend(x, kernel, depth="inf", ridge=ridge, memory_budget=_budget(x, rows), **OPTS[kernel])
    assert rel_err(blocked, whole) < RTOL


def test_blocked_return_all_and_given_step():
    x = _x(T=30)
    whole = descend(x, "exp", depth=5, step=0.3, return_all=True)
    blocked = descend(x, "exp", depth=5, step=0.3, return_all=True, memory_budget=_budget(x, 8))
    assert blocked.shape == (6, *x.shape)
    assert rel_err(blocked, whole) < RTOL


def test_blocked_exp_rescaling_uses_one_scale_for_all_blocks():
    """Large beta on unit vectors: weights up to e^400 (finite depth) and e^2000 (not representable;
    depth inf) are stored rescaled by the sequence's largest log-weight, found across all blocks."""
    x = _x(T=17)
    for beta, depth in ((400.0, 3), (2000.0, "inf")):
        assert (exp_log_scale(x, beta, 3) == causal_matrices(x, "exp", beta=beta).log_scale).all()
        whole = descend(x, "exp", beta=beta, depth=depth)
        blocked = descend(x, "exp", beta=beta, depth=depth, memory_budget=_budget(x, 3))
        assert torch.isfinite(whole).all() and rel_err(blocked, whole) < RTOL


def test_blocked_warnings_and_errors_match_whole():
    x = _x(B=1, T=9)
    budget = _budget(x, 2)
    with pytest.warns(StabilityWarning, match="outside the convergence region"):
        descend(x, "exp", depth=2, step=5.0, memory_budget=budget)
    z = x.clone()
    z[0, 4] = 0  # R[5, 5] = |x_4|^2 = 0 with the linear kernel: alpha_5 = 0 (its columns are 0)
    assert rel_err(descend(z, "linear", depth="inf", memory_budget=budget), descend(z, "linear", depth="inf")) < RTOL
    with pytest.raises(ValueError, match="ridge > 0"):
        descend(z, "exp", beta=1e4, depth="inf", memory_budget=budget)  # exp weights lost to underflow
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        descend(x, "exp", depth=3, memory_budget=budget)
    with pytest.raises(ValueError, match="memory_budget"):
        descend(x, "exp", memory_budget=0)


def test_predict_passes_memory_budget_through():
    x = _x(B=1, T=40)[0].numpy()
    whole = ckd.predict(x, "gaussian", depth=4)
    blocked = ckd.predict(x, "gaussian", depth=4, memory_budget=3 * 40 * 8 * 5)
    assert rel_err(torch.from_numpy(blocked), torch.from_numpy(whole)) < RTOL
