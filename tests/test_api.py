import math
import warnings

import numpy as np
import pytest
import torch
from conftest import RTOL, rel_err
from reference import ckd

import ckd as lib
from ckd import StabilityWarning, make_task, predict
from ckd.baselines import analogues, kernel_ridge
from ckd.kernels import KERNELS


@pytest.fixture
def x():
    return make_task("periodic", 3, 17, 4, period=5, seed=0).x


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("depth", [0, 1, 4, "inf"])
@pytest.mark.parametrize("ridge", [0.0, 0.2])
def test_predict_matches_definition_batched_and_unbatched(x, kernel, depth, ridge):
    step = 0.2
    out = predict(x, kernel, beta=2.0, sigma=0.7, depth=depth, step=step, ridge=ridge)
    for b in range(x.shape[0]):
        alone = predict(x[b].numpy(), kernel, beta=2.0, sigma=0.7, depth=depth, step=step, ridge=ridge)
        assert isinstance(alone, np.ndarray) and alone.shape == (17, 4)
        assert rel_err(torch.from_numpy(alone), out[b]) < RTOL
        if depth != "inf":
            ref = ckd(x[b].numpy(), kernel, depth, step, ridge, beta=2.0, sigma=0.7)
            assert np.allclose(alone, ref, rtol=0, atol=RTOL * max(1e-300, np.abs(ref).max()))


def test_types_shapes_and_dtypes(x):
    out = predict(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == torch.float64
    arr = predict(x.numpy().tolist()[0])
    assert isinstance(arr, np.ndarray) and arr.shape == (17, 4)
    f32 = predict(x.numpy(), "softmax", depth=3, dtype="float32")
    assert f32.dtype == np.float32
    assert np.allclose(f32, predict(x.numpy(), "softmax", depth=3), atol=1e-5)
    assert predict(x, depth=math.inf).shape == x.shape
    assert predict(x, depth="3").shape == x.shape
    assert (predict(x[:, :1]) == 0).all()  # one token: nothing to learn from


def test_default_step_is_over_the_batch(x):
    """SPEC §4: step None means 0.5 / max_t (R[t,t] + lambda) over the batch."""
    x = x * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)[:, None, None]
    eta = 0.5 / (4.0 * 1.0 + 0.1)  # linear kernel: max R[t,t] = max |x|^2 = 4 for the second sequence
    assert rel_err(predict(x, "linear", depth=3, ridge=0.1)[0],
                   torch.from_numpy(ckd(x[0].numpy(), "linear", 3, eta, 0.1))) < RTOL


BAD = [
    (np.array([[1.0, np.nan]] * 3), {}, ValueError, "NaN or inf"),
    (np.array([[1.0, np.inf]] * 3), {}, ValueError, "NaN or inf"),
    (np.ones(5), {}, ValueError, "shape"),
    (np.ones((1, 2, 3, 4)), {}, ValueError, "shape"),
    (np.ones((0, 3)), {}, ValueError, "empty"),
    (np.array([["a", "b"]]), {}, TypeError, "numeric"),
    (np.ones((4, 2)) * 1j, {}, TypeError, "real"),
    (np.ones((4, 2)), {"kernel": "cosine"}, ValueError, "unknown kernel"),
    (np.ones((4, 2)), {"backend": "gpu"}, ValueError, "unknown backend"),
    (np.ones((4, 2)), {"tokens": "raw"}, ValueError, "transformer backend only"),
    (np.ones((4, 2)), {"backend": "transformer", "depth": "inf"}, ValueError, "descent backend"),
    (np.ones((4, 2)), {"depth": -1}, ValueError, "depth"),
    (np.ones((4, 2)), {"depth": 2.5}, ValueError, "depth"),
    (np.ones((4, 2)), {"depth": "deep"}, ValueError, "depth"),
    (np.ones((4, 2)), {"step": -0.1}, ValueError, "step"),
    (np.ones((4, 2)), {"step": float("nan")}, ValueError, "step"),
    (np.ones((4, 2)), {"ridge": -1.0}, ValueError, "ridge"),
    (np.ones((4, 2)), {"sigma": 0.0}, ValueError, "sigma"),
    (np.ones((4, 2)), {"dtype": "float16"}, ValueError, "dtype"),
]


@pytest.mark.parametrize("data,kwargs,error,match", BAD)
def test_bad_input_is_one_clear_error(data, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        predict(data, **kwargs)
    assert "\n" not in str(info.value)


def test_step_outside_region_warns_but_runs(x):
    with pytest.warns(StabilityWarning, match="convergence region"):
        out = predict(x, "gaussian", depth=2, step=3.0)
    assert np.isfinite(out.numpy()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(x, "gaussian", depth=2, step=1.0)


def test_input_is_not_modified(x):
    before = x.clone()
    predict(x, "exp", depth=3)
    assert torch.equal(x, before)


def test_public_names():
    for name in ("predict", "descend", "causal_matrices", "make_task", "KERNELS", "StabilityWarning"):
        assert hasattr(lib, name)


# issue 12, item 11: every entry point refuses these through ckd.validation, with one line
BAD_API = [
    (lambda x: predict(torch.empty(4, 2, device="meta")), TypeError, "meta tensor"),
    (lambda x: predict(x[0].to_sparse()), TypeError, "dense"),
    (lambda x: predict(x, memory_budget="1e9"), TypeError, "memory_budget must be a number"),
    (lambda x: predict(x, memory_budget=math.inf), ValueError, "memory_budget must be finite"),
    (lambda x: predict(x, memory_budget=0), ValueError, "memory_budget must be > 0"),
    (lambda x: predict(x, memory_budget=-1.0), ValueError, "memory_budget must be > 0"),
    (lambda x: predict(x, beta="2"), TypeError, "beta must be a number"),
    (lambda x: predict(x, depth=True), ValueError, "depth"),
    (lambda x: predict(x, depth=2**70), ValueError, "depth must be <="),
    (lambda x: make_task("linear", -1, 5, 2), ValueError, "batch must be >= 1"),
    (lambda x: make_task("linear", 2, 0, 2), ValueError, "length must be >= 1"),
    (lambda x: make_task("linear", 2, 5, 2.5), ValueError, "dim must be an integer"),
    (lambda x: make_task("linear", "2", 5, 2), TypeError, "batch must be an integer"),
    (lambda x: make_task("periodic", 2, 5, 2, period=0), ValueError, "period must be >= 1"),
    (lambda x: make_task("linear", 2, 5, 2, noise=-1.0), ValueError, "noise must be >= 0"),
    (lambda x: make_task("linear", 2, 5, 2, seed=2**70), ValueError, "seed must be <="),
    (lambda x: make_task("spiral", 2, 5, 2), ValueError, "unknown task"),
    (lambda x: lib.Streaming("exp", dim=2, beta=math.nan), ValueError, "beta must be finite"),
    (lambda x: analogues(x, k=0), ValueError, "k must be >= 1"),
    (lambda x: kernel_ridge(x, ridge="0.1"), TypeError, "ridge must be a number"),
    (lambda x: predict(np.ones((4, 2)) * 1e200), ValueError, "input too large.*rescale it"),
    (lambda x: predict(np.ones((4, 2)) * 1e20, dtype="float32"), ValueError, "input too large"),
]


@pytest.mark.parametrize("call,error,match", BAD_API)
def test_api_bad_input_is_one_clear_error(x, call, error, match):
    with pytest.raises(error, match=match) as info:
        call(x)
    assert "\n" not in str(info.value)


def test_validation_is_one_module_reexported_by_api():
    """The checks live in ckd.validation; ckd.api re-exports the old names (issue 12)."""
    import ckd.api
    import ckd.forecast
    import ckd.streaming
    import ckd.validation as v

    for name in ("as_batch", "as_dtype", "check_number", "parse_depth", "check_options", "DTYPES"):
        assert getattr(ckd.api, name) is getattr(v, name)
    assert ckd.streaming.check_number is v.check_number and ckd.forecast.as_batch is v.as_batch


def test_big_endian_and_extended_precision_arrays_are_converted():
    x = np.random.default_rng(0).normal(size=(6, 2))
    want = predict(x, depth=3)
    assert np.array_equal(predict(x.astype(">f8"), depth=3), want)
    assert np.allclose(predict(x.astype(np.longdouble), depth=3), want, rtol=1e-12, atol=0)
