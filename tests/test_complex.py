"""Complex sequences with the linear kernel (SPEC §10): k(a, b) = b^H a on every path (dense whole and
in row blocks, linear time chunked and naive, streaming, sweeps), equal to the plain complex loops of
``tests/reference.py`` to 1e-12 relative in complex128; the closed forms with conjugate transposes;
the ``unitary`` task family; and one clear error wherever complex input is not defined."""

import numpy as np
import pytest
import torch
from conftest import one_error, rel_err
from reference import complex_ckd, complex_kaczmarz, complex_matrices, complex_sweeps

import ckd
import ckd.train
import ckd.validation
from ckd import Streaming, make_task, predict
from ckd.cli import main
from ckd.descent import block_rows, continuous_depth, descend, targets
from ckd.forecast import forecast
from ckd.kernels import causal_matrices
from ckd.linear_time import descend_naive, pairs
from ckd.sequences import COMPLEX_TASKS

TOL = 1e-12  # SPEC §10: complex linear kernel exact to 1e-12 against a plain complex loop
PATHS = [dict(method="dense"), dict(method="dense", rows=5), dict(method="linear")]


def _x(B=3, T=24, d=3, seed=0) -> torch.Tensor:
    """Complex Gaussian tokens (not unit norm: R[t,t] varies), (B, T, d) complex128."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=g, dtype=torch.complex128)


def _ref(x: torch.Tensor, depth, step=None, ridge=0.0) -> torch.Tensor:
    """The plain complex loop, sequence by sequence (the default step is the batch's)."""
    if step is None and depth != "inf":
        step = 0.5 / (float(x[:, :-1].abs().square().sum(-1).max()) + ridge)
    return torch.from_numpy(np.stack([complex_ckd(s.numpy(), depth, step, ridge) for s in x]))


def _run(x, depth, path, **opts):
    path = dict(path)
    rows = path.pop("rows", None)
    budget = None if rows is None else 3 * x.shape[0] * x.shape[1] * x.element_size() * rows
    if budget is not None:
        assert block_rows(x, budget) == rows < x.shape[1]  # really in row blocks
    return descend(x, "linear", depth=depth, memory_budget=budget, **path, **opts)


def test_causal_matrices_are_the_hermitian_kernel():
    x = _x(B=2, T=9)
    mats = causal_matrices(x, "linear")
    for b in range(2):
        P, R = complex_matrices(x[b].numpy())
        assert np.abs(mats.P[b].numpy() - P).max() <= TOL * np.abs(P).max()
        assert np.abs(mats.R[b].numpy() - R).max() <= TOL * np.abs(R).max()
    diag = torch.diagonal(mats.R, dim1=-2, dim2=-1)[:, 1:]
    assert torch.allclose(diag.real, x[:, :-1].abs().square().sum(-1), rtol=1e-14) and not diag.imag.any()
    # the convention matters: x_t^H x_{s-1} (the conjugate) is another matrix
    assert (mats.P - mats.P.conj()).abs().max() > 0.1


@pytest.mark.parametrize("path", PATHS, ids=["dense", "blocks", "linear-time"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("depth,step", [(1, None), (4, 0.02), (9, None)])
def test_finite_depth_equals_the_complex_loop(path, ridge, depth, step):
    x = _x()
    got = _run(x, depth, path, step=step, ridge=ridge)
    assert got.dtype == torch.complex128
    assert rel_err(got, _ref(x, depth, step, ridge)) < TOL


@pytest.mark.parametrize("path", PATHS, ids=["dense", "blocks", "linear-time"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_infinite_depth_equals_forward_substitution_and_kaczmarz(path, ridge):
    x = _x()
    got = _run(x, "inf", path, ridge=ridge)
    assert rel_err(got, _ref(x, "inf", ridge=ridge)) < TOL
    if ridge == 0:  # one forward Kaczmarz sweep in the RKHS of b^H a
        kacz = torch.from_numpy(np.stack([complex_kaczmarz(s.numpy()) for s in x]))
        assert rel_err(got, kacz) < TOL


def test_return_all_is_every_layer():
    x = _x(B=2, T=15)
    hist = descend(x, "linear", depth=5, step=0.05, ridge=0.1, return_all=True, method="dense")
    for n in range(6):
        assert rel_err(hist[n], _ref(x, n, 0.05, 0.1)) < TOL if n else not hist[0].any()


@pytest.mark.parametrize("ridge", [0.0, 0.2])
@pytest.mark.parametrize("depth", [3, "inf"])
def test_linear_time_chunked_and_naive(ridge, depth):
    """Several chunks (chunk 4 over 39 pairs) and the plain loops, on conjugated keys (``pairs``)."""
    x = _x(B=2, T=40)
    ref = _ref(x, depth, 0.01, ridge)
    chunked = ckd.linear_time.descend(x, "linear", depth=depth, step=0.01, ridge=ridge, chunk=4)
    naive = descend_naive(*pairs(x), depth, 0.01, ridge)
    assert rel_err(chunked, ref) < TOL and rel_err(naive, ref[:, 1:]) < TOL


def test_streaming_equals_the_complex_loop():
    x = _x(B=1, T=30)[0]
    for ridge in (0.0, 0.4):
        s = Streaming("linear", dim=3, ridge=ridge, dtype=torch.complex128)
        got = torch.stack([s.push(t) for t in x])
        assert got.dtype == torch.complex128
        assert rel_err(got, _ref(x[None], "inf", ridge=ridge)[0]) < TOL
    s = Streaming("linear", dim=3, dtype="complex128")  # numpy in, numpy out; a real token is exact
    out = [s.push(t) for t in x[:5].numpy()] + [s.push(np.ones(3))]
    assert out[-1].dtype == np.complex128
    ref = complex_ckd(np.concatenate([x[:5].numpy(), np.ones((1, 3))]), "inf")
    assert np.abs(np.stack(out) - ref).max() < TOL * np.abs(ref).max()


@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_sweeps_are_complex_gauss_seidel_and_tend_to_kernel_ridge(ridge):
    x = _x(B=2, T=12)
    for K in (1, 2, 5):
        ref = torch.from_numpy(np.stack([complex_sweeps(s.numpy(), K, ridge) for s in x]))
        assert rel_err(predict(x, "linear", depth="inf", sweeps=K, ridge=ridge), ref) < TOL
    # many sweeps: beta -> (K + lambda I)^{-1} Y with the Hermitian Gram K[s, s'] = x_{s'-1}^H x_{s-1}
    z = x[:, :4]  # 3 pairs in C^3: K is invertible, so kernel ridge exists also for lambda = 0
    G = z[:, :-1] @ z[:, :-1].mH
    beta = torch.linalg.solve(G + ridge * torch.eye(3), z[:, 1:])
    krr = (z @ z[:, :-1].mH) @ beta
    assert rel_err(predict(z, "linear", depth="inf", sweeps=4000, ridge=ridge)[:, -1], krr[:, -1]) < 1e-9


def test_closed_forms_with_conjugate_transposes():
    """SPEC §2 / §9 / §10 with ^H for ^T: depth N, depth inf, one gradient step, the prefix sums,
    the delta rule's state W_t = sum alpha_s x_{s-1}^H, and continuous depth."""
    x = _x(B=1, T=14)
    X = x[0]
    mats = causal_matrices(x, "linear")
    P, R = mats.P[0], mats.R[0]
    y = targets(x)[0]
    eta, lam, T = 0.04, 0.2, X.shape[0]
    M = R + lam * torch.eye(T, dtype=R.dtype)
    # depth N: p = P eta sum_{l<N} (I - eta M)^l y
    alpha, term = torch.zeros_like(y), y.clone()
    for _ in range(6):
        alpha, term = alpha + eta * term, term - eta * (M @ term)
    assert rel_err(descend(x, "linear", depth=6, step=eta, ridge=lam)[0], P @ alpha) < TOL
    # depth inf: (R + lambda I) alpha = y on rows 1..T-1
    inf = P[:, 1:] @ torch.linalg.solve(M[1:, 1:], y[1:])
    assert rel_err(descend(x, "linear", depth="inf", ridge=lam)[0], inf) < TOL
    # depth 1 is one gradient step: p_t = eta (sum_{s<=t} x_s x_{s-1}^H) x_t
    step1 = torch.stack([eta * sum(X[s, :, None] * X[s - 1].conj()[None] for s in range(1, t + 1)) @ X[t]
                         if t else torch.zeros_like(X[0]) for t in range(T)])
    assert rel_err(descend(x, "linear", depth=1, step=eta)[0], step1) < TOL
    # prefix sums, two layers: S_t = sum_{s<=t} r_s x_{s-1}^H, (P r)_t = S_t x_t, (R r)_t = S_t x_{t-1}
    r, p = y.clone(), torch.zeros_like(y)
    for _ in range(2):
        S = torch.cumsum(r[1:, :, None] * X[:-1].conj()[:, None], 0)
        Pr = torch.cat([torch.zeros_like(X[:1]), (S @ X[1:, :, None])[..., 0]])
        Rr = torch.cat([torch.zeros_like(X[:1]), (S @ X[:-1, :, None])[..., 0]])
        p, r = p + eta * Pr, r - eta * (Rr + lam * r)
    assert rel_err(descend(x, "linear", depth=2, step=eta, ridge=lam)[0], p) < TOL
    # the delta rule: W_t = W_{t-1} + alpha_t x_{t-1}^H, p_t = W_t x_t
    W, delta = torch.zeros(3, 3, dtype=X.dtype), torch.zeros_like(X)
    for t in range(1, T):
        a = (X[t] - W @ X[t - 1]) / (X[t - 1].abs().square().sum() + lam)
        W = W + a[:, None] * X[t - 1].conj()[None]
        delta[t] = W @ X[t]
    assert rel_err(delta, inf) < TOL
    transposed = W.clone().zero_()  # with ^T instead of ^H the answer is another one
    for t in range(1, T):
        a = (X[t] - transposed @ X[t - 1]) / (X[t - 1] @ X[t - 1] + lam)
        transposed = transposed + a[:, None] * X[t - 1][None]
    assert (transposed @ X[-1] - delta[-1]).abs().max() > 1e-3
    # continuous depth: alpha(tau) = M^{-1} (I - exp(-tau M)) y
    tau = 0.7
    A = M[1:, 1:]
    closed = P[:, 1:] @ torch.linalg.solve(A, (torch.eye(T - 1) - torch.linalg.matrix_exp(-tau * A)) @ y[1:])
    assert rel_err(continuous_depth(mats, targets(x), tau, lam)[0], closed) < 1e-10


@pytest.mark.parametrize("depth", [3, "inf"])
@pytest.mark.parametrize("method", ["dense", "linear"])
def test_a_real_input_given_as_complex_gives_the_real_answer(depth, method):
    x = make_task("linear", 2, 20, 4, seed=1).x
    real = predict(x, "linear", depth=depth, method=method)
    for z in (x.to(torch.complex128), x):
        got = predict(z, "linear", depth=depth, method=method, dtype=torch.complex128)
        assert got.dtype == torch.complex128
        assert rel_err(got.real, real) < TOL and got.imag.abs().max() <= TOL * real.abs().max()


def test_dtype_rules_numpy_and_complex64():
    x = _x(B=2, T=20)
    ref = predict(x, "linear", depth="inf")
    out = predict(x.numpy(), "linear", depth="inf")  # numpy in, numpy out; float64 (default) -> complex128
    assert isinstance(out, np.ndarray) and out.dtype == np.complex128 and np.abs(out - ref.numpy()).max() < 1e-13
    for dtype in ("float32", torch.float32, "complex64", torch.complex64):  # float32 precision -> complex64
        for method in ("dense", "linear"):
            low = predict(x, "linear", depth=4, dtype=dtype, method=method)
            assert low.dtype == torch.complex64
            assert rel_err(low.to(torch.complex128), predict(x, "linear", depth=4, method=method)) < 1e-4
    s = Streaming("linear", dim=3, dtype=torch.complex64)
    got = torch.stack([s.push(t) for t in x[0]])
    assert got.dtype == torch.complex64 and rel_err(got.to(torch.complex128), ref[0]) < 1e-4
    assert predict(x[0].real.numpy(), "linear", depth=2, dtype="complex128").dtype == np.complex128


@pytest.mark.parametrize("k,dtype", [(200, torch.complex128), (-300, torch.complex128), (30, torch.complex64)])
def test_power_of_two_scaling_is_exact_for_complex(k, dtype):
    x = _x(B=2, T=16).to(dtype)
    for depth in (5, "inf"):
        for method in ("dense", "linear"):
            base = predict(x, "linear", depth=depth, method=method)
            scaled = predict(x * 2.0 ** k, "linear", depth=depth, method=method)
            assert torch.isfinite(scaled).all() and rel_err(scaled / 2.0 ** k, base) < (TOL if k != 30 else 1e-5)


def test_unitary_task():
    task = make_task("unitary", 16, 300, 5, seed=0)
    W, x = task.params["W"], task.x
    assert x.dtype == torch.complex128 and "unitary" in COMPLEX_TASKS and "unitary" in ckd.TASKS
    eye = torch.eye(5, dtype=W.dtype)
    assert (W @ W.mH - eye).abs().max() < 1e-13 and (x[:, 0].norm(dim=-1) - 1).abs().max() < 1e-14
    assert (task.f(x[:, :-1]) - x[:, 1:]).abs().max() < 1e-12
    assert torch.equal(x, make_task("unitary", 16, 300, 5, seed=0).x)
    # Haar: eigen-phases spread over the circle (not all real), a mean phase of about 0
    phases = torch.linalg.eigvals(W).angle().flatten()
    assert phases.abs().mean() > 1.0 and abs(float(phases.mean())) < 0.4
    # depth inf (one Kaczmarz sweep) learns W in context: the median error falls to 0 as t grows
    err = (predict(x, "linear", depth="inf")[:, :-1] - x[:, 1:]).norm(dim=-1).median(0).values
    at = err[[10, 50, 100, 200, 298]]
    assert (at[1:] < at[:-1]).all() and at[-1] < 1e-4 * at[0], at


@pytest.mark.parametrize("kernel", ["exp", "softmax", "gaussian"])
def test_other_kernels_refuse_complex(kernel):
    x = _x(B=1, T=6)
    for call in (lambda: predict(x, kernel), lambda: descend(x, kernel), lambda: causal_matrices(x, kernel),
                 lambda: predict(x, kernel, features=8), lambda: Streaming(kernel, dim=3, dtype=torch.complex128)):
        with pytest.raises(TypeError, match="complex x needs the linear kernel"):
            call()


def test_other_backends_and_real_entry_points_refuse_complex():
    x = _x(B=1, T=6)
    for backend in ("transformer", "pretrained:linear-linear-2"):
        with pytest.raises(ValueError, match="descent backend only"):
            predict(x, "linear" if backend == "transformer" else "exp", depth=2 if backend == "transformer" else 16,
                    backend=backend)
    with pytest.raises(ValueError, match="descent backend only"):
        predict(x[0].real, "linear", depth=2, backend="transformer", dtype="complex128")
    with pytest.raises(TypeError, match="must be real"):
        forecast(x[0].numpy(), horizon=3)
    with pytest.raises(ValueError, match="task 'unitary' is complex"):
        ckd.train.TrainConfig(task="unitary").validate()
    with pytest.raises(ValueError, match="dtype must be float64 or float32"):
        ckd.validation.as_dtype("complex128")  # complex only where the caller allows it


def test_real_streaming_refuses_a_complex_token_and_keeps_its_state():
    """A kernel defined for real x only refuses a complex token (a real linear Streaming computes it exactly
    in complex: tests/test_hardening.py, issue 21 item 4)."""
    x = _x(B=1, T=4)[0]
    s = Streaming("exp", dim=3)
    s.push(x[0].real)
    for token in (x[1], x[1].numpy(), list(x[1].numpy())):
        with pytest.raises(TypeError, match="x_t is complex"):
            s.push(token)
    assert len(s) == 1
    ref = Streaming("exp", dim=3)
    ref.push(x[0].real)
    assert torch.equal(s.push(x[1].real), ref.push(x[1].real))


def test_cli_predict_complex(tmp_path, capsys):
    x = make_task("unitary", 2, 30, 3, seed=2).x.numpy()
    np.save(tmp_path / "u.npy", x)
    np.save(tmp_path / "u64.npy", x.astype(np.complex64))
    assert main(["predict", str(tmp_path / "u.npy"), "-o", str(tmp_path / "p.npy"), "--kernel", "linear",
                 "--depth", "inf", "--ridge", "0.01"]) == 0
    got = np.load(tmp_path / "p.npy")
    assert got.dtype == np.complex128 and np.array_equal(got, predict(x, "linear", depth="inf", ridge=0.01))
    assert main(["predict", str(tmp_path / "u64.npy"), "-o", str(tmp_path / "q.npy"), "--kernel", "linear",
                 "--depth", "3", "--dtype", "float32"]) == 0
    assert np.load(tmp_path / "q.npy").dtype == np.complex64
    capsys.readouterr()
    for args, words in [(["--kernel", "exp"], ("u.npy", "complex", "--kernel linear")),
                        (["--kernel", "linear", "--backend", "transformer", "--depth", "2"], ("descent backend",)),
                        (["--kernel", "linear", "-o", str(tmp_path / "r.csv")], ("r.csv", ".npy"))]:
        out = ["-o", str(tmp_path / "r.npy")] if "-o" not in args else []
        assert main(["predict", str(tmp_path / "u.npy"), *out, *args]) == 2
        one_error(capsys, *words)
    assert not (tmp_path / "r.npy").exists() and not (tmp_path / "r.csv").exists()
    assert main(["train", "--task", "unitary", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    one_error(capsys, "unitary", "complex")
    assert not (tmp_path / "run").exists()
