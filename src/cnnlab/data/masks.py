"""Segmentation data: images paired with per-pixel class masks; a loader that augments both alike.

Layouts (``--data``):

  DIR/images/**/NAME.EXT + DIR/masks/**/NAME.png
        folder of images and same-named masks (class index per pixel). Optional
        DIR/{train,val,test}/ holding images/ + masks/ gives the splits (a missing val/ or
        test/ is carved out of train/, :func:`carve_missing`). Optional
        DIR/classes.json: a list of class names, or a list of {"name": ..., "color": [r, g, b]}
        -- the colours declare a palette, and only then may masks be RGB (each colour -> its
        class). Without classes.json the classes are 0..max(mask) (named by number).
  VOC root (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt)
        Pascal VOC segmentation: palette PNGs whose palette index is the class (0 background,
        1..20 the VOC classes, 255 the "void" boundary = ignore). train.txt -> train (val carved
        out of it, seeded), val.txt -> test (VOC's test masks are not public).
  FILE.json (COCO instances)
        polygons / RLE rasterised with pycocotools' ``annToMask``; class = 1 + position of the
        category in id order, 0 background. Crowd regions and pixels covered by two or more
        annotations are ignore (as torchvision's segmentation reference does for overlaps). An
        annotation of no listed category is skipped and counted (data_report.json), as detection
        does. Images are found next to the JSON, in an images/ folder beside it, or under
        --data-root.
  builtin:shapes?n=..&size=..&seed=..&objects=..
        the synthetic shapes with their masks (0 background, k+1 = shape k).

Pre-flight checks (every pair, before training; each a DataError naming the mask file): a mask
whose size differs from its image, values outside 0..K-1 other than the ignore index, an RGB mask
without a declared palette (or with colours the palette lacks), a lossy (JPEG) mask, a missing mask.
Images are decoded with the one policy, :func:`cnnlab.data.decode.load_image`; masks are resized
with nearest-neighbour only (an interpolated class index is a different class).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab.config import PreprocessSpec
from cnnlab.data.coco import (
    image_ids,
    inside_folder,
    outside_folder,
    read_coco,
    unknown_category,
    unknown_image,
)
from cnnlab.data.loader import TensorLoader, random_crop, random_flip, seeded_generator
from cnnlab.data.tensors import normalize, pil_to_chw
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)
T = TypeVar("T")  # one split of any reader (MaskSplit, a list of samples)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif"}
MASK_FORMATS = ("PNG", "BMP", "TIFF", "GIF")  # lossless only: JPEG shifts indices at edges
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SEGMENTATION_AUGMENTATIONS = ("crop", "flip")


def voc_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colours of the VOC devkit's colour map (``labelcolormap``): the bits of the
    class index are spread over the high bits of R, G and B. Index 255 is (224, 224, 192)."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


# -- reading one mask ------------------------------------------------------------------------------
def read_mask(
    path: str | os.PathLike[str],
    *,
    palette: dict[tuple[int, int, int], int] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """(H, W) int32 class indices of a mask file, values unchecked (see :func:`check_mask`).

    L / P / 1 / 16-bit masks: the stored value (for P the palette *index*, VOC's convention) is the
    class. RGB(A) masks need ``palette`` {(r, g, b): class}; any colour outside it is an error.
    """
    from cnnlab.data.decode import DEFAULT_MAX_PIXELS, read_image_bytes

    data = read_image_bytes(path)  # the shared read: retries, "file not found", permission
    name = os.fspath(path)
    limit = max_pixels or DEFAULT_MAX_PIXELS
    try:
        im = Image.open(io.BytesIO(data), formats=MASK_FORMATS)
        if im.width * im.height > limit:
            raise DataError(name, f"exceeds max pixels {im.width}×{im.height} > {limit}")
        im.load()
    except DataError:
        raise
    # Pillow raises many exception types for broken files; for a mask they all mean "unusable".
    except Exception as err:  # noqa: BLE001
        head = data[:3]
        if head[:2] == b"\xff\xd8":
            raise DataError(
                name,
                "mask is a JPEG: lossy compression changes class indices at edges; "
                "save masks as PNG",
            ) from None
        raise DataError(
            name,
            f"not a readable mask image ({type(err).__name__}); masks must be PNG (or BMP/TIFF)",
        ) from None
    mode = im.mode
    if mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.int64).astype(np.int32)
    if mode in ("RGB", "RGBA", "LA", "PA"):
        if mode in ("LA", "PA"):
            return np.asarray(im.getchannel(0), dtype=np.int32)
        if palette is None:
            raise DataError(
                name,
                f"mask is {mode} but no palette was declared: save masks as single-channel "
                "PNGs of class indices (mode L or P), or list each class's colour in classes.json "
                '([{"name": "road", "color": [128, 64, 128]}, ...])',
            )
        return _rgb_to_index(np.asarray(im.convert("RGB")), palette, name)
    raise DataError(name, f"unsupported mask pixel mode {mode}; use 8-bit L or P PNGs")


def _rgb_to_index(
    rgb: np.ndarray, palette: dict[tuple[int, int, int], int], name: str
) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int64)
    values = np.array(list(palette.values()), dtype=np.int32)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[pos] == codes
    if not known.all():
        bad = np.unique(codes[~known])[:5]
        colours = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in bad]
        raise DataError(
            name,
            f"colours {colours} are not in the declared palette "
            f"({len(palette)} colours); add them to classes.json",
        )
    return values[pos]


def check_mask(
    mask: np.ndarray,
    name: str,
    image_size: tuple[int, int],
    num_classes: int | None,
    ignore_index: int,
    image_name: str,
) -> np.ndarray:
    """The pre-flight checks of one (H, W) mask against its image (W, H); returns it as uint8."""
    h, w = mask.shape
    if (w, h) != tuple(image_size):
        raise DataError(
            name,
            f"mask is {w}×{h} but its image {image_name} is "
            f"{image_size[0]}×{image_size[1]}; masks must have their image's size",
        )
    check_mask_values(mask, name, num_classes, ignore_index)
    return mask.astype(np.uint8)


def check_mask_values(
    mask: np.ndarray, name: str, num_classes: int | None, ignore_index: int
) -> None:
    """Every value must be a class index 0..K-1 or the ignore index (K=None: at most 254)."""
    values = np.unique(mask)
    labels = values[values != ignore_index]
    limit = 255 if num_classes is None else num_classes
    bad = labels[(labels < 0) | (labels >= limit)]
    if bad.size:
        allowed = f"class indices 0..{limit - 1}" + (f" or the ignore index {ignore_index}")
        raise DataError(
            name,
            f"mask values {bad[:8].tolist()} are not {allowed}; "
            "check the class list (classes.json) or the ignore index "
            "(`cnnlab segment train --ignore-index N`)",
        )


# -- mask references -------------------------------------------------------------------------------
class MaskRef(Protocol):
    name: str

    def read(self, max_pixels: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class MaskFile:
    path: Path
    palette: dict[tuple[int, int, int], int] | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self, max_pixels: int | None = None) -> np.ndarray:
        return read_mask(self.path, palette=self.palette, max_pixels=max_pixels)


POLYGON_FORM = "[[x1, y1, x2, y2, x3, y3, ...], ...]"


def segmentation_problem(ann: dict[str, Any], size: tuple[Any, Any]) -> str | None:
    """What is wrong with a COCO annotation's ``segmentation`` for pycocotools' ``annToMask``
    (None: nothing), checked before any mask is drawn; ``size`` is its image's (height, width).

    A polygon list must hold polygons of an even number (at least 6: three points) of finite
    numbers -- pycocotools reads 4 numbers as a box and fails on its own type check, fewer as
    "input type is not supported", and drops an odd last number without a word. An RLE is an
    object with ``size`` [height, width] (its image's) and ``counts``: run lengths summing to
    height x width, or COCO's compressed string."""
    if "segmentation" not in ann:
        return f"no 'segmentation'; give its polygons as {POLYGON_FORM} or an RLE object"
    seg = ann["segmentation"]
    if isinstance(seg, list):
        if not seg:
            return f"'segmentation' is an empty list; give its polygons as {POLYGON_FORM}"
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return (
                    f"segmentation polygon {i} is {_short(poly)}, not a list of numbers; "
                    f"write polygons as {POLYGON_FORM}"
                )
            if len(poly) < 6 or len(poly) % 2:
                return (
                    f"segmentation polygon {i} has {len(poly)} numbers; a polygon is an even "
                    f"number, at least 6 (x, y of three or more points): {POLYGON_FORM}"
                )
            if not all(math.isfinite(v) for v in poly):
                return f"segmentation polygon {i} holds a non-finite coordinate ({_short(poly)})"
        return None
    if isinstance(seg, dict):
        rle_size, counts = seg.get("size"), seg.get("counts")
        if (
            not isinstance(rle_size, list)
            or len(rle_size) != 2
            or not all(_is_count(v) for v in rle_size)
        ):
            return f"segmentation RLE 'size' is {_short(rle_size)}; give [height, width]"
        if list(rle_size) != [size[0], size[1]]:
            return (
                f"segmentation RLE 'size' {rle_size} is not its image's [height, width] "
                f"[{size[0]}, {size[1]}]"
            )
        if isinstance(counts, list):
            if not all(_is_count(v) for v in counts):
                return "segmentation RLE 'counts' must be non-negative integers (run lengths)"
            if sum(counts) != rle_size[0] * rle_size[1]:
                return (
                    f"segmentation RLE 'counts' sum to {sum(counts)}, not height x width "
                    f"{rle_size[0] * rle_size[1]}"
                )
            return None
        if not isinstance(counts, str):
            return (
                f"segmentation RLE 'counts' is {_short(counts)}; give run lengths (a list of "
                "integers) or COCO's compressed string"
            )
        return None
    return (
        f"'segmentation' is {_short(seg)}; give polygons as {POLYGON_FORM} or an RLE object "
        '({"size": [height, width], "counts": ...})'
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value == int(value) and value >= 0


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class CocoIndex:
    """A COCO instances file (pycocotools); rasterises one image's semantic mask on demand."""

    def __init__(self, path: Path, ignore_index: int) -> None:
        try:
            from pycocotools.coco import COCO
        except ImportError:
            raise ConfigError(
                "COCO annotations need pycocotools: pip install pycocotools"
            ) from None
        dataset = read_coco(path)  # structure checked: ids present, unique, scalar
        known = {c["id"] for c in dataset["categories"]}
        known_images = image_ids(dataset)
        # an annotation of no listed category or image: skipped and counted, as detection does
        # (an unknown category was the first image's DataError, mid-decode; an unknown image
        # vanished in pycocotools' index without a word, while detection counted both)
        self.skipped_annotations: list[dict[str, Any]] = []
        kept = []
        for row, ann in enumerate(dataset["annotations"]):
            skip = unknown_image(row, ann, known_images) or unknown_category(row, ann, known)
            if skip is None:
                kept.append(ann)
            else:
                self.skipped_annotations.append(skip)
        sizes = {im["id"]: (im.get("height"), im.get("width")) for im in dataset["images"]}
        for row, ann in enumerate(kept):  # refused before training, not mid-decode in pycocotools
            problem = segmentation_problem(ann, sizes[ann["image_id"]])
            if problem is not None:
                where = f"annotation {ann['id']}" if "id" in ann else f"annotations[{row}]"
                raise DataError(
                    path, f"{where} (image_id {ann['image_id']}): {problem}; fix or remove it"
                )
        coco = COCO()
        coco.dataset = dataset | {"annotations": kept}
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            coco.createIndex()
        self.coco, self.path, self.ignore_index = coco, Path(path), ignore_index
        cats = sorted(coco.cats.values(), key=lambda c: c["id"])
        self.class_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.class_names = ["background"] + [str(c["name"]) for c in cats]

    def mask(self, image_id: int) -> np.ndarray:
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        out = np.zeros((h, w), dtype=np.int32)
        cover = np.zeros((h, w), dtype=np.int32)
        crowd = np.zeros((h, w), dtype=bool)
        for ann in self.coco.imgToAnns.get(image_id, []):
            name = f"{self.path}: annotation {ann.get('id')}"
            try:
                with warnings.catch_warnings():  # pycocotools' own NumPy 2 copy= deprecation
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = self.coco.annToMask(ann).astype(bool)
            except (TypeError, ValueError, KeyError, IndexError) as err:
                raise DataError(name, f"segmentation cannot be rasterised ({err})") from None
            if ann.get("iscrowd"):
                crowd |= m
                continue
            out[m] = self.class_of[ann["category_id"]]
            cover += m
        out[(cover > 1) | crowd] = self.ignore_index
        return out


@dataclass(frozen=True)
class CocoMask:
    index: CocoIndex
    image_id: int

    @property
    def name(self) -> str:
        return f"{self.index.path} (image id {self.image_id})"

    def read(self, max_pixels: int | None = None) -> np.ndarray:
        return self.index.mask(self.image_id)


# -- splits and bundles ----------------------------------------------------------------------------
@dataclass
class MaskSplit:
    """ids + files (image paths, mask references) or arrays (images (N,H,W,C), masks (N,H,W))."""

    ids: list[str]
    image_paths: list[Path] | None = None
    mask_refs: list[Any] | None = None
    images: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Sequence[int] | np.ndarray) -> MaskSplit:
        idx = [int(i) for i in idx]
        return MaskSplit(
            [self.ids[i] for i in idx],
            [self.image_paths[i] for i in idx] if self.image_paths is not None else None,
            [self.mask_refs[i] for i in idx] if self.mask_refs is not None else None,
            self.images[idx] if self.images is not None else None,
            self.masks[idx] if self.masks is not None else None,
        )


@dataclass
class MaskBundle:
    source: str
    layout: str  # folder | voc | coco | builtin
    class_names: list[str] | None  # None: numbered classes inferred from the masks (folder only)
    splits: dict[str, MaskSplit]
    ignore_index: int = 255
    channels: int = 3
    native_size: int | None = None
    split_origin: str = "given"
    root: Path | None = None
    palette: np.ndarray = field(default_factory=voc_palette)  # colours for drawing, index = class
    # COCO: annotations skipped (unknown image_id or category_id), as detection's data_report.json
    # lists them
    skipped_annotations: list[dict[str, Any]] = field(default_factory=list)

    def square_side(self) -> int | None:
        """The side every image shares when all are square of one size, else None: the builtin's
        own size, or the image files' headers (read, not decoded). A file whose header cannot be
        read is left to the decoding, which skips or names it."""
        if self.native_size or not any(s.image_paths for s in self.splits.values()):
            return self.native_size
        return shared_square_side(p for s in self.splits.values() for p in s.image_paths or ())


def shared_square_side(paths: Iterable[Path]) -> int | None:
    """The side every image file shares when all are square of one size, else None (also for no
    file), from the files' headers (read, not decoded). A file whose header cannot be read is
    left to the decoding, which skips or names it. Segmentation's and detection's rule for
    the input size when no --image-size is given."""
    sizes: set[tuple[int, int]] = set()
    for path in paths:
        try:
            with Image.open(path) as im:
                sizes.add(im.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
        if len(sizes) > 1:
            return None
    (width, height), *_ = sizes or {(0, 1)}
    return width if width == height else None


def random_split(n: int, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded random split of range(n) (masks have no single label to stratify on)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test)), int(round(n * val))
    if n - n_test - n_val < 1:
        raise DataError(
            "dataset",
            f"{n} images leave none for training with val_fraction={val} and test_fraction={test}",
        )
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {k: np.sort(v) for k, v in parts.items() if len(v) or k == "train"}


def carve_missing(
    splits: dict[str, T], val: float, test: float, seed: int, take: Callable[[T, np.ndarray], T]
) -> tuple[dict[str, T], list[str]]:
    """Given splits (folders, list files) completed as classification completes them
    (cnnlab.data.sources): a missing or empty val / test split is carved out of train, seeded,
    with the same fractions as an unsplit source (0 leaves it out). Without it a dataset laid out
    as train + val only (Ultralytics' images/train + images/val, VOC2012's ImageSets) trained
    and wrote no test metrics and no report, without a word. ``take(part, indices)`` subsets one
    split. Returns the splits (train, val, test order) and the names of those carved."""
    fractions = {k: f for k, f in (("val", val), ("test", test)) if f > 0 and not splits.get(k)}
    if not fractions or "train" not in splits:
        return splits, []
    train = splits["train"]
    parts = random_split(len(train), fractions.get("val", 0.0), fractions.get("test", 0.0), seed)
    out = {k: v for k, v in splits.items() if k not in fractions}
    out["train"] = take(train, parts["train"])
    carved = [k for k in fractions if k in parts]
    for k in carved:
        out[k] = take(train, parts[k])
    order = {"train": 0, "val": 1, "test": 2}
    return {k: out[k] for k in sorted(out, key=lambda k: (order.get(k, 3), k))}, carved


def load_mask_source(
    data: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    ignore_index: int = 255,
    data_root: str | None = None,
) -> MaskBundle:
    """Resolve ``data`` (see the module docstring) into train / val / test mask splits."""
    if not 0 <= ignore_index <= 255:
        raise ConfigError(f"ignore_index must be in 0..255 (masks are 8-bit), got {ignore_index}")
    if data.startswith("builtin:"):
        return _builtin(data, val_fraction, test_fraction, seed, ignore_index)
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(
            path,
            "not found; give a folder with images/ + masks/, a VOC root, a COCO "
            "instances .json or builtin:shapes",
        )
    if path.is_file() and path.suffix.lower() == ".json":
        return _coco(path, val_fraction, test_fraction, seed, ignore_index, data_root)
    voc = _find_voc(path)
    if voc is not None:
        return _voc(voc, val_fraction, seed, ignore_index)
    if path.is_dir() and ((path / "images").is_dir() or (path / "train" / "images").is_dir()):
        return _folder(path, val_fraction, test_fraction, seed, ignore_index)
    raise DataError(
        path,
        "is not a segmentation dataset: expected DIR/images + DIR/masks, "
        "a VOC root (JPEGImages/, SegmentationClass/), or a COCO instances .json",
    )


def _builtin(data: str, val: float, test: float, seed: int, ignore_index: int) -> MaskBundle:
    from cnnlab.data.builtin import load_builtin

    ds = load_builtin(data[len("builtin:") :])
    if ds.masks is None:
        raise ConfigError(f"{data} has no masks; for segmentation use builtin:shapes")
    if ignore_index <= len(ds.class_names):
        raise ConfigError(f"ignore_index {ignore_index} collides with a shapes class index")
    everything = MaskSplit(
        [f"{ds.name}:{i}" for i in range(len(ds.images))], images=ds.images, masks=ds.masks
    )
    parts = random_split(len(ds.images), val, test, seed)
    h, w = ds.images.shape[1:3]
    return MaskBundle(
        data,
        "builtin",
        ["background", *ds.class_names],
        {k: everything.subset(v) for k, v in parts.items()},
        ignore_index,
        channels=ds.images.shape[-1],
        native_size=h if h == w else None,
        split_origin=f"random(seed={seed})",
    )


def _read_classes(root: Path) -> tuple[list[str] | None, dict[tuple[int, int, int], int] | None]:
    path = root / "classes.json"
    if not path.is_file():
        return None, None
    try:
        spec = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not valid JSON ({err})") from None
    if not isinstance(spec, list) or not spec:
        raise DataError(path, 'expected a list of class names or of {"name", "color"} objects')
    if all(isinstance(s, str) for s in spec):
        return list(spec), None
    names, palette = [], {}
    for i, s in enumerate(spec):
        colour = s.get("color") if isinstance(s, dict) else None
        if not (
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and isinstance(colour, list)
            and len(colour) == 3
            and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        ):
            raise DataError(
                path,
                f'entry {i} must be a name or {{"name": str, "color": '
                "[r, g, b]}} with 0..255 integers",
            )
        if tuple(colour) in palette:
            raise DataError(path, f"colour {colour} is given to two classes")
        names.append(s["name"])
        palette[tuple(colour)] = i
    return names, palette


def _pairs(root: Path, palette: Any) -> MaskSplit:
    images_dir, masks_dir = root / "images", root / "masks"
    if not masks_dir.is_dir():
        raise DataError(masks_dir, "missing: put one mask PNG per image there (same relative name)")
    images = sorted(
        p
        for p in images_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not images:
        raise DataError(images_dir, "holds no images")
    ids, refs = [], []
    for p in images:
        rel = p.relative_to(images_dir)
        mask = masks_dir / rel.with_suffix(".png")
        if not mask.is_file():
            alternatives = (
                [m for m in mask.parent.glob(rel.stem + ".*")] if mask.parent.is_dir() else []
            )
            hint = f" (found {alternatives[0].name}: masks must be PNG)" if alternatives else ""
            raise DataError(mask, f"missing mask for image {p}{hint}")
        ids.append(str(rel))
        refs.append(MaskFile(mask, palette))
    return MaskSplit(ids, image_paths=images, mask_refs=refs)


def _folder(root: Path, val: float, test: float, seed: int, ignore_index: int) -> MaskBundle:
    names, palette = _read_classes(root)
    if names is not None and len(names) > ignore_index:
        raise ConfigError(
            f"{len(names)} classes in {root / 'classes.json'} collide with "
            f"ignore_index {ignore_index}"
        )
    given = [s for s in ("train", "val", "test") if (root / s / "images").is_dir()]
    if given:
        if "train" not in given:
            raise DataError(root, f"has {given} subfolders but no train/images")
        splits = {s: _pairs(root / s, palette) for s in given}
        for s, part in splits.items():
            part.ids = [f"{s}/{i}" for i in part.ids]
        splits, carved = carve_missing(splits, val, test, seed, MaskSplit.subset)
        origin = f"given + random {carved}(seed={seed})" if carved else "given"
    else:
        everything = _pairs(root, palette)
        parts = random_split(len(everything), val, test, seed)
        splits = {k: everything.subset(v) for k, v in parts.items()}
        origin = f"random(seed={seed})"
    pal = voc_palette()
    if palette:
        for colour, k in palette.items():
            pal[k] = colour
    return MaskBundle(
        str(root),
        "folder",
        names,
        splits,
        ignore_index,
        split_origin=origin,
        root=root,
        palette=pal,
    )


def _find_voc(path: Path) -> Path | None:
    for cand in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (
            cand.is_dir()
            and (cand / "JPEGImages").is_dir()
            and (cand / "SegmentationClass").is_dir()
        ):
            return cand
    return None


def _voc(root: Path, val: float, seed: int, ignore_index: int) -> MaskBundle:
    pal = voc_palette()
    # Re-saved VOC masks may have lost their palette (RGB): map the VOC colours back explicitly.
    palette = {tuple(int(c) for c in pal[k]): k for k in range(len(VOC_CLASSES))}
    palette[tuple(int(c) for c in pal[255])] = ignore_index
    sets = root / "ImageSets" / "Segmentation"
    splits: dict[str, MaskSplit] = {}
    for list_name, split in (("train", "train"), ("val", "test")):
        listing = sets / f"{list_name}.txt"
        if not listing.is_file():
            if split == "train":
                raise DataError(listing, "missing: VOC lists its segmentation images there")
            continue
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        paths, refs = [], []
        for row, i in enumerate(ids, start=1):
            img, mask = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
            if not img.is_file():
                raise DataError(listing, f"image {img} of id {i!r} not found", row=row)
            if not mask.is_file():
                raise DataError(listing, f"mask {mask} of id {i!r} not found", row=row)
            paths.append(img)
            refs.append(MaskFile(mask, palette))
        splits[split] = MaskSplit(ids, image_paths=paths, mask_refs=refs)
    if val > 0:
        parts = random_split(len(splits["train"]), val, 0.0, seed)
        splits["val"] = splits["train"].subset(parts["val"])
        splits["train"] = splits["train"].subset(parts["train"])
    return MaskBundle(
        str(root),
        "voc",
        list(VOC_CLASSES),
        splits,
        ignore_index,
        split_origin=f"VOC train.txt (val carved, seed={seed}), val.txt as test",
        root=root,
        palette=pal,
    )


def _coco(
    path: Path, val: float, test: float, seed: int, ignore_index: int, data_root: str | None
) -> MaskBundle:
    index = CocoIndex(path, ignore_index)
    if len(index.class_names) > ignore_index:
        raise ConfigError(
            f"{len(index.class_names)} COCO classes collide with ignore_index {ignore_index}"
        )
    roots = [Path(data_root)] if data_root else [path.parent, path.parent / "images"]
    ids, paths, refs = [], [], []
    for image_id, info in sorted(index.coco.imgs.items()):
        name = str(info.get("file_name", ""))
        root = next((r for r in roots if name and (r / name).is_file()), None)
        if root is not None and not inside_folder(root, name):  # a link out of the dataset
            raise outside_folder(path, root, image_id, name)
        found = root / name if root is not None else None
        if found is None:
            raise DataError(
                path,
                f"image {name!r} (id {image_id}) not found under "
                f"{', '.join(map(str, roots))}; say where the images are "
                "(`cnnlab segment train --data-root IMAGE_FOLDER`)",
            )
        ids.append(name)
        paths.append(found)
        refs.append(CocoMask(index, image_id))
    everything = MaskSplit(ids, image_paths=paths, mask_refs=refs)
    parts = random_split(len(ids), val, test, seed)
    return MaskBundle(
        str(path),
        "coco",
        index.class_names,
        {k: everything.subset(v) for k, v in parts.items()},
        ignore_index,
        split_origin=f"random(seed={seed})",
        root=path.parent,
        skipped_annotations=index.skipped_annotations,
    )


# -- resizing and decoding -------------------------------------------------------------------------
def square_geometry(w: int, h: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top) of :func:`cnnlab.data.tensors.resize_to_square`'s layout: the image
    is scaled to new_w x new_h and its top-left corner lands at (left, top) of the size x size
    square (negative for the crop mode's cut-off margins). Kept in step with that function so that a
    mask covers exactly its image's pixels."""
    if (w, h) == (size, size) or mode == "stretch":
        return size, size, 0, 0
    scale = size / max(w, h) if mode == "fit" else size / min(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if mode == "crop":
        return nw, nh, -((nw - size) // 2), -((nh - size) // 2)
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def logits_to_image_mask(
    logits: torch.Tensor, width: int, height: int, resize: str, ignore_index: int = 255
) -> np.ndarray:
    """(K, S, S) logits at the model's input -> (height, width) uint8 class indices of the original
    image: undo resize_to_square's layout, upsample the logits bilinearly, then take the arg-max.
    With resize=crop the margins the model never saw are ``ignore_index``. Predict, serve and
    explain map a segmentation model's output back to the image through here."""
    k, s, _ = logits.shape
    nw, nh, left, top = square_geometry(width, height, s, resize)
    x = logits.float().unsqueeze(0)
    seen = None
    if left >= 0 and top >= 0:  # fit (padding to drop) or stretch / same size
        x = x[:, :, top : top + nh, left : left + nw]
    else:  # crop: the S x S view sits inside the scaled nw x nh image
        canvas = x.new_zeros(1, k, nh, nw)
        seen = x.new_zeros(1, 1, nh, nw)
        canvas[:, :, -top : -top + s, -left : -left + s] = x
        seen[:, :, -top : -top + s, -left : -left + s] = 1
        x = canvas
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    mask = x[0].argmax(0).to(torch.uint8)
    if seen is not None:
        seen = F.interpolate(seen, size=(height, width), mode="nearest")[0, 0] > 0.5
        mask[~seen] = ignore_index
    return mask.cpu().numpy()


def image_region(width: int, height: int, size: int, mode: str) -> np.ndarray:
    """(size, size) bool: the pixels of the model's square input that show the width x height
    image (:func:`square_geometry`): all but the fit mode's padding, which is no part of it."""
    nw, nh, left, top = square_geometry(width, height, size, mode)
    inside = np.zeros((size, size), dtype=bool)
    inside[
        max(top, 0) : max(top, 0) + min(nh, size), max(left, 0) : max(left, 0) + min(nw, size)
    ] = True
    return inside


def resize_mask(mask: np.ndarray, size: int, mode: str = "fit", fill: int = 255) -> np.ndarray:
    """(H, W) uint8 class indices -> (size, size) by nearest neighbour, laid out like the image;
    the padding of the fit mode gets ``fill`` (the ignore index: padding is not background)."""
    h, w = mask.shape
    nw, nh, left, top = square_geometry(w, h, size, mode)
    im = Image.fromarray(mask.astype(np.uint8), mode="L")
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.NEAREST)
    canvas = Image.new("L", (size, size), fill)
    canvas.paste(im, (left, top))
    return np.asarray(canvas, dtype=np.uint8)


class UnreadableImage(DataError):
    """A pair's image cannot be decoded (a corrupt file, not a labelling mistake): training skips
    the pair; ``cause`` is the decoder's reason alone."""

    def __init__(self, path: str | Path, cause: str, mask_name: str) -> None:
        super().__init__(path, f"{cause}; replace the image, or remove it and its mask {mask_name}")
        self.cause = cause


def _decode_pair(
    split: MaskSplit, i: int, spec: PreprocessSpec, num_classes: int | None, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    from cnnlab.data.decode import DEFAULT_MAX_PIXELS, load_image
    from cnnlab.data.tensors import image_mode

    max_pixels = int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS))
    path = split.image_paths[i]
    ref = split.mask_refs[i]
    try:
        im = load_image(path, mode=image_mode(spec.in_channels), max_pixels=max_pixels)
    except DataError as err:  # the decoder's reason, and what to do about the pair
        raise UnreadableImage(err.path, err.reason, ref.name) from None
    mask = check_mask(ref.read(max_pixels), ref.name, im.size, num_classes, ignore_index, str(path))
    return pil_to_chw(im, spec), resize_mask(mask, spec.image_size, spec.resize, ignore_index)


def decode_split(
    split: MaskSplit,
    spec: PreprocessSpec,
    *,
    num_classes: int | None,
    ignore_index: int = 255,
    workers: int | None = None,
    errors: list[DataError] | None = None,
    skipped: list[tuple[int, str, str]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, C, S, S) uint8, masks (N, S, S) uint8) of a split, with the pre-flight checks.

    ``num_classes=None`` skips the range check (classes inferred from the masks afterwards).
    Every pair is checked; the first problem raises, saying how many other files have problems.
    ``errors``: a list shared by the splits of one source; the problems are added to it instead
    of raised, and the caller raises once (:func:`raise_first`) with the count over all splits.
    ``skipped``: given (training), a pair whose image cannot be decoded is no problem but left
    out, (index in the split, image path, reason) added to the list, and the arrays hold the other
    pairs in order; the caller drops those indices from the split and applies the bad-fraction
    limit. A bad mask is always a problem (a labelling mistake, not a corrupt file).
    """
    n, s = len(split), spec.image_size
    if split.images is not None:
        from cnnlab.data.tensors import arrays_to_chw

        images = arrays_to_chw(split.images, spec)
        masks = (
            np.stack([resize_mask(m, s, spec.resize, ignore_index) for m in split.masks])
            if split.masks.shape[1:] != (s, s)
            else np.ascontiguousarray(split.masks)
        )
        check_mask_values(masks, split.ids[0] if n else "", num_classes, ignore_index)
        return images, masks
    images = np.empty((n, spec.in_channels, s, s), dtype=np.uint8)
    masks = np.empty((n, s, s), dtype=np.uint8)
    found: list[DataError] = []
    unreadable: list[tuple[int, str, str]] = []

    def work(i: int) -> None:
        try:
            images[i], masks[i] = _decode_pair(split, i, spec, num_classes, ignore_index)
        except UnreadableImage as err:
            if skipped is None:
                found.append(err)
            else:  # list.append is atomic: the threads share these lists safely
                unreadable.append((i, str(err.path), err.cause))
        except DataError as err:
            found.append(err)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(n)))
    if errors is not None:
        errors.extend(found)
    else:
        raise_first(found)
    if unreadable:
        unreadable.sort()  # the threads finish in any order
        skipped.extend(unreadable)
        keep = np.setdiff1d(np.arange(n), [i for i, _, _ in unreadable])
        images, masks = images[keep], masks[keep]
    return images, masks


def raise_first(errors: Sequence[DataError]) -> None:
    """Raise the first problem (by path) with the count of the others, if there is any."""
    if errors:
        first = min(errors, key=lambda e: e.path)
        more = f" (and {len(errors) - 1} more file(s) with problems)" if len(errors) > 1 else ""
        raise DataError(first.path, first.reason + more, row=first.row)


def check_training_masks(
    masks: np.ndarray, split: MaskSplit, class_names: Sequence[str], ignore_index: int, source: str
) -> None:
    """The training split's (N, S, S) masks, checked before any training: at least two classes
    must have pixels, else a DataError naming a mask and the likely cause; a class without a
    training pixel is a warning naming it (bad-inputs.md: a class must not become empty unsaid).

    The common cause: binary masks saved 0/255 (foreground 255, as most tools write them). 255 is
    the ignore index, so every foreground pixel was excluded from the loss and the run learned
    "background everywhere", warning only that 2 classes were named by number."""
    counts = np.bincount(masks.reshape(-1), minlength=256)
    present = [k for k in range(len(class_names)) if counts[k] > 0]
    if len(present) <= 1:
        ignored = masks == ignore_index
        hit = next((i for i in range(len(masks)) if ignored[i].any()), 0)
        where = split.mask_refs[hit].name if split.mask_refs else split.ids[hit]
        what = f"only class {class_names[present[0]]!r}" if present else "no class"
        cause = (
            "; binary masks saved 0/255 mark their foreground with the ignore index: save class "
            "indices instead (foreground 1, e.g. mask // 255)"
            if ignore_index == 255 and counts[255]
            else "; check the masks' values against the classes and --ignore-index"
        )
        raise DataError(
            where,
            f"the {len(masks)} training masks of {source} hold {what} besides the ignore index "
            f"{ignore_index} ({ignored.mean():.0%} of their pixels): nothing to tell apart{cause}",
        )
    absent = [str(class_names[k]) for k in range(len(class_names)) if counts[k] == 0]
    if absent:
        log.warning(
            "%s: no training pixel of class(es) %s: the model cannot learn them; add masks "
            "with them to the training split",
            source,
            ", ".join(absent),
        )


def infer_num_classes(masks: Sequence[np.ndarray], ignore_index: int) -> int:
    """1 + the largest label (ignore excluded) over decoded masks, at least 2."""
    top = 0
    for m in masks:
        labels = np.unique(m)
        labels = labels[labels != ignore_index]
        if labels.size:
            top = max(top, int(labels.max()))
    return max(2, top + 1)


# -- the loader ------------------------------------------------------------------------------------
@dataclass
class MaskLoader(TensorLoader):
    """TensorLoader whose targets are (N, S, S) uint8 masks, cropped and flipped with their images.

    Batches: (images float32 normalised (B, C, S, S), masks int64 (B, S, S), indices). The mask
    rides through the same crop/flip as an extra channel holding ``ignore_index - mask`` (exact in
    float32),
    so the zero padding of the crop becomes ``ignore_index`` -- pixels outside the image are not
    scored. Only geometric augmentations that move whole pixels are allowed (no interpolation).
    """

    ignore_index: int = 255

    def __post_init__(self) -> None:
        unknown = [a for a in self.augment if a not in SEGMENTATION_AUGMENTATIONS]
        if unknown:
            raise ConfigError(
                f"augmentation {unknown[0]!r} is not available for segmentation "
                f"(it would interpolate class indices); choose from "
                f"{', '.join(SEGMENTATION_AUGMENTATIONS)}"
            )

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.order(epoch).to(self.images.device)
        for step in range(start, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            y = self.targets.index_select(0, idx)
            if self.augment:
                g = seeded_generator(self.seed, epoch, step, device=x.device)
                both = torch.cat([x.float(), (self.ignore_index - y.float()).unsqueeze(1)], 1)
                if "crop" in self.augment:
                    both = random_crop(both, max(1, both.shape[-1] // 8), g)
                if "flip" in self.augment:
                    both = random_flip(both, g)
                x, y = both[:, :-1], (self.ignore_index - both[:, -1]).round()
            x = normalize(x, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.long(), idx
