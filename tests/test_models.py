"""The model zoo: every registered model through the same checks, against independent references.

References: torchvision's own models and weight metadata (``num_params``, ``_ops``), hand-worked
LeNet-5 arithmetic from the lecture, and properties (a stage's map grows by exactly
``R / reduction`` pixels when the input grows by R pixels). ResNet-101/152 at 32 px (CIFAR stem,
no down-sampling in the stem) take seconds per case on a CPU core and are marked slow; they share
all code with resnet50 apart from the number of blocks.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models import (
    count_flops,
    count_parameters,
    create_model,
    group_parameters,
    layer_table,
    list_models,
    model_info,
    model_summary,
    register_model,
    zoo_table,
)
from cnnlab.models._weights import adapt_first_conv, from_timm_layout

ALL = list_models()
LECTURE = [n for n in ALL if model_info(n)["group"] == "lecture"]
MODERN = [n for n in ALL if model_info(n)["group"] == "modern"]
# the modern backbones in the fast tier; the others share their family's code (_modern.py)
SMALL_MODERN = {"mobilenet_v3_small", "shufflenet_v2_x0_5", "regnet_x_400mf"}
# several seconds per case at 32 px on one core (the modern ones: together minutes)
HEAVY = {"resnet101", "resnet152"} | (set(MODERN) - SMALL_MODERN)
# the smallest of each modern family: checked on the meta device in the fast tier (building the
# others there takes 0.1-0.9 s each, 10 s for all; they are the same code with other numbers)
FAMILY_FIRST = SMALL_MODERN | {"mobilenet_v2", "efficientnet_b0", "efficientnet_v2_s",
                               "convnext_tiny", "regnet_y_400mf"}  # fmt: skip
NUM_CLASSES = 7
CONFIGS = [(1, 28), (3, 32)]  # (in_channels, image_size): both pick the small-input variants


def _params(models, fast=None):
    slow = HEAVY if fast is None else {n for n in models if n not in fast}
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in models]


def _build(name: str, in_channels: int, image_size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(
        name, num_classes=NUM_CLASSES, in_channels=in_channels, image_size=image_size
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread while this module runs (restored after).

    On the shared 2-core machine, PyTorch's default two threads compete with other processes and
    small convolutions ran 10-40x slower than on one thread (GoogLeNet at 28 px: 2 s vs 0.1 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def zoo():
    """One model per (name, in_channels, image_size), built on first use and shared."""
    cache: dict[tuple, nn.Module] = {}

    def get(name: str, in_channels: int, image_size: int) -> nn.Module:
        key = (name, in_channels, image_size)
        if key not in cache:
            cache[key] = _build(name, in_channels, image_size)
        return cache[key]

    return get


def _images(in_channels: int, image_size: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_channels, image_size, image_size, generator=g)


def _stage_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of every feature_info module, captured with our own hooks.

    Runs ``forward_features`` only: a grown input would not fit LeNet's fixed 400-input FC layer.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(f["module"]).register_forward_hook(
            lambda m, i, o, name=f["name"]: shapes.__setitem__(name, tuple(o.shape[1:]))
        )
        for f in model.feature_info
    ]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


# --- registry --------------------------------------------------------------------------------
def test_registry_lists_the_lecture_families_then_the_modern_backbones():
    assert ALL == LECTURE + MODERN and LECTURE[0] == "lenet5"
    assert set(LECTURE) == {
        "lenet5", "lenet5_classic", "lenet5_gap", "alexnet", "googlenet", "resnet18", "resnet34",
        "resnet50", "resnet101", "resnet152",
        *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    }  # fmt: skip
    info = model_info("resnet50")
    assert info["family"] == "resnet" and info["year"] == 2015
    assert "Residual" in info["paper"] and info["input_size"] == (3, 224, 224)
    assert model_info("lenet5")["input_size"] == (1, 32, 32)
    assert set(MODERN) == {
        "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
        *(f"efficientnet_b{i}" for i in range(8)), *(f"efficientnet_v2_{s}" for s in "sml"),
        *(f"convnext_{s}" for s in ("tiny", "small", "base", "large")),
        *(f"regnet_{k}_{f}" for k in "xy"
          for f in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
        *(f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")),
    }  # fmt: skip
    # a family's variants in their own order, not alphabetical
    assert [n for n in MODERN if n.startswith("convnext")] == [
        "convnext_tiny", "convnext_small", "convnext_base", "convnext_large"
    ]  # fmt: skip
    assert model_info("efficientnet_b7")["input_size"] == (3, 600, 600)  # the paper's size


def test_unknown_name_and_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet19'.*did you mean: resnet18"):
        create_model("resnet19", num_classes=10)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("lenet5", num_classes=0)
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("lenet5", num_classes=10, in_channels=0)
    with pytest.raises(ConfigError, match="image_size 8 is too small"):
        create_model("lenet5", num_classes=10, image_size=8)
    with pytest.raises(ConfigError, match="unknown model"):
        model_info("alexnett")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model(
            "lenet5", family="x", year=1, paper="", paper_url="", input_size=(1, 1, 1),
            small_input_below=None, description="",
        )(lambda **kw: None)  # fmt: skip


# --- every model, small input ----------------------------------------------------------------
@pytest.mark.parametrize("in_channels,image_size", CONFIGS)
@pytest.mark.parametrize("name", _params(ALL))
def test_eval_surface(zoo, name, in_channels, image_size):
    """Shape, forward == head(features), stages vs real maps, layer table, parameter groups."""
    model = zoo(name, in_channels, image_size).eval()
    x = _images(in_channels, image_size)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        again = model.forward_head(features)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(again, logits, rtol=0, atol=0)
    assert model.aux_logits == []
    cfg = model.default_cfg
    assert cfg["name"] == name and cfg["small_input"] is True
    assert cfg["input_size"] == (in_channels, image_size, image_size)
    assert len(cfg["mean"]) == len(cfg["std"]) == in_channels
    assert model.get_classifier() is model.get_submodule(model.classifier_path)

    # feature_info: channels, and reduction r means the map grows by R / r pixels when the
    # input grows by R pixels (true for any stack of convs and pools whose strides multiply to r)
    big_r = max(f["reduction"] for f in model.feature_info)
    small = _stage_shapes(model, x[:1])
    grown = _stage_shapes(model, _images(in_channels, image_size + big_r, batch=1))
    assert [f["stage"] for f in model.feature_info] == [
        s for s in model.stage_names() if s != "head"
    ]
    for f in model.feature_info:
        c, h, w = small[f["name"]]
        assert c == f["num_chs"], f
        assert h == w and grown[f["name"]][1] - h == big_r // f["reduction"], f
    assert small[model.feature_info[-1]["name"]] == tuple(features.shape[1:])

    # layer table: the real feature maps and logits, every used parameter exactly once
    rows = layer_table(model, image_size, in_channels)
    for f in model.feature_info:  # a module's output is the last row under its path
        last = [r for r in rows if r["name"] == f["name"] or r["name"].startswith(f["name"] + ".")]
        assert last[-1]["output_shape"] == small[f["name"]], f
    assert rows[-1]["kind"] == "output" and rows[-1]["name"] == model.classifier_path
    assert rows[-1]["output_shape"] == (NUM_CLASSES,)
    aux = cfg.get("aux_classifiers", ())
    assert sum(r["params"] for r in rows) == count_parameters(model, exclude=aux)
    for prev, row in zip(rows, rows[1:], strict=False):
        if row["kind"] == "flattening":
            assert row["output_shape"] == (math.prod(prev["output_shape"]),)

    # parameter groups: a partition of all parameters, classifier in "head"
    groups = group_parameters(model)
    names = [n for _, ns in groups for n in ns]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert [g for g, _ in groups] == model.stage_names() and groups[-1][0] == "head"
    assert f"{model.classifier_path}.weight" in groups[-1][1]


@pytest.mark.parametrize("in_channels,image_size", CONFIGS)
@pytest.mark.parametrize("name", _params(ALL))
def test_train_backward_and_reset_classifier(zoo, name, in_channels, image_size):
    model = copy.deepcopy(zoo(name, in_channels, image_size)).train()
    x = _images(in_channels, image_size)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    for aux in model.aux_logits:
        loss = loss + model.aux_weight * nn.functional.cross_entropy(aux, torch.tensor([0, 1]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.get_classifier().weight.grad.abs().sum() > 0

    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model.default_cfg["num_classes"] == 5
    assert model(x).shape == (2, 5)
    assert all(a.shape == (2, 5) for a in model.aux_logits)
    with pytest.raises(ConfigError):
        model.reset_classifier(0)


@pytest.mark.parametrize("name", _params(ALL))
def test_state_dict_round_trip(zoo, name):
    model = zoo(name, 1, 28).eval()
    x = _images(1, 28)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    other = _build(name, 1, 28, seed=123).eval()
    with torch.no_grad():
        expected = model(x)
        # a different init really differs (relatively: torchvision's untrained MobileNetV3 gives
        # logits of about 1e-10 in eval mode, its activations shrinking block by block)
        assert not torch.allclose(other(x), expected, rtol=1e-3, atol=0)
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


# --- exact sizes against references ----------------------------------------------------------
def _meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **{"num_classes": 1000, **kw})


@pytest.mark.parametrize(
    "name,expected",
    [("alexnet", 61_100_840), ("vgg16", 138_357_544), ("resnet18", 11_689_512),
     ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("resnet101", 44_549_160),
     ("resnet152", 60_192_808), ("googlenet", 6_624_904)],
)  # fmt: skip
def test_imagenet_parameter_counts(name, expected):
    model = _meta_model(name)
    aux = model.default_cfg.get("aux_classifiers", ())
    assert count_parameters(model, exclude=aux) == expected


@pytest.mark.parametrize(
    "name", _params([n for n in ALL if not n.startswith("lenet")], fast=set(LECTURE) | FAMILY_FIRST)
)
def test_parameters_and_flops_match_torchvision_metadata(name):
    """num_params and _ops (GMACs) published with torchvision's weights, for every family."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    model = _meta_model(name)
    aux = model.default_cfg.get("aux_classifiers", ())
    assert count_parameters(model, exclude=aux) == weights.meta["num_params"]
    size = weights.transforms().crop_size[0]  # _ops is at the weights' size (EfficientNet-B7: 600)
    # _ops is GMACs to 3 decimals: half a unit of the last digit is 1e6 FLOPs (ShuffleNet: 0.04)
    expected = 2e9 * weights.meta["_ops"]
    assert count_flops(model, size, 3) == pytest.approx(expected, rel=2e-3, abs=1e6)
    assert model.default_cfg["small_input"] is False


def test_lenet5_matches_the_lecture():
    # 61,706 = (5*5*1*6 + 6) + (5*5*6*16 + 16) + (400*120 + 120) + (120*84 + 84) + (84*10 + 10)
    expected = (25 * 6 + 6) + (25 * 6 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + 850
    assert expected == 61_706
    for name in ("lenet5", "lenet5_classic"):
        for size in (32, 28, 64, 20):
            model = create_model(name, num_classes=10, in_channels=1, image_size=size)
            assert count_parameters(model) == 61_706, (name, size)
    rgb = create_model("lenet5", num_classes=10, in_channels=3, image_size=32)
    assert count_parameters(rgb) == 61_706 + 2 * 5 * 5 * 6  # two more input planes in conv 1

    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    rows = layer_table(model, 28, 1)
    assert [(r["kind"], r["output_shape"]) for r in rows] == [
        ("convolution", (6, 28, 28)), ("ReLU", (6, 28, 28)), ("pooling", (6, 14, 14)),
        ("convolution", (16, 10, 10)), ("ReLU", (16, 10, 10)), ("pooling", (16, 5, 5)),
        ("flattening", (400,)), ("fully connected", (120,)), ("ReLU", (120,)),
        ("fully connected", (84,)), ("ReLU", (84,)), ("output", (10,)),
    ]  # fmt: skip
    # FLOPs by hand: 2 * (28*28*6*25 + 10*10*16*150 + 400*120 + 120*84 + 84*10)
    assert count_flops(model, 28, 1) == 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 58_920)

    classic = create_model("lenet5_classic", num_classes=10, in_channels=1, image_size=32)
    kinds = {type(m) for m in classic.modules()}
    assert nn.Tanh in kinds and nn.AvgPool2d in kinds and nn.ReLU not in kinds


def test_layer_table_marks_residual_adds_and_inception_concats():
    rows = layer_table(create_model("resnet18", num_classes=3, image_size=32), 32, 3)
    adds = [r for r in rows if r["kind"] == "residual add"]
    assert len(adds) == 8  # 4 stages x 2 basic blocks
    i = rows.index(adds[0])
    assert rows[i + 1]["name"] == "layer1.0.relu"  # relu(out + shortcut): add, then ReLU
    rows = layer_table(create_model("googlenet", num_classes=3, image_size=32), 32, 3)
    assert sum(r["kind"] == "concat/inception" for r in rows) == 9
    assert {r["kind"] for r in rows} >= {"convolution", "ReLU", "batch norm", "pooling",
                                         "flattening", "dropout", "output"}  # fmt: skip


def test_zoo_table_and_summary_are_cheap_and_consistent():
    names = [*LECTURE, *sorted(SMALL_MODERN)]  # the whole zoo: test_cli's slow `models list`
    rows = zoo_table(image_size=224, in_channels=3, num_classes=1000, names=names)
    assert [r["name"] for r in rows] == names
    assert {r["group"] for r in rows if r["name"] in SMALL_MODERN} == {"modern"}
    by_name = {r["name"]: r for r in rows}
    assert (
        by_name["resnet18"]["params"] == 11_689_512 and by_name["googlenet"]["params"] == 6_624_904
    )
    assert by_name["vgg16"]["flops"] > by_name["resnet18"]["flops"] > by_name["alexnet"]["flops"]
    summary = model_summary("lenet5", num_classes=10, in_channels=1, image_size=32)
    assert summary["params"] == 61_706 and summary["layers"][-1]["kind"] == "output"
    assert summary["stages"] == ["stage1", "stage2", "head"]


def _recorded_zoo() -> dict:
    import cnnlab

    return json.loads((Path(cnnlab.__file__).parent / "cli" / "zoo.json").read_text())


REGENERATE = "out of date: regenerate cnnlab/cli/zoo.json with `python -m cnnlab.models`"


def test_the_recorded_zoo_lists_the_registry():
    """`cnnlab models` prints cli/zoo.json without torch; it lists every registered model in the
    registry's order with its group, the groups' titles and the task architectures, and its rows
    are what zoo_table computes (checked here for the small models; all of them, slow, below)."""
    from cnnlab.models._registry import GROUPS, TASK_MODELS
    from cnnlab.models.summary import ZOO_DEFAULTS

    record = _recorded_zoo()
    assert [r["name"] for r in record["rows"]] == list_models(), REGENERATE
    assert [r["group"] for r in record["rows"]] == [model_info(n)["group"] for n in ALL], REGENERATE
    assert record["groups"] == GROUPS and record["task_models"] == TASK_MODELS, REGENERATE
    assert {k: record[k] for k in ZOO_DEFAULTS} == ZOO_DEFAULTS
    names = ["lenet5", "lenet5_gap", "alexnet", "mobilenet_v3_small"]
    rows = {r["name"]: r for r in record["rows"]}
    assert [rows[n] for n in names] == zoo_table(**ZOO_DEFAULTS, names=names), REGENERATE


@pytest.mark.slow  # 54 models built on the meta device and their FLOPs counted: ~10 s
def test_the_recorded_zoo_is_what_the_registry_computes():
    from cnnlab.models.summary import zoo_record

    assert _recorded_zoo() == zoo_record(), REGENERATE


# --- the modern backbones against torchvision's own constructors -------------------------------
def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", _params(MODERN, fast=FAMILY_FIRST))
def test_modern_backbones_are_torchvisions_networks(name):
    """At 1000 classes, 3 channels and 224 px: torchvision's state dict, key for key and shape for
    shape (so its weights load as they are), hence its parameter count. RegNet's constructor
    cannot build on the meta device (it computes widths with .tolist()): the two smallest are
    compared on the CPU, every RegNet's count against torchvision's published ``num_params``."""
    ours = _meta_model(name)
    if not name.startswith("regnet"):
        with torch.device("meta"):
            reference = torchvision.models.get_model(name, weights=None)
    elif name.endswith("400mf"):
        reference = torchvision.models.get_model(name, weights=None)
    else:
        reference = None
    if reference is not None:
        assert _shapes(ours) == _shapes(reference)
        assert count_parameters(ours) == count_parameters(reference)
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    assert count_parameters(ours) == meta["num_params"]
    cfg = ours.default_cfg
    assert cfg["small_input"] is False and cfg["family"] == model_info(name)["family"]
    assert ours.feature_info[-1]["reduction"] == 32


@pytest.mark.parametrize("name", _params(MODERN, fast=FAMILY_FIRST))
def test_modern_small_input_variant_keeps_the_weights_shapes(name):
    """Below 64 px the first two stride-2 steps run at stride 1: total reduction 8 (4x4 maps at
    32 px); only strides change, so every ImageNet tensor still fits (ConvNeXt: not its stem)."""
    big, small = _meta_model(name), _meta_model(name, image_size=32)
    assert small.default_cfg["small_input"] is True
    assert small.feature_info[-1]["reduction"] == 8
    assert small.stage_names() == big.stage_names()  # same stages either way ("stages:N")
    big_shapes = _shapes(big)
    differ = {k for k, shape in _shapes(small).items() if big_shapes[k] != shape}
    assert differ == ({"features.0.0.weight"} if name.startswith("convnext") else set())
    assert set(small.reinit_on_mismatch) == ({"features.0.0"} if differ else set())


@pytest.mark.parametrize("name", sorted(SMALL_MODERN))
def test_small_modern_backbones_at_32_and_224_px(name):
    for size, side in ((32, 4), (224, 7)):
        model = _build(name, 3, size).eval()
        x = _images(3, size, batch=1)
        with torch.no_grad():
            assert model(x).shape == (1, NUM_CLASSES)
            assert model.forward_features(x).shape[-2:] == (side, side)


def test_layer_table_explains_the_modern_blocks():
    summary = model_summary("mobilenet_v2", num_classes=3, image_size=32)
    rows = summary["layers"]
    assert any(r["kind"] == "residual add" and r.get("block") == "inverted residual" for r in rows)
    assert any(r["detail"].startswith("depthwise (one filter per channel), 3x3") for r in rows)
    assert any(r["kind"] == "ReLU" and r["detail"] == "min(max(0, z), 6)" for r in rows)
    assert list(summary["blocks"]) == ["inverted residual"]
    assert "depthwise-separable" in summary["blocks"]["inverted residual"]
    with torch.device("meta"):
        convnext = create_model("convnext_tiny", num_classes=3, image_size=32)
    rows = layer_table(convnext, 32, 3)
    adds = [r for r in rows if r["kind"] == "residual add"]
    assert len(adds) == 3 + 3 + 9 + 3 and all(r["block"] == "ConvNeXt block" for r in adds)
    assert adds[0]["params"] == 96  # layer scale: one factor per channel, counted in its row
    assert sum(r["params"] for r in rows) == count_parameters(convnext)
    assert {"layer norm", "activation"} <= {r["kind"] for r in rows}


def test_modern_imagenet_weights_carry_their_provenance(monkeypatch):
    torch.manual_seed(0)
    published = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    seen = []

    def cached(url, *args, **kwargs):  # the torch hub cache, or a download
        seen.append(url)
        return published

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", cached)
    enum = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    model = create_model("mobilenet_v3_small", num_classes=10, in_channels=1, image_size=32,
                         weights="imagenet")  # fmt: skip
    assert seen == [enum.url]
    cfg = model.default_cfg
    assert cfg["weights"] == "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert cfg["resize_size"] == enum.transforms().resize_size[0] and cfg["small_input"]
    report = model.load_report
    assert sorted(report["reinitialised"]) == ["classifier.3.bias", "classifier.3.weight"]
    assert report["adapted"] == ["features.0.0.weight"]  # RGB kernels summed for grey
    torch.testing.assert_close(model.features[1].block[0][0].weight,
                               published["features.1.block.0.0.weight"])  # fmt: skip


def test_modern_backbones_serve_segmentation_and_detection():
    from cnnlab.models.detection import create_detection_model
    from cnnlab.models.segmentation import create_segmentation_model

    torch.manual_seed(0)
    for encoder in ("mobilenet_v3_small", "shufflenet_v2_x0_5"):
        net = create_segmentation_model("unet", num_classes=3, encoder=encoder, image_size=32)
        assert net.eval()(_images(3, 32, batch=1)).shape == (1, 3, 32, 32)
    detector = create_detection_model("fcos", num_classes=2, backbone="regnet_x_400mf",
                                      image_size=64).eval()  # fmt: skip
    with torch.no_grad():
        (found,) = detector(torch.rand(1, 3, 64, 64))
    assert set(found) >= {"boxes", "labels", "scores"}


# --- variants ---------------------------------------------------------------------------------
def test_small_input_threshold_and_logging(caplog):
    with caplog.at_level(logging.INFO, logger="cnnlab.models"):
        small = create_model("resnet18", num_classes=10, image_size=63)
    assert small.default_cfg["small_input"] is True
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert any("small input" in r.getMessage() for r in caplog.records)
    large = create_model("resnet18", num_classes=10, image_size=64)
    assert large.default_cfg["small_input"] is False and large.conv1.kernel_size == (7, 7)
    vgg = _meta_model("vgg11", image_size=32)
    assert vgg.default_cfg["pool_size"] == (1, 1) and vgg.classifier[0].in_features == 512
    assert _meta_model("vgg11").default_cfg["pool_size"] == (7, 7)


def test_a_model_built_for_another_size_says_to_pass_image_size():
    """alexnet without image_size is the ImageNet variant: a 32 px input vanishes in its stride-4
    stem. Refused with a cnnlab error naming image_size (not PyTorch's "Output size is too
    small"); built with image_size=32, the small-input variant takes it."""
    imagenet = create_model("alexnet", num_classes=7, in_channels=1).eval()
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(ConfigError, match=r"alexnet was built for 224x224 .*image_size=32"):
        imagenet(x)
    small = create_model("alexnet", num_classes=7, in_channels=1, image_size=32).eval()
    with torch.no_grad():
        assert small(x).shape == (2, 7)
    lenet = create_model("lenet5", num_classes=3, in_channels=1, image_size=32).eval()
    with pytest.raises(ConfigError, match="lenet5 was built for 32x32 .* 48x48"):
        lenet(torch.rand(1, 1, 48, 48))  # a flatten length that does not fit the first FC
    with pytest.raises(RuntimeError, match="channels"):  # other errors are not reworded
        lenet(torch.rand(1, 3, 32, 32))


def test_any_channel_count():
    for name in ("lenet5", "resnet18", "googlenet"):
        model = create_model(name, num_classes=4, in_channels=5, image_size=32).eval()
        assert model(_images(5, 32)).shape == (2, 4)
        first = model.get_submodule(model.first_conv_path)
        assert first.in_channels == 5


def test_googlenet_auxiliary_heads():
    model = create_model("googlenet", num_classes=6, image_size=32)
    x = _images(3, 32)
    model.train()
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 6)
    assert len(model.aux_logits) == 2 and all(a.shape == (2, 6) for a in model.aux_logits)
    assert model.aux_weight == 0.3
    model.eval()
    model(x)
    assert model.aux_logits == []
    model.train()
    model.use_aux = False
    model(x)
    assert model.aux_logits == []


# --- weights ----------------------------------------------------------------------------------
def _save(state_dict: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)


@pytest.fixture(scope="module")
def tv_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that loading them is tested too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_torchvision_weights_reproduce_torchvision(tmp_path, tv_resnet18, suffix):
    path = tmp_path / f"resnet18{suffix}"
    _save(tv_resnet18.state_dict(), path)
    model = create_model("resnet18", num_classes=10, weights=path).eval()
    x = _images(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv_resnet18(x))
    report = model.load_report
    assert report["reinitialised"] == [] and report["adapted"] == []
    assert set(report["loaded"]) == set(tv_resnet18.state_dict())
    assert model.default_cfg["weights"] == str(path)


def test_channel_adaptation_and_class_replacement(tmp_path, tv_resnet18):
    path = tmp_path / "resnet18.pt"
    _save(tv_resnet18.state_dict(), path)
    grey = _images(1, 64)
    with torch.no_grad():
        rgb_logits = tv_resnet18(grey.repeat(1, 3, 1, 1))
        # 1 channel: summed RGB kernels answer a grey image as the RGB net answers (g, g, g)
        one = create_model("resnet18", num_classes=10, in_channels=1, weights=path).eval()
        torch.testing.assert_close(one(grey), rgb_logits, rtol=1e-4, atol=1e-4)
        assert one.load_report["adapted"] == ["conv1.weight"]
        # 6 channels: kernels repeated twice and scaled by 3/6
        six = create_model("resnet18", num_classes=10, in_channels=6, weights=path).eval()
        torch.testing.assert_close(six(grey.repeat(1, 6, 1, 1)), rgb_logits, rtol=1e-4, atol=1e-4)
        # other class count: same features, a fresh classifier, reported
        four = create_model("resnet18", num_classes=4, weights=path).eval()
        x = _images(3, 64)
        reference = nn.Sequential(*list(tv_resnet18.children())[:-2])
        torch.testing.assert_close(four.forward_features(x), reference(x))
        assert four(x).shape == (2, 4)
        assert sorted(four.load_report["reinitialised"]) == ["fc.bias", "fc.weight"]


def test_adapt_first_conv_rule():
    weight = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(adapt_first_conv(weight, 1), weight.sum(1, keepdim=True))
    two = adapt_first_conv(weight, 2)
    torch.testing.assert_close(two, weight[:, :2] * 1.5)
    seven = adapt_first_conv(weight, 7)
    assert seven.shape == (4, 7, 5, 5)
    torch.testing.assert_close(seven[:, 3:6], weight * 3 / 7)


def test_small_variant_reinitialises_the_imagenet_stem(tmp_path, tv_resnet18):
    path = tmp_path / "resnet18.safetensors"
    _save(tv_resnet18.state_dict(), path)
    model = create_model("resnet18", num_classes=10, image_size=32, weights=path)
    assert model.load_report["reinitialised"] == ["conv1.weight"]
    torch.testing.assert_close(model.layer4[1].conv2.weight, tv_resnet18.layer4[1].conv2.weight)


def test_timm_vgg_layout_is_converted():
    """timm's VGG keeps FC 1 as a 7x7 conv: converted, it must compute the same Linear."""
    conv_weight = torch.randn(8, 512, 7, 7)
    state = {
        "features.0.weight": torch.randn(64, 3, 3, 3),
        "pre_logits.fc1.weight": conv_weight,
        "pre_logits.fc1.bias": torch.randn(8),
        "pre_logits.fc2.weight": torch.randn(8, 8, 1, 1),
        "head.fc.weight": torch.randn(3, 8),
        "head.fc.bias": torch.randn(3),
    }
    converted, layout = from_timm_layout(state)
    assert layout == "timm"
    assert set(converted) == {
        "features.0.weight",
        "classifier.0.weight",
        "classifier.0.bias",
        "classifier.3.weight",
        "classifier.6.weight",
        "classifier.6.bias",
    }
    maps = torch.randn(2, 512, 7, 7)
    as_conv = nn.functional.conv2d(maps, conv_weight).flatten(1)
    as_linear = nn.functional.linear(maps.flatten(1), converted["classifier.0.weight"])
    torch.testing.assert_close(as_linear, as_conv, rtol=1e-4, atol=1e-4)
    assert converted["classifier.3.weight"].shape == (8, 8)


def test_timm_resnet_layout_loads(tmp_path, tv_resnet18):
    # timm's resnet18 uses torchvision's key names (conv1, bn1, layer1.0.conv1, fc), wrapped here
    # the way training scripts save it, with a DataParallel prefix
    wrapped = {"state_dict": {f"module.{k}": v for k, v in tv_resnet18.state_dict().items()},
               "epoch": 3}  # fmt: skip
    path = tmp_path / "timm_resnet18.pth"
    torch.save(wrapped, path)
    model = create_model("resnet18", num_classes=10, weights=path).eval()
    x = _images(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv_resnet18(x))


@pytest.mark.slow
def test_timm_vgg_file_end_to_end(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.vgg11(weights=None, num_classes=10).eval()
    timm_state = {}
    for k, v in tv.state_dict().items():  # timm's vgg _filter_fn, written out
        k = k.replace("classifier.0", "pre_logits.fc1").replace("classifier.3", "pre_logits.fc2")
        k = k.replace("classifier.6", "head.fc")
        if k == "pre_logits.fc1.weight":
            v = v.reshape(-1, 512, 7, 7)
        if k == "pre_logits.fc2.weight":
            v = v.reshape(-1, 4096, 1, 1)
        timm_state[k] = v
    path = tmp_path / "vgg11_timm.safetensors"
    _save(timm_state, path)
    model = create_model("vgg11", num_classes=10, weights=path).eval()
    assert model.load_report["layout"] == "timm"
    x = _images(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))


def test_mismatching_files_raise_checkpoint_error_listing_keys(tmp_path, tv_resnet18):
    path = tmp_path / "resnet18.pth"
    _save(tv_resnet18.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing keys \(layer1\.2\.conv1\.weight"):
        create_model("resnet34", num_classes=10, weights=path)
    with pytest.raises(CheckpointError, match=r"missing keys.*unexpected keys") as err:
        create_model("alexnet", num_classes=10, weights=path)
    assert "conv1.weight" in str(err.value) and "features.0.weight" in str(err.value)
    state = tv_resnet18.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    _save(state, path)
    with pytest.raises(CheckpointError, match=r"other shapes \(layer2\.0\.conv1\.weight: file"):
        create_model("resnet18", num_classes=10, weights=path)
    state = tv_resnet18.state_dict()
    state["fc.bias"] = torch.full((10,), float("nan"))
    _save(state, path)
    with pytest.raises(CheckpointError, match="fc.bias contains NaN"):
        create_model("resnet18", num_classes=10, weights=path)


class _NotATensor:
    pass


def test_unsafe_missing_and_odd_files(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        create_model("lenet5", num_classes=10, weights=path)
    # said as the command line spells it too (cnnlab.cli turns "option weights" into --weights)
    with pytest.raises(CheckpointError, match="weights file not found.*option weights takes"):
        create_model("lenet5", num_classes=10, weights=tmp_path / "nope.pth")
    (tmp_path / "w.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="unsupported weights file type '.txt'"):
        create_model("lenet5", num_classes=10, weights=tmp_path / "w.txt")
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        create_model("lenet5", num_classes=10, weights=tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match="no published ImageNet weights"):
        create_model("lenet5", num_classes=10, weights="imagenet")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        create_model("resnet18", num_classes=10, weights="IMAGENET1K_V9")


def test_imagenet_weights_offline_fail_clearly(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    # the way out is said as a command-line user types it (it said only `weights=PATH`)
    with pytest.raises(
        CheckpointError,
        match=r"could not download.*`cnnlab train --weights PATH`, `cnnlab finetune --from PATH`",
    ):
        create_model("resnet18", num_classes=10, weights="imagenet")


def test_imagenet_weights_carry_their_preprocessing(monkeypatch, tv_resnet18):
    torch.manual_seed(0)
    published = torchvision.models.resnet18(weights=None).state_dict()  # stands in for the file
    seen = []

    def cached(url, *args, **kwargs):
        seen.append(url)
        return published

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", cached)
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    model = create_model("resnet18", num_classes=1000, weights="imagenet")
    assert seen == [enum.url]
    cfg = model.default_cfg
    transforms = enum.transforms()
    assert cfg["weights"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert cfg["mean"] == tuple(transforms.mean) and cfg["std"] == tuple(transforms.std)
    assert cfg["resize_size"] == transforms.resize_size[0]
    assert cfg["class_names"] == enum.meta["categories"]
    torch.testing.assert_close(model.fc.weight, published["fc.weight"])

    grey = create_model("resnet18", num_classes=3, in_channels=1, weights="imagenet")
    assert "class_names" not in grey.default_cfg
    assert grey.default_cfg["mean"] == pytest.approx((sum(transforms.mean) / 3,))
    assert sorted(grey.load_report["reinitialised"]) == ["fc.bias", "fc.weight"]


# --- large inputs (slow) ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_imagenet_size_forward(name):
    model = create_model(name, num_classes=5, in_channels=3, image_size=224).eval()
    with torch.no_grad():
        assert model(_images(3, 224, batch=1)).shape == (1, 5)
    shapes = _stage_shapes(model, _images(3, 224, batch=1))
    assert [shapes[f["name"]][0] for f in model.feature_info] == [
        f["num_chs"] for f in model.feature_info
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_one_channel_just_above_threshold(name):
    model = create_model(name, num_classes=3, in_channels=1, image_size=64).eval()
    with torch.no_grad():
        assert model(_images(1, 64)).shape == (2, 3)


def test_one_registry_lists_every_tasks_models_as_its_builders_accept_them():
    """list_models(task=...) is the list each task's builder checks against (one source)."""
    from cnnlab.errors import ConfigError
    from cnnlab.models import TASKS, list_models
    from cnnlab.models.detection import DETECTORS
    from cnnlab.models.segmentation import ARCHITECTURES
    from cnnlab.video.models import VIDEO_MODELS, check_video_model

    assert list_models() == list_models("classification") and "lenet5" in list_models()
    assert list_models("segmentation") == list(ARCHITECTURES)
    assert list_models("detection") == list(DETECTORS)
    assert list_models("video-classification") == list(VIDEO_MODELS)
    assert set(TASKS) == {"classification", "segmentation", "detection", "video-classification"}
    for name in VIDEO_MODELS:
        check_video_model(name, None)  # accepted by the video builder's check
    with pytest.raises(ConfigError, match="unknown task 'detect'.*detection"):
        list_models("detect")


def test_mobilenet_v3_running_statistics_follow_a_short_run():
    """torchvision's MobileNetV3 BatchNorm momentum (0.01) leaves the running statistics near 0/1
    after the few hundred steps of a small dataset, so evaluation sits at chance; the zoo's 0.1
    follows. After 100 train-mode passes over one batch, the eval-mode feature maps match the
    train-mode ones (running statistics ~= the batch's); the control with 0.01 does not."""
    from cnnlab.models.mobilenet import set_batchnorm_momentum

    torch.manual_seed(0)
    x = torch.randn(16, 1, 16, 16) * 3 + 2  # statistics far from the initial 0 / 1
    gaps = {}
    for momentum in (None, 0.01):  # None: as the zoo builds it
        net = create_model("mobilenet_v3_small", num_classes=4, in_channels=1, image_size=16)
        if momentum is not None:
            set_batchnorm_momentum(net, momentum)
        net.train()
        with torch.no_grad():
            for _ in range(100):  # 0.9 ** 100: the initial 0 / 1 forgotten; 0.99 ** 100 = 0.37
                trained = net.features(x)
            net.eval()
            evaluated = net.features(x)
        gaps[momentum] = float((evaluated - trained).abs().mean() / trained.abs().mean())
    # (not 0 with 0.1: eval divides by the unbiased variance of 64-value maps, compounded over 50 layers)
    assert gaps[None] < 0.4 and gaps[0.01] > 0.9, gaps
