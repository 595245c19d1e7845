"""Shared test settings: float64 everywhere, deterministic, bounded hypothesis runs."""

import os

import torch
from hypothesis import settings

settings.register_profile("ckd", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ckd"))
torch.set_num_threads(min(2, torch.get_num_threads()))

RTOL = 1e-9  # the project's exactness standard in float64 (DEVELOPERS.md)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|b|, tiny): relative error over a whole array."""
    scale = b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)
    return float((a - b).abs().max() / scale)


def one_error(capsys, *words) -> str:
    """The CLI's promise on bad input: exactly one stderr line 'ckd: error: ...', no traceback,
    holding every one of ``words``. Returns that line."""
    err = capsys.readouterr().err
    assert err.startswith("ckd: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the CLI fuzz suite (tests/test_fuzz.py) 20 times bigger")


def pytest_configure(config):
    if config.getoption("--fuzz-long", default=False):
        os.environ["CKD_FUZZ_LONG"] = "1"  # read by tests/test_fuzz.py when it is collected
