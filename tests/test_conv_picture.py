"""`cnnlab conv` on a photograph: a picture of x, w and y, a handful of explained positions and
a summary that fits on one screen (issue #23: 5,463 printed lines for a small image before)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal
from cli_process import ok
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.explain.conv import EXPLAIN_HANDFUL, pick_positions, run_example, run_lab

EDGES = "-1 -1 -1; -1 8 -1; -1 -1 -1"  # the Laplacian-like edge kernel


@pytest.fixture(scope="module")
def china(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 427 x 640 sample photograph, saved as PNG."""
    datasets = pytest.importorskip("sklearn.datasets")
    path = tmp_path_factory.mktemp("photo") / "china.png"
    Image.fromarray(datasets.load_sample_image("china.jpg")).save(path)
    return path


def test_conv_on_a_photo_writes_its_picture_and_prints_under_60_lines(
    china: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("COLUMNS", "80")  # a plain terminal; the subprocess inherits it
    proc = ok("conv", "--x", str(china), "--w", EDGES, "--explain", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert len(lines) < 60, proc.stdout
    assert "427 x 640" in proc.stdout and "425 x 638" in proc.stdout
    assert f"explained {EXPLAIN_HANDFUL} of 271,150 output positions" in proc.stdout
    assert "271,144 left out" in proc.stdout
    picture = tmp_path / "china_conv.png"
    assert picture.is_file() and f"{picture.name}" in proc.stdout
    with Image.open(picture) as im:
        assert im.format == "PNG" and im.width > 800


def test_the_picture_shows_the_input_the_kernel_and_their_feature_map(tmp_path):
    from cnnlab.report.conv_figure import conv_figure, write_conv_figure

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (23, 31), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "noise.png")
    kernel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]])
    result = run_lab(str(tmp_path / "noise.png"), kernel, op="correlation", explain=True)
    fig = conv_figure(result)
    x_ax, w_ax, y_ax = fig.axes[:3]
    shown_y = np.asarray(y_ax.images[0].get_array())
    np.testing.assert_allclose(
        shown_y, scipy.signal.correlate2d(pixels / 255.0, kernel, mode="valid"), atol=1e-12
    )
    np.testing.assert_allclose(np.asarray(x_ax.images[0].get_array()), pixels / 255.0)
    np.testing.assert_array_equal(np.asarray(w_ax.images[0].get_array()), kernel)
    # every explained position is numbered on the feature map
    labels = {t.get_text() for t in y_ax.texts}
    assert {str(i) for i in range(1, len(result.steps) + 1)} <= labels
    path = write_conv_figure(result, tmp_path / "out.png")
    with Image.open(path) as im:
        assert im.format == "PNG"


def test_lecture_examples_keep_their_full_tables():
    assert len(run_example("image").steps) == 9
    assert len(run_example("hospital").steps) == 7
    big = run_lab(np.arange(100).reshape(10, 10), "1 0; 0 1", explain=True)
    assert len(big.steps) == EXPLAIN_HANDFUL and big.steps_total == 81
    assert "left out" in big.left_out()
    small = run_lab(np.arange(36).reshape(6, 6), "1 0; 0 1", explain=True)  # 25 positions
    assert len(small.steps) == 25 and small.left_out() is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-50, 50), min_size=1, max_size=60),
    st.one_of(st.none(), st.integers(1, 70)),
)
def test_pick_positions(values: list[int], count: int | None):
    y = np.array(values)
    picked = pick_positions(y, count)
    expected = len(y) if count is None else min(count, len(y))
    assert len(picked) == expected == len(set(picked.tolist()))
    assert np.all(np.diff(picked) > 0)  # output order
    if count is not None and count >= 3:  # the strongest and the weakest are always shown
        assert y[picked].max() == y.max() and y[picked].min() == y.min()
    assert picked[0] == 0 or expected == 0


def test_the_picture_path_said_is_the_file_written(tmp_path):
    """`cnnlab conv --x photo.png --out FOLDER` wrote FOLDER.png beside the folder and said FOLDER;
    `--out pic.txt` was matplotlib's ValueError as a traceback; `--out new/pic.png` said
    "new/pic.png: not found". Now the file written is the one said, and a bad suffix is one line."""
    from cli_process import in_process

    from cnnlab.errors import ConfigError
    from cnnlab.report.conv_figure import write_conv_figure

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").save(tmp_path / "p.png")
    result = run_lab(str(tmp_path / "p.png"), "1 1; 1 1")
    folder = tmp_path / "pictures"
    folder.mkdir()
    assert write_conv_figure(result, folder) == folder / "p_conv.png"
    assert not (tmp_path / "pictures.png").exists()
    assert write_conv_figure(result, tmp_path / "bare") == tmp_path / "bare.png"
    assert write_conv_figure(result, tmp_path / "new" / "pic.png").is_file()
    for path in (folder / "p_conv.png", tmp_path / "bare.png"):
        with Image.open(path) as im:
            assert im.format == "PNG"
    with pytest.raises(ConfigError, match=r"--out .*pic\.txt: cannot draw a \.txt picture"):
        write_conv_figure(result, tmp_path / "pic.txt")
    assert not (tmp_path / "pic.txt").exists()
    out = tmp_path / "cli"
    out.mkdir()
    proc = in_process("conv", "--x", str(tmp_path / "p.png"), "--w", "1 1; 1 1", "--out", str(out))
    assert proc.returncode == 0 and str(out / "p_conv.png") in proc.stdout, proc.stdout
    bad = tmp_path / "pic.txt"
    proc = in_process("conv", "--x", str(tmp_path / "p.png"), "--w", "1 1; 1 1", "--out", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: --out {bad}: cannot draw a .txt picture"), proc.stderr
