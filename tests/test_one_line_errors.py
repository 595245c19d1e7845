"""One stderr line, always (issue 21, item 9): PyTorch's multi-line weights-only message becomes one
line of our own, an overflow says so without "by nan", and warnings are held until the command has
finished: printed after a success, dropped when an error follows."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error

from ckd.cli import main


class Payload:
    """A pickle that runs code when unpickled (it must never be)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class Marked(type(Path())):
    """A path that also says how its file was written."""

    kind = ""


@pytest.fixture(params=["torch.save", "torch.save protocol 4", "pickle.dump"])
def evil(tmp_path, request):
    path = Marked(tmp_path / "evil.pt")
    state = {"format": "x", "model": Payload(str(tmp_path / "PWNED"))}
    if request.param == "pickle.dump":
        with open(path, "wb") as fh:
            pickle.dump(state, fh, protocol=2)
    else:
        torch.save(state, path, pickle_protocol=4 if "4" in request.param else 2)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((30, 3)))
    path.kind = request.param
    return path


@pytest.mark.parametrize("argv", [
    ["evaluate", "EVIL"], ["predict", "X", "-o", "OUT", "--backend", "checkpoint:EVIL"],
    ["forecast", "X", "-o", "OUT", "--method", "transformer", "--checkpoint", "EVIL"],
    ["forecast", "X", "-o", "OUT", "--horizon", "2", "--method", "transformer", "--checkpoint", "EVIL"],
])
def test_malicious_pickle_checkpoint_is_one_line_of_our_own(tmp_path, evil, capsys, argv):
    names = {"X": str(tmp_path / "x.npy"), "OUT": str(tmp_path / "o.npy")}
    argv = [names.get(a, a.replace("EVIL", str(evil))) for a in argv]
    before = evil.read_bytes()
    assert main(argv) == 2
    line = one_error(capsys, str(evil), "not a ckd training checkpoint", "left as is")
    assert "PyTorch" not in line and "weights_only" not in line
    expected = ("unreadable: Unsupported operand 149" if evil.kind.endswith("4") else  # pickle's FRAME opcode
                "it holds Python objects (posix.mkdir), which are never unpickled")
    assert expected in line, line
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "o.npy").exists()
    assert evil.read_bytes() == before


def test_garbage_checkpoint_is_not_called_a_pickle_of_objects(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"xx not a checkpoint at all")
    assert main(["evaluate", str(bad)]) == 2
    line = one_error(capsys, "corrupted or not a ckd training checkpoint", "unreadable")
    assert "never unpickled" not in line and "PyTorch" not in line


@pytest.mark.parametrize("flags", [["--step", "1e308"], ["--step", "1e200", "--kernel", "linear"],
                                   ["--step", "1e300", "--depth", "40", "--kernel", "gaussian"]])
def test_overflow_is_one_line_without_nan_and_without_the_warning(tmp_path, capsys, flags):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((30, 3)))
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy"), *flags]) == 2
    line = one_error(capsys, "overflowed")
    assert "nan" not in line and "warning" not in line
    assert not (tmp_path / "p.npy").exists()


def test_warnings_are_printed_after_a_success(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((30, 3)))
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy"), "--step", "3", "--depth", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ckd: warning: step 3 is outside the convergence region"), err
    assert np.isfinite(np.load(tmp_path / "p.npy")).all()
