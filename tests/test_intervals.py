"""Bootstrap intervals of segmentation and detection test metrics, resampling test images:
point values against the existing metrics (segmentation_metrics, pycocotools' COCOeval), the
vectorised resampling against a plain loop over resamples, degenerate and identity cases."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch

from cnnlab.metrics.segmentation import (
    ConfusionAccumulator,
    UndefinedMetricWarning,
    per_image_confusion,
    pixel_confusion_matrix,
    segmentation_metrics,
)
from cnnlab.metrics.stats import resample_counts, segmentation_intervals

IGNORE = 255


# -- segmentation ------------------------------------------------------------------------------------
def _label_maps(seed: int, n: int = 12, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 9, 7) targets with some void pixels and class 3 absent from the truth, and noisy
    predictions."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, k - 1, size=(n, 9, 7))
    p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, k, size=t.shape))
    t[rng.random(t.shape) < 0.1] = IGNORE
    return torch.from_numpy(t), torch.from_numpy(p)


def test_accumulator_keeps_per_image_matrices_that_add_up() -> None:
    t, p = _label_maps(0)
    meter = ConfusionAccumulator(4, IGNORE, per_image=True)
    meter.update(t[:7], p[:7])  # two uneven batches
    meter.update(t[7:], p[7:])
    per = meter.per_image_matrices()
    assert per.dtype == np.int64 and per.shape == (12, 4, 4)
    for i in (0, 6, 11):  # each image's own matrix
        np.testing.assert_array_equal(per[i], pixel_confusion_matrix(t[i], p[i], 4, IGNORE))
    np.testing.assert_array_equal(per.sum(0), meter.matrix())
    np.testing.assert_array_equal(meter.matrix(), pixel_confusion_matrix(t, p, 4, IGNORE))


def _naive_seg_bootstrap(per: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """The hand reference: one resample at a time, indices drawn from the same seeded generator,
    the drawn matrices summed with a loop and scored by segmentation_metrics itself."""
    rng = np.random.default_rng(seed)
    n = len(per)
    out: dict[str, list] = {"mean_iou": [], "pixel_accuracy": [], "mean_dice": [], "iou2": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for _ in range(n_boot):
            idx = rng.integers(0, n, size=n)
            cm = np.zeros(per.shape[1:], dtype=np.int64)
            for i in idx:
                cm += per[i]
            m = segmentation_metrics(cm)
            for key in ("mean_iou", "pixel_accuracy", "mean_dice"):
                out[key].append(np.nan if m[key] is None else m[key])
            out["iou2"].append(np.nan if m["per_class"]["2"]["iou"] is None else
                               m["per_class"]["2"]["iou"])  # fmt: skip
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def test_segmentation_interval_point_is_the_metric_and_matches_a_naive_loop() -> None:
    t, p = _label_maps(1)
    per = per_image_confusion(t, p, 4, IGNORE).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        metrics = segmentation_metrics(per.sum(0))
    ci = segmentation_intervals(per, n_boot=200, seed=7)
    for key in ("mean_iou", "pixel_accuracy", "mean_dice"):
        assert ci[key]["value"] == metrics[key]  # exactly the reported metric
    for name, row in metrics["per_class"].items():
        assert ci["per_class"][name]["iou"]["value"] == row["iou"]
        assert ci["per_class"][name]["dice"]["value"] == row["dice"]
    ref = _naive_seg_bootstrap(per, 200, seed=7)
    for key, boot in (*((k, ref[k]) for k in ("mean_iou", "pixel_accuracy", "mean_dice")),):
        low, high = np.quantile(boot, [0.025, 0.975])
        assert (ci[key]["low"], ci[key]["high"]) == pytest.approx((low, high), rel=1e-12)
        assert ci[key]["low"] <= ci[key]["value"] <= ci[key]["high"]
    low, high = np.quantile(ref["iou2"], [0.025, 0.975])
    assert (ci["per_class"]["2"]["iou"]["low"], ci["per_class"]["2"]["iou"]["high"]) == (
        pytest.approx((low, high), rel=1e-12)
    )
    # class 3 is never true: IoU 0 where predicted (defined), its interval collapses to 0
    assert ci["per_class"]["3"]["iou"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert ci["n_boot"] == 200 and ci["unit"] == "image" and ci["confidence"] == 0.95


def test_segmentation_interval_of_identical_images_has_zero_width() -> None:
    t, p = _label_maps(2, n=1)
    per = np.repeat(per_image_confusion(t, p, 4, IGNORE).numpy(), 9, axis=0)
    ci = segmentation_intervals(per, n_boot=50)
    for key in ("mean_iou", "pixel_accuracy", "mean_dice"):
        assert ci[key]["low"] == ci[key]["high"] == pytest.approx(ci[key]["value"], rel=1e-15)


def test_segmentation_interval_undefined_class_and_bad_shape() -> None:
    per = np.zeros((3, 2, 2), dtype=np.int64)
    per[:, 0, 0] = [5, 6, 7]  # class 1 nowhere: no IoU, no interval
    ci = segmentation_intervals(per, ["bg", "thing"], n_boot=20)
    assert ci["per_class"]["thing"]["iou"] == {"value": None, "low": None, "high": None}
    assert ci["mean_iou"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    with pytest.raises(ValueError, match="per-image confusion"):
        segmentation_intervals(np.zeros((0, 2, 2)))


def test_resample_counts_are_index_draws_in_order() -> None:
    blocks = list(resample_counts(5, 7, np.random.default_rng(3)))
    counts = np.concatenate(blocks)
    rng = np.random.default_rng(3)
    want = np.stack([np.bincount(rng.integers(0, 5, size=5), minlength=5) for _ in range(7)])
    np.testing.assert_array_equal(counts, want)
    assert (counts.sum(1) == 5).all()


# -- detection ---------------------------------------------------------------------------------------
def _det_set(seed: int, n: int = 8, k: int = 3, crowd: bool = True) -> tuple[list, list]:
    """Random true boxes; predictions: jittered true boxes (some missed, some relabelled), a
    duplicate, random false positives; with ``crowd`` some images get an iscrowd box."""
    rng = np.random.default_rng(seed)
    gt, dt = [], []
    for i in range(n):
        m = int(rng.integers(1, 5))
        xy = rng.uniform(0, 60, (m, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 30, (m, 2))], 1)
        labels = rng.integers(0, k, m)
        keep = rng.random(m) > 0.25
        pb = boxes[keep] + rng.normal(0, 3, (keep.sum(), 4))
        pl = labels[keep].copy()
        pl[rng.random(len(pl)) < 0.15] = rng.integers(0, k)
        fp_xy = rng.uniform(0, 60, (2, 2))
        pb = np.concatenate([pb, pb[:1] + 1.0, np.concatenate([fp_xy, fp_xy + 10], 1)])
        pl = np.concatenate([pl, pl[:1], rng.integers(0, k, 2)])
        iscrowd = np.zeros(m, dtype=np.int64)
        if crowd and i % 3 == 0:  # a crowd region with two detections inside it
            boxes = np.concatenate([boxes, [[70.0, 70, 100, 100]]])
            labels = np.concatenate([labels, [0]])
            iscrowd = np.concatenate([iscrowd, [1]])
            pb = np.concatenate([pb, [[72.0, 72, 90, 90], [80, 75, 99, 98]]])
            pl = np.concatenate([pl, [0, 0]])
        gt.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                   "labels": torch.tensor(labels), "iscrowd": torch.tensor(iscrowd)})  # fmt: skip
        dt.append({"boxes": torch.tensor(pb, dtype=torch.float32), "labels": torch.tensor(pl),
                   "scores": torch.tensor(rng.uniform(0.05, 1, len(pb)), dtype=torch.float32)})  # fmt: skip
    return gt, dt


def _cocoeval_ap(gt: list, dt: list, k: int, images: list[int] | None = None) -> np.ndarray:
    """pycocotools' own COCOeval, (T, K) AP (-1 -> NaN), on the images listed (repeats are new
    images), with boxes converted from float32 xyxy as torchmetrics converts them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = list(range(len(gt))) if images is None else images
    imgs, anns, dets = [], [], []
    for new_id, i in enumerate(images):
        imgs.append({"id": new_id})
        g, d = gt[i], dt[i]
        gx = torch.cat([g["boxes"][:, :2], g["boxes"][:, 2:] - g["boxes"][:, :2]], 1).tolist()
        for b, lab, c in zip(gx, g["labels"].tolist(), g["iscrowd"].tolist(), strict=True):
            anns.append({"id": len(anns) + 1, "image_id": new_id, "category_id": lab,
                         "iscrowd": c, "bbox": b, "area": b[2] * b[3]})  # fmt: skip
        dx = torch.cat([d["boxes"][:, :2], d["boxes"][:, 2:] - d["boxes"][:, :2]], 1).tolist()
        for b, lab, s in zip(dx, d["labels"].tolist(), d["scores"].tolist(), strict=True):
            dets.append({"image_id": new_id, "category_id": lab, "score": s, "bbox": b})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": imgs, "annotations": anns,
                        "categories": [{"id": c} for c in range(k)]}  # fmt: skip
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # T x R x K, area all, 100 detections
    return np.where(prec[:, 0, :] > -1, prec.mean(axis=1), np.nan), ev


def test_detection_point_estimate_is_cocoeval() -> None:
    from cnnlab.metrics.coco_match import average_precision, match_images

    gt, dt = _det_set(0)
    records = match_images(dt, gt, 3)
    ap = average_precision(records)[0]  # T x K
    want, ev = _cocoeval_ap(gt, dt, 3)
    np.testing.assert_allclose(ap, want, rtol=0, atol=1e-12)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    assert np.nanmean(ap.mean(0)) == pytest.approx(ev.stats[0], abs=1e-12)  # mAP
    assert np.nanmean(ap[0]) == pytest.approx(ev.stats[1], abs=1e-12)  # mAP@0.5
    assert 0 < ev.stats[0] < ev.stats[1] < 1  # misses, duplicates and FPs make it imperfect
    assert records.ignored.any()  # the crowd region absorbed detections


def test_detection_weighted_resample_is_cocoeval_on_the_repeated_images() -> None:
    from cnnlab.metrics.coco_match import average_precision, match_images

    gt, dt = _det_set(1)
    records = match_images(dt, gt, 3)
    np.testing.assert_array_equal(  # the identity resample is the point estimate, bit for bit
        average_precision(records, np.ones((1, 8))), average_precision(records)
    )
    drawn = [3, 3, 0, 6, 1, 3, 7, 6]  # a resample: image 3 three times, 2, 4, 5 left out
    weights = np.bincount(drawn, minlength=8)[None].astype(float)
    want, _ = _cocoeval_ap(gt, dt, 3, images=drawn)
    np.testing.assert_allclose(average_precision(records, weights)[0], want, atol=1e-12)


def test_detection_intervals_bracket_the_point_and_are_seeded() -> None:
    from cnnlab.metrics.coco_match import average_precision, match_images
    from cnnlab.metrics.stats import detection_intervals

    gt, dt = _det_set(2, n=12)
    records = match_images(dt, gt, 3)
    names = ["a", "b", "c"]
    ci = detection_intervals(records, names, n_boot=300, seed=5)
    ap = average_precision(records)[0]
    assert ci["map"]["value"] == pytest.approx(np.nanmean(ap.mean(0)), abs=1e-15)
    assert ci["map_50"]["value"] == pytest.approx(np.nanmean(ap[0]), abs=1e-15)
    for key in ("map", "map_50", "map_75"):
        assert ci[key]["low"] <= ci[key]["value"] <= ci[key]["high"]
        assert ci[key]["high"] - ci[key]["low"] > 0.01  # 12 images: a wide interval
    assert ci["per_class"]["b"]["ap"]["value"] == pytest.approx(ap[:, 1].mean(), abs=1e-15)
    # the naive loop: each resample drawn from the same seed, its AP recomputed from scratch
    rng = np.random.default_rng(5)
    boot = []
    for _ in range(300):
        w = np.bincount(rng.integers(0, 12, size=12), minlength=12)[None].astype(float)
        a = average_precision(records, w)[0]
        boot.append(np.nanmean(a.mean(0)))
    assert (ci["map"]["low"], ci["map"]["high"]) == pytest.approx(
        tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12
    )
    assert detection_intervals(records, names, n_boot=300, seed=5) == ci


def test_detection_interval_of_identical_images_has_zero_width() -> None:
    from cnnlab.metrics.coco_match import match_images
    from cnnlab.metrics.stats import detection_intervals

    gt, dt = _det_set(3, n=1, crowd=False)
    ci = detection_intervals(match_images(dt * 6, gt * 6, 3), ["a", "b", "c"], n_boot=50)
    assert 0 < ci["map_50"]["value"] < 1
    for key in ("map", "map_50", "map_75"):
        assert ci[key]["low"] == ci[key]["high"] == pytest.approx(ci[key]["value"], abs=1e-12)


# -- what the CLI prints -----------------------------------------------------------------------------
def test_cli_tables_print_value_and_interval(capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlab import cli

    iv = {"value": 0.7123, "low": 0.6901, "high": 0.7334}
    seg = {
        "mean_iou": 0.7123,
        "per_class": {"road": {"iou": 0.7123, "dice": None, "support": 1200}},
        "confidence_intervals": {"mean_iou": iv, "per_class": {"road": {"iou": iv}}},
    }
    cli._print_segment_metrics(seg)
    text = capsys.readouterr().out
    assert "0.712 [0.690, 0.733]" in text and "mean_iou: 0.7123 [0.6901, 0.7334]" in text
    cli._print_detection_metrics({"map_50": 0.5, "map": 0.25})  # an older run: no interval
    text = capsys.readouterr().out
    assert "map_50: 0.5000\n" in text and "[" not in text
