"""Layer-bounded iterations (issue 18): each against its plain loop or closed form, in float64."""

import math

import numpy as np
import pytest
import torch

from ckd.descent import gauss_seidel
from ckd.iterations import ITERATIONS, layer_iterates, nystrom_preconditioner, spectrum_bounds

LAYERS = (1, 2, 5, 16, 40)


def system(n=60, c=2, sigma=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64).cumsum(0) * 0.3  # a wandering orbit: close keys
    G = torch.exp(-torch.cdist(x, x).square() / (2 * sigma * sigma))
    return G, torch.randn(n, c, generator=g, dtype=torch.float64)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_sweeps_are_gauss_seidel():
    G, Y = system()
    got = layer_iterates(G, Y, 1e-3, "sweeps", LAYERS)
    for L in LAYERS:
        assert torch.equal(got[L], gauss_seidel(G, Y, 1e-3, L))


def chebyshev_T(L, x):
    """T_L(x) by its three-term recurrence (a plain loop)."""
    t0, t1 = 1.0, x
    for _ in range(L - 1):
        t0, t1 = t1, 2 * x * t1 - t0
    return t1 if L >= 1 else t0


@pytest.mark.parametrize("ridge", [1e-3, 1e-1])
def test_chebyshev_is_the_chebyshev_polynomial(ridge):
    """beta_L = A^{-1} (Y - r_L), r_L = T_L((theta - A) / delta) Y / T_L(theta / delta), in A's eigenbasis."""
    G, Y = system()
    a, b = spectrum_bounds(G, ridge)
    theta, delta = (a + b) / 2, (b - a) / 2
    mu, V = torch.linalg.eigh(G + ridge * torch.eye(len(G), dtype=G.dtype))
    got = layer_iterates(G, Y, ridge, "chebyshev", LAYERS)
    for L in LAYERS:
        f = [(1 - chebyshev_T(L, (theta - m) / delta) / chebyshev_T(L, theta / delta)) / m for m in mu.tolist()]
        ref = V @ (torch.tensor(f, dtype=G.dtype)[:, None] * (V.T @ Y))
        assert rel(got[L], ref) < 1e-9, L


def test_momentum_is_the_heavy_ball_recurrence_per_eigenvalue():
    ridge = 1e-2
    G, Y = system()
    a, b = spectrum_bounds(G, ridge)
    alpha = 4 / (math.sqrt(a) + math.sqrt(b)) ** 2
    mom = ((math.sqrt(b) - math.sqrt(a)) / (math.sqrt(b) + math.sqrt(a))) ** 2
    mu, V = torch.linalg.eigh(G + ridge * torch.eye(len(G), dtype=G.dtype))
    y = (V.T @ Y).tolist()
    got = layer_iterates(G, Y, ridge, "momentum", LAYERS)
    for L in LAYERS:
        coef = []
        for m, yi in zip(mu.tolist(), y):  # a plain scalar loop per eigenvalue and channel
            row = []
            for v in yi:
                cur = prev = 0.0
                for _ in range(L):
                    cur, prev = cur + alpha * (v - m * cur) + mom * (cur - prev), cur
                row.append(cur)
            coef.append(row)
        assert rel(got[L], V @ torch.tensor(coef, dtype=G.dtype)) < 1e-9, L


def test_preconditioned_is_richardson_with_the_explicit_nystrom_inverse(monkeypatch):
    ridge = 1e-2
    G, Y = system(n=90)
    F, core, top = nystrom_preconditioner(G, ridge, m=20)
    n = len(G)
    eye = torch.eye(n, dtype=G.dtype)
    Gh = F @ F.T
    assert torch.linalg.eigvalsh(G - Gh).min() > -1e-9  # the Nystrom approximation is below G
    M = torch.linalg.inv(Gh + ridge * eye)  # explicit, not Woodbury
    A = G + ridge * eye
    ev = torch.linalg.eigvals(M @ A).real
    assert ev.min() > 1 - 1e-8 and ev.max() < top * (1 + 1e-9)
    assert top == pytest.approx(1 + float(torch.linalg.eigvalsh(G - Gh).max()) / ridge, rel=1e-9)
    assert ev.max() > 1 + 0.5 * (top - 1)  # the bound is tight here, not a worst case
    monkeypatch.setattr("ckd.iterations.LANDMARKS", 20)
    got = layer_iterates(G, Y, ridge, "preconditioned", LAYERS)
    omega = 2 / (1 + top)
    beta = torch.zeros_like(Y)
    for L in range(1, max(LAYERS) + 1):  # the plain loop with dense matrices
        beta = beta + omega * M @ (Y - A @ beta)
        if L in LAYERS:
            assert rel(got[L], beta) < 1e-9, L


@pytest.mark.parametrize("kind", ITERATIONS)
def test_every_iteration_tends_to_kernel_ridge(kind):
    ridge = 0.05
    G, Y = system(n=40, sigma=0.5)
    exact = torch.linalg.solve(G + ridge * torch.eye(40, dtype=G.dtype), Y)
    got = layer_iterates(G, Y, ridge, kind, (4, 400))
    assert rel(got[400], exact) < 1e-6
    assert rel(got[4], exact) > rel(got[400], exact)


def test_bad_options():
    G, Y = system(n=10)
    with pytest.raises(ValueError, match="unknown iteration"):
        layer_iterates(G, Y, 1e-3, "conjugate", (2,))
    with pytest.raises(ValueError, match="layers"):
        layer_iterates(G, Y, 1e-3, "chebyshev", (0, 2))
    with pytest.raises(ValueError, match="ridge > 0"):
        layer_iterates(G, Y, 0.0, "momentum", (2,))


# ----------------------------------------------------------------------------- in the rollouts

def test_ckd_layers_rollout_is_the_literal_loop_on_the_chosen_iterations_coefficients():
    from test_forecast_default import lorenz

    from ckd.rollout import LAYER_ITERATIONS, _gram, kernel_pairs, kernel_rollout

    x = torch.tensor(lorenz(120))
    z = (x - x.mean(0)) / x.std(0, unbiased=False)
    got, chosen = kernel_rollout(z, 6, "ckd", layers=8, sigma=0.7, ridge=1e-2, embed=1, stride=2, lag=1)
    assert chosen["iteration"] in LAYER_ITERATIONS and chosen["layers"] == 8 and chosen["sweeps"] is None
    keys, Y = kernel_pairs(z, 1, 2, 1)
    width = 0.7 ** 2 * 3
    G = _gram(keys, keys, torch.tensor([width], dtype=z.dtype))[0]
    beta = layer_iterates(G, Y, 1e-2, chosen["iteration"], [8])[8]
    seq = [z[-1]]
    for _ in range(6):  # z_{t+1} = z_t + sum_s k(z_t, key_s) beta_s, one pair at a time
        u = seq[-1]
        inc = sum(math.exp(-float((u - keys[s]).square().sum()) / (2 * width)) * beta[s] for s in range(len(keys)))
        seq.append(u + inc)
    assert rel(got, torch.stack(seq[1:])) < 1e-12


@pytest.mark.parametrize("opts,match", [
    ({"method": "krr", "layers": 4}, "layers applies to method ckd"),
    ({"method": "ckd", "layers": 4, "sweeps": 8}, "not both"),
    ({"method": "ckd", "layers": 0}, "layers"),
    ({"method": "ckd", "layers": 2.5}, "layers"),
])
def test_layers_bad_options(opts, match):
    from test_forecast_default import lorenz

    from ckd.forecast import forecast

    with pytest.raises(ValueError, match=match):
        forecast(lorenz(40), horizon=3, **opts)
    with pytest.raises(ValueError, match="give a horizon"):
        forecast(lorenz(40), "ckd", layers=4)


def test_cli_layers_and_report(tmp_path):
    import json

    import numpy as np
    from test_forecast_default import lorenz

    from ckd.cli import main
    from ckd.forecast import forecast

    np.save(tmp_path / "in.npy", lorenz(100))
    out, rep = tmp_path / "o.npy", tmp_path / "r.json"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), "--horizon", "5", "--method", "ckd",
                 "--layers", "16", "--report", str(rep)]) == 0
    assert np.array_equal(np.load(out), forecast(lorenz(100), "ckd", horizon=5, layers=16))
    s = json.loads(rep.read_text())["sequences"][0]["settings"]
    assert s["layers"] == 16 and s["iteration"] in ("sweeps", "chebyshev", "momentum") and s["sweeps"] is None


def test_depth_study_smoke():
    from test_forecast_default import lorenz

    from ckd.experiments.chaos_forecast.depth import depth_case

    x = lorenz(330)
    res = depth_case(x[:300], x[300:], ["sweeps", "chebyshev"], layers=(1, 8))
    assert set(res["vpt"]) == {"krr", "exact", "sweeps", "chebyshev", "chosen"}
    for kind in ("sweeps", "chebyshev", "chosen"):
        assert set(res["vpt"][kind]) == {1, 8} and all(0 < v <= 1 for v in res["vpt"][kind].values())
        assert res["settings"][kind][8]["ridge"] in (1e-6, 1e-4, 1e-2, 1e-1)


def test_depth_study_resumes_from_its_per_system_files(tmp_path, monkeypatch):
    """run_depth writes each system's result as it finishes; a rerun with the same settings reads them back
    (integer keys restored) and runs nothing, giving the same summary; other settings are not reused."""
    pytest.importorskip("matplotlib")
    from ckd.experiments.chaos_forecast import depth

    calls = []

    def fake_system(args):
        name, n_ics, kinds = args
        calls.append(name)
        vpt = {"krr": 2.0 + len(name), "exact": 1.5}
        vpt.update({k: {L: L / 256 * (1 + len(name)) for L in depth.LAYERS} for k in [*kinds, depth.CHOSEN]})
        return {"system": name, "cases": {i: {"vpt": vpt, "settings": {}} for i in range(n_ics)}, "seconds": 0.0}

    monkeypatch.setattr(depth, "depth_system", fake_system)
    first = depth.run_depth(tmp_path, ["A", "BB"], 2, kinds=["sweeps"])
    assert calls == ["A", "BB"] and sorted(p.name for p in (tmp_path / "systems").iterdir()) == ["A.json", "BB.json"]
    second = depth.run_depth(tmp_path, ["A", "BB"], 2, kinds=["sweeps"])
    assert calls == ["A", "BB"] and second == first
    assert first["krr"] == 3.5 and first["curves"]["sweeps"]["256"] == 2.5
    depth.run_depth(tmp_path, ["A", "BB"], 3, kinds=["sweeps"])  # another n_ics: recomputed
    assert calls == ["A", "BB", "A", "BB"]


def test_depth_study_leaves_out_a_system_whose_cases_raise(tmp_path, monkeypatch):
    """A case that raises (e.g. a trajectory too large to square) is recorded and left out, as in the benchmark's
    runs; the other systems are summarised."""
    pytest.importorskip("matplotlib")
    from ckd.experiments.chaos_forecast import depth

    class Data:
        def __init__(self, name):
            self.name = name

        def trajectory(self, i):
            return np.full((812, 3), 1e200 if self.name == "Big" else 1.0)

    def fake_case(ctx, truth, kinds, layers=depth.LAYERS):
        if np.abs(ctx).max() > 1e100:
            raise ValueError("x: input too large")
        return {"vpt": {"krr": 1.0, "exact": 1.0, **{k: {L: 0.5 for L in layers} for k in [*kinds, depth.CHOSEN]}},
                "settings": {}}

    monkeypatch.setattr(depth, "SystemData", Data)
    monkeypatch.setattr(depth, "depth_case", fake_case)
    summ = depth.run_depth(tmp_path, ["Big", "Ok"], 2, kinds=["sweeps"])
    assert summ["systems"] == ["Ok"] and summ["left_out"] == {"Big": {0: "ValueError: x: input too large",
                                                                        1: "ValueError: x: input too large"}}
    text = (tmp_path / "depth.md").read_text()
    assert "Left out, as in the benchmark's runs: Big (ValueError: x: input too large)" in text
