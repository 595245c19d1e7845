"""``ckd.Streaming``: token-by-token infinite-depth CKD equals the rows of the batch solve."""

import numpy as np
import pytest
import torch
from conftest import RTOL, rel_err
from test_descent import OPTS
from test_descent import _x as _unit_x

import ckd
from ckd import Streaming
from ckd.kernels import KERNELS


def _stream(x: torch.Tensor, kernel: str, **opts) -> torch.Tensor:
    s = Streaming(kernel, dim=x.shape[-1], **opts)
    return torch.stack([s.push(x_t) for x_t in x])


def _batch(x: torch.Tensor, kernel: str, **opts) -> torch.Tensor:
    return ckd.predict(x, kernel, depth="inf", **opts)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_streaming_equals_batch_infinite_depth(kernel, ridge):
    x = _unit_x(B=1, T=40, d=3)[0] * 1.3
    opts = dict(OPTS[kernel], ridge=ridge)
    assert rel_err(_stream(x, kernel, capacity=3, **opts), _batch(x, kernel, **opts)) < RTOL


@pytest.mark.parametrize("kernel", ["linear", "exp", "softmax", "gaussian"])
def test_streaming_equals_batch_on_a_task(kernel):
    """Gaussian tokens (not unit norm), a periodic task: predictions become accurate and equal the batch."""
    x = ckd.make_task("periodic-gaussian", 1, 60, 4, seed=3).x[0]
    opts = {"beta": 2.0, "sigma": 1.5, "ridge": 1e-3 if kernel == "linear" else 0.0}
    assert rel_err(_stream(x, kernel, **opts), _batch(x, kernel, **opts)) < RTOL


@pytest.mark.parametrize("beta", [400.0, 2000.0])
def test_streaming_exp_large_beta_rescales_exactly(beta):
    """Weights up to e^beta (e^2000 overflows float64): alphas kept times exp(max log-weight so far)."""
    x = _unit_x(B=1, T=25, d=3)[0]
    stream, batch = _stream(x, "exp", beta=beta), _batch(x, "exp", beta=beta)
    assert torch.isfinite(stream).all() and rel_err(stream, batch) < RTOL


def test_softmax_large_beta_rows_are_normalised_exactly():
    x = _unit_x(B=1, T=30, d=3)[0] * 10
    assert rel_err(_stream(x, "softmax", beta=50.0), _batch(x, "softmax", beta=50.0)) < RTOL


def test_first_push_is_zero_types_reset_and_len():
    x = _unit_x(B=1, T=12, d=2)[0]
    s = Streaming("gaussian", dim=2)
    first = s.push(x[0].numpy())
    assert isinstance(first, np.ndarray) and first.shape == (2,) and (first == 0).all()
    rest = [s.push(x_t) for x_t in x[1:]]
    assert isinstance(rest[0], torch.Tensor) and len(s) == 12
    s.reset()
    assert len(s) == 0
    again = _stream(x, "gaussian")
    assert torch.equal(torch.stack([s.push(x_t) for x_t in x]), again)


def test_bad_token_is_a_clear_error_and_leaves_the_state_unchanged():
    x = _unit_x(B=1, T=10, d=3)[0]
    s = Streaming("exp", dim=3)
    preds = [s.push(x_t) for x_t in x[:5]]
    with pytest.raises(ValueError, match="shape"):
        s.push(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        s.push([1.0, float("nan"), 0.0])
    with pytest.raises(TypeError):
        s.push(["a", "b", "c"])
    preds += [s.push(x_t) for x_t in x[5:]]
    assert rel_err(torch.stack(preds), _batch(x, "exp")) < RTOL
    with pytest.raises(ValueError, match="dim"):
        Streaming("exp", dim=0)
    with pytest.raises(ValueError, match="unknown kernel"):
        Streaming("cosine", dim=3)


def test_zero_token_is_skipped_like_the_batch():
    """A zero token x_2 with the linear kernel: R[3, 3] = 0 and its columns are 0, so alpha_3 = 0
    (as ``ckd.predict``), the limit of a vanishing ridge; with a ridge, the batch too."""
    x = _unit_x(B=1, T=6, d=2)[0]
    x[2] = 0
    assert rel_err(_stream(x, "linear"), _batch(x, "linear")) < RTOL
    assert rel_err(_stream(x, "linear"), _batch(x, "linear", ridge=1e-12)) < 1e-9
    assert rel_err(_stream(x, "linear", ridge=1e-3), _batch(x, "linear", ridge=1e-3)) < RTOL


def test_float32_streaming_is_close_to_float64():
    x = _unit_x(B=1, T=30, d=3)[0]
    p32 = _stream(x.float(), "gaussian", dtype=torch.float32)
    assert p32.dtype == torch.float32 and rel_err(p32.double(), _batch(x, "gaussian")) < 1e-3


def test_token_whose_square_overflows_is_refused_like_the_batch():
    s = Streaming("linear", dim=2)
    s.push(np.ones(2))
    with pytest.raises(ValueError, match="input too large.*rescale it"):
        s.push(np.array([1e200, 0.0]))
    assert len(s) == 1  # the bad token was not added
