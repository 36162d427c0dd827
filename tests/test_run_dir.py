"""Run folders respect the user's disk and permissions: --keep best|last|all decides which checkpoints
stay, the run's size is printed at the end, and every file in a run has one mode (what open() gives
under the umask; 0600 in a --private run)."""

from __future__ import annotations

import io
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
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


def test_the_manifest_counts_epochs_from_one_and_an_old_manifest_still_resumes(
    tmp_path: Path,
) -> None:
    """checkpoints/manifest.json says epoch 1 for epoch-0001, as run.json, metrics.csv and every
    message count (it said 0, the loop's index); a run whose manifest was written that way still
    resumes where it stopped: resume reads the loop's index from the state file."""
    first = api.train(out=str(tmp_path), name="r", epochs=2, keep="all", **DIGITS)
    path = first.run_dir / "checkpoints" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert [(e["tag"], e["epoch"]) for e in manifest["checkpoints"]] == [
        ("epoch-0001", 1), ("epoch-0002", 2),
    ]  # fmt: skip
    final = json.loads((first.run_dir / "run.json").read_text())["final_weights"]
    assert manifest["best"]["epoch"] == final["epoch"] in (1, 2)
    for entry in [*manifest["checkpoints"], manifest["best"]]:  # as cnnlab wrote it before
        entry["epoch"] -= 1
    path.write_text(json.dumps(manifest, indent=2))
    again = api.train(resume=str(first.run_dir), epochs=3, **DIGITS)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    newest = json.loads(path.read_text())["checkpoints"][-1]
    assert (newest["tag"], newest["epoch"]) == ("epoch-0003", 3)


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
    # a builtin in place of the run's folder is another dataset, not its new place ("no such file
    # or folder; give where the run's dataset is now" said before)
    with pytest.raises(ConfigError, match=rf"--data builtin:digits: {run} was trained on {data}"):
        api.train(resume=str(run), epochs=3, data="builtin:digits")


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


# -- output folders: cnnlab overwrites what it wrote there, never a file of the user's -------------
@pytest.fixture(scope="module")
def task_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classification, segmentation and detection run, and an image to give them."""
    from PIL import Image

    from cnnlab.detect import train_detection
    from cnnlab.segment import train_segmentation

    out = tmp_path_factory.mktemp("out-guard")
    image = out / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    return {
        "image": image,
        "classification": api.train(out=str(out), name="clf", epochs=1, **DIGITS).run_dir,
        "segmentation": train_segmentation(
            data="builtin:shapes?n=24&size=32",
            out=str(out),
            name="seg",
            encoder="lenet5",
            image_size=32,
            epochs=1,
            batch_size=8,
            report=False,
            device="cpu",
            precision="32",
            val_fraction=0.2,
            test_fraction=0.2,
        ).run_dir,
        "detection": train_detection(
            data="builtin:shapes?n=12&size=64&objects=2",
            epochs=1,
            batch_size=4,
            name="det",
            val_fraction=0.0,
            test_fraction=0.0,
            out=str(out),
            device="cpu",
            report=False,
        ).run_dir,
    }


#: (command words, the run it needs, a file it writes into --out)
OUT_COMMANDS = [
    (("explain",), "classification", "explain.html"),
    (("explain",), "segmentation", "explain.json"),
    (("segment", "predict"), "segmentation", "predictions.json"),
    (("detect", "predict"), "detection", "predictions.json"),
    (("predict",), "classification", "predictions.json"),  # the rows of --format json
    (("predict",), "segmentation", "masks/photo.png"),  # masks/: a folder cnnlab fills whole
    (("predict",), "detection", "images/photo.png"),
]


def _user_error(*args: str) -> str:
    """The one-line error (exit 2) of `cnnlab ARGS`, in this process."""
    from cli_process import in_process

    proc = in_process(*args)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"cnnlab {' '.join(args)} -> {proc.returncode}: {proc.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def _ok(*args: str) -> None:
    from cli_process import in_process

    proc = in_process(*args)
    assert proc.returncode == 0, f"cnnlab {' '.join(args)} -> {proc.returncode}: {proc.stderr}"


@pytest.mark.parametrize(("words", "task", "written"), OUT_COMMANDS)
def test_an_out_folder_keeps_the_users_files(
    task_runs: dict[str, Path], tmp_path: Path, words: tuple[str, ...], task: str, written: str
) -> None:
    """Nothing a user owns is modified: a file of theirs with a name the command writes into --out
    is refused in one line naming it (it was silently overwritten); a file of theirs beside the
    output stays as it was; and the same command again into the same folder overwrites its own
    earlier output (the folder's .cnnlab-output.json lists what cnnlab wrote there)."""
    args = (*words, str(task_runs[task]), str(task_runs["image"]), "--out")
    out = tmp_path / "mine"
    theirs = out / written
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"the user's own, not cnnlab's\n")
    line = _user_error(*args, str(out))
    assert str(out / written.split("/")[0]) in line and "not written by cnnlab" in line
    assert "name a new or empty folder" in line
    assert theirs.read_bytes() == b"the user's own, not cnnlab's\n"  # byte for byte

    theirs.rename(tmp_path / "moved")  # the fix the message names; a note of theirs stays beside
    notes = out / "notes.txt"
    notes.write_bytes(b"my notes\n")
    _ok(*args, str(out))
    own = out / written
    assert own.is_file() and own.read_bytes() != b"the user's own, not cnnlab's\n"
    record = json.loads((out / ".cnnlab-output.json").read_text())
    assert record["written_by"] == "cnnlab"
    os.utime(own, ns=(0, 0))
    _ok(*args, str(out))  # again: its own output is overwritten
    assert own.stat().st_mtime_ns != 0
    assert notes.read_bytes() == b"my notes\n"


@pytest.mark.parametrize("command", ["export", "conv", "embed"])
def test_an_out_file_of_the_users_is_refused(
    task_runs: dict[str, Path], tmp_path: Path, command: str
) -> None:
    """export, conv and embed write the one file --out names: the user's own file of that name is
    refused (it was overwritten) and stays byte for byte; cnnlab's own is overwritten next time;
    a file of the user's beside it is no reason to refuse."""
    path = (
        tmp_path / "mine" / {"export": "m.safetensors", "conv": "c.png", "embed": "e.npz"}[command]
    )
    args = {
        "export": ("export", str(task_runs["classification"]), "--format", "safetensors",
                   "--no-check"),
        "conv": ("conv", "--x", "1 2 3; 4 5 6; 7 8 9", "--w", "1 0; 0 1"),
        "embed": ("embed", str(task_runs["classification"]), "--split", "test", "--device", "cpu"),
    }[command]  # fmt: skip
    path.parent.mkdir()
    path.write_bytes(b"mine")
    line = _user_error(*args, "--out", str(path))
    assert (
        f"--out {path} exists and was not written by cnnlab" in line and "name a new file" in line
    )
    assert path.read_bytes() == b"mine"
    path.unlink()
    (path.parent / "notes.txt").write_bytes(b"my notes\n")
    for _ in range(2):  # the second time over its own file
        _ok(*args, "--out", str(path))
        assert path.stat().st_size > 4
    assert (path.parent / "notes.txt").read_bytes() == b"my notes\n"


def test_a_default_output_folder_follows_the_same_rule(tmp_path: Path) -> None:
    """A folder cnnlab chose itself (explain's RUN/explain/IMAGE/, video's runs/video/NAME/): the same
    record and refusal, the fix being --out."""
    from cnnlab.errors import ConfigError
    from cnnlab.run import OUTPUT_RECORD, claim_outputs

    folder = tmp_path / "runs" / "video" / "street"
    assert claim_outputs(folder, ["timeline.csv"], command="video predict", default=True) == folder
    (folder / "timeline.csv").write_text("cnnlab's")
    (folder / "events.csv").write_text("the user's")
    claim_outputs(folder, ["timeline.csv"], command="video predict", default=True)  # its own
    with pytest.raises(ConfigError, match=r"^output folder .*street: events.csv exists and was not "
                       r"written by cnnlab.*give --out a new or empty folder, or move "):  # fmt: skip
        claim_outputs(folder, ["timeline.csv", "events.csv"], command="video predict", default=True)
    record = json.loads((folder / OUTPUT_RECORD).read_text())
    assert record["outputs"] == {"timeline.csv": "video predict"}  # the refusal recorded nothing
    (folder / OUTPUT_RECORD).write_text("not cnnlab's")  # a file of that name cnnlab did not write
    with pytest.raises(ConfigError, match=re.escape(f"or move {folder / OUTPUT_RECORD}")):
        claim_outputs(folder, ["timeline.csv"], command="video predict", default=True)
    # said before a long computation: a check that writes nothing (the claim comes before the write)
    assert claim_outputs(tmp_path / "z", ["a.csv"], command="embed", record=False) == tmp_path / "z"
    assert not (tmp_path / "z").exists()
    (folder / "figures").mkdir()  # an empty folder of the name is taken, a full one refused
    claim_outputs(folder / "figures", [], command="explain")
    assert claim_outputs(tmp_path / "x", ["figures/"], command="explain") == tmp_path / "x"
    ((tmp_path / "y" / "figures").mkdir(parents=True))
    (tmp_path / "y" / "figures" / "plot.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="figures/ exists and was not written by cnnlab"):
        claim_outputs(tmp_path / "y", ["figures/"], command="explain")


def test_default_folders_from_before_the_record_are_still_cnnlabs(
    task_runs: dict[str, Path],
) -> None:
    """RUN/explain/IMAGE/ and RUN/export/ written before folders carried .cnnlab-output.json: the
    same image explained again, and the same export again, still replace cnnlab's own files."""
    from cnnlab.run import OUTPUT_RECORD

    run, image = task_runs["classification"], task_runs["image"]
    page = Path(api.explain(run, image)["html"])
    exported = api.export(run, format="safetensors", check=False).path
    for folder in (page.parent, exported.parent):
        (folder / OUTPUT_RECORD).unlink()  # as an older cnnlab left it
    assert Path(api.explain(run, image)["html"]) == page
    assert api.export(run, format="safetensors", check=False).path == exported
    assert (page.parent / OUTPUT_RECORD).is_file() and (exported.parent / OUTPUT_RECORD).is_file()
