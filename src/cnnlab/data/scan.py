"""Read-only pre-flight scan of an image dataset (``cnnlab data check``).

Before training starts, every image file is decoded exactly as training will decode it
(:func:`cnnlab.data.decode.decode_image`), in parallel threads (Pillow and hashlib release the GIL
while they work), and everything worth knowing is collected in a :class:`ScanReport`:

* bad files and why (the short reasons of ``decode.py``: "empty file", "truncated or corrupt
  image data", "exceeds max pixels W×H > LIMIT ...", ...);
* entries that are ignored (hidden/system: ``.ipynb_checkpoints``, ``.DS_Store``, ``__MACOSX``,
  ``Thumbs.db``, ``@eaDir``, dotfiles), skipped non-image files grouped by extension, symlinks
  that point outside the dataset root (skipped, never followed), files not inside a class folder;
* format / mode / size distribution, tiny images (``min(W, H) < min_side``), animated or
  multi-page files (first frame used), extension/content mismatches (accepted, noted);
* class counts per split, imbalance ratio (largest / smallest class), empty classes, classes that
  differ between splits, exact duplicates (sha256 of the bytes), the same bytes in two splits
  (leakage) or under two labels.

:meth:`ScanReport.check` turns that into a verdict: it raises :class:`DataError` (FAIL) when the
bad fraction is over a threshold, a class is empty, the splits disagree on classes, or (strict)
anything at all was skipped or leaked; otherwise it returns warnings.

The scan never writes into the dataset: files are opened read-only and nothing is renamed,
re-encoded or deleted. Results may be cached as JSON (never pickle) in ``cache_dir`` (which must
lie outside the dataset); a file's cached result is reused while its size and ``mtime_ns`` are
unchanged, and the dataset fingerprint is sha256 over (relative path, size, mtime_ns) lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import PIL
from PIL import UnidentifiedImageError

from cnnlab.data.decode import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    EXTENSION_FORMATS,
    decode_image,
    read_image_bytes,
)
from cnnlab.errors import ConfigError, DataError, close_matches

log = logging.getLogger(__name__)

#: Folder names that make the root a split layout: root/<split>/<class>/<image>.
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")

#: System entries that are never data (compared case-insensitively); any name starting with "."
#: (dotfiles, ``.ipynb_checkpoints``, macOS ``._x`` resource forks) is ignored as well.
IGNORED_NAMES = frozenset(
    {"__macosx", "thumbs.db", "@eadir", "desktop.ini", "$recycle.bin", "system volume information"}
)

#: Extensions that are decoded. Besides the allowed formats this lists image formats cnnlab
#: refuses, so that they appear as bad files with a reason ("format HEIC not allowed ...")
#: instead of silently disappearing among "non-image" files.
IMAGE_EXTENSIONS = frozenset(EXTENSION_FORMATS) | frozenset(
    {".heic", ".heif", ".avif", ".psd", ".ico", ".cur", ".svg", ".jp2", ".j2k", ".qoi", ".dds",
     ".tga", ".eps", ".fits", ".fit", ".icns", ".pcx"}
)  # fmt: skip

#: Images whose shorter side is below this many pixels are listed (they are still used).
#: 8 keeps scikit-learn's 8 x 8 digits unflagged.
DEFAULT_MIN_SIDE = 8

#: Largest / smallest class count above which check() warns about imbalance (and a classification
#: report puts balanced accuracy and per-class recall first).
IMBALANCE_WARN_RATIO = 10.0
#: what the imbalance warning suggests (the options of `cnnlab train`, docs/imbalance.md)
IMBALANCE_HINT = (
    "train with `cnnlab train --class-weights auto`, `--sampler balanced` or `--loss focal` and "
    "monitor `--monitor val_balanced_accuracy`"
)

_CACHE_VERSION = 1


class DataItem(NamedTuple):
    """One image file to scan/use. ``label`` / ``split`` are None when unknown (prediction)."""

    path: str
    label: str | None = None
    split: str | None = None


@dataclass
class FolderListing:
    """What :func:`items_from_folder` found, before any file is decoded."""

    root: str
    items: list[DataItem]
    class_names: list[str]  # sorted (plain ``sorted``, like torchvision) union over splits
    split_classes: dict[str, list[str]]  # split -> class folders present ("" = no split layout)
    ignored: list[str] = field(default_factory=list)  # hidden/system entries
    non_image: list[str] = field(default_factory=list)  # files with a non-image extension
    outside_root: list[str] = field(default_factory=list)  # symlinks resolving outside root
    unplaced: list[str] = field(default_factory=list)  # image files not inside a class folder


@dataclass(frozen=True)
class FileRecord:
    """The scan result of one file (JSON-able)."""

    path: str
    rel: str
    label: str | None
    split: str | None
    ok: bool
    reason: str = ""  # short DataError reason when not ok
    detail: str = ""  # Pillow's own message, when there is one
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    n_frames: int = 1
    sha256: str = ""
    file_bytes: int = 0
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        # Flat fields: a comprehension, not dataclasses.asdict (which deep-copies every value and
        # was ~2 s of a 5,000-image run's set-up, for the scan cache and data_report.json).
        d = {name: getattr(self, name) for name in _RECORD_FIELDS}
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict, **changes: Any) -> FileRecord:
        """The record ``to_dict`` wrote, with ``changes`` (field: value) applied."""
        return cls(**{**d, "notes": tuple(d.get("notes", ())), **changes})


_RECORD_FIELDS = tuple(f.name for f in fields(FileRecord))


# ----------------------------------------------------------------------------- listing


def is_ignored_name(name: str) -> bool:
    """Hidden or system entry that is never data (and never a class)."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def items_from_folder(
    root: str | os.PathLike[str], *, extensions: frozenset[str] | None = None
) -> FolderListing:
    """List ``root/<class>/**/<image>`` or ``root/<split>/<class>/**/<image>`` without decoding.

    Raises DataError when the root is missing or has no class folders (no automatic split).
    Symlinks are followed only while they stay inside ``root``. ``extensions`` (lower case, with
    the dot) replaces the image extensions: video folders use the same rules
    (:mod:`cnnlab.video.train`).
    """
    root_path = Path(root)
    if not root_path.exists():
        raise DataError(root_path, "dataset root not found")
    if not root_path.is_dir():
        raise DataError(root_path, "dataset root is not a directory")
    listing = FolderListing(str(root_path), [], [], {})
    root_real = os.path.realpath(root_path)
    visited = {root_real}

    top_dirs, top_files = _list_dir(root_path, root_real, visited, listing)
    split_dirs = [d for d in top_dirs if d.name.lower() in SPLIT_NAMES]
    if split_dirs:
        others = [d.name for d in top_dirs if d not in split_dirs]
        if others:
            raise DataError(
                root_path,
                f"has split folders ({', '.join(d.name for d in split_dirs)}) and other folders "
                f"({', '.join(others)}); expected root/<split>/<class>/<image> for every class",
            )
        groups = []
        for split_dir in split_dirs:
            class_dirs, loose = _list_dir(split_dir, root_real, visited, listing)
            listing.unplaced.extend(f for f in loose if _is_image_name(f, extensions))
            listing.non_image.extend(f for f in loose if not _is_image_name(f, extensions))
            groups.append((split_dir.name, class_dirs))
    else:
        groups = [("", top_dirs)]

    loose_images = [f for f in top_files if _is_image_name(f, extensions)]
    listing.non_image.extend(f for f in top_files if not _is_image_name(f, extensions))
    if all(not class_dirs for _, class_dirs in groups):
        hint = f"; found {len(loose_images)} image files directly in it" if loose_images else ""
        raise DataError(
            root_path,
            "no class folders found: expected root/<class>/<image> or root/train/<class>/<image> "
            f"(cnnlab does not split automatically){hint}",
        )
    listing.unplaced.extend(loose_images)

    all_classes: set[str] = set()
    for split, class_dirs in groups:
        listing.split_classes[split] = sorted(d.name for d in class_dirs)
        all_classes.update(d.name for d in class_dirs)
        for class_dir in class_dirs:
            for path in _walk_files(class_dir, root_real, visited, listing, extensions):
                listing.items.append(DataItem(path, class_dir.name, split or None))
    listing.class_names = sorted(all_classes)
    return listing


def _is_image_name(path: str, extensions: frozenset[str] | None = None) -> bool:
    """Whether a file's name (or path) ends in an image extension (``extensions``: instead)."""
    # os.path, not Path(name).suffix: the same answer for every name a listing keeps (hidden
    # names are ignored first), without a Path object per file (0.03 s of a 5,000-file scan)
    suffix = os.path.splitext(path)[1]
    return suffix.lower() in (IMAGE_EXTENSIONS if extensions is None else extensions)


def _inside(real: str, root_real: str) -> bool:
    return os.path.commonpath([real, root_real]) == root_real


def _list_dir(
    directory: Path, root_real: str, visited: set[str], listing: FolderListing
) -> tuple[list[Path], list[str]]:
    """(sub-directories, file paths) of ``directory``, sorted, after ignore and symlink rules.
    Files stay strings (the listing's type): one Path per file cost a re-run's scan 0.05 s."""
    dirs: list[Path] = []
    files: list[str] = []
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    prefix = "" if str(directory) == "." else str(directory)  # as Path(directory) / name spells it
    for entry in entries:
        path = os.path.join(prefix, entry.name)
        if is_ignored_name(entry.name):
            listing.ignored.append(path)
            continue
        if entry.is_symlink():
            real = os.path.realpath(path)
            if not _inside(real, root_real):
                listing.outside_root.append(path)
                continue
            if os.path.isdir(real):
                if real in visited:  # a loop, or a second name for a folder already listed
                    continue
                visited.add(real)
                dirs.append(Path(path))
            else:
                files.append(path)  # includes broken links: decoding reports "file not found"
        elif entry.is_dir(follow_symlinks=False):
            visited.add(os.path.realpath(path))
            dirs.append(Path(path))
        elif entry.is_file(follow_symlinks=False):
            files.append(path)
        else:  # FIFO, socket, device: reading could block; never data
            listing.non_image.append(path)
    return dirs, files


def _walk_files(
    directory: Path,
    root_real: str,
    visited: set[str],
    listing: FolderListing,
    extensions: frozenset[str] | None = None,
) -> Iterable[str]:
    dirs, files = _list_dir(directory, root_real, visited, listing)
    for f in files:
        if _is_image_name(f, extensions):
            yield f
        else:
            listing.non_image.append(f)
    for d in dirs:
        yield from _walk_files(d, root_real, visited, listing, extensions)


# ----------------------------------------------------------------------------- scanning


#: Mean file size (bytes) below which the scan runs in one thread: the work per small file is Python
#: (Pillow's header parsing, the record), so two threads contend for the GIL. Measured on 2 cores
#: (AMD EPYC): 5,000 MNIST PNGs of ~0.3 KB scan in 0.54 s with one thread, 0.99 s with two; 64-px
#: PNGs of ~10 KB take the same either way; 500x380 JPEGs of ~76 KB 0.36 s with one, 0.25 s with two
#: (Pillow releases the GIL while decoding).
THREADED_SCAN_BYTES = 16_384


def scan_dataset(
    source: str | os.PathLike[str] | FolderListing | Sequence[DataItem | tuple],
    *,
    root: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    workers: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ScanReport:
    """Decode every file of a dataset (read-only) and report what is usable.

    ``source``: a folder root (see :func:`items_from_folder`), a :class:`FolderListing`, or a
    sequence of ``(path, label, split)`` items (CSV/COCO sources). With items, ``root`` (if given)
    is the folder paths must stay inside (symlinks resolving outside it are skipped) and
    ``class_names`` the declared classes (so that a class without images is reported as empty).
    ``workers``: decoding threads (1 = in the calling thread).
    """
    start = time.perf_counter()
    if isinstance(source, FolderListing):
        listing = source
    elif isinstance(source, (str, os.PathLike)):
        listing = items_from_folder(source)
    else:
        listing = _listing_from_items(source, root, class_names)
    if class_names is not None:
        listing.class_names = list(class_names)

    root_str = listing.root or None
    cache_file = _cache_file(cache_dir, root_str)
    policy = {
        "max_pixels": max_pixels,
        "pillow": PIL.__version__,
        "formats": list(ALLOWED_FORMATS),
        "version": _CACHE_VERSION,
    }
    cached = _read_cache(cache_file, policy)

    stats: list[tuple[int, int] | None] = []
    for item in listing.items:
        try:
            st = os.stat(item.path)
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)

    reused: list[FileRecord | None] = []
    for item, st in zip(listing.items, stats, strict=True):
        hit = cached.get(os.path.abspath(item.path))
        if st is not None and hit is not None and (hit["size"], hit["mtime_ns"]) == tuple(st):
            # from_dict and the item's path, label and split in one construction (half the time
            # of from_dict then dataclasses.replace: 0.05 s on 5,000 files). The path as listed
            # now: the cached one is as the first scan was given it ("photos/a/1.png" from the
            # folder that run started in), which names no file from another working folder.
            reused.append(
                FileRecord.from_dict(
                    hit["record"], path=item.path, label=item.label, split=item.split
                )
            )
        else:
            reused.append(None)

    def work(i: int) -> FileRecord:
        item = listing.items[i]
        return reused[i] or _scan_file(item, _rel(item.path, root_str), max_pixels)

    # Only cache misses go to the threads: a task per file cost ~0.07 ms even for a hit (0.35 s of a re-run's
    # 1 s set-up on 5,000 PNGs, profiled).
    misses = [i for i, rec in enumerate(reused) if rec is None]
    records: list[FileRecord] = list(reused)  # type: ignore[arg-type]  # misses filled in below
    miss_bytes = [stats[i][0] for i in misses if stats[i] is not None]
    if miss_bytes and sum(miss_bytes) / len(miss_bytes) < THREADED_SCAN_BYTES:
        workers = 1  # small files: Python-bound, threads only fight over the GIL (see the constant)
    if workers <= 1 or len(misses) < 2:
        for i in misses:
            records[i] = work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, rec in zip(misses, pool.map(work, misses), strict=True):
                records[i] = rec
    hits = sum(r is not None for r in reused)
    fingerprint = _fingerprint(records, stats)
    # Rewrite the cache only when it would change: every file a hit and no stale entries.
    if cache_file is not None and not (hits == len(listing.items) == len(cached)):
        _write_cache(cache_file, policy, fingerprint, listing.items, stats, records)

    return ScanReport(
        root=root_str,
        fingerprint=fingerprint,
        class_names=list(listing.class_names),
        split_classes=dict(listing.split_classes),
        records=records,
        ignored=sorted(listing.ignored),
        non_image=sorted(listing.non_image),
        outside_root=sorted(listing.outside_root),
        unplaced=sorted(listing.unplaced),
        max_pixels=max_pixels,
        min_side=min_side,
        cache_hits=hits,
        elapsed_s=time.perf_counter() - start,
    )


def _listing_from_items(
    items: Sequence[DataItem | tuple], root: str | os.PathLike[str] | None,
    class_names: Sequence[str] | None,
) -> FolderListing:  # fmt: skip
    listing = FolderListing(str(root) if root is not None else "", [], [], {})
    root_real = os.path.realpath(root) if root is not None else None
    splits: dict[str, set[str]] = defaultdict(set)
    for raw in items:
        item = DataItem(*raw)
        item = DataItem(os.fspath(item.path), item.label, item.split)
        if root_real is not None and not _inside(os.path.realpath(item.path), root_real):
            listing.outside_root.append(item.path)
            continue
        listing.items.append(item)
        if item.label is not None:
            splits[item.split or ""].add(str(item.label))
    labels = set().union(*splits.values()) if splits else set()
    listing.class_names = list(class_names) if class_names is not None else sorted(labels)
    listing.split_classes = {s: sorted(c) for s, c in sorted(splits.items())}
    return listing


def _rel(path: str, root: str | None) -> str:
    return os.path.relpath(path, root) if root else path


def _scan_file(item: DataItem, rel: str, max_pixels: int) -> FileRecord:
    base = {"path": item.path, "rel": rel, "label": item.label, "split": item.split}
    try:
        data = read_image_bytes(item.path)
        decoded = decode_image(data, item.path, max_pixels=max_pixels)
    except DataError as e:
        cause = e.__cause__
        # Pillow's "cannot identify image file <BytesIO at 0x...>" adds nothing but an address.
        useful = cause is not None and not isinstance(cause, UnidentifiedImageError)
        detail = str(cause) if useful else ""
        return FileRecord(**base, ok=False, reason=e.reason, detail=detail)
    info = decoded.info
    decoded.image.close()
    return FileRecord(
        **base,
        ok=True,
        format=info.format,
        mode=info.mode,
        width=info.width,
        height=info.height,
        n_frames=info.n_frames,
        sha256=info.sha256,
        file_bytes=info.file_bytes,
        notes=info.notes,
    )


def _fingerprint(records: list[FileRecord], stats: list[tuple[int, int] | None]) -> str:
    """sha256 over sorted '(relative path, size, mtime_ns)' lines of every scanned file."""
    lines = sorted(
        f"{r.rel}\0{st[0] if st else -1}\0{st[1] if st else -1}\n"
        for r, st in zip(records, stats, strict=True)
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------- JSON cache


def _cache_file(cache_dir: str | os.PathLike[str] | None, root: str | None) -> Path | None:
    if cache_dir is None:
        return None
    cache = Path(cache_dir)
    if root is not None and _inside(os.path.realpath(cache), os.path.realpath(root)):
        raise ConfigError(
            f"cache_dir {cache} is inside the dataset root {root}; the scan never writes into a "
            "dataset -- choose a folder outside it"
        )
    key = hashlib.sha256(os.path.realpath(root or "<items>").encode()).hexdigest()[:16]
    return cache / f"scan-{key}.json"


def _read_cache(cache_file: Path | None, policy: dict) -> dict[str, dict]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        doc = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # unreadable or half-written: just rescan
        log.warning("ignoring unreadable scan cache %s: %s", cache_file, e)
        return {}
    if not isinstance(doc, dict) or doc.get("policy") != policy:
        return {}
    files = doc.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(
    cache_file: Path, policy: dict, fingerprint: str, items: list[DataItem],
    stats: list[tuple[int, int] | None], records: list[FileRecord],
) -> None:  # fmt: skip
    files = {
        os.path.abspath(item.path): {"size": st[0], "mtime_ns": st[1], "record": rec.to_dict()}
        for item, st, rec in zip(items, stats, records, strict=True)
        if st is not None and rec.reason not in ("file not found",)
    }
    doc = {"policy": policy, "fingerprint": fingerprint, "files": files}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                # dumps, not dump: json.dump streams through the pure-Python encoder (0.4 s for
                # 5,000 records, profiled); dumps runs the C encoder on the whole document
                f.write(json.dumps(doc))
            os.replace(tmp, cache_file)  # atomic: a reader sees the old or the new cache
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:  # the cache is an optimisation; a read-only cache dir must not fail
        log.warning("could not write scan cache %s: %s", cache_file, e)


# ----------------------------------------------------------------------------- the report


@dataclass
class ScanReport:
    """Everything the pre-flight scan found. Derived views are properties; see :meth:`check`."""

    root: str | None
    fingerprint: str
    class_names: list[str]
    split_classes: dict[str, list[str]]  # "" = no split layout
    records: list[FileRecord]
    ignored: list[str] = field(default_factory=list)
    non_image: list[str] = field(default_factory=list)
    outside_root: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    cache_hits: int = 0
    elapsed_s: float = 0.0
    item: str = "image"  # what the files are, in messages: "image", or "video" (cnnlab.video)

    # -- items ---------------------------------------------------------------------------------
    @property
    def usable_items(self) -> list[DataItem]:
        return [DataItem(r.path, r.label, r.split) for r in self.records if r.ok]

    @property
    def bad_items(self) -> list[tuple[str, str]]:
        """(path, reason) of every image file that cannot be used."""
        return [(r.path, r.reason) for r in self.records if not r.ok]

    @property
    def bad_fraction(self) -> float:
        """bad / (usable + bad) over image files; 0.0 when there are none."""
        return sum(not r.ok for r in self.records) / len(self.records) if self.records else 0.0

    @property
    def bad_by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for r in self.records:
            if not r.ok:
                out[r.reason].append(r.path)
        return dict(sorted(out.items()))

    @property
    def non_image_by_extension(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for p in self.non_image:
            out[Path(p).suffix.lower() or "(no extension)"].append(p)
        return dict(sorted(out.items()))

    # -- classes -------------------------------------------------------------------------------
    @property
    def splits(self) -> list[str]:
        return sorted(s for s in self.split_classes if s)

    @property
    def class_counts(self) -> dict[str, dict[str, int]]:
        """{split ("" = none): {class: number of usable images}} over ``class_names``."""
        counts: dict[str, Counter] = defaultdict(Counter)
        for r in self.records:
            if r.ok and r.label is not None:
                counts[r.split or ""][r.label] += 1
        groups = list(self.split_classes) or sorted(counts) or [""]
        return {g: {c: counts[g].get(c, 0) for c in self.class_names} for g in groups}

    @property
    def empty_classes(self) -> list[tuple[str, str]]:
        """(split, class) pairs with no usable image (split "" = no split layout)."""
        has_labels = any(r.label is not None for r in self.records) or bool(self.split_classes)
        if not has_labels:
            return []
        # A class that another split has but this one lacks altogether (no folder, no row) is
        # a class mismatch (class_set_mismatch), not an empty class: "add images to val/birds or
        # remove its folder" named a folder that was never there.
        anywhere = {c for present in self.split_classes.values() for c in present}
        return [
            (s, c)
            for s, cc in self.class_counts.items()
            for c, n in cc.items()
            if n == 0 and (c in self.split_classes.get(s, ()) or c not in anywhere)
        ]

    @property
    def imbalance_ratio(self) -> dict[str, float]:
        """{split: largest / smallest class count} (inf when a class is empty)."""
        out = {}
        for s, cc in self.class_counts.items():
            if cc:
                lo, hi = min(cc.values()), max(cc.values())
                out[s] = float("inf") if lo == 0 else hi / lo
        return out

    @property
    def class_set_mismatch(self) -> dict[str, dict[str, list[str]]]:
        """{split: {"missing": [...], "extra": [...]}} against the training split's classes
        (:attr:`mismatch_reference`), so that `val/birds` beside `train/bird` reads "val: missing
        bird, extra birds"; against the union of all splits, every split was "missing" the other
        spelling and nothing was ever "extra". Without a train split: the declared
        ``class_names`` (with a folder layout, the union)."""
        several = len(self.split_classes) > 1
        reference = set(
            self.split_classes["train"] if self.mismatch_reference == "train" else self.class_names
        )
        out = {}
        for s, present in self.split_classes.items():
            # With one group a declared class without images is an *empty* class, not a mismatch.
            missing = sorted(reference - set(present)) if several else []
            extra = sorted(set(present) - reference)
            if missing or extra:
                out[s] = {"missing": missing, "extra": extra}
        return out

    @property
    def mismatch_reference(self) -> str:
        """What :attr:`class_set_mismatch` compares each split with: "train" or "the classes"."""
        several = len(self.split_classes) > 1
        return "train" if several and "train" in self.split_classes else "the classes"

    # -- content -------------------------------------------------------------------------------
    @property
    def duplicates(self) -> list[list[str]]:
        """Groups (>= 2 paths) of usable files with identical bytes (sha256)."""
        groups: dict[str, list[FileRecord]] = defaultdict(list)
        for r in self.records:
            if r.ok:
                groups[r.sha256].append(r)
        return [sorted(r.path for r in g) for g in groups.values() if len(g) > 1]

    def _duplicate_records(self) -> list[list[FileRecord]]:
        groups: dict[str, list[FileRecord]] = defaultdict(list)
        for r in self.records:
            if r.ok:
                groups[r.sha256].append(r)
        return [g for g in groups.values() if len(g) > 1]

    @property
    def leakage(self) -> list[list[str]]:
        """Duplicate groups that span two or more splits (e.g. the same image in train and val)."""
        return [
            sorted(r.path for r in g)
            for g in self._duplicate_records()
            if len({r.split for r in g}) > 1
        ]

    @property
    def conflicting_labels(self) -> list[list[str]]:
        """Duplicate groups whose copies carry different labels."""
        return [
            sorted(r.path for r in g)
            for g in self._duplicate_records()
            if len({r.label for r in g}) > 1
        ]

    @property
    def tiny(self) -> list[str]:
        return [r.path for r in self.records if r.ok and min(r.width, r.height) < self.min_side]

    @property
    def animated(self) -> list[str]:
        return [r.path for r in self.records if r.ok and r.n_frames > 1]

    @property
    def extension_mismatch(self) -> list[str]:
        return [r.path for r in self.records if any(n.startswith("extension ") for n in r.notes)]

    @property
    def format_counts(self) -> dict[str, int]:
        return dict(Counter(r.format for r in self.records if r.ok).most_common())

    @property
    def mode_counts(self) -> dict[str, int]:
        """Pixel modes as stored in the files (before normalisation)."""
        return dict(Counter(r.mode for r in self.records if r.ok).most_common())

    @property
    def size_stats(self) -> dict[str, dict[str, float]]:
        """min / median / max of width and height (pixels, after EXIF orientation)."""
        ok = [r for r in self.records if r.ok]
        if not ok:
            return {}
        out = {}
        for key in ("width", "height"):
            vals = [getattr(r, key) for r in ok]
            out[key] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
        return out

    # -- verdict -------------------------------------------------------------------------------
    def check(
        self,
        strict: bool = False,
        max_bad_fraction: float = 0.1,
        allow_empty_classes: bool = False,
        pixel_hint: str = "",
        log_warnings: bool = True,
        imbalance: bool = True,
    ) -> list[str]:
        """Raise DataError listing every failure, or return the warnings (also logged, unless
        ``log_warnings`` is False: a caller that prints them itself, as `cnnlab data check`
        does). ``imbalance=False``: no class-imbalance warning, for a caller that judges it
        itself (training knows whether a remedy is chosen and says it only when none is;
        loading data to evaluate it calls for no training remedy).

        FAIL: no usable image; bad fraction > ``max_bad_fraction``; an empty class (unless
        ``allow_empty_classes``); splits with different classes. ``strict`` also fails on any bad,
        non-image, outside-root or unplaced file, leakage between splits and conflicting labels.
        ``pixel_hint``: said when files exceed the pixel limit, by a caller whose command has the
        option to raise it (this module does not know which command runs it).
        """
        failures: list[str] = []
        warns: list[str] = []
        bad = self.bad_items
        n_images = len(self.records)
        over = any(why.startswith("exceeds max pixels") for _, why in bad)
        too_big = f"; {pixel_hint}" if over and pixel_hint else ""
        item = self.item  # "image" or "video"
        if not self.usable_items:
            failures.append(f"no usable {item}s ({n_images} {item} files, {len(bad)} bad)")
        failure, warning = bad_fraction_verdict(bad, n_images, strict, max_bad_fraction, item)
        if failure:
            failures.append(failure + too_big)
        elif warning:
            warns.append(warning + too_big)
        empty = [f"{s}/{c}" if s else c for s, c in self.empty_classes]
        if empty and not allow_empty_classes:
            keep = (  # only `cnnlab data check` has the option (images)
                " (`cnnlab data check SRC --allow-empty-classes` keeps them in the report)"
                if item == "image"
                else ""
            )
            failures.append(
                f"empty classes (no usable {item}s): {', '.join(empty)}; add {item}s to them "
                f"or remove their folders{keep}"
            )
        elif empty:
            warns.append(f"empty classes kept: {', '.join(empty)}")
        for s, diff in self.class_set_mismatch.items():
            # a folder spelt differently: "; 'birds' (did you mean: bird?)"
            near = {c: close_matches(c, diff["missing"]) for c in diff["extra"]}
            hints = "".join(f"; {c!r}{hint}" for c, hint in near.items() if hint)
            failures.append(
                f"split {s or '(all)'} has different classes: missing {diff['missing']}, "
                f"extra {diff['extra']} (compared with {self.mismatch_reference}){hints}; give "
                "every split the same class folders"
            )
        skipped = [
            (f"non-{item} files skipped", self.non_image),
            ("symlinks pointing outside the dataset root skipped", self.outside_root),
            (f"{item} files not inside a class folder skipped", self.unplaced),
        ]
        for what, paths in skipped:
            if paths:
                (failures if strict else warns).append(f"{len(paths)} {what}: {_first(paths)}")
        for what, groups in (
            ("identical files in more than one split (leakage)", self.leakage),
            ("identical files with different labels", self.conflicting_labels),
        ):
            if groups:
                text = f"{len(groups)} groups of {what}: {_first(' = '.join(g) for g in groups)}"
                (failures if strict else warns).append(text)
        for s, ratio in self.imbalance_ratio.items() if imbalance else ():
            if IMBALANCE_WARN_RATIO < ratio < float("inf"):
                warns.append(
                    f"class imbalance {ratio:.1f}:1 in {s or 'the dataset'}; "
                    + IMBALANCE_HINT  # docs/imbalance.md
                )
        if self.tiny:
            warns.append(f"{len(self.tiny)} images smaller than {self.min_side} px (kept)")
        if failures:
            where = self.root or "<dataset items>"
            raise DataError(where, "data check failed: " + "; ".join(failures))
        for w in warns if log_warnings else ():
            log.warning("%s: %s", self.root or "<dataset items>", w)
        return warns

    # -- output --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Machine-readable report: summary, every skipped/bad/noted path, every record."""
        inf_safe = {s: (None if r == float("inf") else r) for s, r in self.imbalance_ratio.items()}
        return {
            "root": self.root,
            "fingerprint": self.fingerprint,
            "params": {"max_pixels": self.max_pixels, "min_side": self.min_side},
            "counts": {
                "image_files": len(self.records),
                "usable": len(self.usable_items),
                "bad": len(self.bad_items),
                "ignored": len(self.ignored),
                "non_image": len(self.non_image),
                "outside_root": len(self.outside_root),
                "unplaced": len(self.unplaced),
                "cache_hits": self.cache_hits,
            },
            "bad_fraction": self.bad_fraction,
            "class_names": self.class_names,
            "class_counts": self.class_counts,
            "imbalance_ratio": inf_safe,
            "empty_classes": [list(t) for t in self.empty_classes],
            "class_set_mismatch": self.class_set_mismatch,
            "bad_by_reason": self.bad_by_reason,
            "ignored": self.ignored,
            "non_image_by_extension": self.non_image_by_extension,
            "outside_root": self.outside_root,
            "unplaced": self.unplaced,
            "duplicates": self.duplicates,
            "leakage": self.leakage,
            "conflicting_labels": self.conflicting_labels,
            "tiny": self.tiny,
            "animated": self.animated,
            "extension_mismatch": self.extension_mismatch,
            "format_counts": self.format_counts,
            "mode_counts": self.mode_counts,
            "size_stats": self.size_stats,
            "elapsed_s": round(self.elapsed_s, 3),
            "files": [r.to_dict() for r in self.records],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON; with ``indent``, the summary is indented and each file record is one
        compact line (json's C encoder only runs without indent: 5x faster on 5,000 records)."""
        d = self.to_dict()
        if indent is None:
            return json.dumps(d, ensure_ascii=False)
        files = d.pop("files")
        head = json.dumps(d, indent=indent, ensure_ascii=False)  # ends with "\n}"
        pad = " " * indent
        # one encoder for every record: json.dumps with an option makes a new one per call
        encode = json.JSONEncoder(ensure_ascii=False).encode
        rows = ",\n".join(pad * 2 + encode(r) for r in files)
        return f'{head[:-2]},\n{pad}"files": [\n{rows}\n{pad}]\n}}'

    def summary_table(self):  # -> rich.table.Table (rich imported lazily: CLI-only dependency)
        """A two-column rich Table for humans (the CLI prints it)."""
        from rich.table import Table

        t = Table(title=f"data check: {self.root or 'dataset items'}", show_lines=False)
        t.add_column("check", style="bold")
        t.add_column("result")
        n = len(self.records)
        t.add_row("image files", f"{n} ({len(self.usable_items)} usable)")
        bad = self.bad_by_reason
        t.add_row(
            "bad (skipped)",
            f"{len(self.bad_items)} ({self.bad_fraction:.1%})"
            + "".join(f"\n  {why}: {len(ps)}" for why, ps in bad.items()),
        )
        t.add_row("ignored hidden/system", str(len(self.ignored)))
        t.add_row(
            "non-image (skipped)",
            ", ".join(f"{ext} {len(ps)}" for ext, ps in self.non_image_by_extension.items()) or "0",
        )
        t.add_row("symlinks outside root", str(len(self.outside_root)))
        if self.unplaced:
            t.add_row("not in a class folder", str(len(self.unplaced)))
        for s, cc in self.class_counts.items():
            label = f"classes ({s})" if s else "classes"
            ratio = self.imbalance_ratio.get(s)
            ratio_txt = "" if ratio is None else f"  [imbalance {ratio:.1f}:1]"
            t.add_row(label, ", ".join(f"{c} {k}" for c, k in cc.items()) + ratio_txt)
        if self.empty_classes:
            empty = ", ".join(f"{s}/{c}" if s else c for s, c in self.empty_classes)
            t.add_row("empty classes", empty)
        for s, diff in self.class_set_mismatch.items():
            t.add_row(f"class mismatch ({s})", f"missing {diff['missing']} extra {diff['extra']}")
        t.add_row("exact duplicates", f"{len(self.duplicates)} groups")
        t.add_row("leakage across splits", f"{len(self.leakage)} groups")
        if self.conflicting_labels:
            t.add_row("same image, different labels", f"{len(self.conflicting_labels)} groups")
        t.add_row(f"tiny (< {self.min_side} px)", str(len(self.tiny)))
        t.add_row("animated / multi-page", str(len(self.animated)))
        t.add_row("extension ≠ content", str(len(self.extension_mismatch)))
        t.add_row("formats", ", ".join(f"{k} {v}" for k, v in self.format_counts.items()))
        t.add_row("modes (stored)", ", ".join(f"{k} {v}" for k, v in self.mode_counts.items()))
        sz = self.size_stats
        if sz:
            t.add_row(
                "size W×H (min/median/max)",
                " / ".join(
                    f"{sz['width'][k]:g}×{sz['height'][k]:g}" for k in ("min", "median", "max")
                ),
            )
        return t


def bad_fraction_verdict(
    bad: Sequence[tuple[str, str]], total: int, strict: bool, max_bad_fraction: float, item: str
) -> tuple[str | None, str | None]:
    """(failure, warning) for ``bad`` (path, reason) files skipped out of ``total``: the one
    SKIP+REPORT rule of every task (bad-inputs.md) -- a failure above ``max_bad_fraction`` or
    with ``strict`` at the first, else a warning naming the first files; (None, None) if none."""
    if not bad:
        return None, None
    fraction = len(bad) / max(total, 1)
    first = _first(f"{p} ({why})" for p, why in bad)
    if strict or fraction > max_bad_fraction:
        limit = "strict mode" if strict else f"limit {max_bad_fraction:.0%}: --max-bad-fraction"
        return (
            f"{len(bad)} of {total} {item} files unusable ({fraction:.1%}, {limit}): {first}",
            None,
        )
    return None, f"{len(bad)} bad {item} files skipped: {first}"


def check_skipped(
    where: str | Path,
    bad: Sequence[tuple[str, str]],
    total: int,
    *,
    strict: bool,
    max_bad_fraction: float,
    fix: str,
    item: str = "image",
) -> str | None:
    """Refuse (DataError naming the count, fraction, first files and ``fix``) the ``bad`` (path,
    reason) files a task skipped out of ``total``, as :meth:`ScanReport.check` does for
    classification; else the warning for the caller to say once, None when nothing was skipped.
    The caller lists the files in the run's data_report.json."""
    failure, warning = bad_fraction_verdict(bad, total, strict, max_bad_fraction, item)
    if failure:
        raise DataError(where, f"data check failed: {failure}; {fix}")
    return warning


def given_policy(max_bad_fraction: float | None, strict: bool | None) -> dict[str, Any]:
    """The options of the skip policy an evaluate was given, as config overrides: the others stay
    the run's (on its own split) or the config's defaults (on another dataset), so a run trained
    with a raised limit is read back under it unless told otherwise."""
    given = {"max_bad_fraction": max_bad_fraction, "strict": strict}
    return {k: v for k, v in given.items() if v is not None}


def _first(things: Iterable[str], n: int = 5) -> str:
    items = list(things)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
