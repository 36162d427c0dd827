"""Segmentation and detection test-time augmentation (cnnlab.engine.tta: `--tta flip` of
`cnnlab evaluate`, `cnnlab predict`, `cnnlab segment|detect evaluate|predict` on such runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.errors import ConfigError


def _shift_right() -> nn.Conv2d:
    """A model that is not mirror-symmetric: class 0's logit at pixel x is the pixel at x - 1
    (zero padding), class 1's logit is 0 (a (1, 3) cross-correlation kernel [1, 0, 0])."""
    conv = nn.Conv2d(1, 2, kernel_size=(1, 3), padding=(0, 1), bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    return conv


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_flip_averages_the_image_and_its_mirror_mirrored_back():
    """Row [0, 2, -1, 3]. Plain pass: class-0 logits [0, 0, 2, -1] (each pixel's left neighbour).
    Mirror pass, mirrored back: each pixel's right neighbour, [2, -1, 3, 0]. With two classes
    (logit 0 for class 1) P(class 0) = sigmoid(logit), so TTA's P(class 0) is the mean of the two
    sigmoids, worked by hand below."""
    from cnnlab.engine.tta import SegmentTTAModel, average_mask_probs

    model = _shift_right()
    x = torch.tensor([[[[0.0, 2.0, -1.0, 3.0]]]])  # N x C x H x W = 1 x 1 x 1 x 4
    s = _sigmoid
    want0 = [(s(0) + s(2)) / 2, (s(0) + s(-1)) / 2, (s(2) + s(3)) / 2, (s(-1) + s(0)) / 2]
    with torch.no_grad():
        probs = average_mask_probs(model, x, ("flip",))  # 1 x 2 x 1 x 4
        plain = average_mask_probs(model, x, ())
        log_mean = SegmentTTAModel(model, ("flip",))(x)
    np.testing.assert_allclose(probs[0, 0, 0].numpy(), want0, rtol=1e-6)
    np.testing.assert_allclose(probs[0, 1, 0].numpy(), [1 - p for p in want0], rtol=1e-6)
    np.testing.assert_allclose(plain[0, 0, 0].numpy(), [s(0), s(0), s(2), s(-1)], rtol=1e-6)
    torch.testing.assert_close(log_mean.exp(), probs)  # its softmax / exp: the mean again
    assert log_mean.argmax(1)[0, 0].tolist() == [0, 1, 0, 1]  # plain: [0, 0, 0, 1] (ties -> 0)


def test_only_flip_is_a_segmentation_view_and_the_api_says_so():
    from cnnlab.api import _tta_option
    from cnnlab.engine.tta import check_segment_tta

    assert _tta_option("flip", "segmentation", "r") == {"tta": ("flip",)}
    assert _tta_option(None, "segmentation", "r") == {}
    with pytest.raises(ConfigError) as err:
        check_segment_tta(("flip", "crop"))
    assert str(err.value) == (
        "--tta flip,crop: a segmentation run averages per-pixel probabilities over views that "
        "cover every pixel: flip (crop would leave pixels unseen); use --tta flip"
    )
    with pytest.raises(ConfigError, match="--tta shift: a segmentation run"):
        _tta_option("shift", "segmentation", "r")
    for task in ("video-classification",):
        with pytest.raises(
            ConfigError, match=f"classification, segmentation and detection runs; r is a {task}"
        ):
            _tta_option("flip", task, "r")


# -- through a tiny trained run (builtin:shapes, 16 px) ----------------------------------------------
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    from cnnlab.segment import train_segmentation

    out = tmp_path_factory.mktemp("segtta")
    result = train_segmentation(
        data="builtin:shapes?n=24&size=16", out=str(out), name="s", encoder="lenet5",
        image_size=16, epochs=1, batch_size=4, report=False, device="cpu", precision="32",
        val_fraction=0.2, test_fraction=0.25, seed=0,
    )  # fmt: skip
    return result.run_dir


def test_evaluate_reports_without_and_with_and_leaves_the_run(seg_run, run_digests, tmp_path):
    from cnnlab import api

    before = run_digests(seg_run)
    plain = api.evaluate(seg_run, out=tmp_path / "plain", report=False, device="cpu")
    result = api.evaluate(seg_run, out=tmp_path / "tta", report=False, device="cpu", tta="flip")
    assert run_digests(seg_run) == before  # evaluate never rewrites what training recorded
    tta = result["tta"]
    assert tta["views"] == ["flip"] and tta["num_views"] == 2
    assert set(tta["without"]) == {"mean_iou", "mean_dice", "pixel_accuracy",
                                   "frequency_weighted_iou"}  # fmt: skip
    for key in tta["without"]:
        assert tta["without"][key] == pytest.approx(plain["metrics"][key])
        assert tta["with"][key] == pytest.approx(result["metrics"][key])
        assert tta["change"][key] == pytest.approx(tta["with"][key] - tta["without"][key])
    recorded = json.loads((tmp_path / "tta" / "evaluation.json").read_text())
    assert recorded["tta"] == json.loads(json.dumps(tta))
    assert "tta" not in json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    assert (
        json.loads((tmp_path / "tta" / "test_metrics.json").read_text())["tta"] == recorded["tta"]
    )


def test_predict_flip_is_mirror_equivariant(seg_run, tmp_path):
    """The mean of p(x) and mirror(p(mirror x)) is the same for x and for its mirror, mirrored:
    the TTA mask of an image is the mirror of the TTA mask of the mirrored image (16 x 16 images,
    the model's size, so nothing is resized). Without the mirroring back this fails."""
    from cnnlab import api

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "b.png")
    api.predict(seg_run, [tmp_path / "a.png", tmp_path / "b.png"], out=tmp_path / "o",
                device="cpu", tta="flip")  # fmt: skip
    a = np.asarray(Image.open(tmp_path / "o" / "masks" / "a.png"))
    b = np.asarray(Image.open(tmp_path / "o" / "masks" / "b.png"))
    np.testing.assert_array_equal(a, b[:, ::-1])
    assert json.loads((tmp_path / "o" / "predictions.json").read_text())["tta"] == ["flip"]


def test_cli_segment_evaluate_prints_both_and_refuses_crop(seg_run, tmp_path, capsys):
    from cnnlab.cli import main

    argv = ["segment", "evaluate", str(seg_run), "--no-report", "--device", "cpu", "--tta", "flip",
            "--out", str(tmp_path / "e")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "test-time augmentation: flip (2 views)" in printed and "mean iou" in printed
    assert main(["evaluate", str(seg_run), "--tta", "flip,crop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --tta flip,crop: a segmentation run") and "\n" not in err


# -- detection -------------------------------------------------------------------------------------
class _Detector(nn.Module):
    """A fixed detector on 1 x 4 x 10 images (W = 10) that tells the image from its mirror by a
    marker column (x = 0 bright in the original, x = 9 in the mirror) and answers:
    original: a class-0 box [1, 2, 4, 6] (score 0.9);
    mirror:   a class-0 box [6, 2, 9, 6] (0.8; mirrored back [1, 2, 4, 6], the same box),
              a class-1 box [6, 2, 9, 6] (0.7; back [1, 2, 4, 6], another class: kept),
              a class-0 box [0, 0, 2, 2] (0.6; back [8, 0, 10, 2], seen only in the mirror)."""

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            if image[0, 0, 0] > image[0, 0, -1]:  # the original
                boxes, scores, labels = [[1, 2, 4, 6]], [0.9], [0]
            else:
                boxes = [[6, 2, 9, 6], [6, 2, 9, 6], [0, 0, 2, 2]]
                scores, labels = [0.8, 0.7, 0.6], [0, 1, 0]
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "scores": torch.tensor(scores), "labels": torch.tensor(labels)})  # fmt: skip
        return out


def test_detection_flip_mirrors_boxes_back_and_merges_by_class():
    """Hand-worked: the mirror's class-0 box maps back onto the original's (IoU 1, the lower
    score 0.8 is suppressed), its class-1 box at the same place stays (NMS is per class), and the
    box only the mirror saw comes back at x1 = 10 - 2 = 8, x2 = 10 - 0 = 10."""
    from cnnlab.engine.tta import DetectTTAModel, mirror_boxes

    assert mirror_boxes(torch.tensor([[6.0, 2, 9, 6]]), 10).tolist() == [[1, 2, 4, 6]]
    x = torch.zeros(1, 1, 4, 10)
    x[..., 0] = 1.0  # the marker column: the original
    (got,) = DetectTTAModel(_Detector(), ("flip",))(x)
    assert got["boxes"].tolist() == [[1, 2, 4, 6], [1, 2, 4, 6], [8, 0, 10, 2]]
    assert got["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert got["labels"].tolist() == [0, 1, 0]


def test_detection_refuses_views_that_cannot_map_back():
    from cnnlab.api import _tta_option

    assert _tta_option("flip", "detection", "r") == {"tta": ("flip",)}
    with pytest.raises(ConfigError) as err:
        _tta_option("flip,crop", "detection", "r")
    assert str(err.value) == (
        "--tta flip,crop: a detection run merges the boxes of views it can map back exactly: flip "
        "(crop would rescale or cut boxes); use --tta flip"
    )


class _OneBox(nn.Module):
    """A fixed detector: one class-0 box [1, 2, 4, 6] (score 0.9) on every image. On a 16 px
    image the mirror's box comes back at [12, 2, 15, 6]: no overlap, so flip keeps both."""

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": torch.tensor([[1.0, 2, 4, 6]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([0])} for _ in images]  # fmt: skip


def test_detect_predict_says_on_every_row_that_its_boxes_merge_the_mirrors(tmp_path, monkeypatch):
    """`cnnlab predict RUN --tta flip` on a detection run merged each image's boxes with its
    mirror's, but predictions.json did not say so (segmentation's predictions.json and serve's
    answers say "tta": ["flip"]). The file is a COCO results list, so every row says it; without
    TTA no row has the key."""
    import cnnlab.detect as detect

    meta = {
        "preprocess": {"image_size": 16, "in_channels": 1, "mean": [0.5], "std": [0.5]},
        "class_names": ["square"], "score_threshold": 0.5,
    }  # fmt: skip
    monkeypatch.setattr(
        detect, "load_detection_model", lambda run, dev: (_OneBox(), meta, tmp_path / "w")
    )
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(tmp_path / "a.png")
    rows = {}
    for tta in (None, "flip"):
        out = tmp_path / f"out-{tta}"
        path = detect.predict_detection("run", [tmp_path / "a.png"], out, device="cpu",
                                        draw=False, tta=tta)  # fmt: skip
        rows[tta] = json.loads(path.read_text())
    assert [r["bbox"] for r in rows[None]] == [[1, 2, 3, 4]]  # x, y, w, h
    assert all("tta" not in r for r in rows[None])
    assert sorted(r["bbox"] for r in rows["flip"]) == [[1, 2, 3, 4], [12, 2, 3, 4]]  # merged
    assert [r["tta"] for r in rows["flip"]] == [["flip"], ["flip"]]


@pytest.mark.slow  # trains a detector: seconds
def test_detection_evaluate_reports_without_and_with(tmp_path, run_digests):
    from cnnlab import api
    from cnnlab.detect import train_detection

    result = train_detection(
        data="builtin:shapes?n=16&size=64&objects=2", epochs=1, batch_size=4, val_fraction=0.0,
        test_fraction=0.25, out=str(tmp_path / "runs"), device="cpu", report=False,
    )  # fmt: skip
    before = run_digests(result.run_dir)
    plain = api.evaluate(result.run_dir, out=tmp_path / "p", report=False, device="cpu")
    got = api.evaluate(result.run_dir, out=tmp_path / "t", report=False, device="cpu", tta="flip")
    assert run_digests(result.run_dir) == before
    tta = got["tta"]
    assert set(tta["without"]) == {"map", "map_50", "map_75", "mar_100"}
    for key, value in tta["without"].items():
        assert value == pytest.approx(plain["metrics"][key])
        assert tta["with"][key] == pytest.approx(got["metrics"][key])
    recorded = json.loads((tmp_path / "t" / "evaluation.json").read_text())
    assert recorded["tta"] == json.loads(json.dumps(tta))


@pytest.mark.slow  # an ONNX export: seconds
def test_onnx_segment_predict_applies_the_same_flip(seg_run, tmp_path):
    """An exported .onnx file is called like the model (cnnlab.engine.onnx), so the same
    SegmentTTAModel wraps it: the masks equal the PyTorch run's."""
    from cnnlab import api
    from cnnlab.export import export_model

    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    onnx = export_model(seg_run, format="onnx", out=tmp_path / "model.onnx").path
    api.predict(onnx, [tmp_path / "a.png"], out=tmp_path / "o", tta="flip")
    api.predict(seg_run, [tmp_path / "a.png"], out=tmp_path / "p", device="cpu", tta="flip")
    got = np.asarray(Image.open(tmp_path / "o" / "masks" / "a.png"))
    want = np.asarray(Image.open(tmp_path / "p" / "masks" / "a.png"))
    np.testing.assert_array_equal(got, want)
