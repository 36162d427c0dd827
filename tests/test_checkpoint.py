"""Checkpoints: atomic, verified, and never a way to run code."""

import errno
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from cnnlab.engine import checkpoint
from cnnlab.engine.checkpoint import (
    CheckpointManager,
    atomic_write,
    read_state,
    read_weights,
    save_weights,
)
from cnnlab.errors import CheckpointError


def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match=rf"could not write {target}: disk full; [0-9.]+ GB free"):
        atomic_write(target, boom)  # a WriteError: a CnnlabError (one line) and still an OSError
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was removed


def test_weights_round_trip_with_metadata(tmp_path):
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_weights(tmp_path / "m.safetensors", sd, {"class_names": ["x", "y"], "image_size": 28})
    loaded, meta = read_weights(tmp_path / "m.safetensors")
    assert meta["class_names"] == ["x", "y"] and meta["image_size"] == 28
    assert torch.equal(loaded["a"], sd["a"]) and torch.equal(loaded["b"], sd["b"])


def test_truncated_weights_are_reported_as_corrupt(tmp_path):
    p = tmp_path / "m.safetensors"
    save_weights(p, {"a": torch.randn(100)}, {})
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="incomplete or corrupt checkpoint"):
        read_weights(p)


def test_non_finite_weights_are_refused(tmp_path):
    p = tmp_path / "m.safetensors"
    save_weights(p, {"a": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        read_weights(p)


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.state.pt"
    buf = io.BytesIO()
    torch.save({"optimizer": _RunsCode(str(marker))}, buf, pickle_module=pickle)
    evil.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_state(evil)
    assert not marker.exists()  # the command never ran


def _save(manager, tag, value):
    manager.save(
        tag,
        {"w": torch.full((4,), float(value))},
        {"v": value},
        {"epoch": value - 1, "step": 0, "complete_epoch": True},  # the loop's 0-based index
    )


def test_manifest_verification_falls_back_to_previous(tmp_path):
    m = CheckpointManager(tmp_path, keep=2)
    _save(m, "epoch-0001", 1)
    _save(m, "epoch-0002", 2)
    newest = tmp_path / "epoch-0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:-8])  # a kill mid-copy, or bit rot
    entry = m.latest_verified()
    assert entry["tag"] == "epoch-0001"
    weights, meta, state = m.load(entry)
    assert meta["v"] == 1 and torch.equal(weights["w"], torch.ones(4))


def test_old_checkpoints_are_pruned_and_stale_temporaries_cleaned(tmp_path):
    m = CheckpointManager(tmp_path, keep=2)
    for i in range(1, 5):
        _save(m, f"epoch-{i:04d}", i)
    names = sorted(p.name for p in tmp_path.glob("epoch-*"))
    assert names == [
        "epoch-0003.safetensors",
        "epoch-0003.state.pt",
        "epoch-0004.safetensors",
        "epoch-0004.state.pt",
    ]
    assert [
        e["tag"] for e in json.loads((tmp_path / "manifest.json").read_text())["checkpoints"]
    ] == ["epoch-0003", "epoch-0004"]
    (tmp_path / ".epoch-0005.safetensors.abc.tmp").write_bytes(b"half")
    CheckpointManager(tmp_path)
    assert not list(Path(tmp_path).glob(".*.tmp"))


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4,), float(value)), "b": torch.arange(3)}


def _best_checks(folder: Path, manifest_best_epoch: int) -> tuple[dict, dict]:
    m = CheckpointManager(folder)
    best = m.manifest()["best"]
    assert best["file"] == "best.safetensors" and best["epoch"] == manifest_best_epoch
    assert m.verify(best)  # sha256 + bytes of what is on disk now
    return read_weights(folder / "best.safetensors")


def test_best_is_a_hard_link_to_the_epochs_weights_not_a_second_copy(tmp_path):
    m = CheckpointManager(tmp_path, keep=1)
    m.save("epoch-0001", _weights(1), {"v": 1}, {"epoch": 0, "step": 0}, is_best=True)
    epoch, best = tmp_path / "epoch-0001.safetensors", tmp_path / "best.safetensors"
    assert best.stat().st_ino == epoch.stat().st_ino and best.stat().st_nlink == 2
    weights, meta = _best_checks(tmp_path, 1)
    assert meta["v"] == 1 and torch.equal(weights["w"], torch.ones(4))
    assert m.manifest()["best"]["sha256"] == m.manifest()["checkpoints"][0]["weights"]["sha256"]
    assert not list(tmp_path.glob(".*.tmp"))  # the link's temporary name was renamed away

    # the next epoch, not the best: epoch-0001 is pruned (unlinked) and best keeps its inode
    m.save("epoch-0002", _weights(2), {"v": 2}, {"epoch": 1, "step": 0}, is_best=False)
    assert not epoch.exists() and best.stat().st_nlink == 1
    weights, meta = _best_checks(tmp_path, 1)
    assert meta["v"] == 1 and torch.equal(weights["w"], torch.ones(4))
    assert (tmp_path / "epoch-0002.safetensors").stat().st_ino != best.stat().st_ino

    # a newer best replaces the link atomically; the file it pointed to before is left as it was
    m.save("epoch-0003", _weights(3), {"v": 3}, {"epoch": 2, "step": 0}, is_best=True)
    assert best.stat().st_ino == (tmp_path / "epoch-0003.safetensors").stat().st_ino
    weights, meta = _best_checks(tmp_path, 3)
    assert meta["v"] == 3 and torch.equal(weights["w"], torch.full((4,), 3.0))


def test_averaged_best_weights_are_their_own_file(tmp_path):
    m = CheckpointManager(tmp_path, keep=1)
    m.save("epoch-0001", _weights(1), {"v": 1}, {"epoch": 0, "step": 0}, is_best=True,
           best=(_weights(7), {"v": 1, "weights": "ema"}))  # fmt: skip
    epoch, best = tmp_path / "epoch-0001.safetensors", tmp_path / "best.safetensors"
    assert best.stat().st_ino != epoch.stat().st_ino and best.stat().st_nlink == 1
    weights, meta = _best_checks(tmp_path, 1)
    assert meta["weights"] == "ema" and torch.equal(weights["w"], torch.full((4,), 7.0))
    assert torch.equal(read_weights(epoch)[0]["w"], torch.ones(4))


def test_best_is_a_full_copy_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")  # what a FUSE/SMB mount answers

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    m = CheckpointManager(tmp_path, keep=1)
    m.save("epoch-0001", _weights(1), {"v": 1}, {"epoch": 0, "step": 0}, is_best=True)
    epoch, best = tmp_path / "epoch-0001.safetensors", tmp_path / "best.safetensors"
    assert best.stat().st_ino != epoch.stat().st_ino
    # the same tensors and metadata (not the same bytes: safetensors may order the header's
    # metadata keys differently from one write to the next)
    (bw, bm), (ew, em) = checkpoint.read_weights(best), checkpoint.read_weights(epoch)
    assert bm == em and bw.keys() == ew.keys() and all(torch.equal(bw[k], ew[k]) for k in bw)
    weights, meta = _best_checks(tmp_path, 1)
    assert meta["v"] == 1 and torch.equal(weights["w"], torch.ones(4))
    assert not list(tmp_path.glob(".*.tmp"))
    m.save("epoch-0002", _weights(2), {"v": 2}, {"epoch": 1, "step": 0}, is_best=False)
    assert _best_checks(tmp_path, 1)[1]["v"] == 1


def test_a_stale_temporary_link_is_cleaned(tmp_path):
    m = CheckpointManager(tmp_path, keep=1)
    m.save("epoch-0001", _weights(1), {"v": 1}, {"epoch": 0, "step": 0}, is_best=True)
    # a kill between os.link and os.replace leaves a second name for the epoch's weights
    os.link(tmp_path / "epoch-0001.safetensors", tmp_path / ".best.safetensors.x1y2z3.tmp")
    CheckpointManager(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
    assert _best_checks(tmp_path, 1)[1]["v"] == 1
