"""Sweeps over the prompt (SPEC §7): ridge-aware Gauss-Seidel on (K + lambda I) beta = Y."""

import numpy as np
import pytest
import torch
from conftest import rel_err

import ckd
from ckd.baselines import kernel_ridge
from ckd.cli import main
from ckd.descent import descend, gauss_seidel, infinite_depth, swept, targets
from ckd.kernels import causal_matrices, kernel_matrix


def _x(B=2, T=20, d=3, seed=0):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gs_loop(K, Y, lam, sweeps):
    """The coordinate update of SPEC §7 written as a loop."""
    beta = torch.zeros_like(Y)
    for _ in range(sweeps):
        for s in range(K.shape[0]):
            beta[s] = beta[s] + (Y[s] - K[s] @ beta - lam * beta[s]) / (K[s, s] + lam)
    return beta


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_gauss_seidel_is_the_coordinate_update(lam):
    x = _x(B=1, T=12)[0]
    K = kernel_matrix(x, x, "gaussian", sigma=1.5)
    Y = torch.randn(12, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k in (1, 2, 5):
        assert rel_err(gauss_seidel(K, Y, lam, k), gs_loop(K, Y, lam, k)) < 1e-12
    hist = gauss_seidel(K, Y, lam, 5, return_all=True)
    assert hist.shape == (5, 12, 2) and rel_err(hist[2], gs_loop(K, Y, lam, 3)) < 1e-12


@pytest.mark.parametrize("kernel,opts", [("gaussian", {"sigma": 1.3}), ("exp", {"beta": 0.4}), ("linear", {})])
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_one_sweep_is_depth_inf(kernel, opts, ridge):
    x = _x()
    if kernel == "linear":
        ridge += 0.5  # a zero-free diagonal beyond d pairs needs no ridge, but a tiny Gram does
    ref = descend(x, kernel, depth="inf", ridge=ridge, **opts)
    got = descend(x, kernel, depth="inf", ridge=ridge, sweeps=1, **opts)
    assert torch.equal(got, ref)
    direct = swept(x, kernel, ridge=ridge, sweeps=1, **opts)
    assert rel_err(direct, ref) < 1e-9


def repeated_prompt_ckd(x, sigma, copies):
    """Depth-inf CKD (the existing code) on the prompt repeated ``copies`` times with every seam
    pair (x_{T-1} -> x_0) masked: its column is removed from P and R and its target set to 0
    (a unit diagonal keeps the triangular solve defined; its coefficient is then 0)."""
    B, T, d = x.shape
    rep = x.repeat(1, copies, 1)
    mats = causal_matrices(rep, "gaussian", sigma=sigma)
    y = targets(rep)
    for c in range(1, copies):
        s = c * T  # pair (rep_{s-1} = x_{T-1} -> rep_s = x_0)
        mats.P[:, :, s] = 0
        mats.R[:, :, s] = 0
        mats.R[:, s, s] = 1
        y[:, s] = 0
    return infinite_depth(mats, y), rep


@pytest.mark.parametrize("copies", [2, 3, 5])
def test_sweeps_equal_ckd_on_the_repeated_prompt_for_ridge_zero(copies):
    x = _x(B=2, T=15, d=2, seed=3)
    sigma = 1.1
    p_rep, _ = repeated_prompt_ckd(x, sigma, copies)
    got = ckd.predict(x, "gaussian", sigma=sigma, depth="inf", sweeps=copies)
    assert rel_err(got, p_rep[:, -15:]) < 1e-9  # rows of the last copy


def test_sweeps_converge_to_kernel_ridge():
    """The last row uses every pair: it tends to kernel ridge on all pairs (row T-1 of kernel_ridge)."""
    x = _x(B=1, T=30, d=2, seed=4)
    sigma, lam = 1.0, 0.1
    krr = kernel_ridge(x, "gaussian", sigma=sigma, ridge=lam)[:, -1]
    errs = [float((descend(x, "gaussian", sigma=sigma, ridge=lam, depth="inf", sweeps=k)[:, -1] - krr).norm())
            for k in (1, 100, 300, 1500)]
    assert errs[-1] < 1e-12 * float(krr.norm()) < errs[0] * 1e-9
    assert errs[1] > errs[2] > errs[3]


def test_sweeps_bad_options(tmp_path, capsys):
    x = _x(B=1)[0].numpy()
    for opts in ({"sweeps": 0}, {"sweeps": 1.5}, {"sweeps": 2, "depth": 4}, {"sweeps": 2, "kernel": "softmax"},
                 {"sweeps": 2, "backend": "transformer", "depth": 2}):
        with pytest.raises((ValueError, TypeError)):
            ckd.predict(x, depth=opts.pop("depth", "inf"), **opts)
    np.save(tmp_path / "in.npy", x)
    assert main(["predict", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--sweeps", "0",
                 "--depth", "inf"]) == 2
    assert capsys.readouterr().err.startswith("ckd: error:") and not (tmp_path / "o.npy").exists()
    assert main(["predict", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--sweeps", "3",
                 "--depth", "inf", "--kernel", "gaussian"]) == 0
    assert np.allclose(np.load(tmp_path / "o.npy"), ckd.predict(x, "gaussian", depth="inf", sweeps=3))


def test_doubling_equals_the_plain_sweeps():
    from ckd.descent import gauss_seidel_doubling
    x = _x(B=2, T=40, d=2, seed=5)
    G = kernel_matrix(x, x, "gaussian", sigma=0.9)
    Y = torch.randn(2, 40, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = gauss_seidel_doubling(G, Y, 1e-3, 300)
    hist = gauss_seidel(G, Y, 1e-3, 300, return_all=True)
    assert sorted(got) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    for K, beta in got.items():
        assert rel_err(beta, hist[K - 1]) < 1e-10, K


def test_reproduce_sweeps_quick(tmp_path):
    """The figure of ``ckd reproduce sweeps``: K sweeps approach kernel ridge."""
    import json
    threads = torch.get_num_threads()
    try:
        assert main(["reproduce", "sweeps", "--quick", "--out", str(tmp_path), "--seed", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    for suffix in ("png", "pdf", "json"):
        assert (tmp_path / f"sweeps.{suffix}").stat().st_size > 0
    r = json.loads((tmp_path / "sweeps.json").read_text())
    d = np.array(r["distance"]["sigma=0.5, lambda=0.01"]["median"])
    assert d[-1] < 1e-2 * d[0]  # a ridge of 1e-2 is reached within 2^12 sweeps
    e = np.array(r["rollout"]["1"]["median"])
    assert e[-1] < 0.5 * e[0]  # and the forecast improves with K


def test_sweeps_refuse_linear_time_options():
    """Sweeps run on the dense Gram matrix: method='linear' or features with sweeps > 1 is an error,
    never silently ignored."""
    x = np.random.default_rng(0).normal(size=(20, 2))
    for opts in ({"method": "linear", "kernel": "linear"}, {"features": 16, "kernel": "gaussian"}):
        with pytest.raises(ValueError, match="sweeps > 1"):
            ckd.predict(x, depth="inf", sweeps=3, **opts)
