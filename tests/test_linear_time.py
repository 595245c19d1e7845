"""Linear-time CKD (SPEC §9): the chunked forms (``ckd.linear_time.chunk``) against the plain loops
(``ckd.linear_time.naive``), against sequential loops written here from SPEC §9 (numpy), and
against the dense T x T path (``method="dense"``), which stays the reference."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import rel_err

import ckd
from ckd import StabilityWarning, Streaming, make_task
from ckd.construction import run_constructed
from ckd.descent import descend
from ckd.linear_time import (
    causal_linear_attention,
    delta_rule_chunked,
    delta_rule_naive,
    descend_chunked,
    descend_naive,
    feature_map,
    pairs,
)

TOL = 1e-10  # the standard for linear-time vs dense, float64
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _rotation_task(B, T, d=4, seed=0):
    """Orthogonal linear dynamics on the unit sphere (SPEC §5): R[t,t] = 1, well conditioned."""
    return make_task("linear", B, T, d, seed=seed).x


# ---------------------------------------------------------------- independent loops (SPEC §9, numpy)

def kaczmarz_linear(x: np.ndarray, ridge: float) -> np.ndarray:
    """SPEC §9 literally: alpha_t = (x_t - W x_{t-1}) / (|x_{t-1}|^2 + lambda), W += alpha_t x_{t-1}^T,
    p_t = W x_t. x: (T, d)."""
    T, d = x.shape
    W, p = np.zeros((d, d)), np.zeros((T, d))
    for t in range(1, T):
        alpha = (x[t] - W @ x[t - 1]) / (x[t - 1] @ x[t - 1] + ridge)
        W = W + np.outer(alpha, x[t - 1])
        p[t] = W @ x[t]
    return p


def prefix_sum_ckd(x: np.ndarray, depth: int, step: float, ridge: float) -> np.ndarray:
    """SPEC §9 depth N: S_t = sum_{s<=t} r_s x_{s-1}^T, (P r)_t = S_t x_t, (R r)_t = S_t x_{t-1}."""
    T, d = x.shape
    r, p = x.copy(), np.zeros((T, d))
    r[0] = 0
    for _ in range(depth):
        S, Pr, Rr = np.zeros((d, d)), np.zeros((T, d)), np.zeros((T, d))
        for t in range(1, T):
            S = S + np.outer(r[t], x[t - 1])
            Pr[t], Rr[t] = S @ x[t], S @ x[t - 1]
        p, r = p + step * Pr, r - step * (Rr + ridge * r)
    return p


# ---------------------------------------------------------------- the linear kernel

@pytest.mark.parametrize("ridge", [0.0, 0.4])
@pytest.mark.parametrize("T", [2, 3, 45, 100])
def test_loops_chunked_naive_and_dense_agree(T, ridge):
    x = torch.randn(2, T, 3, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    k, u, q, y = pairs(x)
    for chunk in (1, 7, 32):  # T - 1 not a multiple of the chunk
        p, a = delta_rule_chunked(k, u, q, y, ridge, chunk=chunk)
        p0, a0 = delta_rule_naive(k, u, q, y, ridge)
        assert rel_err(p, p0) < TOL and rel_err(a, a0) < TOL
        got, _ = descend_chunked(k, u, q, y, 3, 0.05, ridge, chunk=chunk)
        assert rel_err(got, descend_naive(k, u, q, y, 3, 0.05, ridge)) < TOL
    for b in range(2):
        ref = torch.from_numpy(kaczmarz_linear(x[b].numpy(), ridge))
        assert rel_err(descend(x[b:b + 1], "linear", depth="inf", ridge=ridge)[0], ref) < TOL
        ref = torch.from_numpy(prefix_sum_ckd(x[b].numpy(), 3, 0.05, ridge))
        assert rel_err(descend(x[b:b + 1], "linear", depth=3, step=0.05, ridge=ridge)[0], ref) < TOL
    dense = descend(x, "linear", depth="inf", ridge=ridge, method="dense") if ridge else None
    if dense is not None:
        assert rel_err(descend(x, "linear", depth="inf", ridge=ridge), dense) < TOL


@pytest.mark.filterwarnings("ignore::ckd.StabilityWarning")  # depth 16 at T = 1500: the transient, in both
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("depth", [0, 1, 4, 16, "inf"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("T", [2, 77, 1500])
def test_predict_linear_time_equals_dense(device, depth, ridge, T):
    """Default step (0.5 / max (R[t,t] + lambda) over the batch), batched and unbatched."""
    x = _rotation_task(3, T, seed=T).to(device) * torch.tensor([1.0, 0.6, 1.7], device=device)[:, None, None]
    fast = ckd.predict(x, "linear", depth=depth, ridge=ridge)
    dense = ckd.predict(x, "linear", depth=depth, ridge=ridge, method="dense")
    assert fast.device == x.device and fast.shape == x.shape
    assert rel_err(fast, dense) < TOL
    one = ckd.predict(x[1].cpu().numpy(), "linear", depth=depth, ridge=ridge)
    assert isinstance(one, np.ndarray)
    assert rel_err(torch.from_numpy(one), ckd.predict(x[1].cpu(), "linear", depth=depth, ridge=ridge,
                                                      method="dense")) < TOL


def test_long_sequence_equals_the_loops():
    """T = 10^4 (not a multiple of any chunk), against the numpy loops (the dense path at this
    length takes ~20 s here; it is compared up to T = 1500 above)."""
    x = _rotation_task(1, 10_000, d=3, seed=1)
    ref = torch.from_numpy(kaczmarz_linear(x[0].numpy(), 0.1))
    assert rel_err(descend(x, "linear", depth="inf", ridge=0.1)[0], ref) < TOL
    ref = torch.from_numpy(prefix_sum_ckd(x[0].numpy(), 2, 0.3, 0.1))
    assert rel_err(descend(x, "linear", depth=2, step=0.3, ridge=0.1)[0], ref) < TOL


@pytest.mark.filterwarnings("ignore::ckd.StabilityWarning")
def test_return_all_and_float32():
    x = _rotation_task(2, 300, seed=2)
    fast = descend(x, "linear", depth=5, return_all=True)
    assert fast.shape == (6, *x.shape)
    assert rel_err(fast, descend(x, "linear", depth=5, return_all=True, method="dense")) < TOL
    x32 = x.float()
    for depth in (5, "inf"):
        got, ref = descend(x32, "linear", depth=depth), descend(x32, "linear", depth=depth, method="dense")
        assert got.dtype == torch.float32 and rel_err(got, ref) < 1e-4


def test_method_linear_is_the_same_as_auto_and_default_step_matches():
    x = _rotation_task(2, 60)
    assert torch.equal(descend(x, "linear", depth=3, method="linear"), descend(x, "linear", depth=3))
    eta = 0.5 / float((x[:, :-1] ** 2).sum(-1).max() + 0.2)
    assert rel_err(descend(x, "linear", depth=3, ridge=0.2),
                   descend(x, "linear", depth=3, ridge=0.2, step=eta, method="dense")) < TOL


def test_warnings_and_errors_match_the_dense_path():
    x = torch.randn(1, 200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method in ("auto", "dense"):
        with pytest.warns(StabilityWarning, match="outside the convergence region"):
            descend(x, "linear", depth=3, step=10.0, method=method)
        with pytest.warns(StabilityWarning, match="residuals grew"):  # the non-normal transient
            descend(_rotation_task(1, 1500), "linear", depth=16, method=method)
        z = x.clone()
        z[0, 5] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            descend(z, "linear", depth="inf", ridge=0.1, method=method)


@pytest.mark.parametrize("depth", [3, "inf"])
def _zero_token_case():
    x = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[0, [5, 6, 100]] = 0  # zero tokens: R[t,t] = 0, their pairs carry no information
    x[1] = 0  # the all-zero input predicts 0
    return x


@pytest.mark.parametrize("depth", [0, 3, "inf"])
def test_zero_tokens_match_the_dense_path(depth):
    """A zero token x_{s-1} gets coefficient 0 on both paths (R[t,t] = 0: its column of P and R is 0)."""
    x = _zero_token_case()
    fast, dense = descend(x, "linear", depth=depth), descend(x, "linear", depth=depth, method="dense")
    assert torch.isfinite(fast).all()
    assert rel_err(fast, dense) < TOL
    assert fast[1].abs().max() == 0


@pytest.mark.parametrize("depth", [3, "inf"])
def test_float32_overflow_is_the_clear_error(depth):
    """|x|^2 ~ 1e39 overflows float32: both paths scale x by a power of two first (exact); a result
    beyond float32 (step 1e-30 is 1.4e9 in scaled units: divergent) is FloatingPointError, not inf."""
    x = _rotation_task(1, 50).float() * 3e19
    for method in ("auto", "dense"):
        if depth == "inf":  # converges: finite, and the two paths agree
            fast, dense = (descend(x, "linear", depth="inf", method=m) for m in ("auto", "dense"))
            assert torch.isfinite(fast).all() and rel_err(fast.double(), dense.double()) < 1e-4
            continue
        with pytest.raises(FloatingPointError, match="overflowed in float32"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            descend(x, "linear", depth=depth, step=1e-30, method=method)


# ---------------------------------------------------------------- linear attention, transformer, streaming

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 16, 53])
def test_causal_linear_attention_equals_masked_product(device, T):
    g = torch.Generator().manual_seed(T)
    q, k = (torch.randn(2, 3, T, 5, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    v = torch.randn(2, 3, T, 4, generator=g, dtype=torch.float64).to(device)
    assert rel_err(causal_linear_attention(q, k, v), (q @ k.transpose(-1, -2)).tril() @ v) < TOL


@pytest.mark.parametrize("ridge", [0.0, 0.2])
def test_constructed_transformer_equals_linear_time_paths(ridge):
    x = _rotation_task(2, 150, seed=4)
    fast = ckd.predict(x, "linear", depth=4, ridge=ridge)
    assert rel_err(run_constructed(x, kernel="linear", beta=1.0, sigma=1.0, depth=4, step=None, ridge=ridge,
                                   tokens="augmented"), fast) < 1e-9
    assert rel_err(ckd.predict(x, "linear", depth=4, ridge=ridge, backend="transformer"), fast) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_streaming_linear_is_the_delta_rule(device, ridge):
    x = _rotation_task(1, 120, seed=5)[0].to(device) * 1.3
    s = Streaming("linear", dim=x.shape[-1], ridge=ridge, device=device)
    rows = torch.stack([s.push(x_t) for x_t in x])
    assert rel_err(rows, ckd.predict(x, "linear", depth="inf", ridge=ridge, method="dense")) < TOL
    assert s._W.shape == (4, 4) and s._keys.shape[0] == 0  # a d x d state; no key buffer (issue 21: d^2 only)
    assert len(s) == 120
    s.reset()
    assert len(s) == 0 and not s._W.any()


def test_streaming_linear_zero_token_keeps_the_state():
    """A zero token x_{t-1} has coefficient 0 (as the batch paths): the state is unchanged."""
    x = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, -1.0], [0.5, 0.5]])
    s = Streaming("linear", dim=2)
    rows = np.stack([s.push(v) for v in x])
    assert np.allclose(rows, descend(torch.tensor(x)[None], "linear", depth="inf", method="dense")[0].numpy(),
                       rtol=1e-12, atol=1e-15)
    s.reset()
    s.push([1.0, 0.0])
    assert np.allclose(s.push([0.0, 1.0]), [0.0, 0.0])  # W = (0, 1)^T (1, 0): W x_1 = 0


# ---------------------------------------------------------------- random features

FEATURE_OPTS = {"exp": {"beta": 1.5}, "softmax": {"beta": 4.0}, "gaussian": {"sigma": 0.7}}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["exp", "softmax", "gaussian"])
@pytest.mark.parametrize("depth", [0, 1, 4, "inf"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_features_are_exact_ckd_for_the_kernel_phi_phi(device, kernel, depth, ridge):
    x = make_task("periodic", 2, 90, 3, seed=6).x.to(device)
    opts = dict(FEATURE_OPTS[kernel], depth=depth, ridge=ridge, features=48, feature_seed=3)
    fast = ckd.predict(x, kernel, **opts)
    assert rel_err(fast, ckd.predict(x, kernel, method="dense", **opts)) < TOL
    assert not torch.equal(fast, ckd.predict(x, kernel, **dict(opts, feature_seed=4))) or depth == 0


def test_feature_gram_closed_forms():
    """The dense reference builds the kernel phi.phi; softmax rows sum to one."""
    x = make_task("periodic", 1, 20, 3, seed=7).x
    phi = feature_map(x, "gaussian", 10, 0, sigma=0.7)
    assert rel_err((phi * phi).sum(-1), torch.ones(1, 20, dtype=torch.float64)) < 1e-14  # k(a, a) = 1
    from ckd.linear_time import feature_matrices

    mats = feature_matrices(x, "softmax", 16, 0, beta=2.0)
    assert rel_err(mats.P.sum(-1)[:, 1:], torch.ones(1, 19, dtype=torch.float64)) < 1e-14
    assert rel_err(mats.R.sum(-1)[:, 1:], torch.ones(1, 19, dtype=torch.float64)) < 1e-14


@pytest.mark.parametrize("kernel", ["exp", "gaussian"])
def test_features_approximate_the_kernel(kernel):
    """phi(a).phi(b) -> k(a, b) as D grows (unbiased maps): error at D = 8192 well under D = 32
    (max entry error relative to max k on a unit-sphere sequence: 0.49 -> 0.04 exp, 0.28 -> 0.017 gaussian)."""
    x = make_task("periodic", 1, 30, 3, seed=8).x[0]
    opts = {"exp": {"beta": 0.5}, "gaussian": {"sigma": 0.7}}[kernel]  # (exp at beta 1.5: 0.39 at D = 8192)
    exact = ckd.kernel_matrix(x, x, kernel, **opts)
    errs = []
    for D in (32, 8192):
        phi = feature_map(x, kernel, D, 1, **opts)
        errs.append(float((phi @ phi.T - exact).abs().max() / exact.abs().max()))
    assert errs[1] < errs[0] / 5 and errs[1] < 0.05


def test_features_are_never_used_unless_asked():
    x = make_task("periodic", 1, 40, 3, seed=9).x
    for kernel in ("exp", "softmax", "gaussian"):
        assert torch.equal(ckd.predict(x, kernel, depth=3), ckd.predict(x, kernel, depth=3, method="dense"))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel="exp", features=0), ValueError, "features must be an integer >= 1"),
    (dict(kernel="exp", features=-3), ValueError, "features must be an integer >= 1"),
    (dict(kernel="exp", features=2.5), ValueError, "features must be an integer"),
    (dict(kernel="exp", features=True), TypeError, "features must be an integer"),
    (dict(kernel="linear", features=16), ValueError, "linear kernel runs exactly in linear time"),
    (dict(kernel="gaussian", features=15), ValueError, "even for the gaussian"),
    (dict(kernel="exp", features=16, beta=-1.0), ValueError, "beta >= 0"),
    (dict(kernel="exp", features=16, feature_seed="1"), TypeError, "feature_seed must be an integer"),
    (dict(kernel="exp", features=16, feature_seed=1.5), ValueError, "feature_seed must be an integer"),
    (dict(kernel="exp", features=16, feature_seed=-1), ValueError, "feature_seed must be an integer in"),
    (dict(kernel="exp", features=16, feature_seed=2**70), ValueError, "feature_seed must be an integer in"),
    (dict(kernel="exp", method="fast"), ValueError, "unknown method 'fast'"),
    (dict(kernel="exp", method=None), ValueError, "unknown method"),
    (dict(kernel="exp", method="linear"), ValueError, "method 'linear' needs the linear kernel or features"),
    (dict(kernel="linear", backend="transformer", method="dense"), ValueError, "descent backend only"),
    (dict(kernel="exp", backend="transformer", features=8), ValueError, "descent backend only"),
])
def test_bad_input_is_one_clear_error(kwargs, error, match):
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(error, match=match):
        ckd.predict(x, depth=2, **kwargs)


def test_float32_feature_sum_is_finite_or_the_clear_error():
    """Positive features never overflow (exponent <= |omega|^2 / 2): large beta stays finite."""
    x = make_task("periodic", 1, 200, 3, seed=10).x.float() * 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = ckd.predict(x, "exp", beta=1.0, depth="inf", ridge=1.0, features=64, dtype=torch.float32)
        except (FloatingPointError, ValueError) as err:
            assert "overflow" in str(err) or "ridge" in str(err)
        else:
            assert torch.isfinite(p).all() and not math.isnan(float(p.sum()))


# ---------------------------------------------------------------- long contexts (experiment)

def test_context_length_experiment_quick(tmp_path):
    """``ckd reproduce context-length --quick``: figure and numbers written; on Henon the error of
    the nearest analogue and of the random-feature delta rule fall as the context grows."""
    pytest.importorskip("dysts")
    import json

    from ckd.experiments import load

    load("context-length").run(tmp_path, size="quick", seed=0, device="cpu")
    for suffix in ("png", "pdf", "json"):
        assert (tmp_path / f"context-length.{suffix}").stat().st_size > 0
    r = json.loads((tmp_path / "context-length.json").read_text())["systems"]["map:Henon"]["median_error"]
    assert r["analogues"][-1] < r["analogues"][0] / 2
    assert min(r["rff-0.1"][-1], r["rff-0.3"][-1]) < min(r["rff-0.1"][0], r["rff-0.3"][0]) / 2
    assert r["last"][-1] > 0.5  # the trivial forecaster does not improve with context


def test_review_edge_cases_of_the_merged_paths():
    """Found in review after the merge: float32 scaling limit, one scale per sequence at depth inf,
    sweeps with zero or tiny tokens, sweeps refusing linear-time options, tiny streaming tokens."""
    x = torch.randn(1, 12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref4 = descend(x, "linear", depth=4)
    for e in (50, -50, -60):  # |x|^3 beyond float32 / |x|^2 below it: scaled by a power of two first
        out = descend((x * 2.0**e).float(), "linear", depth=4)
        assert rel_err(out.double() / 2.0**e, ref4) < 1e-5, e
    small = x * 2.0**-100
    mixed = descend(torch.cat([x * 2.0**500, small]), "linear", depth="inf")
    assert rel_err(mixed[1:], descend(small, "linear", depth="inf")) < 1e-12  # not zeroed by the other's scale
    z = x.clone()
    z[0, 4] = 0  # a zero token: coefficient 0 at every sweep, so K = 1 is depth inf
    assert rel_err(descend(z, "linear", depth="inf", sweeps=1), descend(z, "linear", depth="inf")) < 1e-12
    assert torch.isfinite(descend(z, "linear", depth="inf", sweeps=3)).all()
    assert rel_err(descend(x * 1e-200, "linear", depth="inf", sweeps=2) / 1e-200,
                   descend(x, "linear", depth="inf", sweeps=2)) < 1e-12
    with pytest.raises(ValueError, match="sweeps > 1"):
        descend(x, "exp", depth="inf", sweeps=3, features=64)
    s = Streaming("linear", dim=3)
    rows = np.stack([s.push(v) for v in (x[0] * 1e-200).numpy()])
    assert np.allclose(rows / 1e-200, descend(x, "linear", depth="inf", method="dense")[0].numpy(),
                       rtol=1e-10, atol=1e-12)
