"""OUT safety shared by every command (``ckd.io``): never overwrite an input, never replace what is
not a regular file, write through links, respect the umask, check OUT before computing; and
every real dtype of ``.npy`` read (issue 12, items 1, 5, 10, 14)."""

import os
import stat

import numpy as np
import pytest
from conftest import one_error

from ckd import make_task, predict
from ckd.cli import main
from ckd.io import atomic_write, check_output_dir, load_array


@pytest.fixture
def x(tmp_path):
    x = make_task("periodic", 1, 12, 2, seed=0).x[0].numpy()
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    return x




def no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("command", ["predict", "forecast"])
@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink", "csv"])
def test_out_is_in_refused_input_untouched(tmp_path, x, capsys, command, spelling):
    """Item 1: OUT == IN (also through a link or another spelling) is refused; IN keeps its bytes."""
    name = "x.csv" if spelling == "csv" else "x.npy"
    inp = tmp_path / name
    before = inp.read_bytes()
    out = {"same": inp, "dotted": tmp_path / "." / ".." / tmp_path.name / name, "csv": inp,
           "symlink": tmp_path / "link.npy", "hardlink": tmp_path / "hard.npy"}[spelling]
    if spelling == "symlink":
        os.symlink(inp, out)
    if spelling == "hardlink":
        os.link(inp, out)
    assert main([command, str(inp), "-o", str(out)]) == 2
    one_error(capsys, "is the input")
    assert inp.read_bytes() == before and no_temp_files(tmp_path)


@pytest.mark.parametrize("command", ["predict", "forecast"])
def test_out_folder_refused_before_computing(tmp_path, x, capsys, monkeypatch, command):
    """Item 10: an OUT that is an existing folder fails at the start (nothing computed), naming OUT."""
    import ckd.api as pr
    import ckd.forecast as fc

    def boom(*a, **k):
        raise AssertionError("computed before checking OUT")

    monkeypatch.setattr(pr, "predict", boom)
    monkeypatch.setattr(fc, "forecast_details", boom)  # what ckd forecast computes with (looked up in run)
    (tmp_path / "d.npy").mkdir()
    assert main([command, str(tmp_path / "x.npy"), "-o", str(tmp_path / "d.npy")]) == 2
    one_error(capsys, "d.npy: exists and is a folder")
    assert (tmp_path / "d.npy").is_dir() and list((tmp_path / "d.npy").iterdir()) == []


@pytest.mark.parametrize("command", ["predict", "forecast"])
def test_named_pipe_out_refused_not_replaced(tmp_path, x, capsys, command):
    """Item 5: a named pipe called x.npy is refused (never opened, never replaced)."""
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    assert main([command, str(tmp_path / "x.npy"), "-o", str(fifo)]) == 2
    one_error(capsys, "named pipe", "never replaced")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and no_temp_files(tmp_path)


def test_named_pipe_in_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "in.npy"
    os.mkfifo(fifo)
    assert main(["predict", str(fifo), "-o", str(tmp_path / "o.npy")]) == 2
    one_error(capsys, "named pipe")


def test_symlink_out_written_through(tmp_path, x, capsys):
    """Item 5: a link OUT stays a link; the file it points to gets the predictions (and keeps its mode)."""
    real = tmp_path / "real.npy"
    real.write_bytes(b"old")
    os.chmod(real, 0o640)
    link = tmp_path / "link.npy"
    os.symlink(real, link)
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(link), "--depth", "2"]) == 0
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert np.allclose(np.load(real), predict(x, depth=2), rtol=1e-12, atol=0)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    dangling = tmp_path / "dangling.npy"
    os.symlink(tmp_path / "new.npy", dangling)
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(dangling), "--depth", "2"]) == 0
    assert os.path.islink(dangling) and (tmp_path / "new.npy").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_out_respects_umask(tmp_path, x, umask):
    """Item 5: a new OUT has mode 0666 & ~umask, like any file a program creates (not 0600)."""
    old = os.umask(umask)
    try:
        assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy")]) == 0
        atomic_write(tmp_path / "a.bin", lambda fh: fh.write(b"1"))
    finally:
        os.umask(old)
    for name in ("p.npy", "a.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask


def test_unwritable_out_folder_refused_at_start(tmp_path, x, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        assert main(["predict", str(tmp_path / "x.npy"), "-o", str(ro / "p.npy")]) == 2
        one_error(capsys, "no permission")
    finally:
        os.chmod(ro, 0o700)


def test_atomic_write_refuses_non_regular_target(tmp_path):
    os.mkfifo(tmp_path / "f")
    with pytest.raises(ValueError, match="named pipe"):
        atomic_write(tmp_path / "f", lambda fh: fh.write(b"1"))
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="folder"):
        atomic_write(tmp_path / "d", lambda fh: fh.write(b"1"))
    assert no_temp_files(tmp_path)


def test_check_output_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "p")
    with pytest.raises(ValueError, match="a file, not a folder"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(ValueError, match="named pipe, not a folder"):
        check_output_dir(tmp_path / "p")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "f" / "sub")
    assert check_output_dir(tmp_path / "new" / "sub") == tmp_path / "new" / "sub"
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("dtype", [">f8", "<f8", ">f4", np.longdouble, ">i4", "<u2", "|b1", np.float16])
def test_npy_dtypes_read_as_native_numbers(tmp_path, x, dtype):
    """Item 14: big-endian and float128 .npy are valid data: the same predictions as float64."""
    a = (x * 8).round() if np.dtype(dtype).kind in "iub" else x
    a = a > 0 if np.dtype(dtype).kind == "b" else a
    np.save(tmp_path / "a.npy", np.asarray(a).astype(dtype))
    got = load_array(tmp_path / "a.npy")
    assert got.dtype.isnative and got.dtype.itemsize <= 8
    assert np.array_equal(got.astype(np.float64), np.asarray(a).astype(dtype).astype(np.float64))
    assert main(["predict", str(tmp_path / "a.npy"), "-o", str(tmp_path / "p.npy"), "--depth", "2"]) == 0
    ref = predict(np.asarray(a).astype(dtype).astype(np.float64), depth=2)
    assert np.allclose(np.load(tmp_path / "p.npy"), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", ["complex128", ">c16", "datetime64[D]", "timedelta64[s]", "U3", "S3",
                                   "V8", [("a", "<f8"), ("b", "<f8")]])
def test_other_npy_dtypes_one_line_naming_file_and_dtype(tmp_path, capsys, dtype):
    np.save(tmp_path / "a.npy", np.zeros((4, 2), dtype=dtype))
    assert main(["predict", str(tmp_path / "a.npy"), "-o", str(tmp_path / "p.npy")]) == 2
    err = one_error(capsys, "a.npy", "dtype")
    assert str(np.dtype(dtype)) in err or "(" in err
    assert not (tmp_path / "p.npy").exists()


def test_float128_beyond_float64_range_refused(tmp_path, capsys):
    a = np.ones((4, 2), dtype=np.longdouble)
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("longdouble is float64 on this platform")
    a[0, 0] = np.longdouble(10) ** 400
    np.save(tmp_path / "a.npy", a)
    assert main(["predict", str(tmp_path / "a.npy"), "-o", str(tmp_path / "p.npy")]) == 2
    one_error(capsys, "beyond float64")


def test_npz_of_one_array_read_others_refused(tmp_path, x, capsys):
    """A .npz holding exactly one array reads as that array (compressed too, any byte order); none,
    several, object arrays or a damaged archive: one line naming the file."""
    np.savez(tmp_path / "one.npz", seq=x)
    np.savez_compressed(tmp_path / "z.npz", x.astype(">f4"))
    assert np.array_equal(load_array(tmp_path / "one.npz"), x)
    z = load_array(tmp_path / "z.npz")
    assert z.dtype == np.float32 and z.dtype.isnative and np.array_equal(z, x.astype(np.float32))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    np.savez(tmp_path / "none.npz")
    np.savez(tmp_path / "obj.npz", o=np.array([1, None], dtype=object))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 damaged")
    for name, words in [("two.npz", "holds 2 arrays (a, b), expected exactly one"),
                        ("none.npz", "holds 0 arrays, expected exactly one"),
                        ("obj.npz", "array 'o' is not readable"), ("bad.npz", "not a readable .npz archive")]:
        with pytest.raises(ValueError) as err:
            load_array(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and words in str(err.value), err.value
        assert "\n" not in str(err.value)
    assert main(["predict", str(tmp_path / "two.npz"), "-o", str(tmp_path / "p.npy")]) == 2
    one_error(capsys, "two.npz", "holds 2 arrays")
    assert not (tmp_path / "p.npy").exists()
    assert main(["predict", str(tmp_path / "one.npz"), "-o", str(tmp_path / "p.npy")]) == 0
    assert np.load(tmp_path / "p.npy").shape == x.shape
