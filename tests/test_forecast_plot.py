"""``ckd forecast --plot FIG`` (issue 21, items 11 and 12): at most ``MAX_PLOTTED`` coordinates drawn
(said in the title), the figure written atomically to exactly FIG, a name without a suffix refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import one_error

from ckd.cli import main
from ckd.commands.forecast import MAX_PLOTTED

pytest.importorskip("matplotlib")


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head
    return struct.unpack(">II", head[16:24])


def walk(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_many_coordinates_plot_the_first_few_and_say_so(tmp_path, monkeypatch):
    """Item 11: d = 20 draws MAX_PLOTTED panels (the figure's height is theirs), the title names the cap."""
    import matplotlib.figure

    titles = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        titles.append([ax.get_title() for ax in fig.axes])
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    d = 20
    np.save(tmp_path / "in.npy", np.cumsum(np.random.default_rng(0).standard_normal((30, d)), 0))
    fig = tmp_path / "fig.png"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "3",
                 "--method", "last", "--plot", str(fig)]) == 0
    assert len(titles) == 1 and len(titles[0]) == MAX_PLOTTED == 8
    assert f"coordinates 0..{MAX_PLOTTED - 1} of {d} shown" in titles[0][0]
    width, height = png_size(fig)
    assert height == round(120 * (1.8 * MAX_PLOTTED + 0.6)), (width, height)  # dpi 120, 1.8 in per panel
    assert walk(tmp_path) == ["fig.png", "in.npy", "o.npy"]  # no temp file left


def test_few_coordinates_are_all_drawn_without_a_note(tmp_path, monkeypatch):
    np.save(tmp_path / "in.npy", np.cumsum(np.random.default_rng(1).standard_normal((30, 3)), 0))
    fig = tmp_path / "fig.pdf"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "2",
                 "--method", "mean", "--plot", str(fig)]) == 0
    assert fig.read_bytes()[:5] == b"%PDF-"  # the format of the suffix


def test_a_failing_figure_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Item 11: the figure is written to a temp file renamed onto FIG: a write that fails half-way (disk
    full, a kill) never leaves a half-written FIG; the old FIG is kept, no temp file stays, no OUT."""
    import matplotlib.figure

    def broken(fig, fname, *args, **kwargs):
        (open(fname, "wb") if isinstance(fname, str) else fname).write(b"half a figure")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    np.save(tmp_path / "in.npy", np.cumsum(np.random.default_rng(0).standard_normal((30, 2)), 0))
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"the user's old figure")
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "2",
                 "--method", "last", "--plot", str(fig)]) == 2
    one_error(capsys, "No space left on device")
    assert fig.read_bytes() == b"the user's old figure"
    assert walk(tmp_path) == ["fig.png", "in.npy"]


@pytest.mark.parametrize("name", ["fig", "plots.d/fig", "fig.", "fig.xyz"])
def test_plot_name_without_a_known_suffix_is_refused(tmp_path, capsys, name):
    """Item 12: matplotlib would write fig.png for --plot fig; the name must carry its format, else one line."""
    (tmp_path / "plots.d").mkdir()
    np.save(tmp_path / "in.npy", np.cumsum(np.random.default_rng(0).standard_normal((30, 2)), 0))
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "2",
                 "--method", "last", "--plot", str(tmp_path / name)]) == 2
    one_error(capsys, name)
    assert walk(tmp_path) == ["in.npy", "plots.d"] and walk(tmp_path / "plots.d") == []


@pytest.mark.parametrize("same", ["-o", "--report"])
def test_plot_onto_another_output_is_refused(tmp_path, capsys, same):
    np.save(tmp_path / "in.npy", np.cumsum(np.random.default_rng(0).standard_normal((30, 2)), 0))
    target = tmp_path / ("o.png" if same == "-o" else "r.json")
    argv = ["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.png" if same == "-o" else "o.npy"),
            "--horizon", "2", "--method", "last", "--plot", str(target)]
    if same == "--report":
        argv += ["--report", str(target)]
    assert main(argv) == 2
    capsys.readouterr()
    assert walk(tmp_path) == ["in.npy"]
