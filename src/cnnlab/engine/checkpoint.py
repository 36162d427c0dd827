"""Checkpoints that survive kills and refuse to run code.

Layout under `<run>/checkpoints/`:
  epoch-0003.safetensors   model weights + JSON metadata (class names, preprocessing, model) -- enough to predict
  epoch-0003.state.pt      optimizer / scheduler / RNG / loop state: tensors and plain types only, so that
                           `torch.load(weights_only=True)` reads it; never pickled objects
  best.safetensors         weights of the best completed, finite epoch: a hard link to that epoch's
                           weights file (one copy on disk, not two), or its own file when it holds other
                           weights (--ema's averaged ones) or the filesystem has no hard links
  manifest.json            sha256 + size of each file, written atomically *after* the files

Linking is safe because no file here is ever changed in place: every write replaces its target with a new
file (below), so re-saving an epoch gives that name a new inode and pruning an old epoch only removes one of
its names (unlink); best.safetensors keeps the weights it was linked to. A linked best shares the epoch file's
inode and so its mode, which is the same mode anyway (see "File modes").

How much is kept (`--keep`, see KEEP): `best` (default) keeps best.safetensors and the newest epoch's weights and
state (one resumable state), `last` only the newest epoch's, `all` every epoch's.

File modes: a run folder is the user's. Files get what `open()` would give them under the user's umask (0644
under the usual 022), never more than their folder allows: in a private run folder (0700, `--private`) they are
0600. `tempfile.mkstemp` alone would make every checkpoint 0600 while `open()` makes reports 0644.

Every write goes to a temporary file in the same folder, is flushed and fsynced, then `os.replace`d over the target
(POSIX rename is atomic), and the folder is fsynced. A kill at any moment leaves the previous files and manifest
intact; stale temporaries are removed at the next start. PyTorch declined atomic `torch.save` (pytorch#2883), and
Lightning's regressed (#19970), so it is done here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle  # only for its exception class: nothing here unpickles
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cnnlab.errors import CheckpointError, ConfigError, WriteError

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(folder: Path) -> int:
    """What `open()` gives a new file under the umask, capped by the folder's own permissions
    (0644 under umask 022; 0600 in a 0700 folder)."""
    return 0o666 & ~current_umask() & os.stat(folder).st_mode & 0o666


def make_dir(path: Path) -> Path:
    """mkdir -p whose new folders take their parent's permissions (a private run stays private)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for new in reversed(missing):
        os.chmod(new, os.stat(new.parent).st_mode & 0o777)
    return path


def apply_run_mode(run_dir: Path) -> None:
    """One mode for everything in a run folder: files as :func:`file_mode`, folders as the run's own
    (files written by other libraries, TensorBoard's for example, follow only the umask)."""
    run_dir = Path(run_dir)
    folder_mode = os.stat(run_dir).st_mode & 0o777
    mode = file_mode(run_dir)
    for root, dirs, files in os.walk(run_dir):
        for d in dirs:
            os.chmod(os.path.join(root, d), folder_mode)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


def atomic_write(target: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a same-folder temporary file + fsync + rename; on any error the target is untouched."""
    make_dir(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode(target.parent))  # mkstemp's 0600 -> what open() would give
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            # disk full, I/O error, read-only folder: one line naming the file and the free space
            raise WriteError(
                f"could not write {target}: {err.strerror or err}; {_free_space(target.parent)} "
                "free there; the previous file is intact"
            ) from err
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (its entries are on disk once this returns)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_link(source: Path, target: Path) -> bool:
    """Make `target` a second name (hard link) for `source`, atomically: link to a temporary name in
    the same folder (named as :func:`atomic_write` names its temporaries, so that
    :func:`clean_stale_temporaries` removes one left by a kill), `os.replace` it over the target,
    fsync the folder. False, with the target untouched, where the filesystem has no hard links."""
    for _ in range(100):  # os.link never overwrites: a name just taken is retried with another
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.link(source, tmp)
        except FileExistsError:
            continue
        except OSError as err:  # EPERM, EOPNOTSUPP, ENOSYS: some FUSE and SMB mounts; EMLINK
            log.debug("no hard link %s -> %s (%s): writing a copy", target, source, err)
            return False
        try:
            os.replace(tmp, target)
        except OSError as err:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            log.debug("could not rename the hard link %s over %s (%s)", tmp, target, err)
            return False
        fsync_dir(target.parent)
        return True
    return False


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e9:.2f} GB"
    except OSError:
        return "unknown space"


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove `.NAME.*.tmp` files left by a process killed mid-write (they are never referenced)."""
    removed = []
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Weights as safetensors; metadata values are JSON-encoded (safetensors metadata is str -> str)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    meta["cnnlab_schema"] = str(SCHEMA_VERSION)
    data = st_save(tensors, metadata=meta)
    atomic_write(path, lambda f: f.write(data))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors checkpoint: (state_dict, metadata). Corrupt files raise CheckpointError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"incomplete or corrupt checkpoint: {path} ({len(data)} bytes; {err})"
        ) from None
    raw = header.get("__metadata__", {}) or {}
    schema = int(raw.pop("cnnlab_schema", "0") or 0)
    if schema > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer cnnlab (checkpoint schema {schema} > {SCHEMA_VERSION}); upgrade cnnlab"
        )
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(
                f"{path}: tensor {name} holds NaN or Inf values; refusing to use it"
            )
    return tensors, meta


def save_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def read_state(path: Path) -> dict[str, Any]:
    """Training state via `weights_only=True` only: a file needing pickled code is refused, never retried unsafely."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it needs pickled Python objects, which could run code "
            f"({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"incomplete or corrupt checkpoint: {path} ({err})") from None


#: --keep: (newest epoch checkpoints kept, None = all; whether best.safetensors is written)
KEEP = {"best": (1, True), "last": (1, False), "all": (None, True)}


class CheckpointManager:
    """Keeps `keep` newest epoch checkpoints (None: all) + best (unless `best=False`), with a sha256
    manifest verified before every load. :meth:`for_policy` maps `--keep best|last|all`."""

    def __init__(self, folder: Path, keep: int | None = 2, *, best: bool = True):
        self.folder = Path(folder)
        self.keep, self.best = keep, best
        make_dir(self.folder)
        removed = clean_stale_temporaries(self.folder)
        if removed:
            log.info(
                "removed %d stale temporary checkpoint file(s) in %s", len(removed), self.folder
            )

    @classmethod
    def for_policy(cls, folder: Path, policy: str = "best") -> CheckpointManager:
        if policy not in KEEP:
            raise ConfigError(f"unknown --keep {policy!r}; choose from {', '.join(KEEP)}")
        keep, best = KEEP[policy]
        return cls(folder, keep, best=best)

    # manifest -------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        if not path.is_file():
            return {"checkpoints": [], "best": None}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"corrupt checkpoint manifest {path}: {err}") from None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2).encode()
        atomic_write(self.folder / MANIFEST, lambda f: f.write(text))

    def _entry(self, name: str) -> dict[str, Any]:
        p = self.folder / name
        return {"file": name, "sha256": sha256_file(p), "bytes": p.stat().st_size}

    # saving ---------------------------------------------------------------------------------------------
    def save(
        self,
        tag: str,
        weights: dict[str, torch.Tensor],
        metadata: dict[str, Any],
        state: dict[str, Any],
        *,
        is_best: bool = False,
        best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    ) -> Path:
        """Write `<tag>.safetensors` + `<tag>.state.pt` (+ best), then the manifest; prune old epochs.

        `state`: the trainer's loop state, whose ``epoch`` is the loop's 0-based index of the epoch
        it finished (or, mid-epoch, is in). `best`: (weights, metadata) for best.safetensors when
        they are not `weights` (the averaged weights of --ema)."""
        wpath, spath = self.folder / f"{tag}.safetensors", self.folder / f"{tag}.state.pt"
        save_weights(wpath, weights, metadata)
        save_state(spath, state)
        manifest = self.manifest()
        # The manifest counts epochs from 1, as the file names, run.json, metrics.csv and every
        # message do (epoch-0001 holds epoch 1); it was the loop's 0-based index. Resume reads
        # the loop's own index from the state file, so manifests written either way resume alike.
        epoch = None if state.get("epoch") is None else int(state["epoch"]) + 1
        entries = [e for e in manifest["checkpoints"] if e["tag"] != tag]
        entries.append(
            {
                "tag": tag,
                "weights": self._entry(wpath.name),
                "state": self._entry(spath.name),
                "epoch": epoch,
                "step": state.get("step"),
                "complete_epoch": state.get("complete_epoch"),
            }
        )
        if is_best and self.best:
            path = self.folder / "best.safetensors"
            # The same weights as the epoch's: a hard link, not a second copy on disk (45 MB for a
            # ResNet-18, 100+ MB for a U-Net or Faster R-CNN). Safe because files here are only ever
            # replaced (os.replace), never written in place: pruning this epoch later unlinks its
            # name and leaves best's inode, and its bytes, as they are. Where linking fails (a
            # filesystem without hard links: some FUSE and SMB mounts) best is written in full.
            if best is None and atomic_link(wpath, path):
                manifest["best"] = entries[-1]["weights"] | {"file": path.name}  # the same bytes
            else:
                save_weights(path, *(best or (weights, metadata)))
                manifest["best"] = self._entry(path.name)
            manifest["best"]["epoch"] = epoch
        keep = len(entries) if self.keep is None else self.keep
        stale = entries[:-keep] if len(entries) > keep else []
        manifest["checkpoints"] = entries[-keep:]
        self._write_manifest(manifest)
        log.info("checkpoint %s saved", tag)  # resumable from here on (tests wait for this line)
        for e in stale:  # only after the manifest no longer references them
            for key in ("weights", "state"):
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / e[key]["file"]).unlink()
        return wpath

    # loading --------------------------------------------------------------------------------------------
    def verify(self, entry: dict[str, Any]) -> bool:
        p = self.folder / entry["file"]
        return (
            p.is_file() and p.stat().st_size == entry["bytes"] and sha256_file(p) == entry["sha256"]
        )

    def latest_verified(self) -> dict[str, Any] | None:
        """Newest checkpoint whose files match the manifest; falls back to older ones, saying so."""
        entries = self.manifest()["checkpoints"]
        for i, e in enumerate(reversed(entries)):
            if self.verify(e["weights"]) and self.verify(e["state"]):
                if i:
                    log.warning(
                        "newest checkpoint failed its sha256 check; resuming from the previous verified one: %s",
                        e["tag"],
                    )
                return e
            log.warning("checkpoint %s failed verification (incomplete or corrupt)", e["tag"])
        return None

    def load(
        self, entry: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        weights, meta = read_weights(self.folder / entry["weights"]["file"])
        state = read_state(self.folder / entry["state"]["file"])
        return weights, meta, state
