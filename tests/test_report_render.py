"""The report's figures drawn by worker processes (what training does, so the drawing overlaps the
test evaluation) are the figures drawn in place: the same files, byte for byte, and the same page.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnlab.report import render


def _report_inputs(run: Path) -> dict:
    """A classification report's inputs from the session run: its test predictions, metrics,
    calibration record and metrics.csv (the training curves)."""
    from cnnlab.metrics import classification_metrics
    from cnnlab.metrics.stats import headline_intervals

    with np.load(run / "test_predictions.npz") as z:
        probs, targets, ids = z["probs"].astype(np.float64), z["targets"], z["ids"].tolist()
    names = json.loads((run / "classes.json").read_text())
    metrics = classification_metrics(targets, probs, class_names=names)
    metrics["confidence_intervals"] = headline_intervals(targets, probs, seed=0)
    return dict(
        metrics=metrics, probs=probs, targets=targets, class_names=names, ids=ids, run_dir=run,
        calibration=json.loads((run / "calibration.json").read_text()),
    )  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # two reports of seven figures: about 5 s on 2 busy cores
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
@pytest.mark.filterwarnings("ignore::cnnlab.metrics.UndefinedMetricWarning")  # a 1-epoch run
def test_worker_drawn_report_is_the_report_drawn_in_place(run: Path, tmp_path: Path):
    from cnnlab.report.html import write_classification_report

    inputs = _report_inputs(run)
    workers = render.WorkerRenderer(2)
    try:
        drawn = write_classification_report(tmp_path / "workers", **inputs, renderer=workers)
    finally:
        workers.close()
    in_place = write_classification_report(tmp_path / "in_place", **inputs)
    assert drawn.name == in_place.name == "report.html"
    a, b = _files(tmp_path / "workers"), _files(tmp_path / "in_place")
    for files in (a, b):  # the minute each page was written (the two can straddle a minute)
        files["report.html"] = re.sub(
            rb"<dt>report written</dt><dd>[^<]*</dd>", b"", files["report.html"]
        )
    figures = {f"figures/{n}.png" for n in (
        "confusion_matrix", "confusion_matrix_normalized", "roc", "pr", "reliability",
        "training_curves", "reliability_calibration")}  # fmt: skip
    assert set(a) == set(b) == {"report.html"} | figures
    assert [k for k in a if a[k] != b[k]] == []  # every PNG and the page, byte for byte
    page = a["report.html"].decode()
    for section in ("Headline metrics", "Per class", "Calibration and out-of-domain check",
                    "training curves", "reliability diagram"):  # fmt: skip
        assert section in page
    assert page.count("data:image/png;base64,") == len(figures)


def test_a_job_submitted_twice_is_drawn_once(tmp_path: Path):
    """Training submits the curves as soon as training ends; the report's own submission shares
    that job. Arguments that cannot be hashed (arrays) are never taken for the same job."""
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_loss,val_accuracy\n1,1.0,1.1,0.5\n2,0.5,0.7,0.8\n")
    renderer = render.Renderer()
    first = renderer.submit("curves", csv)
    assert renderer.submit("curves", tmp_path / "metrics.csv") is first
    assert first.result().startswith(b"\x89PNG")
    cm = np.array([[2, 1], [0, 3]])
    assert renderer.submit("confusion", cm, ["a", "b"], False) is not renderer.submit(
        "confusion", cm, ["a", "b"], False
    )
    assert render.Renderer().submit("curves", tmp_path / "missing.csv").result() is None


def test_renderer_choice(monkeypatch):
    """Workers only where they pay: a Linux process that has not imported matplotlib."""
    assert type(render.start_renderer(0)) is render.Renderer
    monkeypatch.setitem(sys.modules, "matplotlib", sys.modules.get("matplotlib", object()))
    assert type(render.start_renderer()) is render.Renderer  # matplotlib loaded: in place
    monkeypatch.delitem(sys.modules, "matplotlib")
    monkeypatch.setattr(render, "WorkerRenderer", lambda n: ("workers", n))
    monkeypatch.setattr(render.sys, "platform", "linux")
    assert render.start_renderer() == ("workers", render.WORKERS)
    monkeypatch.setitem(sys.modules, "ipykernel", object())  # a notebook: in place
    assert type(render.start_renderer()) is render.Renderer
    monkeypatch.delitem(sys.modules, "ipykernel")
    monkeypatch.setattr(render.sys, "platform", "darwin")  # fork is unsafe on macOS
    assert type(render.start_renderer()) is render.Renderer


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_workers_stop_when_closed():
    renderer = render.WorkerRenderer(2)
    processes = list(renderer._pool._processes.values())  # forked at once (a fork context)
    assert len(processes) == 2 and os.getpid() not in {p.pid for p in processes}
    drawn = renderer.submit("confusion", np.array([[3, 1], [0, 2]]), ["a", "b"], True).result()
    renderer.close()
    in_place = render.Renderer().submit("confusion", np.array([[3, 1], [0, 2]]), ["a", "b"], True)
    assert drawn[:4] == b"\x89PNG" and drawn == in_place.result()  # byte for byte
    for p in processes:
        p.join(timeout=30)
        assert not p.is_alive()


@pytest.mark.slow  # two short trainings: about 10 s on 2 busy cores
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
@pytest.mark.filterwarnings("ignore::cnnlab.metrics.UndefinedMetricWarning")  # a 1-epoch run
def test_training_with_report_workers_writes_the_run_it_writes_in_place(
    mixed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The same seeded run trained twice, its figures drawn by workers and in place: the same
    files in the run folder and the same figures, byte for byte."""
    from cnnlab import api
    from cnnlab.tasks.classify import train

    made = []
    for name, start in (
        ("workers", lambda: render.WorkerRenderer(2)),
        ("in_place", render.Renderer),
    ):
        monkeypatch.setattr(
            train, "start_renderer", lambda start=start: made.append(start()) or made[-1]
        )
        api.train(data=str(mixed_folder), model="lenet5", epochs=1, batch_size=8, precision="32",
                  out=str(tmp_path), name=name)  # fmt: skip
    assert [type(r) for r in made] == [render.WorkerRenderer, render.Renderer]
    runs = {n: _files(tmp_path / n) for n in ("workers", "in_place")}
    assert set(runs["workers"]) == set(runs["in_place"])
    figures = sorted(k for k in runs["workers"] if k.startswith("figures/"))
    assert len(figures) == 7  # calibration included: the folder has a validation split
    assert [f for f in figures if runs["workers"][f] != runs["in_place"][f]] == []


def _blocks(png: bytes, n: int = 8) -> np.ndarray:
    """Grey levels (0-255) of a PNG averaged over n x n blocks: what the eye sees of it."""
    import io

    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    h, w = grey.shape[0] // n * n, grey.shape[1] // n * n
    return grey[:h, :w].reshape(h // n, n, w // n, n).mean((1, 3))


@pytest.mark.parametrize(
    "kind, args",
    [
        # cut out of one drawing
        (
            "roc",
            (
                np.array([0, 1, 2, 1]),
                np.eye(3)[[0, 2, 2, 1]] * 0.8 + 0.066,
                ["a", "b", "c"],
                {"a": 1.0, "b": 0.5, "c": 0.75},
            ),
        ),  # fmt: skip
        # slanted names outside the canvas: savefig draws the measured box
        (
            "confusion",
            (np.array([[4, 1], [0, 5]]), ["background class", "a long class name"], True),
        ),  # fmt: skip
    ],
)
def test_a_figure_drawn_once_is_what_savefig_tight_draws(kind: str, args: tuple, tmp_path: Path):
    """png_bytes draws a figure once where savefig(bbox_inches="tight") draws it twice, and shows
    the same: the same size in pixels and, in 8 x 8 blocks, the same picture (a sub-pixel offset
    of the antialiased edges differs by at most about 30 grey levels in a block; a figure moved
    by 2 pixels differs by 45 or more, a missing label by more)."""
    import io
    from unittest import mock

    from matplotlib.figure import Figure

    from cnnlab.report.html import DPI, FIGURES, png_bytes

    reference = io.BytesIO()
    FIGURES[kind](*args).savefig(reference, format="png", dpi=DPI, bbox_inches="tight")
    draws = []
    draw = Figure.draw
    with mock.patch.object(Figure, "draw", lambda f, r: draws.append(r) or draw(f, r)):
        ours = png_bytes(FIGURES[kind](*args))
    assert len(draws) == 1
    a, b = _blocks(reference.getvalue()), _blocks(ours)
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 36
