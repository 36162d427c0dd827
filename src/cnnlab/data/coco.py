"""Reading a COCO instances file: the one structural check that detection and segmentation share.

    doc = read_coco(path)   # dict with lists "images", "annotations", "categories"

The checks here are the ones a wrong file would otherwise turn into a traceback (a category
without an ``id``, a list where an id belongs) or into a silently wrong class list (two
categories sharing one id: every annotation of one would be counted as the other), and an
image ``file_name`` that is absolute or climbs out with ``..`` (bad-inputs.md #33: it would read
a file outside the dataset; :func:`inside_folder` catches a link out of it). Each failure
is a :class:`DataError` naming the file and the entry (``categories[1]``) and saying how to fix it.
What a single annotation gets wrong (unknown image or category, bad box) is left to the readers,
which skip and count it (data/boxes.py; data/masks.py for an unknown image or category, through
:func:`unknown_image` and :func:`unknown_category`) or name it (data/masks.py: a segmentation it
cannot rasterise, refused when the file is read by ``segmentation_problem``).

pycocotools' ``COCO.createIndex`` checks none of this (it indexes by ``id`` and lets a later
entry overwrite an earlier one), so it is written here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container
from pathlib import Path
from typing import Any

from cnnlab.errors import DataError

KEYS = ("images", "annotations", "categories")


def _is_id(value: Any) -> bool:
    """COCO ids are integers; strings are accepted too (some exporters write them). Not bools."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(path: str | Path) -> dict[str, Any]:
    """The parsed COCO instances file at ``path``, its structure checked (see the module doc)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not a readable COCO JSON file ({err})") from None
    if not isinstance(doc, dict) or any(not isinstance(doc.get(k), list) for k in KEYS):
        missing = [k for k in KEYS if not isinstance(doc, dict) or not isinstance(doc.get(k), list)]
        raise DataError(
            path,
            f"not a COCO instances file: no {', '.join(map(repr, missing))} list; expected an "
            "object with images, annotations and categories lists",
        )
    for key, required in (("categories", True), ("images", False)):
        first_row: dict[Any, int] = {}
        for row, entry in enumerate(doc[key]):
            where = f"{key}[{row}]"
            if not isinstance(entry, dict):
                raise DataError(
                    path, f'{where} is {entry!r}, not an object; write it as {{"id": 1, ...}}'
                )
            if "id" not in entry:
                if required:  # a category without an id cannot be a class
                    raise DataError(
                        path, f"{where} ({entry.get('name', '?')!r}) has no 'id'; give it one"
                    )
                continue  # an image without an id is skipped and counted by the reader
            cid = entry["id"]
            if not _is_id(cid):
                raise DataError(
                    path, f"{where}: id {cid!r} is not an integer; write COCO ids as integers"
                )
            if cid in first_row:
                raise DataError(
                    path,
                    f"{where}: id {cid!r} is already the id of {key}[{first_row[cid]}]; "
                    f"give each of the {key} its own id",
                )
            first_row[cid] = row
    for row, entry in enumerate(doc["images"]):
        check_file_name(path, row, entry)
    for row, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(
                path, f'annotations[{row}] is {ann!r}, not an object; write it as {{"id": 1, ...}}'
            )
        for field in ("image_id", "category_id"):
            if ann.get(field) is not None and not _is_id(ann[field]):  # None: counted
                raise DataError(
                    path,
                    f"annotations[{row}]: {field} {ann[field]!r} is not an id; write an integer",
                )
    return doc


def check_file_name(path: Path, row: int, image: dict[str, Any]) -> None:
    """bad-inputs.md #33: an image's ``file_name`` is a path relative to the image folder. An
    absolute one (``/etc/passwd``, ``C:\\x``) or one with ``..`` would read a file outside the
    dataset (and an absolute one also made the reader guess the image folder wrong, so that every
    other image was "file not found"): a DataError naming the entry, its id and the name."""
    name = image.get("file_name")
    if not isinstance(name, str) or not name:
        return  # no usable name: the readers skip and count the image
    parts = re.split(r"[\\/]", name)
    if (
        name.startswith(("/", "\\"))
        or re.match(r"[A-Za-z]:[\\/]", name)
        or Path(name).is_absolute()
    ):
        why = "is an absolute path"
    elif ".." in parts:
        why = "leaves the image folder ('..')"
    else:
        return
    raise DataError(
        path,
        f"images[{row}] (id {image.get('id')!r}): file_name {name!r} {why}; write it relative to "
        "the image folder (beside the JSON, or its images/ folder), without '..'",
    )


def inside_folder(folder: Path, name: str) -> bool:
    """Whether ``folder / name`` resolves (symlinks followed) inside ``folder`` (bad-inputs.md #33:
    a link to a file outside the dataset is refused as an absolute path is)."""
    root = folder.resolve()
    return (folder / name).resolve().is_relative_to(root)


def outside_folder(path: Path, folder: Path, image_id: Any, name: str) -> DataError:
    """The error for an image ``name`` of ``path`` that :func:`inside_folder` found outside."""
    return DataError(
        path,
        f"image id {image_id!r}: file_name {name!r} resolves outside the image folder {folder} "
        "(a symlink?); copy the file into the image folder",
    )


def image_ids(doc: dict[str, Any]) -> set[Any]:
    """The ids of ``doc``'s images (an image without an id has none: the readers skip it)."""
    return {im["id"] for im in doc["images"] if "id" in im}


def unknown_image(row: int, ann: dict[str, Any], known: Container[Any]) -> dict[str, Any] | None:
    """The skip record of annotations[row] when its ``image_id`` is not among the images' ids
    ``known`` (:func:`image_ids`; bad-inputs.md #38: skipped, counted, listed in data_report.json),
    else None. pycocotools indexes such an annotation under an image nobody asks for, so it would
    vanish without a word; both tasks count it with this one record shape instead."""
    image_id = ann.get("image_id")
    if image_id in known:
        return None
    return {"row": row, "image_id": image_id, "reason": "unknown image_id"}


def describe_skipped(skipped: list[dict[str, Any]]) -> str:
    """One phrase per reason for the skip records of :func:`unknown_image` and
    :func:`unknown_category`, naming the ids: "1 annotation(s) skipped, category_id not in
    categories (9); 2 annotation(s) skipped, image_id not in images (12, 40)"."""
    phrases = []
    for field, where in (("category_id", "categories"), ("image_id", "images")):
        hits = [a for a in skipped if a["reason"] == f"unknown {field}"]
        if hits:
            ids = sorted({str(a[field]) for a in hits})
            phrases.append(
                f"{len(hits)} annotation(s) skipped, {field} not in {where} ({', '.join(ids)})"
            )
    return "; ".join(phrases)


def unknown_category(row: int, ann: dict[str, Any], known: Container[Any]) -> dict[str, Any] | None:
    """The skip record of annotations[row] when its ``category_id`` is not among the categories'
    ids ``known`` (bad-inputs.md #38: skipped, counted, listed in data_report.json), else None.
    Detection and segmentation both skip it this way: one record shape in both reports."""
    cat = ann.get("category_id")
    if cat in known:
        return None
    return {"row": row, "category_id": cat, "reason": "unknown category_id"}
