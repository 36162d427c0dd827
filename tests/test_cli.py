"""Every `cnnlab` command run as a user runs it: `python -m cnnlab ...` in a subprocess.

Each command once on its happy path (tiny settings; one trained run, made once per session,
serves the commands that read a run) and once with bad input: the answer is exit code 2 and one
line on stderr that names the file, row or option, without a traceback. The happy paths that
train something bigger (demo, transfer-study, segment/detect/video training) are marked slow.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from cli_process import SRC, assert_user_error, ok
from PIL import Image
from process_events import OutputWatcher
from test_decode import patch_png_size


# -- train -----------------------------------------------------------------------------------------
def test_train(run: Path) -> None:
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["class_names"] == [
        str(c) for c in range(10)
    ]
    assert_user_error("train", "--data", "builtin:digits", "--epochs", "zero", names="epochs")


def test_train_refuses_a_one_class_folder_naming_the_class(work: Path) -> None:
    """Case 64: it trained and reported accuracy 1.0 (with --batch-size 16), or blamed the batch
    size (without)."""
    folder = work / "one-class" / "cats"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    for extra in ([], ["--batch-size", "16"]):
        line = assert_user_error(
            "train", "--data", str(folder.parent), "--epochs", "1", "--no-report",
            "--out", str(work / "runs-one"), *extra,
            names=["at least 2 classes", "'cats' (30 images)"],
        )  # fmt: skip
        assert "batch" not in line
    assert not (work / "runs-one").exists() or not any((work / "runs-one").iterdir())


# -- commands that read the run --------------------------------------------------------------------
def test_evaluate(run: Path, work: Path) -> None:
    proc = ok("evaluate", str(run), "--json", "--no-report", "--out", str(work / "eval"))
    metrics = json.loads(proc.stdout)
    assert metrics["num_samples"] if "num_samples" in metrics else metrics["accuracy"] >= 0
    assert_user_error("evaluate", str(run), "--split", "nope", names="nope")


def test_evaluate_on_other_data_limits_unreadable_images_with_its_own_options(
    run: Path, work: Path
) -> None:
    """`evaluate RUN --data OTHER` judged OTHER's unreadable images by the default limit only, and
    its refusal told the user to raise --max-bad-fraction, an option `evaluate` did not have. Now
    it has train's two: 1 of 5 corrupt (20 %) is refused by default, evaluated without it under
    --max-bad-fraction 0.5 (said once), refused again with --strict; one error line each."""
    from sklearn.datasets import load_digits

    d = load_digits()
    other = work / "other-digits"
    for i, k in enumerate([0, 1, 10, 11, 20]):  # digits 0, 1, 0, 1, 0: classes "0" and "1"
        (other / str(d.target[k])).mkdir(parents=True, exist_ok=True)
        pixels = (d.images[k] * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels).save(other / str(d.target[k]) / f"{i}.png")
    bad = other / "0" / "2.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a download cut short
    said = f"{bad} (truncated or corrupt image data)"
    args = ("evaluate", str(run), "--data", str(other), "--no-report", "--out")
    assert_user_error(
        *args, str(work / "other-eval-1"),
        names=[str(other), "1 of 5 image files unusable (20.0%, limit 10%: --max-bad-fraction)",
               said],
    )  # fmt: skip
    proc = ok(*args, str(work / "other-eval-2"), "--max-bad-fraction", "0.5")
    unwrapped = "".join(proc.stderr.split())  # the log's lines are wrapped to the terminal
    assert unwrapped.count("".join(f"{other}: 1 bad image files skipped: {said}".split())) == 1
    assert "evaluated 4 samples" in proc.stderr
    assert_user_error(
        *args, str(work / "other-eval-3"), "--max-bad-fraction", "0.5", "--strict",
        names=[str(other), "1 of 5 image files unusable (20.0%, strict mode)", said],
    )  # fmt: skip
    # embed reads the same way, with the same two options (its refusal named them; it had none)
    embed = ("embed", str(run), "--data", str(other), "--out")
    assert_user_error(*embed, str(work / "other-1.npz"),
                      names=["1 of 5 image files unusable", said])  # fmt: skip
    # over the pixel limit: the run's own limit, said as such (evaluate and embed have no
    # --max-image-pixels; "raise --max-image-pixels" was said)
    big = other / "1" / "big.png"
    big.write_bytes(patch_png_size((other / "1" / "1.png").read_bytes(), 12000, 9000))
    for command in (args[:-1], embed[:-1]):
        line = assert_user_error(*command, "--max-bad-fraction", "0.3", names="exceeds max pixels")
        assert "the limit is the run's own, set when it was trained (`cnnlab train " in line


def test_predict(run: Path, digits: list[Path], work: Path) -> None:
    out = work / "predicted"
    proc = ok("predict", str(run), *map(str, digits), "--format", "json", "--top-k", "2",
              "--out", str(out))  # fmt: skip
    rows = json.loads(proc.stdout)
    assert [Path(r["path"]).name for r in rows] == [p.name for p in digits]
    assert all(len(r["top"]) == 2 and 0 <= r["top"][0][1] <= 1 for r in rows)
    assert all("labels" not in r and r["answer"] == r["top"][0][0] for r in rows)  # multi-label's
    # --out: a classification run ignored it; now the same rows in OUT/predictions.json
    assert json.loads((out / "predictions.json").read_text()) == {"run": str(run),
                                                                  "predictions": rows}  # fmt: skip
    assert f"predictions written to {out / 'predictions.json'}" in proc.stderr
    assert_user_error(
        "predict", str(run.parent / "no-such-run"), str(digits[0]), names="no-such-run"
    )


@pytest.mark.slow
def test_explain(run: Path, digits: list[Path], work: Path) -> None:
    out = work / "explain"
    proc = ok("explain", str(run), str(digits[0]), "--out", str(out), "--json")
    numbers = json.loads(proc.stdout)
    assert numbers["trace"] and (out / "explain.html").is_file()
    assert_user_error("explain", str(run), str(work / "missing.png"), names="missing.png")


def test_explain_bad_input(run: Path, digits: list[Path]) -> None:
    assert_user_error("explain", str(run / "nope"), str(digits[0]), names=str(run / "nope"))


@pytest.mark.slow
def test_embed(run: Path, work: Path) -> None:
    out = work / "features.npz"
    ok("embed", str(run), "--split", "test", "--out", str(out))
    with np.load(out) as z:
        assert len(z["features"]) == len(z["labels"]) > 0


def test_embed_bad_input(run: Path) -> None:
    assert_user_error("embed", str(run), "--split", "nope", names="nope")


@pytest.mark.slow
def test_export(run: Path, work: Path) -> None:
    out = work / "model.safetensors"
    proc = ok("export", str(run), "--format", "safetensors", "--out", str(out))
    assert out.is_file() and "exported safetensors" in proc.stdout
    assert_user_error("export", str(run), "--format", "onnx", "--opset", "3", names="--opset")


def test_export_bad_input(run: Path) -> None:
    assert_user_error("export", str(run.parent / "gone.safetensors"), names="gone.safetensors")
    # ignored without a word by the formats that have no opset
    assert_user_error("export", str(run), "--format", "torchscript", "--opset", "17",
                      names="--opset is the ONNX opset; --format torchscript has none")  # fmt: skip


@pytest.mark.slow
def test_compare(run: Path, work: Path) -> None:
    twin = work / "tiny-twin"  # the run's test predictions in another folder: the same answers
    twin.mkdir(exist_ok=True)
    shutil.copy(run / "test_predictions.npz", twin)
    proc = ok("compare", str(run), str(twin), "--json")
    r = json.loads(proc.stdout)  # no disagreement, no difference
    assert r["difference"] == 0 and r["mcnemar"]["b"] == r["mcnemar"]["c"] == 0


def test_compare_bad_input(run: Path) -> None:
    assert_user_error("compare", str(run), str(run.parent / "gone"), names="gone")
    # a run against itself was "compared": difference +0.0000, p-value 1
    assert_user_error("compare", str(run), str(run),
                      names=["compare needs two different runs", f"{run} was given twice"])  # fmt: skip
    assert_user_error("compare", str(run), f"{run}/.",
                      names=[f"{run} and {run}/. are the same run"])  # fmt: skip


def test_compare_of_video_runs_speaks_of_clips(tmp_path: Path) -> None:
    from cnnlab import api

    rng = np.random.default_rng(0)
    targets, ids = rng.integers(0, 3, 20), np.array([f"c{i}.mp4" for i in range(20)])
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"task": "video-classification"}))
        np.savez(folder / "test_predictions.npz", probs=rng.dirichlet(np.ones(3), 20),
                 targets=targets, ids=ids)  # fmt: skip
    assert api.compare(tmp_path / "a", tmp_path / "b")["samples"] == "clips"
    (tmp_path / "b" / "run.json").unlink()  # an evaluation folder of the run: its task unknown
    (tmp_path / "a" / "run.json").write_text(json.dumps({"task": "classification"}))
    assert api.compare(tmp_path / "a", tmp_path / "b")["samples"] == "images"


def test_compare_says_which_folders_have_test_predictions(run: Path, tmp_path: Path) -> None:
    """It said "run `cnnlab evaluate` on it first" of a run without a test split (evaluate writes
    into an evaluation folder, never the run: the advice failed again) and of segmentation and
    detection runs, whose predictions compare does not pair."""
    bare = tmp_path / "no-test-split"
    bare.mkdir()
    (bare / "run.json").write_text(json.dumps({"task": "classification"}))
    assert_user_error("compare", str(run), str(bare),
                      names=["has no test_predictions.npz", "compare that folder"])  # fmt: skip
    seg = tmp_path / "seg"
    seg.mkdir()
    (seg / "run.json").write_text(json.dumps({"task": "segmentation"}))
    assert_user_error("compare", str(seg), str(run),
                      names=f"{seg} is a segmentation run: compare pairs")  # fmt: skip


@pytest.mark.slow
def test_finetune(run: Path, work: Path) -> None:
    ok(
        "finetune", "--from", str(run), "--data", "builtin:digits", "--epochs", "1",
        "--batch-size", "64", "--strategy", "linear-probe", "--no-report",
        "--out", str(work / "runs"), "--name", "ft",
    )  # fmt: skip
    assert (work / "runs" / "ft" / "checkpoints" / "best.safetensors").is_file()


def test_finetune_bad_input(work: Path) -> None:
    assert_user_error("finetune", "--from", str(work / "nothing"), "--data", "builtin:digits",
               names="nothing")  # fmt: skip


def test_serve(run: Path, digits: list[Path]) -> None:
    """Started on 127.0.0.1 and a port the system picks (--port 0); the address it announces
    answers at once (announced only once the model is loaded and the port bound); then stopped."""
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "serve", str(run), "--port", "0",
         "--max-concurrency", "1", "--max-upload-mb", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        line = OutputWatcher(server).wait_for(r"^serving .* on http://127\.0\.0\.1:", timeout=120)
        base = line.split(" on ")[-1].split("/ ")[0]  # http://127.0.0.1:PORT
        assert not base.endswith(":0"), line
        with urllib.request.urlopen(f"{base}/api/info", timeout=10) as response:
            info = json.loads(response.read())
        assert info["max_upload_bytes"] == 1_000_000 and info["max_concurrency"] == 1
        request = urllib.request.Request(
            f"{base}/api/predict",
            data=digits[0].read_bytes(),
            headers={"Content-Type": "image/png"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            top = json.loads(response.read())["top"]
        assert len(top) == 5 and abs(sum(t["probability"] for t in top) - 1) < 0.5
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert_user_error("serve", str(run), "--max-concurrency", "0", names="--max-concurrency")


# -- commands without a run ------------------------------------------------------------------------
@pytest.mark.slow
def test_models_list() -> None:
    rows = json.loads(ok("models", "list", "--json").stdout)
    assert {"lenet5", "alexnet", "resnet18"} <= {r["name"] for r in rows}


def test_models_of_each_task() -> None:
    from cnnlab.models import list_models

    for word, task in (
        ("detect", "detection"),
        ("segment", "segmentation"),
        ("video", "video-classification"),
    ):
        rows = json.loads(ok("models", "--task", word, "--json").stdout)
        assert [r["name"] for r in rows] == list_models(task) and all(
            r["description"] for r in rows
        )
    assert_user_error("models", "--task", "tracking", names=["--task", "tracking"])
    # ignored without a word: show printed a classification network (or "unknown model unet"),
    # list listed everything
    assert_user_error("models", "show", "unet", "--task", "segment",
                      names=["`cnnlab models --task segmentation`"])  # fmt: skip
    assert_user_error("models", "list", "lenet5", names="`cnnlab models show lenet5`")


def test_models() -> None:
    summary = json.loads(ok("models", "show", "lenet5", "--num-classes", "10", "--json").stdout)
    from cnnlab.models import create_model

    reference = create_model("lenet5", num_classes=10, in_channels=3)
    assert summary["params"] == sum(p.numel() for p in reference.parameters())
    assert_user_error("models", "show", "resnet19", names=["resnet19", "resnet18"])


def test_conv() -> None:
    proc = ok("conv", "--x", "1 2 3 4", "--w", "1 1", "--json")
    result = json.loads(proc.stdout)
    flat = np.ravel(result["output"]).tolist()
    assert flat == np.convolve([1, 2, 3, 4], [1, 1], mode="valid").tolist()
    assert_user_error("conv", "--x", "1 two 3", "--w", "1", names="two")
    # an example brings its own settings: others given beside it were ignored without a word
    assert_user_error("conv", "--example", "slide", "--mode", "full", "--stride", "2",
                      names=["--example slide", "drop --mode, --stride"])  # fmt: skip


def test_metrics(work: Path) -> None:
    path = work / "scores.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "score_a", "score_b"])
        w.writerows([["a", 0.9, 0.1], ["b", 0.2, 0.8], ["a", 0.4, 0.6], ["b", 0.3, 0.7]])
    metrics = json.loads(ok("metrics", str(path), "--json").stdout)
    assert metrics["accuracy"] == 0.75  # rows 1, 2, 4 right
    bad = work / "no-label.csv"
    bad.write_text("truth,score_a,score_b\na,0.5,0.5\n")
    assert_user_error("metrics", str(bad), names=["no-label.csv", "label"])
    # --threshold is the multi-label cut: on a single-label CSV it was ignored without a word
    assert_user_error("metrics", str(path), "--threshold", "0.99",
                      names=["--threshold is for multi-label CSVs", "scores.csv"])  # fmt: skip


def test_data_check(work: Path, digits: list[Path]) -> None:
    root = work / "check"
    for name, src in (("x", digits[:2]), ("y", digits[2:])):
        (root / name).mkdir(parents=True)
        for p in src:
            (root / name / p.name).write_bytes(p.read_bytes())
    report = json.loads(ok("data", "check", str(root), "--json").stdout)
    assert report["class_names"] == ["x", "y"] if "class_names" in report else report
    assert_user_error("data", "check", str(work / "no-such-folder"), names="no-such-folder")


def test_option_errors_from_the_parser_are_one_line_too(work: Path) -> None:
    """argparse's own refusals (a wrong type, a missing argument, an unknown command) follow the
    same shape: one line naming the option and the command's --help, exit 2."""
    assert_user_error(
        "serve", str(work), "--max-concurrency", "abc", names=["--max-concurrency", "abc"]
    )
    assert_user_error("predict", names=["run", "cnnlab predict --help"])
    assert_user_error("trian", names=["trian", "train"])


def test_bench() -> None:
    assert "train" in ok("bench", "list").stdout.split()
    assert_user_error("bench", "trian", names=["trian", "train"])


@pytest.mark.slow
def test_lr_find(work: Path) -> None:
    plot = work / "lr.png"
    proc = ok(
        "lr-find", "--data", "builtin:digits", "--model", "lenet5", "--batch-size", "64",
        "--steps", "8", "--plot", str(plot),
    )  # fmt: skip
    assert plot.is_file() and "lr" in proc.stdout.lower()


def test_lr_find_bad_input(tmp_path: Path) -> None:
    assert_user_error("lr-find", "--data", "builtin:digits", "--start", "1", "--end", "0.1",
               names=["start", "end"])  # fmt: skip
    # a format matplotlib cannot write: a traceback once the whole test had run
    assert_user_error("lr-find", "--data", "builtin:digits", "--plot", str(tmp_path / "lr.txt"),
                      names=["--plot", "lr.txt", "cannot write .txt", ".png"])  # fmt: skip


# -- task commands: bad input fast, training slow --------------------------------------------------
def test_segment_bad_input(work: Path) -> None:
    assert_user_error("segment", "evaluate", str(work / "no-seg-run"), names="no-seg-run")


def test_detect_bad_input(work: Path) -> None:  # said before torch is even imported
    assert_user_error("detect", "predict", str(work / "no-det-run"), "x.png", "--out", str(work / "d"),
               names="no-det-run")  # fmt: skip


def test_video_bad_input(work: Path) -> None:
    assert_user_error(
        "video", "train", "--model", "r3d_19", "--out", str(work / "v"), names="r3d_19"
    )


def test_demo_bad_input(work: Path) -> None:
    assert_user_error("demo", "--epochs", "0", "--out", str(work / "demo"), names="epochs")


def test_transfer_study_bad_input(run: Path, work: Path) -> None:
    assert_user_error(
        "transfer-study", str(run), "--data", "builtin:digits", "--strategies", "magic",
        "--out", str(work / "study"), names="magic",
    )  # fmt: skip


@pytest.mark.slow
def test_demo(work: Path) -> None:
    proc = ok("demo", "--epochs", "1", "--out", str(work / "demo-runs"))
    assert "run directory:" in proc.stdout or "report" in proc.stdout


@pytest.mark.slow
def test_transfer_study(run: Path, work: Path) -> None:
    out = work / "study-ok"
    ok(
        "transfer-study", str(run), "--data", "builtin:digits", "--shots", "5",
        "--strategies", "scratch,linear-probe", "--epochs", "1", "--batch-size", "32",
        "--out", str(out),
    )  # fmt: skip
    study = json.loads((out / "study.json").read_text())
    assert study


@pytest.mark.slow
def test_segment(work: Path, digits: list[Path]) -> None:
    runs = work / "seg-runs"
    ok(
        "segment", "train", "--data", "builtin:shapes?n=30&size=16", "--encoder", "lenet5",
        "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--precision", "32",
        "--no-report", "--out", str(runs), "--name", "seg",
    )  # fmt: skip
    metrics = json.loads(ok("segment", "evaluate", str(runs / "seg"), "--json", "--no-report",
                            "--out", str(work / "seg-eval")).stdout)  # fmt: skip
    assert 0 <= metrics["mean_iou"] <= 1
    ci = metrics["confidence_intervals"]["mean_iou"]  # --json carries the 95% interval
    assert ci["value"] == metrics["mean_iou"] and ci["low"] <= ci["value"] <= ci["high"]
    proc = ok("segment", "predict", str(runs / "seg"), str(digits[0]), "--out", str(work / "masks"))
    written = sorted(p.relative_to(work / "masks").as_posix() for p in (work / "masks").rglob("*")
                     if p.is_file() and not p.name.startswith("."))  # fmt: skip
    stem = digits[0].stem
    assert written == [f"masks/{stem}.png", f"overlays/{stem}.png", "predictions.json"], written
    # it said "wrote 1 file(s)" of these three
    said = " ".join(proc.stdout.split())
    assert (
        "wrote 1 mask(s) (masks/), their colour overlays (overlays/) and predictions.json" in said
    )


@pytest.mark.slow
def test_detect(work: Path, digits: list[Path]) -> None:
    runs = work / "det-runs"
    ok(
        "detect", "train", "--data", "builtin:shapes?n=12&size=64&objects=2", "--epochs", "1",
        "--batch-size", "4", "--val-fraction", "0", "--test-fraction", "0", "--device", "cpu",
        "--no-report", "--out", str(runs), "--name", "det",
    )  # fmt: skip
    ok("detect", "predict", str(runs / "det"), str(digits[0]), "--out", str(work / "boxes"))
    assert (work / "boxes").is_dir()


@pytest.mark.slow
def test_video(work: Path) -> None:
    runs = work / "video-runs"
    ok(
        "video", "train", "--data", "builtin:moving-shapes?n=20&frames=4&size=16&speed=0.5",
        "--model", "r3d_small", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.2",
        "--test-fraction", "0.3", "--no-report", "--out", str(runs), "--name", "vid",
    )  # fmt: skip
    proc = ok("video", "evaluate", str(runs / "vid"), "--json", "--out", str(work / "v-eval"))
    metrics = json.loads(proc.stdout)  # stdout is the JSON alone; the note goes to stderr
    assert 0 <= metrics["accuracy"] <= 1
    recorded = json.loads((work / "v-eval" / "evaluation.json").read_text())
    precision = {"32": "float32", "bf16": "bfloat16"}[recorded["precision"]]  # auto: the CPU's
    assert f"evaluated {recorded['num_samples']} samples in {precision} on cpu; results in " \
        f"{work / 'v-eval'}" in " ".join(proc.stderr.split())  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "explain", "serve"])
@pytest.mark.parametrize("value", ["0", "-2", "abc"])
def test_top_k_below_one_is_refused_by_name(tmp_path, command, value):
    """`predict --top-k 0` once printed one class as if it had been asked for (argparse's int let
    0 and -2 through and the driver clamped them to 1); refused while the command line is read."""
    args = [command, str(tmp_path)] + (["x.png"] if command != "serve" else [])
    assert_user_error(*args, f"--top-k={value}", names=["argument --top-k", f"'{value}'"])


def test_prediction_driver_refuses_top_k_below_one():
    from cnnlab.config import PreprocessSpec
    from cnnlab.engine.predict import predict_files
    from cnnlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--top-k must be a whole number >= 1, got 0"):
        spec = PreprocessSpec(image_size=8, in_channels=1, mean=(0.5,), std=(0.5,))
        predict_files(["x.png"], spec, ["a", "b"], lambda x: x, top_k=0)


def test_an_output_path_through_a_file_is_one_line_and_leaves_the_file_alone(tmp_path):
    """`--out photo.jpg/x.png` (a file where a folder must be) was NotADirectoryError's traceback;
    every command that writes now says the path in one line, exit 2, and the file is untouched."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 the user's photo")
    line = assert_user_error(
        "conv", "--x", "1 2; 3 4", "--w", "1 1; 1 1", "--out", str(photo / "x.png"),
        names=[str(photo), "a file is where a folder is needed"],  # conv makes --out's folder
    )  # fmt: skip
    assert "give another path or move the file" in line
    assert photo.read_bytes() == b"\xff\xd8 the user's photo"


@pytest.mark.slow
def test_explain_and_export_into_a_file_are_one_line_errors(
    run: Path, digits: list[Path], tmp_path
):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 the user's photo")
    assert_user_error(  # explain makes RUN/.../figures under --out: the file is in the way
        "explain", str(run), str(digits[0]), "--out", str(photo),
        names=[str(photo), "a part of this path is a file, not a folder"],
    )  # fmt: skip
    assert_user_error(
        "export", str(run), "--out", str(photo / "model.onnx"),
        names=[str(photo), "a file is where a folder is needed"],
    )  # fmt: skip
    assert photo.read_bytes() == b"\xff\xd8 the user's photo"


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        (["--batchsize", "8"], "--batch-size"),  # a typo: the closest flag
        (["--learning-rate=0.1"], "--lr"),  # another toolkit's name: cnnlab's first
        (["--imgsz", "32"], "--image-size"),
    ],
)
def test_an_unknown_flag_is_answered_by_its_command_with_the_closest_flags(tmp_path, given, meant):
    """argparse answered `unrecognized arguments: --batchsize 8 (see cnnlab --help)`: no hint,
    and the top-level help, which lists no option of train."""
    line = assert_user_error(
        "train", "--data", str(tmp_path), *given, names=[f"(did you mean: {meant}", "train --help"]
    )
    assert line.startswith(f"error: unknown option {given[0]}")


def test_unknown_words_that_are_not_flags_keep_argparses_message(tmp_path):
    assert_user_error(
        "explain", str(tmp_path), "a.png", "b.png",
        names=["unrecognized arguments: b.png", "cnnlab explain --help"],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "meant"),
    [
        (["export", "RUN", "--format", "onyx"], "'onyx' (did you mean: onnx?)"),
        (["predict", "RUN", "x.png", "--format", "jsn"], "'jsn' (did you mean: json?)"),
        (["trian"], "'trian' (did you mean: train"),  # a command name is a choice too
    ],
)
def test_an_invalid_choice_gets_the_close_match(args, meant):
    """argparse's `invalid choice: 'onyx' (choose from ...)` came without the hint every other
    unknown name in cnnlab gets."""
    assert_user_error(*args, names=[f"invalid choice: {meant}", "(choose from "])


def test_lr_find_offers_no_run_options_it_would_ignore():
    """lr-find writes no run folder, trains no epochs and tracks nothing: --out, --epochs, --lr ...
    were accepted and silently did nothing (`--out runs/x`, the plot went to --plot)."""
    for flag in ("--out", "--name", "--resume", "--epochs", "--lr", "--track", "--keep"):
        line = assert_user_error("lr-find", flag, "x", names=[f"unknown option {flag}"])
        assert "lr-find --help" in line


def test_config_errors_name_the_flag_the_user_typed():
    """The config speaks of its fields (Python callers pass keywords); on the command line the same
    error names the flag: "option --image-size", "leave --mixup-alpha out"."""
    from cnnlab.config import TrainConfig, make_config
    from cnnlab.errors import ConfigError

    assert_user_error("train", "--data", "builtin:digits", "--image-size", "4",
                      names="option --image-size must be >= 16 pixels")  # fmt: skip
    line = assert_user_error("train", "--data", "builtin:digits", "--mixup-alpha", "0.2",
                             names="option --mixup-alpha=0.2 acts only")  # fmt: skip
    assert line.endswith("or leave --mixup-alpha out")
    # a keyword suggested as a Python caller writes it: the flag on the command line
    assert_user_error("models", "show", "resnet18", "--image-size", "4",
                      names="(e.g. --image-size 32)")  # fmt: skip
    assert_user_error("conv", "--x", "1 2", "--w", "1 2 3", names="use --mode full or")
    with pytest.raises(ConfigError, match="^option image_size must be >= 16"):
        make_config(TrainConfig, image_size=4)  # Python: the keyword
