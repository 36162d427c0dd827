"""Video prediction and tracking: smoothing, events, MOT metrics, ByteTrack, line counting, the
video decoding policy as seen by `predict_video`, and end-to-end runs.

References are independent of the code under test: np.convolve and scipy.stats.mode for smoothing,
hand-worked MOT counts, motmetrics' own MOT reader, hand-made trajectories for line crossing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cnnlab.errors import ConfigError, DataError
from cnnlab.video.io import iter_frames, probe, read_video, write_video
from cnnlab.video.predict import (
    VideoPredictConfig,
    find_events,
    predict_video,
    smooth_probs,
    windowed_mean,
)
from cnnlab.video.synthetic import make_moving_shapes, write_video_folder
from cnnlab.video.tracking import (
    FrameTracks,
    LineCounter,
    MOTTable,
    mot_metrics,
    read_mot,
    track_detections,
    tracks_to_mot,
    write_mot,
)


# -- smoothing and events --------------------------------------------------------------------------
def _reference_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average with the window shrunk at the ends, via np.convolve."""
    kernel = np.ones(window)
    count = np.convolve(np.ones(len(x)), kernel, mode="same")
    return np.stack(
        [np.convolve(x[:, c], kernel, mode="same") / count for c in range(x.shape[1])], 1
    )


@pytest.mark.parametrize("window", [1, 3, 5, 9])
def test_mean_smoothing_equals_convolution(window):
    rng = np.random.default_rng(window)
    probs = rng.dirichlet(np.ones(4), size=37)
    got = smooth_probs(probs, "mean", window)
    np.testing.assert_allclose(got, _reference_mean(probs, window), atol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)  # still probabilities
    np.testing.assert_array_equal(smooth_probs(probs, "none", window), probs)


@pytest.mark.parametrize("window", [3, 5, 9])
def test_majority_smoothing_equals_scipy_mode(window):
    rng = np.random.default_rng(100 + window)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=50)
    labels = probs.argmax(1)
    got = smooth_probs(probs, "majority", window)
    h = window // 2
    for t in range(len(labels)):
        win = labels[max(0, t - h) : t + h + 1]
        mode = stats.mode(win, keepdims=False)
        assert got[t].argmax() == mode.mode  # ties: the lower class in both
        assert got[t, mode.mode] == pytest.approx(mode.count / len(win))


def test_windowed_mean_is_flat_on_constant_input():
    # Edges are averaged over the frames that exist, not pulled towards 0 by padding.
    np.testing.assert_allclose(windowed_mean(np.full((6, 2), 0.7), 5), 0.7)


def test_events_on_hand_worked_sequence():
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, -1, -1, 2, 2, 2])
    assert find_events(labels, 3) == [(0, 0, 2), (0, 5, 8), (2, 11, 13)]
    assert find_events(labels, 4) == [(0, 5, 8)]
    assert find_events(labels, 1)[1] == (1, 3, 4)  # -1 ("nothing") never forms an event
    assert find_events(np.array([], dtype=int), 1) == []


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="line expects 4 numbers"):
        VideoPredictConfig(line=("1", "2", "3"))
    with pytest.raises(ConfigError, match="did you mean: majority"):
        VideoPredictConfig(smoothing="majorty")
    with pytest.raises(ConfigError, match="window must be odd"):
        VideoPredictConfig(window=4)
    with pytest.raises(ConfigError, match="did you mean: min_iou"):
        VideoPredictConfig(tracker={"min_io": 0.2})
    assert VideoPredictConfig(line="0,1.5,10,20").line == (0.0, 1.5, 10.0, 20.0)


# -- MOT metrics on a hand-worked case -------------------------------------------------------------
def _table(rows):
    a = np.asarray(rows, dtype=np.float64)  # frame, id, x0, y0, x1, y1
    n = len(a)
    return MOTTable(a[:, 0].astype(int), a[:, 1].astype(int), a[:, 2:6], np.ones(n), np.full(n, -1))


def test_mot_metrics_hand_worked():
    A, B = [0, 0, 10, 10], [50, 50, 60, 60]
    gt = _table([[f, 1, *A] for f in range(1, 5)] + [[f, 2, *B] for f in range(1, 5)])
    hyp = _table([
        [1, 7, 1, 0, 11, 10],  # A, IoU 90/110: a match at distance 1 - 9/11
        [2, 7, *A], [3, 7, *A],
        [4, 7, 6, 0, 16, 10],  # IoU 40/160 = 0.25 < 0.5: a miss of A and a false positive
        [1, 8, *B], [2, 8, *B],  # B on frame 3: missed
        [4, 9, *B],  # B again, by another id: an id switch
        [2, 10, 100, 100, 110, 110],  # nothing there: a false positive
    ])  # fmt: skip
    m = mot_metrics(gt, hyp, iou_threshold=0.5)
    assert (m["false_negatives"], m["false_positives"], m["id_switches"]) == (2, 2, 1)
    assert m["num_objects"] == 8 and m["num_frames"] == 4 and m["num_predictions"] == 8
    assert m["mota"] == pytest.approx(1 - (2 + 2 + 1) / 8)
    # 6 matched pairs, one at distance 1 - 90/110, the others exact.
    assert m["motp"] == pytest.approx((1 - 90 / 110) / 6)
    # Identity: GT 1 <-> 7 (3 frames), GT 2 <-> 8 (2 frames): IDTP 5 of 8 GT and 8 predicted boxes.
    assert m["idf1"] == pytest.approx(2 * 5 / (8 + 8))
    assert m["idp"] == pytest.approx(5 / 8) and m["idr"] == pytest.approx(5 / 8)
    # A looser threshold turns the frame-4 box of A into a match: one miss and one FP fewer.
    loose = mot_metrics(gt, hyp, iou_threshold=0.2)
    assert (loose["false_negatives"], loose["false_positives"]) == (1, 1)
    # Only frames 1-2 evaluated: the frame-2 false positive remains.
    part = mot_metrics(gt, hyp, frames=[1, 2])
    assert (part["num_frames"], part["false_positives"], part["false_negatives"]) == (2, 1, 0)


@pytest.mark.filterwarnings(
    "ignore:Operation with tuple is deprecated"
)  # motmetrics.io on pandas 3
def test_mot_files_round_trip_and_agree_with_motmetrics_reader(tmp_path):
    import motmetrics as mm

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (12, 2))
    boxes = np.column_stack([xy, xy + rng.uniform(5, 20, (12, 2))])
    frames, ids = np.repeat(np.arange(1, 5), 3), np.tile([1, 2, 3], 4)
    path = write_mot(tmp_path / "t.txt", frames, ids, boxes, rng.uniform(0, 1, 12), np.full(12, 2))
    table = read_mot(path)
    np.testing.assert_array_equal(table.frames, frames)
    np.testing.assert_array_equal(table.ids, ids)
    np.testing.assert_allclose(table.boxes, boxes, atol=0.01)
    ref = mm.io.loadtxt(str(path), fmt="mot15-2D")  # motmetrics' own reader (1-based pixels)
    np.testing.assert_allclose(ref["X"].to_numpy() + 1, table.boxes[:, 0])
    np.testing.assert_allclose(ref["Width"].to_numpy(), table.boxes[:, 2] - table.boxes[:, 0])
    assert list(ref.index.get_level_values("Id")) == ids.tolist()


@pytest.mark.parametrize(
    "text, match",
    [("1,2,3\n", "row 1: 3 columns"), ("1,1,0,0,5,5\nx,1,0,0,5,5\n", "row 2: not a number"),
     ("0,1,0,0,5,5\n", "frames from 1"), ("1,1,0,0,-5,5\n", "negative")],
)  # fmt: skip
def test_read_mot_names_file_and_row(tmp_path, text, match):
    path = tmp_path / "gt.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        read_mot(path)
    assert str(path) in str(info.value)


# -- ByteTrack on moving shapes --------------------------------------------------------------------
def _gt_table(ds, clip: int) -> MOTTable:
    frames = np.concatenate([[t + 1] * len(ids) for t, ids in enumerate(ds.track_ids[clip])])
    return MOTTable(frames.astype(int), np.concatenate(ds.track_ids[clip]),
                    np.concatenate(ds.boxes[clip]).astype(np.float64), np.ones(len(frames)),
                    np.concatenate(ds.box_labels[clip]) + 1)  # fmt: skip


def test_bytetrack_on_exact_boxes_misses_only_each_tracks_first_frame():
    ds = make_moving_shapes(2, frames=30, size=64, objects=3, speed=1.5, seed=7)
    for c in range(2):
        dets = [
            (b, np.ones(len(b)), lab) for b, lab in zip(ds.boxes[c], ds.box_labels[c], strict=True)
        ]
        tracks = track_detections(dets, frame_rate=ds.fps)  # min_track_frames=2
        m = mot_metrics(_gt_table(ds, c), tracks_to_mot(range(30), tracks))
        assert (m["false_negatives"], m["false_positives"], m["id_switches"]) == (3, 0, 0)
        assert m["mota"] == pytest.approx(1 - 3 / 90)


def test_bytetrack_keeps_ids_through_noise():
    """Jittered boxes, 8 % dropped detections and a few low-score false positives."""
    ds = make_moving_shapes(3, frames=40, size=64, objects=3, speed=1.5, seed=11)
    rng = np.random.default_rng(0)
    for c in range(3):
        dets, times = [], []
        for t in range(40):
            boxes = ds.boxes[c][t] + rng.normal(0, 0.7, ds.boxes[c][t].shape)
            keep = rng.random(len(boxes)) > 0.08
            scores = rng.uniform(0.6, 1.0, len(boxes))[keep]
            boxes, labels = boxes[keep], ds.box_labels[c][t][keep]
            if rng.random() < 0.15:  # a false positive somewhere, scored like a weak detection
                x, y = rng.uniform(0, 50, 2)
                boxes = np.vstack([boxes, [x, y, x + 10, y + 10]])
                scores, labels = np.append(scores, rng.uniform(0.3, 0.55)), np.append(labels, 0)
            dets.append((boxes, scores, labels))
            times.append(t / ds.fps)
        tracks = track_detections(dets, times=times, frame_rate=ds.fps, high_score=0.5)
        m = mot_metrics(_gt_table(ds, c), tracks_to_mot(range(40), tracks))
        assert m["mota"] >= 0.8, m
        assert m["id_switches"] <= 1 and m["idf1"] >= 0.8, m
        assert m["false_positives"] <= 2, m  # weak one-frame detections never became tracks


# -- line counting ---------------------------------------------------------------------------------
def _side(line, point) -> float:
    """Cross product sign of the point against the line (independent of supervision)."""
    (x0, y0, x1, y1), (px, py) = line, point
    return np.sign((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0))


def test_line_counter_on_hand_made_trajectories():
    line = (50.0, 0.0, 50.0, 100.0)  # vertical, walked downwards
    counter = LineCounter(line, ["circle", "square"])
    xs = {
        1: np.linspace(10, 90, 9),  # across, left to right
        2: np.linspace(90, 10, 9),  # across, right to left
        3: np.array([10, 20, 30, 40, 44, 40, 30, 20, 10.0]),  # comes close, turns back
    }
    labels = {1: 0, 2: 1, 3: 0}
    for t in range(9):
        boxes = np.array([[xs[k][t] - 4, 40, xs[k][t] + 4, 48] for k in (1, 2, 3)], np.float32)
        tracks = FrameTracks(boxes, np.array([1, 2, 3]), np.array([labels[k] for k in (1, 2, 3)]),
                             np.ones(3, np.float32))  # fmt: skip
        counter.update(t, t / 10, tracks)
    # Track 1 goes from the positive to the negative side of the line's cross product.
    assert _side(line, (10, 44)) > 0 > _side(line, (90, 44))
    counts = counter.to_dict()
    assert (counts["in"], counts["out"]) == (1, 1)  # "in": positive -> negative side
    assert counts["in_per_class"] == {"circle": 1} and counts["out_per_class"] == {"square": 1}
    by_track = {c["track_id"]: c for c in counts["crossings"]}
    assert set(by_track) == {1, 2} and by_track[1]["direction"] == "in"
    # Crossed once all corners are past x = 50: track 1's box [x-4, x+4] at x = 60 (frame 5).
    assert by_track[1]["frame"] == 5 and by_track[2]["frame"] == 5


# -- the video decoding policy through predict_video -----------------------------------------------
def _clip(frames=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    clip = rng.integers(20, 30, (frames, size, size, 3)).astype(np.uint8)
    for t in range(frames):  # an asymmetric bright block that moves: orientation is visible
        clip[t, 2:10, 2 + t : 18 + t] = 220
    return clip


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "empty"])
def test_bad_video_files_fail_naming_the_file(tmp_path, kind, cls_run):
    path = tmp_path / f"{kind}.mp4"
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        good = write_video(tmp_path / "good.mp4", _clip(frames=40, size=64))
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        predict_video(cls_run, path, tmp_path / "out", device="cpu")
    assert str(path) in str(info.value)


def test_variable_frame_rate_times_are_kept_and_said(tmp_path, cls_run):
    times = np.array([0.0, 0.04, 0.08, 0.2, 0.24, 0.5, 0.54, 0.58, 1.0, 1.04])
    path = write_video(tmp_path / "vfr.mp4", _clip(frames=len(times)), times=times)
    s = predict_video(cls_run, path, tmp_path / "out", device="cpu", draw=False)
    rows = json.loads((tmp_path / "out" / "timeline.json").read_text())["frames"]
    np.testing.assert_allclose([r["time_s"] for r in rows], times, atol=1e-3)
    assert any("variable frame rate" in n for n in s["notes"])
    video = json.loads((tmp_path / "out" / "video.json").read_text())
    assert video["info"]["variable_frame_rate"] and video["notes"] == s["notes"]


def test_rotation_metadata_turns_frames_upright_and_is_said(tmp_path, cls_run):
    clip = _clip(frames=6, size=32)[:, :, :24]  # 32 high, 24 wide
    path = write_video(tmp_path / "rot.mp4", clip, rotation=90)
    info = probe(path)
    assert info.rotation == 90 and (info.height, info.width) == (24, 32)
    got = np.stack([f.image for f in iter_frames(path)]).astype(float)
    errors = {k: np.abs(got - np.rot90(clip, k=k, axes=(1, 2))).mean() for k in (1, 3)}
    # Lossy codec: close to the right turn, far from the other.
    assert errors[1] < 4 < 20 < errors[3]
    s = predict_video(cls_run, path, tmp_path / "out", device="cpu", draw=False)
    assert any("rotation metadata of 90 degrees" in n for n in s["notes"])
    assert json.loads((tmp_path / "out" / "video.json").read_text())["info"]["rotation"] == 90


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cls_run(tmp_path_factory):
    from cnnlab import api

    out = tmp_path_factory.mktemp("video-cls-run")
    result = api.train(data="builtin:shapes?n=120&size=32", model="lenet5", epochs=1,
                       batch_size=32, out=str(out), report=False, device="cpu")  # fmt: skip
    return result.run_dir


def test_predict_video_classification_end_to_end(tmp_path, cls_run):
    ds = make_moving_shapes(1, frames=24, size=32, objects=1, speed=0.5, seed=2)
    (path,) = write_video_folder(ds, tmp_path / "videos")
    out = tmp_path / "out"
    s = predict_video(cls_run, path, out, device="cpu", smoothing="majority", window=5,
                      min_event_frames=3, batch_size=7)  # fmt: skip
    assert s["task"] == "classification" and s["frames"] == 24
    timeline = json.loads((out / "timeline.json").read_text())["frames"]
    assert [r["frame"] for r in timeline] == list(range(24))
    with open(out / "timeline.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + 24
    # Majority smoothing recomputed from the raw columns, and events from the smoothed top class.
    raw = np.array([r["raw"] for r in timeline])
    smoothed = smooth_probs(raw, "majority", 5)
    np.testing.assert_allclose([r["smoothed"] for r in timeline], smoothed, atol=1e-6)
    top = smoothed.argmax(1)
    expected = [(s["class_names"][c], a, b) for c, a, b in find_events(top, 3)]
    assert [(e["class"], e["start_frame"], e["end_frame"]) for e in s["events"]] == expected
    assert s["events"], "a 24-frame video of one shape has at least one 3-frame segment"
    frames, times, _ = read_video(out / "annotated.mp4")
    assert len(frames) == 24 and frames.shape[1] >= 256  # enlarged so labels are legible
    np.testing.assert_allclose(times, [r["time_s"] for r in timeline], atol=1e-3)
    # Stride and max_frames: every 3rd frame, at most 5.
    s2 = predict_video(cls_run, path, tmp_path / "out2", device="cpu", stride=3, max_frames=5,
                       draw=False)  # fmt: skip
    rows = json.loads((tmp_path / "out2" / "timeline.json").read_text())["frames"]
    assert s2["frames"] == 5 and [r["frame"] for r in rows] == [0, 3, 6, 9, 12]
    np.testing.assert_allclose(raw[[0, 3, 6, 9, 12]], [r["raw"] for r in rows], atol=1e-5)


def test_video_classification_runs_are_dispatched_to_predict_clips(tmp_path, monkeypatch):
    """The clip-to-frame mapping, with a stand-in for cnnlab.video.train.predict_clips."""
    from cnnlab.video import predict as vp
    from cnnlab.video import train as video_train

    def fake_predict_clips(run, frames, **kwargs):
        assert frames.shape == (10, 32, 32, 3) and kwargs["stride"] == 2  # clip length 8 / 4
        return {"starts": [0, 4], "probs": [[1.0, 0.0], [0.0, 1.0]], "class_names": ["a", "b"],
                "window": 2, "step": 3}  # fmt: skip  # a window covers 4 frames

    monkeypatch.setattr(vp, "run_task", lambda run: "video-classification")
    monkeypatch.setattr(vp, "checkpoint_metadata", lambda run: {"frames": 8})
    monkeypatch.setattr(video_train, "predict_clips", fake_predict_clips, raising=False)
    path = write_video(tmp_path / "v.mp4", _clip(frames=10))
    s = predict_video("any-run", path, tmp_path / "out", smoothing="none", min_event_frames=1,
                      draw=False, device="cpu")  # fmt: skip
    raw = [r["raw"] for r in json.loads((tmp_path / "out" / "timeline.json").read_text())["frames"]]
    # Frames 0-3: clip 0; 4-7: clip 1; 8-9: no clip covers them, the nearest is clip 1.
    np.testing.assert_allclose(raw, [[1, 0]] * 4 + [[0, 1]] * 6)
    assert [(e["class"], e["start_frame"], e["end_frame"]) for e in s["events"]] == [
        ("a", 0, 3),
        ("b", 4, 9),
    ]


def test_cli_bad_options_are_one_line_errors(tmp_path, capsys, cls_run):
    from cnnlab.cli import main

    path = write_video(tmp_path / "v.mp4", _clip(frames=4))
    assert main(["video", "predict", str(cls_run), str(path), "--line", "1,2,3"]) == 2
    assert main(["video", "predict", str(cls_run), str(path), "--smoothing", "avg"]) == 2
    err = capsys.readouterr().err
    assert "line expects 4 numbers" in err and "smoothing='avg'" in err
    assert "Traceback" not in err


def test_tracking_options_are_refused_for_a_run_that_does_not_track(
    tmp_path, capsys, monkeypatch, cls_run
):
    """`video predict` of a classifier (or clip model) with --line / --score-threshold exited 0
    and recorded both in video.json as if used; they only act on a detection run's tracking and
    counting, so they are refused, named, before anything is written."""
    from cnnlab.cli import main
    from cnnlab.video import predict as vp

    path = write_video(tmp_path / "v.mp4", _clip(frames=4))
    out = tmp_path / "out"
    argv = ["video", "predict", str(cls_run), str(path), "--out", str(out), "--no-draw"]
    assert main([*argv, "--line", "0,0,10,10", "--score-threshold", "0.9"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "option --score-threshold and option --line only apply to a detection run" in err
    assert "is a classification run" in err and "leave --line out" in err
    assert "Traceback" not in err and not out.exists()
    monkeypatch.setattr(vp, "run_task", lambda run: "video-classification")
    with pytest.raises(ConfigError, match="option agnostic_nms only apply .* video-classif"):
        predict_video(cls_run, path, out, agnostic_nms=0.5, draw=False, device="cpu")
    with pytest.raises(ConfigError, match="option tracker only apply"):
        predict_video(cls_run, path, out, tracker={"lost_track_s": 2.0}, draw=False)
    assert not out.exists()


def test_video_predict_keeps_the_users_files(tmp_path, capsys, monkeypatch, cls_run):
    """A timeline.csv of the user's in --out (or in the default runs/video/NAME/) is refused in one
    line naming it and left as it was (it was overwritten); a second run into cnnlab's own output
    folder overwrites it; a file of the user's beside the output stays."""
    from cnnlab.cli import main

    path = write_video(tmp_path / "v.mp4", _clip(frames=4))
    monkeypatch.chdir(tmp_path)
    for out, flag in ((tmp_path / "mine", ["--out", str(tmp_path / "mine")]),
                      (tmp_path / "runs" / "video" / "v", [])):  # fmt: skip
        out.mkdir(parents=True)
        (out / "timeline.csv").write_text("the user's")
        (out / "notes.txt").write_text("my notes")
        args = ["video", "predict", str(cls_run), str(path), "--device", "cpu", "--no-draw", *flag]
        assert main(args) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and "timeline.csv exists and was not written by cnnlab" in err[0]
        assert err[0].endswith(f"or move {Path(*out.parts[-3:]) if not flag else out}/timeline.csv")
        assert ("give --out a new" in err[0]) == (not flag)
        assert (out / "timeline.csv").read_text() == "the user's"
        (out / "timeline.csv").unlink()
        assert main(args) == 0 and main(args) == 0  # the second over its own files
        assert (out / "timeline.csv").read_text().startswith("frame")
        assert (out / "notes.txt").read_text() == "my notes"


@pytest.mark.slow
def test_predict_video_detection_end_to_end(tmp_path):
    """A detector trained for one epoch: tracks.csv, counts.json and the track CLI are written
    and agree with each other (the detector's quality is the benchmark's business)."""
    from cnnlab.cli import main
    from cnnlab.detect import train_detection

    run = train_detection(
        data="builtin:shapes?n=48&size=64&objects=2", model="fasterrcnn", backbone="resnet18",
        backbone_variant="small-input", epochs=1, batch_size=8, out=str(tmp_path / "runs"),
        report=False, device="cpu", val_fraction=0.0, test_fraction=0.0,
    ).run_dir  # fmt: skip
    ds = make_moving_shapes(1, frames=12, size=64, objects=2, speed=2.0, seed=3)
    (path,) = write_video_folder(ds, tmp_path / "videos")
    out = tmp_path / "out"
    s = predict_video(run, path, out, device="cpu", score_threshold=0.05, line="0,32,64,32")
    assert s["task"] == "detection" and s["frames"] == 12
    for name in ("detections.csv", "tracks.csv", "trajectories.json", "counts.json",
                 "annotated.mp4", "video.json"):  # fmt: skip
        assert (out / name).is_file(), name
    # Class-agnostic NMS (IoS 0.7): no box of a frame lies more than 70 % inside another one,
    # whatever their classes (intersection over the smaller box, computed here with NumPy).
    import csv

    with open(out / "detections.csv") as fh:
        rows = list(csv.DictReader(fh))
    for frame in {r["frame"] for r in rows}:
        b = np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows
                      if r["frame"] == frame])  # fmt: skip
        lo, hi = (
            np.maximum(b[:, None, :2], b[None, :, :2]),
            np.minimum(b[:, None, 2:], b[None, :, 2:]),
        )
        inter = np.clip(hi - lo, 0, None).prod(-1)
        area = (b[:, 2:] - b[:, :2]).prod(-1)
        ios = inter / np.minimum(area[:, None], area[None, :])
        np.fill_diagonal(ios, 0)
        assert ios.max() <= 0.7 + 1e-2
    tracks = read_mot(out / "tracks.csv")
    traj = json.loads((out / "trajectories.json").read_text())["tracks"]
    assert sorted({int(i) for i in tracks.ids}) == [t["track_id"] for t in traj]
    assert sum(len(t["frames"]) for t in traj) == len(tracks)
    counts = json.loads((out / "counts.json").read_text())
    assert counts["line"] == [0, 32, 64, 32] and counts["in"] + counts["out"] == len(
        counts["crossings"]
    )
    assert len(read_video(out / "annotated.mp4")[0]) == 12
    gt = path.with_suffix(".gt.txt")
    assert main(["video", "track", str(run), str(path), "--gt", str(gt), "--out",
                 str(tmp_path / "track"), "--no-draw", "--device", "cpu"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "track" / "mot_metrics.json").read_text())
    again = mot_metrics(gt, tmp_path / "track" / "tracks.csv")
    for key in ("mota", "idf1", "id_switches", "false_positives", "false_negatives"):
        assert metrics[key] == again[key], key


@pytest.mark.slow
def test_predict_video_with_a_clip_model(tmp_path):
    """A real 3D CNN run (one epoch of r3d_small): per-frame probabilities are the mean of the
    windows of predict_clips that cover each frame."""
    from cnnlab.video.train import predict_clips, train_video

    run = train_video(data="builtin:moving-shapes?n=24&frames=8&size=32", model="r3d_small",
                      epochs=1, batch_size=8, device="cpu", out=str(tmp_path / "runs"),
                      report=False).run_dir  # fmt: skip
    ds = make_moving_shapes(1, frames=20, size=32, speed=0.5, seed=5)
    (path,) = write_video_folder(ds, tmp_path / "videos")
    s = predict_video(run, path, tmp_path / "out", device="cpu", smoothing="none")
    assert s["task"] == "video-classification" and s["frames"] == 20
    raw = np.array(
        [r["raw"] for r in json.loads((tmp_path / "out" / "timeline.json").read_text())["frames"]]
    )
    frames, _, _ = read_video(path)
    ref = predict_clips(run, frames, stride=2, device="cpu")  # clip length 8 -> a quarter is 2
    span = (ref["window"] - 1) * ref["step"] + 1
    for t in range(20):
        covering = [i for i, s0 in enumerate(ref["starts"]) if s0 <= t < s0 + span]
        np.testing.assert_allclose(raw[t], ref["probs"][covering].mean(0), atol=1e-5)
    assert len(read_video(tmp_path / "out" / "annotated.mp4")[0]) == 20


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_still_image_is_not_taken_for_a_one_frame_video(tmp_path, suffix):
    """FFmpeg opens a JPEG or PNG as a video of one frame; video predict said nothing and answered
    for that frame repeated. Refused naming the file (a real one-frame clip is still a video)."""
    from PIL import Image

    still = tmp_path / f"photo{suffix}"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(still)
    with pytest.raises(DataError, match=r"photo.* is a still image, not a video"):
        probe(still)
    clip = tmp_path / "one.mp4"
    write_video(clip, np.zeros((1, 24, 32, 3), np.uint8), fps=5)
    assert probe(clip).width == 32


def test_serve_refuses_a_clip_model_with_a_command_that_predicts_it(tmp_path, monkeypatch):
    """`cnnlab serve VIDEO_RUN` said "predict it with `cnnlab predict RUN VIDEO`", which stops at
    once: a video run writes files, and `cnnlab predict` asks for --out FOLDER. The command the
    message suggests now runs as written (into runs/video/VIDEO-NAME)."""
    import re

    from cli_process import in_process

    from cnnlab.video.train import train_video

    run = train_video(data="builtin:moving-shapes?n=12&frames=4&size=16", model="r3d_small",
                      epochs=1, batch_size=4, device="cpu", out=str(tmp_path / "runs"),
                      report=False).run_dir  # fmt: skip
    (video,) = write_video_folder(make_moving_shapes(1, frames=6, size=16, seed=5), tmp_path / "v")
    refused = in_process("serve", str(run), "--port", "0")
    assert refused.returncode == 2 and "video-classification run" in refused.stderr
    (suggested,) = re.findall(r"`cnnlab ([^`]+)`", " ".join(refused.stderr.split()))
    monkeypatch.chdir(tmp_path)
    words = suggested.replace("RUN", str(run)).replace("VIDEO", str(video)).split()
    done = in_process(*words)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "video" / video.stem / "timeline.csv").is_file()
