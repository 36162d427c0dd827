"""The COCO structure check shared by detection and segmentation (cnnlab.data.coco.read_coco):
a malformed file is one DataError naming the entry, never a KeyError / TypeError, and two
categories with one id are refused instead of merging their classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_process import assert_user_error, in_process
from PIL import Image

from cnnlab.data.boxes import load_box_source
from cnnlab.data.masks import load_mask_source
from cnnlab.errors import DataError


def _coco(tmp: Path, edit=None) -> Path:
    """Two 32x24 images with one box each, categories 3 (cat) and 7 (dog)."""
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(tmp / "images" / f"a{i}.png")
    doc = {
        "images": [
            {"id": i, "file_name": f"a{i}.png", "width": 32, "height": 24} for i in range(2)
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 0,
                "category_id": 3,
                "bbox": [2, 2, 10, 8],
                "iscrowd": 0,
                "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]],
                "area": 80,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "bbox": [4, 4, 10, 8],
                "iscrowd": 0,
                "segmentation": [[4, 4, 14, 4, 14, 12, 4, 12]],
                "area": 80,
            },
        ],  # fmt: skip
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    if edit:
        edit(doc)
    path = tmp / "instances.json"
    path.write_text(json.dumps(doc))
    return path


def _load(kind: str, path: Path):
    if kind == "detection":
        return load_box_source(str(path), val_fraction=0, test_fraction=0)
    return load_mask_source(str(path), val_fraction=0, test_fraction=0)


def _no_category_id(doc) -> None:
    del doc["categories"][0]["id"]


def _same_category_id(doc) -> None:
    doc["categories"][1]["id"] = 3


def _category_not_object(doc) -> None:
    doc["categories"] = [3, 7]


def _list_image_id(doc) -> None:
    doc["images"][0]["id"] = [0]


def _same_image_id(doc) -> None:
    doc["images"][1]["id"] = 0


def _list_category_in_annotation(doc) -> None:
    doc["annotations"][1]["category_id"] = [7]


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
@pytest.mark.parametrize(
    "edit, names",
    [
        (_no_category_id, ["categories[0]", "'cat'", "no 'id'"]),
        (_same_category_id, ["categories[1]", "id 3", "categories[0]", "its own id"]),
        (_category_not_object, ["categories[0] is 3", "not an object"]),
        (_list_image_id, ["images[0]", "[0]", "integer"]),
        (_same_image_id, ["images[1]", "images[0]", "its own id"]),
        (_list_category_in_annotation, ["annotations[1]", "category_id [7]"]),
    ],
)
def test_malformed_coco_is_one_error_naming_the_entry(
    tmp_path: Path, kind: str, edit, names: list[str]
) -> None:
    path = _coco(tmp_path, edit)
    with pytest.raises(DataError) as err:
        _load(kind, path)
    assert err.value.path == str(path)
    for name in names:
        assert name in err.value.reason, err.value.reason


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_well_formed_coco_still_reads(tmp_path: Path, kind: str) -> None:
    bundle = _load(kind, _coco(tmp_path))
    names = ["cat", "dog"] if kind == "detection" else ["background", "cat", "dog"]
    assert bundle.class_names == names


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_cli_refuses_a_category_without_id(tmp_path: Path, task: str) -> None:
    path = _coco(tmp_path, _no_category_id)
    before = path.read_bytes()
    assert_user_error(task, "train", "--data", str(path), "--epochs", "1", "--out",
                      str(tmp_path / "runs"), names=[str(path), "categories[0]"])  # fmt: skip
    assert path.read_bytes() == before and not (tmp_path / "runs").exists()


def test_detection_coco_without_its_images_names_a_missing_file_and_the_option(
    tmp_path: Path,
) -> None:
    path = _coco(tmp_path)
    (tmp_path / "images").rename(tmp_path / "pictures")  # the JSON's image folder moved
    with pytest.raises(DataError) as err:
        load_box_source(str(path))
    reason = err.value.reason
    assert f"first missing: {tmp_path / 'a0.png'}" in reason
    assert "`cnnlab detect train --data-root IMAGE_FOLDER`" in reason
    assert load_box_source(str(path), data_root=str(tmp_path / "pictures")).num_classes == 2


def test_annotation_of_an_unknown_category_is_skipped_and_counted_by_both_tasks(
    tmp_path: Path, caplog
) -> None:
    """Segmentation stopped on the first image with an annotation of no listed category while
    detection trained on the same file, skipping and counting it; now both skip it, with the same
    record in data_report.json and a warning naming the count and the category."""
    from cnnlab.config import PreprocessSpec
    from cnnlab.data.masks import decode_split

    path = _coco(tmp_path, lambda doc: doc["annotations"][1].update(category_id=9))
    record = [{"row": 1, "category_id": 9, "reason": "unknown category_id"}]
    assert _load("detection", path).report.skipped_annotations == record
    bundle = _load("segmentation", path)
    assert bundle.skipped_annotations == record
    spec = PreprocessSpec(16, 3, (0.0,) * 3, (1.0,) * 3, "fit", {})
    decoded = decode_split(bundle.splits["train"], spec, num_classes=3)
    masks = dict(zip(bundle.splits["train"].ids, decoded[1], strict=True))
    # 255: the padding of the 32x24 image to 16x16 ("fit"), the ignore index
    assert set(np.unique(masks["a1.png"])) == {0, 255}  # its only object skipped: background
    assert set(np.unique(masks["a0.png"])) == {0, 1, 255}  # the cat kept
    with caplog.at_level("WARNING", logger="cnnlab.segment"):
        run = _segmentation_run(path, tmp_path)
    assert json.loads((run / "data_report.json").read_text()) == {"skipped_annotations": record}
    assert f"{path}: 1 annotation(s) skipped, category_id not in categories (9)" in caplog.text


def _segmentation_run(path: Path, tmp_path: Path) -> Path:
    """The run folder of a 1-epoch LeNet-encoder segmentation training on the COCO file ``path``."""
    from cnnlab.segment import train_segmentation

    return train_segmentation(
        data=str(path), encoder="lenet5", image_size=16, epochs=1, batch_size=2,
        val_fraction=0, test_fraction=0, report=False, device="cpu", out=str(tmp_path / "r"),
    ).run_dir  # fmt: skip


def _unknown_image_and_category(doc) -> None:
    doc["annotations"][1]["image_id"] = 99  # no such image
    doc["annotations"].append(doc["annotations"][0] | {"id": 3, "category_id": 9})


def test_annotation_of_an_unknown_image_is_skipped_and_counted_by_both_tasks(
    tmp_path: Path, caplog
) -> None:
    """Segmentation let an annotation of an image_id no image has vanish in pycocotools' index
    (nothing counted, nothing said) while detection skipped and counted it; now both give the
    same record, and segmentation's warning and data_report.json list it beside an unknown
    category."""

    path = _coco(tmp_path, _unknown_image_and_category)
    record = [
        {"row": 1, "image_id": 99, "reason": "unknown image_id"},
        {"row": 2, "category_id": 9, "reason": "unknown category_id"},
    ]
    assert _load("detection", path).report.skipped_annotations == record
    assert _load("segmentation", path).skipped_annotations == record
    with caplog.at_level("WARNING", logger="cnnlab.segment"):
        run = _segmentation_run(path, tmp_path)
    assert json.loads((run / "data_report.json").read_text()) == {"skipped_annotations": record}
    assert (
        f"{path}: 1 annotation(s) skipped, category_id not in categories (9); "
        "1 annotation(s) skipped, image_id not in images (99) (see data_report.json)"
    ) in caplog.text


def _absolute_existing(doc) -> None:  # an image that is there, named by its absolute path
    doc["images"][0]["file_name"] = str(Path(doc["_root"]) / "images" / "a0.png")


def _absolute_elsewhere(doc) -> None:
    doc["images"][0]["file_name"] = "/etc/passwd"


def _dot_dot(doc) -> None:
    doc["images"][0]["file_name"] = "../instances.json"


def _windows_dot_dot(doc) -> None:
    doc["images"][0]["file_name"] = "..\\secret.png"


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
@pytest.mark.parametrize(
    "edit, why",
    [
        (_absolute_existing, "is an absolute path"),
        (_absolute_elsewhere, "is an absolute path"),
        (_dot_dot, "leaves the image folder ('..')"),
        (_windows_dot_dot, "leaves the image folder ('..')"),
    ],
)
def test_a_file_name_outside_the_image_folder_is_refused_naming_the_image(
    tmp_path: Path, kind: str, edit, why: str
) -> None:
    """bad-inputs case 33: an absolute file_name was opened wherever it pointed (/etc/passwd), and
    one absolute name of an image that exists made detection look for every other image beside
    the JSON ("file not found"); `..` climbed out of the dataset. Now refused in one line naming
    the entry, the image id and the name, for both tasks."""

    def put(doc) -> None:
        doc["_root"] = str(tmp_path)
        edit(doc)
        del doc["_root"]

    path = _coco(tmp_path, put)
    name = json.loads(path.read_text())["images"][0]["file_name"]
    with pytest.raises(DataError) as err:
        _load(kind, path)
    assert err.value.path == str(path)
    assert err.value.reason.startswith(f"images[0] (id 0): file_name {name!r} {why}; ")
    assert "relative to the image folder" in err.value.reason and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_a_file_name_linking_out_of_the_image_folder_is_refused(tmp_path: Path, kind: str) -> None:
    """bad-inputs case 33 (via a symlink): a relative name whose link resolves outside the
    image folder is refused as an absolute one is; a link inside the folder still reads."""
    path = _coco(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    (tmp_path / "images" / "a0.png").rename(outside)
    (tmp_path / "images" / "a0.png").symlink_to(outside)
    with pytest.raises(DataError) as err:
        _load(kind, path)
    assert err.value.path == str(path)
    assert "image id 0: file_name 'a0.png' resolves outside the image folder" in err.value.reason
    (tmp_path / "images" / "a0.png").unlink()
    (tmp_path / "images" / "real.png").write_bytes(outside.read_bytes())
    (tmp_path / "images" / "a0.png").symlink_to(tmp_path / "images" / "real.png")
    assert _load(kind, path).class_names[-1] == "dog"


def test_cli_refuses_an_absolute_file_name_in_one_line(tmp_path: Path) -> None:
    path = _coco(tmp_path, _absolute_elsewhere)
    proc = in_process("detect", "train", "--data", str(path), "--epochs", "1", "--out",
                      str(tmp_path / "runs"))  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"error: {path}: images[0] (id 0): file_name '/etc/passwd'")
    assert not (tmp_path / "runs").exists()
