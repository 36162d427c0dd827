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
    # best.safetensors is the newest (best) epoch's weights file under a second name: one copy on disk
    folder = run.run_dir / "checkpoints"
    best, epoch = (folder / "best.safetensors").stat(), (folder / "epoch-0001.safetensors").stat()
    assert best.st_ino == epoch.st_ino and best.st_nlink == 2
    files = [p.stat() for p in run.run_dir.rglob("*") if p.is_file()]
    size = sum({st.st_ino: st.st_size for st in files}.values())  # as du: each file once
    assert float(found[2]) == pytest.approx(size / 1e6, abs=0.05)
    assert size == sum(st.st_size for st in files) - best.st_size


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


def _two_class_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 10) -> Path:
    from PIL import Image

    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (16, 16), 40 + 150 * k + i).save(root / name / f"{i}.png")
    return root


def _tiny_run(data: Path | str, out: Path, name: str = "r") -> Path:
    return api.train(data=str(data), model="lenet5", epochs=1, batch_size=4, out=str(out),
                     name=name, report=False, device="cpu", precision="32").run_dir  # fmt: skip


def _evaluated(main, argv: list[str], capsys) -> dict:
    """`cnnlab evaluate ... --json`'s metrics."""
    import json

    capsys.readouterr()
    assert main([*argv, "--json", "--no-report"]) == 0
    text = capsys.readouterr().out
    return json.loads(text[text.index("{") :])


def test_a_run_whose_dataset_moved_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    """evaluate and --resume re-read the run's splits from the dataset config.json names; moved,
    the error names the run and the path (not load_source's generic 'give a folder ...') and the
    command's way to give the new place."""
    from cnnlab.cli import main

    data = _two_class_folder(tmp_path / "data")
    run = _tiny_run(data, tmp_path)
    assert main(["evaluate", str(run)]) == 0  # in place: fine
    data.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    for argv, how in (
        (["evaluate", str(run)], "--relocated-data PATH"),
        (["train", "--resume", str(run), "--epochs", "2"], "--data PATH"),
    ):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "moved or deleted" in lines[0], lines
        assert str(data) in lines[0] and str(run) in lines[0] and how in lines[0]


def test_a_moved_dataset_is_found_at_its_new_place(tmp_path: Path, capsys) -> None:
    """--relocated-data (evaluate) and --data (resume) give the run's dataset at its new place:
    evaluation reproduces the recorded test metrics there; a resume goes on and records the new
    place; a copy missing a sample of the recorded split is refused naming it."""
    import json
    import shutil

    from cnnlab.cli import main

    data = _two_class_folder(tmp_path / "data")
    run = _tiny_run(data, tmp_path)
    recorded = json.loads((run / "test_metrics.json").read_text())
    moved = data.rename(tmp_path / "moved")
    got = _evaluated(main, ["evaluate", str(run), "--relocated-data", str(moved)], capsys)
    assert got["num_samples"] == recorded["num_samples"] > 0
    assert got["confusion_matrix"] == recorded["confusion_matrix"]
    assert got["accuracy"] == recorded["accuracy"]

    test_ids = json.loads((run / "splits.json").read_text())["splits"]["test"]
    partial = shutil.copytree(moved, tmp_path / "partial")
    (partial / test_ids[0]).unlink()
    assert main(["evaluate", str(run), "--relocated-data", str(partial)]) == 2
    err = capsys.readouterr().err
    assert "of the recorded test split are gone" in err and test_ids[0] in err
    assert main(["evaluate", str(run), "--relocated-data", str(moved), "--data", str(moved)]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--relocated-data", str(moved), "--split", "tst"]) == 2
    assert "(did you mean: test?)" in capsys.readouterr().err

    assert main(["train", "--resume", str(run), "--data", str(moved), "--epochs", "2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str(moved) and config["epochs"] == 2


def test_a_relative_data_path_is_recorded_absolute(tmp_path: Path, monkeypatch, capsys) -> None:
    """`cnnlab train --data photos` from one folder, `cnnlab evaluate RUN` from another: config.json
    records where the data is, not the spelling relative to where training ran."""
    from cnnlab.cli import main

    work = tmp_path / "work"
    _two_class_folder(work / "photos")
    monkeypatch.chdir(work)
    run = _tiny_run("photos", tmp_path / "runs")
    import json

    assert json.loads((run / "config.json").read_text())["data"] == str(work / "photos")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--no-report"]) == 0, capsys.readouterr().err


def test_a_class_folder_added_after_training_does_not_shift_the_labels(
    tmp_path: Path, capsys
) -> None:
    """Evaluation on the run's own split matches its recorded samples' labels to the model's
    classes by name: a class folder that sorts first ("0") added since training shifted every
    index (wrong metrics, or a crash on index 2 of a 2-class model)."""
    import json

    from cnnlab.cli import main

    data = _two_class_folder(tmp_path / "data")
    run = _tiny_run(data, tmp_path)
    recorded = json.loads((run / "test_metrics.json").read_text())
    shutil_copy = __import__("shutil").copytree
    shutil_copy(data / "a", data / "0")  # a new class, first in sorted order
    got = _evaluated(main, ["evaluate", str(run)], capsys)
    assert got["confusion_matrix"] == recorded["confusion_matrix"]
    assert got["class_names"] == ["a", "b"]


def test_a_resume_refuses_data_that_changed_since(tmp_path: Path) -> None:
    """A resume re-splits the data; one file added reshuffles the seeded split, so training would
    go on with some test images in its training split. Refused, naming the splits, before the run
    folder is touched; options a resume cannot change are refused too (once silently dropped)."""
    from cnnlab.errors import ConfigError, DataError

    data = _two_class_folder(tmp_path / "data")
    run = _tiny_run(data, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    (data / "a" / "new.png").write_bytes((data / "a" / "0.png").read_bytes())
    with pytest.raises(DataError, match=r"does not hold what .* trained on \(.*samples gone"):
        api.train(resume=str(run), epochs=2)
    (data / "a" / "new.png").unlink()
    with pytest.raises(ConfigError, match=r"--batch-size 8 \(the run's: 4\)"):
        api.train(resume=str(run), epochs=2, batch_size=8)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert api.train(resume=str(run), epochs=2).history[-1]["epoch"] == 2  # as it was: goes on
    digits = api.train(out=str(tmp_path), name="d", epochs=1, **DIGITS).run_dir
    with pytest.raises(ConfigError, match="was trained on builtin:digits, not on files of yours"):
        api.train(resume=str(digits), epochs=2, data=str(data))  # another dataset: not a move


def test_a_run_refused_at_set_up_leaves_no_folder_to_take_its_name(tmp_path: Path) -> None:
    """One batch larger than the training split is found after the data is read; the run folder is
    made only after such checks, so the corrected command gets the --name asked for (it got
    NAME-2 beside a half-made NAME)."""
    from cnnlab.errors import DataError

    data = _two_class_folder(tmp_path / "data")
    out = tmp_path / "runs"
    with pytest.raises(DataError, match="fewer than one batch"):
        api.train(data=str(data), model="lenet5", epochs=1, batch_size=64, out=str(out),
                  name="mine", report=False)  # fmt: skip
    assert not (out / "mine").exists()
    assert _tiny_run(data, out, name="mine") == out / "mine"


def test_resuming_a_run_that_stopped_before_its_first_checkpoint_says_so(tmp_path: Path) -> None:
    from cnnlab.engine.resume import resume_target
    from cnnlab.errors import CheckpointError

    run = tmp_path / "r"
    run.mkdir()
    with pytest.raises(CheckpointError, match="is not a cnnlab run directory"):
        resume_target(str(run), tmp_path, None)
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="before its first checkpoint; train it again"):
        resume_target(str(run), tmp_path, None)
