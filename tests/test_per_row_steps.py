"""Per-row steps (SPEC §10): eta_0..eta_{T-1}, D = diag(eta), each layer p <- p + D P r,
r <- r - D (R r + lambda r). Every path (dense, row blocks, linear time chunked and naive, streaming)
against the closed forms of ``reference.per_row_closed_forms`` to 1e-12 relative in float64, for
every kernel, ridge 0 and > 0, batched; a constant vector is the scalar step; bad vectors are one
clear error; ``ckd.fit_step`` recovers known steps."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import one_error, rel_err
from reference import ckd_per_row, per_row_closed_forms
from test_descent import OPTS
from test_descent import _x as _unit_x

import ckd
from ckd import StabilityWarning, Streaming
from ckd.cli import main
from ckd.descent import descend, finite_depth, fit_step, infinite_depth, targets
from ckd.kernels import KERNELS, causal_matrices
from ckd.linear_time import descend_naive, pairs

EXACT = 1e-12  # the standard: relative, float64
DEPTHS = [0, 1, 3, 7, "inf"]


def _eta(T: int, c: float = 0.5, eta0: float = 7.0) -> np.ndarray:
    """eta_t = c / t (position-normalised), eta_0 = ``eta0`` (unused: any finite value)."""
    return np.array([eta0] + [c / t for t in range(1, T)])


def _closed(x: torch.Tensor, kernel: str, eta, ridge: float, depth) -> torch.Tensor:
    """The closed form of SPEC §10 for each sequence of x (B, T, d)."""
    eta = np.asarray(eta, dtype=np.float64)
    return torch.stack([torch.from_numpy(per_row_closed_forms(
        xb.numpy(), kernel, eta, ridge, None if depth == "inf" else depth, **OPTS[kernel])) for xb in x])


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = EXACT) -> None:
    if float(b.abs().max()) == 0:
        assert float(a.abs().max()) == 0
    else:
        assert rel_err(a, b) < tol, rel_err(a, b)


# ------------------------------------------------------------------ the references agree with each other

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_reference_loop_is_the_closed_form(kernel, ridge):
    """The literal per-row loop (one row at a time) equals D P sum_l (I - D(R + lambda I))^l y, and
    at large depth it tends to the depth-inf closed form D P (R + lambda I)^-1 D^-1 y."""
    x = _unit_x(B=1, T=9)[0].numpy()
    eta = _eta(9)
    for depth in (1, 4):
        loop = ckd_per_row(x, kernel, depth, eta, ridge, **OPTS[kernel])
        _close(torch.from_numpy(loop), _closed(torch.from_numpy(x)[None], kernel, eta, ridge, depth)[0])
    deep = ckd_per_row(x, kernel, 3000, eta, ridge, **OPTS[kernel])
    assert rel_err(torch.from_numpy(deep), _closed(torch.from_numpy(x)[None], kernel, eta, ridge, "inf")[0]) < 1e-9


# ------------------------------------------------------------------ every path against the closed forms

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("depth", DEPTHS)
def test_dense_and_row_blocks_equal_the_closed_forms(kernel, ridge, depth):
    x = _unit_x(B=3, T=11)
    eta = _eta(11)
    ref = _closed(x, kernel, eta, ridge, depth)
    for rows in (None, 1, 4):  # whole matrices; row blocks of 1 and 4 rows
        budget = None if rows is None else 3 * 3 * 11 * 8 * rows
        for step in (eta, list(eta), torch.from_numpy(eta)):  # NumPy, list, tensor
            p = descend(x, kernel, depth=depth, step=step, ridge=ridge, method="dense", memory_budget=budget,
                        **OPTS[kernel])
            _close(p, ref)


@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("chunk", [None, 3])
def test_linear_time_equals_the_closed_forms(ridge, depth, chunk):
    """The linear kernel in linear time: prefix-sum linear attention with row t scaled by eta_t, and the
    delta rule on y_t / eta_t (chunked, several chunks), and the plain loops of ``naive``."""
    x = ckd.make_task("linear", 3, 13, 4, seed=2).x * 1.7
    eta = _eta(13, c=0.4)
    ref = _closed(x, "linear", eta, ridge, depth)
    _close(ckd.linear_time.descend(x, "linear", depth=depth, step=eta, ridge=ridge, chunk=chunk), ref)
    _close(ckd.predict(x, "linear", depth=depth, step=eta, ridge=ridge), ref)  # method auto
    k, u, q, y = pairs(x)
    naive = descend_naive(k, u, q, y, depth, torch.from_numpy(eta[1:]), ridge)
    _close(torch.nn.functional.pad(naive, (0, 0, 1, 0)), ref)


@pytest.mark.parametrize("depth", [2, "inf"])
def test_random_features_per_row_equal_the_dense_gram_path(depth):
    """features=D: linear time on phi equals the dense path on the Gram matrix of phi.phi."""
    x = _unit_x(B=2, T=15, d=3)
    eta = _eta(15, c=0.1)
    opts = dict(depth=depth, step=eta, ridge=0.1, features=64, feature_seed=1, sigma=0.9, beta=0.5)
    for kernel in ("exp", "gaussian", "softmax"):
        _close(ckd.predict(x, kernel, method="linear", **opts), ckd.predict(x, kernel, method="dense", **opts), 1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_streaming_equals_the_closed_form(kernel, ridge):
    """push(x_t, step=eta_t): the rows of D P (R + lambda I)^-1 D^-1 y."""
    x = _unit_x(B=1, T=14)[0] * 1.3
    eta = _eta(14)
    s = Streaming(kernel, dim=3, ridge=ridge, capacity=3, **OPTS[kernel])
    got = torch.stack([s.push(x_t, step=e) for x_t, e in zip(x, eta)])
    _close(got, _closed(x[None], kernel, eta, ridge, "inf")[0])


def test_exp_weights_rescaled_beyond_the_float_range():
    """exp with beta |x|^2 = 400 (weights stored times e^-m): the per-row step is eta_t e^m in stored units."""
    x = _unit_x(B=2, T=10)
    beta = 400.0
    assert bool((causal_matrices(x, "exp", beta).log_scale > 0).all())
    eta = np.array([3.0] + [0.5 * math.exp(-beta) / t for t in range(1, 10)])
    for depth in (1, 3, "inf"):
        ref = torch.stack([torch.from_numpy(per_row_closed_forms(xb.numpy(), "exp", eta, 0.0,
                                                                  None if depth == "inf" else depth, beta=beta))
                           for xb in x])
        for budget in (None, 3 * 2 * 10 * 8 * 3):
            _close(descend(x, "exp", beta=beta, depth=depth, step=eta, memory_budget=budget), ref)


def test_spec_numeric_check_depth_inf_changes_with_a_per_row_step():
    """SPEC §10's check: T = 12, linear kernel, eta_t = 0.5 / t, lambda = 0.01: the closed form holds,
    and the depth-inf answer is not the uniform-step limit (0.37 apart), while a scalar step cancels."""
    x = ckd.make_task("linear", 1, 12, 5, seed=0).x
    eta = _eta(12, eta0=0.0)
    per_row = ckd.predict(x, "linear", depth="inf", step=eta, ridge=0.01)
    _close(per_row, _closed(x, "linear", eta, 0.01, "inf"))
    uniform = ckd.predict(x, "linear", depth="inf", ridge=0.01)
    assert float((per_row - uniform).abs().max()) == pytest.approx(0.37, abs=0.005)
    assert rel_err(ckd.predict(x, "linear", depth="inf", step=0.2, ridge=0.01), uniform) < EXACT


# ------------------------------------------------------------------ a scalar step is the constant vector

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_constant_vector_is_the_scalar_step(kernel, depth):
    x = _unit_x(B=2, T=10)
    c = 0.3
    vec = np.full(10, c)
    vec[0] = -4.0  # eta_0 unused
    for opts in ({}, {"memory_budget": 3 * 2 * 10 * 8 * 3}, {"method": "dense"}):
        scalar = ckd.predict(x, kernel, depth=depth, step=c, ridge=0.2, **opts, **OPTS[kernel])
        assert torch.equal(ckd.predict(x, kernel, depth=depth, step=vec, ridge=0.2, **opts, **OPTS[kernel]), scalar)
    # the per-row machinery itself (the lower-level functions run it for any vector)
    mats, y = causal_matrices(x, kernel, **OPTS[kernel]), targets(x)
    if depth == "inf":
        _close(infinite_depth(mats, y, 0.2, step=torch.from_numpy(vec)), infinite_depth(mats, y, 0.2))
    else:
        _close(finite_depth(mats, y, depth, vec, 0.2), finite_depth(mats, y, depth, c, 0.2))
    s1, s2 = Streaming(kernel, dim=3, **OPTS[kernel]), Streaming(kernel, dim=3, **OPTS[kernel])
    _close(torch.stack([s1.push(t, step=c) for t in x[0]]), torch.stack([s2.push(t) for t in x[0]]))


def test_return_all_and_float32_with_a_per_row_step():
    x = _unit_x(B=2, T=12)
    eta = _eta(12)
    history = descend(x, "gaussian", depth=4, step=eta, return_all=True, **OPTS["gaussian"])
    linear = descend(x, "linear", depth=4, step=eta, ridge=0.1, return_all=True)  # linear time
    for n in range(5):
        _close(history[n], _closed(x, "gaussian", eta, 0.0, n))
        _close(linear[n], _closed(x, "linear", eta, 0.1, n))
    low = ckd.predict(x.float(), "gaussian", depth=4, step=eta, dtype=torch.float32, **OPTS["gaussian"])
    assert low.dtype == torch.float32 and rel_err(low.double(), history[4]) < 1e-5


def test_zero_steps_at_finite_depth_and_depth_inf():
    """eta_t = 0 at finite depth: row t never changes (p_t = 0, r_t = y_t). At depth inf the layers have
    no limit (r_t = y_t forever feeds every later row): refused with one line, on every path."""
    x = _unit_x(B=2, T=8)
    eta = _eta(8)
    eta[3] = 0.0
    with pytest.warns(StabilityWarning, match="eta_3 = 0"):  # |1 - 0| = 1: row 3 never converges
        p = descend(x, "exp", depth=5, step=eta, **OPTS["exp"])
    _close(p, _closed(x, "exp", eta, 0.0, 5))
    assert bool((p[:, 3] == 0).all())
    calls = [lambda: ckd.predict(x, "exp", depth="inf", step=eta),
             lambda: ckd.predict(x, "linear", depth="inf", step=eta),
             lambda: ckd.predict(x, "exp", depth="inf", step=eta, memory_budget=3 * 2 * 8 * 8 * 2),
             lambda: infinite_depth(causal_matrices(x, "exp"), targets(x), step=eta)]
    for call in calls:
        with pytest.raises(ValueError, match="eta_3 = 0") as err:
            call()
        assert "\n" not in str(err.value)
    s = Streaming("exp", dim=3)
    for t in range(3):
        s.push(x[0, t], step=eta[t])
    with pytest.raises(ValueError, match="eta_3 = 0"):
        s.push(x[0, 3], step=0.0)
    s.push(x[0, 3], step=0.5)  # the stream is unchanged by the refused push


# ------------------------------------------------------------------ warnings and errors

def test_step_outside_the_region_warns_naming_the_row():
    x = _unit_x(B=2, T=8)
    eta = _eta(8, c=0.5)
    eta[5] = 3.0  # eta_5 R[5,5] = 3 for the gaussian kernel: |1 - 3| > 1
    for depth, word in ((3, "diverge"), ("inf", "fixed point")):
        for opts in ({}, {"memory_budget": 3 * 2 * 8 * 8 * 2}):
            with pytest.warns(StabilityWarning, match=f"eta_5 = 3 .*{word}"):
                ckd.predict(x, "gaussian", depth=depth, step=eta, **opts)
    with pytest.warns(StabilityWarning, match="eta_5 = 3"):
        ckd.predict(x, "linear", depth="inf", step=eta)  # linear time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckd.predict(x, "gaussian", depth=3, step=_eta(8))


@pytest.mark.parametrize("method", ["linear", "dense"])
def test_step_beyond_float32_is_one_clear_error(method):
    """A float32 step past 3.4e38 (scalar or per row) is refused naming the dtype on both paths of the
    linear kernel (the linear-time path used to raise a bare RuntimeError for the scalar)."""
    x = _unit_x(B=1, T=8)
    for step in (1e300, np.r_[0.0, 1e300, [0.1] * 6]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StabilityWarning)
            with pytest.raises(ValueError, match="overflows float32"):
                ckd.predict(x, "linear", depth=3, step=step, dtype=torch.float32, method=method)


BAD_STEPS = [
    ([0.1] * 5, ValueError, "5 values but x has T = 8"),
    (np.ones((2, 8)), ValueError, "shape (2, 8)"),
    ([0.0, 0.1, -0.2] + [0.1] * 5, ValueError, "eta_2 = -0.2"),
    ([0.0, 0.1, float("nan")] + [0.1] * 5, ValueError, "eta_2 = nan"),
    ([0.0, float("inf")] + [0.1] * 6, ValueError, "eta_1 = inf"),
    ([float("nan")] + [0.1] * 7, ValueError, "eta_0 = nan"),  # eta_0 is unused, but must be finite
    (np.array(["a"] * 8), TypeError, "numeric"),
    (torch.ones(8, dtype=torch.complex128), TypeError, "real"),
    ([True] * 8, TypeError, "numeric"),
    ([[0.1, 0.2], 0.3], TypeError, "numeric"),
    ("0.5", TypeError, "number"),
]


@pytest.mark.parametrize("step,error,words", BAD_STEPS)
def test_bad_step_vectors_are_one_clear_error(step, error, words):
    x = _unit_x(B=2, T=8)
    for call in (lambda: ckd.predict(x, "exp", depth=2, step=step), lambda: descend(x, "exp", depth=2, step=step)):
        with pytest.raises(error) as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_integer_scalars_and_vectors_are_steps():
    x = _unit_x(B=1, T=6)
    base = ckd.predict(x, "gaussian", depth=2, step=1.0)
    for step in (np.int64(1), torch.tensor(1), 1, np.ones(6, dtype=np.int32), torch.ones(6, dtype=torch.int64)):
        assert torch.equal(ckd.predict(x, "gaussian", depth=2, step=step), base)


def test_sweeps_take_no_per_row_step():
    x = _unit_x(B=1, T=8)
    with pytest.raises(ValueError, match="sweeps > 1 take no per-row step"):
        ckd.predict(x, "gaussian", depth="inf", sweeps=3, step=_eta(8))
    const = ckd.predict(x, "gaussian", depth="inf", sweeps=3, step=np.full(8, 0.4))  # the scalar: allowed
    assert torch.equal(const, ckd.predict(x, "gaussian", depth="inf", sweeps=3))


def test_streaming_bad_steps_are_one_line():
    s = Streaming("linear", dim=2)
    s.push(np.ones(2), step=-3.0)  # eta_0 is unused
    for step, error in (("1", TypeError), (-1.0, ValueError), (float("nan"), ValueError), (1e-320, ValueError)):
        with pytest.raises(error):
            s.push(np.array([1e10, 1.0]) if step == 1e-320 else np.ones(2), step=step)
    assert len(s) == 1


# ------------------------------------------------------------------ fit_step

def _fit_data(kernel, B=12, T=10, seed=1):
    return ckd.make_task("linear", B, T, 3, seed=seed).x, OPTS[kernel]


@pytest.mark.parametrize("kernel", KERNELS)
def test_fit_step_depth_one_is_the_closed_form(kernel):
    """eta_t = sum_b <z_bt, (P y)_bt> / sum_b |(P y)_bt|^2 (SPEC §10), and one ratio for a constant step."""
    x, opts = _fit_data(kernel)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + x
    P, _ = causal_matrices(x, kernel, **opts).true_matrices()
    Py = P @ targets(x)
    num, den = (z * Py).sum(-1)[:, 1:], Py.square().sum(-1)[:, 1:]
    eta = fit_step(x, z, kernel, depth=1, **opts)
    assert eta.dtype == torch.float64 and eta.shape == (10,) and eta[0] == 0
    _close(eta[1:], (num.sum(0) / den.sum(0)).clamp_min(0))
    assert fit_step(x, z, kernel, depth=1, per_row=False, **opts) == pytest.approx(
        max(0.0, float(num.sum() / den.sum())), rel=EXACT)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("depth,ridge", [(2, 0.0), (4, 0.1)])
def test_fit_step_recovers_a_known_step(kernel, depth, ridge):
    """Predictions made with a per-row (or constant) step give that step back (Levenberg-Marquardt)."""
    x, opts = _fit_data(kernel)
    eta = torch.from_numpy(_eta(10, c=0.4, eta0=0.0))
    z = ckd.predict(x, kernel, depth=depth, step=eta, ridge=ridge, **opts)
    _close(fit_step(x, z, kernel, depth=depth, ridge=ridge, **opts), eta, 1e-9)
    z = ckd.predict(x, kernel, depth=depth, step=0.3, ridge=ridge, **opts)
    assert fit_step(x, z, kernel, depth=depth, ridge=ridge, per_row=False, **opts) == pytest.approx(0.3, rel=1e-9)


@pytest.mark.parametrize("kernel", ["linear", "gaussian"])
def test_fit_step_depth_inf_recovers_the_ratios(kernel):
    """At depth inf only eta_t / eta_s matters: the fit recovers the ratios, scaled like the default step;
    a constant step cancels and the default step is returned."""
    x, opts = _fit_data(kernel)
    eta = torch.from_numpy(_eta(10, c=0.4, eta0=0.0))
    z = ckd.predict(x, kernel, depth="inf", step=eta, ridge=0.05, **opts)
    fit = fit_step(x, z, kernel, depth="inf", ridge=0.05, **opts)
    _close(fit[1:] / fit[1], eta[1:] / eta[1], 1e-9)
    _close(ckd.predict(x, kernel, depth="inf", step=fit, ridge=0.05, **opts), z, 1e-9)
    mats = causal_matrices(x, kernel, **opts)
    diag = torch.diagonal(mats.R, dim1=-2, dim2=-1)[:, 1:] + 0.05
    assert float((fit[1:] * diag).max()) == pytest.approx(0.5, rel=EXACT)
    assert fit_step(x, z, kernel, depth="inf", ridge=0.05, per_row=False, **opts) == pytest.approx(
        ckd.descent.default_step(mats, 0.05), rel=EXACT)


def test_fit_step_against_the_truth_gives_the_one_gradient_step_scale():
    """SPEC §10: x_{t+1} = W x_t, W uniform in O(d), linear kernel, depth 1: eta_t t / d is about 1/2."""
    x = ckd.make_task("linear", 256, 101, 5, seed=0).x
    eta = fit_step(x[:, :-1].numpy(), x[:, 1:].numpy(), "linear")
    assert 0.4 < float(eta[99]) * 99 / 5 < 0.6


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(target=np.ones((2, 5, 3))), ValueError, "shape of x"),
    (dict(depth=0), ValueError, "depth 0"),
    (dict(per_row="yes"), TypeError, "per_row"),
    (dict(kernel="cosine"), ValueError, "kernel"),
    (dict(target=np.full((2, 6, 3), np.nan)), ValueError, "target contains NaN"),
    (dict(ridge=-1.0), ValueError, "ridge"),
])
def test_fit_step_bad_input_is_one_clear_error(kwargs, error, words):
    args = dict(target=np.ones((2, 6, 3)), kernel="linear")
    args.update(kwargs)
    with pytest.raises(error) as err:
        fit_step(np.ones((2, 6, 3)), args.pop("target"), **args)
    assert words in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ CLI: --step-file

def test_cli_step_file_equals_the_python_api(tmp_path, capsys):
    x = ckd.make_task("linear", 2, 12, 3, seed=0).x.numpy()
    eta = _eta(12)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "eta.npy", eta)
    np.savetxt(tmp_path / "row.csv", eta[None], delimiter=",")
    np.savetxt(tmp_path / "col.csv", eta, delimiter=",")
    want = ckd.predict(x, "gaussian", depth="inf", step=eta, ridge=0.1)
    for name in ("eta.npy", "row.csv", "col.csv"):
        out = tmp_path / f"out-{name}.npy"
        assert main(["predict", str(tmp_path / "x.npy"), "-o", str(out), "--kernel", "gaussian", "--depth", "inf",
                     "--ridge", "0.1", "--step-file", str(tmp_path / name)]) == 0
        assert np.abs(np.load(out) - want).max() <= EXACT * np.abs(want).max()


@pytest.mark.parametrize("content,words", [
    (np.array([0.1] * 5), "5 values but x has T = 12"),
    (np.array([0.0, 0.1, -1.0] + [0.1] * 9), "eta_2 = -1"),
    (np.array([0.0, np.nan] + [0.1] * 10), "eta_1 = nan"),
    (np.ones((2, 12)), "shape (2, 12)"),
    (np.ones(12, dtype=bool), "bool"),
    (np.ones(12, dtype=complex), "not a real number type"),
    ("missing", "no such file"),
    ("--step", "not allowed with argument --step"),
    ("out", "is the input"),
])
def test_cli_bad_step_file_is_one_line_and_no_output(tmp_path, capsys, content, words):
    np.save(tmp_path / "x.npy", ckd.make_task("linear", 1, 12, 3, seed=0).x[0].numpy())
    out = tmp_path / "out.npy"
    step = tmp_path / "eta.npy"
    argv = ["predict", str(tmp_path / "x.npy"), "-o", str(out), "--depth", "2", "--step-file", str(step)]
    if isinstance(content, np.ndarray):
        np.save(step, content)
    else:
        np.save(step, _eta(12))
        if content == "missing":
            step.unlink()
        elif content == "--step":
            argv += ["--step", "0.5"]
        else:
            out = step
            argv[3] = str(step)
    before = step.read_bytes() if step.exists() else None
    assert main(argv) == 2
    one_error(capsys, words)
    assert (step.read_bytes() if step.exists() else None) == before
    assert out == step or not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("kernel", KERNELS)
def test_per_row_steps_on_cuda_equal_cpu(kernel):
    """x on the GPU, the step a CPU tensor (moved by ckd): every path equals the CPU result."""
    x = _unit_x(B=2, T=40)
    eta = torch.from_numpy(_eta(40))
    for depth in (3, "inf"):
        for opts in ({}, {"memory_budget": 3 * 2 * 40 * 8 * 7}):
            cpu = ckd.predict(x, kernel, depth=depth, step=eta, ridge=0.1, **opts, **OPTS[kernel])
            gpu = ckd.predict(x.cuda(), kernel, depth=depth, step=eta, ridge=0.1, **opts, **OPTS[kernel])
            assert gpu.is_cuda
            _close(gpu.cpu(), cpu, 1e-10)
    s = Streaming(kernel, dim=3, ridge=0.1, device="cuda", **OPTS[kernel])
    got = torch.stack([s.push(t, step=float(e)) for t, e in zip(x[0].cuda(), eta)])
    _close(got.cpu(), ckd.predict(x[0], kernel, depth="inf", step=eta, ridge=0.1, **OPTS[kernel]), 1e-10)
    fit = fit_step(x.cuda(), ckd.predict(x.cuda(), kernel, depth=2, step=eta, **OPTS[kernel]), kernel, depth=2,
                   **OPTS[kernel])
    assert fit.is_cuda
    _close(fit.cpu(), torch.cat([eta.new_zeros(1), eta[1:]]), 1e-9)


@pytest.mark.parametrize("kernel", ["linear", "exp", "softmax", "gaussian"])
def test_transformer_backend_takes_the_per_row_step(kernel):
    """ckd.predict(backend="transformer", step=VECTOR): the constructed model with per-row gains
    equals the descent with the same per-row step (float64, 1e-12 relative), batched."""
    import ckd

    x = ckd.make_task("periodic", 3, 14, 3, seed=2).x
    eta = np.r_[0.0, 0.4 / np.arange(1, 14)]
    opts = dict(beta=2.0, sigma=0.7, depth=3, step=eta, ridge=0.1)
    a = ckd.predict(x, kernel, **opts)
    b = ckd.predict(x, kernel, backend="transformer", **opts)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-12


def test_complex_sequences_take_the_per_row_step():
    """The linear kernel on complex x with a per-row step: the SPEC §10 layers with ^H, literally
    (a plain loop over rows), at depth 3 and depth inf, dense and linear time."""
    import ckd

    u = ckd.make_task("unitary", 2, 12, 3, seed=1).x
    eta = np.r_[0.0, 0.6 / np.arange(1, 12)]
    for b in range(2):
        x = u[b].numpy()
        T = len(x)
        P = np.array([[np.vdot(x[s - 1], x[t]) if 1 <= s <= t else 0 for s in range(T)] for t in range(T)])
        R = np.array([[np.vdot(x[s - 1], x[t - 1]) if 1 <= s <= t else 0 for s in range(T)] for t in range(T)])
        y = x.copy()
        y[0] = 0
        r, p = y.copy(), np.zeros_like(y)
        for _ in range(3):
            p, r = p + eta[:, None] * (P @ r), r - eta[:, None] * (R @ r)
        inf = np.zeros_like(y)
        inf[1:] = eta[1:, None] * (P[1:, 1:] @ np.linalg.solve(R[1:, 1:], y[1:] / eta[1:, None]))
        for method in ("dense", "linear"):
            got3 = ckd.predict(u, "linear", depth=3, step=eta, method=method)[b].numpy()
            got_inf = ckd.predict(u, "linear", depth="inf", step=eta, method=method)[b].numpy()
            assert np.abs(got3 - p).max() / np.abs(p).max() < 1e-12, method
            assert np.abs(got_inf - inf).max() / np.abs(inf).max() < 1e-12, method
