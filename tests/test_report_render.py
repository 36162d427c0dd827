"""The report's figures drawn by worker processes (what training does, so the drawing overlaps the
test evaluation) are the figures drawn in place: the same files, byte for byte, and the same page.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
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
        assert p.exitcode == 0  # a worker that drew is let finish and exit


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_workers_never_given_a_figure_are_stopped_not_waited_for():
    """A run stopped by an error, or one without a report: its workers may still be importing
    pyplot (0.8 s), so they are killed rather than waited for."""
    renderer = render.WorkerRenderer(2)
    processes = list(renderer._pool._processes.values())
    renderer.close()
    for p in processes:
        p.join(timeout=30)
        assert p.exitcode == -signal.SIGKILL


@pytest.mark.slow  # two short trainings: about 10 s on 2 busy cores
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
@pytest.mark.filterwarnings("ignore::cnnlab.metrics.UndefinedMetricWarning")  # a 1-epoch run
def test_training_with_report_workers_writes_the_run_it_writes_in_place(
    mixed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The same seeded run trained twice, its figures drawn by workers and in place: the same
    files in the run folder and the same figures, byte for byte."""
    from cnnlab import api

    made = []
    for name, start in (
        ("workers", lambda: render.WorkerRenderer(2)),
        ("in_place", render.Renderer),
    ):
        monkeypatch.setattr(
            render, "start_renderer", lambda start=start: made.append(start()) or made[-1]
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


def _task_report_inputs(folder: Path) -> tuple[dict, dict]:
    """Keyword arguments of a segmentation and a detection report: two classes, one 16 px test
    image, and a run folder with a metrics.csv (the training curves)."""
    import torch

    folder.mkdir()
    (folder / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_miou\n1,1.0,1.1,0.4\n2,0.6,0.8,0.6\n"
    )
    names = ["background", "circle"]
    images = np.zeros((1, 3, 16, 16), np.uint8)
    seg = dict(
        metrics={"confusion_matrix": [[10, 2], [1, 5]],
                 "per_class": {n: {"iou": 0.5} for n in names}},
        images=images, masks=np.zeros((1, 16, 16), np.uint8),
        preds=np.ones((1, 16, 16), np.uint8), ids=["a"], scores=np.array([0.5]),
        class_names=names, palette=[[0, 0, 0], [200, 0, 0]], run_dir=folder,
    )  # fmt: skip
    boxes = {"boxes": torch.tensor([[1.0, 1, 8, 8]]), "labels": torch.tensor([0])}
    row = dict.fromkeys(("ap", "ar_100", "precision", "recall", "tp", "fp", "fn"), 0) | {
        "ap_50": 0.75
    }
    curve = {"recall": np.linspace(0, 1, 101).tolist(), "precision": [1.0] * 50 + [0.5] * 51}
    det = dict(
        metrics={"per_class": {"circle": row}, "pr_curves": {"circle": curve}},
        images=images, targets=[boxes], preds=[boxes | {"scores": torch.tensor([0.9])}],
        ids=["a"], class_names=["circle"], run_dir=folder,
    )  # fmt: skip
    return seg, det


class _Recording(render.Renderer):
    """Keeps the kinds of the jobs it is given and answers each with stand-in PNG bytes
    (what is drawn is compared with the worker-drawn figures in the slow test below)."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []

    def _start(self, kind, args):
        from concurrent.futures import Future

        self.kinds.append(kind)
        future: Future = Future()
        future.set_result(b"\x89PNG stand-in for " + kind.encode())
        return future


def test_segmentation_and_detection_figures_go_through_the_renderer(tmp_path: Path, caplog):
    """Their figures are Renderer jobs of the FIGURES registry (so training's workers can draw
    them while the test split is scored), embedded in the page and written beside it; `-v`
    (INFO) says how long the page waited for them."""
    caplog.set_level("INFO", logger="cnnlab.report.html")
    from cnnlab.report.detection_report import write_detection_report
    from cnnlab.report.segmentation_report import write_segmentation_report

    seg, det = _task_report_inputs(tmp_path / "run")
    for write, kwargs, kinds, files in (
        (write_segmentation_report, seg, ["confusion", "curves"],
         ["figures/confusion_matrix_normalized.png", "figures/training_curves.png"]),
        (write_detection_report, det, ["detection_pr", "curves"],
         ["pr_curves.png", "curves.png"]),
    ):  # fmt: skip
        renderer = _Recording()
        out = tmp_path / kinds[0]
        out.mkdir()
        page = write(out, **kwargs, renderer=renderer).read_text()
        assert renderer.kinds == kinds
        for file in files:
            data = (out / file).read_bytes()
            assert data.startswith(b"\x89PNG stand-in for ")
            assert base64.b64encode(data).decode() in page  # the page embeds what it wrote
    said = [r.getMessage() for r in caplog.records]
    for kind in ("segmentation", "detection"):
        assert any(
            re.fullmatch(rf"{kind} report: \d+\.\d\d s waiting for the figures \(drawn in "
                         r"place\), \d+\.\d\d s writing the page", m)
            for m in said
        ), said  # fmt: skip


@pytest.mark.slow  # two worker processes drawing four figures: about 4 s on 2 busy cores
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_worker_drawn_segmentation_and_detection_reports_are_those_drawn_in_place(
    tmp_path: Path,
):
    from cnnlab.report.detection_report import write_detection_report
    from cnnlab.report.segmentation_report import write_segmentation_report

    seg, det = _task_report_inputs(tmp_path / "run")
    workers = render.WorkerRenderer(2)
    try:
        for name, write, kwargs in (("seg", write_segmentation_report, seg),
                                    ("det", write_detection_report, det)):  # fmt: skip
            for how, renderer in (("workers", workers), ("in_place", None)):
                (tmp_path / how / name).mkdir(parents=True)
                write(tmp_path / how / name, **kwargs, renderer=renderer)
    finally:
        workers.close()
    a, b = _files(tmp_path / "workers"), _files(tmp_path / "in_place")
    for files in (a, b):  # the minute each page was written (the two can straddle a minute)
        for page in ("seg/report.html", "det/report.html"):
            files[page] = re.sub(rb"<dt>report written</dt><dd>[^<]*</dd>", b"", files[page])
    assert sorted(a) == sorted(b) == sorted([
        "seg/report.html", "seg/figures/confusion_matrix_normalized.png",
        "seg/figures/training_curves.png", "det/report.html", "det/pr_curves.png",
        "det/curves.png",
    ])  # fmt: skip
    assert [k for k in a if a[k] != b[k]] == []  # every PNG and the pages, byte for byte


def test_training_curves_panels_keep_apart_with_long_tick_labels(tmp_path: Path):
    """The curves figure's fixed layout (no constrained layout to pay for) leaves room for
    the right panel's tick labels and y label: with 7-character ticks they stay clear of the
    left panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cnnlab.report.html import curves_figure

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_loss,val_accuracy\n" + "".join(
        f"{e},{2 / e},{2.2 / e},{0.99 + e / 10000:.6f}\n" for e in range(1, 9)
    ))  # fmt: skip
    fig = curves_figure(csv)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # places the axis labels
    renderer = canvas.get_renderer()
    left, right = fig.axes
    labels = [t for t in right.get_yticklabels() if t.get_text()]
    assert max(len(t.get_text()) for t in labels) >= 6  # "0.9905", the control's width
    left_box = left.get_window_extent(renderer)
    for artist in [*labels, right.yaxis.label]:
        box = artist.get_window_extent(renderer)
        assert box.x0 > left_box.x1, artist.get_text()


@pytest.mark.parametrize("fails", [False, True])
def test_fit_closes_the_renderer_a_task_started_once_its_evaluation_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
):
    """The renderer a task's prepare starts travels in its Plan; the fit shell closes it once,
    after the test evaluation that draws with it, also when that evaluation raises."""
    from cnnlab import api
    from cnnlab.tasks.classify import train

    events: list[str] = []

    class Closing(render.Renderer):
        def close(self) -> None:
            events.append("close")

    def scored(*args, renderer, **kwargs):
        events.append("evaluate with " + type(renderer).__name__)
        if fails:
            raise RuntimeError("scoring failed")
        return {"metrics": {"accuracy": 1.0}, "report": None}

    monkeypatch.setattr(render, "start_renderer", Closing)
    monkeypatch.setattr(train, "evaluate_model", scored)
    options = {"data": "builtin:shapes?n=100&size=16", "model": "lenet5", "epochs": 1,
               "batch_size": 8, "precision": "32", "out": str(tmp_path)}  # fmt: skip
    if fails:
        with pytest.raises(RuntimeError, match="scoring failed"):
            api.train(**options)
    else:
        assert api.train(**options).test_metrics == {"accuracy": 1.0}
    assert events == ["evaluate with Closing", "close"]


# `cnnlab train` forks the workers before it imports torch (render.start_early), so their own start
# (pyplot, a first figure) runs on the core torch's import leaves idle, not beside training.
EARLY_PROBE = """
import json, sys
from cnnlab.report import render  # torch-free; renderer_for calls the wrappers below
seen = {}
start_early, start_renderer = render.start_early, render.start_renderer
def early():
    seen["torch at start_early"] = "torch" in sys.modules
    start_early()
    seen["workers"] = sorted(p.pid for p in render._EARLY._pool._processes.values())
def renderer(*a):
    r = start_renderer(*a)
    seen["early one used"] = sorted(p.pid for p in r._pool._processes.values()) == seen["workers"]
    return r
render.start_early, render.start_renderer = early, renderer
from cnnlab.cli import main
seen["code"] = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
"""


def _early_probe(tmp_path: Path, *argv: str) -> dict:
    import subprocess

    from cli_process import SRC, TIMEOUT

    result = tmp_path / "seen.json"
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", EARLY_PROBE, str(result), *argv],
        capture_output=True, text=True, env=env, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(result.read_text())
    for pid in seen.get("workers", []):  # stopped with the run (gone, or a zombie not yet reaped)
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()
    return seen


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
@pytest.mark.filterwarnings("ignore::cnnlab.metrics.UndefinedMetricWarning")
def test_cnnlab_train_forks_the_report_workers_before_importing_torch(
    mixed_folder: Path, tmp_path: Path
):
    train = ("train", "--data", str(mixed_folder), "--model", "lenet5", "--epochs", "1",
             "--batch-size", "8", "--out", str(tmp_path))  # fmt: skip
    seen = _early_probe(tmp_path, *train, "--name", "r")
    assert seen["code"] == 0 and seen["torch at start_early"] is False
    assert len(seen["workers"]) == render.WORKERS and seen["early one used"] is True
    assert len(list((tmp_path / "r" / "figures").glob("*.png"))) == 7
    # no test split, so no report: the early workers are stopped, none started for the run
    seen = _early_probe(tmp_path, *train, "--name", "no-test", "--test-fraction", "0")
    assert seen["code"] == 0 and len(seen["workers"]) == render.WORKERS
    assert "early one used" not in seen and not (tmp_path / "no-test" / "report.html").exists()
    # --no-report: none forked
    seen = _early_probe(tmp_path, *train, "--name", "plain", "--no-report")
    assert seen["code"] == 0 and "workers" not in seen and "torch at start_early" not in seen


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
@pytest.mark.filterwarnings("ignore::cnnlab.metrics.UndefinedMetricWarning")
def test_cnnlab_segment_train_forks_the_report_workers_before_importing_torch(tmp_path: Path):
    seen = _early_probe(
        tmp_path, "segment", "train", "--data", "builtin:shapes?n=30&size=16", "--encoder",
        "lenet5", "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--out",
        str(tmp_path), "--name", "seg",
    )  # fmt: skip
    assert seen["code"] == 0 and seen["torch at start_early"] is False
    assert seen["early one used"] is True and (tmp_path / "seg" / "report.html").is_file()
