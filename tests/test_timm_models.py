"""`--model timm:NAME`: timm's models through the one door (cnnlab.models._timm). The fast tests
use timm's `test_resnet` (0.4 M parameters, a ResNet in timm's layout), the slow ones train
resnet18 and resnet10t (which torchvision lacks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models import create_model, group_parameters, model_info


def test_unknown_timm_name_is_one_line_with_close_names(capsys):
    with pytest.raises(ConfigError) as err:
        create_model("timm:resnet10q", num_classes=3)
    text = str(err.value)
    assert text.startswith("unknown timm model 'resnet10q' (did you mean: ") and "\n" not in text
    assert "resnet10t" in text  # difflib over timm.list_models()
    # a zoo name that only timm has points there
    with pytest.raises(ConfigError, match="timm has it: timm:resnet10t"):
        create_model("resnet10t", num_classes=3)
    from cnnlab.cli import main

    assert main(["models", "show", "timm:resnet10q"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: unknown timm model 'resnet10q'") and "\n" not in line


def test_timm_model_speaks_the_zoo_language():
    model = create_model("timm:test_resnet", num_classes=5, in_channels=1, image_size=32)
    reference = timm.create_model("test_resnet", num_classes=5, in_chans=1)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    logits = model(x)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)
    assert [f["module"] for f in model.feature_info] == [
        "net.act1", "net.layer1", "net.layer2", "net.layer3", "net.layer4",
    ]  # fmt: skip
    groups = group_parameters(model)  # every parameter in exactly one group
    assert [g for g, _ in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(len(names) for _, names in groups) == len(list(model.parameters()))
    assert groups[-1][1] == ["net.fc.weight", "net.fc.bias"]
    cfg = model.default_cfg
    assert (cfg["name"], cfg["family"], cfg["input_size"], cfg["weights"]) == (
        "timm:test_resnet", "timm", (1, 32, 32), None,
    )  # fmt: skip
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    assert model_info("timm:test_resnet")["input_size"] == (3, 160, 160)


def _timm_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """An ImageNet-shaped (3 channels, 1000 classes) test_resnet state dict as safetensors."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    path = tmp_path / "test_resnet.safetensors"
    save_file(state, path)
    return path, state


def test_weights_from_a_local_file_are_adapted_by_timm(tmp_path):
    path, state = _timm_file(tmp_path)
    model = create_model("timm:test_resnet", num_classes=3, in_channels=1, weights=path)
    own = model.net.state_dict()
    torch.testing.assert_close(own["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    # RGB -> grey: timm's adapt_input_conv sums the three kernels
    torch.testing.assert_close(own["conv1.0.weight"], state["conv1.0.weight"].sum(1, keepdim=True))
    assert own["fc.weight"].shape == (3, 96)  # another class count: a fresh classifier
    assert model.default_cfg["weights"] == str(path)
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(CheckpointError, match=r"bad.safetensors does not fit timm:test_resnet"):
        create_model("timm:test_resnet", num_classes=3, weights=bad)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache (HF_HUB_OFFLINE) in tmp_path, empty."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_imagenet_weights_come_from_the_hf_cache_offline(hf_cache, tmp_path):
    """timm's default weights of test_resnet (repo timm/test_resnet.r160_in1k) put into the cache as
    huggingface_hub lays it out: loaded offline; an empty cache: one line naming what is missing
    and where it looked."""
    with pytest.raises(CheckpointError) as err:
        create_model("timm:test_resnet", num_classes=3, weights="imagenet")
    text = str(err.value)
    assert "timm/test_resnet.r160_in1k" in text and str(hf_cache) in text and "\n" not in text
    assert "HF_HUB_OFFLINE" in text and "--weights PATH" in text

    path, state = _timm_file(tmp_path)
    repo = hf_cache / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "model.safetensors").write_bytes(path.read_bytes())
    model = create_model("timm:test_resnet", num_classes=1000, weights="imagenet")
    assert model.default_cfg["weights"] == "hf-hub:timm/test_resnet.r160_in1k"
    torch.testing.assert_close(model.net.fc.weight, state["fc.weight"])  # 1000 classes: kept


@pytest.mark.slow  # two trainings, an ONNX export: ~20 s on 2 cores
@pytest.mark.parametrize(
    "name", ["timm:resnet18", "timm:resnet10t"]
)  # resnet10t: not in torchvision
def test_timm_model_trains_saves_loads_predicts(name, mixed_folder, tmp_path):
    from cnnlab import api
    from cnnlab.engine.weights import load_checkpoint_model

    run = api.train(
        data=str(mixed_folder), model=name, epochs=1, batch_size=16, image_size=32, seed=0,
        out=str(tmp_path), name="t", report=False, precision="32",
    )  # fmt: skip
    assert json.loads((run.run_dir / "config.json").read_text())["model"] == name
    model, meta, _ = load_checkpoint_model(run.run_dir)
    assert meta["model"] == name and type(model).__name__ == "TimmModel"
    images = sorted(mixed_folder.rglob("*.png"))[:3]
    preds = api.predict(run.run_dir, images, top_k=2)
    assert [p.error for p in preds] == [None] * 3 and all(len(p.top) == 2 for p in preds)
    if name == "timm:resnet10t":
        onnx = api.export(run.run_dir, format="onnx", out=tmp_path / "m.onnx").path
        via_onnx = api.predict(onnx, images, top_k=2)
        assert [p.top[0][0] for p in via_onnx] == [p.top[0][0] for p in preds]
        # explain: CAMs on one of timm's feature_info stages (the last with a map >= 2x2)
        page = api.explain(run.run_dir, images[0], out=tmp_path / "x", top_k=1)
        target = json.loads(Path(page["json"]).read_text())["cams"]["target_layer"]
        assert target in {"net.layer1", "net.layer2", "net.layer3"}, target


def test_init_from_weights_report_adapted_and_reinitialised(tmp_path):
    """Transfer's path (an already built model, cnnlab's load report): timm's weights at 1000
    classes and 3 channels into a 1-channel, 3-class model."""
    from cnnlab.models._registry import load_pretrained

    path, state = _timm_file(tmp_path)
    model = create_model("timm:test_resnet", num_classes=3, in_channels=1)
    report = load_pretrained(model, "timm:test_resnet", path)
    assert report["adapted"] == ["net.conv1.0.weight"]
    assert sorted(report["reinitialised"]) == ["net.fc.bias", "net.fc.weight"]
    assert "net.layer2.0.conv1.weight" in report["loaded"]
    torch.testing.assert_close(model.net.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    torch.testing.assert_close(
        model.net.conv1[0].weight, state["conv1.0.weight"].sum(1, keepdim=True)
    )


def test_stages_follow_execution_order_when_feature_info_skips_blocks():
    """MobileNetV4's feature_info skips blocks.3: its parameters join the next stage (blocks.4),
    not the head; a ViT's cls_token (a parameter of the network itself) is in the stem. Transfer
    learning's groups (cnnlab.transfer.freeze) read them."""
    from cnnlab.transfer.freeze import model_groups

    groups = dict(group_parameters(create_model("timm:mobilenetv4_conv_small", num_classes=3)))
    assert list(groups) == ["stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.4", "head"]
    assert any(p.startswith("net.blocks.3.") for p in groups["blocks.4"])
    assert not any(p.startswith("net.blocks.") for p in groups["head"])
    vit = create_model("timm:vit_tiny_patch16_224", num_classes=3, image_size=32)
    assert "net.cls_token" in dict(group_parameters(vit))["stem"]
    stem = model_groups(vit)[0]
    assert stem.label == "stem" and "net.patch_embed.proj" in stem.modules
