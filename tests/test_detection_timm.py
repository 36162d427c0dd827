"""`--backbone timm:NAME`: detectors on timm's features_only networks under torchvision's FPN
(cnnlab.models.detection._timm_backbone). The fast tests use timm's `test_resnet` (5 stages) and
`test_convnext` (4 stages, other channels), checked against timm's own feature extractor; the slow
one trains, reloads, predicts and exports a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from cli_process import assert_user_error
from PIL import Image
from safetensors.torch import load_file, save_file

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models.detection import create_detection_model


@pytest.mark.parametrize(
    "name, model, in_channels, channels",
    [
        ("test_resnet", "fasterrcnn", 1, [48, 192, 96]),  # stages 3-5 of 5 (reductions 2..32)
        ("test_convnext", "fcos", 3, [32, 48, 64]),  # stages 2-4 of 4 (reductions 4..32)
    ],
)
def test_timm_backbone_is_timms_feature_extractor_under_the_fpn(
    name: str, model: str, in_channels: int, channels: list[int]
) -> None:
    """The FPN's in-channels per level are timm's last three ``feature_info.channels()``; the
    body's maps are exactly timm's own extractor's for the same weights; the FPN levels have the
    image side over timm's reductions; FCOS's strides are those reductions."""
    det = create_detection_model(
        model, num_classes=2, backbone=f"timm:{name}", in_channels=in_channels, image_size=64,
        fpn_channels=32, box_head_width=32,  # fcos: GroupNorm(32, fpn_channels)
    )  # fmt: skip
    reference = timm.create_model(name, features_only=True, in_chans=in_channels)
    assert reference.feature_info.channels()[-3:] == channels
    body = det.net.backbone
    assert [b[0].in_channels for b in body.fpn.inner_blocks] == channels
    assert body.reductions == reference.feature_info.reduction()[-3:] == [8, 16, 32]
    reference.load_state_dict(body.encoder.backbone["net"].state_dict())
    det.eval(), reference.eval()
    x = torch.randn(2, in_channels, 64, 64)
    # the zoo's stage list that explain hooks: the modules whose outputs are timm's maps (a
    # convnext's "stages.1" is the extractor's flattened child "stages_1")
    stages = body.encoder.feature_info
    hooked: dict[str, torch.Tensor] = {}
    handles = [
        body.encoder.get_submodule(f["module"]).register_forward_hook(
            lambda m, i, o, key=f["module"]: hooked.__setitem__(key, o)
        )
        for f in stages
    ]  # fmt: skip
    with torch.no_grad():
        maps = body.encoder(x)
        for h in handles:
            h.remove()
        for ours, theirs, f in zip(maps, reference(x), stages, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
            torch.testing.assert_close(hooked[f["module"]], theirs, rtol=0, atol=0)
        levels = body(x)
        assert [tuple(p.shape) for p in levels.values()] == [(2, 32, 8, 8), (2, 32, 4, 4),
                                                             (2, 32, 2, 2)]  # fmt: skip
        out = det(x)
    assert len(out) == 2 and all(o["boxes"].shape[1:] == (4,) for o in out)
    if model == "fcos":
        assert det.net.anchor_generator.sizes == ((8.0,), (16.0,), (32.0,))
    cfg = det.default_cfg
    assert (cfg["backbone"], cfg["backbone_variant"], cfg["backbone_init"]) == (
        f"timm:{name}", f"timm {name}", None,
    )  # fmt: skip
    mean = reference.pretrained_cfg["mean"]
    assert cfg["mean"] == list(mean) and cfg["reductions"] == [8, 16, 32]


def test_a_timm_backbone_without_a_pyramid_is_said(caplog) -> None:
    """timm cuts a plain ViT into blocks that all have reduction 16: it builds, and the run says
    that its FPN levels share one resolution."""
    with caplog.at_level("WARNING", logger="cnnlab.models.detection"):
        det = create_detection_model("retinanet", num_classes=2, backbone="timm:test_vit",
                                     image_size=64, fpn_channels=32)  # fmt: skip
    assert det.default_cfg["reductions"] == [16, 16, 16]
    assert "share reductions [16, 16, 16]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cnnlab.models.detection"):
        create_detection_model("retinanet", num_classes=2, backbone="timm:test_resnet",
                               image_size=64, fpn_channels=32)  # fmt: skip
    assert "share reductions" not in caplog.text


def test_timm_backbone_bad_names_variants_and_weights(tmp_path: Path, monkeypatch) -> None:
    """Unknown names with timm's close names, timm's stem kept, and the three weight sources of
    segmentation's timm encoder: timm's "imagenet" (offline: what is missing, where it looked),
    a timm-layout file through timm's loader, a cnnlab timm: classification run by name."""
    import huggingface_hub.constants as hub

    from cnnlab.engine.checkpoint import save_weights
    from cnnlab.models import create_model

    with pytest.raises(ConfigError) as err:
        create_detection_model("retinanet", num_classes=2, backbone="timm:test_resnt")
    text = str(err.value)
    assert text.startswith("unknown timm model 'test_resnt' (did you mean: ") and "\n" not in text
    assert "test_resnet" in text
    with pytest.raises(ConfigError, match="fpn_channels must be a multiple of 32 for fcos"):
        create_detection_model("fcos", num_classes=2, backbone="timm:test_resnet", fpn_channels=48)
    with pytest.raises(ConfigError, match="keeps timm's own stem: leave --backbone-variant out"):
        create_detection_model("fcos", num_classes=2, backbone="timm:test_resnet",
                               backbone_variant="small-input")  # fmt: skip
    # "imagenet" offline with an empty Hugging Face cache: one line naming the repository, the
    # cache and detection's option
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError) as err:
        create_detection_model("fasterrcnn", num_classes=2, backbone="timm:test_resnet",
                               image_size=64, backbone_weights="imagenet", fpn_channels=32)  # fmt: skip
    text = str(err.value)
    assert "timm/test_resnet.r160_in1k" in text and str(tmp_path / "hub") in text
    assert "--init-from PATH" in text and "\n" not in text
    # a file in timm's layout (ImageNet-shaped: RGB, 1000 classes) through timm's loader
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    det = create_detection_model("retinanet", num_classes=2, backbone="timm:test_resnet",
                                 image_size=64, fpn_channels=32,
                                 backbone_weights=str(tmp_path / "w.safetensors"))  # fmt: skip
    net = det.net.backbone.encoder.backbone["net"]
    torch.testing.assert_close(net.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])
    assert det.default_cfg["backbone_init"] == {"source": str(tmp_path / "w.safetensors")}
    # a cnnlab timm: classification run's tensors, by name; its mean / std adopted
    clf = create_model("timm:test_resnet", num_classes=4, in_channels=1, image_size=32)
    path = tmp_path / "best.safetensors"
    save_weights(path, clf.state_dict(), {"model": "timm:test_resnet", "task": "classification",
                                          "preprocess": {"mean": [0.5], "std": [0.25]}})  # fmt: skip
    det = create_detection_model("fcos", num_classes=2, backbone="timm:test_resnet",
                                 in_channels=1, image_size=64, fpn_channels=32,
                                 backbone_weights=str(path))  # fmt: skip
    for key, value in det.net.backbone.encoder.backbone.state_dict().items():
        assert torch.equal(value, clf.state_dict()[key]), key
    assert (det.default_cfg["mean"], det.default_cfg["std"]) == ([0.5], [0.25])
    with pytest.raises(CheckpointError, match="holds a 'timm:test_resnet' model"):
        create_detection_model("fcos", num_classes=2, backbone="timm:test_efficientnet",
                               in_channels=1, image_size=64, fpn_channels=32,
                               backbone_weights=str(path))  # fmt: skip


@pytest.mark.slow  # a Python process that imports torch and timm: seconds
def test_unknown_timm_backbone_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    line = assert_user_error(
        "detect", "train", "--data", "builtin:shapes?n=8&size=32", "--backbone", "timm:test_resnt",
        "--epochs", "1", "--out", str(tmp_path), names=["unknown timm model 'test_resnt'",
                                                         "test_resnet"],
    )  # fmt: skip
    assert "did you mean" in line
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


@pytest.mark.slow  # a detector trained, reloaded, evaluated, predicted, served, exported: ~20 s
def test_timm_backbone_run_trains_reloads_predicts_exports(tmp_path: Path) -> None:
    from cnnlab import api
    from cnnlab.detect import (
        evaluate_detection,
        load_detection_model,
        predict_detection,
        train_detection,
    )

    name = "timm:mobilenetv3_small_050"
    result = train_detection(
        data="builtin:shapes?n=16&size=64&objects=2", model="fasterrcnn", backbone=name,
        image_size=64, epochs=1, batch_size=4, val_fraction=0.0, test_fraction=0.25,
        fpn_channels=32, box_head_width=64, out=str(tmp_path / "runs"), name="t",
        device="cpu", report=False, seed=0,
    )  # fmt: skip
    assert np.isfinite(result.history[0]["train_loss"])
    run = result.run_dir
    assert json.loads((run / "config.json").read_text())["backbone"] == name
    model, meta, weights = load_detection_model(run)
    assert meta["backbone"] == name and model.default_cfg["backbone"] == name
    # an independent reload: the same builder, the tensors read by safetensors itself, strict
    again = create_detection_model("fasterrcnn", num_classes=len(meta["class_names"]),
                                   backbone=name, image_size=64, fpn_channels=32,
                                   box_head_width=64)  # fmt: skip
    again.load_state_dict(load_file(weights), strict=True)
    again.eval()
    for det in (model, again):  # every box scored, so there are boxes to compare
        det.net.roi_heads.score_thresh = 0.0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), again(x)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-5)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"])
    evaluated = evaluate_detection(run, device="cpu", report=False)
    assert evaluated["metrics"]["map"] == pytest.approx(result.test_metrics["map"], abs=1e-9)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 50, 3), np.uint8)).save(tmp_path / "a.png")
    rows = json.loads(
        predict_detection(
            run, [tmp_path / "a.png"], tmp_path / "pred", device="cpu", score_threshold=0.0
        ).read_text()  # fmt: skip
    )
    assert rows and all(r["image_id"] == "a.png" and len(r["bbox"]) == 4 for r in rows)
    # serve: the upload's boxes are predict's
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    with TestClient(create_app(run, device="cpu"), raise_server_exceptions=False) as client:
        response = client.post("/api/predict?score_threshold=0.0",
                               files={"file": ("a.png", (tmp_path / "a.png").read_bytes(),
                                               "image/png")})  # fmt: skip
    assert response.status_code == 200, response.text
    keys = ("category", "category_id", "score", "bbox")
    assert response.json()["detections"] == [{k: r[k] for k in keys} for r in rows]
    # ONNX: export checks onnxruntime's boxes against PyTorch's on three pictures
    exported = api.export(run, format="onnx", out=tmp_path / "d.onnx")
    assert exported.path.is_file() and exported.max_abs_diff is not None
    # explain: CAMs of the best boxes on one of timm's stages, the backbone traced
    page = api.explain(run, tmp_path / "a.png", out=tmp_path / "x", score_threshold=0.0, top_k=1)
    cams = json.loads(Path(page["json"]).read_text())["cams"]
    assert cams["target_layer"].startswith("net.backbone.encoder.backbone.net.blocks.")
    assert cams["entries"] and np.asarray(cams["entries"][0]["map"]).shape == (64, 64)
