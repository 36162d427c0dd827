"""Semantic segmentation: metrics against scikit-learn, every mask layout written in its real format
and put through one training epoch + evaluation + prediction, pre-flight errors, joint
augmentation."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, jaccard_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from cnnlab.data.masks import (
    MaskLoader,
    check_mask,
    load_mask_source,
    read_mask,
    resize_mask,
    voc_palette,
)
from cnnlab.data.tensors import resize_to_square
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.metrics.segmentation import (
    ConfusionAccumulator,
    UndefinedMetricWarning,
    per_image_confusion,
    pixel_confusion_matrix,
    segmentation_metrics,
)
from cnnlab.runs_table import read_run

IGNORE = 255
TINY = {
    "encoder": "lenet5",
    "image_size": 16,
    "epochs": 1,
    "batch_size": 4,
    "report": False,
    "device": "cpu",
    "precision": "32",
    "val_fraction": 0.2,
    "test_fraction": 0.2,
}


# -- metrics ---------------------------------------------------------------------------------------
def _random_masks(seed: int, k: int, absent: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = [c for c in range(k) if c != absent]
    t = rng.choice(labels, size=(3, 11, 13)).astype(np.uint8)
    p = np.where(rng.random(t.shape) < 0.6, t, rng.choice(labels, size=t.shape)).astype(np.uint8)
    t[rng.random(t.shape) < 0.15] = IGNORE  # void pixels: their prediction must not count
    return t, p


@pytest.mark.parametrize("seed", range(4))
def test_confusion_matrix_matches_sklearn_and_ignores_void(seed: int) -> None:
    t, p = _random_masks(seed, k=5)
    valid = t != IGNORE
    expected = sk_confusion_matrix(t[valid], p[valid], labels=range(5))
    np.testing.assert_array_equal(pixel_confusion_matrix(t, p, 5, IGNORE), expected)
    acc = ConfusionAccumulator(5, IGNORE)  # streaming over images == one matrix
    for i in range(len(t)):
        acc.update(torch.from_numpy(t[i : i + 1]), torch.from_numpy(p[i : i + 1]))
    np.testing.assert_array_equal(acc.matrix(), expected)
    per = per_image_confusion(torch.from_numpy(t), torch.from_numpy(p), 5, IGNORE).numpy()
    for i in range(len(t)):
        v = t[i] != IGNORE
        np.testing.assert_array_equal(
            per[i], sk_confusion_matrix(t[i][v], p[i][v], labels=range(5))
        )


@pytest.mark.parametrize("seed", range(3))
def test_metrics_match_sklearn_with_an_absent_class(seed: int) -> None:
    k, absent = 5, 3
    t, p = _random_masks(seed, k, absent=absent)
    valid = t != IGNORE
    yt, yp = t[valid], p[valid]
    names = ["bg", "a", "b", "never", "c"]
    with pytest.warns(UndefinedMetricWarning, match="'never'"):
        m = segmentation_metrics(pixel_confusion_matrix(t, p, k, IGNORE), names)
    present = [c for c in range(k) if c != absent]
    iou = jaccard_score(yt, yp, labels=present, average=None)
    dice = f1_score(yt, yp, labels=present, average=None)
    for j, c in enumerate(present):
        assert m["per_class"][names[c]]["iou"] == pytest.approx(iou[j])
        assert m["per_class"][names[c]]["dice"] == pytest.approx(dice[j])
    assert m["per_class"]["never"]["iou"] is None and m["per_class"]["never"]["dice"] is None
    assert m["mean_iou"] == pytest.approx(iou.mean())  # the undefined class is left out
    assert m["mean_dice"] == pytest.approx(dice.mean())
    assert m["pixel_accuracy"] == pytest.approx(accuracy_score(yt, yp))
    support = np.array([(yt == c).sum() for c in present])
    assert m["frequency_weighted_iou"] == pytest.approx((support * iou).sum() / support.sum())
    assert m["num_pixels"] == valid.sum()
    assert any("never" in w for w in m["warnings"])
    json.dumps(m)  # JSON-able: None, not NaN


def test_perfect_and_all_ignored_predictions() -> None:
    t = np.array([[0, 1], [2, IGNORE]], dtype=np.uint8)
    m = segmentation_metrics(pixel_confusion_matrix(t, np.where(t == IGNORE, 0, t), 3))
    assert m["mean_iou"] == 1.0 and m["pixel_accuracy"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        empty = segmentation_metrics(
            pixel_confusion_matrix(np.full((2, 2), IGNORE), np.zeros((2, 2)), 3)
        )
    assert empty["pixel_accuracy"] is None and empty["mean_iou"] is None
    with pytest.raises(ValueError, match="class indices"):
        pixel_confusion_matrix(np.array([[7]]), np.array([[0]]), 3)


# -- geometry and augmentation ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fit", "crop", "stretch"])
def test_mask_resize_follows_the_image_layout(mode: str) -> None:
    """A bright rectangle and its mask, resized by the image and the mask paths, still coincide."""
    h, w = 30, 46
    region = np.zeros((h, w), dtype=bool)
    region[6:22, 10:37] = True
    img = Image.fromarray(np.where(region, 255, 0).astype(np.uint8)).convert("RGB")
    small_img = np.asarray(resize_to_square(img, 16, mode))[..., 0]
    small_mask = resize_mask(region.astype(np.uint8), 16, mode, fill=IGNORE)
    labelled = small_mask != IGNORE
    agree = ((small_img > 127) == (small_mask == 1))[labelled].mean()
    assert agree > 0.93
    if mode == "fit":  # padding rows are ignore, not background
        assert (~labelled).sum() == 16 * (16 - round(h * 16 / w))
    else:
        assert labelled.all()


def test_mask_loader_crops_and_flips_masks_with_their_images() -> None:
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.integers(0, 5, (8, 16, 16)).astype(np.uint8))
    images = (masks * 40).unsqueeze(1).repeat(1, 3, 1, 1)  # pixel value = 40 x class
    loader = MaskLoader(
        images,
        masks,
        torch.zeros(3),
        torch.ones(3),
        4,
        shuffle=True,
        augment=("crop", "flip"),
        seed=3,
        ignore_index=IGNORE,
    )
    changed = False
    for x, y, idx in loader.batches(epoch=1):
        pix = (x[:, 0] * 255).round().long()
        labelled = y != IGNORE
        assert torch.equal(pix[labelled], y[labelled] * 40)
        assert (pix[~labelled] == 0).all()  # crop padding: black image, ignored mask
        changed |= not torch.equal(y, masks[idx].long())
    assert changed
    with pytest.raises(ConfigError, match="affine"):
        MaskLoader(images, masks, torch.zeros(3), torch.ones(3), 4, augment=("affine",))


def test_logits_map_back_to_the_original_image() -> None:
    from cnnlab.data.masks import logits_to_image_mask

    rng = np.random.default_rng(1)
    mask = np.zeros((40, 64), dtype=np.uint8)
    mask[5:30, 8:30], mask[10:38, 40:60] = 1, 2
    for mode in ("fit", "stretch"):
        small = resize_mask(mask, 24, mode, fill=0)
        logits = torch.nn.functional.one_hot(torch.from_numpy(small).long(), 3).permute(2, 0, 1)
        back = logits_to_image_mask(
            logits.float() * 10 + 0.01 * torch.from_numpy(rng.random((3, 24, 24))), 64, 40, mode
        )
        assert back.shape == (40, 64) and (back == mask).mean() > 0.93


# -- pre-flight checks -----------------------------------------------------------------------------
def test_bad_masks_are_named(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match="no palette") as err:
        read_mask(rgb)
    assert str(rgb) in str(err.value)
    assert read_mask(rgb, palette={(0, 0, 0): 2}).max() == 2
    with pytest.raises(DataError, match=r"\(9, 9, 9\)"):
        Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(rgb)
        read_mask(rgb, palette={(0, 0, 0): 0})
    jpeg = tmp_path / "m.jpg"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg)
    with pytest.raises(DataError, match="JPEG"):
        read_mask(jpeg)
    with pytest.raises(DataError, match="mask is 8×6 but its image img.png is 8×8"):
        check_mask(np.zeros((6, 8), np.int32), "m.png", (8, 8), 3, IGNORE, "img.png")
    with pytest.raises(DataError, match=r"values \[7\]"):
        check_mask(np.array([[0, 7], [IGNORE, 2]]), "m.png", (2, 2), 3, IGNORE, "img.png")


# -- layouts written in their real formats ---------------------------------------------------------
def _scene(rng: np.random.Generator, h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with one bright rectangle of class 1..k-1 and its (H, W) mask."""
    img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    c = int(rng.integers(1, k))
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y0 : y0 + h // 2, x0 : x0 + w // 2] = c
    img[mask == c] = (80 * c) % 256
    return img, mask


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg") / "folder"
    (root / "images" / "sub").mkdir(parents=True)
    (root / "masks" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    colours = [[0, 0, 0], [200, 0, 0], [0, 200, 0]]
    (root / "classes.json").write_text(
        json.dumps(
            [
                {"name": n, "color": c}
                for n, c in zip(["background", "red", "green"], colours, strict=True)
            ]
        )
    )
    for i in range(10):
        img, mask = _scene(rng, 20, 28, 3)
        rel = Path("sub" if i % 2 else ".") / f"img{i}"
        Image.fromarray(img).save(root / "images" / rel.with_suffix(".jpg" if i % 3 else ".png"))
        if i % 4 == 0:  # some masks RGB through the declared palette, the others class indices
            Image.fromarray(np.asarray(colours, np.uint8)[mask]).save(
                root / "masks" / rel.with_suffix(".png")
            )
        else:
            Image.fromarray(mask).save(root / "masks" / rel.with_suffix(".png"))
    return root


def test_folder_layout_trains_evaluates_and_predicts(
    folder_dataset: Path, tmp_path: Path, run_digests
) -> None:
    from cnnlab.segment import evaluate_segmentation, predict_segmentation, train_segmentation

    result = train_segmentation(
        data=str(folder_dataset), out=str(tmp_path), name="f", **TINY | {"report": True}
    )
    run = result.run_dir
    assert json.loads((run / "classes.json").read_text()) == ["background", "red", "green"]
    assert result.history and "val_miou" in result.history[0]
    assert "val_miou" in (run / "metrics.csv").read_text().splitlines()[0]
    m = result.test_metrics
    assert m["num_images"] == 2 and set(m["per_class"]) == {"background", "red", "green"}
    html = (run / "report.html").read_text()
    assert "Worst test images" in html and html.count("data:image/png") >= 7
    ci = m["confidence_intervals"]  # bootstrap over the test images, recorded with the metrics
    assert ci["mean_iou"]["value"] == m["mean_iou"] and ci["n_boot"] == 1000
    assert ci["mean_iou"]["low"] <= m["mean_iou"] <= ci["mean_iou"]["high"]
    assert (
        f"{m['mean_iou']:.3f} [{ci['mean_iou']['low']:.3f}, {ci['mean_iou']['high']:.3f}]" in html
    )
    row = read_run(run)  # `cnnlab runs` shows the recorded interval
    assert (row.metric, row.low, row.high) == ("mean_iou", ci["mean_iou"]["low"],
                                               ci["mean_iou"]["high"])  # fmt: skip
    before = run_digests(run)
    evaluated = evaluate_segmentation(run, device="cpu")
    again = evaluated["metrics"]
    assert again["confusion_matrix"] == m["confusion_matrix"]  # same split, same best weights
    assert run_digests(run) == before  # the run's own metrics, predictions and report untouched
    written = json.loads((Path(evaluated["out_dir"]) / "test_metrics.json").read_text())
    assert written["confidence_intervals"] == again["confidence_intervals"] == ci
    # predict needs only the run directory: the checkpoint carries classes, preprocessing, palette
    inputs = sorted((folder_dataset / "images").rglob("*.*"))[:3]
    written = predict_segmentation(run, inputs, tmp_path / "pred", device="cpu")
    assert len(written) == 3
    for src, out in zip(inputs, written, strict=True):
        values = np.asarray(Image.open(out))
        assert values.shape == Image.open(src).size[::-1]
        assert set(np.unique(values)) <= {0, 1, 2}
        assert (tmp_path / "pred" / "overlays" / out.name).is_file()


def _mask_folder(
    root: Path,
    n: int = 6,
    *,
    sides: Sequence[int] | None = None,
    image_suffix: str = ".png",
    name: Callable[[int], str] = str,
    as_saved: Callable[[int, np.ndarray], np.ndarray] = lambda i, mask: mask,
) -> Path:
    """DIR/images + DIR/masks of ``n`` two-class scenes (16 px, or ``sides[i]``), seed 0; each mask
    saved as ``as_saved(i, mask)`` returns it (the faults the tests below plant)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        side = sides[i] if sides else 16
        img, mask = _scene(rng, side, side, 2)
        Image.fromarray(img).save(root / "images" / f"{name(i)}{image_suffix}")
        Image.fromarray(as_saved(i, mask).astype(np.uint8)).save(root / "masks" / f"{name(i)}.png")
    return root


def test_folder_mask_with_wrong_size_stops_training(tmp_path: Path) -> None:
    from cnnlab.segment import train_segmentation

    root = _mask_folder(tmp_path / "bad", as_saved=lambda i, m: m[:, :12] if i == 4 else m)
    with pytest.raises(DataError, match="mask is 12×16 but its image") as err:
        train_segmentation(data=str(root), out=str(tmp_path / "runs"), **TINY)
    assert err.value.path.endswith("4.png")


def _cut_in_half(path: Path) -> None:
    """A truncated file, as a copy or download cut short leaves it (real bytes, not a mock)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_corrupt_image_is_skipped_reported_and_kept_out_of_the_recorded_splits(
    tmp_path: Path, caplog
) -> None:
    """bad-inputs.md B: SKIP+REPORT, as classification and video do. Training stopped on the
    first corrupt image; now the pair is skipped (1 of 20: under the 10 % limit), listed in
    data_report.json, said once, and absent from splits.json, so `cnnlab segment evaluate RUN`
    does not decode it again (it was in the test split)."""
    from cnnlab.segment import evaluate_segmentation, train_segmentation

    root = _mask_folder(tmp_path / "cut", 20, name=lambda i: f"{i:02d}")
    test_ids = load_mask_source(str(root), val_fraction=0.2, test_fraction=0.2).splits["test"].ids
    bad = root / "images" / test_ids[0]
    _cut_in_half(bad)
    with caplog.at_level("WARNING", logger="cnnlab.segment"):
        run = train_segmentation(data=str(root), out=str(tmp_path / "runs"), **TINY).run_dir
    reason = "truncated or corrupt image data"
    said = [r.getMessage() for r in caplog.records if "bad image files skipped" in r.getMessage()]
    assert said == [f"{root}: 1 bad image files skipped: {bad} ({reason}) (see data_report.json)"]
    report = json.loads((run / "data_report.json").read_text())
    assert report == {"skipped_images": [{"image": str(bad), "reason": reason}]}
    splits = json.loads((run / "splits.json").read_text())["splits"]
    assert sum(len(ids) for ids in splits.values()) == 19
    assert test_ids[0] not in {i for ids in splits.values() for i in ids}
    again = evaluate_segmentation(run, device="cpu", report=False)
    assert np.isfinite(again["metrics"]["mean_iou"])


def test_corrupt_images_over_the_limit_or_with_strict_refuse_training(tmp_path: Path) -> None:
    """Over --max-bad-fraction (1 of 6) or with --strict: one error naming the count, the
    fraction, the file and the fixes, before anything is written. Decoding a split outside
    training (evaluate) still names the image's mask and the fix."""
    from cnnlab.config import PreprocessSpec
    from cnnlab.data.masks import decode_split
    from cnnlab.segment import train_segmentation

    root = _mask_folder(tmp_path / "cut", image_suffix=".jpg")
    bad = root / "images" / "3.jpg"
    _cut_in_half(bad)
    runs = tmp_path / "runs"
    with pytest.raises(DataError) as err:
        train_segmentation(data=str(root), out=str(runs), **TINY)
    assert err.value.path == str(root)
    assert err.value.reason == (
        "data check failed: 1 of 6 image files unusable (16.7%, limit 10%: --max-bad-fraction): "
        f"{bad} (truncated or corrupt image data); replace the images, or remove each with its mask"
    )
    with pytest.raises(DataError, match=r"1 of 6 image files unusable \(16.7%, strict mode\)"):
        train_segmentation(data=str(root), out=str(runs), strict=True, max_bad_fraction=0.5,
                           **TINY)  # fmt: skip
    assert not runs.exists()
    split = load_mask_source(str(root), val_fraction=0, test_fraction=0).splits["train"]
    spec = PreprocessSpec(16, 3, (0.0,) * 3, (1.0,) * 3, "fit", {})
    with pytest.raises(DataError) as err:
        decode_split(split, spec, num_classes=2)
    assert err.value.path == str(bad)
    assert err.value.reason == (
        "truncated or corrupt image data; replace the image, or remove it and its mask "
        f"{root / 'masks' / '3.png'}"
    )


def test_evaluate_on_other_data_limits_skipped_images_as_training_does(
    tmp_path: Path, caplog
) -> None:
    """`segment evaluate RUN --data OTHER` stopped at the first image it could not decode, and
    skipped OTHER's COCO annotations of unknown categories without a word. Now train's policy, as
    detect evaluate: 1 of 3 corrupt is over the default 10 %, refused with train's message; under
    a raised limit it is said once and the other 2 are evaluated, the skipped annotation named;
    --strict refuses it (on the command line too, one error line). A bad mask stays an error."""
    from cli_process import assert_user_error

    from cnnlab.segment import evaluate_segmentation, train_segmentation

    run = train_segmentation(
        data=str(_coco_file(tmp_path / "coco")), out=str(tmp_path / "runs"), **TINY
    ).run_dir
    data = _coco_file(tmp_path / "other", n=3)
    doc = json.loads(data.read_text())
    doc["annotations"].append({"id": 99, "image_id": 1, "category_id": 9, "iscrowd": 0,
                               "segmentation": [[1, 1, 5, 1, 5, 5]], "bbox": [1, 1, 4, 4]})  # fmt: skip
    data.write_text(json.dumps(doc))
    bad = tmp_path / "other" / "images" / "1.png"
    _cut_in_half(bad)
    with pytest.raises(DataError) as err:
        evaluate_segmentation(run, data=str(data), device="cpu", report=False)
    assert err.value.path == str(data) and err.value.reason == (
        "data check failed: 1 of 3 image files unusable (33.3%, limit 10%: --max-bad-fraction): "
        f"{bad} (truncated or corrupt image data); replace the images, or remove each with its mask"
    )
    with pytest.raises(DataError, match=r"1 of 3 image files unusable \(33.3%, strict mode\)"):
        evaluate_segmentation(run, data=str(data), device="cpu", report=False,
                              max_bad_fraction=0.5, strict=True)  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING", logger="cnnlab.segment"):
        result = evaluate_segmentation(
            run, data=str(data), device="cpu", report=False, max_bad_fraction=0.5
        )
    said = f"1 bad image files skipped: {bad} (truncated or corrupt image data); evaluating the"
    assert caplog.text.count(said) == 1 and f"{said} other 2" in caplog.text
    skipped_annotation = f"{data}: 1 annotation(s) skipped, category_id not in categories (9)"
    assert caplog.text.count(skipped_annotation) == 1
    assert result["num_samples"] == 2 and np.isfinite(result["metrics"]["mean_iou"])
    assert result["data_report"] == {
        "skipped_annotations": [{"row": 6, "category_id": 9, "reason": "unknown category_id"}],
        "skipped_images": [{"image": str(bad), "reason": "truncated or corrupt image data"}],
    }
    line = assert_user_error("segment", "evaluate", str(run), "--data", str(data), "--device",
                             "cpu", "--max-bad-fraction", "0.5", "--strict",
                             names=[str(data), "1 of 3 image files unusable"])  # fmt: skip
    assert "strict mode" in line
    # a mask that does not fit its image is a labelling mistake: an error, under any limit
    masks = _mask_folder(tmp_path / "masks", 3, as_saved=lambda i, m: m[:, :12] if i == 1 else m)
    with pytest.raises(DataError, match="mask is 12×16 but its image") as err:
        evaluate_segmentation(run, data=str(masks), device="cpu", report=False,
                              max_bad_fraction=0.5)  # fmt: skip
    assert err.value.path.endswith("1.png")


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_max_bad_fraction_and_strict_are_options_of_both_tasks(task: str, capsys) -> None:
    from cnnlab.cli import main
    from cnnlab.config import make_config
    from cnnlab.tasks.configs import DetectConfig, SegmentConfig

    cls = {"segment": SegmentConfig, "detect": DetectConfig}[task]
    assert (cls().max_bad_fraction, cls().strict) == (0.1, False)
    for wrong in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"option max_bad_fraction must be in \[0, 1\)"):
            make_config(cls, max_bad_fraction=wrong)
    with pytest.raises(SystemExit):
        main([task, "train", "--help"])
    out = capsys.readouterr().out
    assert "--max-bad-fraction MAX_BAD_FRACTION" in out and "--strict, --no-strict" in out


def test_binary_masks_saved_0_255_are_refused_with_the_fix(tmp_path: Path, caplog) -> None:
    """Foreground 255 is the ignore index: such a run trained on background alone, rc 0."""
    from cnnlab.data.masks import MaskSplit, check_training_masks
    from cnnlab.segment import train_segmentation

    root = _mask_folder(tmp_path / "binary", 8, as_saved=lambda i, m: (m > 0) * 255)
    with pytest.raises(DataError) as err:
        train_segmentation(data=str(root), out=str(tmp_path / "runs"), **TINY)
    assert "hold only class '0' besides the ignore index 255" in err.value.reason
    assert "save class indices instead (foreground 1, e.g. mask // 255)" in err.value.reason
    assert err.value.path.startswith(str(root / "masks")) and not (tmp_path / "runs").exists()
    # by hand: class 2 only outside the training split -> trained, with a warning naming it
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2] = 1
    masks[1, 0, 0] = 255
    with caplog.at_level("WARNING", logger="cnnlab.data.masks"):
        check_training_masks(masks, MaskSplit(["a", "b"]), ["bg", "x", "y"], 255, "DIR")
    assert "no training pixel of class(es) y" in caplog.text
    with pytest.raises(DataError, match="hold no class besides the ignore index 7 .100%"):
        check_training_masks(np.full((1, 4, 4), 7, np.uint8), MaskSplit(["a"]), ["bg", "x"], 7,
                             "DIR")  # fmt: skip


def test_bad_masks_are_counted_over_every_split(tmp_path: Path) -> None:
    """The first problem is raised with the count of all the others (docs/segmentation.md), not
    only of those in the split decoded first (a 20-image source: the 2-image test split)."""
    from cnnlab.segment import train_segmentation

    root = _mask_folder(  # 5 RGB masks, no palette
        tmp_path / "rgb", 20, name=lambda i: f"{i:02d}",
        as_saved=lambda i, m: m if i % 4 else np.stack([m * 200] * 3, -1),
    )  # fmt: skip
    with pytest.raises(DataError, match="no palette was declared") as err:
        train_segmentation(data=str(root), out=str(tmp_path / "runs"), **TINY)
    assert err.value.path == str(root / "masks" / "00.png")  # the first by name over all splits
    assert err.value.reason.endswith("(and 4 more file(s) with problems)")
    assert not (tmp_path / "runs").exists()


def test_voc_layout(tmp_path: Path) -> None:
    from cnnlab.segment import train_segmentation

    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    pal = voc_palette().flatten().tolist()
    ids = [f"2007_{i:06d}" for i in range(10)]
    for i in ids:
        img, mask = _scene(rng, 18, 22, 21)
        mask[0, :] = 255  # VOC's void boundary
        Image.fromarray(img).save(root / "JPEGImages" / f"{i}.jpg")
        p = Image.fromarray(mask, mode="L")
        p.putpalette(pal)  # a palette PNG: index = class
        p.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:7]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[7:]) + "\n")
    bundle = load_mask_source(str(tmp_path / "VOCdevkit"), val_fraction=0.2)
    assert bundle.layout == "voc" and len(bundle.class_names) == 21
    assert read_mask(bundle.splits["test"].mask_refs[0].path).max() == 255
    result = train_segmentation(
        data=str(tmp_path / "VOCdevkit"), out=str(tmp_path / "runs"), **TINY
    )
    splits = json.loads((result.run_dir / "splits.json").read_text())["splits"]
    assert splits["test"] == ids[7:]
    assert result.test_metrics["num_images"] == 3
    assert result.test_metrics["num_pixels"] < 3 * 16 * 16  # void rows and fit padding not scored


def _coco_file(root: Path, n: int = 8) -> Path:
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    rng = np.random.default_rng(2)
    for i in range(n):
        img = rng.integers(0, 50, (20, 24, 3)).astype(np.uint8)
        img[2:12, 3:13] = 200
        img[10:18, 14:22] = 120
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 20, "width": 24})
        anns.append(
            {
                "id": 2 * i + 1,
                "image_id": i + 1,
                "category_id": 7,
                "iscrowd": 0,
                "segmentation": [[3, 2, 13, 2, 13, 12, 3, 12]],
                "area": 100,
                "bbox": [3, 2, 10, 10],
            }
        )
        anns.append(
            {
                "id": 2 * i + 2,
                "image_id": i + 1,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": [[14, 10, 22, 10, 22, 18, 14, 18]],
                "area": 64,
                "bbox": [14, 10, 8, 8],
            }
        )
    path = root / "instances.json"
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_polygons_rasterised(tmp_path: Path) -> None:
    from cnnlab.segment import train_segmentation

    path = _coco_file(tmp_path / "coco")
    bundle = load_mask_source(str(path), val_fraction=0.25, test_fraction=0.25)
    assert bundle.class_names == ["background", "cat", "dog"]  # category ids in order: 3, 7
    ref = bundle.splits["train"].mask_refs[0]
    mask = ref.read()
    assert mask.shape == (20, 24)
    dog, cat = mask == 2, mask == 1
    assert dog[3:11, 4:12].all() and cat[11:17, 15:21].all()  # interiors of the two polygons
    assert not dog[13:, :].any() and not cat[:9, :].any()
    result = train_segmentation(data=str(path), out=str(tmp_path / "runs"), **TINY)
    assert set(result.test_metrics["per_class"]) == {"background", "cat", "dog"}


def test_coco_overlap_and_crowd_are_ignored(tmp_path: Path) -> None:
    path = _coco_file(tmp_path / "coco", n=1)
    data = json.loads(path.read_text())
    data["annotations"].append(
        {
            "id": 99,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": [[3, 2, 8, 2, 8, 7, 3, 7]],
            "area": 25,
            "bbox": [3, 2, 5, 5],
        }
    )
    data["annotations"].append(
        {
            "id": 100,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 1,
            "segmentation": {"size": [20, 24], "counts": [0, 20, 460]},
            "area": 20,
            "bbox": [0, 0, 1, 20],
        }
    )
    path.write_text(json.dumps(data))
    mask = (
        load_mask_source(str(path), val_fraction=0, test_fraction=0)
        .splits["train"]
        .mask_refs[0]
        .read()
    )
    assert (mask[3:6, 4:7] == IGNORE).all()  # covered by two annotations
    assert (mask[:, 0] == IGNORE).all()  # the crowd region (first column, RLE)


_SHORT = "has 3 numbers; a polygon is an even number, at least 6"


@pytest.mark.parametrize(
    ("segmentation", "said"),
    [
        ([[1, 2, 3]], _SHORT),  # was pycocotools' "input type is not supported." traceback
        ([[1, 2, 3, 4]], "has 4 numbers"),  # was "cannot be rasterised (Argument 'bb' ...)"
        ([[1, 2, 3, 4, 5, 6, 7]], "has 7 numbers"),  # pycocotools dropped the 7th silently
        ([[1, 2, 3, 4, 5, float("nan")]], "non-finite coordinate"),
        ([[1, 2, "a", 4, 5, 6]], "not a list of numbers"),
        ([], "empty list"),
        (None, "no 'segmentation'"),  # the key missing: was "cannot be rasterised ('segmentation')"
        ({"size": [20, 24], "counts": [0, 20]}, "'counts' sum to 20, not height x width 480"),
        ({"size": [10, 24], "counts": [0, 240]}, "'size' [10, 24] is not its image's"),
        ({"counts": [0, 480]}, "RLE 'size' is null; give [height, width]"),
    ],
)
def test_a_malformed_coco_segmentation_is_refused_naming_the_annotation(
    tmp_path: Path, segmentation: object, said: str
) -> None:
    """A short polygon crashed training with pycocotools' traceback; 4 numbers (read as a box) or
    no segmentation key said only "cannot be rasterised" with pycocotools' words. Now each is
    refused when the file is read, as an unrasterisable segmentation always was, in one line
    naming the annotation id and what is wrong."""
    path = _coco_file(tmp_path / "coco", n=2)
    doc = json.loads(path.read_text())
    if segmentation is None:
        del doc["annotations"][2]["segmentation"]
    else:
        doc["annotations"][2]["segmentation"] = segmentation
    path.write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=r"annotation 3 \(image_id 2\): .*" + re.escape(said)
    ) as err:
        load_mask_source(str(path), val_fraction=0, test_fraction=0)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_builtin_shapes_round_trip_and_classification_runs_rejected(tmp_path: Path) -> None:
    from cnnlab.engine.checkpoint import save_weights
    from cnnlab.segment import load_segmentation_model, train_segmentation

    result = train_segmentation(data="builtin:shapes?n=30&size=16", out=str(tmp_path), **TINY)
    assert result.test_metrics["class_names"][0] == "background"
    assert len(result.test_metrics["class_names"]) == 6
    fake = tmp_path / "cls.safetensors"
    save_weights(fake, {"w": torch.zeros(1)}, {"task": "classification", "model": "lenet5"})
    with pytest.raises(CheckpointError, match="not a segmentation"):
        load_segmentation_model(fake)


# -- models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["unet", "fcn", "deeplabv3", "lraspp"])
def test_architectures_give_logits_at_input_size(arch: str) -> None:
    from cnnlab.models.segmentation import create_segmentation_model

    model = create_segmentation_model(arch, num_classes=4, encoder="lenet5", image_size=24)
    x = torch.randn(2, 3, 24, 24, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 4, 24, 24)
    out.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("model", ["deeplabv3", "deeplabv3_resnet50"])
def test_deeplab_with_one_image_per_batch_is_refused_before_training(model: str) -> None:
    """docs/segmentation.md: DeepLabV3 needs batch size >= 2 (its image-pooling BatchNorm sees a
    1x1 map). `--batch-size 1` passed every check, wrote the run folder and then stopped at the
    first step with torch's ValueError traceback; now the config refuses it, naming the option
    (per process: 4 images over 4 processes is 1 each)."""
    from cnnlab.config import make_config
    from cnnlab.models.segmentation import create_segmentation_model
    from cnnlab.tasks.configs import SegmentConfig

    with pytest.raises(ConfigError, match=rf"batch_size 1 is too small for {model}.*at least 2"):
        make_config(SegmentConfig, model=model, batch_size=1)
    with pytest.raises(ConfigError, match="per process"):
        make_config(SegmentConfig, model=model, batch_size=4, devices=4)
    assert make_config(SegmentConfig, model=model, batch_size=2).batch_size == 2
    assert make_config(SegmentConfig, model="unet", batch_size=1).batch_size == 1
    if model == "deeplabv3":  # what the refusal spares: torch's error at the first step
        net = create_segmentation_model(model, num_classes=3, encoder="lenet5", image_size=24)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            net.train()(torch.randn(1, 3, 24, 24))


def test_encoder_starts_from_a_classification_checkpoint(tmp_path: Path) -> None:
    from cnnlab.engine.checkpoint import save_weights
    from cnnlab.models import create_model
    from cnnlab.models.segmentation import create_segmentation_model

    clf = create_model("lenet5", num_classes=10, in_channels=3, image_size=24)
    path = tmp_path / "best.safetensors"
    meta = {
        "model": "lenet5",
        "task": "classification",
        "num_classes": 10,
        "in_channels": 3,
        "preprocess": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]},
    }
    save_weights(path, clf.state_dict(), meta)
    seg = create_segmentation_model(
        "unet", num_classes=3, encoder="lenet5", image_size=24, encoder_weights=str(path)
    )
    own = seg.encoder.backbone.state_dict()
    for key, value in own.items():
        assert torch.equal(value, clf.state_dict()[key]), key
    assert seg.default_cfg["mean"] == [0.1, 0.2, 0.3]
    with pytest.raises(CheckpointError, match="resnet18"):
        create_segmentation_model(
            "unet", num_classes=3, encoder="resnet18", image_size=24, encoder_weights=str(path)
        )


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet18", "vgg11_bn"])
def test_zoo_encoders_and_torchvision_builders(encoder: str) -> None:
    from cnnlab.models.segmentation import create_segmentation_model

    for arch in ("unet", "deeplabv3"):
        model = create_segmentation_model(arch, num_classes=3, encoder=encoder, image_size=32)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    tv = create_segmentation_model("lraspp_mobilenet_v3_large", num_classes=3)
    assert tv.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


# -- timm encoders (issue 22) ----------------------------------------------------------------------
def test_timm_encoder_is_timms_feature_extractor(tmp_path: Path) -> None:
    """encoder="timm:test_resnet": timm's features_only network; its stage maps and channels are
    what timm's own extractor gives for the same weights, and the decoders run on them."""
    import timm

    from cnnlab.engine.checkpoint import save_weights
    from cnnlab.models import create_model
    from cnnlab.models.segmentation import create_segmentation_model

    seg = create_segmentation_model(
        "unet", num_classes=3, encoder="timm:test_resnet", in_channels=1, image_size=32
    )
    reference = timm.create_model("test_resnet", features_only=True, in_chans=1)
    want = reference.feature_info.get_dicts()
    assert seg.encoder.channels == [f["num_chs"] for f in want] == [32, 32, 48, 192, 96]
    assert seg.encoder.reductions == [f["reduction"] for f in want] == [2, 4, 8, 16, 32]
    reference.load_state_dict(seg.encoder.backbone["net"].state_dict())
    x = torch.randn(2, 1, 32, 32)
    seg.eval(), reference.eval()
    with torch.no_grad():
        for ours, theirs in zip(seg.encoder(x), reference(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert seg(x).shape == (2, 3, 32, 32)
    # a timm: classification run's tensors (net.*) initialise the encoder by name
    clf = create_model("timm:test_resnet", num_classes=4, in_channels=1, image_size=32)
    path = tmp_path / "best.safetensors"
    save_weights(path, clf.state_dict(), {"model": "timm:test_resnet", "task": "classification",
                                          "preprocess": {"mean": [0.5], "std": [0.25]}})  # fmt: skip
    seg = create_segmentation_model("fcn", num_classes=3, encoder="timm:test_resnet",
                                    in_channels=1, image_size=32, encoder_weights=str(path))  # fmt: skip
    for key, value in seg.encoder.backbone.state_dict().items():
        assert torch.equal(value, clf.state_dict()[key]), key
    assert seg.default_cfg["mean"] == [0.5]
    with pytest.raises(ConfigError, match=r"unknown timm model 'test_resnt'.*test_resnet"):
        create_segmentation_model("unet", num_classes=3, encoder="timm:test_resnt")
    with pytest.raises(ConfigError, match="keeps timm's own stem"):
        create_segmentation_model("unet", num_classes=3, encoder="timm:test_resnet",
                                  encoder_variant="small-input")  # fmt: skip


@pytest.mark.slow  # a timm encoder trained, evaluated and reloaded: seconds
def test_timm_encoder_trains_end_to_end(tmp_path: Path) -> None:
    from cnnlab.segment import evaluate_segmentation, predict_segmentation, train_segmentation

    result = train_segmentation(
        data="builtin:shapes?n=24&size=32", out=str(tmp_path), name="t",
        **TINY | {"encoder": "timm:resnet10t", "image_size": 32},
    )  # fmt: skip
    assert np.isfinite(result.history[0]["train_loss"])
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["encoder"] == "timm:resnet10t"
    again = evaluate_segmentation(result.run_dir, device="cpu", report=False)
    assert again["metrics"]["confusion_matrix"] == result.test_metrics["confusion_matrix"]
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)).save(image)
    (mask,) = predict_segmentation(result.run_dir, [image], tmp_path / "pred", device="cpu")
    assert np.asarray(Image.open(mask)).shape == (40, 30)


def test_mixed_image_sizes_without_image_size_are_said(tmp_path: Path, caplog) -> None:
    from cnnlab.data.masks import load_mask_source
    from cnnlab.segment import SegmentConfig, _image_size

    root = _mask_folder(tmp_path / "mixed", 2, sides=(16, 20))
    bundle = load_mask_source(str(root), val_fraction=0, test_fraction=0)
    with caplog.at_level("WARNING", logger="cnnlab.segment"):
        assert _image_size(SegmentConfig(data=str(root)), bundle) == 128
    assert "no single square size: resizing to 128 px (set --image-size)" in caplog.text


@pytest.mark.parametrize("sides", [(24, 24, 24), (12, 12, 12), (24, 24, 20)])
def test_a_folder_of_one_square_size_keeps_it(tmp_path: Path, sides, caplog) -> None:
    """docs/segmentation.md: "images that all share one square size keep it (at least 16 px)".
    Only builtin:shapes did: a folder of 24 px images was resized to 128 px (28x the pixels) with
    the warning meant for mixed sizes. The size now comes from the files' headers."""
    from cnnlab.data.masks import load_mask_source
    from cnnlab.segment import SegmentConfig, _image_size

    root = _mask_folder(tmp_path / "square", 3, sides=sides)
    bundle = load_mask_source(str(root), val_fraction=0, test_fraction=0)
    want = {(24, 24, 24): 24, (12, 12, 12): 16, (24, 24, 20): 128}[sides]
    with caplog.at_level("WARNING", logger="cnnlab.segment"):
        assert _image_size(SegmentConfig(data=str(root)), bundle) == want
    assert ("no single square size" in caplog.text) == (want == 128)


def test_a_resume_keeps_the_image_size_the_run_began_with(tmp_path: Path, monkeypatch) -> None:
    """A run begun without --image-size on a folder of 24 px images by a cnnlab that resized
    them to 128 px (the size is not in config.json, only in preprocess.json) resumes at 128 px:
    a resume goes on with the run as it began, whatever the default now picks."""
    import json

    from cnnlab.data.masks import MaskBundle
    from cnnlab.segment import train_segmentation

    root = _mask_folder(tmp_path / "square", 10, sides=(24,) * 10)
    options = TINY | {"image_size": None, "out": str(tmp_path / "runs"), "name": "r"}
    with monkeypatch.context() as m:
        m.setattr(MaskBundle, "square_side", lambda self: None)  # the earlier default: 128 px
        run = train_segmentation(data=str(root), **options).run_dir
    assert json.loads((run / "preprocess.json").read_text())["image_size"] == 128
    resumed = train_segmentation(resume=str(run), epochs=2, device="cpu")
    assert resumed.history[-1]["epoch"] == 2
    assert json.loads((run / "preprocess.json").read_text())["image_size"] == 128


def test_relocated_data_listing_its_classes_in_another_order_is_labelled_by_name(
    tmp_path: Path,
) -> None:
    """`segment evaluate RUN --relocated-data NEW`: the run's dataset at a new place whose
    classes.json lists red and green the other way round, its masks renumbered to match (a
    regenerated dataset). Mask values are matched to the model's classes by name, so the
    evaluation equals the one at the old place; red covers 4x green's pixels in every image, so
    values taken as the model's indices would swap the two classes' figures. A class the run never
    knew is refused by name."""
    from cnnlab.errors import DataError
    from cnnlab.segment import evaluate_segmentation, train_segmentation

    def dataset(root: Path, names: list[str]) -> None:
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        index = {n: i for i, n in enumerate(names)}
        rng = np.random.default_rng(0)
        for i in range(10):
            img = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
            mask = np.full((16, 16), index["background"], np.uint8)
            mask[0:8, 0:8] = index["red"]  # 64 px
            mask[12:16, 12:16] = index["green"]  # 16 px
            img[0:8, 0:8], img[12:16, 12:16] = (200, 0, 0), (0, 200, 0)
            Image.fromarray(img).save(root / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / f"{i}.png")
        (root / "classes.json").write_text(json.dumps(names))

    dataset(tmp_path / "old", ["background", "red", "green"])
    run = train_segmentation(
        data=str(tmp_path / "old"), out=str(tmp_path / "runs"), name="r", **TINY
    ).run_dir
    here = evaluate_segmentation(run, device="cpu", report=False)
    dataset(tmp_path / "new", ["background", "green", "red"])
    there = evaluate_segmentation(
        run, device="cpu", report=False, relocated_data=str(tmp_path / "new")
    )
    assert there["metrics"]["per_class"] == here["metrics"]["per_class"]
    assert there["metrics"]["mean_iou"] == here["metrics"]["mean_iou"]
    (tmp_path / "new" / "classes.json").write_text(json.dumps(["background", "green", "wolf"]))
    with pytest.raises(DataError, match=r"classes \['wolf'\] are not among the model's .*changed"):
        evaluate_segmentation(run, device="cpu", report=False, relocated_data=str(tmp_path / "new"))
