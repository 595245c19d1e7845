"""Every closed form of SPEC §2 as a test, against the naive definitions in reference.py."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import RTOL, rel_err
from hypothesis import given
from hypothesis import strategies as st
from reference import ckd, kaczmarz, matrices

from ckd import make_task, next_token_error
from ckd.descent import (
    StabilityWarning,
    check_step,
    continuous_depth,
    default_step,
    descend,
    finite_depth,
    infinite_depth,
    targets,
)
from ckd.kernels import KERNELS, causal_matrices

OPTS = {"linear": {}, "exp": {"beta": 0.7}, "softmax": {"beta": 3.0}, "gaussian": {"sigma": 0.8}}


def _x(seed=0, B=3, T=10, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _ref_matrices(x, kernel):
    o = OPTS[kernel]
    return matrices(x, kernel, o.get("beta", 1.0), o.get("sigma", 1.0))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("depth", [0, 1, 2, 5, 9])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_finite_depth_equals_layer_recursion(kernel, depth, ridge):
    x = _x()
    step = 0.37
    p = descend(x, kernel, depth=depth, step=step, ridge=ridge, **OPTS[kernel])
    for b in range(x.shape[0]):
        ref = ckd(x[b].numpy(), kernel, depth, step, ridge, **OPTS[kernel])
        if depth == 0:
            assert (p[b] == 0).all()
        else:
            assert rel_err(p[b], torch.from_numpy(ref)) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_default_step_is_half_over_max_diagonal(kernel, ridge):
    x = _x(B=4, T=12) * torch.linspace(0.5, 1.5, 12, dtype=torch.float64)[None, :, None]
    eta = default_step(causal_matrices(x, kernel, **OPTS[kernel]), ridge)
    diag_max = max(np.diag(_ref_matrices(x[b].numpy(), kernel)[1])[1:].max() for b in range(4))
    assert math.isclose(eta, 0.5 / (diag_max + ridge), rel_tol=RTOL)
    p = descend(x, kernel, depth=4, ridge=ridge, **OPTS[kernel])
    ref = ckd(x[2].numpy(), kernel, 4, eta, ridge, **OPTS[kernel])
    assert rel_err(p[2], torch.from_numpy(ref)) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_depth_N_closed_form(kernel):
    """p_N = P alpha_N, alpha_N = eta sum_{l<N} r_l, r_l = (I - eta (R + lambda I))^l y."""
    x, N, eta, lam = _x(B=1, T=8)[0].numpy(), 6, 0.4, 0.2
    P, R = _ref_matrices(x, kernel)
    y = x.copy()
    y[0] = 0
    M = np.eye(len(x)) - eta * (R + lam * np.eye(len(x)))
    alpha = eta * sum(np.linalg.matrix_power(M, l) @ y for l in range(N))
    p = descend(torch.from_numpy(x)[None], kernel, depth=N, step=eta, ridge=lam, **OPTS[kernel])[0]
    assert rel_err(p, torch.from_numpy(P @ alpha)) < RTOL


@pytest.mark.parametrize("kernel", ["linear", "exp", "gaussian"])
def test_infinite_depth_is_one_kaczmarz_sweep(kernel):
    x = _x(B=2, T=15)
    p = descend(x, kernel, depth="inf", **OPTS[kernel])
    for b in range(2):
        ref = kaczmarz(x[b].numpy(), kernel, **{k: v for k, v in OPTS[kernel].items()})
        assert rel_err(p[b], torch.from_numpy(ref)) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.25])
def test_infinite_depth_solves_triangular_system(kernel, ridge):
    """(R + lambda I) alpha = y on rows 1..T-1, p = P alpha (dense solve, independent of ckd)."""
    x = _x(B=1, T=11)[0].numpy()
    P, R = _ref_matrices(x, kernel)
    A = R[1:, 1:] + ridge * np.eye(10)
    alpha = np.linalg.solve(A, x[1:])
    p = descend(torch.from_numpy(x)[None], kernel, depth="inf", ridge=ridge, **OPTS[kernel])[0]
    assert rel_err(p, torch.from_numpy(P[:, 1:] @ alpha)) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_finite_depth_converges_to_infinite_depth(kernel):
    x = _x(B=2, T=6)
    p_inf = descend(x, kernel, depth="inf", **OPTS[kernel])
    errs = [rel_err(descend(x, kernel, depth=n, **OPTS[kernel]), p_inf) for n in (2, 20, 3000)]
    assert errs[0] > errs[1] >= errs[2] and errs[2] < 1e-8


@pytest.mark.parametrize("kernel", KERNELS)
def test_continuous_depth_closed_form(kernel):
    """alpha(tau) = (R + lambda I)^{-1} (I - exp(-tau (R + lambda I))) y (scipy-free: eigen-free
    check by the explicit inverse and torch's matrix_exp in a separate code path)."""
    x, tau, lam = _x(B=1, T=9), 1.7, 0.1
    P, R = (torch.from_numpy(m) for m in _ref_matrices(x[0].numpy(), kernel))
    M = R[1:, 1:] + lam * torch.eye(8, dtype=torch.float64)
    alpha = torch.linalg.inv(M) @ (torch.eye(8, dtype=torch.float64) - torch.linalg.matrix_exp(-tau * M)) @ x[0, 1:]
    p = continuous_depth(causal_matrices(x, kernel, **OPTS[kernel]), targets(x), tau, lam)[0]
    assert rel_err(p, P[:, 1:] @ alpha) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_finite_depth_approaches_continuous_depth_at_rate_one_over_N(kernel):
    x, tau = _x(B=2, T=8), 2.0
    mats = causal_matrices(x, kernel, **OPTS[kernel])
    p_tau = continuous_depth(mats, targets(x), tau)
    errs = [rel_err(finite_depth(mats, targets(x), n, tau / n), p_tau) for n in (200, 400, 800)]
    assert errs[2] < 2e-3
    for a, b in zip(errs, errs[1:]):  # first-order Euler: halving the step halves the error
        assert 1.8 < a / b < 2.2


def test_convergence_condition_on_the_diagonal():
    x = _x(B=2, T=8)
    mats = causal_matrices(x, "linear")  # unit vectors: R[t, t] = 1
    assert check_step(mats, 1.99, 0.0) and not check_step(mats, 2.01, 0.0)
    assert check_step(mats, 1.6, 0.2) and not check_step(mats, 1.7, 0.2)  # |1 - eta (1 + 0.2)| < 1
    with pytest.warns(StabilityWarning, match="outside the convergence region"):
        descend(x, "linear", depth=3, step=2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        descend(x[:, :4], "linear", depth=3, step=1.0)


def test_outside_the_region_diverges_inside_converges():
    x = _x(B=1, T=4)
    with pytest.warns(StabilityWarning):
        far = [descend(x, "gaussian", depth=n, step=2.2).abs().max() for n in (20, 40)]
    assert far[1] > 10 * far[0]
    near = [rel_err(descend(x, "gaussian", depth=n, step=1.9), descend(x, "gaussian", depth="inf"))
            for n in (200, 400)]
    assert near[1] < near[0] < 1e-3


def test_transient_growth_is_warned_in_float32():
    task = make_task("linear", 2, 300, 3, seed=0)
    with pytest.warns(StabilityWarning, match="grew"):
        descend(task.x.float(), "linear", depth=16)


def test_finite_depth_overflow_is_one_clear_error():
    x = _x(B=2, T=20)
    with pytest.warns(StabilityWarning), pytest.raises(FloatingPointError, match="overflowed in float64") as err:
        descend(x, "linear", depth=8, step=1e200)
    assert "or float64" not in str(err.value)  # no advice to use the dtype already in use
    with pytest.warns(StabilityWarning), pytest.raises(FloatingPointError, match="or float64"):
        descend(x.float(), "linear", depth=8, step=1e30)


def _random_walk(T=200, d=3, seed=0):
    steps = torch.randn(1, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return steps.cumsum(1) / 10


def test_ill_conditioned_infinite_depth_is_warned():
    """exp with a large beta on a random walk: the triangular solve amplifies y by ~1e24."""
    x = _random_walk()
    with pytest.warns(StabilityWarning, match="triangular solve amplified the targets"):
        descend(x, "exp", beta=40.0, depth="inf")
    with warnings.catch_warnings():  # the same input well conditioned: silent
        warnings.simplefilter("error", StabilityWarning)
        descend(x, "exp", beta=1.0, depth="inf")
        descend(make_task("linear", 4, 300, 3, seed=0).x, "linear", depth="inf")


def test_infinite_depth_overflow_is_one_clear_error():
    x = _random_walk(T=60)
    mats = causal_matrices(x, "linear")
    mats.R.diagonal(dim1=-2, dim2=-1)[:, 1:] = 1e-300  # a (near) singular system: alpha overflows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        with pytest.raises(FloatingPointError, match="triangular solve amplified"):
            infinite_depth(mats, targets(x))


def test_return_all_gives_every_layer():
    x = _x()
    hist = descend(x, "exp", depth=5, step=0.3, return_all=True)
    assert hist.shape == (6, *x.shape) and (hist[0] == 0).all()
    for n in (1, 3, 5):
        assert torch.equal(hist[n], descend(x, "exp", depth=n, step=0.3))


def test_infinite_depth_zero_diagonal_is_a_clear_error():
    x = _x(B=1, T=5)
    x[0, 2] = 0  # R[3, 3] = |x_2|^2 = 0 with the linear kernel
    with pytest.raises(ValueError, match="ridge > 0"):
        infinite_depth(causal_matrices(x, "linear"), targets(x))
    assert torch.isfinite(descend(x, "linear", depth="inf", ridge=1e-3)).all()


def test_exp_large_beta_matches_the_unscaled_definition():
    """beta = 400 on unit vectors: weights up to e^400 (representable), stored rescaled by e^-400.
    The descent on rescaled weights (step and ridge rescaled) equals the literal definition."""
    x = _x(B=1, T=7)
    mats = causal_matrices(x, "exp", beta=400.0)
    assert mats.log_scale[0] > 300
    eta = 0.5 * math.exp(-400.0)
    p = descend(x, "exp", beta=400.0, depth=3, step=eta, ridge=1e170)
    ref = ckd(x[0].numpy(), "exp", 3, eta, 1e170, beta=400.0)
    assert rel_err(p[0], torch.from_numpy(ref)) < 1e-8
    p_inf = descend(x, "exp", beta=2000.0, depth="inf")  # e^2000 is not representable at all
    assert torch.isfinite(p_inf).all()


@pytest.mark.filterwarnings("ignore::ckd.descent.StabilityWarning")
@given(t=st.integers(0, 10), seed=st.integers(0, 10**6), kernel=st.sampled_from(KERNELS),
       depth=st.sampled_from([0, 1, 4, "inf"]))
def test_causality(t, seed, kernel, depth):
    """Changing x_{t+1}, x_{t+2}, ... never changes output rows 0..t (with a fixed step: the default
    step is a max over the whole batch, SPEC §4, and is the one non-causal choice)."""
    x = _x(seed=seed, B=2, T=12)
    y = x.clone()
    y[:, t + 1:] = 3 * torch.randn_like(y[:, t + 1:])
    step = 0.3
    a = descend(x, kernel, depth=depth, step=step, ridge=0.1, **OPTS[kernel])
    b = descend(y, kernel, depth=depth, step=step, ridge=0.1, **OPTS[kernel])
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], rtol=1e-12, atol=1e-12)


# --- Behaviour (SPEC §2 "Expected behaviour"), as medians over 30 seeded sequences ---

def test_orthogonal_linear_kernel_infinite_depth_converges():
    task = make_task("linear", 30, 501, 3, seed=0)
    err = next_token_error(descend(task.x, "linear", depth="inf"), task.x)
    med = err.median(0).values
    assert med[200] < 1e-6
    assert med[500 - 1] < med[100]


def test_softmax_one_layer_is_an_induction_head_on_periodic_sequences():
    task = make_task("periodic", 30, 40, 5, period=5, seed=0)
    err = next_token_error(descend(task.x, "softmax", beta=32.0, depth=1, step=1.0), task.x)
    after_two_periods = err[:, 10:].mean(1)
    assert after_two_periods.median() < 1e-4
    assert err[:, :4].mean() > 0.1  # before one period there is nothing to copy


@pytest.mark.parametrize("kernel,opts", [("exp", {"beta": 4.0}), ("gaussian", {"sigma": 0.5}),
                                         ("softmax", {"beta": 4.0})])
def test_periodic_infinite_depth_error_falls_with_t(kernel, opts):
    task = make_task("periodic", 30, 201, 3, period=5, seed=1)
    med = next_token_error(descend(task.x, kernel, depth="inf", **opts), task.x).median(0).values
    assert med[199] < med[50] < med[10]


@pytest.mark.parametrize("depth", [1, 4, "inf"])
def test_gaussian_on_the_sphere_is_rescaled_exp(depth):
    """On the unit sphere k_gauss(a, b) = e^{-1/sigma^2} exp(a.b / sigma^2): the default step
    cancels the constant, so CKD with gaussian sigma equals CKD with exp beta = 1/sigma^2
    (the identical rows of ``ckd demo``)."""
    x = make_task("periodic", 3, 30, 4, period=6, seed=2).x
    sigma = 0.5
    a = descend(x, "gaussian", sigma=sigma, depth=depth)
    b = descend(x, "exp", beta=1 / sigma**2, depth=depth)
    assert rel_err(a, b) < RTOL


@pytest.mark.parametrize("shape", [(0, 5, 3), (2, 5, 0)])
def test_empty_batch_or_dimension_gives_an_empty_prediction(shape):
    x = torch.zeros(shape, dtype=torch.float64)
    for depth in (3, "inf"):
        assert descend(x, "exp", depth=depth).shape == shape


# ---- issue 12: scale, underflow, memory (items 7, 12, 13) ----

def _stored_definition(x, kernel, depth, **kw):
    """p after ``depth`` layers with the default step, run literally on the stored (rescaled)
    matrices with eta_stored = 0.5 / max R_stored[t, t]: the definition in the kernel's units."""
    mats = causal_matrices(x, kernel, **kw)
    P, R, y = mats.P[0], mats.R[0], targets(x)[0]
    eta = 0.5 / float(torch.diagonal(R)[1:].max())
    r, p = y.clone(), torch.zeros_like(y)
    for _ in range(depth):
        p, r = p + eta * P @ r, r - eta * R @ r
    return p


def test_default_step_is_exact_when_it_underflows_in_true_units():
    """beta = 1e3 on unit vectors: weights up to e^1000, the default step 0.5 e^-1000 underflows
    as a float (it used to give all zeros and a warning about 'step 0'); kept in the kernel's
    rescaled units, depth N with the default step is the definition, without any warning."""
    x = _x(B=1, T=8)
    assert default_step(causal_matrices(x, "exp", beta=1e3)) == 0.0  # the float underflows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = descend(x, "exp", beta=1e3, depth=4)[0]
    ref = _stored_definition(x, "exp", 4, beta=1e3)
    assert (ref != 0).any() and rel_err(out, ref) < RTOL


def test_explicit_step_that_underflows_is_a_clear_error():
    x = _x(B=1, T=6)
    with pytest.raises(ValueError, match="step 1e-320 underflows"):
        descend(x, "exp", depth=3, step=1e-320)
    with pytest.raises(ValueError, match="underflows"):
        descend(x, "exp", depth=3, step=1e-320, memory_budget=3 * 6 * 8 * 2)  # blocked: same check
    with pytest.warns(StabilityWarning, match="step 0 is outside"):  # allowed (no layer moves), and said
        assert (descend(x, "exp", depth=3, step=0.0) == 0).all()


@pytest.mark.parametrize("k", [300, -300, 100, -100])
@pytest.mark.parametrize("depth", [5, "inf"])
def test_linear_kernel_is_exact_for_huge_and_tiny_inputs(k, depth):
    """x 2^k with the linear kernel equals 2^k times the result on x, bit for bit (a power-of-two
    rescaling is exact): no zeros from a default step 1/|x|^2 that overflows or underflows."""
    x = _x(B=2, T=9)
    c = 2.0 ** k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(descend(x * c, "linear", depth=depth), descend(x, "linear", depth=depth) * c)
    assert torch.equal(descend(x * c, "linear", depth=3, step=0.1 / c / c, ridge=0.5 * c * c),
                       descend(x, "linear", depth=3, step=0.1, ridge=0.5) * c)


@pytest.mark.parametrize("depth", [0, 3, "inf"])
def test_all_zero_input_with_the_linear_kernel_predicts_zero(depth):
    """R[t,t] = |x_{t-1}|^2 = 0 on every row: no pair carries information, every prediction is 0
    (chosen and documented; it used to be 'step ... got inf' or an error), without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = descend(torch.zeros(2, 6, 3, dtype=torch.float64), "linear", depth=depth)
    assert out.shape == (2, 6, 3) and (out == 0).all()


def test_zero_token_with_the_linear_kernel_is_the_vanishing_ridge_limit():
    x = _x(B=1, T=9)
    x[0, 3] = 0  # its columns of P and R are zero: alpha_4 = 0
    assert rel_err(descend(x, "linear", depth="inf"), descend(x, "linear", depth="inf", ridge=1e-12)) < 1e-9


def test_layers_accumulate_no_memory():
    """Nothing is kept per layer unless return_all (the per-layer norms used to be listed: a
    depth of 1e9 grew by 17 MB/s): Python allocations after 20000 layers are what 20 layers make."""
    import tracemalloc

    x = _x(B=1, T=3, d=1)
    for method in ("dense", "auto"):
        descend(x, "linear", depth=20, method=method)
        tracemalloc.start()
        descend(x, "linear", depth=20, method=method)
        small = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        descend(x, "linear", depth=20000, method=method)
        large = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert large < small + 100_000, method


def test_work_that_cannot_fit_is_refused_before_allocating():
    """A depth whose per-layer copies (row blocks) or history (return_all) exceed the free memory
    is refused with one line saying how much it needs and what to do."""
    from ckd.validation import NotEnoughMemory

    x = torch.zeros(1, 200_000, 1, dtype=torch.float64)
    with pytest.raises(NotEnoughMemory, match=r"needs about .* are available; .*smaller T.*fewer layers"):
        descend(x, "linear", depth=10**9, memory_budget=1e6, method="dense")
    for method in ("dense", "auto"):  # auto: the linear-time path of the linear kernel
        with pytest.raises(NotEnoughMemory, match="return_all=False"):
            descend(x, "linear", depth=10**8, return_all=True, method=method)
    with pytest.raises(NotEnoughMemory, match="linear-time .*fewer layers"):  # one d x d state per layer
        descend(x, "linear", depth=10**12)
    from ckd.descent import memory_needed

    assert memory_needed(_x(B=1, T=10), 4, rows=10) == 3 * 10 * 10 * 8 + 8 * 10 * 3 * 8


def test_rows_whose_weight_is_below_float_resolution_are_inside_the_region():
    """exp with beta |x|^2 in the hundreds: most R[t, t] are ~1e-200 of the largest, so
    eta R[t, t] ~ 1e-236 and 1 - eta R[t, t] rounds to 1; those rows converge (slowly) and used
    to be reported 'outside the convergence region'. The result is the definition, no warning."""
    x = _x(B=1, T=8) * torch.linspace(1.0, 24.0, 8, dtype=torch.float64)[None, :, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = descend(x, "exp", depth=3)[0]
    assert rel_err(out, _stored_definition(x, "exp", 3)) < RTOL


def test_step_that_overflows_the_dtype_is_one_clear_error():
    """Found by tests/test_fuzz.py: --step 1e300 --dtype float32 was a RuntimeError from torch."""
    x = _x(B=1, T=4).float()
    with pytest.raises(ValueError, match="overflows float32; use a smaller step or float64"), \
            pytest.warns(StabilityWarning, match="outside the convergence region"):
        descend(x, "exp", depth=2, step=1e300)
