"""Issue 21 (hardening, round two), items 1-6, and the systematic checks of the Python API's argument
types and of the array readers' byte orders x dtypes. Each test names the item it proves."""

import os

import numpy as np
import pytest
from conftest import one_error

from ckd.cli import main
from ckd.io import check_file_target, check_output_dir, load_array

# --------------------------------------------------------------------------- item 2: empty paths

# every file or folder flag of every command; PATH marks the one under test
PATH_FLAGS = [
    ["predict", "PATH", "-o", "p.npy"], ["predict", "x.npy", "-o", "PATH"],
    ["predict", "x.npy", "-o", "p.npy", "--step-file", "PATH"],
    ["forecast", "PATH", "-o", "f.npy"], ["forecast", "x.npy", "-o", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--horizon", "2", "--plot", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--horizon", "2", "--plot", "f.png", "--truth", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--report", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--method", "transformer", "--checkpoint", "PATH"],
    ["train", "--out", "PATH", "--steps", "1"], ["train", "--data", "PATH", "--out", "run"],
    ["train", "--data", "x.npy", "--val-data", "PATH", "--out", "run"],
    ["evaluate", "PATH"], ["evaluate", "--pretrained", "periodic-softmax-2", "--out", "PATH"],
    ["evaluate", "--pretrained", "periodic-softmax-2", "--data", "PATH"],
    ["compare", "PATH", "--data", "x.npy", "--out", "cmp"], ["compare", "x.npy", "--data", "PATH", "--out", "cmp"],
    ["compare", "x.npy", "--data", "x.npy", "--out", "PATH"],
    ["reproduce", "kaczmarz-limit", "--quick", "--out", "PATH"], ["zoo", "build", "--out", "PATH"],
]


@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_paths_are_one_clear_error_nothing_written(tmp_path, monkeypatch, capsys, blank):
    """Item 2: an empty or blank path for any file or folder flag is refused with one line naming the
    flag; nothing is written in the current folder (``ckd train --out ''`` used to train there)."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((12, 2)))
    before = sorted(os.listdir(tmp_path))
    for template in PATH_FLAGS:
        flag = template[template.index("PATH") - 1] if template.index("PATH") > 1 else template[0]
        argv = [blank if a == "PATH" else a for a in template]
        assert main(argv) == 2, argv
        line = one_error(capsys, "empty path")
        assert (flag if flag.startswith("-") else "argument") in line, (argv, line)
        assert sorted(os.listdir(tmp_path)) == before, argv


def test_empty_paths_refused_by_the_python_faces(tmp_path, monkeypatch):
    """Item 2, Python: the io checks and ``ckd.train.train`` refuse an empty or blank path (``Path('')`` is
    the current folder)."""
    from ckd.train import TrainConfig, train

    monkeypatch.chdir(tmp_path)
    for blank in ("", " \t"):
        for check in (load_array, check_output_dir, check_file_target):
            with pytest.raises(ValueError, match="empty path"):
                check(blank)
        with pytest.raises(ValueError, match="empty path"):
            train(TrainConfig(steps=1, batch=2, length=4, dim=2, layers=1), blank, progress=False)
    assert os.listdir(tmp_path) == []
