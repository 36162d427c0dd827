"""Object-detection data: COCO JSON, Pascal VOC XML, YOLO txt and ``builtin:shapes`` boxes.

    bundle = load_box_source("annotations/instances.json", val_fraction=0.1, test_fraction=0.1)
    images, targets, ids, report = decode_box_split(bundle.splits["train"], spec, bundle.report)

Layouts (``data``):

* ``FILE.json`` -- COCO instances: ``images`` (id, file_name, width, height), ``categories``
  (id, name), ``annotations`` (image_id, category_id, bbox = [x, y, w, h] pixels, iscrowd).
  Images are looked up under ``data_root`` (default: the JSON's folder, then ``images/`` beside it).
* ``DIR`` with ``Annotations/*.xml`` and ``JPEGImages/`` -- Pascal VOC. ``<bndbox>`` holds
  1-based inclusive pixel corners, so ``x1 = xmin - 1, x2 = xmax`` (Detectron's convention);
  ``ImageSets/Main/{train,val,test}.txt`` give the splits when present (a missing val / test
  split is carved out of train: :func:`cnnlab.data.masks.carve_missing`, as for YOLO's).
* ``DIR`` with ``images/`` and ``labels/`` (optionally one more level: ``images/train`` ...) --
  YOLO: one ``.txt`` per image, lines ``class cx cy w h`` normalised to [0, 1]; class names from
  ``classes.txt`` / ``obj.names`` or the ``names:`` of a ``data.yaml``.
* ``builtin:shapes?n=..&size=..&objects=K`` -- the synthetic shapes with their true boxes.

Label checks (bad-inputs.md cases 38-41), all counted in :class:`BoxReport` and never silent:

* an annotation naming an unknown image id, or an image whose file is missing -> skipped;
* a box with NaN/Inf coordinates, non-positive width or height, or lying outside the image by
  more than ``OVERSHOOT`` (1 % of the side, at least 1 px; Ultralytics' tolerance) -> dropped;
  a smaller overshoot is clipped to the image;
* non-contiguous category ids (COCO 1..90 with gaps, YOLO/VOC ids) -> remapped to 0..K-1 in
  order; ``BoxBundle.category_ids[k]`` is the dataset id of class k (stored in the checkpoint);
* images without (remaining) objects stay in the data as background images and are counted;
* a YOLO class index that is not a whole number, negative or not below the number of classes,
  and a COCO ``file_name`` outside the image folder, are refused (DataError; cases 42 and 33).

Boxes are ``xyxy`` float pixels of the original image until :func:`decode_box_split` maps them
onto the model's square input with the same layout as :func:`cnnlab.data.tensors.resize_to_square`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import PreprocessSpec
from cnnlab.data.coco import (
    image_ids,
    inside_folder,
    outside_folder,
    read_coco,
    unknown_category,
    unknown_image,
)
from cnnlab.data.masks import carve_missing, random_split, shared_square_side, square_geometry
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
OVERSHOOT = 0.01  # fraction of the image side a box may stick out and still be clipped
BOX_AUGMENTATIONS = ("flip",)  # box-aware ops only: crops and affines would need box clipping


@dataclass
class BoxSample:
    """One image and its objects. ``boxes``: (K, 4) xyxy in pixels of the original image, or in
    [0, 1] units when ``normalized`` (YOLO: the image size is only known after decoding)."""

    id: str
    path: Path | None
    boxes: np.ndarray
    labels: np.ndarray  # (K,) contiguous class indices 0..C-1
    array: np.ndarray | None = None  # (H, W, C) uint8 for in-memory sources
    normalized: bool = False


@dataclass
class BoxReport:
    """What the label checks skipped, dropped or clipped; written as ``data_report.json``."""

    skipped_annotations: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: list[dict[str, Any]] = field(default_factory=list)
    dropped_boxes: list[dict[str, Any]] = field(default_factory=list)
    clipped_boxes: int = 0
    background_images: int = 0
    category_map: dict[str, int] = field(default_factory=dict)  # dataset id -> class index

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped_annotations": self.skipped_annotations,
            "skipped_images": self.skipped_images,
            "dropped_boxes": self.dropped_boxes,
            "clipped_boxes": self.clipped_boxes,
            "background_images": self.background_images,
            "category_map": self.category_map,
        }

    def merge(self, other: BoxReport) -> None:
        self.skipped_annotations += other.skipped_annotations
        self.skipped_images += other.skipped_images
        self.dropped_boxes += other.dropped_boxes
        self.clipped_boxes += other.clipped_boxes
        self.background_images += other.background_images

    def summary(self) -> str:
        return (
            f"{len(self.skipped_annotations)} annotation(s) and {len(self.skipped_images)} "
            f"image(s) skipped, {len(self.dropped_boxes)} box(es) dropped, {self.clipped_boxes} "
            f"clipped, {self.background_images} background image(s)"
        )


@dataclass
class BoxBundle:
    source: str
    layout: str  # coco | voc | yolo | builtin
    class_names: list[str]
    category_ids: list[Any]  # dataset category id of each class index (COCO ids, YOLO ints, names)
    splits: dict[str, list[BoxSample]]
    report: BoxReport
    split_origin: str = ""
    native_size: int | None = None  # square side of in-memory images

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def square_side(self) -> int | None:
        """The side every image shares when all are square of one size, else None: the builtin's
        own size, or the image files' headers (as segmentation's MaskBundle.square_side)."""
        if self.native_size:
            return self.native_size
        return shared_square_side(
            s.path for part in self.splits.values() for s in part if s.path is not None
        )


# -- checks ----------------------------------------------------------------------------------------
def check_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    width: int,
    height: int,
    *,
    where: str,
    report: BoxReport,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the usable (K, 4) xyxy pixel boxes: drop NaN/Inf, non-positive sizes and boxes outside
    the image by more than max(1 px, OVERSHOOT x side); clip the rest to [0, W] x [0, H]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep = np.ones(len(boxes), dtype=bool)
    tol_x, tol_y = max(1.0, OVERSHOOT * width), max(1.0, OVERSHOOT * height)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        reason = None
        if not np.isfinite([x1, y1, x2, y2]).all():
            reason = "NaN or infinite coordinate"
        elif x2 <= x1 or y2 <= y1:
            reason = f"non-positive size {x2 - x1:g} x {y2 - y1:g}"
        elif x1 < -tol_x or y1 < -tol_y or x2 > width + tol_x or y2 > height + tol_y:
            reason = f"outside the {width}x{height} image"
        if reason:
            keep[i] = False
            report.dropped_boxes.append(
                {"image": where, "box": [float(v) for v in (x1, y1, x2, y2)], "reason": reason}
            )
    boxes, labels = boxes[keep], labels[keep]
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    report.clipped_boxes += int((clipped != boxes).any(1).sum())
    return clipped.astype(np.float32), labels


def _remap(ids: Sequence[Any], report: BoxReport) -> dict[Any, int]:
    """Dataset category ids (sorted) -> contiguous 0..K-1, recorded in the report."""
    mapping = {cid: k for k, cid in enumerate(ids)}
    report.category_map = {str(cid): k for cid, k in mapping.items()}
    if [str(c) for c in ids] != [str(k) for k in range(len(ids))]:
        log.info("category ids %s remapped to 0..%d", list(ids)[:10], len(ids) - 1)
    return mapping


def _take(samples: list[BoxSample], idx: np.ndarray) -> list[BoxSample]:
    return [samples[int(i)] for i in idx]


def _split(
    samples: list[BoxSample], val: float, test: float, seed: int
) -> dict[str, list[BoxSample]]:
    idx = random_split(len(samples), val, test, seed)
    return {k: _take(samples, v) for k, v in idx.items()}


# -- sources ---------------------------------------------------------------------------------------
def load_box_source(
    data: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    data_root: str | None = None,
) -> BoxBundle:
    """Read a detection dataset's annotations (not its pixels) and split it (see module doc)."""
    if data.startswith("builtin:"):
        return _builtin(data, val_fraction, test_fraction, seed)
    path = Path(data).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        return _coco(path, data_root, val_fraction, test_fraction, seed)
    if path.is_dir():
        voc = _find_voc(path)
        if voc is not None:
            return _voc(voc, val_fraction, test_fraction, seed)
        if (path / "labels").is_dir() and (path / "images").is_dir():
            return _yolo(path, val_fraction, test_fraction, seed)
        raise DataError(
            path,
            "not a detection dataset: expected Annotations/ + JPEGImages/ (Pascal VOC) or "
            "images/ + labels/ (YOLO), or pass a COCO instances .json file",
        )
    raise DataError(path, "not found: pass a COCO .json, a VOC or YOLO folder, or builtin:shapes")


def _builtin(data: str, val: float, test: float, seed: int) -> BoxBundle:
    from cnnlab.data.builtin import load_builtin, refuse_video_builtin

    spec = data[len("builtin:") :]
    refuse_video_builtin(spec)  # its clips do carry boxes: "has no boxes" sent the user away
    if not spec.startswith("shapes"):
        raise ConfigError(f"{data} has no boxes; detection uses builtin:shapes?objects=K")
    ds = load_builtin(spec)
    samples = [
        BoxSample(f"shapes-{i}", None, ds.boxes[i], ds.box_labels[i], ds.images[i])
        for i in range(len(ds.images))
    ]
    ids = list(range(len(ds.class_names)))
    report = BoxReport()
    _remap(ids, report)
    return BoxBundle(
        data,
        "builtin",
        list(ds.class_names),
        ids,
        _split(samples, val, test, seed),
        report,
        f"random(seed={seed})",
        ds.images.shape[1],
    )


def _coco(path: Path, root: str | None, val: float, test: float, seed: int) -> BoxBundle:
    doc = read_coco(path)  # structure checked: ids present, unique, scalar, relative file_names
    folder = Path(root).expanduser() if root else path.parent
    files = [str(i.get("file_name", "")) for i in doc["images"]]
    if not root and not any((folder / f).is_file() for f in files):
        if (path.parent / "images").is_dir():  # common layout: annotations.json + images/
            folder = path.parent / "images"
    report = BoxReport()
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    mapping = _remap([c["id"] for c in cats], report)
    names = [str(c.get("name", c["id"])) for c in cats]
    images: dict[Any, dict[str, Any]] = {}
    for row, im in enumerate(doc["images"]):
        if "id" not in im or "file_name" not in im:
            report.skipped_images.append({"row": row, "reason": "image entry lacks id/file_name"})
            continue
        file = folder / im["file_name"]
        if file.exists() and not inside_folder(folder, im["file_name"]):
            raise outside_folder(path, folder, im["id"], im["file_name"])
        if not file.is_file():
            report.skipped_images.append({"image": str(file), "reason": "file not found"})
            continue
        images[im["id"]] = {"file": file, "boxes": [], "labels": []}
    known_ids = image_ids(doc)
    for row, ann in enumerate(doc["annotations"]):
        image_id, cat = ann.get("image_id"), ann.get("category_id")
        skip = unknown_image(row, ann, known_ids)
        if skip is not None:
            report.skipped_annotations.append(skip)
            continue
        if image_id not in images:
            continue  # its image was skipped (missing file): counted there
        skip = unknown_category(row, ann, mapping)
        if skip is not None:
            report.skipped_annotations.append(skip)
            continue
        if ann.get("iscrowd", 0):  # crowd regions are not single objects (COCO ignores them too)
            report.skipped_annotations.append({"row": row, "reason": "iscrowd"})
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            report.skipped_annotations.append({"row": row, "reason": f"bad bbox {bbox!r}"})
            continue
        x, y, w, h = (float("nan") if v is None else float(v) for v in bbox)
        images[image_id]["boxes"].append([x, y, x + w, y + h])
        images[image_id]["labels"].append(mapping[cat])
    samples = [
        BoxSample(
            str(iid),
            v["file"],
            np.asarray(v["boxes"], dtype=np.float64).reshape(-1, 4),
            np.asarray(v["labels"], dtype=np.int64),
        )
        for iid, v in images.items()
    ]
    if not samples:
        missing = [s["image"] for s in report.skipped_images if s["reason"] == "file not found"]
        first = f"; first missing: {missing[0]}" if missing else ""
        raise DataError(
            path,
            f"no usable image ({report.summary()}){first}; say where the images are "
            f"(`cnnlab detect train --data-root IMAGE_FOLDER`, looked in {folder})",
        )
    return BoxBundle(
        str(path),
        "coco",
        names,
        [c["id"] for c in cats],
        _split(samples, val, test, seed),
        report,
        f"random(seed={seed})",
    )


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _find_voc(path: Path) -> Path | None:
    """The VOC root at ``path`` or below it as the VOC download lays it out (``VOCdevkit/``,
    ``VOC2007/``, ``VOC2012/``), as segmentation finds it (masks._find_voc); several -> ask."""
    if (path / "Annotations").is_dir():
        return path
    found = [
        cand
        for base in (path, path / "VOCdevkit")
        for cand in (base / "VOC2007", base / "VOC2012")
        if (cand / "Annotations").is_dir()
    ]
    if len(found) > 1:
        raise DataError(
            path, f"holds {len(found)} VOC roots: pass one of {[str(f) for f in found]}"
        )
    return found[0] if found else None


def _voc(root: Path, val: float, test: float, seed: int) -> BoxBundle:
    report = BoxReport()
    parsed: list[tuple[str, Path, list[list[float]], list[str]]] = []
    names_seen: list[str] = []
    for xml_path in sorted((root / "Annotations").glob("*.xml")):
        try:
            # ElementTree on expat >= 2.4.1 refuses entity-expansion bombs; no DTDs are loaded.
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            report.skipped_images.append({"image": str(xml_path), "reason": f"bad XML: {err}"})
            continue
        file_name = tree.findtext("filename") or f"{xml_path.stem}.jpg"
        image = root / "JPEGImages" / file_name
        if not image.is_file():
            image = _find_image(root / "JPEGImages", xml_path.stem) or image
        if not image.is_file():
            report.skipped_images.append({"image": str(image), "reason": "file not found"})
            continue
        boxes, labels = [], []
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            coords = [bb.findtext(k) if bb is not None else None for k in
                      ("xmin", "ymin", "xmax", "ymax")]  # fmt: skip
            try:
                x1, y1, x2, y2 = (float(c) for c in coords)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                report.skipped_annotations.append(
                    {"file": str(xml_path), "reason": f"bad bndbox {coords}"}
                )
                continue
            boxes.append([x1 - 1, y1 - 1, x2, y2])  # 1-based inclusive -> 0-based xyxy
            labels.append(name)
            if name not in names_seen:
                names_seen.append(name)
        parsed.append((xml_path.stem, image, boxes, labels))
    names = sorted(names_seen)
    mapping = _remap(names, report)
    samples = [
        BoxSample(
            sid,
            image,
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray([mapping[n] for n in labels], dtype=np.int64),
        )
        for sid, image, boxes, labels in parsed
    ]
    if not samples:
        raise DataError(root, f"no usable annotated image ({report.summary()})")
    sets = root / "ImageSets" / "Main"
    by_id = {s.id: s for s in samples}
    if (sets / "train.txt").is_file():
        splits: dict[str, list[BoxSample]] = {}
        for split in ("train", "val", "test"):
            f = sets / f"{split}.txt"
            if f.is_file():
                wanted = f.read_text().split()
                splits[split] = [by_id[i] for i in wanted if i in by_id]
                for i in wanted:  # listed but absent: counted, not dropped without a word
                    if i not in by_id and not (root / "Annotations" / f"{i}.xml").is_file():
                        report.skipped_images.append(
                            {"image": i, "reason": f"listed in {f.relative_to(root)} but "
                                                   f"Annotations/{i}.xml does not exist"}
                        )  # fmt: skip
        splits, carved = carve_missing(splits, val, test, seed, _take)
        origin = f"ImageSets/Main + random {carved}(seed={seed})" if carved else "ImageSets/Main"
        return BoxBundle(str(root), "voc", names, names, splits, report, origin)
    return BoxBundle(
        str(root), "voc", names, names, _split(samples, val, test, seed), report,
        f"random(seed={seed})",
    )  # fmt: skip


def _yolo_names(root: Path) -> list[str] | None:
    for name in ("classes.txt", "obj.names"):
        if (root / name).is_file():
            return [ln.strip() for ln in (root / name).read_text().splitlines() if ln.strip()]
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            return _yaml_names((root / name).read_text())
    return None


def _yaml_names(text: str) -> list[str] | None:
    """The ``names`` of an Ultralytics data.yaml without a YAML library: ``names: [a, b]``, or a
    block of ``- a`` / ``0: a`` lines under ``names:``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("names:"):
            continue
        rest = line[len("names:") :].split("#")[0].strip()
        if rest.startswith("["):
            return [n.strip().strip("'\"") for n in rest.strip("[]").split(",") if n.strip()]
        names = []
        for item in lines[i + 1 :]:
            if not item.startswith((" ", "\t")) or not item.strip():
                break
            value = item.strip()
            value = value[1:] if value.startswith("-") else value.partition(":")[2]
            names.append(value.strip().strip("'\""))
        return names or None
    return None


def _yolo_class(token: str, txt: Path, line: int, names: list[str] | None) -> int:
    """The class index of a YOLO label line's first field, checked (bad-inputs.md #42): a value
    that is not a whole number (``1.5``, ``green``), negative, or not below the number of classes
    would otherwise be skipped with a warning (or reach the loss): a DataError naming the file,
    the line, the value and the valid range. ``1.0`` is 1 (some exporters write floats)."""
    if names is None:  # classes numbered from the labels (no classes.txt / data.yaml)
        valid = "an integer >= 0"
    else:
        valid = f"0..{len(names) - 1} ({len(names)} classes)" if names else "none (no class named)"
    try:
        value = float(token)
    except ValueError:
        value = float("nan")
    whole = bool(np.isfinite(value)) and value == int(value)
    if whole and value >= 0 and (names is None or value < len(names)):
        return int(value)
    raise DataError(
        txt,
        f"line {line}: class {token!r} {'is out of range' if whole else 'is not a whole number'}; "
        f"a YOLO label line is `class cx cy w h` with class an index in {valid}: fix the label "
        "or the class names",
    )


def _yolo(root: Path, val: float, test: float, seed: int) -> BoxBundle:
    report = BoxReport()
    names = _yolo_names(root)  # read first: it bounds the class index of every label line
    subsets = [d.name for d in sorted((root / "images").iterdir()) if d.is_dir()]
    parts = subsets if subsets else [""]
    found: dict[str, list[tuple[str, Path, list[list[float]], list[int]]]] = {}
    for part in parts:
        image_dir, label_dir = root / "images" / part, root / "labels" / part
        rows = []
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            txt = label_dir / f"{image.stem}.txt"
            boxes, labels = [], []
            lines = txt.read_text().splitlines() if txt.is_file() else []
            for n, line in enumerate(lines, 1):
                fields = line.split()
                if not fields:
                    continue
                cls = _yolo_class(fields[0], txt, n, names)  # a wrong class: refused
                try:
                    cx, cy, w, h = (float(v) for v in fields[1:5])
                    if len(fields) < 5:
                        raise ValueError
                except ValueError:
                    report.skipped_annotations.append(
                        {"file": str(txt), "row": n, "reason": f"not 'class cx cy w h': {line!r}"}
                    )
                    continue
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                labels.append(cls)
            rows.append((f"{part}/{image.stem}" if part else image.stem, image, boxes, labels))
        found[part] = rows
    used = sorted({c for rows in found.values() for *_, labels in rows for c in labels})
    if names is None:
        names = [str(c) for c in range(max(used) + 1 if used else 1)]
        log.warning("%s has no classes.txt / data.yaml: classes named by number", root)
    ids = list(range(len(names)))
    mapping = _remap(ids, report)
    splits: dict[str, list[BoxSample]] = {}
    for part, rows in found.items():
        samples = []
        for sid, image, boxes, labels in rows:  # every class index checked by _yolo_class
            samples.append(
                BoxSample(
                    sid,
                    image,
                    np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                    np.asarray([mapping[c] for c in labels], dtype=np.int64),
                    normalized=True,
                )
            )
        splits[{"valid": "val", "validation": "val"}.get(part, part or "all")] = samples
    if not any(splits.values()):
        raise DataError(root, "no images under images/")
    if set(splits) <= {"all"} or "train" not in splits:
        everything = [s for v in splits.values() for s in v]
        return BoxBundle(
            str(root), "yolo", names, ids, _split(everything, val, test, seed), report,
            f"random(seed={seed})",
        )  # fmt: skip
    splits, carved = carve_missing(splits, val, test, seed, _take)
    origin = f"images/<split> + random {carved}(seed={seed})" if carved else "images/<split>"
    return BoxBundle(str(root), "yolo", names, ids, splits, report, origin)


# -- decoding --------------------------------------------------------------------------------------
def map_boxes(boxes: np.ndarray, width: int, height: int, size: int, resize: str) -> np.ndarray:
    """(K, 4) xyxy pixels of a width x height image -> pixels of its size x size model input
    (scale by new/old side, shift by the padding or crop offset: resize_to_square's layout)."""
    nw, nh, left, top = square_geometry(width, height, size, resize)
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, 0::2] = out[:, 0::2] * (nw / width) + left
    out[:, 1::2] = out[:, 1::2] * (nh / height) + top
    return out


def unmap_boxes(boxes: np.ndarray, width: int, height: int, size: int, resize: str) -> np.ndarray:
    """Inverse of :func:`map_boxes`: model-input pixels -> the original image's pixels, clipped."""
    nw, nh, left, top = square_geometry(width, height, size, resize)
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, 0::2] = ((out[:, 0::2] - left) * (width / nw)).clip(0, width)
    out[:, 1::2] = ((out[:, 1::2] - top) * (height / nh)).clip(0, height)
    return out


def decode_box_split(
    samples: Sequence[BoxSample], spec: PreprocessSpec, report: BoxReport | None = None
) -> tuple[np.ndarray, list[dict[str, np.ndarray]], list[str], BoxReport]:
    """Decode images to (N, C, S, S) uint8 and boxes to model-input pixels.

    Returns (images, targets [{"boxes": (K, 4) float32 xyxy, "labels": (K,) int64, "orig_size":
    (2,) int64 (H, W) of the decoded image}], ids, report): unreadable images are skipped
    (report.skipped_images), bad boxes dropped or clipped against the decoded image size, images
    left without boxes counted as background. ``orig_size`` (torchvision's references' name) is
    what maps predicted boxes back to the image's own pixels (:func:`unmap_boxes`).
    """
    from PIL import Image

    from cnnlab.data.decode import DEFAULT_MAX_PIXELS, load_image, normalize_mode
    from cnnlab.data.tensors import image_mode, pil_to_chw

    report = report if report is not None else BoxReport()
    max_pixels = int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS))
    s = spec.image_size
    arrays, targets, ids = [], [], []
    for sample in samples:
        if sample.array is not None:
            arr = sample.array
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            im = normalize_mode(im, image_mode(spec.in_channels))
        else:
            try:
                mode = image_mode(spec.in_channels)
                im = load_image(sample.path, mode=mode, max_pixels=max_pixels)
            except DataError as err:
                report.skipped_images.append({"image": str(sample.path), "reason": err.reason})
                continue
        w, h = im.size
        boxes = sample.boxes.astype(np.float64).reshape(-1, 4)
        if sample.normalized:
            boxes = boxes * np.array([w, h, w, h], dtype=np.float64)
        boxes, labels = check_boxes(
            boxes, sample.labels, w, h, where=str(sample.path or sample.id), report=report
        )
        mapped = map_boxes(boxes, w, h, s, spec.resize)
        if spec.resize == "crop" and len(mapped):  # parts the crop cut off are not in the input
            mapped = mapped.clip(0, s)
            ok = (mapped[:, 2] - mapped[:, 0] >= 1) & (mapped[:, 3] - mapped[:, 1] >= 1)
            mapped, labels = mapped[ok], labels[ok]
        if len(mapped) == 0:
            report.background_images += 1
        arrays.append(pil_to_chw(im, spec))
        targets.append({"boxes": mapped.astype(np.float32), "labels": labels.astype(np.int64),
                        "orig_size": np.array([h, w], dtype=np.int64)})  # fmt: skip
        ids.append(sample.id)
    c = spec.in_channels
    images = np.stack(arrays) if arrays else np.zeros((0, c, s, s), np.uint8)
    return images, targets, ids, report


# -- loader ----------------------------------------------------------------------------------------
@dataclass
class BoxLoader:
    """Batches ``(images (N, C, S, S) float normalised, [{"boxes", "labels"} tensors], idx)`` over
    a uint8 image tensor, as :class:`cnnlab.data.loader.TensorLoader` does for class labels.

    Augmentation ``flip``: each image mirrored horizontally with probability 1/2, its boxes too
    (x1' = S - x2, x2' = S - x1); seeded by (seed, epoch, step) so a resumed epoch repeats it.
    """

    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    shuffle: bool = False
    augment: Sequence[str] = ()
    seed: int = 0
    drop_last: bool = False

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def batches(
        self, epoch: int = 0, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, list[dict[str, torch.Tensor]], torch.Tensor]]:
        from cnnlab.data.loader import seeded_generator

        n = self.num_samples
        order = (
            torch.randperm(n, generator=seeded_generator(self.seed, epoch))
            if self.shuffle
            else torch.arange(n)
        )
        mean, std = self.mean.view(1, -1, 1, 1), self.std.view(1, -1, 1, 1)
        for step in range(start, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = self.images.index_select(0, idx.to(self.images.device)).float() / 255
            targets = [dict(self.targets[int(i)]) for i in idx]
            if "flip" in self.augment:
                g = seeded_generator(self.seed, epoch, step)
                flip = torch.rand(len(idx), generator=g) < 0.5
                s = x.shape[-1]
                for j in torch.nonzero(flip).flatten().tolist():
                    x[j] = x[j].flip(-1)
                    b = targets[j]["boxes"].clone()
                    b[:, [0, 2]] = s - targets[j]["boxes"][:, [2, 0]]
                    targets[j]["boxes"] = b
            yield (x - mean) / std, targets, idx


def make_box_loader(
    images: np.ndarray,
    targets: list[dict[str, np.ndarray]],
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int,
    **kw: Any,
) -> BoxLoader:
    """A :class:`BoxLoader` with everything on ``device``."""
    return BoxLoader(
        torch.as_tensor(images).to(device),
        [
            {
                "boxes": torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4).to(device),
                "labels": torch.as_tensor(t["labels"], dtype=torch.int64).to(device),
            }
            for t in targets
        ],
        torch.tensor(spec.mean, device=device, dtype=torch.float32),
        torch.tensor(spec.std, device=device, dtype=torch.float32),
        batch_size,
        **kw,
    )


def check_training_boxes(
    targets: Sequence[dict[str, Any]], bundle: BoxBundle, report: BoxReport
) -> dict[str, Any]:
    """The training split's boxes per class, checked before any training (bad-inputs.md: abort when
    what was excluded leaves a class or the whole split empty, say it otherwise).

    No box at all (every one dropped or skipped, e.g. YOLO labels written in pixels instead of
    fractions of the image) -> DataError naming the first dropped box and how to fix it: a
    detector trained on background images only learns nothing, and said only "N dropped".
    A class without a training box -> a warning naming it (COCO files often list unused
    categories); its AP will be undefined or 0."""
    counts = box_counts(targets, bundle.num_classes)
    if sum(counts["objects"]) == 0:
        first = report.dropped_boxes[0] if report.dropped_boxes else None
        why = (
            f"; first dropped: {first['image']}: {first['reason']} "
            f"(box {[round(v, 1) for v in first['box']]})"
            if first
            else ""
        )
        hint = (
            "; YOLO label lines are `class cx cy w h` as fractions (0..1) of the image's width "
            "and height, not pixels"
            if bundle.layout == "yolo"
            else "; check the boxes against the images (data_root, coordinate format)"
        )
        raise DataError(
            bundle.source,
            f"no box left in the training split's {counts['images']} images "
            f"({report.summary()}){why}{hint}",
        )
    empty = [n for n, c in zip(bundle.class_names, counts["objects"], strict=True) if c == 0]
    if empty:
        log.warning(
            "%s: no training box for class(es) %s: the detector cannot learn them (their AP will "
            "be undefined or 0); add boxes of them to the training split",
            bundle.source,
            ", ".join(empty),
        )
    return counts


def box_counts(targets: Sequence[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    """Objects per class and background images, for run summaries."""
    counts = np.zeros(num_classes, dtype=np.int64)
    background = 0
    for t in targets:
        labels = np.asarray(t["labels"])
        background += int(len(labels) == 0)
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
    return {"objects": counts.tolist(), "background_images": background, "images": len(targets)}
