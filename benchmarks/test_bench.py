"""pytest-benchmark versions of the headline measurements (``benchmarks/perf.py`` is the full suite).

    pytest benchmarks/test_bench.py --benchmark-only --benchmark-columns=median,min,rounds

Not collected by the project's test run (``testpaths = ["tests"]``); nothing here asserts a time.
"""

import math
import warnings

import pytest
import torch

import ckd
from ckd.kernels import KERNELS, causal_matrices

B, T, D, N = 16, 512, 8, 16


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, T, D, generator=g, dtype=torch.float64) / math.sqrt(D)


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ckd.StabilityWarning)
        yield


@pytest.mark.parametrize("kernel", KERNELS)
def test_floor(benchmark, x, kernel):
    """P and R once, then 2N batched products: the floor of depth-N CKD."""
    def floor():
        mats = causal_matrices(x, kernel)
        for _ in range(N):
            torch.bmm(mats.P, x)
            torch.bmm(mats.R, x)
    benchmark(floor)


@pytest.mark.parametrize("kernel", KERNELS)
def test_predict_descent(benchmark, x, kernel):
    benchmark(ckd.predict, x, kernel, depth=N)


@pytest.mark.parametrize("kernel", KERNELS)
def test_predict_transformer(benchmark, x, kernel):
    benchmark(ckd.predict, x, kernel, depth=N, backend="transformer")


@pytest.mark.parametrize("kernel", KERNELS)
def test_streaming_push_at_1024(benchmark, x, kernel):
    """One push after 1024 tokens (the state is copied back each round so t stays at 1024)."""
    seq = x[0].repeat(3, 1)[:1025]
    s = ckd.Streaming(kernel, dim=D, ridge=1e-6 if kernel == "linear" else 0.0, capacity=4096)
    for x_t in seq[:1024]:
        s.push(x_t)
    state = dict(vars(s))

    def push():
        vars(s).update(state)
        return s.push(seq[1024])
    benchmark(push)


@pytest.mark.parametrize("kernel", KERNELS)
def test_recompute_prefix_1024(benchmark, x, kernel):
    benchmark(ckd.predict, x[0, :1025], kernel, depth="inf", ridge=1e-6 if kernel == "linear" else 0.0)
