"""Read-only pre-flight scan (cnnlab.data.scan) against bad-inputs.md section A (and B/C as seen
by a whole-dataset scan). Every dataset is generated in tmp_path."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from torchvision.datasets.folder import find_classes

from cnnlab.data.scan import DataItem, ScanReport, items_from_folder, scan_dataset
from cnnlab.errors import ConfigError, DataError


def png(
    path: Path, value: int = 0, size: tuple[int, int] = (12, 10), seed: int | None = None
) -> Path:
    """Write a small RGB PNG; ``seed`` gives random (unique) content, else a flat ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        arr = np.full((size[1], size[0], 3), value, np.uint8)
    else:
        arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "PNG")
    return path


def jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def make_classes(root: Path, counts: dict[str, int], start_seed: int = 0) -> None:
    seed = start_seed
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            png(root / cls / f"{i}.png", seed=seed)
            seed += 1


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file below root (links not followed) -> (sha256 of bytes, mtime_ns)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            data = b"" if os.path.islink(p) else Path(p).read_bytes()
            out[p] = (hashlib.sha256(data).hexdigest(), st.st_mtime_ns)
    return out


# ----------------------------------------------------------------------------- A. structure


def test_case_01_root_missing_or_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset root not found") as info:
        scan_dataset(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        scan_dataset(f)


def test_case_02_images_but_no_class_folders(tmp_path: Path) -> None:
    for i in range(3):
        png(tmp_path / f"{i}.png", seed=i)
    with pytest.raises(DataError) as info:
        items_from_folder(tmp_path)
    msg = str(info.value)
    assert "no class folders" in msg and "root/<class>/<image>" in msg and "found 3 image" in msg


def test_case_03_empty_class_fails_unless_allowed(tmp_path: Path) -> None:
    make_classes(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "emu").mkdir()
    (tmp_path / "owl").mkdir()
    (tmp_path / "owl" / "broken.jpg").write_bytes(b"")  # all of its files are bad
    report = scan_dataset(tmp_path, workers=1)
    assert report.class_names == ["cat", "dog", "emu", "owl"]
    assert sorted(c for _, c in report.empty_classes) == ["emu", "owl"]
    with pytest.raises(DataError, match="empty classes.*emu, owl.*--allow-empty-classes"):
        report.check(max_bad_fraction=0.5)
    warns = report.check(max_bad_fraction=0.5, allow_empty_classes=True)
    assert any("emu" in w for w in warns)


def test_case_04_hidden_and_system_entries_ignored(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 2, "b": 2})
    png(tmp_path / ".ipynb_checkpoints" / "0-checkpoint.png", seed=50)
    png(tmp_path / "a" / ".ipynb_checkpoints" / "x.png", seed=51)
    png(tmp_path / "__MACOSX" / "a" / "._0.png", seed=52)
    png(tmp_path / "@eaDir" / "thumb.png", seed=53)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "b" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "b" / "._1.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble fork
    report = scan_dataset(tmp_path)
    assert report.class_names == ["a", "b"]
    assert len(report.records) == 4 and not report.bad_items and not report.non_image
    ignored = {Path(p).relative_to(tmp_path).as_posix() for p in report.ignored}
    assert ignored == {
        ".ipynb_checkpoints", "a/.ipynb_checkpoints", "__MACOSX", "@eaDir", ".DS_Store",
        "b/Thumbs.db", "b/._1.png",
    }  # fmt: skip
    report.check(strict=True)  # ignoring is not skipping: strict passes


def test_case_05_non_image_files_skipped_by_extension(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "a" / "labels.csv").write_text("x,y")
    (tmp_path / "b" / "meta.json").write_text("{}")
    (tmp_path / "b" / "more.txt").write_text("hi")
    (tmp_path / "README").write_text("top-level file without extension")
    report = scan_dataset(tmp_path)
    by_ext = {k: len(v) for k, v in report.non_image_by_extension.items()}
    assert by_ext == {".txt": 2, ".csv": 1, ".json": 1, "(no extension)": 1}
    assert report.bad_fraction == 0.0 and len(report.usable_items) == 6
    assert any("5 non-image files" in w for w in report.check())
    with pytest.raises(DataError, match="5 non-image files skipped"):
        report.check(strict=True)


def test_case_06_extensions_and_content_mismatch(tmp_path: Path) -> None:
    for i, name in enumerate(["a.JPG", "b.jpeg", "c.jfif", "d.JPEG"]):
        (tmp_path / "x" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "x" / name).write_bytes(jpeg_bytes(i))
    png(tmp_path / "x" / "e.jpg", seed=9)  # PNG content with a .jpg name
    report = scan_dataset(tmp_path)
    assert len(report.usable_items) == 5 and not report.bad_items
    assert report.extension_mismatch == [str(tmp_path / "x" / "e.jpg")]
    assert report.format_counts == {"JPEG": 4, "PNG": 1}


def test_case_07_class_order_is_plain_sorted_like_torchvision(tmp_path: Path) -> None:
    names = ["10", "2", "B", "a", "é", "Zebra"]
    make_classes(tmp_path, dict.fromkeys(names, 1))
    listing = items_from_folder(tmp_path)
    reference, _ = find_classes(str(tmp_path))  # torchvision ImageFolder's order
    assert listing.class_names == reference == sorted(names)
    assert listing.class_names.index("10") < listing.class_names.index("2")


def test_case_08_train_and_val_class_sets_differ(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"cat": 2, "dog": 2, "emu": 2})
    make_classes(tmp_path / "val", {"cat": 1, "dog": 1}, start_seed=100)
    report = scan_dataset(tmp_path)
    assert report.splits == ["train", "val"]
    assert report.class_set_mismatch == {"val": {"missing": ["emu"], "extra": []}}
    with pytest.raises(DataError, match=r"split val has different classes: missing \['emu'\]"):
        report.check(allow_empty_classes=True)


def test_case_08_a_class_absent_from_one_split_is_a_mismatch_not_an_empty_folder(
    tmp_path: Path,
) -> None:
    """val/emu exists, train/emu does not: one failure, the mismatch with its fix; not also
    "empty classes: train/emu ... remove their folders" (there is no such folder)."""
    make_classes(tmp_path / "train", {"cat": 2, "dog": 2})
    make_classes(tmp_path / "val", {"cat": 1, "dog": 1, "emu": 1}, start_seed=100)
    (tmp_path / "test" / "cat").mkdir(parents=True)  # a real empty folder is still said
    make_classes(tmp_path / "test", {"dog": 1, "emu": 1}, start_seed=200)
    report = scan_dataset(tmp_path)
    assert report.empty_classes == [("test", "cat")]
    with pytest.raises(DataError) as err:
        report.check()
    reason = err.value.reason
    assert "empty classes (no usable images): test/cat;" in reason
    assert "train/emu" not in reason
    assert (
        "split val has different classes: missing [], extra ['emu'] (compared with train)" in reason
    )
    assert "give every split the same class folders" in reason


def test_check_words_its_messages_for_videos(tmp_path: Path) -> None:
    """cnnlab.video lists videos through the same scan: its messages say videos, name the option
    that decides (--max-bad-fraction) and offer no `cnnlab data check` option (images only)."""
    import dataclasses

    make_classes(tmp_path, {"left": 2, "right": 2})
    (tmp_path / "up").mkdir()
    (tmp_path / "left" / "cut.png").write_bytes(b"")
    report = dataclasses.replace(scan_dataset(tmp_path, workers=1), item="video")
    with pytest.raises(DataError) as err:
        report.check()
    reason = err.value.reason
    assert "1 of 5 video files unusable (20.0%, limit 10%: --max-bad-fraction)" in reason
    assert "empty classes (no usable videos): up; add videos to them" in reason
    assert "image" not in reason and "cnnlab data check" not in reason


def test_case_08_a_class_folder_spelt_differently_in_val_is_a_mismatch_not_empty(tmp_path):
    """val/birds beside train/bird and test/bird: compared with the union, every split was
    'missing' the other spelling, nothing was 'extra', and test/birds, train/birds and val/bird
    were called empty classes whose folders should be filled or removed (none of them exists)."""
    make_classes(tmp_path / "train", {"bird": 2, "cat": 2})
    make_classes(tmp_path / "val", {"birds": 1, "cat": 1}, start_seed=100)
    make_classes(tmp_path / "test", {"bird": 1, "cat": 1}, start_seed=200)
    report = scan_dataset(tmp_path)
    assert report.empty_classes == []
    assert report.class_set_mismatch == {"val": {"missing": ["bird"], "extra": ["birds"]}}
    with pytest.raises(DataError) as info:
        report.check()
    assert str(info.value).endswith(
        "data check failed: split val has different classes: missing ['bird'], extra ['birds'] "
        "(compared with train); 'birds' (did you mean: bird?); give every split the same class "
        "folders"
    )
    (tmp_path / "val" / "dog").mkdir()  # a folder that is there and empty stays an empty class
    assert scan_dataset(tmp_path).empty_classes == [("val", "dog")]


def test_case_09_same_file_in_train_and_val_is_leakage(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"cat": 2, "dog": 2})
    make_classes(tmp_path / "val", {"cat": 1, "dog": 1}, start_seed=100)
    leaked = (tmp_path / "train" / "cat" / "0.png").read_bytes()
    (tmp_path / "val" / "cat" / "copy.png").write_bytes(leaked)
    report = scan_dataset(tmp_path)
    pair = [str(tmp_path / "train" / "cat" / "0.png"), str(tmp_path / "val" / "cat" / "copy.png")]
    assert report.leakage == [sorted(pair)]
    assert any("leakage" in w for w in report.check())
    with pytest.raises(DataError, match="leakage"):
        report.check(strict=True)


def test_case_10_symlink_outside_root_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_classes(root, {"a": 2, "b": 2})
    secret = png(tmp_path / "outside" / "secret.png", seed=77)
    os.symlink(secret, root / "a" / "link.png")
    os.symlink(tmp_path / "outside", root / "b" / "linkdir")
    os.symlink(root / "a" / "0.png", root / "b" / "inside.png")  # inside the root: followed
    os.symlink(root / "a", root / "a" / "loop")  # a loop must not hang the walk
    report = scan_dataset(root)
    assert sorted(report.outside_root) == [
        str(root / "a" / "link.png"),
        str(root / "b" / "linkdir"),
    ]
    usable = {Path(i.path).relative_to(root).as_posix() for i in report.usable_items}
    assert usable == {"a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/inside.png"}
    with pytest.raises(DataError, match="outside the dataset root"):
        report.check(strict=True)


# ----------------------------------------------------------------------------- B/C via the scan


def test_cases_11_12_13_16_bad_files_listed_with_reasons(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 6, "b": 6})
    (tmp_path / "a" / "zero.jpg").write_bytes(b"")
    (tmp_path / "a" / "page.jpg").write_text("<html>not found</html>")
    good = jpeg_bytes(5)
    (tmp_path / "b" / "cut.jpg").write_bytes(good[: len(good) // 2])
    report = scan_dataset(tmp_path, max_pixels=10 * 10 + 1)  # 12x10 PNGs are "too big"
    assert len(report.bad_items) == 15
    report = scan_dataset(tmp_path)
    assert report.bad_by_reason == {
        "empty file": [str(tmp_path / "a" / "zero.jpg")],
        "not an image (cannot identify format)": [str(tmp_path / "a" / "page.jpg")],
        "truncated or corrupt image data": [str(tmp_path / "b" / "cut.jpg")],
    }
    assert report.bad_fraction == pytest.approx(3 / 15)
    with pytest.raises(DataError, match=r"3 of 15 image files unusable \(20.0%"):
        report.check()  # 20% > default 10%
    assert report.check(max_bad_fraction=0.25)  # under the limit: warnings only
    assert {i.path for i in report.usable_items}.isdisjoint(p for p, _ in report.bad_items)


def test_case_18_images_over_the_pixel_limit_get_the_callers_hint(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 3, "b": 3})
    png(tmp_path / "a" / "big.png", size=(40, 40))
    report = scan_dataset(tmp_path, max_pixels=20 * 20, workers=1)
    assert [why for _, why in report.bad_items] == ["exceeds max pixels 40×40 > 400"]
    with pytest.raises(DataError, match=r"big.png \(exceeds max pixels 40×40 > 400\); raise X$"):
        report.check(pixel_hint="raise X")
    warns = report.check(max_bad_fraction=0.5, pixel_hint="raise X")  # skipped: path and reason
    assert any("big.png (exceeds max pixels 40×40 > 400); raise X" in w for w in warns), warns
    assert not any("raise" in w for w in report.check(max_bad_fraction=0.5))  # no hint given


def test_cases_29_30_animated_tiny_and_distributions(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 2, "b": 2})
    png(tmp_path / "a" / "dot.png", size=(1, 1), value=3)
    frames = [Image.new("RGB", (9, 9), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("L", (12, 10), 7).save(tmp_path / "b" / "grey.png")
    report = scan_dataset(tmp_path, min_side=4)
    assert report.tiny == [str(tmp_path / "a" / "dot.png")]
    assert report.animated == [str(tmp_path / "b" / "anim.gif")]
    assert report.mode_counts == {"RGB": 5, "P": 1, "L": 1}
    assert report.size_stats["width"] == {"min": 1, "median": 12, "max": 12}
    assert report.class_counts == {"": {"a": 3, "b": 4}}
    assert report.imbalance_ratio == {"": pytest.approx(4 / 3)}


# ----------------------------------------------------------------------------- scan behaviour


def test_scan_never_modifies_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_classes(root / "train", {"a": 3, "b": 3})
    make_classes(root / "val", {"a": 1, "b": 1}, start_seed=50)
    (root / "train" / "a" / "bad.jpg").write_bytes(b"garbage")
    (root / "train" / "a" / "notes.txt").write_text("x")
    (root / ".DS_Store").write_bytes(b"x")
    os.symlink(tmp_path, root / "train" / "b" / "up")
    before = snapshot(root)
    cache = tmp_path / "cache"
    scan_dataset(root, cache_dir=cache, workers=2)
    scan_dataset(root, cache_dir=cache, workers=1)
    assert snapshot(root) == before  # same files, same bytes, same mtimes, nothing new


def test_a_cached_scan_names_the_files_as_listed_now(tmp_path: Path, monkeypatch) -> None:
    """The cache is keyed by absolute path, so a scan given the root another way (relative from
    another folder, or absolute) reuses it; the files it returns are the paths listed now, not
    the spelling the first scan was given ("data/a/0.png" names nothing from elsewhere)."""
    root, cache = tmp_path / "work" / "data", tmp_path / "cache"
    make_classes(root, {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path / "work")
    scan_dataset("data", cache_dir=cache)
    monkeypatch.chdir(tmp_path)
    again = scan_dataset(str(root), cache_dir=cache)
    assert again.cache_hits == 4
    assert all(Path(it.path).is_file() for it in again.usable_items)
    assert sorted(r.rel for r in again.records) == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]


def test_cache_reused_and_invalidated(tmp_path: Path) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    make_classes(root, {"a": 3, "b": 3})
    first = scan_dataset(root, cache_dir=cache)
    assert first.cache_hits == 0
    (cache_file,) = cache.glob("scan-*.json")
    doc = json.loads(cache_file.read_text())  # plain JSON, not pickle
    assert doc["fingerprint"] == first.fingerprint and len(doc["files"]) == 6
    second = scan_dataset(root, cache_dir=cache)
    assert second.cache_hits == 6 and second.fingerprint == first.fingerprint
    assert [r.to_dict() for r in second.records] == [r.to_dict() for r in first.records]
    # nothing changed: the cache file is not rewritten (same inode, same bytes)
    ino = cache_file.stat().st_ino
    scan_dataset(root, cache_dir=cache)
    assert cache_file.stat().st_ino == ino
    removed = root / "a" / "0.png"
    kept = removed.read_bytes()
    removed.unlink()  # a stale entry: rewritten (atomic replace -> a new inode) without it
    assert scan_dataset(root, cache_dir=cache).cache_hits == 5
    assert cache_file.stat().st_ino != ino
    assert len(json.loads(cache_file.read_text())["files"]) == 5
    removed.write_bytes(kept)
    assert scan_dataset(root, cache_dir=cache).cache_hits == 5  # new mtime: rescanned
    target = root / "b" / "2.png"
    target.write_bytes(b"")  # changed size and mtime -> rescanned, now bad
    third = scan_dataset(root, cache_dir=cache)
    assert third.cache_hits == 5 and third.fingerprint != first.fingerprint
    assert third.bad_items == [(str(target), "empty file")]
    assert scan_dataset(root, cache_dir=cache, max_pixels=50).cache_hits == 0  # other policy
    with pytest.raises(ConfigError, match="inside the dataset root"):
        scan_dataset(root, cache_dir=root / ".cache")


def test_items_input_with_declared_classes_and_root(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    paths = [png(root / f"{i}.png", seed=i) for i in range(4)]
    outside = png(tmp_path / "elsewhere.png", seed=9)
    items = [
        (str(paths[0]), "cat", "train"),
        (str(paths[1]), "dog", "train"),
        (str(paths[2]), "cat", "val"),
        DataItem(str(paths[3]), "dog", "val"),
        (str(outside), "cat", "train"),
    ]
    report = scan_dataset(items, root=root, class_names=["cat", "dog", "emu"])
    assert report.outside_root == [str(outside)]
    assert len(report.usable_items) == 4
    assert report.usable_items[0] == (str(paths[0]), "cat", "train")
    assert report.empty_classes == [("train", "emu"), ("val", "emu")]
    assert report.class_counts == {
        "train": {"cat": 1, "dog": 1, "emu": 0},
        "val": {"cat": 1, "dog": 1, "emu": 0},
    }
    unlabelled = scan_dataset([(str(p), None, None) for p in paths])
    assert unlabelled.empty_classes == [] and unlabelled.check() == []


def test_duplicates_and_conflicting_labels(tmp_path: Path) -> None:
    make_classes(tmp_path, {"a": 2, "b": 2})
    data = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "dup.png").write_bytes(data)  # same class: duplicate only
    (tmp_path / "b" / "dup.png").write_bytes(data)  # other class: conflicting label
    report = scan_dataset(tmp_path)
    group = sorted(str(tmp_path / p) for p in ["a/0.png", "a/dup.png", "b/dup.png"])
    assert report.duplicates == [group] and report.conflicting_labels == [group]
    assert report.leakage == []  # one split only
    with pytest.raises(DataError, match="different labels"):
        report.check(strict=True)


def test_threads_match_serial_and_outputs_are_machine_and_human_readable(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"a": 5, "b": 3})
    make_classes(tmp_path / "val", {"a": 2, "b": 2}, start_seed=40)
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    serial = scan_dataset(tmp_path, workers=1)
    threaded = scan_dataset(tmp_path, workers=4)
    assert [r.to_dict() for r in serial.records] == [r.to_dict() for r in threaded.records]
    doc = json.loads(threaded.to_json())
    assert doc["counts"]["usable"] == 12 and doc["counts"]["bad"] == 1
    assert doc["class_counts"] == {"train": {"a": 5, "b": 3}, "val": {"a": 2, "b": 2}}
    assert doc["bad_by_reason"] == {"CRC error / corrupt PNG": [str(tmp_path / "train/a/bad.png")]}
    console = Console(record=True, width=120)
    console.print(threaded.summary_table())
    text = console.export_text()
    assert "13 (12 usable)" in text and "CRC error / corrupt PNG: 1" in text and "a 5, b 3" in text
    assert isinstance(threaded, ScanReport)


def test_mixed_split_and_class_folders_fail(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"a": 1})
    make_classes(tmp_path, {"stray": 1})
    with pytest.raises(DataError, match=r"split folders \(train\) and other folders \(stray\)"):
        items_from_folder(tmp_path)


# ----------------------------------------------------------------------------- CSV datasets


def _data_check(capsys, *args: str) -> tuple[int, str, str]:
    from cnnlab.cli import main

    code = main(["data", "check", *args, "--workers", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_data_check_reads_a_csv_as_training_does(tmp_path: Path, capsys) -> None:
    rows = ["path,label,split"]
    for i in range(6):  # 3 of each class; 4 train, 2 val
        label, split = "ab"[i % 2], "train" if i < 4 else "val"
        rows.append(f"img/{i}.png,{label},{split}")
        png(tmp_path / "img" / f"{i}.png", seed=i)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    before = snapshot(tmp_path)
    code, out, _ = _data_check(capsys, str(csv_file), "--json")
    report = json.loads(out)
    assert code == 0 and report["class_names"] == ["a", "b"]
    # counted from the rows written above
    assert report["class_counts"] == {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}
    assert report["counts"]["usable"] == 6 and snapshot(tmp_path) == before  # read-only

    # a class whose only files are missing is empty, as a class folder without images is
    lonely = tmp_path / "lonely.csv"
    lonely.write_text("path,label\nimg/0.png,a\nimg/1.png,b\ngone/x.png,c\n")
    code, out, err = _data_check(capsys, str(lonely), "--max-bad-fraction", "0.5", "--json")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert "empty classes (no usable images): c;" in errors[0], err
    gone = str(tmp_path / "gone" / "x.png")  # the report (printed first) says why
    assert json.loads(out)["bad_by_reason"] == {"file not found": [gone]}

    # a bad row is named by its number, as training names it
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimg/0.png,a\nimg/1.png,\n")
    code, _, err = _data_check(capsys, str(bad))
    assert code == 2 and f"{bad}, row 3: empty label for 'img/1.png'" in err, err


def test_data_check_reads_a_multilabel_csv(tmp_path: Path, capsys) -> None:
    rows = ["path,labels"] + [f"{i}.png,{'cat;dog' if i % 2 else 'cat'}" for i in range(4)]
    for i in range(4):
        png(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "tags.csv").write_text("\n".join([*rows, "5.png,dog"]) + "\n")  # 5.png: missing
    code, out, _ = _data_check(
        capsys, str(tmp_path / "tags.csv"), "--json", "--max-bad-fraction", "0.5"
    )
    report = json.loads(out)
    assert code == 0 and report["counts"]["image_files"] == 5 and report["counts"]["usable"] == 4
    assert report["bad_by_reason"] == {"file not found": [str(tmp_path / "5.png")]}


def test_data_check_names_what_it_takes(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("x")
    for source, expected in (
        (str(tmp_path / "notes.txt"), "is a file but not a .csv"),
        (str(tmp_path / "none.csv"), "dataset root not found"),
        ("builtin:digits", "nothing to check"),
    ):
        code, _, err = _data_check(capsys, source)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_data_check_says_each_warning_once(tmp_path: Path) -> None:
    """`cnnlab data check` printed every warning twice: once logged by ScanReport.check, once as
    its own `warning:` line. The command says them once, in its own lines (a subprocess: the log
    handler is the command line's)."""
    from cli_process import ok

    make_classes(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    proc = ok("data", "check", str(tmp_path), "--max-bad-fraction", "0.5", "--workers", "1")
    err = " ".join(proc.stderr.split())
    assert err.count("1 non-image files skipped") == 1, err
    assert err.count("1 bad image files skipped") == 1, err
    assert err.count("warning: ") == 2, err


def test_data_check_refuses_the_classes_training_refuses(tmp_path: Path, capsys) -> None:
    """`cnnlab data check` said 0 for class folders `Cat`/`cat` and `dog `/`dog` and for a CSV of
    one class, which `cnnlab train` refuses: the class checks ran only in training. The same
    check now runs after both scans: the same exit status and the same one-line message."""
    from cnnlab.config import TrainConfig, make_config
    from cnnlab.data.sources import load_source

    make_classes(tmp_path / "case", {"Cat": 2, "cat": 2, "dog ": 2, "dog": 2})
    make_classes(tmp_path / "one", {"cat": 4})
    (tmp_path / "one" / "labels.csv").write_text(
        "path,label\n" + "".join(f"cat/{i}.png,cat\n" for i in range(4))
    )
    for source, expected in (
        (tmp_path / "case", "class names that differ only in case/spaces: 'Cat' vs 'cat'; 'dog' "
         "vs 'dog '; make them identical"),
        (tmp_path / "one" / "labels.csv", "a classification dataset needs at least 2 classes, "
         "found 1: 'cat' (4 images)"),
    ):  # fmt: skip
        code, _, err = _data_check(capsys, str(source))
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(errors) == 1 and expected in errors[0], err
        with pytest.raises(DataError) as refused:
            load_source(make_config(TrainConfig, data=str(source)))
        assert errors[0] == f"error: {refused.value}", (errors[0], str(refused.value))


def test_data_check_names_the_row_of_a_nul_byte_or_an_unquoted_comma(tmp_path: Path, capsys):
    """A NUL byte in a path was a traceback (ValueError: embedded null byte); an unquoted comma
    in a path an 'empty class' named after the file name's end. Both name the CSV and the row."""
    make_classes(tmp_path, {"a": 2, "b": 2})
    good = "path,label\na/0.png,a\na/1.png,a\nb/0.png,b\nb/1.png,b\n"
    for extra, expected in (
        ("a/0.png\x00x,a", "row 6: path 'a/0.png\\x00x' holds a NUL byte"),
        ("a/x,y.png,a", "row 6: 3 fields but the header has 2"),
    ):
        (tmp_path / "labels.csv").write_text(good + extra + "\n")
        code, out, err = _data_check(capsys, str(tmp_path / "labels.csv"))
        assert code == 2 and "Traceback" not in out + err, err
        assert len(err.strip().splitlines()) == 1 and expected in err, err
