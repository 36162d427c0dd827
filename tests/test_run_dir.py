"""Run folders respect the user's disk and permissions: --keep best|last|all decides which checkpoints
stay, the run's size is printed at the end, and every file in a run has one mode (what open() gives
under the umask; 0600 in a --private run)."""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

import pytest
from rich.console import Console

from cnnlab import api
from cnnlab.run import new_run_dir, resolve_weights

DIGITS = {"data": "builtin:digits", "model": "lenet5", "batch_size": 64, "lr": 0.05,
          "device": "cpu", "precision": "32", "report": False}  # fmt: skip


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ("best", {"best.safetensors", "epoch-0003.safetensors", "epoch-0003.state.pt"}),
        ("last", {"epoch-0003.safetensors", "epoch-0003.state.pt"}),
        ("all", {"best.safetensors"} | {f"epoch-000{e}.{x}" for e in (1, 2, 3)
                                        for x in ("safetensors", "state.pt")}),
    ],
)  # fmt: skip
def test_keep_decides_which_checkpoints_stay(tmp_path: Path, keep: str, expected: set) -> None:
    run = api.train(out=str(tmp_path), epochs=3, keep=keep, **DIGITS)
    folder = run.run_dir / "checkpoints"
    assert _files(folder) == expected | {"manifest.json"}
    # the run is still usable: weights to predict (best, or the last epoch without one) ...
    want = "best.safetensors" if "best.safetensors" in expected else "epoch-0003.safetensors"
    assert resolve_weights(run.run_dir) == folder / want
    assert run.test_metrics is not None and run.test_metrics["num_samples"] > 0


def test_default_keep_still_resumes(tmp_path: Path) -> None:
    first = api.train(out=str(tmp_path), name="r", epochs=2, **DIGITS)
    again = api.train(resume=str(first.run_dir), epochs=3, **DIGITS)
    assert again.run_dir == first.run_dir and [h["epoch"] for h in again.history] == [1, 2, 3]
    assert _files(first.run_dir / "checkpoints") == {
        "best.safetensors", "epoch-0003.safetensors", "epoch-0003.state.pt", "manifest.json",
    }  # fmt: skip


def test_run_size_is_printed(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=400)
    run = api.train(out=str(tmp_path), epochs=1, console=console, **DIGITS)
    found = re.search(r"run folder (.+): ([0-9.]+) MB on disk", console.file.getvalue())
    assert found and Path(found[1]) == run.run_dir
    size = sum(p.stat().st_size for p in run.run_dir.rglob("*") if p.is_file())
    assert float(found[2]) == pytest.approx(size / 1e6, abs=0.05)


def _modes(run_dir: Path) -> tuple[set[int], set[int]]:
    files, dirs = set(), {stat.S_IMODE(run_dir.stat().st_mode)}
    for p in run_dir.rglob("*"):
        (dirs if p.is_dir() else files).add(stat.S_IMODE(p.stat().st_mode))
    return files, dirs


@pytest.mark.parametrize(
    ("umask", "private", "file_mode", "dir_mode"),
    [(0o022, False, 0o644, 0o755), (0o027, False, 0o640, 0o750), (0o022, True, 0o600, 0o700)],
)
def test_one_file_mode_in_a_run(tmp_path, umask, private, file_mode, dir_mode) -> None:
    old = os.umask(umask)
    try:  # report=True: report.html and its figures are written by other code than checkpoints
        run = api.train(out=str(tmp_path), epochs=1, private=private, **(DIGITS | {"report": True}))
    finally:
        os.umask(old)
    assert (run.run_dir / "report.html").is_file()
    files, dirs = _modes(run.run_dir)
    assert files == {file_mode} and dirs == {dir_mode}


def test_segmentation_and_detection_runs_keep_and_modes(tmp_path: Path) -> None:
    from cnnlab.detect import train_detection
    from cnnlab.segment import train_segmentation

    common = {"epochs": 2, "batch_size": 4, "device": "cpu", "precision": "32", "report": False}
    seg = train_segmentation(data="builtin:shapes?n=20&size=16", encoder="lenet5", image_size=16,
                             val_fraction=0.2, test_fraction=0.2, out=str(tmp_path / "s"),
                             private=True, keep="last", **common)  # fmt: skip
    assert _files(seg.run_dir / "checkpoints") == {
        "epoch-0002.safetensors", "epoch-0002.state.pt", "manifest.json",
    }  # fmt: skip
    assert _modes(seg.run_dir) == ({0o600}, {0o700})
    det = train_detection(data="builtin:shapes?n=12&size=64&objects=2", image_size=64,
                          val_fraction=0.25, test_fraction=0.0, out=str(tmp_path / "d"),
                          **common)  # fmt: skip
    assert _files(det.run_dir / "checkpoints") == {
        "best.safetensors", "epoch-0002.safetensors", "epoch-0002.state.pt", "manifest.json",
    }  # fmt: skip
    files, _ = _modes(det.run_dir)
    assert files == {0o666 & ~_umask()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("model", "data", "stem"),
    [
        ("lenet5", "/data/mnist-png", "lenet5-mnist-png"),
        (
            "unet-timm:resnet18",
            "builtin:shapes?n=30&size=16",
            "unet-timm-resnet18-shapes-n=30-size=16",
        ),
        ("lenet5", "/data/my photos", "lenet5-my-photos"),
        ("resnet18", "torchvision:CIFAR10", "resnet18-CIFAR10"),
    ],
)
def test_run_folder_names_are_safe_for_a_shell_and_scp(tmp_path: Path, model, data, stem) -> None:
    # scp reads "runs/unet-timm:resnet18-..." as host "runs/unet-timm"; a shell splits on "&" and " "
    path = new_run_dir(tmp_path, None, model, data)
    assert re.fullmatch(re.escape(stem) + r"-\d{8}-\d{6}", path.name), path.name
    assert new_run_dir(tmp_path, "my:name", model, data).name == "my:name"  # a given name is kept


def test_a_run_whose_dataset_moved_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    """evaluate and --resume re-read the run's splits from the dataset config.json names; moved,
    the error names the run and the path (not load_source's generic 'give a folder ...')."""
    from PIL import Image

    from cnnlab.cli import main

    data = tmp_path / "data"
    for k, name in enumerate(("a", "b")):
        (data / name).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (16, 16), 40 + 150 * k + i).save(data / name / f"{i}.png")
    run = api.train(data=str(data), model="lenet5", epochs=1, batch_size=4, out=str(tmp_path),
                    name="r", report=False).run_dir  # fmt: skip
    assert main(["evaluate", str(run)]) == 0  # in place: fine
    data.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run), "--epochs", "2"]):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "moved or deleted" in lines[0], lines
        assert str(data) in lines[0] and str(run) in lines[0]
