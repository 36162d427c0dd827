"""Video classification (cnnlab.video.train / models): tiny real trainings checked against
independent references (scikit-learn's accuracy, NumPy smoothing, SciPy's KS test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scipy.stats import ks_2samp
from sklearn.metrics import accuracy_score
from torch import Tensor

from cnnlab.engine.devices import tolerance
from cnnlab.engine.trainer import autocast
from cnnlab.errors import ConfigError, DataError
from cnnlab.video.io import write_video
from cnnlab.video.models import TORCHVISION_3D, create_video_model, smooth_frame_probs
from cnnlab.video.synthetic import make_moving_shapes, write_video_folder
from cnnlab.video.train import evaluate_video, predict_clips, train_video

TINY = "builtin:moving-shapes?n=20&frames=4&size=16&speed=0.5"
FAST = {"epochs": 1, "batch_size": 4, "val_fraction": 0.2, "test_fraction": 0.3, "report": False}


def _numbers(d, prefix=""):
    """Every numeric leaf of nested metrics, by path."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out |= _numbers(v, f"{prefix}/{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out |= _numbers(v, f"{prefix}/{i}")
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = float(d)
    return out


def _same_metrics(a: dict, b: dict) -> None:
    na, nb = _numbers(a), _numbers(b)
    assert na.keys() == nb.keys()
    for k in na:
        assert na[k] == pytest.approx(nb[k], abs=1e-12, nan_ok=True), k


def _checkpoint_meta(run_dir: Path) -> dict:
    manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text())
    with safe_open(str(run_dir / "checkpoints" / manifest["best"]["file"]), "pt") as f:
        return {k: json.loads(v) for k, v in f.metadata().items()}


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory):
    """One tiny r3d_small run shared by the tests that only read it."""
    return train_video(data=TINY, model="r3d_small", out=str(tmp_path_factory.mktemp("v")), **FAST)


@pytest.mark.parametrize("model", ["r3d_small", "lenet5"])
def test_train_then_evaluate_reproduces_test_metrics(tmp_path, model, request, run_digests):
    if model == "r3d_small":
        run = request.getfixturevalue("run_3d")
    else:
        run = train_video(data=TINY, model=model, out=str(tmp_path), **FAST)
    assert (run.run_dir / "metrics.csv").is_file()
    meta = _checkpoint_meta(run.run_dir)
    assert meta["task"] == "video-classification" and meta["frames"] == 4
    assert meta["class_names"] == ["left", "right"]
    before = run_digests(run.run_dir)
    ev = evaluate_video(run.run_dir, report=False)
    _same_metrics(run.test_metrics, ev["metrics"])
    assert run_digests(run.run_dir) == before
    # the accuracy is scikit-learn's on the same predictions, saved beside the metrics
    saved = np.load(run.run_dir / "test_predictions.npz")
    assert accuracy_score(saved["targets"], saved["probs"].argmax(1)) == pytest.approx(
        ev["metrics"]["accuracy"], abs=1e-12
    )
    assert np.array_equal(saved["targets"], ev["targets"])
    assert len(ev["targets"]) == 6  # 30% of 20 clips, stratified
    if model == "lenet5":  # a clip's probabilities are the mean of its frames' (NumPy reference)
        net, _, _ = __import__("cnnlab.video.train", fromlist=["x"]).load_video_model(run.run_dir)
        clip = np.random.default_rng(0).integers(0, 256, (1, 4, 16, 16, 3), dtype=np.uint8)
        frame_probs = predict_clips(run.run_dir, clip[0], device="cpu")
        assert frame_probs["window"] == 1 and frame_probs["probs"].shape == (4, 2)
        x = torch.from_numpy(clip).permute(0, 4, 1, 2, 3).float()  # (1, C, T, H, W)
        with torch.no_grad():
            clip_probs = net(x).softmax(1).numpy()
            per_frame = net(x[0].transpose(0, 1)).softmax(1).numpy()
        np.testing.assert_allclose(clip_probs[0], per_frame.mean(0), atol=1e-6)


def test_predict_clips_slides_the_run_window(run_3d):
    run = run_3d
    frames = make_moving_shapes(n=1, frames=11, size=16, speed=0.5).clips[0]
    out = predict_clips(run.run_dir, frames, stride=2, device="cpu")
    assert out["window"] == 4 and out["step"] == 1
    assert out["starts"].tolist() == [0, 2, 4, 6]  # windows 0-3, 2-5, 4-7, 6-9 of 11 frames
    assert out["probs"].shape == (4, 2)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-6)
    # window 2 is exactly the model on frames 4..7 (input through the same preprocessing)
    from cnnlab.video.train import clip_spec, load_video_model

    model, meta, _ = load_video_model(run.run_dir)
    spec = clip_spec(__import__("cnnlab.config", fromlist=["x"]).PreprocessSpec.from_dict(
        meta["preprocess"]), 4)  # fmt: skip
    x = torch.from_numpy(frames[4:8]).permute(0, 3, 1, 2).reshape(1, 12, 16, 16).float() / 255
    x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(out["probs"][2], model(x).softmax(1)[0].numpy(), atol=1e-5)


def test_folder_of_videos_with_corrupt_and_truncated_files(tmp_path):
    root = tmp_path / "videos"
    write_video_folder(make_moving_shapes(n=14, frames=4, size=16, speed=0.5), root)
    good = sorted(root.rglob("*.mp4"))[0].read_bytes()
    (root / "left" / "corrupt.mp4").write_bytes(b"<html>404 not found</html>" * 20)
    (root / "right" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "right" / ".DS_Store").write_bytes(b"x")  # hidden: ignored, never a video
    # handled and said: a phone-style rotation flag, and a variable frame rate
    extra = make_moving_shapes(n=2, frames=6, size=16, speed=0.5, seed=9)
    write_video(root / "left" / "rotated.mp4", extra.clips[0], rotation=90)
    times = np.array([0.0, 0.04, 0.08, 0.3, 0.34, 0.7])  # seconds: gaps of 40 to 360 ms
    write_video(root / "right" / "vfr.mp4", extra.clips[1], times=times)
    # 2 bad of 18 = 11%: refused at the default 10%, with the files named
    with pytest.raises(DataError) as err:
        train_video(data=str(root), model="lenet5", out=str(tmp_path / "runs"), **FAST)
    assert "corrupt.mp4" in str(err.value) and "truncated.mp4" in str(err.value)
    assert not (tmp_path / "runs").exists()  # nothing written for a refused dataset
    run = train_video(data=str(root), model="lenet5", max_bad_fraction=0.2,
                      out=str(tmp_path / "runs"), **FAST)  # fmt: skip
    report = json.loads((run.run_dir / "data_report.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"corrupt.mp4", "truncated.mp4"}
    assert all("not a readable video" in why or "corrupt" in why for why in skipped.values())
    assert report["counts"]["usable"] == 16 and report["counts"]["bad"] == 2
    notes = " ".join(report["notes"])
    assert "rotated.mp4: rotation metadata of" in notes and "vfr.mp4: variable frame rate" in notes
    splits = json.loads((run.run_dir / "splits.json").read_text())["splits"]
    assert all(not sid.startswith("/") and sid.endswith(".mp4") for sid in splits["test"])
    ev = evaluate_video(run.run_dir, report=False)  # the test videos decoded again
    _same_metrics(run.test_metrics, ev["metrics"])
    # evaluate --data judges the bad videos as training does, with the same two options
    with pytest.raises(DataError, match=r"2 of 18 video files unusable \(11.1%, limit 10%"):
        evaluate_video(run.run_dir, data=str(root), report=False)
    with pytest.raises(DataError, match=r"2 of 18 video files unusable \(11.1%, strict mode\)"):
        evaluate_video(run.run_dir, data=str(root), report=False, max_bad_fraction=0.2,
                       strict=True)  # fmt: skip
    ev = evaluate_video(run.run_dir, data=str(root), report=False, max_bad_fraction=0.2)
    assert ev["num_samples"] == 16


def test_evaluate_skips_an_undecodable_video_of_the_recorded_split(tmp_path, caplog):
    """`video evaluate RUN` on its own split: a recorded video that can no longer be decoded is
    judged as training judges it (the run's options unless given): skipped, said, listed in
    data_report, the rest evaluated; refused above the limit or with strict."""
    root = tmp_path / "videos"
    write_video_folder(make_moving_shapes(n=12, frames=4, size=16, speed=0.5), root)
    run = train_video(data=str(root), model="lenet5", frames=4, max_bad_fraction=0.5,
                      out=str(tmp_path / "runs"), **FAST)  # fmt: skip
    saved = dict(np.load(run.run_dir / "test_predictions.npz"))
    test_ids = [str(i) for i in saved["ids"]]
    assert len(test_ids) >= 3
    bad = test_ids[1]
    (root / bad).write_bytes(b"\x00garbage, not a video\xff" * 40)
    # the run's own limit (50%) allows 1 of the test videos: the others are evaluated
    with caplog.at_level("WARNING", logger="cnnlab"):
        ev = evaluate_video(run.run_dir, report=False, out=tmp_path / "ev")
    said = [r.getMessage() for r in caplog.records if Path(bad).name in r.getMessage()]
    assert len(said) == 1 and "1 bad video files skipped" in said[0]  # said once
    assert ev["num_samples"] == len(test_ids) - 1
    skipped = ev["data_report"]["skipped"]
    assert [s["path"] for s in skipped] == [str(root / bad)] and skipped[0]["reason"]
    keep = [i for i, sid in enumerate(test_ids) if sid != bad]
    # the same clips through the same model as at the end of training, targets kept aligned
    assert np.array_equal(ev["targets"], saved["targets"][keep])
    np.testing.assert_allclose(ev["probs"], saved["probs"][keep], atol=1e-6)
    got = np.load(tmp_path / "ev" / "test_predictions.npz")
    assert [str(i) for i in got["ids"]] == [test_ids[i] for i in keep]
    assert accuracy_score(ev["targets"], ev["probs"].argmax(1)) == pytest.approx(
        ev["metrics"]["accuracy"], abs=1e-12
    )
    # given options override the run's: strict refuses any, a limit of 0 refuses one
    with pytest.raises(DataError, match=r"1 of \d+ video files unusable \(.*strict mode\)") as err:
        evaluate_video(run.run_dir, report=False, strict=True)
    assert Path(bad).name in str(err.value) and str(root) in str(err.value)
    with pytest.raises(DataError, match=r"1 of \d+ video files unusable \(.*limit 0%") as err:
        evaluate_video(run.run_dir, report=False, max_bad_fraction=0.0)
    assert Path(bad).name in str(err.value)
    # a recorded video that is gone stays an error
    (root / bad).unlink()
    with pytest.raises(DataError, match="gone") as err:
        evaluate_video(run.run_dir, report=False)
    assert f"(first: {root / bad});" in str(err.value)  # the path, not a Python list of it


def test_a_video_shorter_than_the_clip_is_said(tmp_path):
    """A video with fewer frames than --frames is kept (even_indices repeats frames) but said: a
    warning, data_report.json's notes and the file's own record name it and the counts."""
    from cnnlab.tasks.configs import VideoConfig
    from cnnlab.video.train import _folder_clips

    root = tmp_path / "videos"
    write_video_folder(make_moving_shapes(n=4, frames=6, size=16, speed=0.5), root)
    short = make_moving_shapes(n=1, frames=3, size=16, speed=0.5, seed=4)
    write_video(root / "left" / "short.mp4", short.clips[0])
    data = _folder_clips(VideoConfig(data=str(root), frames=6, image_size=16))
    assert data.clips.shape[:2] == (5, 6)
    notes = data.report["notes"]
    assert [n for n in notes if "fewer than --frames" in n] == [
        f"{root / 'left' / 'short.mp4'}: 3 frame(s), fewer than --frames 6: frames repeated to "
        "fill the clip (lower --frames or use a longer video)"
    ]
    record = next(f for f in data.report["files"] if f["path"].endswith("short.mp4"))
    assert any("fewer than --frames 6" in n for n in record["notes"])
    kept = data.ids.index(str(Path("left") / "short.mp4"))
    distinct = {data.clips[kept, t].tobytes() for t in range(6)}
    assert len(distinct) <= 3  # the 3 frames, repeated


def test_a_one_class_video_folder_is_refused_naming_the_class(tmp_path):
    """bad-inputs #64: six clips in one class folder trained and reported accuracy 1.0; now
    refused as image classification refuses it (data.sources.check_two_classes), nothing written."""
    root = tmp_path / "videos"
    write_video_folder(make_moving_shapes(n=6, frames=4, size=16, speed=0.5), root)
    (root / "only").mkdir()
    for path in sorted(root.rglob("*.mp4")):
        path.rename(root / "only" / path.name)
    for folder in ("left", "right"):
        for f in (root / folder).iterdir():
            f.unlink()
        (root / folder).rmdir()
    with pytest.raises(DataError, match=r"needs at least 2 classes, found 1: 'only' \(6 videos\)"):
        train_video(data=str(root), model="r3d_small", frames=4, image_size=16,
                    out=str(tmp_path / "runs"), **FAST)  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_builtin_clips_shorter_than_frames_are_said_as_short_files_are(tmp_path, caplog):
    """--frames 8 over a builtin of 4-frame clips repeated frames without a word (docs/video.md
    promises a warning and a note, as for a short video file)."""
    from cnnlab.tasks.configs import VideoConfig
    from cnnlab.video.train import load_clips

    with caplog.at_level("WARNING", logger="cnnlab"):
        data = load_clips(VideoConfig(data=TINY, frames=8))
    said = (f"{TINY}: 4 frame(s) per clip, fewer than --frames 8: frames repeated to fill the "
            "clip (lower --frames or raise the source's frames=)")  # fmt: skip
    assert data.clips.shape[1] == 8 and data.report["notes"] == [said]
    assert [r.getMessage() for r in caplog.records] == [said]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cnnlab"):  # as many frames as the clips: nothing said
        assert load_clips(VideoConfig(data=TINY, frames=4)).report["notes"] == []
    assert not caplog.records


def test_smoothing_is_refused_for_a_3d_model(tmp_path):
    """--smoothing scores a clip from a 2D model's frames; with r3d_small (a clip model) it was
    accepted and recorded, changing nothing. Refused before anything is decoded or written."""
    with pytest.raises(ConfigError, match="option smoothing 'majority' has no effect on the 3D"):
        train_video(data=TINY, model="r3d_small", smoothing="majority",
                    out=str(tmp_path / "runs"), **FAST)  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_unknown_model_and_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean: r3d_18"):
        train_video(data=TINY, model="r3d_19", out=str(tmp_path))
    with pytest.raises(ConfigError, match="did you mean: resnet18"):
        create_video_model("resnet81", num_classes=2, frames=4, image_size=16)
    with pytest.raises(ConfigError, match="kinetics"):
        create_video_model("lenet5", num_classes=2, frames=4, image_size=16, weights="kinetics")
    with pytest.raises(ConfigError, match="frames"):
        train_video(data=TINY, frames=1, out=str(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "name", ["r3d_small", *(pytest.param(n, marks=pytest.mark.slow) for n in TORCHVISION_3D)]
)
def test_3d_models_take_tiny_clips_in_both_layouts(name):
    torch.manual_seed(0)
    model = create_video_model(name, num_classes=3, frames=4, image_size=16).eval()
    clips = torch.randn(2, 3, 4, 16, 16)  # (N, C, T, H, W): adaptive pooling handles 4 x 16 x 16
    stacked = clips.transpose(1, 2).reshape(2, 12, 16, 16)  # frames on the channel axis
    with torch.no_grad():
        a, b = model(clips), model(stacked)
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b)
    # the order of frames matters to a 3D CNN (reversed motion is a different input)
    with torch.no_grad():
        assert not torch.allclose(model(clips.flip(2)), a)


@pytest.mark.parametrize("frames", [4, 8])  # 2 frames left in layer2 (4) or layer3 (8)
def test_r3d_small_bf16_training_step_matches_fp32(frames):
    """One training step under CPU bf16 autocast: finite, and the same step as in float32 up to
    bf16 rounding. oneDNN's bf16 conv3d weight gradient is garbage (NaN, 1e36, or a cosine of
    0.01-0.77 to float32's) where fewer frames than the kernel's depth reach a conv (2 under
    3x3x3); ShortClipConv3d computes those in float32. The fixed step measured >= 0.97 cosine."""
    torch.manual_seed(0)
    model = create_video_model("r3d_small", num_classes=2, frames=frames, image_size=16).train()
    clips = torch.randn(8, 3 * frames, 16, 16)
    targets = torch.tensor([0, 1] * 4)

    def step(precision: str) -> tuple[Tensor, dict[str, Tensor]]:
        model.zero_grad()
        with autocast(torch.device("cpu"), precision):
            logits = model(clips)
            loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        grads = {n: p.grad.double() for n, p in model.named_parameters()}
        return logits.detach().float().softmax(1), grads

    probs_32, grads_32 = step("32")
    probs_16, grads_16 = step("bf16")
    assert all(torch.isfinite(g).all() for g in grads_16.values())
    assert (probs_16 - probs_32).abs().max() <= tolerance("bf16")
    for name, grad in grads_16.items():
        if grad.ndim == 5:  # the conv3d kernels
            cosine = torch.nn.functional.cosine_similarity(
                grad.flatten(), grads_32[name].flatten(), 0
            )
            assert cosine > 0.9, (name, cosine.item())


def test_kinetics_weights_load_into_r3d_18_or_fail_clearly(monkeypatch):
    """torchvision's KINETICS400_V1 state dict goes in unchanged except the new 2-class head;
    offline, the error names the URL and what to do. (The download itself is stubbed.)"""
    import urllib.error

    import torchvision

    from cnnlab.errors import CheckpointError
    from cnnlab.video.models import KINETICS_MEAN

    torch.manual_seed(0)
    source = torchvision.models.video.r3d_18(num_classes=400).state_dict()
    enum = torchvision.models.video.R3D_18_Weights.KINETICS400_V1
    monkeypatch.setattr(type(enum), "get_state_dict", lambda self, **kw: source)
    model = create_video_model("r3d_18", num_classes=2, frames=4, image_size=16, weights="kinetics")
    mine = model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert model.fc.out_features == 2 and model.default_cfg["mean"] == KINETICS_MEAN
    clips = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():  # adaptive pooling: 4 frames of 16 x 16 px are enough
        out = model.eval()(clips)
        torch.testing.assert_close(out, model(clips.transpose(1, 2).reshape(2, 12, 16, 16)))
    assert out.shape == (2, 2)

    def offline(self, **kw):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(type(enum), "get_state_dict", offline)
    with pytest.raises(CheckpointError, match="could not download the Kinetics-400 weights"):
        create_video_model("r3d_18", num_classes=2, frames=4, image_size=16, weights="kinetics")
    with pytest.raises(ConfigError, match="no published weights"):
        create_video_model("r3d_small", num_classes=2, frames=4, image_size=16, weights="kinetics")


@pytest.mark.parametrize(
    "words",
    [
        ("video", "train", "--model", "r3d_small", "--weights", "kinetics"),
        ("video", "train", "--model", "r3d_18", "--weights", "imagenet"),
        ("train", "--data", "builtin:digits", "--model", "lenet5", "--weights", "imagenet"),
    ],
)
def test_a_weights_refusal_speaks_the_commands_flags(words: tuple[str, ...], tmp_path) -> None:
    """The refusals said "use weights=None", a Python keyword a `cnnlab ... train` user cannot
    type; they say "leave --weights out" on the command line (bad-inputs 65: a suggested flag is
    one the command has), nothing is written."""
    from cli_process import in_process

    done = in_process(*words, "--epochs", "1", "--out", str(tmp_path / "runs"))
    line = " ".join(done.stderr.split())
    assert done.returncode == 2 and line.startswith("error: "), done.stderr
    assert "leave --weights out" in line and "weights=" not in line, line
    assert not (tmp_path / "runs").exists()


def test_smoothing_against_numpy():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=(50, 5))  # (N, T, K)
    t = torch.from_numpy(probs)
    np.testing.assert_allclose(smooth_frame_probs(t, "mean").numpy(), probs.mean(1))
    majority = smooth_frame_probs(t, "majority").numpy()
    votes = np.stack([np.bincount(p.argmax(1), minlength=3) for p in probs]) / 5
    np.testing.assert_allclose(majority, votes, atol=1e-5)
    np.testing.assert_allclose(majority.sum(1), 1.0)
    # a tie (2 frames each) goes to the class with the larger mean probability
    tie = torch.tensor([[[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.45, 0.55]]])
    assert smooth_frame_probs(tie, "majority").argmax(1).item() == 1  # means 0.4375 vs 0.5625


def test_moving_shapes_frames_say_nothing_and_motion_says_everything():
    ds = make_moving_shapes(n=300, frames=8, size=32, directions=2, seed=3)
    rng = np.random.default_rng(0)
    centres, moves = [], []
    for boxes in ds.boxes:
        t = rng.integers(len(boxes))  # one random frame per clip: independent samples
        centres.append((boxes[t][0, 0] + boxes[t][0, 2]) / 2)
        first, last = boxes[0][0], boxes[-1][0]
        moves.append(((last[0] + last[2]) - (first[0] + first[2])) / 2)
    centres, moves = np.asarray(centres), np.asarray(moves)
    left, right = ds.targets == 0, ds.targets == 1
    assert ds.class_names == ["left", "right"] and left.sum() > 100 and right.sum() > 100
    assert ks_2samp(centres[left], centres[right]).pvalue > 0.01
    assert (moves[left] < 0).all() and (moves[right] > 0).all()


def test_cli_bad_option_prints_one_line_and_exits_2(tmp_path, capsys):
    from cnnlab.cli import main

    assert main(["video", "train", "--model", "r3d_19", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "r3d_18" in err and len(err.splitlines()) == 1
    assert main(["video", "train", "--epochs", "zero", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochs" in err and len(err.splitlines()) == 1


def _first_batch(model: str, **options) -> Tensor:
    """The first training batch (clips, or frames for a 2D model) that video train's loader makes
    for these options, from the task's own prepare (what `cnnlab video train` runs)."""
    from cnnlab.engine.distributed import DistInfo
    from cnnlab.engine.timing import Timings
    from cnnlab.tasks.configs import VideoConfig
    from cnnlab.video.train import _prepare

    cfg = VideoConfig(data=TINY, model=model, batch_size=4, seed=3, **options)
    cpu = torch.device("cpu")
    plan = _prepare(cfg, DistInfo(), cpu, None, Timings())
    train_loader, _ = plan.loaders(cpu, False, DistInfo())
    return next(iter(train_loader.batches(0)))[0]


@pytest.mark.parametrize("model", ["r3d_small", "lenet5"])
def test_erasing_prob_reaches_the_video_loader(model):
    """erasing_prob=1 erases one box in every clip (the same box through all its frames and
    channels: 0, the mean after normalising); 0 erases none (the batch equals one without
    erasing: erasing draws after crop, so the crops are the same)."""
    plain = _first_batch(model, augment=("crop",))
    none = _first_batch(model, augment=("crop", "erasing"), erasing_prob=0.0)
    every = _first_batch(model, augment=("crop", "erasing"), erasing_prob=1.0)
    assert torch.equal(none, plain)
    changed = every != plain  # (N, T*C, S, S): the erased pixels (a zero pixel can stay zero)
    box = (every == 0).all(1)  # (N, S, S): zero in every frame and channel
    for n in range(every.shape[0]):
        assert changed[n].any(), f"clip {n} was not erased"
        assert box[n][changed[n].any(0)].all()  # every changed pixel is in the all-zero box
        rows, cols = box[n].any(1).nonzero(), box[n].any(0).nonzero()
        assert box[n].sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def _targets(**options) -> Tensor:
    from cnnlab.engine.distributed import DistInfo
    from cnnlab.engine.timing import Timings
    from cnnlab.tasks.configs import VideoConfig
    from cnnlab.video.train import _prepare

    cfg = VideoConfig(data=TINY, batch_size=4, seed=3, **options)
    plan = _prepare(cfg, DistInfo(), torch.device("cpu"), None, Timings())
    return next(iter(plan.loaders(torch.device("cpu"), False, DistInfo())[0].batches(0)))[1]


def test_mixup_alpha_reaches_the_video_loader():
    """MixUp's lam ~ Beta(alpha, alpha): a tiny alpha puts lam near 0 or 1 (targets near one-hot),
    a large one near 1/2; the clips' soft targets (N, K) show which alpha the loader drew with
    (a clip mixed with one of its own class keeps a one-hot target whatever lam)."""
    near_hot = _targets(augment=("mixup",), mixup_alpha=0.01).max(1).values
    near_half = _targets(augment=("mixup",), mixup_alpha=100.0).max(1).values
    mixed = near_half < 1  # pairs of two classes (seeded: 2 of this batch's 4)
    assert mixed.any() and (near_hot > 0.95).all()
    assert ((near_half[mixed] - 0.5).abs() < 0.1).all()


MESSAGES = [
    (["--erasing-prob", "1.5"], "option --erasing-prob must be in [0, 1], got 1.5"),
    (["--mixup-alpha", "0"], "option --mixup-alpha must be a number > 0"),
    (
        ["--cutmix-alpha", "0.5"],
        "option --cutmix-alpha=0.5 acts only on augmentation 'cutmix', which this run does not "
        "use; turn it on with --augment cutmix, or leave --cutmix-alpha out",
    ),
]


@pytest.mark.parametrize(("args", "message"), MESSAGES)
def test_video_strength_errors_are_one_line(tmp_path, capsys, args, message):
    from cnnlab.cli import main

    assert main(["video", "train", "--data", TINY, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # a fresh interpreter importing torch: ~3 s
def test_video_strength_error_is_one_line_in_a_subprocess(tmp_path):
    import subprocess
    import sys

    args, message = MESSAGES[2]
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", "video", "train", "--data", TINY, *args,
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.splitlines() == [f"error: {message}"], err
    assert not any(tmp_path.iterdir())


def test_the_report_names_a_video_runs_augmentations_with_their_strengths(tmp_path):
    """run.json records video --augment (the Plan's record), and the report's header reads the
    strengths beside them from config.json, as for an image run."""
    from cnnlab.engine.distributed import DistInfo
    from cnnlab.engine.timing import Timings
    from cnnlab.report.header import run_facts
    from cnnlab.tasks.configs import VideoConfig
    from cnnlab.video.train import _prepare

    cfg = VideoConfig(data=TINY, batch_size=4, augment=("crop", "erasing", "mixup"),
                      erasing_prob=0.5, mixup_alpha=0.3)  # fmt: skip
    plan = _prepare(cfg, DistInfo(), torch.device("cpu"), None, Timings())
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "run.json").write_text(json.dumps(plan.record))
    assert run_facts(tmp_path)["augmentation"] == "crop, erasing (p 0.5), mixup (alpha 0.3)"
