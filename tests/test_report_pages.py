"""Pages that teach (issue #23): every report opens with the run's facts, detection labels stay
inside their picture and apart, figures share one style, epochs tick as whole numbers."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.report.boxes import draw_boxes, place_labels
from cnnlab.report.header import count_checkpoint_params, format_count, run_facts


def _safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file with zero-filled float32 tensors of ``shapes`` (no torch needed)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "lenet5-run"
    run.mkdir()
    config = {"data": "builtin:shapes?n=77", "model": "lenet5", "epochs": 7, "optimizer": "sgd",
              "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle",
              "lr": 0.0375, "batch_size": 48, "image_size": 40, "seed": 11}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    (run / "run.json").write_text(json.dumps({
        "task": "classification", "precision": "bf16-mixed", "inference_precision": "32",
        "device": "cuda:0", "world_size": 1, "cnnlab_version": "9.8.7", "flops_per_image": 1.8e9,
        "stop_reason": "early stopping on val_accuracy",
        "machine": {"cpu_model": "Test CPU 3000", "gpu_name": "NVIDIA H100", "torch_threads": 4,
                    "torch_version": "2.14.1"},
    }))  # fmt: skip
    splits = {"train": [f"t{i}" for i in range(61)], "val": ["v1", "v2"], "test": ["a", "b", "c"]}
    (run / "splits.json").write_text(json.dumps({"splits": splits}))
    (run / "metrics.csv").write_text("epoch,train_loss\n1,2.0\n2,1.5\n3,1.2\n4,1.1\n5,1.0\n")
    _safetensors(
        run / "checkpoints" / "best.safetensors",
        {"conv.weight": [6, 3, 5, 5], "conv.bias": [6], "bn.running_mean": [6],
         "bn.num_batches_tracked": [1], "fc.weight": [10, 6]},
    )  # fmt: skip
    return run


@pytest.mark.slow  # six figures drawn: about 5 s on 2 cores
def test_every_report_opens_with_the_runs_facts(run_dir: Path, tmp_path: Path):
    from cnnlab.metrics import classification_metrics
    from cnnlab.report.html import write_classification_report

    assert count_checkpoint_params(run_dir / "checkpoints" / "best.safetensors") == 516
    rng = np.random.default_rng(0)
    targets = np.array([0, 1, 2, 0, 1, 2])
    probs = rng.dirichlet(np.ones(3), size=6)
    names = ["background", "circle", "square"]
    metrics = classification_metrics(targets, probs, class_names=names)
    path = write_classification_report(tmp_path / "out", metrics, probs, targets, names,
                                       run_dir=run_dir)  # fmt: skip
    page = path.read_text()
    about = page[page.index('id="about"') : page.index("</dl>")]
    assert page.index('id="about"') < page.index("Headline metrics")  # it opens the report
    for text in ("classification", "lenet5", "516 (516)", "1.8 G", "builtin:shapes?n=77",
                 "train 61, val 2, test 3", "40 px", "5 of 7 (early stopping on val_accuracy)",
                 "sgd (momentum 0.9, Nesterov, weight decay 0.0005, onecycle schedule)", "0.0375",
                 "48", "training bf16-mixed, evaluation 32", "cuda:0", "NVIDIA H100, Test CPU 3000, 4 threads",
                 "cnnlab 9.8.7, torch 2.14.1", "11"):  # fmt: skip
        assert f"<dd>{text}</dd>" in about.replace("&amp;", "&"), text
    assert re.search(r"<dt>trained</dt><dd>20\d\d-\d\d-\d\d \d\d:\d\d UTC</dd>", about)
    assert run_facts(None) == {}


def test_the_facts_name_the_augmentations_with_their_strengths(run_dir: Path):
    assert "augmentation" not in run_facts(run_dir)  # run.json without the list: left out
    run = json.loads((run_dir / "run.json").read_text())
    names = ["crop", "randaugment", "jitter", "erasing", "mixup", "cutmix", "flip"]
    (run_dir / "run.json").write_text(json.dumps(run | {"augmentations": names}))
    config = json.loads((run_dir / "config.json").read_text())
    strengths = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "erasing_prob": 0.1,
                 "randaugment_ops": 3, "randaugment_magnitude": 12, "jitter": 0.25}  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config | strengths))
    assert run_facts(run_dir)["augmentation"] == (
        "crop, randaugment (3 ops, magnitude 12), jitter 0.25, erasing (p 0.1), mixup (alpha 0.4), "
        "cutmix (alpha 1), flip"
    )
    (run_dir / "config.json").write_text(json.dumps(config))  # a video run: no strengths recorded
    assert run_facts(run_dir)["augmentation"] == ", ".join(names)
    (run_dir / "run.json").write_text(json.dumps(run | {"augmentations": []}))
    assert run_facts(run_dir)["augmentation"] == "none"


@pytest.mark.slow
def test_segmentation_and_detection_reports_open_with_the_facts(run_dir: Path, tmp_path: Path):
    torch = pytest.importorskip("torch")
    from cnnlab.report.detection_report import write_detection_report
    from cnnlab.report.segmentation_report import write_segmentation_report

    names = ["background", "circle"]
    cm = [[10, 2], [1, 5]]
    per = {n: {"iou": 0.5} for n in names}
    images = np.zeros((1, 3, 16, 16), np.uint8)
    seg = write_segmentation_report(
        tmp_path / "seg", {"confusion_matrix": cm, "per_class": per}, images=images,
        masks=np.zeros((1, 16, 16), np.uint8), preds=np.ones((1, 16, 16), np.uint8), ids=["a"],
        scores=np.array([0.5]), class_names=names, palette=[[0, 0, 0], [200, 0, 0]],
        run_dir=run_dir,
    )  # fmt: skip
    (tmp_path / "det").mkdir()  # the caller's evaluation folder
    boxes = {"boxes": torch.tensor([[1.0, 1, 8, 8]]), "labels": torch.tensor([0])}
    pred = boxes | {"scores": torch.tensor([0.9])}
    det = write_detection_report(
        tmp_path / "det",
        {"per_class": {"circle": dict.fromkeys(("ap", "ap_50", "ar_100", "precision", "recall",
                                                "tp", "fp", "fn"), 0)}},
        images=images, targets=[boxes], preds=[pred], ids=["a"], class_names=["circle"],
        run_dir=run_dir,
    )  # fmt: skip
    for path in (seg, det):
        page = path.read_text()
        assert "<dd>lenet5</dd>" in page and "<dd>train 61, val 2, test 3</dd>" in page
        assert "swatch" in page  # the colour legend of the pictures


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 14), st.integers(0, 10_000))
def test_labels_stay_inside_and_apart_in_a_crowded_picture(count: int, seed: int):
    rng = np.random.default_rng(seed)
    size = 320.0
    # crowded: boxes piled into one corner and along the edges
    x0 = rng.uniform(-10, 60, count)
    y0 = rng.choice([0.0, 2.0, size - 30], count) + rng.uniform(0, 20, count)
    boxes = np.stack([x0, y0, x0 + rng.uniform(5, 60, count), y0 + rng.uniform(5, 40, count)], 1)
    sizes = [(float(rng.uniform(40, 110)), 17.0) for _ in range(count)]
    corners = place_labels(boxes, sizes, (size, size))
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes, strict=True)]
    for x_0, y_0, x_1, y_1 in rects:
        assert 0 <= x_0 and 0 <= y_0 and x_1 <= size and y_1 <= size
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            shared = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
            assert min(shared) <= 0, (a, b)


def test_a_label_goes_above_its_box_when_there_is_room():
    assert place_labels([(50, 60, 100, 120)], [(40, 15)], (320, 320)) == [(50, 45)]
    # at the top edge it moves inside the box rather than off the picture
    assert place_labels([(300, 0, 320, 20)], [(40, 15)], (320, 320)) == [(280, 0)]
    drawn = draw_boxes(np.zeros((64, 64, 3), np.uint8), np.array([[4, 4, 30, 30]]),
                       ["circle 0.91"], [(31, 119, 180)])  # fmt: skip
    assert drawn.shape == (64, 64, 3) and (drawn == (31, 119, 180)).all(-1).any()


def test_figures_share_one_style_and_epochs_tick_whole(tmp_path: Path):
    import matplotlib

    from cnnlab.report.html import confusion_figure, curves_figure
    from cnnlab.report.style import STYLE

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,lr,train_loss,val_loss,val_accuracy\n1,0.1,2,2.1,0.3\n2,0.1,1,1.5,0.5\n"
                   "3,0.1,0.5,1.2,0.6\n")  # fmt: skip
    fig = curves_figure(csv)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert ax.xaxis.label.get_fontsize() == STYLE["axes.labelsize"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["val accuracy"]
    fig = confusion_figure(np.eye(6, dtype=int), ["background", "circle", "square", "triangle",
                                                  "cross", "diamond"], normalize=False)  # fmt: skip
    labels = fig.axes[0].get_xticklabels()
    assert all(t.get_rotation() == 45 for t in labels)  # "backgroundcircle" no more
    fig.canvas.draw()
    spans = [t.get_window_extent() for t in labels]
    assert not any(a.overlaps(b) for a, b in zip(spans, spans[1:], strict=False))
    assert matplotlib.rcParams["font.size"] != 0  # the style is a context, not a global change


@pytest.mark.parametrize(("value", "text"), [(61_100_000, "61.1 M"), (1.8e9, "1.8 G"),
                                             (952, "952"), (15_950, "15.9 k")])  # fmt: skip
def test_format_count(value: float, text: str):
    assert format_count(value) == text


@pytest.mark.parametrize(("model", "kind"), [("lenet5", "fully connected"), ("lenet5_gap", "gap")])
def test_the_explain_page_says_why_its_cams_look_so(model: str, kind: str):
    torch = pytest.importorskip("torch")
    from cnnlab.explain.cam import CamSet, head_kind
    from cnnlab.explain.trace import trace_image
    from cnnlab.models import create_model
    from cnnlab.report.explain_page import why_cams_look_so

    torch.manual_seed(0)
    net = create_model(model, num_classes=3, in_channels=1).eval()
    trace = trace_image(net, torch.randn(1, 1, 32, 32), class_names=["a", "b", "c"])
    head = head_kind(trace)
    assert head.kind == kind
    same = np.outer(np.hanning(32), np.hanning(32)).astype(np.float32)
    cams = CamSet([0, 1], {"gradcam": {0: same, 1: same}}, "features.5", (16, 5, 5), ["a", "b"])
    text = why_cams_look_so(trace, cams, model)
    assert "5 x 5 cells for the 32 x 32 input" in text and "1.00" in text
    if kind == "fully connected":
        assert "16 x 5 x 5 = 400 numbers" in text and "<code>lenet5_gap</code>" in text
    else:
        assert "global average pooling" in text and "Train <code>lenet5_gap" not in text


def _models_at_80_columns(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[str, dict]:
    import io

    from rich.console import Console

    from cnnlab import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, width=80, highlight=False))
    assert cli.main(["models", *argv]) == 0
    text = buffer.getvalue()
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()]
    return text, {c[0]: c for c in cells if c and c[0]}


def test_models_table_fits_80_columns_untruncated(monkeypatch: pytest.MonkeyPatch):
    """Every registered name with the zoo's largest counts (VGG-19 at 224 px): one line each."""
    from cnnlab import cli, models

    names = models.list_models()
    worst = [{"name": n, "family": "googlenet", "year": 2014, "params": 143_678_248,
              "flops": 39_264_124_928, "small_input": False, "paper": "x",
              "group": models.model_info(n)["group"]} for n in names]  # fmt: skip
    monkeypatch.setattr(cli, "_zoo_record", lambda: None)  # the registry asked, not the record
    monkeypatch.setattr(models, "zoo_table", lambda **_: worst)
    text, rows = _models_at_80_columns(monkeypatch)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # no cell shortened
    assert set(names) <= set(rows)  # every name whole, on one line
    assert rows[names[0]][3:] == ["143.7 M", "39.3 G", "no"]  # compact units


@pytest.mark.slow  # builds every model on the meta device: about 10 s on 2 cores
def test_the_real_models_table_fits_80_columns(monkeypatch: pytest.MonkeyPatch):
    from cnnlab.models import list_models

    text, rows = _models_at_80_columns(monkeypatch, "--image-size", "32")
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert set(list_models()) <= set(rows)
    assert re.fullmatch(r"\d+(\.\d)? [kMG]", rows["alexnet"][3])
