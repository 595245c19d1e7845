"""The constructed Transformer equals causal kernel descent (SPEC §3 contract), and stays a plain module."""

import math
import warnings

import numpy as np
import pytest
import reference
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


# --------------------------------------------------------------------------- per-row steps (SPEC §10)


def perrow_reference(x: torch.Tensor, kernel: str, depth: int, eta, ridge: float = 0.0, beta: float = 1.0,
                     sigma: float = 1.0) -> np.ndarray:
    """The per-row recursion of SPEC §10, literally: D = diag(eta) (eta_0 unused: row 0 has no key),
    p <- p + D P r, r <- r - D (R r + lambda r). Returns p after 0..depth layers, (depth + 1, B, T, d)."""
    eta = np.asarray(eta, dtype=np.float64).copy()
    eta[0] = 0.0
    D = np.diag(eta)
    out = []
    for xb in x.numpy():
        P, R = reference.matrices(xb, kernel, beta, sigma)
        r = xb.copy()
        r[0] = 0
        p = np.zeros_like(xb)
        ps = [p]
        for _ in range(depth):
            p, r = p + D @ P @ r, r - D @ (R @ r + ridge * r)
            ps.append(p)
        out.append(np.stack(ps))
    return np.stack(out, axis=1)


def ckd_layers(model, x, tokens):
    """p slot after each CKD layer (0..depth), and the output."""
    with torch.no_grad():
        pred, hidden = model(x, return_hidden=True)
    return p_slot(hidden[1:] if tokens == "raw" else hidden, x.shape[-1]).numpy(), pred.numpy()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def per_row_steps(x, kernel, ridge, seed=0):
    """Steps around the default one, different on every row (eta_0 = NaN: unused)."""
    base = default_step(causal_matrices(x, kernel, **KW), ridge)
    g = torch.Generator().manual_seed(seed)
    eta = base * (0.3 + 1.4 * torch.rand(x.shape[1], generator=g, dtype=torch.float64))
    eta[0] = float("nan")
    return eta


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("tokens", ["augmented", "raw"])
def test_per_row_steps_equal_the_plain_loop(kernel, ridge, tokens):
    """construct(step=VECTOR): after l = 1..4 layers the p slot is the per-row recursion, to 1e-12."""
    x = sequences()
    eta = per_row_steps(x, kernel, ridge)
    model = construct(kernel, dim=4, depth=4, step=eta, ridge=ridge, tokens=tokens, **KW)
    assert model.config.row_gain and model.config.max_len == x.shape[1]
    got, pred = ckd_layers(model, x, tokens)
    ref = perrow_reference(x, kernel, 4, eta, ridge, **KW)
    for depth in range(1, 5):
        assert rel(got[depth], ref[depth]) < 1e-12, depth
    assert rel(pred, ref[4]) < 1e-12
    assert rel(ref[4], descend(x, kernel, depth=4, step=float(eta[1:].mean()), ridge=ridge, **KW).numpy()) > 1e-3


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("tokens", ["augmented", "raw"])
def test_position_normalised_attention_runs_eta_c_over_t(kernel, ridge, tokens):
    """construct(attention_norm="keys", step=c): heads that divide their sums by the t keys row t sees
    run CKD with eta_t = c / t (the ridge MLP takes its 1/t from per-row gains), to 1e-12."""
    x = sequences(seed=1)
    T = x.shape[1]
    c = 2.0 * default_step(causal_matrices(x, kernel, **KW), ridge)
    model = construct(kernel, dim=4, depth=4, step=c, ridge=ridge, tokens=tokens, attention_norm="keys",
                      max_len=T, **KW)
    assert model.config.attention_norm == "keys" and model.config.row_gain == (ridge > 0)
    got, pred = ckd_layers(model, x, tokens)
    eta = np.array([0.0] + [c / t for t in range(1, T)])
    ref = perrow_reference(x, kernel, 4, eta, ridge, **KW)
    for depth in range(1, 5):
        assert rel(got[depth], ref[depth]) < 1e-12, depth
    assert rel(pred, ref[4]) < 1e-12
    numerators = eta * np.arange(T)  # per-row numerators c_t: eta_t = c_t / t
    twice = construct(kernel, dim=4, depth=2, step=2 * numerators, ridge=ridge, tokens=tokens,
                      attention_norm="keys", **KW)
    assert rel(ckd_layers(twice, x, tokens)[1], perrow_reference(x, kernel, 2, 2 * eta, ridge, **KW)[2]) < 1e-12


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_constant_vector_is_the_scalar_step(kernel):
    x = sequences(seed=2)
    eta = default_step(causal_matrices(x, kernel, **KW), 0.2)
    vector = torch.full((x.shape[1],), eta, dtype=torch.float64)
    kw = dict(kernel=kernel, depth=4, ridge=0.2, tokens="augmented", **KW)
    one = run_constructed(x, step=eta, **kw)
    rows = run_constructed(x, step=vector, **kw)
    assert rel_err(rows, one) < 1e-13 and rel_err(rows, descend(x, depth=4, step=eta, ridge=0.2, **KW,
                                                                 kernel=kernel)) < 1e-12
    as_list = run_constructed(x, step=vector.tolist(), **kw)
    assert rel_err(as_list, rows) == 0 and rel_err(run_constructed(x, step=vector.numpy(), **kw), rows) == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_run_constructed_per_row_batched(kernel):
    x = sequences(B=4, T=30, d=3, seed=3)
    eta = per_row_steps(x, kernel, 0.1, seed=1)
    got = run_constructed(x, kernel=kernel, depth=3, step=eta, ridge=0.1, tokens="raw", **KW)
    ref = perrow_reference(x, kernel, 3, eta, 0.1, **KW)[3]
    assert got.shape == x.shape and rel(got.numpy(), ref) < 1e-12


def test_per_row_steps_with_the_exp_rescaling():
    """exp with beta = 500 on unit vectors: heads compute exp(beta x.x' - c), the gains hold eta_t e^c."""
    x = sequences(B=2, T=16, d=3, seed=4)
    x = x / x.norm(dim=-1, keepdim=True)
    eta = 0.4 * torch.exp(-500.0 * torch.ones(16, dtype=torch.float64)) * torch.linspace(0.5, 1.5, 16,
                                                                                          dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        got = run_constructed(x, kernel="exp", beta=500.0, sigma=1.0, depth=3, step=eta, ridge=0.0, tokens="augmented")
    ref = perrow_reference(x, "exp", 3, eta, beta=500.0)[3]
    assert np.isfinite(ref).all() and rel(got.numpy(), ref) < 1e-12


def test_per_row_steps_refused_or_warned():
    x = sequences(B=2, T=10, d=3, seed=5)
    kw = dict(kernel="linear", beta=1.0, sigma=1.0, depth=2, ridge=0.0, tokens="augmented")
    with pytest.raises(ValueError, match="length 9 but the sequences have T = 10"):
        run_constructed(x, step=torch.full((9,), 0.1), **kw)
    eta = torch.full((10,), 0.1, dtype=torch.float64)
    for bad, words in [(torch.cat([eta[:3], torch.tensor([-0.1]), eta[4:]]), "finite numbers >= 0"),
                       (torch.cat([eta[:3], torch.tensor([float("inf")]), eta[4:]]), "finite numbers >= 0"),
                       (eta[None], "real vector"), (eta.to(torch.complex128), "real vector"), ("0.1", "number")]:
        with pytest.raises(ValueError, match=words):
            run_constructed(x, step=bad, **kw)
    big = eta.clone()
    big[5] = 50.0
    with pytest.warns(StabilityWarning, match="per-row step eta_t is outside the convergence region"):
        run_constructed(x, step=big, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_constructed(x, step=eta, **kw)  # inside the region: no warning
    with pytest.raises(ValueError, match="per-row steps have length 10 but max_len is 12"):
        construct("linear", dim=3, depth=1, step=eta, max_len=12)
    with pytest.raises(ValueError, match="log_step goes with one step"):
        construct("exp", dim=3, depth=1, step=eta, log_step=-3.0)
    with pytest.raises(ValueError, match="per-row gains"):
        construct("linear", dim=3, depth=1, step=eta)(torch.zeros(1, 11, 3, dtype=torch.float64))


def test_one_head_runs_depth_one_and_biases_stay_zero():
    """heads=1: the prediction head alone is CKD at depth 1 (one gradient step); bias=True adds zero biases."""
    x = sequences(seed=6)
    for kernel in KERNELS:
        eta = default_step(causal_matrices(x, kernel, **KW))
        model = construct(kernel, dim=4, depth=1, step=eta, heads=1, bias=True, ridge=0.1, **KW)
        assert model.config.n_heads == 1 and model.blocks[0].attn.query.weight.shape[0] == 4
        biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
        assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
        with torch.no_grad():
            assert rel_err(model(x), descend(x, kernel, depth=1, step=eta, **KW)) < 1e-12
    with pytest.raises(ValueError, match="1 \\(the prediction head\\) at depth <= 1; got heads=1 at depth 2"):
        construct("linear", dim=3, depth=2, step=0.1, heads=1)
    with pytest.raises(ValueError, match="got heads=3"):
        construct("linear", dim=3, depth=1, step=0.1, heads=3)


def test_row_gain_model_is_a_plain_module():
    """The per-row gains are buffers: in the state_dict, moved by .to(), not trained."""
    x = sequences(B=2, T=12, d=3, seed=7)
    eta = per_row_steps(x, "gaussian", 0.2)
    model = construct("gaussian", dim=3, depth=2, step=eta, ridge=0.2, **KW)
    state = model.state_dict()
    assert {"blocks.0.attn.row_gain", "blocks.0.mlp.row_gain", "blocks.1.attn.row_gain"} <= set(state)
    assert "row_gain" not in " ".join(name for name, _ in model.named_parameters())
    fresh = CausalTransformer(model.config).double()
    fresh.load_state_dict(state)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(fresh(x), want)
        m32 = fresh.to(torch.float32)
        assert m32.blocks[0].attn.row_gain.dtype == torch.float32
        assert rel_err(m32(x.float()).double(), want) < 1e-5
    model(x).square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
