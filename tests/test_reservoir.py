"""The reservoirpy baselines (issue 18): NVAR and ESN rollouts against independent plain loops."""

import itertools
import sys

import numpy as np
import pytest
import torch
from test_forecast_default import lorenz

from ckd.cli import main
from ckd.forecast import forecast, forecast_details
from ckd.heldout import heldout_error, heldout_origins

pytest.importorskip("reservoirpy")
import ckd.reservoir as R  # noqa: E402 - after the skip


def standard(x):
    return torch.tensor((x - x.mean(0)) / x.std(0))


def ridge_fit(X, Y, lam):
    """argmin |Y - X W - b|^2 + lam |W|^2, the bias not penalised (centred normal equations)."""
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    W = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ Yc)
    return W, my - mx @ W


def nvar_features(window, k):
    """(z_t, z_{t-1}, ..., z_{t-k+1}) and every product of two of its entries (i <= j)."""
    lin = np.concatenate([window[-1 - i] for i in range(k)])
    quad = [lin[i] * lin[j] for i, j in itertools.combinations_with_replacement(range(len(lin)), 2)]
    return np.concatenate([lin, quad])


def nvar_loop(z, H, k, lam):
    """Fit the increment on the rows t >= k-1 (earlier windows hold zeros), then iterate."""
    pad = np.concatenate([np.zeros((k - 1, z.shape[1])), z])
    X = np.stack([nvar_features(pad[t: t + k], k) for t in range(len(z) - 1)])
    W, b = ridge_fit(X[k - 1:], (z[1:] - z[:-1])[k - 1:], lam)
    seq = list(pad)
    for _ in range(H):
        seq.append(seq[-1] + nvar_features(np.array(seq[-k:]), k) @ W + b)
    return np.array(seq[-H:])


def esn_loop(z, H, sr, lr, g, lam):
    W0, Win0 = R._matrices(z.shape[1])
    W, Win = W0.toarray() * sr, Win0.toarray() * g
    s, states = np.zeros(R.UNITS), []
    for u in z:
        s = (1 - lr) * s + lr * np.tanh(W @ s + Win @ u)
        states.append(s)
    S = np.array(states)
    n, warm = len(z), min(R.WARMUP, len(z) // 4)
    Wo, b = ridge_fit(np.concatenate([S, z], 1)[warm:n - 1], z[warm + 1:], lam)
    out, u = [], z[-1]
    for _ in range(H):
        u = np.concatenate([s, u]) @ Wo + b
        out.append(u)
        s = (1 - lr) * s + lr * np.tanh(W @ s + Win @ u)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3])
def test_nvar_rollout_is_the_plain_loop(k):
    z = standard(lorenz(200))
    got, chosen = R.reservoir_rollout(z, 12, "nvar", ridge=1e-4, fixed={"delay": k})
    assert chosen == {"delay": k, "ridge": 1e-4}
    ref = nvar_loop(z.numpy(), 12, k, 1e-4)
    assert np.abs(got.numpy() - ref).max() < 1e-9 * np.abs(ref).max()


def test_esn_rollout_is_the_plain_loop():
    z = standard(lorenz(150))
    setting = {"sr": 0.9, "lr": 0.3, "input_scaling": 0.5}
    got, chosen = R.reservoir_rollout(z, 10, "esn", ridge=1e-5, fixed=setting)
    assert chosen == {**setting, "ridge": 1e-5}
    ref = esn_loop(z.numpy(), 10, 0.9, 0.3, 0.5, 1e-5)
    assert np.abs(got.numpy() - ref).max() < 1e-9 * np.abs(ref).max()
    W0, _ = R._matrices(3)
    assert abs(np.abs(np.linalg.eigvals(W0.toarray())).max() - 1.0) < 1e-12  # spectral radius 1


def test_the_setting_with_the_smallest_heldout_error_is_chosen(monkeypatch):
    monkeypatch.setitem(R.GRIDS, "nvar", {"delay": (1, 2), "ridge": (1e-6, 1e-2)})
    z = standard(lorenz(120))
    diag = {}
    _, chosen = R.reservoir_rollout(z, 5, "nvar", diagnostics=diag)
    T = len(z)
    score = {}
    for k, lam in itertools.product((1, 2), (1e-6, 1e-2)):
        errs = [heldout_error(torch.tensor(nvar_loop(z[:T - o].numpy(), o, k, lam))[None], z[T - o:])
                for o in heldout_origins(T)]
        score[(k, lam)] = float(sum(errs)) / len(errs)
    k, lam = min(score, key=score.get)
    assert chosen == {"delay": k, "ridge": lam} and diag["settings_scored"] == 4
    # lambda = 1e-6: the solves differ in rounding (scipy sym vs numpy LU), grown over a 37-step rollout
    assert diag["heldout_error"] == pytest.approx(score[(k, lam)], rel=1e-6)


def test_nvar_forecasts_lorenz_and_is_affine_equivariant():
    x = lorenz(560)
    ctx, truth = x[:512], x[512:542]
    pred = forecast(ctx, "nvar", horizon=30)
    assert np.abs(pred - truth).mean() < 0.05 * x.std()
    d = forecast_details(torch.tensor(ctx)[None], "nvar", horizon=5)
    assert set(d.settings[0]) == {"delay", "ridge"} and d.diagnostics[0]["settings_scored"] == 16
    scale, shift = np.array([3.0, 0.5, 10.0]), np.array([1.0, -2.0, 7.0])
    moved = forecast(ctx[:200] * scale + shift, "esn", horizon=4)
    assert np.allclose(moved, forecast(ctx[:200], "esn", horizon=4) * scale + shift, rtol=1e-6, atol=1e-6)


def test_univariate_reservoir_rollouts_per_coordinate():
    x = lorenz(150)
    out = forecast(x, "nvar", horizon=4, univariate=True)
    single = forecast(x[:, 1:2], "nvar", horizon=4, univariate=True)
    assert out.shape == (4, 3) and np.allclose(out[:, 1:2], single, rtol=1e-12, atol=1e-12)


def test_missing_reservoirpy_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "reservoirpy", None)  # import reservoirpy now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'ckd\[reservoir\]'"):
        forecast(lorenz(60), "esn", horizon=3)
    np.save(tmp_path / "in.npy", lorenz(60))
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "3",
                 "--method", "nvar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ckd[reservoir]" in err[0] and not (tmp_path / "o.npy").exists()


def test_context_too_short_for_nvar():
    with pytest.raises(ValueError, match="nvar needs a context of at least 16 rows"):
        forecast(lorenz(15), "nvar", horizon=3)
