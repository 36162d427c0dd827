"""Where images come from: `--data` resolved into train / val / test splits with class names.

Sources:
  DIR                   class-per-subfolder, optionally with train/ val/ test/ subfolders
  FILE.csv              columns `path,label` (optional `split`), paths relative to the CSV's folder;
                        multi-label: `path,labels` with `;` between labels (`cat;dog`), or `path`
                        and one 0/1 column per label (`path,cat,dog`)
  builtin:NAME          mnist-sample | digits | shapes[?n=..&size=..&seed=..] | multishapes (offline)
  torchvision:NAME      MNIST | FashionMNIST | CIFAR10 | CIFAR100 through torchvision's classes (--data-root)

A multi-label dataset's targets are an (N, L) 0/1 matrix (``DataBundle.multilabel``) instead of (N,)
class indices. Without given val/test splits, a stratified, seeded split is made (iterative
stratification for multi-label targets); the exact sample ids of every split are stored in
the run directory (`splits.json`) so that evaluation later uses the same held-out test set.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cnnlab.data import prefetch
from cnnlab.data.builtin import ArrayDataset, load_builtin
from cnnlab.errors import ConfigError, DataError, close_matches, wrong_field_count

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
T = TypeVar("T")
TORCHVISION = {
    "MNIST": "MNIST",
    "FashionMNIST": "FashionMNIST",
    "CIFAR10": "CIFAR10",
    "CIFAR100": "CIFAR100",
}


def in_split_order(by_split: Mapping[str, T]) -> dict[str, T]:
    """``by_split`` with its keys as train, val, test (any other after them, sorted): the one
    order of a bundle's splits and of every splits.json, whatever order they were found in (a
    set of folder names iterates in an order that changes from one process to the next)."""
    rank = {name: i for i, name in enumerate(SPLITS)}
    return {k: by_split[k] for k in sorted(by_split, key=lambda k: (rank.get(k, len(rank)), k))}


@dataclass
class Split:
    """One split: sample ids, targets, and either file paths or in-memory images (N, H, W, C) uint8."""

    ids: list[str]
    targets: np.ndarray
    paths: list[Path] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: Sequence[int] | np.ndarray) -> Split:
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            [self.ids[i] for i in idx],
            self.targets[idx],
            [self.paths[i] for i in idx] if self.paths is not None else None,
            self.images[idx] if self.images is not None else None,
        )


@dataclass
class DataBundle:
    source: str
    class_names: list[str]
    splits: dict[str, Split]
    channels: int  # 1 for grayscale sources, 3 otherwise
    native_size: int | None = None  # side in pixels when every image has the same square size
    split_origin: str = "given"
    root: Path | None = None
    scan: Any = None  # cnnlab.data.scan.ScanReport for file sources
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """Whether the targets are an (N, L) 0/1 label matrix (several labels per image)."""
        return next(iter(self.splits.values())).targets.ndim == 2


def data_image_size(cfg: Any, bundle: DataBundle) -> int | None:
    """The side images are decoded at when the options and the data decide it: ``--image-size``,
    else small square images (<= 64 px) as they are (at least 16 px; LeNet pads 28 to 32 itself);
    None where the model's default input size decides (cnnlab.engine.loaders.resolve_image_size)."""
    if cfg.image_size:
        return int(cfg.image_size)
    if bundle.native_size and bundle.native_size <= 64:
        return max(bundle.native_size, 16)
    return None


# ---------------------------------------------------------------------------------------------------------------
def stratified_split(
    targets: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Indices of a seeded split that keeps each class's share in every part (scikit-learn's splitter).

    ``class_names`` (index -> name) only words the errors: a class is named, not numbered.
    (N, L) multi-label targets: see :func:`multilabel_split`.
    """
    if targets.ndim == 2:
        return multilabel_split(targets, val_fraction, test_fraction, seed)
    idx = np.arange(len(targets))
    counts = np.bincount(targets)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if counts[counts > 0].min() < needed:

        def name(c: int) -> str | int:
            return str(class_names[c]) if class_names is not None and c < len(class_names) else c

        small = {name(c): int(n) for c, n in enumerate(counts) if 0 < n < needed}
        raise DataError(
            "dataset",
            f"classes with too few samples for a stratified split: {small} "
            f"(need at least {needed} each; add images or set --val-fraction/--test-fraction 0)",
        )
    # scikit-learn rounds a held-out part up (ceil) and needs at least one sample of every class in it and in
    # what remains; say so in the user's terms instead of its ValueError.
    n, n_classes = len(targets), int((counts > 0).sum())
    n_test = math.ceil(test_fraction * n)
    n_val = math.ceil(val_fraction / (1 - test_fraction) * (n - n_test))
    parts = (
        ("test", test_fraction, n_test, n_classes / n),
        ("val", val_fraction, n_val, n_classes / (n - n_test) * (1 - test_fraction)),
    )
    for option, fraction, size, least in parts:
        if fraction > 0 and size < n_classes:
            raise DataError(
                "dataset",
                f"--{option}-fraction {fraction:g} of {n} images gives {size} {option} images, fewer than the "
                f"{n_classes} classes a stratified split needs; raise it to at least "
                f"{math.ceil(least * 1000) / 1000:g}, add images, or set it to 0",
            )
    if n - n_test - (n_val if val_fraction > 0 else 0) < n_classes:
        raise DataError(
            "dataset",
            f"--val-fraction {val_fraction:g} and --test-fraction {test_fraction:g} leave fewer than "
            f"{n_classes} of the {n} images for training; lower them or add images",
        )
    if test_fraction <= 0 and val_fraction <= 0:
        return {"train": idx}
    # importing scikit-learn costs ~0.7 s (it imports pandas and SciPy): a split it made before
    # for the same targets, fractions and seed is read back from the cache instead
    key = _split_key(targets, val_fraction, test_fraction, seed)
    cached = _read_cached_split(key)
    if cached is not None:
        return cached
    out = _sklearn_split(idx, targets, val_fraction, test_fraction, seed)
    _write_cached_split(key, out)
    return out


def _sklearn_split(
    idx: np.ndarray, targets: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """The split itself: test first, then val out of the rest (scikit-learn's train_test_split)."""
    from sklearn.model_selection import train_test_split

    out: dict[str, np.ndarray] = {}
    rest = idx
    if test_fraction > 0:
        rest, out["test"] = train_test_split(
            idx, test_size=test_fraction, stratify=targets, random_state=seed
        )
    if val_fraction > 0:
        rel = val_fraction / (1 - test_fraction)
        rest, out["val"] = train_test_split(
            rest, test_size=rel, stratify=targets[rest], random_state=seed + 1
        )
    out["train"] = rest
    return {k: np.sort(v) for k, v in out.items()}


def multilabel_split(
    targets: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices of a seeded split of (N, L) 0/1 targets by iterative stratification (Sechidis et
    al. 2011, the maintained ``iterative-stratification`` package, as ``cnnlab cv``): each label's
    positives are spread over the parts as evenly as the label combinations allow."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n = len(targets)
    n_test = math.ceil(test_fraction * n)
    n_val = math.ceil(val_fraction * n) if val_fraction > 0 else 0
    if n - n_test - n_val < 1:
        raise DataError(
            "dataset",
            f"--val-fraction {val_fraction:g} and --test-fraction {test_fraction:g} leave no "
            f"training image of the {n}; lower them or add images",
        )
    out: dict[str, np.ndarray] = {}
    rest = np.arange(n)
    for name, fraction, seed_offset in (("test", test_fraction, 0), ("val", val_fraction, 1)):
        if fraction <= 0:
            continue
        size = n_test if name == "test" else n_val
        splitter = MultilabelStratifiedShuffleSplit(
            n_splits=1, test_size=size, random_state=seed + seed_offset
        )
        keep, held = next(splitter.split(np.zeros((len(rest), 1)), targets[rest]))
        out[name], rest = rest[held], rest[keep]
    out["train"] = rest
    return {k: np.sort(v) for k, v in out.items()}


def _split_key(targets: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> str:
    """What a split depends on: the targets in order, the fractions, the seed and scikit-learn's
    version (its splitter decides; read from the installed package's metadata, not imported)."""
    import hashlib
    from importlib import metadata

    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:  # not installed: the split itself will say so
        version = "none"
    h = hashlib.sha256(np.ascontiguousarray(targets, dtype=np.int64).tobytes())
    h.update(repr((float(val_fraction), float(test_fraction), int(seed), version)).encode())
    return h.hexdigest()[:32]


def _split_cache(key: str) -> Path:
    from cnnlab.data.tensors import default_cache_dir

    return default_cache_dir() / "splits" / f"split-{key}.npz"


def _read_cached_split(key: str) -> dict[str, np.ndarray] | None:
    """The split stored under ``key``, or None (none stored, or unreadable: made again)."""
    path = _split_cache(key)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k].astype(np.int64) for k in z.files}
    except (OSError, ValueError, KeyError):
        return None


def _write_cached_split(key: str, split: dict[str, np.ndarray]) -> None:
    """Store a split atomically (a temporary file renamed); an unwritable cache is only logged."""
    path = _split_cache(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **split)
        os.replace(tmp, path)
    except OSError as err:
        log.debug("split cache not written (%s): %s", path, err)


def few_shot(split: Split, shots: int, seed: int) -> Split:
    """The first `shots` images of each class in a seeded shuffle (all of a class when it has fewer)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split))
    keep = np.concatenate(
        [order[split.targets[order] == c][:shots] for c in np.unique(split.targets)]
    )
    return split.subset(np.sort(keep))


def _from_arrays(ds: ArrayDataset, source: str, val: float, test: float, seed: int) -> DataBundle:
    all_split = Split(
        [f"{ds.name}:{i}" for i in range(len(ds.targets))], ds.targets, images=ds.images
    )
    parts = stratified_split(ds.targets, val, test, seed)
    h, w, c = ds.images.shape[1:]
    return DataBundle(
        source,
        ds.class_names,
        {k: all_split.subset(v) for k, v in parts.items()},
        channels=c,
        native_size=h if h == w else None,
        split_origin=f"stratified(seed={seed})",
        extras={"dataset": ds},
    )


def _torchvision(name: str, root: str | None, val: float, test: float, seed: int) -> DataBundle:
    """Read (or download, when online) a torchvision dataset; uses its official split for test."""
    import torchvision.datasets as tvd

    if name not in TORCHVISION:
        raise ConfigError(
            f"unknown torchvision dataset {name!r}{close_matches(name, TORCHVISION)}; "
            f"choose from {', '.join(TORCHVISION)}"
        )
    root = root or str(Path.home() / ".cache" / "cnnlab" / "datasets")
    cls = getattr(tvd, TORCHVISION[name])
    parts = {}
    for train in (True, False):
        try:
            ds = cls(root, train=train, download=False)
        except RuntimeError:
            try:
                ds = cls(root, train=train, download=True)
            except (OSError, RuntimeError) as err:
                raise DataError(
                    root,
                    f"torchvision:{name} is not in --data-root and could not be downloaded "
                    f"({type(err).__name__}: {err}); put the dataset files there",
                ) from None
        data = np.asarray(ds.data)
        images = (
            data[..., None] if data.ndim == 3 else data
        )  # MNIST: N x 28 x 28; CIFAR: N x 32 x 32 x 3
        targets = np.asarray(ds.targets, dtype=np.int64)
        parts["train" if train else "test"] = (images, targets, list(ds.classes))
    images, targets, classes = parts["train"]
    trainval = Split([f"{name}:train:{i}" for i in range(len(targets))], targets, images=images)
    idx = stratified_split(targets, val, 0.0, seed)  # val is carved from the official train split
    t_images, t_targets, _ = parts["test"]
    splits = {k: trainval.subset(v) for k, v in idx.items()}
    splits["test"] = Split(
        [f"{name}:test:{i}" for i in range(len(t_targets))], t_targets, images=t_images
    )
    return DataBundle(
        f"torchvision:{name}",
        [str(c) for c in classes],
        splits,
        channels=images.shape[-1],
        native_size=images.shape[1],
        split_origin=f"official test + stratified val(seed={seed})",
    )


def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, label columns): ``[]`` for the single-label form `path,label`, ``["labels"]`` for
    `path,labels` (``;`` between labels), else the 0/1 columns of `path,<label>,<label>...`."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig drops a BOM
    except UnicodeDecodeError:
        raise DataError(path, "is not UTF-8 text; save the CSV as UTF-8") from None
    if not text.strip():
        raise DataError(path, "is empty; expected a header `path,label` and one row per image")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = [_column(f) for f in reader.fieldnames or []]
    label_columns: list[str] = []
    if "path" in fields and "label" not in fields:
        others = [f for f in fields if f not in _RESERVED and f]
        label_columns = ["labels"] if "labels" in fields else others if len(others) >= 2 else []
    missing = [c for c in ("path", "label") if c not in fields]
    if missing and not label_columns:
        raise DataError(
            path,
            f"missing column(s) {missing}; found {reader.fieldnames}. Expected a header "
            "`path,label` (optional `split` with train/val/test); multi-label: `path,labels` "
            "with `;` between labels, or `path` and one 0/1 column per label",
        )
    rows = []
    for row_no, row in enumerate(reader, start=2):  # row 1 is the header; blank lines skipped
        extra = row.get(None) or []  # fields past the header's: an unquoted delimiter in a value
        if any(cell.strip() for cell in extra):
            raise wrong_field_count(
                path, len(fields) + len(extra), len(fields), row=row_no, delimiter=dialect.delimiter
            )
        # a class name keeps its spaces until its spelling is checked ('dog ' beside 'dog')
        rows.append({_column(k): _cell(k, v) for k, v in row.items() if k})
    return rows, label_columns


def _cell(column: str, value: str | None) -> str:
    return (value or "") if _column(column) == "label" else (value or "").strip()


_RESERVED = ("path", "label", "labels", "split")  # matched in any case; label columns keep theirs


def _column(name: str) -> str:
    name = name.strip()
    return name.lower() if name.lower() in _RESERVED else name


def _label_set(row: dict[str, str], columns: list[str], path: Path, row_no: int) -> str:
    """A multi-label row's labels as one canonical string, sorted and joined by ``;``."""
    rel = row.get("path", "")
    if columns == ["labels"]:
        cell = row.get("labels", "")
        names = sorted({x.strip() for x in cell.split(";")} - {""})
        if not names or cell.lower() == "nan":
            raise DataError(
                path,
                f"empty labels for {rel!r}; write the image's labels separated by ';' (for "
                "images with no label use the one 0/1 column per label form)",
                row=row_no,
            )
        return ";".join(names)
    bad = {c: row.get(c, "") for c in columns if row.get(c, "") not in ("0", "1")}
    if bad:
        column, value = next(iter(bad.items()))
        raise DataError(
            path,
            f"label column {column!r} of {rel!r} holds {value!r}; each label column holds 0 "
            "(absent) or 1 (present)",
            row=row_no,
        )
    return ";".join(sorted(c for c in columns if row[c] == "1"))


def _csv_items(
    path: Path,
) -> tuple[list[tuple[Path, str, str | None]], Path, list[str] | None]:
    """(file, label, split) per row, the root, and the label columns of a multi-label CSV (None
    for a single-label one, whose rows' label is a class name; a multi-label row's label is its
    labels joined by ';'); paths must stay inside the CSV's folder."""
    root = path.parent.resolve()
    rows, label_columns = _read_csv(path)
    items, seen_rows = [], []  # seen_rows: the CSV row of each item
    seen: dict[Path, tuple[str, str, int]] = {}  # resolved file -> (label, path as written, row)
    spelt: list[str] = []  # each item's class name as written ('dog ' is not 'dog' yet)
    missing: list[str] = []  # "row N: 'path'" of each row whose file is not there
    blank_split: list[int] = []  # rows with an empty cell in a `split` column
    for row_no, row in enumerate(rows, start=2):  # row 1 is the header
        rel, written, split = row.get("path", ""), row.get("label", ""), row.get("split") or None
        label = written.strip()
        if not rel:
            raise DataError(path, "empty path", row=row_no)
        if "\x00" in rel:  # no file name holds one; the OS refuses the path with a ValueError
            raise DataError(
                path, f"path {rel!r} holds a NUL byte (\\x00); fix or remove the row", row=row_no
            )
        if "split" in row and split is None:
            blank_split.append(row_no)
        if label_columns:
            label = _label_set(row, label_columns, path, row_no)
        elif not label or label.lower() == "nan":
            raise DataError(
                path, f"empty label for {rel!r}; every row needs a class name", row=row_no
            )
        if split is not None and split not in SPLITS:
            raise DataError(path, f"split {split!r} must be one of {SPLITS}", row=row_no)
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts:
            raise DataError(
                path, f"path {rel!r} must be relative to the CSV's folder, without '..'", row=row_no
            )
        full = (root / p).resolve()
        if not full.is_relative_to(root):
            raise DataError(path, f"path {rel!r} resolves outside {root} (symlink?)", row=row_no)
        # one file however it is spelt ('./cat/1.png', 'cat//1.png', a symlinked folder)
        if full in seen:
            earlier, earlier_rel, earlier_row = seen[full]
            if earlier != label:
                same = (
                    "" if earlier_rel == rel else f" (row {earlier_row} spells it {earlier_rel!r})"
                )
                raise DataError(
                    path,
                    f"{rel!r} is listed twice with different labels ({earlier!r} and {label!r})"
                    f"{same}; list each image once, with its one label",
                    row=row_no,
                )
            log.warning("%s row %d: duplicate of row %d, ignored", path, row_no, earlier_row)
            continue
        seen[full] = (label, rel, row_no)
        seen_rows.append(row_no)
        spelt.append(written)
        items.append((root / p, label, split))
        if not full.exists():  # the scan skips it as "file not found", naming no row
            missing.append(f"row {row_no}: {rel!r}")
    if blank_split and len(blank_split) < len(rows):  # some rows give a split, these do not
        raise DataError(
            path,
            f"{_rows(blank_split)}: empty split; give train, val or test in every row, or leave "
            "the split column out (cnnlab then splits every row itself)",
        )
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        log.warning(
            "%s: %d row(s) name a file that is not there (%s); fix the path or remove the row",
            path, len(missing), shown,
        )  # fmt: skip
    # class names typed in the rows (not a 0/1 column per label): name the rows of a typo
    if not label_columns or label_columns == ["labels"]:
        rows_of: dict[str, list[int]] = {}
        for row_no, (_, label, _), written in zip(seen_rows, items, spelt, strict=True):
            for lab in label.split(";") if label_columns else [written]:
                if lab:
                    rows_of.setdefault(lab, []).append(row_no)
        _check_label_spelling(sorted(rows_of), path, rows_of)
    if not label_columns:
        return items, root, None
    return items, root, [] if label_columns == ["labels"] else label_columns  # []: from the rows


def _rows(row_nos: list[int]) -> str:
    """'row 3' or 'rows 3, 7, 9, 12, 15 and 4 more'."""
    more = f" and {len(row_nos) - 5} more" if len(row_nos) > 5 else ""
    return f"row{'s' if len(row_nos) > 1 else ''} {', '.join(map(str, row_nos[:5]))}{more}"


def _check_label_spelling(
    labels: list[str], where: Path, rows_of: dict[str, list[int]] | None = None
) -> None:
    """Near-duplicate class names ('cat', 'Cat', 'cat ', 'café' composed and decomposed) are
    almost always typos: fail and name them.

    ``rows_of`` (a CSV's labels): the rows naming each label, so the message points at the typo
    (usually the spelling with the fewest rows) instead of leaving a search through the file."""
    by_key: dict[str, set[str]] = {}
    for lab in labels:
        by_key.setdefault(unicodedata.normalize("NFC", lab).strip().casefold(), set()).add(lab)
    clashes = [sorted(v) for v in by_key.values() if len(v) > 1]
    if not clashes:
        return

    def named(lab: str, spell: Any) -> str:
        if rows_of is None:
            return spell(lab)
        rows = rows_of[lab]
        shown = ", ".join(map(str, rows[:3])) + (
            f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        )
        return f"{spell(lab)} (row{'s' if len(rows) > 1 else ''} {shown})"

    def group_text(group: list[str]) -> str:
        # names that print alike (one composed, one decomposed) are shown by their code points
        alike = len({unicodedata.normalize("NFC", lab) for lab in group}) < len(group)
        text = " vs ".join(named(lab, ascii if alike else repr) for lab in group)
        return f"{text} (the same letters in another Unicode form)" if alike else text

    groups = "; ".join(group_text(group) for group in clashes)
    raise DataError(
        where,
        f"class names that differ only in case/spaces: {groups}; make them identical",
    )


#: The pixel limit is an option of every command that trains on a dataset loaded through here
#: (TrainConfig); a command that reads data for a trained run (evaluate, embed) reads it under the
#: run's own limit and says so instead (RUN_PIXEL_HINT).
PIXEL_LIMIT_HINT = "raise --max-image-pixels for larger images"
RUN_PIXEL_HINT = (
    "the limit is the run's own, set when it was trained (`cnnlab train --max-image-pixels`)"
)


def check_scan(report: Any, **check_options: Any) -> list[str]:
    """``report.check(**check_options)`` (its warnings returned), then the class names of a
    single-label source: no two that differ only in case/spaces/Unicode form, at least two
    classes with usable images. The one check after a scan, for `cnnlab train` (evaluate, cv)
    and `cnnlab data check` alike, so that the check refuses what training refuses, in the same
    words (naming the report's root). A multi-label CSV's files were scanned without a label
    (None): their labels are checked when the label matrix is made."""
    warnings = report.check(**check_options)
    where = report.root or "<dataset items>"
    item_labels = [it.label for it in report.usable_items]
    if None not in item_labels:
        labels = sorted(set(item_labels))
        _check_label_spelling(labels, where)
        check_two_classes(labels, item_labels, where)
    return warnings


def check_two_classes(
    labels: list[str],
    item_labels: list[str],
    where: str | os.PathLike[str],
    *,
    item: str = "images",
    fix: str = "add a folder (or CSV label) per class",
) -> None:
    """A classifier needs two classes: with one, every prediction is right and accuracy says 1.0
    (bad-inputs.md #64). ``labels``: the classes left after skipping unusable files;
    ``item_labels``: the label of each usable file (``item`` names them in the message).
    Image and video classification both refuse through here."""
    if len(labels) < 2:
        found = ", ".join(f"{c!r} ({item_labels.count(c)} {item})" for c in labels) or "none"
        raise DataError(
            where,
            f"a classification dataset needs at least 2 classes, found {len(labels)}: {found} "
            f"(after skipping unusable files); {fix}",
        )


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def sample_ids(paths: Sequence[str], root: str | os.PathLike[str]) -> list[str]:
    """Each file's id: its real path (symlinks resolved) relative to the real root,
    ``os.path.relpath(os.path.realpath(path), os.path.realpath(root))``.

    Worked out once per folder: a file that is not a symlink resolves to its folder's real path
    joined with its name, so 5,000 files in 10 folders cost 5,000 ``lstat`` calls instead of
    one per path component of each file (0.2 s of a 5,000-image run's scan)."""
    real_root = os.path.realpath(root)
    folders: dict[str, str] = {}  # folder -> its real path relative to the real root
    ids = []
    for path in paths:
        folder, name = os.path.split(path)
        if not name or name in (".", "..") or os.path.islink(path):  # resolved the long way
            ids.append(os.path.relpath(os.path.realpath(path), real_root))
            continue
        rel = folders.get(folder)
        if rel is None:
            rel = folders[folder] = os.path.relpath(os.path.realpath(folder or "."), real_root)
        ids.append(name if rel == "." else os.path.join(rel, name))
    return ids


def _from_items(
    listing: Any,
    root: Path,
    source: str,
    cfg: Any,
    label_columns: list[str] | None = None,
    pixel_hint: str = PIXEL_LIMIT_HINT,
) -> DataBundle:
    """Scan the files (read-only, full decode), drop bad ones per policy, then split.

    `listing` is a FolderListing (folder layout) or a list of (path, label, split) items (CSV).
    ``label_columns``: None for single-label items; for multi-label ones (label = labels joined
    by ';') the declared labels, or [] when the labels are those the rows name.
    """
    from cnnlab.data.tensors import default_cache_dir

    # The scan's per-file results are cached (JSON, keyed by path/size/mtime), so a second run skips re-decoding.
    report, label_sets = _scan_listing(
        listing, root, label_columns,
        max_pixels=cfg.max_image_pixels, cache_dir=default_cache_dir() / "scans",
    )  # fmt: skip
    # the imbalance is judged by training (cnnlab.tasks.classify.imbalance): said only when no
    # remedy is chosen, with the training split's counts; the scan said it beside the remedy
    check_scan(
        report, strict=cfg.strict, max_bad_fraction=cfg.max_bad_fraction,
        pixel_hint=pixel_hint, imbalance=False,
    )  # fmt: skip
    usable = report.usable_items  # [DataItem(path, label, split)]
    if label_columns is None:
        labels = sorted({it.label for it in usable})
        index = {c: i for i, c in enumerate(labels)}
        targets = np.array([index[it.label] for it in usable], dtype=np.int64)
    else:
        labels, targets = _label_matrix([label_sets[it.path] for it in usable], label_columns)
        _check_label_spelling(labels, root)
        if len(labels) < 2:
            raise DataError(
                source,
                f"a multi-label dataset needs at least 2 labels, found {labels}; for one label "
                "use the single-label form `path,label` with a 'no' class",
            )
    given = {it.split for it in usable if it.split}
    if given and "train" not in given:
        raise DataError(root, f"found splits {sorted(given)} but no 'train'")
    ids = sample_ids([it.path for it in usable], root)
    whole = Split(ids, targets, paths=[Path(it.path) for it in usable])
    if given:
        splits = {
            s: whole.subset([i for i, it in enumerate(usable) if it.split == s]) for s in given
        }
        origin = "given"
        missing = [s for s in ("val", "test") if s not in splits]
        if missing:  # carve the missing parts out of train, stratified
            fr = {
                "val": cfg.val_fraction if "val" in missing else 0.0,
                "test": cfg.test_fraction if "test" in missing else 0.0,
            }
            part = stratified_split(
                splits["train"].targets, fr["val"], fr["test"], cfg.seed, class_names=labels
            )
            train = splits["train"]
            splits.update({k: train.subset(v) for k, v in part.items()})
            origin = f"given + stratified {missing}(seed={cfg.seed})"
        splits = in_split_order(splits)
    else:
        part = stratified_split(
            targets, cfg.val_fraction, cfg.test_fraction, cfg.seed, class_names=labels
        )
        splits, origin = (
            {k: whole.subset(v) for k, v in part.items()},
            f"stratified(seed={cfg.seed})",
        )
    ok = [r for r in report.records if r.ok]
    channels = 1 if all(r.mode in GRAY_MODES for r in ok) else 3
    sizes = {(r.width, r.height) for r in ok}
    native = next(iter(sizes))[0] if len(sizes) == 1 and len(set(next(iter(sizes)))) == 1 else None
    return DataBundle(
        source,
        labels,
        splits,
        channels=channels,
        native_size=native,
        split_origin=origin,
        root=root,
        scan=report,
    )


def _scan_listing(
    listing: Any, root: Path, label_columns: list[str] | None, **scan_options: Any
) -> tuple[Any, dict[str, list[str]]]:
    """(ScanReport, labels per file path) of a folder listing or CSV items: every file decoded as
    training decodes it. A multi-label CSV's files are scanned without a label (a combination of
    labels is not a class); their labels come back per path instead."""
    from cnnlab.data.scan import scan_dataset

    label_sets: dict[str, list[str]] = {}
    if label_columns is not None:
        label_sets = {os.fspath(p): lab.split(";") if lab else [] for p, lab, _ in listing}
        listing = [(p, None, split) for p, _, split in listing]
    return scan_dataset(listing, root=root, **scan_options), label_sets


def _listing(path: Path) -> tuple[Any, Path, list[str] | None]:
    """(listing, root, label columns) of an existing folder or CSV file, as both training and
    `cnnlab data check` read it: a folder's FolderListing (no label columns), or a CSV's
    (path, label, split) items with its rows checked (see :func:`_csv_items`)."""
    if path.is_file():
        return _csv_items(path)
    from cnnlab.data.scan import items_from_folder

    return items_from_folder(path), path.resolve(), None


def scan_source(
    source: str | os.PathLike[str], *, max_pixels: int, min_side: int, workers: int
) -> Any:
    """The read-only pre-flight scan (a ScanReport) of a folder or CSV dataset, read as
    `cnnlab train --data SOURCE` reads it: the same CSV rules (a bad row is named), the same
    decoding; a class whose every file is missing or unusable is an empty class. Nothing is
    cached or written. builtin: and torchvision: datasets are arrays: nothing to scan."""
    path = Path(source).expanduser()
    if str(source).startswith(("builtin:", "torchvision:")):
        raise DataError(
            source, "is a packaged dataset of arrays, not files: there is nothing to check"
        )
    if not path.exists():
        raise DataError(path, "dataset root not found; give a folder of class subfolders or a CSV")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise DataError(
            path, "is a file but not a .csv; give a folder of class subfolders or a CSV"
        )
    if not path.is_file() and not path.is_dir():
        raise DataError(path, "dataset root is not a directory")
    listing, root, label_columns = _listing(path)
    report, _ = _scan_listing(
        listing, root, label_columns, max_pixels=max_pixels, min_side=min_side, workers=workers
    )
    return report


def _label_matrix(sets: list[list[str]], declared: list[str]) -> tuple[list[str], np.ndarray]:
    """(label names, (N, L) int64 0/1): the declared labels in their order, else the sorted
    labels the rows name."""
    names = list(declared) or sorted({lab for labs in sets for lab in labs})
    index = {c: i for i, c in enumerate(names)}
    targets = np.zeros((len(sets), len(names)), dtype=np.int64)
    for i, labs in enumerate(sets):
        targets[i, [index[lab] for lab in labs]] = 1
    return names, targets


def load_source(cfg: Any, *, pixel_hint: str = PIXEL_LIMIT_HINT) -> DataBundle:
    """Resolve `cfg.data` (a TrainConfig or anything with the same fields) into a DataBundle.

    With `cfg.split_file` the splits are the file's (:func:`apply_split_file`): every sample of the
    source is pooled (given train/val/test folders too) and the fractions are not used.
    ``pixel_hint``: said when files exceed the pixel limit (:data:`RUN_PIXEL_HINT` for a command
    that reads data for a trained run)."""
    prefetch.wait()  # a warm-up child scanning this source for the command: its caches first
    split_file = getattr(cfg, "split_file", None)
    if split_file:
        pooled = dataclasses.replace(cfg, split_file=None, val_fraction=0.0, test_fraction=0.0)
        return apply_split_file(load_source(pooled, pixel_hint=pixel_hint), split_file)
    spec = str(cfg.data)
    if spec.startswith("builtin:"):
        return _from_arrays(
            load_builtin(spec[8:]), spec, cfg.val_fraction, cfg.test_fraction, cfg.seed
        )
    if spec.startswith("torchvision:"):
        return _torchvision(spec[12:], cfg.data_root, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            path,
            "dataset root not found; give a folder of class subfolders, a CSV file, "
            "builtin:mnist-sample|digits|shapes or torchvision:MNIST|FashionMNIST|CIFAR10|CIFAR100",
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(
                path, "is a file but not a .csv; --data takes a folder, a CSV or builtin:NAME"
            )
    elif not path.is_dir():
        raise DataError(path, "dataset root is not a directory")
    listing, root, label_columns = _listing(path)
    return _from_items(listing, root, str(path), cfg, label_columns, pixel_hint)


def warm_caches(cfg: Any) -> None:
    """Run the steps of a classification run's data preparation that fill the caches: the scan and
    split (:func:`load_source`), the few-shot subset, and the decoding of every file-backed split at
    the size training will use when the data alone decide it (``--image-size`` given, or small
    images used as they are); a size the model decides needs torch, so that decoding is left to
    the parent. Mirrors ``cnnlab.tasks.classify.train._prepare``; run by the child of :mod:`cnnlab.data.prefetch`."""
    from cnnlab.data.tensors import decode_files, decode_spec

    bundle = load_source(cfg)
    if getattr(cfg, "shots", None):
        bundle.splits["train"] = few_shot(bundle.splits["train"], cfg.shots, cfg.seed)
    image_size = data_image_size(cfg, bundle)
    if image_size is None:
        return
    spec = decode_spec(cfg, bundle, image_size)
    for split in bundle.splits.values():
        if split.images is None and split.paths is not None and len(split):
            decode_files(split.paths, spec)


def apply_split_file(bundle: DataBundle, path: str | Path) -> DataBundle:
    """``bundle`` with the splits a JSON file names by sample id: ``{"splits": {"train": [ids],
    "val": [...], "test": [...]}}`` (a run's splits.json) or the inner object alone. ``train`` is
    required; an empty or missing val/test split is left out; samples the file does not name are
    not used. An id that is unknown, repeated, or in two splits is a DataError naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, "split file not found; give the JSON file of sample ids per split")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"is not a JSON split file ({err}); {_SPLIT_FORMAT}") from None
    given = content.get("splits", content) if isinstance(content, dict) else None
    if not isinstance(given, dict) or not given:
        raise DataError(path, f"holds no splits; {_SPLIT_FORMAT}")
    unknown = [k for k in given if k not in SPLITS]
    if unknown:
        raise DataError(path, f"unknown split {unknown[0]!r}; splits are {', '.join(SPLITS)}")
    if not given.get("train"):
        raise DataError(path, f"has no (or an empty) 'train' split; {_SPLIT_FORMAT}")
    whole = concat_splits(list(bundle.splits.values()))
    index = {sid: i for i, sid in enumerate(whole.ids)}
    seen: dict[str, str] = {}
    splits: dict[str, Split] = {}
    for name, ids in given.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(path, f"split {name!r} must be a list of sample ids (strings)")
        for sid in ids:
            if sid in seen:
                where = "twice" if seen[sid] == name else f"in both {seen[sid]!r} and {name!r}"
                raise DataError(path, f"sample {sid!r} is listed {where}; list each sample once")
            seen[sid] = name
        missing = [sid for sid in ids if sid not in index]
        if missing:
            raise DataError(
                path,
                f"{len(missing)} id(s) of split {name!r} are not in {bundle.source} (first: "
                f"{missing[:3]}); the file belongs to another dataset or the dataset changed",
            )
        if ids:
            splits[name] = whole.subset([index[sid] for sid in ids])
    unused = len(whole) - len(seen)
    if unused:
        log.info("%s: %d sample(s) of %s are in no split", path, unused, bundle.source)
    return dataclasses.replace(
        bundle, splits=in_split_order(splits), split_origin=f"split file {path}"
    )


_SPLIT_FORMAT = 'expected {"splits": {"train": [ids], "val": [ids], "test": [ids]}} (a splits.json)'


def split_by_ids(
    bundle: DataBundle, ids: list[str], split: str, class_names: list[str] | None = None
) -> Split:
    """The samples ``ids`` names (a run's recorded split), labelled in ``class_names``' order (the
    model's: a class folder added to or removed from the dataset since training shifts the data's
    own indices; labels are matched by name). None: the data's own order."""
    merged: dict[str, tuple[Split, int]] = {}
    for s in bundle.splits.values():
        for i, sid in enumerate(s.ids):
            merged[sid] = (s, i)
    missing = [sid for sid in ids if sid not in merged]
    if missing:
        raise DataError(
            bundle.source,
            f"{len(missing)} file(s) of the recorded {split} split are gone "
            f"(first: {missing[:3]}); the dataset changed since training",
        )
    parts = [merged[sid] for sid in ids]
    first = parts[0][0]
    chosen = Split(
        ids,
        np.array([s.targets[i] for s, i in parts], dtype=np.int64),
        paths=[s.paths[i] for s, i in parts] if first.paths is not None else None,
        images=np.stack([s.images[i] for s, i in parts]) if first.images is not None else None,
    )
    if class_names is None or list(bundle.class_names) == list(class_names):
        return chosen
    return _in_model_order(bundle, chosen, class_names)


def _in_model_order(bundle: DataBundle, chosen: Split, class_names: list[str]) -> Split:
    """``chosen``'s labels moved from the data's class order to the model's, by name; a sample
    labelled with a class the model does not know is refused, naming it."""
    known = [c in class_names for c in bundle.class_names]
    lut = np.array([class_names.index(c) if k else -1 for c, k in zip(
        bundle.class_names, known, strict=True)], dtype=np.int64)  # fmt: skip
    if chosen.targets.ndim == 2:  # multi-label: the data's label columns moved to the model's
        stray = chosen.targets[:, ~np.array(known, dtype=bool)].any(axis=1)
        targets = np.zeros((len(chosen), len(class_names)), dtype=np.int64)
        targets[:, lut[lut >= 0]] = chosen.targets[:, lut >= 0]
    else:
        targets = lut[chosen.targets]
        stray = targets < 0
    if stray.any():
        i = int(np.flatnonzero(stray)[0])
        raise DataError(
            bundle.source,
            f"sample {chosen.ids[i]} is labelled with a class the model does not know "
            f"(its classes: {class_names}); the dataset changed since training",
        )
    return Split(chosen.ids, targets, chosen.paths, chosen.images)


def model_label_indices(
    where: Any, data_names: Sequence[str], class_names: Sequence[str], since: str = ""
) -> np.ndarray | None:
    """(len(data_names),) the model's index of each of the data's classes, matched by name; None
    when the two lists are the same. For a detection or segmentation dataset read again (its new
    place may number its classes in another order); a class the model does not know is a DataError
    naming it (``since``: what changed it, for the recorded split)."""
    if list(data_names) == list(class_names):
        return None
    unknown = [c for c in data_names if c not in class_names]
    if unknown:
        changed = f"; the dataset changed since {since}" if since else ""
        raise DataError(
            where, f"classes {unknown} are not among the model's {list(class_names)}{changed}"
        )
    return np.array([list(class_names).index(c) for c in data_names], dtype=np.int64)


def remap_classes(bundle: DataBundle, class_names: list[str], split: str) -> Split:
    unknown = [c for c in bundle.class_names if c not in class_names]
    if unknown:
        raise DataError(
            bundle.source, f"classes {unknown} are not among the model's classes {class_names}"
        )
    if split in bundle.splits and bundle.split_origin == "given":
        chosen = bundle.splits[split]
    else:
        chosen = concat_splits([bundle.splits[k] for k in bundle.splits])
    return _in_model_order(bundle, chosen, class_names)


def concat_splits(parts: list[Split]) -> Split:
    return Split(
        [i for p in parts for i in p.ids],
        np.concatenate([p.targets for p in parts]),
        [x for p in parts for x in p.paths] if parts[0].paths is not None else None,
        np.concatenate([p.images for p in parts]) if parts[0].images is not None else None,
    )
