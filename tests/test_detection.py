"""Detection: COCO metrics against pycocotools, label formats end to end, label checks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.boxes import BoxReport, check_boxes, load_box_source, map_boxes, unmap_boxes
from cnnlab.errors import ConfigError, DataError
from cnnlab.metrics.detection import detection_metrics
from cnnlab.runs_table import read_run


# -- metrics vs pycocotools ------------------------------------------------------------------------
def _cocoeval(gt: list[dict], dt: list[dict], k: int) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' own COCOeval on xyxy tensors: (stats (12,), per-class AP (K,))."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (g, d) in enumerate(zip(gt, dt, strict=True)):
        images.append({"id": i})
        for b, lab in zip(g["boxes"].tolist(), g["labels"].tolist(), strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": lab, "iscrowd": 0,
                         "bbox": [b[0], b[1], w, h], "area": w * h})  # fmt: skip
        for b, lab, s in zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist(),
                             strict=True):  # fmt: skip
            dets.append({"image_id": i, "category_id": lab, "score": s,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})  # fmt: skip
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c} for c in range(k)]}  # fmt: skip
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # T x R x K, area all, 100 dets
    per_class = np.array([prec[:, :, c][prec[:, :, c] > -1].mean() for c in range(k)])
    return ev.stats, per_class


def test_map_agrees_with_pycocotools_cocoeval() -> None:
    rng = np.random.default_rng(0)
    k, gt, dt = 3, [], []
    for _ in range(8):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(8, 30, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, k, n)
        # predictions: jittered true boxes (some misses), a duplicate, and random false positives
        keep = rng.random(n) > 0.25
        pb = boxes[keep] + rng.normal(0, 3, (keep.sum(), 4))
        pl = labels[keep].copy()
        pl[rng.random(len(pl)) < 0.15] = rng.integers(0, k)  # some wrong classes
        dup = pb[:1] + 1.0
        fp_xy = rng.uniform(0, 60, (2, 2))
        fps = np.concatenate([fp_xy, fp_xy + 10], 1)
        pb = np.concatenate([pb, dup, fps])
        pl = np.concatenate([pl, pl[:1], rng.integers(0, k, 2)])
        ps = rng.uniform(0.05, 1.0, len(pb))
        gt.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                   "labels": torch.tensor(labels)})  # fmt: skip
        dt.append({"boxes": torch.tensor(pb, dtype=torch.float32), "labels": torch.tensor(pl),
                   "scores": torch.tensor(ps, dtype=torch.float32)})  # fmt: skip
    # pycocotools reads float32 boxes the same way torchmetrics hands them over
    stats, per_class = _cocoeval(gt, dt, k)
    m = detection_metrics(dt, gt, [f"c{i}" for i in range(k)])
    assert m["map"] == pytest.approx(stats[0], abs=1e-6)
    assert m["map_50"] == pytest.approx(stats[1], abs=1e-6)
    assert m["map_75"] == pytest.approx(stats[2], abs=1e-6)
    assert m["mar_1"] == pytest.approx(stats[6], abs=1e-6)
    assert m["mar_100"] == pytest.approx(stats[8], abs=1e-6)
    for c in range(k):
        assert m["per_class"][f"c{c}"]["ap"] == pytest.approx(per_class[c], abs=1e-6)
    assert 0 < m["map"] < m["map_50"] < 1  # duplicates/misses/FPs make it imperfect


def test_more_than_100_detections_score_as_cocoeval_does_without_a_warning() -> None:
    """COCO counts an image's 100 highest-scoring detections (ssdlite keeps 300): torchmetrics
    warned about it in the middle of training output."""
    rng = np.random.default_rng(1)
    boxes = np.concatenate([xy := rng.uniform(0, 50, (4, 2)), xy + 12], 1)
    gt = [{"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([0, 1, 0, 1])}]
    pb = np.concatenate([boxes + rng.normal(0, 1, (4, 4)), rng.uniform(0, 50, (150, 4))])
    pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)  # x1 > x0, y1 > y0
    dt = [{"boxes": torch.tensor(pb, dtype=torch.float32),
           "labels": torch.tensor(rng.integers(0, 2, len(pb))),
           "scores": torch.tensor(rng.uniform(0, 1, len(pb)), dtype=torch.float32)}]  # fmt: skip
    stats, _ = _cocoeval(gt, dt, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = detection_metrics(dt, gt, ["a", "b"])
    assert m["map"] == pytest.approx(stats[0], abs=1e-6)


def test_precision_recall_at_iou_05_by_hand() -> None:
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
           "labels": torch.tensor([0, 0])}]  # fmt: skip
    # one hit (IoU 0.81), one duplicate of it, one box on nothing; the second true box is missed
    dt = [{"boxes": torch.tensor([[0.0, 0, 9, 9], [0, 0, 10, 9], [40, 40, 50, 50]]),
           "labels": torch.tensor([0, 0, 0]), "scores": torch.tensor([0.9, 0.8, 0.7])}]  # fmt: skip
    m = detection_metrics(dt, gt, ["a"])
    row = m["per_class"]["a"]
    assert (row["tp"], row["fp"], row["fn"]) == (1, 2, 1)
    assert row["precision"] == pytest.approx(1 / 3)
    assert row["recall"] == pytest.approx(1 / 2)


# -- label checks ----------------------------------------------------------------------------------
def test_check_boxes_drops_and_clips() -> None:
    rep = BoxReport()
    boxes = np.array([
        [0, 0, 10, 10],  # fine
        [5, 5, 5, 9],  # zero width
        [np.nan, 0, 4, 4],  # NaN
        [-0.5, 1, 10, 100.5],  # tiny overshoot -> clipped
        [50, 50, 150, 90],  # far outside a 100 x 100 image
    ], dtype=float)  # fmt: skip
    kept, labels = check_boxes(boxes, np.arange(5), 100, 100, where="x.jpg", report=rep)
    assert labels.tolist() == [0, 3]
    np.testing.assert_allclose(kept[1], [0, 1, 10, 100])
    assert len(rep.dropped_boxes) == 3 and rep.clipped_boxes == 1
    reasons = " ".join(d["reason"] for d in rep.dropped_boxes)
    assert "non-positive" in reasons and "NaN" in reasons and "outside" in reasons


def test_map_boxes_round_trip() -> None:
    rng = np.random.default_rng(1)
    boxes = np.sort(rng.uniform(0, 80, (6, 4)).reshape(6, 2, 2), axis=1).transpose(0, 2, 1)
    boxes = boxes.reshape(6, 4)[:, [0, 2, 1, 3]]  # x1 y1 x2 y2 with x1<x2, y1<y2
    for mode in ("fit", "stretch"):
        there = map_boxes(boxes, 120, 80, 64, mode)
        np.testing.assert_allclose(unmap_boxes(there, 120, 80, 64, mode), boxes, atol=1e-3)


def _image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> None:
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _coco_dataset(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp / "images").mkdir()
    images = []
    for i in range(5):
        _image(tmp / "images" / f"{i}.png", rng)
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": 48, "height": 40})
    images.append({"id": 99, "file_name": "missing.png", "width": 48, "height": 40})
    anns = [{"id": j, "image_id": 10 + j % 4, "category_id": [3, 7][j % 2], "iscrowd": 0,
             "bbox": [4 + j, 5, 20, 15]} for j in range(6)]  # fmt: skip
    anns += [
        {"id": 50, "image_id": 1234, "category_id": 3, "bbox": [0, 0, 5, 5]},  # unknown image
        {"id": 51, "image_id": 10, "category_id": 3, "bbox": [0, 0, -5, 5]},  # negative width
        {"id": 52, "image_id": 11, "category_id": 7, "bbox": [0, 0, None, 5]},  # NaN
        {"id": 53, "image_id": 12, "category_id": 7, "bbox": [200, 200, 5, 5]},  # outside
    ]
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}  # fmt: skip
    path = tmp / "instances.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_label_checks(tmp_path: Path) -> None:
    from cnnlab.config import PreprocessSpec
    from cnnlab.data.boxes import decode_box_split

    bundle = load_box_source(str(_coco_dataset(tmp_path)), val_fraction=0, test_fraction=0)
    rep = bundle.report
    assert bundle.class_names == ["cat", "dog"] and bundle.category_ids == [3, 7]
    assert rep.category_map == {"3": 0, "7": 1}
    assert [a["image_id"] for a in rep.skipped_annotations] == [1234]
    assert [s["reason"] for s in rep.skipped_images] == ["file not found"]
    spec = PreprocessSpec(64, 3, (0.0,) * 3, (1.0,) * 3, "fit", {})
    _, targets, ids, rep = decode_box_split(bundle.splits["train"], spec, rep)
    assert len(rep.dropped_boxes) == 3
    assert rep.background_images == 1  # image 14 has no annotation
    assert sum(len(t["labels"]) for t in targets) == 6


def _voc_dataset(tmp: Path) -> Path:
    rng = np.random.default_rng(1)
    (tmp / "Annotations").mkdir(parents=True)
    (tmp / "JPEGImages").mkdir()
    for i in range(5):
        _image(tmp / "JPEGImages" / f"im{i}.jpg", rng)
        name = ["car", "person"][i % 2]
        (tmp / "Annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename><size><width>48</width>"
            f"<height>40</height></size><object><name>{name}</name><difficult>0</difficult>"
            f"<bndbox><xmin>{3 + i}</xmin><ymin>4</ymin><xmax>30</xmax><ymax>28</ymax></bndbox>"
            "</object></annotation>"
        )
    return tmp


def _yolo_dataset(tmp: Path) -> Path:
    rng = np.random.default_rng(2)
    for sub in ("images", "labels"):
        (tmp / sub).mkdir(parents=True)
    for i in range(5):
        _image(tmp / "images" / f"p{i}.png", rng)
        (tmp / "labels" / f"p{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.{3 + i}\n")
    (tmp / "data.yaml").write_text("path: .\nnames:\n  0: red\n  1: blue\n")
    return tmp


def test_no_training_box_left_is_refused_and_a_class_without_one_is_said(
    tmp_path: Path, caplog
) -> None:
    """YOLO labels written in pixels (a common slip) drop every box as 'outside the image': the
    run used to train on background images only and end with rc 0. Now one error names the
    first dropped box and the YOLO convention, before anything is written."""
    from cnnlab.detect import train_detection

    root = _yolo_dataset(tmp_path / "px")
    for i in range(5):  # 48 x 40 images: the same boxes, in pixels
        (root / "labels" / f"p{i}.txt").write_text(f"{i % 2} 24 20 19.2 {4 * (3 + i)}\n")
    runs = tmp_path / "runs"
    with pytest.raises(DataError) as err:
        train_detection(data=str(root), image_size=64, epochs=1, batch_size=2, out=str(runs),
                        val_fraction=0.0, test_fraction=0.0, device="cpu")  # fmt: skip
    reason = err.value.reason
    assert err.value.path == str(root) and "no box left in the training split's 5 images" in reason
    assert "5 box(es) dropped" in reason and "outside the 48x40 image" in reason
    assert "first dropped: " + str(root / "images" / "p0.png") in reason
    assert "fractions (0..1)" in reason and not runs.exists()
    # a class with boxes only outside the training split: trained, with a warning naming it
    ok = _yolo_dataset(tmp_path / "one")
    for i in range(5):
        (ok / "labels" / f"p{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    bundle = load_box_source(str(ok), val_fraction=0, test_fraction=0)
    from cnnlab.config import PreprocessSpec
    from cnnlab.data.boxes import check_training_boxes, decode_box_split

    spec = PreprocessSpec(32, 3, (0.0,) * 3, (1.0,) * 3, "fit", {})
    _, targets, _, rep = decode_box_split(bundle.splits["train"], spec, bundle.report)
    with caplog.at_level("WARNING", logger="cnnlab.data.boxes"):
        counts = check_training_boxes(targets, bundle, rep)
    assert counts["objects"] == [5, 0]
    assert "no training box for class(es) blue" in caplog.text


def test_skipped_images_are_limited_by_max_bad_fraction_and_strict(tmp_path: Path) -> None:
    """bad-inputs.md B, as classification, video and segmentation: detection skipped corrupt
    images without a limit. 1 of 5 (a PNG cut in half) is over the default 10 %: refused, naming
    the count, the fraction and the file; under a raised limit it trains, the image listed in
    data_report.json and absent from splits.json; --strict refuses it whatever the limit."""
    from cnnlab.detect import train_detection

    root = _yolo_dataset(tmp_path / "cut")
    bad = root / "images" / "p2.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    runs = tmp_path / "runs"
    tiny = dict(data=str(root), image_size=32, epochs=1, batch_size=2, out=str(runs),
                val_fraction=0.0, test_fraction=0.0, device="cpu", report=False)  # fmt: skip
    with pytest.raises(DataError) as err:
        train_detection(**tiny)
    assert err.value.path == str(root) and err.value.reason == (
        "data check failed: 1 of 5 image files unusable (20.0%, limit 10%: --max-bad-fraction): "
        f"{bad} (truncated or corrupt image data); replace or remove the images (and their "
        "annotations)"
    )
    with pytest.raises(DataError, match=r"1 of 5 image files unusable \(20.0%, strict mode\)"):
        train_detection(**tiny, max_bad_fraction=0.5, strict=True)
    assert not runs.exists()
    run = train_detection(**tiny, max_bad_fraction=0.25).run_dir
    report = json.loads((run / "data_report.json").read_text())
    assert report["skipped_images"] == [
        {"image": str(bad), "reason": "truncated or corrupt image data"}
    ]
    assert json.loads((run / "splits.json").read_text())["splits"] == {
        "train": ["p0", "p1", "p3", "p4"]
    }


def test_evaluate_on_other_data_limits_skipped_images_as_training_does(
    tmp_path: Path, caplog
) -> None:
    """`detect evaluate RUN --data OTHER` skipped images it could not decode without a limit (and
    without a word), while `detect train` refuses more than --max-bad-fraction of them. Now the
    same policy: 1 of 3 corrupt is over the default 10 %, refused with train's message; under a
    raised limit it is said once and the other 2 are evaluated; --strict refuses it (on the
    command line too, one error line)."""
    from cli_process import assert_user_error

    from cnnlab.detect import evaluate_detection, train_detection

    run = train_detection(
        data=str(_yolo_dataset(tmp_path / "yolo")), image_size=32, epochs=1, batch_size=2,
        out=str(tmp_path / "runs"), val_fraction=0.0, test_fraction=0.0, device="cpu",
        report=False,
    ).run_dir  # fmt: skip
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(3):
        _image(other / "images" / f"{i}.png", rng)
    bad = other / "images" / "1.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    doc = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 48, "height": 40} for i in range(3)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1 + i % 2, "iscrowd": 0,
                         "bbox": [4, 5, 20, 15]} for i in range(3)],
        "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}],
    }  # fmt: skip
    data = other / "instances.json"
    data.write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        evaluate_detection(run, data=str(data), device="cpu", report=False)
    assert err.value.path == str(data) and err.value.reason == (
        "data check failed: 1 of 3 image files unusable (33.3%, limit 10%: --max-bad-fraction): "
        f"{bad} (truncated or corrupt image data); replace or remove the images (and their "
        "annotations)"
    )
    with pytest.raises(DataError, match=r"1 of 3 image files unusable \(33.3%, strict mode\)"):
        evaluate_detection(run, data=str(data), device="cpu", report=False,
                           max_bad_fraction=0.5, strict=True)  # fmt: skip
    with caplog.at_level("WARNING", logger="cnnlab.detect"):
        result = evaluate_detection(
            run, data=str(data), device="cpu", report=False, max_bad_fraction=0.5
        )
    said = f"1 bad image files skipped: {bad} (truncated or corrupt image data); evaluating the"
    assert caplog.text.count(said) == 1 and f"{said} other 2" in caplog.text
    assert result["num_samples"] == 2 and 0.0 <= result["metrics"]["map_50"] <= 1.0
    assert result["data_report"]["skipped_images"] == [
        {"image": str(bad), "reason": "truncated or corrupt image data"}
    ]
    line = assert_user_error("detect", "evaluate", str(run), "--data", str(data), "--device",
                             "cpu", "--max-bad-fraction", "0.5", "--strict",
                             names=[str(data), "1 of 3 image files unusable"])  # fmt: skip
    assert "strict mode" in line


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_format_round_trip_train_evaluate(tmp_path: Path, fmt: str, run_digests) -> None:
    from cnnlab.detect import evaluate_detection, load_detection_model, train_detection

    folder = tmp_path / "data"
    folder.mkdir()
    data = {"coco": _coco_dataset, "voc": _voc_dataset, "yolo": _yolo_dataset}[fmt](folder)
    result = train_detection(  # COCO: 1 of its 6 images missing, over the default 10 % limit
        data=str(data), image_size=64, epochs=1, batch_size=2, val_fraction=0.0,
        test_fraction=0.25, out=str(tmp_path / "runs"), device="cpu", report_images=1,
        max_bad_fraction=0.2,
    )  # fmt: skip
    assert np.isfinite(result.history[0]["train_loss"])
    assert set(result.test_metrics) >= {"map", "map_50", "mar_100", "per_class"}
    _, meta, _ = load_detection_model(result.run_dir)
    assert meta["class_names"] == {"coco": ["cat", "dog"], "voc": ["car", "person"],
                                   "yolo": ["red", "blue"]}[fmt]  # fmt: skip
    ci = result.test_metrics["confidence_intervals"]  # bootstrap over the test images
    for key in ("map", "map_50", "map_75"):  # NumPy COCO matching = torchmetrics' pycocotools
        assert ci[key]["value"] == pytest.approx(result.test_metrics[key], abs=1e-6)
        assert ci[key]["low"] <= ci[key]["value"] <= ci[key]["high"]
    assert set(ci["per_class"]) == set(meta["class_names"]) and ci["n_boot"] == 1000
    row = read_run(result.run_dir)  # `cnnlab runs` shows the recorded interval
    assert (row.metric, row.low, row.high) == ("map_50", ci["map_50"]["low"], ci["map_50"]["high"])
    assert (
        "percentile-bootstrap interval over the test images"
        in (result.run_dir / "report.html").read_text()
    )
    before = run_digests(result.run_dir)
    again = evaluate_detection(result.run_dir, device="cpu", report=False)
    assert again["metrics"]["map"] == pytest.approx(result.test_metrics["map"], abs=1e-9)
    assert run_digests(result.run_dir) == before
    written = json.loads((Path(again["out_dir"]) / "test_metrics.json").read_text())
    assert written["confidence_intervals"]["map_50"] == ci["map_50"]
    assert (result.run_dir / "report.html").is_file()
    for folder in (Path(again["out_dir"]), result.run_dir):  # in the 48x40 images' own pixels
        for r in json.loads((folder / "test_predictions.json").read_text()):
            x, y, w, h = r["bbox"]
            assert 0 <= x and x + w <= 48.01 and 0 <= y and y + h <= 40.01, r


def test_predict_writes_coco_results_and_images(tmp_path: Path) -> None:
    from cnnlab.detect import predict_detection, train_detection

    result = train_detection(
        data="builtin:shapes?n=12&size=64&objects=2", epochs=1, batch_size=4, val_fraction=0.0,
        test_fraction=0.0, out=str(tmp_path / "runs"), device="cpu", report=False,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    _image(tmp_path / "a.png", rng, (80, 50))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    path = predict_detection(result.run_dir, [tmp_path / "a.png", tmp_path / "bad.png"],
                             tmp_path / "pred", device="cpu", score_threshold=0.0)  # fmt: skip
    rows = json.loads(path.read_text())
    assert all(len(r["bbox"]) == 4 and r["image_id"] == "a.png" for r in rows)
    assert all(0 <= r["bbox"][0] <= 80 and r["bbox"][2] >= 0 for r in rows)
    assert (tmp_path / "pred" / "images" / "a.png").is_file()
    skipped = json.loads((tmp_path / "pred" / "skipped.json").read_text())
    assert skipped[0]["input"].endswith("bad.png")
    # a score threshold outside [0, 1] kept no box and said nothing; now one line, nothing written
    from cnnlab.api import explain

    for wrong in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match=r"--score-threshold must be in \[0, 1\]"):
            predict_detection(result.run_dir, [tmp_path / "a.png"], tmp_path / "wrong",
                              device="cpu", score_threshold=wrong)  # fmt: skip
        with pytest.raises(ConfigError, match=r"--score-threshold must be in \[0, 1\]"):
            explain(result.run_dir, tmp_path / "a.png", out=tmp_path / "wrong",
                    score_threshold=wrong)  # fmt: skip
    assert not (tmp_path / "wrong").exists()


def test_score_threshold_of_by_hand() -> None:
    from cnnlab.config import score_threshold_of

    assert score_threshold_of(0.3, None) == 0.3 and score_threshold_of(None, None) == 0.5
    assert score_threshold_of(0.3, 0) == 0.0 and score_threshold_of(0.3, 1) == 1.0
    with pytest.raises(ConfigError, match="got 2$"):
        score_threshold_of(0.3, 2)


@pytest.mark.parametrize("model", ["retinanet", "fcos", "ssdlite"])
def test_other_heads_one_step(model: str) -> None:
    from cnnlab.models.detection import create_detection_model
    from cnnlab.tasks.detection import DetectionTask

    det = create_detection_model(model, num_classes=2, image_size=64).train()
    x = torch.randn(2, 3, 64, 64)
    t = [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])},
         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # fmt: skip
    out = DetectionTask(["a", "b"]).loss(det, x, t)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    det.eval()
    with torch.no_grad():
        pred = det(x)
    assert all(((p["labels"] >= 0) & (p["labels"] < 2)).all() for p in pred)


def test_box_head_width_saved_and_legacy_checkpoints_load(tmp_path: Path) -> None:
    """The box head width travels in the checkpoint; checkpoints written before the option (no
    metadata key) had torchvision's 1024-wide head and must still load."""
    from cnnlab.detect import load_detection_model
    from cnnlab.engine.checkpoint import save_weights
    from cnnlab.models.detection import create_detection_model

    meta = {"task": "detection", "model": "fasterrcnn", "backbone": "resnet18", "num_classes": 2,
            "in_channels": 3, "image_size": 64, "preprocess": {}, "class_names": ["a", "b"],
            "fpn_channels": 32}  # fmt: skip
    for width, stored in ((48, {"box_head_width": 48}), (1024, {})):
        det = create_detection_model("fasterrcnn", num_classes=2, image_size=64, fpn_channels=32,
                                     box_head_width=width)  # fmt: skip
        path = tmp_path / f"w{width}.safetensors"
        save_weights(path, det.state_dict(), meta | stored)
        loaded, _, _ = load_detection_model(path)
        assert loaded.net.roi_heads.box_head.fc7.out_features == width
        assert loaded.net.roi_heads.box_predictor.cls_score.in_features == width
        for key, value in det.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_predict_of_a_detection_run_takes_the_score_threshold_as_detect_predict_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`cnnlab predict RUN` routes a detection run to detect predict but refused its
    --score-threshold ("unknown option"); now the same option, the same boxes, the same refusal."""
    from cnnlab.cli import main
    from cnnlab.detect import train_detection

    result = train_detection(
        data="builtin:shapes?n=12&size=64&objects=2", epochs=1, batch_size=4, val_fraction=0.0,
        test_fraction=0.0, out=str(tmp_path / "runs"), device="cpu", report=False,
    )  # fmt: skip
    run, image = str(result.run_dir), str(tmp_path / "a.png")
    _image(tmp_path / "a.png", np.random.default_rng(5))
    rows = {}
    for threshold in ("0", "1"):  # every box / none (an untrained detector scores below 1)
        for cmd in (["predict"], ["detect", "predict"]):
            out = tmp_path / f"{'-'.join(cmd)}-{threshold}"
            argv = [*cmd, run, image, "--out", str(out), "--device", "cpu"]
            assert main([*argv, "--score-threshold", threshold]) == 0
            rows[(cmd[0], threshold)] = json.loads((out / "predictions.json").read_text())
    assert rows[("predict", "0")] == rows[("detect", "0")] and rows[("predict", "0")]
    assert rows[("predict", "1")] == rows[("detect", "1")] == []
    capsys.readouterr()
    for cmd in (["predict"], ["detect", "predict"]):
        assert (
            main([*cmd, run, image, "--out", str(tmp_path / "x"), "--score-threshold", "1.5"]) == 2
        )
        assert capsys.readouterr().err.strip() == (
            "error: --score-threshold must be in [0, 1] (a detection score), got 1.5"
        )
    assert not (tmp_path / "x").exists()


def test_relocated_data_listing_its_categories_in_another_order_is_labelled_by_name(
    tmp_path: Path,
) -> None:
    """`detect evaluate RUN --relocated-data NEW`: the dataset at its new place numbers its
    categories the other way round (cat 3 -> 7, dog 7 -> 3, as a regenerated COCO file may). Its
    objects are the model's classes by name, so the evaluation equals the one at the old place:
    every image holds two cats and one dog, so labels taken by index would swap the per-class
    ground-truth counts. A category the run never knew is refused by name."""
    import shutil

    from cnnlab.detect import evaluate_detection, train_detection

    old = tmp_path / "old"
    (old / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    images, anns = [], []
    for i in range(8):
        _image(old / "images" / f"{i}.png", rng)
        images.append({"id": i, "file_name": f"{i}.png", "width": 48, "height": 40})
        for k, (cat, x) in enumerate(((3, 2), (3, 18), (7, 30))):
            anns.append({"id": 3 * i + k, "image_id": i, "category_id": cat, "iscrowd": 0,
                         "bbox": [x, 6, 14, 20]})  # fmt: skip
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}  # fmt: skip
    (old / "instances.json").write_text(json.dumps(doc))
    run = train_detection(
        data=str(old / "instances.json"), image_size=64, epochs=1, batch_size=2,
        val_fraction=0.0, test_fraction=0.5, out=str(tmp_path / "runs"), device="cpu",
        report=False,
    ).run_dir  # fmt: skip
    here = evaluate_detection(run, device="cpu", report=False)
    new = tmp_path / "new"
    shutil.copytree(old / "images", new / "images")
    swap = {3: 7, 7: 3}
    moved = doc | {
        "annotations": [a | {"category_id": swap[a["category_id"]]} for a in anns],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    (new / "instances.json").write_text(json.dumps(moved))
    there = evaluate_detection(
        run, device="cpu", report=False, relocated_data=str(new / "instances.json")
    )

    def ground_truth(result):
        return {c: v["tp"] + v["fn"] for c, v in result["metrics"]["per_class"].items()}

    assert ground_truth(here) == {"cat": 8, "dog": 4}  # 4 test images, two cats and a dog each
    assert ground_truth(there) == ground_truth(here)
    assert there["metrics"]["map"] == pytest.approx(here["metrics"]["map"], abs=1e-12)
    renamed = moved | {"categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "wolf"}]}
    (new / "instances.json").write_text(json.dumps(renamed))
    with pytest.raises(DataError, match=r"classes \['wolf'\] are not among the model's"):
        evaluate_detection(
            run, device="cpu", report=False, relocated_data=str(new / "instances.json")
        )


# -- test_predictions.json in image pixels ---------------------------------------------------------
class _Oracle(torch.nn.Module):
    """A stand-in detector answering each image, in loader order, with its true model-input
    boxes moved by ``shift`` pixels (scores descending in the box order)."""

    def __init__(self, targets: list[dict[str, np.ndarray]], shift: float) -> None:
        super().__init__()
        self.queue, self.shift = list(targets), shift

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in range(len(images)):
            t = self.queue.pop(0)
            k = len(t["labels"])
            out.append({"boxes": torch.as_tensor(t["boxes"]).reshape(-1, 4) + self.shift,
                        "labels": torch.as_tensor(t["labels"]),
                        "scores": torch.linspace(0.9, 0.5, k)})  # fmt: skip
        return out


@pytest.mark.parametrize("resize", ["fit", "stretch"])
def test_test_predictions_json_is_in_image_pixels_and_scores_as_cnnlab_does(
    tmp_path: Path, resize: str
) -> None:
    """test_predictions.json (documented: COCO results with the dataset's ids) held boxes in the
    model's input frame (a 64x64 image trained at 256 px: x + w up to 241), so pycocotools could
    not score it against the dataset's JSON. Now each image's own pixels, as `detect predict`
    writes them: COCOeval on the file against the JSON gives cnnlab's mAP."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from cnnlab.config import PreprocessSpec
    from cnnlab.data.boxes import decode_box_split
    from cnnlab.detect import evaluate_detection_model

    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    sizes = [(48, 40), (30, 50), (64, 64), (80, 36)]  # (W, H): none at the 96 px input size
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        _image(tmp_path / "images" / f"{i}.png", rng, (w, h))
        images.append({"id": 20 + i, "file_name": f"{i}.png", "width": w, "height": h})
        for j in range(3):
            bw, bh = w * (0.2 + 0.1 * j), h * (0.3 + 0.05 * j)
            x, y = (w - bw) * (0.1 + 0.3 * j), (h - bh) * (0.8 - 0.3 * j)
            anns.append({"id": len(anns) + 1, "image_id": 20 + i, "category_id": [3, 7][j % 2],
                         "iscrowd": 0, "bbox": [x, y, bw, bh], "area": bw * bh})  # fmt: skip
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}  # fmt: skip
    data = tmp_path / "instances.json"
    data.write_text(json.dumps(doc))
    bundle = load_box_source(str(data), val_fraction=0, test_fraction=0)
    spec = PreprocessSpec(96, 3, (0.0,) * 3, (1.0,) * 3, resize, {})
    pixels, targets, ids, _ = decode_box_split(bundle.splits["train"], spec)
    for shift in (0.0, 3.0):  # exact boxes (mAP 1), then boxes a few pixels off
        out = tmp_path / f"eval-{shift}"
        result = evaluate_detection_model(
            _Oracle(targets, shift), spec, pixels, targets, ids, bundle.class_names,
            device=torch.device("cpu"), out_dir=out, report=False, category_ids=[3, 7],
        )  # fmt: skip
        rows = json.loads((out / "test_predictions.json").read_text())
        assert len(rows) == len(anns)
        for r in rows:  # inside each image's own frame
            w, h = sizes[r["image_id"] - 20]
            x, y, bw, bh = r["bbox"]
            assert -0.01 <= x and x + bw <= w + 0.01 and -0.01 <= y and y + bh <= h + 0.01, r
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(data))
            ev = COCOeval(gt, gt.loadRes(rows), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics = result["metrics"]
        assert ev.stats[0] == pytest.approx(metrics["map"], abs=0.01)
        assert ev.stats[1] == pytest.approx(metrics["map_50"], abs=0.01)
        if shift == 0.0:
            assert metrics["map"] == pytest.approx(1.0) and ev.stats[0] == pytest.approx(1.0)
            for r in rows:  # each the true box of its image (to the file's 2 decimals)
                assert any(a["image_id"] == r["image_id"] and np.allclose(a["bbox"], r["bbox"],
                           atol=0.02) for a in anns), r  # fmt: skip
        else:
            assert 0.05 < metrics["map"] < 0.95  # a shift the metric notices


# -- input size without --image-size ---------------------------------------------------------------
def test_files_of_one_square_size_train_at_it_and_mixed_sizes_at_256_said(
    tmp_path: Path, caplog
) -> None:
    """`detect train --help` says image_size None is "the source's own size", but a folder of
    40x40 images trained at 256 px (only a builtin kept its size). Now images that all share one
    square size keep it, as in segmentation; mixed sizes go to 256 px with a warning; a resume
    keeps the size its run began with."""
    from cnnlab.config import make_config
    from cnnlab.detect import _image_size, train_detection
    from cnnlab.tasks.configs import DetectConfig

    root = _yolo_dataset(tmp_path / "square")
    rng = np.random.default_rng(4)
    for i in range(5):
        _image(root / "images" / f"p{i}.png", rng, (40, 40))
    run = train_detection(
        data=str(root), epochs=1, batch_size=2, val_fraction=0.0, test_fraction=0.0,
        out=str(tmp_path / "runs"), device="cpu", report=False,
    ).run_dir  # fmt: skip
    assert json.loads((run / "preprocess.json").read_text())["image_size"] == 40
    cfg = make_config(DetectConfig, data=str(root))
    bundle = load_box_source(str(root))
    assert _image_size(cfg, bundle) == 40
    assert _image_size(make_config(DetectConfig, data=str(root), image_size=96), bundle) == 96
    begun = tmp_path / "begun"
    begun.mkdir()
    (begun / "preprocess.json").write_text(json.dumps({"image_size": 128}))
    assert _image_size(cfg, bundle, begun) == 128  # a resume goes on at its own size
    _image(root / "images" / "p4.png", rng, (48, 40))  # now of two sizes
    mixed = load_box_source(str(root))
    with caplog.at_level("WARNING", logger="cnnlab.detect"):
        assert _image_size(cfg, mixed) == 256
    assert "no single square size: resizing to 256 px (set --image-size)" in caplog.text
    small = _yolo_dataset(tmp_path / "small")
    for i in range(5):
        _image(small / "images" / f"p{i}.png", rng, (20, 20))
    assert _image_size(cfg, load_box_source(str(small))) == 32  # the detectors' minimum
    assert _image_size(make_config(DetectConfig), load_box_source(DetectConfig.data)) == 64


# -- YOLO class indices ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, why", [("2", "is out of range"), ("-1", "is out of range"),
                   ("1.5", "is not a whole number"), ("green", "is not a whole number")],
)  # fmt: skip
def test_a_yolo_label_of_no_class_is_refused_naming_file_line_and_range(
    tmp_path: Path, value: str, why: str
) -> None:
    """bad-inputs case 42: a label line whose class is >= the number of classes, negative, not a
    whole number or not a number was skipped with a warning and training went on. Now refused
    before training, naming the label file, the line, the value and the valid range (on the
    command line: one line, exit 2, nothing written)."""
    from cli_process import in_process

    root = _yolo_dataset(tmp_path / "yolo")  # data.yaml: red, blue
    txt = root / "labels" / "p3.txt"
    txt.write_text(f"1 0.5 0.5 0.4 0.4\n\n{value} 0.4 0.4 0.2 0.2\n")
    with pytest.raises(DataError) as err:
        load_box_source(str(root))
    assert err.value.path == str(txt)
    assert err.value.reason.startswith(f"line 3: class {value!r} {why}; ")
    assert "an index in 0..1 (2 classes)" in err.value.reason
    runs = tmp_path / "runs"
    proc = in_process("detect", "train", "--data", str(root), "--epochs", "1", "--out", str(runs))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"error: {txt}: line 3: class {value!r}") and not runs.exists()


def test_yolo_class_without_class_names_and_integral_floats(tmp_path: Path) -> None:
    """Without classes.txt / data.yaml the classes are numbered (max + 1): a negative one is
    still refused; ``1.0`` (some exporters write floats) is class 1."""
    root = _yolo_dataset(tmp_path / "yolo")
    (root / "data.yaml").unlink()
    (root / "labels" / "p1.txt").write_text("1.0 0.5 0.5 0.4 0.4\n")
    bundle = load_box_source(str(root), val_fraction=0, test_fraction=0)
    assert bundle.class_names == ["0", "1"]
    assert sorted(int(c) for s in bundle.splits["train"] for c in s.labels) == [0, 0, 0, 1, 1]
    (root / "labels" / "p1.txt").write_text("-1 0.5 0.5 0.4 0.4\n")
    with pytest.raises(DataError, match=r"line 1: class '-1' is out of range; .* an integer >= 0"):
        load_box_source(str(root))


def test_options_a_detector_does_not_build_with_are_refused() -> None:
    """`--model ssdlite --backbone resnet50` named its run ssdlite-resnet50 and trained torchvision's
    MobileNetV3; --box-head-width is Faster R-CNN's alone."""
    from cnnlab.config import make_config
    from cnnlab.tasks.configs import DetectConfig

    with pytest.raises(ConfigError, match="model ssdlite does not use option backbone, option "
                       "fpn_channels: leave them out"):  # fmt: skip
        make_config(DetectConfig, model="ssdlite", backbone="resnet50", fpn_channels=64)
    with pytest.raises(ConfigError, match="model retinanet does not use option box_head_width"):
        make_config(DetectConfig, model="retinanet", box_head_width=64)
    assert make_config(DetectConfig, model="fcos", fpn_channels=64).fpn_channels == 64
    assert make_config(DetectConfig, model="ssdlite").backbone == "resnet18"  # the default: unused
