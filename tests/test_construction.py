"""The constructed Transformer equals causal kernel descent (SPEC §3 contract), and stays a plain module."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import RTOL, rel_err

import ckd
from ckd.cli import main
from ckd.construction import construct, run_constructed, slots
from ckd.descent import StabilityWarning, default_step, descend
from ckd.kernels import KERNELS, causal_matrices
from ckd.transformer import CausalTransformer

KW = dict(beta=1.5, sigma=0.8)


def sequences(B=3, T=24, d=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=g, dtype=torch.float64) / math.sqrt(d)


def p_slot(hidden, d):
    """Prediction after each layer: the p slot of every residual stream (read-out is the identity there)."""
    return torch.stack([h[..., slots(d)["p"]] for h in hidden])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("tokens", ["augmented", "raw"])
def test_equals_descent_every_depth(kernel, ridge, tokens):
    """Depth 0..8 at once: after l layers the p slot is depth-l CKD (descend(..., return_all=True));
    raw tokens use linear previous-token attention on one-hot positions, which is exact too."""
    x = sequences()
    d = x.shape[-1]
    eta = default_step(causal_matrices(x, kernel, **KW), ridge)
    model = construct(kernel, dim=d, depth=8, step=eta, ridge=ridge, tokens=tokens, max_len=32, **KW)
    with torch.no_grad():
        pred, hidden = model(x, return_hidden=True)
    ref = descend(x, kernel, depth=8, step=eta, ridge=ridge, return_all=True, **KW)
    ckd_layers = hidden[1:] if tokens == "raw" else hidden  # skip the previous-token layer
    got = p_slot(ckd_layers, d)
    assert got.shape == ref.shape
    for depth in range(9):
        assert rel_err(got[depth], ref[depth]) < RTOL or depth == 0 and got[0].abs().max() == 0
    assert rel_err(pred, ref[-1]) < RTOL


@pytest.mark.parametrize("kernel", KERNELS)
def test_run_constructed_default_step_batched(kernel):
    x = sequences(B=4, T=40, d=3, seed=1)
    for depth, ridge in [(0, 0.0), (1, 0.0), (5, 0.2), (8, 0.0)]:
        got = run_constructed(x, kernel=kernel, depth=depth, step=None, ridge=ridge, tokens="augmented", **KW)
        ref = descend(x, kernel, depth=depth, ridge=ridge, **KW)
        if depth == 0:
            assert torch.equal(got, torch.zeros_like(x))
        else:
            assert rel_err(got, ref) < RTOL
        # batching: each sequence alone gives the same rows (same step, given explicitly)
    eta = default_step(causal_matrices(x, kernel, **KW))
    alone = run_constructed(x[2:3], kernel=kernel, depth=4, step=eta, ridge=0.0, tokens="augmented", **KW)
    batched = run_constructed(x, kernel=kernel, depth=4, step=eta, ridge=0.0, tokens="augmented", **KW)
    assert rel_err(alone[0], batched[2]) < 1e-13


@pytest.mark.parametrize("beta", [500.0, 720.0])
def test_exp_large_beta_is_rescaled_exactly(beta):
    """exp(beta x.x') overflows float64 beyond 709.8: the key shift log_scale keeps the
    construction finite and equal to the (rescaled) descent."""
    x = sequences(B=2, T=20, d=3, seed=2)
    x = x / x.norm(dim=-1, keepdim=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        got = run_constructed(x, kernel="exp", beta=beta, sigma=1.0, depth=4, step=None, ridge=0.0, tokens="raw")
        ref = descend(x, "exp", beta=beta, depth=4)
    assert torch.isfinite(got).all() and ref.abs().max() > 0
    assert rel_err(got, ref) < RTOL
    model = construct("exp", dim=3, depth=2, step=1e-300, beta=800.0)  # without log_scale it overflows
    with torch.no_grad():
        assert not torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match="overflows"):
        construct("exp", dim=3, depth=2, step=1e300, beta=800.0, log_scale=800.0)


def test_overflow_is_reported():
    x = sequences(B=2, T=20, d=3, seed=2)
    with pytest.warns(StabilityWarning), pytest.raises(FloatingPointError, match="overflowed"):
        run_constructed(x, kernel="linear", beta=1.0, sigma=1.0, depth=8, step=1e200, ridge=0.0, tokens="augmented")


def test_softmax_previous_token_error_bound():
    """Softmax previous-token attention on one-hot positions copies
    (e^b x_{t-1} + sum_{s <= t, s != t-1} x_s) / (e^b + t): error <= 2 t max|x| / (e^b + t)."""
    x = sequences(B=2, T=30, d=3, seed=3)
    errors = []
    for prev_beta in (4.0, 12.0, 40.0):
        model = construct("linear", dim=3, depth=0, step=0.1, tokens="raw", prev_beta=prev_beta, max_len=30)
        with torch.no_grad():
            copied = model(x, return_hidden=True)[1][1][:, 1:, slots(3)["xprev"]]
        err = (copied - x[:, :-1]).abs().amax(dim=(0, 2))  # per row t = 1..T-1
        t = torch.arange(1, 30, dtype=torch.float64)
        assert (err <= 2 * t * x.abs().max() / (math.exp(prev_beta) + t) * (1 + 1e-12) + 1e-15).all()
        errors.append(float(err.max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-14


def test_sinusoidal_previous_token_is_close():
    x = sequences(B=2, T=50, d=3, seed=4)
    kw = dict(dim=3, depth=3, step=0.2, beta=1.0, tokens="raw", max_len=50, positional="sinusoidal")
    ref = descend(x, "softmax", depth=3, step=0.2)
    errs = []
    for prev_beta in (10.0, 30.0, 60.0):
        with torch.no_grad():
            errs.append(rel_err(construct("softmax", prev_beta=prev_beta, **kw)(x), ref))
    assert errs[0] > errs[1] > errs[2] and errs[2] < RTOL


def test_plain_module_state_dict_float32_and_gradients():
    x = sequences(B=2, T=20, d=3, seed=5)
    eta = default_step(causal_matrices(x, "gaussian", sigma=0.8), 0.1)
    model = construct("gaussian", dim=3, depth=4, step=eta, sigma=0.8, ridge=0.1)
    assert isinstance(model, CausalTransformer) and not model._forward_hooks and not model._forward_pre_hooks
    ref = descend(x, "gaussian", depth=4, step=eta, sigma=0.8, ridge=0.1)
    fresh = CausalTransformer(model.config).double()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rel_err(fresh(x), ref) < RTOL
        m32 = fresh.to(torch.float32)
        out32 = m32(x.float())
    assert out32.dtype == torch.float32 and rel_err(out32.double(), ref) < 1e-5
    loss = (model(x) - x.roll(-1, 1)).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    with torch.no_grad():  # one fine-tuning step changes the function
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert rel_err(model(x).detach(), ref) > 1e-6


def test_bad_input_errors():
    model = construct("softmax", dim=3, depth=2, step=0.1, tokens="raw", max_len=16)
    with pytest.raises(ValueError, match="feature dimension 5 but this transformer was built for dim=3"):
        model(torch.zeros(1, 8, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="sequence length 17 exceeds the positional table"):
        model(torch.zeros(1, 17, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown kernel 'cosine'"):
        construct("cosine", dim=3, depth=1, step=0.1)
    with pytest.raises(ValueError, match="unknown kernel"):
        ckd.predict(np.zeros((5, 2)), "cosine", backend="transformer")
    with pytest.raises(ValueError, match="depth 'inf' needs the descent backend"):
        ckd.predict(np.ones((5, 2)), "exp", depth="inf", backend="transformer")
    with pytest.raises(ValueError, match="sinusoidal positions need softmax"):
        construct("exp", dim=3, depth=1, step=0.1, tokens="raw", positional="sinusoidal")
    for bad in (dict(step=-1.0), dict(depth=-1), dict(ridge=-0.5), dict(sigma=0.0), dict(prev_beta=0.0)):
        with pytest.raises(ValueError):
            construct("gaussian", **{"dim": 3, "depth": 1, "step": 0.1, **bad})


def test_predict_transformer_backend_shapes_and_warning():
    x = sequences(B=1, T=12, d=2, seed=6)[0].numpy()
    got = ckd.predict(x, "softmax", depth=3, backend="transformer", tokens="raw")
    assert isinstance(got, np.ndarray) and got.shape == x.shape
    assert np.abs(got - ckd.predict(x, "softmax", depth=3)).max() < 1e-12
    one = ckd.predict(x[:1], "exp", depth=3, backend="transformer")
    assert np.array_equal(one, np.zeros_like(x[:1]))
    with pytest.warns(StabilityWarning, match="outside the convergence region"):
        ckd.predict(x, "linear", depth=3, step=50.0, backend="transformer")


def test_float32_growth_is_warned_like_the_descent():
    """The non-normal transient (SPEC §2) is measured from the r slot of every layer."""
    x = ckd.make_task("linear", 2, 200, 4, seed=0).x
    for backend in ("descent", "transformer"):
        with pytest.warns(StabilityWarning, match=r"residuals grew by 1.08e\+11"):
            ckd.predict(x, "linear", depth=16, backend=backend, dtype="float32")


def test_cli_transformer_equals_descent(tmp_path, capsys):
    """``ckd predict --backend transformer`` equals ``--backend descent`` for every kernel (float64)."""
    x = sequences(B=2, T=30, d=3, seed=7).numpy()
    np.save(tmp_path / "x.npy", x)
    for kernel in KERNELS:
        outs = {}
        for backend, tokens in [("descent", "augmented"), ("transformer", "augmented"), ("transformer", "raw")]:
            outs[backend, tokens] = tmp_path / f"{kernel}-{backend}-{tokens}.npy"
            argv = (f"predict {tmp_path / 'x.npy'} -o {outs[backend, tokens]} --kernel {kernel} --beta 2 --depth 6 "
                    f"--ridge 0.1 --backend {backend} --tokens {tokens}").split()
            assert main(argv) == 0, capsys.readouterr().err
        ref = torch.from_numpy(np.load(outs["descent", "augmented"]))
        for tokens in ("augmented", "raw"):
            got = torch.from_numpy(np.load(outs["transformer", tokens]))
            assert got.shape == ref.shape and rel_err(got, ref) < RTOL, (kernel, tokens)
    capsys.readouterr()
    bad = tmp_path / "bad.npy"
    assert main(f"predict {tmp_path / 'x.npy'} -o {bad} --backend transformer --depth inf".split()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "depth 'inf' needs the descent backend" in err
    assert not bad.exists()


def test_transformer_backend_default_step_is_exact_when_it_underflows():
    """issue 12, item 12 for the transformer backend: exp with beta = 1e3 on unit vectors, where
    the default step 0.5 e^-1000 underflows as a float: equal to the descent, without a warning."""
    import warnings

    import ckd

    x = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ckd.predict(x, "exp", beta=1e3, depth=4, backend="transformer")
    want = descend(x, "exp", beta=1e3, depth=4)
    assert (want != 0).any() and rel_err(got, want) < 1e-9
