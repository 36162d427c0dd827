"""Given splits without a test (or val) split -- Ultralytics' images/train + images/val, VOC2012's
ImageSets/Main/{train,val}.txt, a segmentation DIR/{train,val}/, a video root/{train,val}/ --
get the missing split carved out of train (seeded, the fractions of an unsplit source), as
classification does. Before, such a run trained and wrote no test metrics and no report, silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.boxes import load_box_source
from cnnlab.data.masks import carve_missing, load_mask_source
from cnnlab.errors import DataError
from cnnlab.tasks.configs import VideoConfig
from cnnlab.video.train import ClipSet, _split


def _image(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), value, np.uint8)).save(path)


def _yolo(root: Path, splits: dict[str, int]) -> Path:
    for split, n in splits.items():
        for i in range(n):
            _image(root / "images" / split / f"{split}{i}.png")
            label = root / "labels" / split / f"{split}{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{i % 2} 0.5 0.5 0.25 0.25\n")
    (root / "classes.txt").write_text("red\nblue\n")
    return root


def _voc(root: Path, lists: dict[str, int]) -> Path:
    names: dict[str, list[str]] = {}
    k = 0
    for split, n in lists.items():
        names[split] = []
        for _ in range(n):
            sid = f"2012_{k:04d}"
            k += 1
            _image(root / "JPEGImages" / f"{sid}.jpg")
            (root / "Annotations").mkdir(exist_ok=True)
            (root / "Annotations" / f"{sid}.xml").write_text(
                f"<annotation><filename>{sid}.jpg</filename><object><name>cat</name><bndbox>"
                "<xmin>3</xmin><ymin>3</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
                "</annotation>"
            )
            names[split].append(sid)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split, ids in names.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def _seg(root: Path, splits: dict[str, int]) -> Path:
    for split, n in splits.items():
        for i in range(n):
            _image(root / split / "images" / f"{split}{i}.png")
            mask = np.zeros((24, 32), np.uint8)
            mask[4:12, 4:12] = 1
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / split / "masks" / f"{split}{i}.png")
    return root


def _sizes(bundle) -> dict[str, int]:
    return {k: len(v) for k, v in bundle.splits.items()}


@pytest.mark.parametrize("layout", ["yolo", "voc"])
def test_detection_train_and_val_only_gets_a_test_split_from_train(
    tmp_path: Path, layout: str
) -> None:
    make = {"yolo": _yolo, "voc": _voc}[layout]
    root = make(tmp_path / layout, {"train": 20, "val": 5})
    bundle = load_box_source(str(root), val_fraction=0.1, test_fraction=0.1, seed=3)
    assert _sizes(bundle) == {"train": 18, "val": 5, "test": 2}  # round(0.1 x 20) of train
    assert list(bundle.splits) == ["train", "val", "test"]
    assert "random ['test'](seed=3)" in bundle.split_origin
    val_ids = {s.id for s in bundle.splits["val"]}
    carved = {s.id for s in bundle.splits["test"]}
    assert not carved & val_ids and not carved & {s.id for s in bundle.splits["train"]}
    again = load_box_source(str(root), val_fraction=0.1, test_fraction=0.1, seed=3)
    assert carved == {s.id for s in again.splits["test"]}  # seeded: evaluate finds the same ids
    none = load_box_source(str(root), val_fraction=0.1, test_fraction=0.0, seed=3)
    assert _sizes(none) == {"train": 20, "val": 5}  # --test-fraction 0 leaves it out


def test_detection_given_test_split_is_kept(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo", {"train": 6, "val": 2, "test": 2})
    bundle = load_box_source(str(root), val_fraction=0.1, test_fraction=0.1)
    assert _sizes(bundle) == {"train": 6, "val": 2, "test": 2}
    assert bundle.split_origin == "images/<split>"


def test_segmentation_folder_train_and_val_only_gets_a_test_split(tmp_path: Path) -> None:
    root = _seg(tmp_path / "seg", {"train": 10, "val": 3})
    bundle = load_mask_source(str(root), val_fraction=0.2, test_fraction=0.2, seed=0)
    assert {k: len(v) for k, v in bundle.splits.items()} == {"train": 8, "val": 3, "test": 2}
    assert all(i.startswith("train/") for i in bundle.splits["test"].ids)
    assert bundle.split_origin == "given + random ['test'](seed=0)"
    only_train = load_mask_source(str(_seg(tmp_path / "t", {"train": 10})), val_fraction=0.2,
                                  test_fraction=0.2)  # fmt: skip
    assert {k: len(v) for k, v in only_train.splits.items()} == {"train": 6, "val": 2, "test": 2}


def test_video_train_and_val_folders_get_a_stratified_test_split() -> None:
    targets = np.array([0, 1] * 10 + [0, 1] * 2)
    given = {"train": np.arange(20), "val": np.arange(20, 24)}
    clips = ClipSet(np.zeros((24, 2, 3, 4, 4), np.uint8), targets, [f"c{i}" for i in range(24)],
                    ["left", "right"], given, {}, 1.0)  # fmt: skip
    parts = _split(clips, VideoConfig(data="videos/", val_fraction=0.1, test_fraction=0.2))
    assert sorted(parts) == ["test", "train", "val"]
    assert np.array_equal(parts["val"], given["val"])
    assert len(parts["test"]) == 4 and np.bincount(targets[parts["test"]]).tolist() == [2, 2]
    assert sorted(np.concatenate([parts["train"], parts["test"]]).tolist()) == list(range(20))


def test_carve_missing_by_hand() -> None:
    splits = {"train": list("abcdefghij"), "val": []}  # an empty val counts as missing
    out, carved = carve_missing(splits, 0.2, 0.1, 0, lambda p, idx: [p[int(i)] for i in idx])
    assert carved == ["val", "test"] and list(out) == ["train", "val", "test"]
    assert (len(out["train"]), len(out["val"]), len(out["test"])) == (7, 2, 1)
    assert sorted(out["train"] + out["val"] + out["test"]) == list("abcdefghij")
    same, none = carve_missing({"train": [1, 2], "test": [3]}, 0.0, 0.5, 0, lambda p, i: p)
    assert none == [] and same == {"train": [1, 2], "test": [3]}


def test_voc_list_entry_without_annotation_is_counted(tmp_path: Path) -> None:
    """An id in ImageSets/Main/train.txt whose XML is gone was dropped without a word."""
    root = _voc(tmp_path / "voc", {"train": 6, "val": 2, "test": 2})
    (root / "Annotations" / "2012_0001.xml").unlink()
    bundle = load_box_source(str(root))
    assert _sizes(bundle) == {"train": 5, "val": 2, "test": 2}
    assert bundle.report.skipped_images == [
        {"image": "2012_0001", "reason": "listed in ImageSets/Main/train.txt but "
                                         "Annotations/2012_0001.xml does not exist"}
    ]  # fmt: skip
    assert "1 image(s) skipped" in bundle.report.summary()


def test_no_such_split_names_the_close_match_and_the_choices() -> None:
    from cnnlab.errors import ConfigError, no_such_split

    err = no_such_split("vall", ["train", "val", "test"])
    assert isinstance(err, ConfigError)
    assert str(err) == (
        "the run has no 'vall' split (did you mean: val?); it has ['test', 'train', 'val']: "
        "pass --split test | train | val"
    )
    assert str(no_such_split("test", ["val", "train"])).endswith("pass --split train | val")


@pytest.mark.slow
def test_evaluating_a_run_without_a_test_split_says_which_to_pass(tmp_path: Path) -> None:
    from cnnlab.detect import evaluate_detection, train_detection
    from cnnlab.errors import ConfigError

    root = _yolo(tmp_path / "yolo", {"train": 6, "val": 2})
    run = train_detection(data=str(root), image_size=64, epochs=1, batch_size=2, test_fraction=0,
                          out=str(tmp_path / "runs"), device="cpu", report=False)  # fmt: skip
    assert run.test_metrics is None
    with pytest.raises(ConfigError, match=r"it has \['train', 'val'\]: pass --split train \| val"):
        evaluate_detection(run.run_dir, device="cpu", report=False)
    assert evaluate_detection(run.run_dir, split="val", device="cpu", report=False)["metrics"]


def test_detection_finds_the_voc_root_under_vocdevkit_as_segmentation_does(tmp_path: Path) -> None:
    _voc(tmp_path / "VOCdevkit" / "VOC2012", {"train": 4, "val": 2, "test": 2})
    for given in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        bundle = load_box_source(str(given))
        assert bundle.source == str(tmp_path / "VOCdevkit" / "VOC2012") and bundle.layout == "voc"
    _voc(tmp_path / "VOCdevkit" / "VOC2007", {"train": 2})
    with pytest.raises(DataError, match="holds 2 VOC roots: pass one of"):
        load_box_source(str(tmp_path / "VOCdevkit"))
