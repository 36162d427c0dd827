"""Export of segmentation and detection runs: ONNX files that carry preprocessing, class names and
post-processing parameters, checked with onnxruntime right after export, and `predict` on the
exported file giving the masks / boxes the run gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from cli_process import in_process  # noqa: E402

from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.export import export_model, read_export_metadata  # noqa: E402

_cli = in_process  # the commands in this process: what they compute is the subject here


def _pictures(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        img[h // 4 : h // 2, w // 4 : w // 2] = (230, 40, 40)  # a bright block to find
        paths.append(folder / f"p{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    from cnnlab.segment import train_segmentation

    out = tmp_path_factory.mktemp("seg")
    return train_segmentation(
        data="builtin:shapes?n=30&size=32", encoder="lenet5", image_size=32, epochs=2,
        batch_size=4, report=False, device="cpu", out=str(out), name="s",
    ).run_dir  # fmt: skip


@pytest.fixture(scope="module")
def det_run(tmp_path_factory) -> Path:
    from cnnlab.detect import train_detection

    out = tmp_path_factory.mktemp("det")
    return train_detection(
        data="builtin:shapes?n=12&size=64&objects=2", epochs=1, batch_size=4, val_fraction=0.0,
        test_fraction=0.0, out=str(out), device="cpu", report=False, name="d",
    ).run_dir  # fmt: skip


def test_segmentation_onnx_carries_its_task_and_predicts_the_same_masks(seg_run, tmp_path):
    result = _cli("export", str(seg_run), "--format", "onnx")
    assert result.returncode == 0, result.stderr
    onnx_path = seg_run / "export" / "model.onnx"
    meta = read_export_metadata(onnx_path)
    ckpt = json.loads((seg_run / "classes.json").read_text())
    assert meta["task"] == "segmentation" and meta["class_names"] == ckpt
    assert meta["output"]["shape"][1] == len(ckpt) and meta["ignore_index"] == 255
    images = _pictures(tmp_path / "in", [(40, 30), (32, 32), (17, 50)])
    for source, name in ((seg_run, "run"), (onnx_path, "onnx")):
        r = _cli(
            "segment", "predict", str(source), *map(str, images), "--out", str(tmp_path / name)
        )
        assert r.returncode == 0, r.stderr
    for img in images:
        a = np.asarray(Image.open(tmp_path / "run" / "masks" / img.name))
        b = np.asarray(Image.open(tmp_path / "onnx" / "masks" / img.name))
        assert a.shape == Image.open(img).size[::-1]
        # float32 both ways; an arg-max may flip only where two logits tie to ~1e-6
        assert (a != b).mean() < 1e-3, img.name


def test_segmentation_torchscript_and_refused_formats(seg_run, tmp_path):
    ts = export_model(seg_run, format="torchscript", out=tmp_path / "m.torchscript.pt")
    assert ts.max_abs_diff is not None and ts.max_abs_diff <= 1e-3
    assert read_export_metadata(ts.path)["task"] == "segmentation"
    with pytest.raises(ConfigError, match="not available for a segmentation run; choose from"):
        export_model(seg_run, format="safetensors")


def test_detection_onnx_predicts_the_boxes_of_the_run(det_run, tmp_path):
    result = export_model(det_run, format="onnx")
    assert result.checked_with.startswith("onnxruntime") and result.opset == 17
    meta = read_export_metadata(result.path)
    assert meta["task"] == "detection" and meta["output"]["names"] == ["boxes", "labels", "scores"]
    assert (
        meta["score_threshold"]
        == json.loads((det_run / "config.json").read_text())["score_threshold"]
    )
    images = _pictures(tmp_path / "in", [(64, 64), (80, 50)])
    runs = {}
    for source, name in ((det_run, "run"), (result.path, "onnx")):
        r = _cli(
            "detect", "predict", str(source), *map(str, images), "--out", str(tmp_path / name),
            "--score-threshold", "0.05",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    assert runs["run"] and len(runs["run"]) == len(runs["onnx"])  # boxes found, the same ones
    for a, b in zip(runs["run"], runs["onnx"], strict=True):
        assert (a["image_id"], a["category"]) == (b["image_id"], b["category"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)
        assert abs(a["score"] - b["score"]) < 1e-3


def test_a_video_run_says_export_does_not_cover_it(tmp_path):
    from cnnlab.video.train import train_video

    run = train_video(
        data="builtin:moving-shapes?n=20&frames=4&size=16&speed=0.5", model="lenet5", epochs=1,
        batch_size=4, report=False, out=str(tmp_path),
    )  # fmt: skip
    r = _cli("export", str(run.run_dir))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "video-classification run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
