"""The classification pipeline end to end, as a new user would drive it (small data, a few epochs)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.cli import main
from cnnlab.errors import CheckpointError, ConfigError, DataError

FAST = {"model": "lenet5", "epochs": 2, "batch_size": 32, "lr": 0.05, "report": False}


def test_folder_of_mixed_modes_trains_evaluates_and_predicts(mixed_folder, tmp_path):
    run = api.train(
        data=str(mixed_folder),
        out=str(tmp_path),
        name="mixed",
        epochs=6,
        model="lenet5",
        batch_size=8,
        lr=0.05,
        image_size=24,
    )
    assert run.test_metrics is not None and run.test_metrics["class_names"] == ["disc", "square"]
    files = {p.name for p in run.run_dir.iterdir()}
    assert {
        "config.json",
        "classes.json",
        "preprocess.json",
        "splits.json",
        "metrics.csv",
        "test_metrics.json",
        "report.html",
        "data_scan.json",
    } <= files
    # channels decided from the data: mixed modes include colour -> 3 channels
    assert json.loads((run.run_dir / "preprocess.json").read_text())["in_channels"] == 3
    # prediction needs nothing but the run directory
    preds = api.predict(run.run_dir, [mixed_folder / "disc"], top_k=2)
    assert len(preds) == 20 and all(p.error is None for p in preds)
    assert all(
        p.top[0][0] in ("disc", "square") and abs(sum(pr for _, pr in p.top) - 1) < 1e-4
        for p in preds
    )
    # evaluate reuses the recorded test split: same ids, same metrics as at the end of training
    again = api.evaluate(run.run_dir, report=False)
    assert again["num_samples"] == len(
        json.loads((run.run_dir / "splits.json").read_text())["splits"]["test"]
    )
    assert again["metrics"]["accuracy"] == pytest.approx(run.test_metrics["accuracy"], abs=1e-12)


def test_csv_dataset_trains_and_user_files_are_untouched(csv_dataset, tmp_path):
    before = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in csv_dataset.parent.rglob("*")
        if p.is_file()
    }
    run = api.train(data=str(csv_dataset), out=str(tmp_path), image_size=24, **FAST)
    assert run.test_metrics["num_samples"] == 4  # 10% of 40, stratified
    after = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in csv_dataset.parent.rglob("*")
        if p.is_file()
    }
    assert before == after


def test_checkpoint_holds_everything_needed_to_predict(tmp_path):
    run = api.train(data="builtin:digits", out=str(tmp_path), **FAST)
    best = run.run_dir / "checkpoints" / "best.safetensors"
    from cnnlab.engine.checkpoint import read_weights

    _, meta = read_weights(best)
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["model"] == "lenet5"
    assert meta["preprocess"]["image_size"] == 16 and meta["preprocess"]["in_channels"] == 1
    # normalisation statistics come from the training split only
    from sklearn.datasets import load_digits

    train_ids = json.loads((run.run_dir / "splits.json").read_text())["splits"]["train"]
    idx = [int(i.split(":")[1]) for i in train_ids]
    pix = np.round(load_digits().images[idx] * 255 / 16) / 255
    assert meta["preprocess"]["mean"][0] == pytest.approx(
        pix.mean(), abs=2e-3
    )  # 8 -> 16 px resize moves it a bit
    assert set(load_file(best)) == set(api.load_checkpoint_model(best)[0].state_dict())


def test_resume_after_interruption_is_bit_identical(tmp_path):
    cfg = dict(
        data="builtin:digits",
        out=str(tmp_path),
        seed=3,
        deterministic=True,
        **(FAST | {"epochs": 3}),
    )
    full = api.train(name="full", **cfg)
    # stop after the first epoch by asking for 1 epoch, then resume to 3 with the same schedule
    # interrupt through the real signal path: SIGTERM after epoch 1 from a callback
    import signal

    from cnnlab.engine import callbacks as cbs

    original = cbs.GracefulInterrupt.on_fit_start

    def start_then_arm(self, trainer):
        original(self, trainer)
        self_state = trainer.state

        class Kill(cbs.Callback):
            def on_batch_end(self, t, loss, correct, size):
                if self_state.epoch == 1 and self_state.step == 5:
                    signal.raise_signal(signal.SIGTERM)

        trainer.callbacks.append(Kill())

    cbs.GracefulInterrupt.on_fit_start = start_then_arm
    try:
        with pytest.raises(api.Interrupted):
            api.train(name="part", **cfg)
    finally:
        cbs.GracefulInterrupt.on_fit_start = original
    manifest = json.loads((tmp_path / "part" / "checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"][-1]["tag"] == "epoch-0002-step-000005"
    resumed = api.train(resume=str(tmp_path / "part"))
    a = load_file(full.run_dir / "checkpoints" / "epoch-0003.safetensors")
    b = load_file(resumed.run_dir / "checkpoints" / "epoch-0003.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # every epoch's metrics match exactly, the split epoch's training loss and accuracy too (they
    # averaged only the batches after the resume); the timings are the two processes' own
    timed = {"epoch_time_s", "train_images_per_s"}
    untimed = [[{k: v for k, v in h.items() if k not in timed} for h in run.history]
               for run in (resumed, full)]  # fmt: skip
    assert untimed[0] == untimed[1]


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "dataset root not found" in err and "Traceback" not in err
    assert main(["train", "--data", "builtin:digits", "--model", "resnet19"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "x.png"]) == 2
    assert "checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["train", "--data", "builtin:moving-shapes?n=40"],
         "`cnnlab video train --data builtin:moving-shapes?n=40`"),
        (["segment", "train", "--data", "builtin:moving-shapes"], "`cnnlab video train"),
        (["detect", "train", "--data", "builtin:moving-shapes"], "`cnnlab video train"),
        (["cv", "--data", "builtin:moving-shapes"], "`cnnlab video train"),
        (["video", "train", "--data", "builtin:shapes?n=50"],
         "`cnnlab train --data builtin:shapes?n=50`"),
        (["video", "train", "--data", "builtin:mnist-sample"], "`cnnlab train --data"),
    ],
)  # fmt: skip
def test_a_builtin_of_another_task_names_the_command_that_takes_it(tmp_path, capsys, argv, named):
    """builtin:moving-shapes given to an image command was "unknown builtin dataset" (or, to
    detection, "has no boxes"); an image builtin given to `video train` was "unknown builtin video
    dataset"."""
    code = main([*argv, "--epochs", "1", "--out", str(tmp_path)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and named in lines[0], lines
    assert "unknown" not in lines[0] and "has no boxes" not in lines[0]
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_evaluate_with_a_video_builtin_names_video_evaluate(run, capsys):
    """It named only `video train`, which does not evaluate a run."""
    assert main(["evaluate", str(run), "--data", "builtin:moving-shapes", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "`cnnlab video evaluate RUN --data builtin:moving-shapes`" in err, err


@pytest.mark.parametrize(
    ("argv", "trainer"),
    [
        (["train", "--data", "builtin:digits"], "train"),
        (["segment", "train", "--data", "builtin:shapes"], "segment_train"),
        (["detect", "train", "--data", "builtin:shapes"], "detect_train"),
        (["video", "train", "--data", "builtin:moving-shapes"], "video_train"),
    ],
)  # fmt: skip
def test_every_training_command_says_why_its_run_stopped_early(
    monkeypatch, capsys, tmp_path, argv, trainer
):
    """segment, detect and video train printed neither an early stop nor an interruption (their
    run.json had it; `cnnlab train` printed it)."""
    from types import SimpleNamespace

    reason = "early stopping: val_loss did not improve for 2 epochs (best 0.1234)"
    result = SimpleNamespace(stop_reason=reason, test_metrics=None, train_time_s=1.0,
                             run_dir=tmp_path / "run", report=None)  # fmt: skip
    monkeypatch.setattr(api, trainer, lambda *a, **k: result)
    assert main([*argv, "--no-report", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines.index(reason) < next(i for i, ln in enumerate(lines) if "run directory" in ln)


def test_api_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="unknown builtin dataset 'digit'.*digits"):
        api.train(data="builtin:digit", out=str(tmp_path))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        api.train(resume=str(tmp_path))
    bad = tmp_path / "labels.csv"
    bad.write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['path', 'label'\]"):
        api.train(data=str(bad), out=str(tmp_path))


def test_cli_entry_point_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "cnnlab", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout and "evaluate" in out.stdout and "predict" in out.stdout


def test_cli_finetune_from_a_run_with_other_classes_and_channels(mixed_folder, tmp_path, capsys):
    source = api.train(data="builtin:digits", out=str(tmp_path), name="src", **FAST)
    code = main(
        [
            "finetune",
            "--from",
            str(source.run_dir),
            "--data",
            str(mixed_folder),
            "--out",
            str(tmp_path),
            "--name",
            "ft",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "16",
            "--no-report",
        ]
    )
    assert code == 0, capsys.readouterr().err
    transfer = json.loads((tmp_path / "ft" / "transfer.json").read_text())
    text = json.dumps(transfer)
    assert "features.0.weight" in text  # the first conv was adapted from 1 to 3 channels
    assert json.loads((tmp_path / "ft" / "classes.json").read_text()) == ["disc", "square"]


def test_lr_auto_runs_the_range_test_and_records_the_rate(tmp_path):
    run = api.train(
        data="builtin:digits", out=str(tmp_path), name="auto", **(FAST | {"lr": "auto"})
    )
    saved = json.loads((run.run_dir / "config.json").read_text())
    assert isinstance(saved["lr"], float) and 1e-5 <= saved["lr"] <= 1.0


def test_predict_in_pipelined_chunks_matches_the_model_per_file(tmp_path):
    """Files decode one chunk ahead of the model: every chunk size (with an unreadable file inside
    a chunk, and chunks split into several decoding tasks of 16 files) gives each file the model's own
    probabilities for that file, in input order. The reference runs the model on contiguous NCHW input;
    prediction feeds NHWC to a channels_last model."""
    from PIL import Image

    from cnnlab.data.tensors import PreprocessSpec, load_file

    run = api.train(data="builtin:digits", out=str(tmp_path / "runs"), **(FAST | {"epochs": 1}))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(37):
        Image.fromarray(rng.integers(0, 256, (20 + i, 18), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    (folder / "3b.png").write_bytes(b"not an image")
    model, meta, _ = api.load_checkpoint_model(run.run_dir)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    names = sorted(p.name for p in folder.iterdir())
    good = [n for n in names if n != "3b.png"]
    x = np.stack([load_file(folder / n, spec) for n in good]).astype(np.float32) / 255
    x = (x - np.asarray(spec.mean).reshape(1, -1, 1, 1)) / np.asarray(spec.std).reshape(1, -1, 1, 1)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x.astype(np.float32)))
    # prediction is calibrated: softmax(logits / T), T fitted on validation (calibration.json)
    temperature = json.loads((run.run_dir / "calibration.json").read_text())["temperature"]
    want = (logits / temperature).softmax(1).numpy()
    for batch_size in (1, 3, 20, 256):
        preds = api.predict(run.run_dir, [folder], top_k=10, batch_size=batch_size, device="cpu")
        assert [p.path.rsplit("/", 1)[1] for p in preds] == names
        bad = preds[names.index("3b.png")]
        assert bad.error and not bad.top
        for row, n in enumerate(good):
            got = dict(preds[names.index(n)].top)
            probs = [got[c] for c in meta["class_names"]]
            np.testing.assert_allclose(probs, want[row], rtol=1e-5, atol=1e-6)


def test_list_images_matches_a_recursive_glob_and_skips_hidden(tmp_path):
    """The os.walk listing gives what sorted(rglob) with the same filters gives, in the same order."""
    for rel in ["cls/a.png", "cls-1/b.JPG", "cls 2/c.jpeg", "cls/sub/d.webp", "cls/.hidden.png",
                ".git/e.png", "cls/.cache/f.png", "cls/notes.txt", "top.bmp"]:  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "cls" / "broken.png").symlink_to(tmp_path / "missing.png")
    want = sorted(
        f
        for f in tmp_path.rglob("*")
        if f.is_file()
        and f.suffix.lower() in api.IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in f.relative_to(tmp_path).parts)
    )
    got = api.list_images([tmp_path])
    assert got == want
    assert [f.name for f in got] == [
        "a.png",
        "d.webp",
        "c.jpeg",
        "b.JPG",
        "top.bmp",
    ]  # "cls" < "cls 2" < "cls-1"
    assert api.list_images([tmp_path / "top.bmp", tmp_path / "cls"])[0] == tmp_path / "top.bmp"


def test_list_images_refuses_a_folder_without_images(tmp_path):
    """`cnnlab predict RUN folder/` on a folder of text files (or only hidden images) printed an
    empty table with exit 0; the folder is now named, with what was in it."""
    from cnnlab.errors import DataError

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError, match=r"no image files in this folder or below it \(1 other files\)"
    ):
        api.list_images([tmp_path])
    with pytest.raises(
        DataError, match=r"empty: no image files .*\(0 other files\); image files end in"
    ):
        api.list_images([tmp_path / "empty"])
