"""ckd forecast: exact read-outs, strict causality, units, bad input, the guard."""

import numpy as np
import pytest
import torch
from conftest import RTOL, rel_err

from ckd.cli import main
from ckd.descent import infinite_depth
from ckd.evaluate import run_ckd
from ckd.forecast import (
    METHODS,
    blocks,
    causal_scale,
    ckd_local_linear,
    ckd_sweep_normalised,
    forecast,
    forecast_details,
)
from ckd.kernels import causal_matrices
from ckd.train import TrainConfig, load_model, train

PREFIX_METHODS = [m for m in METHODS if m != "transformer"]  # the methods that need no checkpoint


def henon(T=60, a=1.4, b=0.3, x0=(0.1, 0.0)):
    """The Hénon map x' = 1 - a x^2 + y, y' = b x, (T, 2), in raw units."""
    out = np.zeros((T, 2))
    out[0] = x0
    for t in range(T - 1):
        x, y = out[t]
        out[t + 1] = (1 - a * x * x + y, b * x)
    return out


def _z(B=2, T=14, d=2, seed=0):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_blocks_double_and_cover():
    assert blocks(3) == [(1, 2), (2, 3)]
    assert blocks(20) == [(1, 2), (2, 4), (4, 8), (8, 16), (16, 20)]


def test_causal_scale_constant_coordinate_is_centred_not_divided():
    x = torch.tensor([[[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]]], dtype=torch.float64)
    mean, std = causal_scale(x, 2)
    assert torch.allclose(mean, torch.tensor([[[2.0, 5.0]]], dtype=torch.float64))
    assert std[0, 0, 1] == 1.0 and abs(float(std[0, 0, 0]) - (2 / 3) ** 0.5) < 1e-15


@pytest.mark.parametrize("sigma,ridge", [(0.5, 0.0), (1.3, 1e-3)])
def test_local_linear_readout_is_weighted_least_squares(sigma, ridge):
    """Depth-1 CKD with moment values + read-out = kernel-weighted local linear regression."""
    z = _z(T=12)
    got = ckd_local_linear(z, sigma, ridge)
    B, T, d = z.shape
    ref = torch.zeros_like(z)
    for b in range(B):
        ref[b, 0] = z[b, 0]
        for t in range(1, T):
            keys, dz = z[b, :t], z[b, 1:t + 1] - z[b, :t]
            w = torch.exp(-((keys - z[b, t]) ** 2).sum(-1) / (2 * sigma**2))
            Phi = torch.cat([torch.ones(t, 1, dtype=z.dtype), keys], -1)
            J = torch.eye(d + 1, dtype=z.dtype)
            J[0, 0] = 0
            A = Phi.T @ (w[:, None] * Phi) + ridge * w.sum() * J
            c = torch.linalg.lstsq(A, Phi.T @ (w[:, None] * dz)).solution if t <= d else torch.linalg.solve(
                A, Phi.T @ (w[:, None] * dz))
            ref[b, t] = z[b, t] + torch.cat([torch.ones(1, dtype=z.dtype), z[b, t]]) @ c
    assert rel_err(got[:, d + 1:], ref[:, d + 1:]) < 1e-8  # rows with a full-rank local system


def test_sweep_readout_uses_the_causal_matrices_of_ckd():
    z = _z(T=15)
    sigma, ridge = 0.8, 1e-2
    mats = causal_matrices(z, "gaussian", sigma=sigma)
    dz = torch.zeros_like(z)
    dz[:, 1:] = z[:, 1:] - z[:, :-1]
    one = torch.ones_like(z[..., :1])
    one[:, 0] = 0
    q = infinite_depth(mats, torch.cat([dz, one], -1), ridge)
    ref = z + q[..., :-1] / q[..., -1:]
    got = ckd_sweep_normalised(z, sigma, ridge)
    assert rel_err(got[:, 1:], ref[:, 1:]) < RTOL


@pytest.mark.parametrize("method,opts", [("ckd", {}), ("ckd", {"depth": "inf"}), ("krr", {}), ("ols", {}),
                                         ("analogues", {"k": 2}), ("last", {})])
def test_strictly_causal(method, opts):
    """Changing rows after t never changes forecasts of rows <= t (scaling and choices included)."""
    x = henon(40) * 3.0 + 1.0
    a = forecast(x, method, **opts)
    for t in (5, 10, 33):
        y = x.copy()
        y[t + 1:] = np.random.default_rng(t).normal(size=y[t + 1:].shape) * 50
        b = forecast(y, method, **opts)
        assert np.allclose(a[: t + 1], b[: t + 1], rtol=1e-12, atol=1e-12), (method, t)


@pytest.mark.parametrize("method", PREFIX_METHODS)
def test_units_equivariance(method):
    """Causal standardisation: forecasting a x + c gives a * forecast(x) + c (per coordinate)."""
    x = henon(40)
    scale, shift = np.array([1e3, 1e-2]), np.array([-7.0, 40.0])
    a = forecast(x * scale + shift, method)
    b = forecast(x, method) * scale + shift
    assert np.allclose(a, b, rtol=1e-7, atol=1e-7 * np.abs(b).max())


def test_shapes_types_and_row_zero():
    x = henon(30)
    out = forecast(x)
    assert out.shape == x.shape and isinstance(out, np.ndarray) and out.dtype == np.float64
    assert np.array_equal(out[0], x[0])
    batch = np.stack([x, henon(30, x0=(0.2, 0.1))])
    outb = forecast(batch)
    assert outb.shape == batch.shape
    assert np.allclose(outb[0], out, rtol=1e-12, atol=1e-12)
    t = forecast(torch.tensor(x))
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), out)


def test_ckd_learns_henon_in_context_better_than_analogues():
    x = henon(400)
    err = {m: np.linalg.norm(forecast(x, m)[200:-1] - x[201:], axis=-1).mean() for m in ("ckd", "analogues")}
    assert err["ckd"] < 0.5 * err["analogues"]
    assert err["ckd"] < 1e-2


def test_constant_coordinate_is_forecast_exactly_and_finite():
    x = henon(50)
    x = np.concatenate([x, np.full((50, 1), 3.25)], axis=1)
    for method in PREFIX_METHODS:
        out = forecast(x, method)
        assert np.isfinite(out).all()
        assert np.all(out[:, 2] == 3.25), method


def test_fixed_settings_use_one_expert():
    f = forecast_details(torch.tensor(henon(40))[None], "ckd", sigma=0.3, ridge=1e-3)
    assert f.experts == [{"sigma": 0.3, "ridge": 1e-3}]
    assert set(f.choice[0, 1:].tolist()) <= {0, -1}


def test_ill_conditioned_settings_never_return_inf_or_garbage():
    """A wide bandwidth with no ridge makes the triangular sweep explode; the guard holds."""
    x = henon(200)
    for opts in ({"depth": "inf", "sigma": 30.0, "ridge": 0.0}, {"sigma": 0.001, "ridge": 0.0}):
        f = forecast_details(torch.tensor(x)[None], "ckd", **opts)
        assert torch.isfinite(f.pred).all()
        lo, hi, pred = x.min(0), x.max(0), f.pred[0].numpy()
        assert (pred >= lo - 2 * (hi - lo) - 1).all() and (pred <= hi + 2 * (hi - lo) + 1).all()


@pytest.mark.parametrize("bad,match", [
    (np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 2.0], [0.0, 1.0]]), "NaN"),
    (np.array([[0.0, 1.0], [np.inf, 1.0], [1.0, 2.0], [0.0, 1.0]]), "NaN or inf"),
    (np.zeros((2, 3)), "at least 3 rows"),
    (np.zeros(5), "shape"),
    (np.zeros((1, 2, 3, 4)), "shape"),
    (np.zeros((0, 3)), "empty"),
])
def test_bad_input_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        forecast(bad)


@pytest.mark.parametrize("opts", [{"method": "lstm"}, {"k": 0}, {"k": 1.5}, {"sigma": -1.0}, {"ridge": -1.0},
                                  {"depth": 5}])
def test_bad_options(opts):
    with pytest.raises((ValueError, TypeError)):
        forecast(henon(10), **opts)


def test_cli_writes_forecast(tmp_path):
    x = henon(40)
    np.save(tmp_path / "in.npy", x)
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npy"), "--method", "analogues"]) == 0
    assert np.allclose(np.load(tmp_path / "out.npy"), forecast(x, "analogues"))
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "ckd.csv"), "--method", "ckd"]) == 0
    assert np.allclose(np.loadtxt(tmp_path / "ckd.csv", delimiter=","), forecast(x, "ckd"), rtol=1e-12)


@pytest.mark.parametrize("data,args", [
    (np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 2.0]]), []),
    (np.zeros((2, 2)), []),
    (np.zeros(4), []),
    (henon(10), ["--method", "nope"]),
    (henon(10), ["--depth", "3"]),
])
def test_cli_bad_input_one_line_nothing_written(tmp_path, capsys, data, args):
    np.save(tmp_path / "in.npy", data)
    out = tmp_path / "out.npy"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ckd: error:")
    assert not out.exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A float64 construction of depth-2 gaussian CKD on dim 2, not trained: a known forecaster."""
    out = tmp_path_factory.mktemp("forecaster")
    train(TrainConfig(task="rotation-tanh", attention="gaussian", layers=2, batch=8, length=12, dim=2, steps=0,
                      init="construction", dtype="float64", eval_batch=8), out, progress=False)
    return out / "checkpoint.pt"


def test_transformer_method_runs_the_checkpoint_on_the_causally_scaled_prefix(checkpoint):
    """Row t of block [a, b) is the model's prediction on (x_{<=t} - m_a) / s_a, mapped back."""
    _, _, state = load_model(checkpoint)
    x = torch.tensor(henon(40), dtype=torch.float64)[None]
    got = forecast_details(x, "transformer", checkpoint=checkpoint)
    ref = torch.zeros_like(x)
    for a, b in blocks(x.shape[1]):
        mean, std = causal_scale(x, a)
        ref[:, a:b] = run_ckd((x[:, :b] - mean) / std, state["setting"])[:, a:b] * std + mean
    ok = got.choice[0] == 0  # rows the guard kept
    assert ok[1:].float().mean() > 0.5
    assert rel_err(got.pred[0, ok], ref[0, ok]) < RTOL


def test_transformer_method_is_strictly_causal(checkpoint):
    x = henon(40)
    a = forecast(x, "transformer", checkpoint=checkpoint)
    y = x.copy()
    y[11:] = 7.0
    assert np.allclose(a[:11], forecast(y, "transformer", checkpoint=checkpoint)[:11], rtol=1e-12, atol=1e-12)
    kept = forecast_details(torch.tensor(x)[None], "transformer", checkpoint=checkpoint).choice[0, 1:11]
    assert (kept == 0).sum() >= 7  # the model's forecasts, not the guard's x_t


def test_transformer_method_bad_options(checkpoint, tmp_path, capsys):
    with pytest.raises(ValueError, match="needs a checkpoint"):
        forecast(henon(10), "transformer")
    with pytest.raises(ValueError, match="only it takes one"):
        forecast(henon(10), "ckd", checkpoint=checkpoint)
    with pytest.raises(ValueError, match="dim=2"):
        forecast(np.zeros((10, 3)) + np.arange(10)[:, None], "transformer", checkpoint=checkpoint)
    np.save(tmp_path / "in.npy", henon(20))
    out = tmp_path / "out.npy"
    for args in (["--method", "transformer"], ["--method", "transformer", "--checkpoint", str(tmp_path / "no.pt")]):
        assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ckd: error:")
        assert not out.exists()
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), "--method", "transformer",
                 "--checkpoint", str(checkpoint)]) == 0
    assert np.allclose(np.load(out), forecast(henon(20), "transformer", checkpoint=checkpoint))


def test_raw_token_model_refuses_a_trajectory_longer_than_its_positions(tmp_path):
    train(TrainConfig(task="periodic", attention="softmax", layers=1, batch=4, length=8, dim=2, steps=0,
                      tokens="raw", eval_batch=4), tmp_path, progress=False)
    assert forecast(henon(8), "transformer", checkpoint=tmp_path / "checkpoint.pt").shape == (8, 2)
    with pytest.raises(ValueError, match="positions up to 8"):
        forecast(henon(9), "transformer", checkpoint=tmp_path / "checkpoint.pt")


def test_forecast_that_cannot_fit_is_refused(tmp_path, capsys):
    """T = 20000, d = 1 used 13 GB and crashed (issue 12, item 7): the (T, T) methods estimate their
    memory first and refuse with one line; the linear-in-T methods still run."""
    from ckd.forecast import memory_needed
    from ckd.validation import NotEnoughMemory, available_memory

    x = np.cumsum(np.random.default_rng(0).normal(size=(20000, 1)), 0)
    assert memory_needed("ckd", 1, 1, 20000, 1) > 5e10
    free = available_memory()
    if free is not None and free < memory_needed("ckd", 1, 1, 20000, 1):
        with pytest.raises(NotEnoughMemory, match="needs about .* GB but .* available; .*smaller T"):
            forecast(x)
        np.save(tmp_path / "x.npy", x)
        assert main(["forecast", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "f.npy").exists()
    assert forecast(x[:2000], "ols").shape == (2000, 1)


# ----------------------------------------------------------------------------- multi-step rollouts

def parrot_loop(u, H, D):
    """Context parroting of one series written as a plain loop (SPEC §8)."""
    T = len(u)
    last = u[T - D:]
    best, best_j = None, None
    for j in range(D - 1, T - 1):
        dist = sum((u[j - D + 1 + i] - last[i]) ** 2 for i in range(D))
        if best is None or dist < best:
            best, best_j = dist, j
    copy = list(u[best_j + 1:])
    out = []
    while len(out) < H:
        out.extend(copy)
    return np.array(out[:H])


@pytest.mark.parametrize("T,H,D", [(30, 7, 1), (40, 50, 3), (25, 5, 5), (6, 9, 5)])
def test_parrot_equals_an_independent_loop(T, H, D):
    x = np.random.default_rng(T + D).normal(size=(T, 3)).round(1)  # rounding makes ties
    got = forecast(x, "parrot", horizon=H, embed=D)
    ref = np.stack([parrot_loop(x[:, i], H, D) for i in range(3)], 1)
    assert got.shape == (H, 3) and np.array_equal(got, ref)


def test_parrot_copies_a_periodic_series_exactly():
    x = np.tile(np.array([[0.0], [1.0], [4.0], [2.0], [3.0]]), (8, 1))
    assert np.array_equal(forecast(x, "parrot", horizon=12), np.tile(x[:5], (3, 1))[:12])


@pytest.mark.parametrize("method", ["last", "mean", "parrot", "analogues"])
def test_rollout_shapes_types_and_units(method):
    x = henon(200) * np.array([3.0, 0.5]) + np.array([10.0, -2.0])
    out = forecast(x, method, horizon=6)
    assert out.shape == (6, 2) and isinstance(out, np.ndarray) and out.dtype == np.float64
    batch = np.stack([x, henon(200, x0=(0.2, 0.1))])
    outb = forecast(batch, method, horizon=6)
    assert outb.shape == (2, 6, 2) and np.allclose(outb[0], out, rtol=1e-10, atol=1e-10)
    t = forecast(torch.tensor(x), method, horizon=6)
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), out)
    scale, shift = np.array([1e3, 1e-2]), np.array([-7.0, 40.0])
    moved = forecast(x * scale + shift, method, horizon=6)
    assert np.allclose(moved, out * scale + shift, rtol=1e-7, atol=1e-7 * np.abs(out * scale + shift).max())


def test_last_and_mean():
    x = henon(20)
    assert np.array_equal(forecast(x, "last", horizon=3), np.tile(x[-1], (3, 1)))
    assert np.allclose(forecast(x, "mean", horizon=3), np.tile(x.mean(0), (3, 1)))


def _std(x):
    m, s = x.mean(0), x.std(0)
    return (x - m) / s, m, s


def ckd_literal(z, H, sigma, K, D=1, stride=1, lag=1):
    """The ckd rollout as its definition: at every step, depth-inf CKD (the existing
    ckd.descent.infinite_depth, ridge 0) on the delay tokens of the prompt [context x K copies,
    generated tokens], the pairs crossing a seam or thinned out masked, increments as targets;
    the last row's prediction is the next increment."""
    T, c = z.shape
    w = (D - 1) * lag
    keep = set(range(T - 1, w, -stride))  # context pairs s (target z_s) that are used
    gen = []
    for _ in range(H):
        seq = torch.cat([z.repeat(K, 1), *[g[None] for g in gen]]) if gen else z.repeat(K, 1)
        U = torch.cat([seq[w - i * lag: len(seq) - i * lag] for i in range(D)], -1)  # token of row w+j
        n = len(U)
        mats = causal_matrices(U[None], "gaussian", sigma=sigma * (D * c) ** 0.5)
        y = torch.zeros(1, n, c, dtype=z.dtype)
        for j in range(1, n):
            s = j + w  # the pair (u_{s-1} -> z_s - z_{s-1}) is column j
            copy, pos = divmod(s, T)
            legit = s >= K * T or (pos in keep)
            if legit:
                y[0, j] = seq[s] - seq[s - 1]
            else:
                mats.P[0, :, j] = 0
                mats.R[0, :, j] = 0
                mats.R[0, j, j] = 1
        p = infinite_depth(mats, y)
        gen.append(seq[-1] + p[0, -1])
    return torch.stack(gen)


@pytest.mark.parametrize("K,D,stride,lag", [(1, 1, 1, 1), (3, 1, 1, 1), (2, 2, 1, 1), (3, 1, 2, 1), (2, 3, 2, 2)])
def test_ckd_rollout_is_the_literal_autoregressive_loop(K, D, stride, lag):
    from ckd.rollout import kernel_rollout
    z = torch.tensor(_std(henon(24))[0])
    got, chosen = kernel_rollout(z, 5, "ckd", sigma=0.7, ridge=0.0, sweeps=K, embed=D, stride=stride, lag=lag)
    assert chosen == {"sigma": 0.7, "ridge": 0.0, "sweeps": K, "embed": D, "stride": stride, "lag": lag}
    ref = ckd_literal(z, 5, 0.7, K, D, stride, lag)
    assert rel_err(got, ref) < 1e-8


def test_krr_rollout_is_the_literal_refit_loop():
    """Kernel ridge refitted on every pair of the growing sequence (generated ones included)."""
    from ckd.rollout import kernel_rollout
    z = torch.tensor(_std(henon(30))[0])
    sigma, lam = 0.8, 1e-3
    got, _ = kernel_rollout(z, 6, "krr", sigma=sigma, ridge=lam, embed=1)
    seq = z.clone()
    for _ in range(6):
        keys, Y = seq[:-1], seq[1:] - seq[:-1]
        G = torch.exp(-torch.cdist(keys, keys) ** 2 / (2 * sigma**2 * 2))
        beta = torch.linalg.solve(G + lam * torch.eye(len(keys), dtype=z.dtype), Y)
        k = torch.exp(-((keys - seq[-1]) ** 2).sum(-1) / (2 * sigma**2 * 2))
        seq = torch.cat([seq, (seq[-1] + k @ beta)[None]])
    assert rel_err(got, seq[30:]) < 1e-7


def test_analogues_rollout_is_the_literal_loop():
    x = henon(40)
    z, m, s = _std(x)
    seq = list(z)
    for _ in range(8):
        j = min(range(len(seq) - 1), key=lambda i: np.linalg.norm(seq[i] - seq[-1]))
        seq.append(seq[j + 1])
    assert np.allclose(forecast(x, "analogues", horizon=8), np.array(seq[40:]) * s + m, rtol=1e-12, atol=1e-12)


def lorenz(T, dt=0.03, x0=(1.0, 1.0, 20.0)):
    """Lorenz-63 by RK4 with 10 substeps per sample, (T, 3)."""
    def f(v):
        return np.array([10 * (v[1] - v[0]), v[0] * (28 - v[2]) - v[1], v[0] * v[1] - 8 / 3 * v[2]])
    v, out, h = np.array(x0), [], dt / 10
    for _ in range(T + 300):
        for _ in range(10):
            k1 = f(v)
            k2 = f(v + h / 2 * k1)
            k3 = f(v + h / 2 * k2)
            k4 = f(v + h * k3)
            v = v + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(v)
    return np.array(out[300:])


def test_ckd_rollout_forecasts_lorenz_far_better_than_parroting_and_is_causal():
    x = lorenz(360)
    ctx, truth = x[:300], x[300:]
    err = {m: np.abs(forecast(ctx, m, horizon=60) - truth).mean() for m in ("ckd", "parrot", "last")}
    assert err["ckd"] < 0.2 * err["parrot"] and err["ckd"] < 0.1 * err["last"]
    other = x.copy()
    other[300:] = 0.0  # a different future: nothing after the context is read
    got = forecast_details(torch.tensor(other[None, :300]), "ckd", horizon=60)
    ref = forecast_details(torch.tensor(x[None, :300]), "ckd", horizon=60)
    assert torch.equal(got.pred, ref.pred) and got.settings == ref.settings


def test_univariate_forecasts_each_coordinate_from_its_own_past():
    x = lorenz(200)
    a = forecast(x, "ckd", horizon=10, univariate=True, embed=3)
    y = x.copy()
    y[:, 1] = np.random.default_rng(0).normal(size=200)  # another coordinate changes: the others do not
    b = forecast(y, "ckd", horizon=10, univariate=True, embed=3)
    assert np.array_equal(a[:, [0, 2]], b[:, [0, 2]]) and not np.allclose(a[:, 1], b[:, 1])
    single = forecast(x[:, :1], "ckd", horizon=10, univariate=True, embed=3)
    assert np.allclose(single[:, 0], a[:, 0], rtol=1e-9, atol=0)
    d = forecast_details(torch.tensor(x)[None], "ckd", horizon=10, univariate=True, embed=3)
    assert len(d.settings[0]) == 3 and all(s["embed"] == 3 for s in d.settings[0])


def test_rollout_that_leaves_the_finite_numbers_stops_and_says_so():
    from ckd.rollout import _stop_nonfinite
    pred = torch.tensor([[[1.0], [2.0], [np.inf], [3.0]], [[1.0], [2.0], [3.0], [4.0]]])
    out, stopped = _stop_nonfinite(pred, torch.zeros(2, 1))
    assert out[0, :, 0].tolist() == [1.0, 2.0, 2.0, 2.0] and stopped.tolist() == [2, 0]


@pytest.mark.parametrize("opts,match", [
    ({"horizon": 0}, "horizon"), ({"horizon": 1.5}, "horizon"), ({"horizon": "3"}, "horizon"),
    ({"horizon": True}, "horizon"), ({"horizon": 3, "embed": 0}, "embed"),
    ({"horizon": 3, "method": "parrot", "embed": 12}, "at least 13 rows"),
    ({"horizon": 3, "method": "ols"}, "unknown method"), ({"horizon": 3, "method": "ckd", "sweeps": 0}, "sweeps"),
    ({"method": "parrot"}, "horizon"), ({"univariate": True}, "horizon"),
])
def test_rollout_bad_options(opts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        forecast(henon(12), **opts)


def test_context_too_short_says_how_long():
    with pytest.raises(ValueError, match=r"ckd needs a context of at least 10 rows, got 9"):
        forecast(henon(9), "ckd", horizon=3)


def test_one_step_fallbacks_are_counted_and_warned():
    x = henon(40) * 3.0 + 1.0
    x[6:] = np.random.default_rng(5).normal(size=x[6:].shape) * 50  # noise: some krr forecasts leave the range
    with pytest.warns(RuntimeWarning, match=r"^(\d+) of 39 forecasts .* replaced by x_t") as rec:
        f = forecast_details(torch.tensor(x)[None], "krr")
    assert f.fallbacks > 0 and str(rec[0].message).startswith(f"{f.fallbacks} of 39")


def test_cli_horizon_writes_the_rollout_and_a_plot(tmp_path):
    x = henon(60)
    np.save(tmp_path / "in.npy", x)
    np.save(tmp_path / "truth.npy", np.zeros((7, 2)))
    out, fig = tmp_path / "out.csv", tmp_path / "fig.png"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), "--horizon", "7", "--method", "parrot",
                 "--embed", "3", "--plot", str(fig), "--truth", str(tmp_path / "truth.npy")]) == 0
    assert np.array_equal(np.loadtxt(out, delimiter=","), forecast(x, "parrot", horizon=7, embed=3))
    assert fig.stat().st_size > 1000
    np.save(tmp_path / "b.npy", np.stack([x, x]))
    assert main(["forecast", str(tmp_path / "b.npy"), "-o", str(tmp_path / "b_out.npy"), "--horizon", "4",
                 "--univariate", "--method", "analogues"]) == 0
    assert np.load(tmp_path / "b_out.npy").shape == (2, 4, 2)


@pytest.mark.parametrize("args,match", [
    (["--horizon", "0"], "horizon"), (["--horizon", "2.5"], "horizon"), (["--horizon", "x"], "horizon"),
    (["--horizon", "3", "--embed", "0"], "embed"), (["--horizon", "3", "--method", "parrot", "--embed", "40"],
                                                    "at least 41 rows"),
    (["--horizon", "3", "--plot", "FIG", "--truth", "BADTRUTH"], "truth has shape"),
    (["--horizon", "3", "--truth", "BADTRUTH"], "--plot"), (["--plot", "FIG"], "--horizon"),
    (["--method", "parrot"], "horizon"), (["--univariate"], "horizon"),
])
def test_cli_horizon_bad_input_one_line_nothing_written(tmp_path, capsys, args, match):
    np.save(tmp_path / "in.npy", henon(30))
    np.save(tmp_path / "truth.npy", np.zeros((4, 2)))
    args = [str(tmp_path / "truth.npy") if a == "BADTRUTH" else str(tmp_path / "f.png") if a == "FIG" else a
            for a in args]
    out = tmp_path / "out.npy"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ckd: error:") and match in err[0], err
    assert not out.exists() and not (tmp_path / "f.png").exists()


def test_cli_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    np.save(tmp_path / "in.npy", henon(30))
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "3",
                 "--plot", str(tmp_path / "f.png")]) == 2
    assert "pip install 'ckd[plot]'" in capsys.readouterr().err and not (tmp_path / "o.npy").exists()


def test_transformer_rollout_is_the_literal_loop(checkpoint):
    """The model runs on the standardised context + generated tokens; its last row is appended."""
    _, _, state = load_model(checkpoint)
    x = torch.tensor(henon(30), dtype=torch.float64)[None]
    got = forecast_details(x, "transformer", horizon=4, checkpoint=checkpoint)
    mean, std = x.mean(1, keepdim=True), x.std(1, unbiased=False, keepdim=True)
    seq = (x - mean) / std
    for _ in range(4):
        seq = torch.cat([seq, run_ckd(seq, state["setting"])[:, -1:]], 1)
    assert rel_err(got.pred, seq[:, 30:] * std + mean) < RTOL
    with pytest.raises(ValueError, match="dim=2"):
        forecast(henon(30), "transformer", horizon=3, univariate=True, checkpoint=checkpoint)


def test_rollout_constant_coordinate_stays_exact():
    x = np.concatenate([henon(60), np.full((60, 1), 3.25)], axis=1)
    for method in ("ckd", "krr", "analogues", "parrot", "last", "mean"):
        out = forecast(x, method, horizon=5)
        assert np.all(out[:, 2] == 3.25), method
    with pytest.raises(ValueError, match="depth applies to one-step"):
        forecast(x, horizon=5, depth="inf")


@pytest.mark.parametrize("args,words", [
    (["--horizon", "3", "--sigma", "1e300"], None),  # sigma^2 overflows as a float: no traceback
    (["--horizon", "99999999999999999999"], ["--horizon", "99999999999999999999"]),  # exact, bounded
    (["--horizon", "3", "--univariate", "--embed", "99999999999999999999999"], ["99999999999999999999999"]),
    (["--horizon", "3", "--plot", "FIG.xyz"], ["cannot write .xyz"]),  # checked before the forecast
])
def test_cli_rollout_edge_values_found_in_review(tmp_path, capsys, args, words):
    np.save(tmp_path / "in.npy", henon(40))
    out = tmp_path / "out.npy"
    args = [str(tmp_path / a) if a.startswith("FIG") else a for a in args]
    code = main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if words is None:
        assert code in (0, 2) and (code == 2 or np.isfinite(np.load(out)).all())
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
        assert not out.exists()


def test_many_sweeps_keep_two_iterates_only(monkeypatch):
    """swept asks gauss_seidel for beta^{K-1} and one more sweep, never the history of every sweep
    (which grew to 10 GB at a million sweeps), and gives the same rows as that history."""
    import ckd.descent.sweeps as D

    x = torch.tensor(henon(60))[None]
    G = D.kernel_matrix(x, x, "gaussian", 1.0, 1.0)[:, :-1, :-1]
    hist = D.gauss_seidel(G, x[:, 1:], 0.0, 50, return_all=True)
    calls = []
    plain = D.gauss_seidel

    def spy(*args, **kwargs):
        calls.append(kwargs.get("return_all", False))
        return plain(*args, **kwargs)

    monkeypatch.setattr(D, "gauss_seidel", spy)
    got = D.swept(x, "gaussian", sweeps=50)
    assert calls and not any(calls)
    seen = torch.ones(60, 59, dtype=torch.bool).tril(-1)
    Pk = D.kernel_matrix(x, x, "gaussian", 1.0, 1.0)[:, :, :-1]
    assert rel_err(got, (Pk * seen) @ hist[-1] + (Pk * ~seen) @ hist[-2]) < 1e-10
