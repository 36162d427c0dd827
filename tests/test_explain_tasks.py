"""`cnnlab explain RUN IMAGE` for segmentation and detection runs, through the command line.

One tiny run per task (module fixtures); the checks that matter compare with references computed
here independently: Grad-CAM by its formula with autograd on the same stage, Eigen-CAM as the
first principal component of the same activations, the mask against `predict`'s mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_process import in_process
from PIL import Image

from cnnlab.data.builtin import make_shapes

_cli = in_process  # the commands in this process: what they compute is the subject here


def _shapes_image(path: Path, size: int, objects: int) -> Path:
    image = make_shapes(2, size, seed=5, objects=objects).images[0]  # (size, size, 3) uint8
    Image.fromarray(np.asarray(image)).save(path)
    return path


def _normalised(path: Path, meta: dict) -> torch.Tensor:
    """The image as the run's preprocessing normalises it (the file is already S x S RGB)."""
    pre = meta["preprocess"]
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())[None]


def _activations(
    model: torch.nn.Module, layer: str, x: torch.Tensor
) -> tuple[torch.Tensor, object]:
    """(the output of ``layer``, gradients kept; the model's output) for ``model(x)``."""
    store: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.retain_grad()
        store.append(output)

    handle = model.get_submodule(layer).register_forward_hook(keep)
    try:
        output = model(x)
    finally:
        handle.remove()
    return store[-1], output


def _minmax(a: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scaling: (a - min) / (max + 1e-7), once per target layer and once more
    after averaging the layers (one layer here); the 1e-7 guard shows on faint maps."""
    for _ in range(2):
        a = a - a.min()
        a = a / (a.max() + 1e-7)
    return a


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnlab.segment import train_segmentation

    out = tmp_path_factory.mktemp("seg")
    result = train_segmentation(
        data="builtin:shapes?n=24&size=32", out=str(out), encoder="lenet5", image_size=32,
        epochs=1, batch_size=8, report=False, device="cpu", precision="32",
        val_fraction=0.2, test_fraction=0.2,
    )  # fmt: skip
    return result.run_dir


@pytest.fixture(scope="module")
def det_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnlab.detect import train_detection

    out = tmp_path_factory.mktemp("det")
    result = train_detection(
        data="builtin:shapes?n=12&size=64&objects=2", epochs=1, batch_size=4, val_fraction=0.0,
        test_fraction=0.0, out=str(out), device="cpu", report=False,
    )  # fmt: skip
    return result.run_dir


def _check_files(out: Path, prediction_png: str) -> dict:
    assert (out / "explain.html").is_file()
    for name in ("input.png", prediction_png, "cams.png", "first_layer_filters.png"):
        assert (out / "figures" / name).is_file(), name
    html = (out / "explain.html").read_text()
    assert "Where the model looks" in html and html.count("data:image/png") >= 5
    return json.loads((out / "explain.json").read_text())


def _check_maps(numbers: dict, size: int) -> None:
    cams = numbers["cams"]
    h, w = cams["target_shape"][-2:]
    assert cams["entries"]
    for entry in cams["entries"]:
        m, lm = np.asarray(entry["map"]), np.asarray(entry["layer_map"])
        assert m.shape == (size, size) and lm.shape == (h, w)
        assert m.min() >= 0 and m.max() <= 1 and lm.min() >= 0 and lm.max() <= 1


def test_explain_segmentation_run(seg_run: Path, tmp_path: Path) -> None:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget  # noqa: F401

    from cnnlab.segment import load_segmentation_model, predict_segmentation

    image = _shapes_image(tmp_path / "shapes.png", 32, 1)
    out = tmp_path / "explained"
    proc = _cli(
        "explain", str(seg_run), str(image), "--out", str(out), "--method", "gradcam",
        "--method", "eigencam", "--top-k", "2", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "share of pixels" in proc.stdout and "explain.html" in proc.stdout
    numbers = _check_files(out, "mask_overlay.png")
    assert numbers["task"] == "segmentation"
    layers = numbers["trace"]["layers"]
    assert [r["name"] for r in layers[:3]] == [f"encoder.backbone.features.{i}" for i in range(3)]
    assert layers[-1]["name"] == "head" and layers[-1]["output_shape"] == [6, 32, 32]
    assert [s["name"] for s in numbers["trace"]["stages"]] == [
        "encoder.backbone.features.2",
        "encoder.backbone.features.5",
    ]
    _check_maps(numbers, 32)

    # the mask is `predict`'s mask for this image (an S x S file: no resizing on either side)
    mask = np.asarray(numbers["prediction"]["mask"], dtype=np.uint8)
    predict_segmentation(seg_run, [image], tmp_path / "pred", device="cpu")
    assert np.array_equal(mask, np.asarray(Image.open(tmp_path / "pred" / "masks" / "shapes.png")))
    areas = np.bincount(mask.ravel(), minlength=6) / mask.size
    by_area = [c for c in np.argsort(-areas, kind="stable") if areas[c] > 0][:2]
    entries = numbers["cams"]["entries"]
    assert [e["index"] for e in entries if e["method"] == "gradcam"] == [int(c) for c in by_area]

    # Grad-CAM by its formula on the same stage: ReLU(sum_k mean(d y_c / d A_k) A_k), y_c the
    # class's logits summed over the pixels predicted as c; then min-max scaled
    model, meta, _ = load_segmentation_model(seg_run, "cpu")
    x = _normalised(image, meta)
    layer = numbers["cams"]["target_layer"]
    for entry in (e for e in entries if e["method"] == "gradcam"):
        c = entry["index"]
        acts, logits = _activations(model, layer, x)
        (logits[0, c] * torch.from_numpy((mask == c).astype(np.float32))).sum().backward()
        weights = acts.grad[0].mean(dim=(1, 2))
        cam = torch.relu((weights[:, None, None] * acts[0]).sum(0)).detach().numpy()
        np.testing.assert_allclose(entry["layer_map"], _minmax(cam), atol=2e-4)
        model.zero_grad()


def test_explain_segmentation_counts_the_image_not_the_fit_padding(
    seg_run: Path, tmp_path: Path
) -> None:
    """A 40 x 30 image is fitted into the 32 x 32 input with 4 rows of padding above and below;
    explain counted them as image pixels (areas 77.7% / 17.8% where predict said 71.7% / 23.6%)
    and wrote the 32 x 32 mask with the padding. Now its mask is `predict`'s mask of the image
    (30 x 40) and the areas, the CAM targets' areas and the page's lead are that mask's."""
    from cnnlab.segment import predict_segmentation

    shapes = np.asarray(make_shapes(2, 40, seed=5, objects=2).images[0])
    image = tmp_path / "wide.png"
    Image.fromarray(shapes[:30]).save(image)  # 40 wide, 30 high
    out = tmp_path / "explained"
    proc = _cli("explain", str(seg_run), str(image), "--out", str(out), "--method", "gradcam",
                "--top-k", "6", "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    numbers = json.loads((out / "explain.json").read_text())
    mask = np.asarray(numbers["prediction"]["mask"], dtype=np.uint8)
    predict_segmentation(seg_run, [image], tmp_path / "pred", device="cpu")
    predicted = np.asarray(Image.open(tmp_path / "pred" / "masks" / "wide.png"))
    assert mask.shape == (30, 40) and np.array_equal(mask, predicted)
    assert numbers["prediction"]["mask_size"] == [40, 30]
    shares = {c: float((predicted == c).mean()) for c in np.unique(predicted)}
    got = {e["index"]: e["area"] for e in numbers["prediction"]["classes"]}
    assert got == pytest.approx(shares, abs=1e-6) and sum(got.values()) == pytest.approx(1.0)
    for entry in numbers["cams"]["entries"]:
        assert entry["area"] == pytest.approx(shares[entry["index"]], abs=1e-6)
    html = (out / "explain.html").read_text()
    for share in shares.values():
        assert f"{100 * share:.1f}%" in html


def test_explain_detection_run(det_run: Path, tmp_path: Path) -> None:
    from cnnlab.detect import load_detection_model, predict_detection

    image = _shapes_image(tmp_path / "two.png", 64, 2)
    out = tmp_path / "explained"
    proc = _cli(
        "explain", str(det_run), str(image), "--out", str(out), "--score-threshold", "0",
        "--top-k", "2", "--method", "gradcam", "--method", "eigencam", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    numbers = _check_files(out, "boxes.png")
    assert printed["cams"] == numbers["cams"] and numbers["task"] == "detection"
    layers = numbers["trace"]["layers"]
    assert layers[0]["name"] == "conv1" and any(r["kind"] == "residual add" for r in layers)
    _check_maps(numbers, 64)

    # the boxes are `predict`'s boxes (xyxy here, COCO xywh there; the image is S x S)
    boxes = numbers["prediction"]["boxes"]
    assert boxes and all(b["score"] >= 0 for b in boxes)
    rows = json.loads(
        predict_detection(det_run, [image], tmp_path / "pred", device="cpu", score_threshold=0.0)
        .read_text()
    )  # fmt: skip
    assert len(rows) == len(boxes)
    for b, r in zip(boxes[:5], rows[:5], strict=True):
        x0, y0, x1, y1 = b["box"]
        assert r["category"] == b["class"]
        np.testing.assert_allclose(r["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=0.02)

    entries = numbers["cams"]["entries"]
    grad = [e for e in entries if e["method"] == "gradcam"]
    eigen = [e for e in entries if e["method"] == "eigencam"]
    assert [e["box"] for e in grad] == [b["box"] for b in boxes[:2]]
    # Eigen-CAM does not depend on the box; by hand: the activations' first principal component
    assert eigen[0]["layer_map"] == eigen[1]["layer_map"]
    model, meta, _ = load_detection_model(det_run, "cpu")
    with torch.no_grad():
        acts = _activations(model, numbers["cams"]["target_layer"], _normalised(image, meta))[0]
    acts = acts[0].numpy()
    k, h, w = acts.shape
    flat = acts.reshape(k, -1).T  # (h*w, K): one row per position
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=True)
    projection = np.maximum((flat @ vt[0]).reshape(h, w), 0)
    np.testing.assert_allclose(eigen[0]["layer_map"], _minmax(projection), atol=2e-4)


def test_explain_refuses_other_tasks(
    seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A video run (its checkpoint says so) gets one line naming the tasks explain covers; so does
    --score-threshold on a segmentation run."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cnnlab.cli import main

    weights = seg_run / "checkpoints" / "best.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    fake = tmp_path / "video.safetensors"
    save_file(tensors, str(fake), metadata=meta | {"task": json.dumps("video-classification")})
    image = _shapes_image(tmp_path / "x.png", 32, 1)
    capsys.readouterr()
    assert main(["explain", str(fake), str(image), "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "classification, segmentation, detection" in lines[0]
    assert "video-classification" in lines[0]
    assert not (tmp_path / "o").exists()
    args = ["explain", str(seg_run), str(image), "--score-threshold", "0.3"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--score-threshold is for detection runs" in lines[0]


def test_a_segmentation_page_is_found_again_from_another_working_directory(
    seg_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segmentation / detection page recorded the image's path as given in explain.json too:
    `a/shapes.png` from tmp/ and `shapes.png` from tmp/a/ made two pages. Now one, and the path
    recorded is absolute."""
    from cnnlab import api

    (tmp_path / "a").mkdir()
    _shapes_image(tmp_path / "a" / "shapes.png", 32, 1)
    kw = dict(top_k=1, methods=("gradcam",), device="cpu")
    monkeypatch.chdir(tmp_path)
    first = api.explain(seg_run, "a/shapes.png", **kw)
    monkeypatch.chdir(tmp_path / "a")
    again = api.explain(seg_run, "shapes.png", **kw)
    assert Path(first["json"]).parent == Path(again["json"]).parent
    assert Path(again["json"]).parent == Path(seg_run) / "explain" / "shapes"
    recorded = json.loads(Path(again["json"]).read_text())["image"]
    assert recorded == str((tmp_path / "a" / "shapes.png").resolve())
