"""Transfer learning: loading sources, freezing, frozen BatchNorm, recipes, embeddings, lr finder.

References are independent of the code under test: parameter names of the torchvision layouts
written out by hand, the first-conv adaptation rule as a formula, optimizer state read from torch
itself, the exponential smoothing against pandas' ``ewm(adjust=True)`` (the same debiased average).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.config import PreprocessSpec, TrainConfig
from cnnlab.data.loader import TensorLoader
from cnnlab.data.sources import split_by_ids
from cnnlab.engine.checkpoint import save_weights
from cnnlab.engine.optim import build_optimizer, build_scheduler, param_groups
from cnnlab.engine.trainer import LoopState, Trainer
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models import create_model
from cnnlab.run import saved_config
from cnnlab.tasks.classification import ClassificationTask
from cnnlab.transfer import load_pretrained, prepare_transfer, resolve_freeze, train_mode
from cnnlab.transfer.recipes import unfreeze_epochs

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _perturb_bn(model: torch.nn.Module, seed: int) -> None:
    """Distinct, plausible running statistics, so that 'unchanged' cannot be the default values."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(17)


def save_source(
    path: Path,
    name: str,
    class_names: list[str],
    *,
    in_channels: int = 3,
    image_size: int = 16,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A cnnlab checkpoint (weights + the metadata train writes) of a freshly built model."""
    torch.manual_seed(seed)
    model = create_model(
        name, num_classes=len(class_names), in_channels=in_channels, image_size=image_size
    )
    with torch.no_grad():
        _perturb_bn(model, seed)
    spec = PreprocessSpec(image_size, in_channels, (0.25,) * in_channels, (0.5,) * in_channels)
    meta = {
        "model": name,
        "num_classes": len(class_names),
        "in_channels": in_channels,
        "image_size": image_size,
        "class_names": class_names,
        "preprocess": spec.to_dict(),
    }
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_weights(path, state, meta)
    return state


# -- freezing specs ---------------------------------------------------------------------------
def _names(model: torch.nn.Module, prefixes: tuple[str, ...]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def test_freeze_specs_match_the_torchvision_layouts_written_by_hand():
    resnet = create_model("resnet18", num_classes=4, in_channels=3, image_size=16)
    assert resolve_freeze(resnet, "none") == set()
    assert resolve_freeze(resnet, "backbone") == {
        n for n, _ in resnet.named_parameters() if not n.startswith("fc.")
    }
    assert resolve_freeze(resnet, "stages:0") == _names(resnet, ("conv1.", "bn1."))
    assert resolve_freeze(resnet, "stages:2") == _names(
        resnet, ("conv1.", "bn1.", "layer1.", "layer2.")
    )
    assert resolve_freeze(resnet, "up-to:layer2.0.conv1") == resolve_freeze(resnet, "stages:2")
    assert resolve_freeze(resnet, "up-to:layer3") == resolve_freeze(resnet, "stages:3")
    assert resolve_freeze(resnet, "layer1.*,fc.bias") == _names(resnet, ("layer1.", "fc.bias"))
    # VGG-11-BN: [conv, bn, relu, pool] [conv, bn, relu, pool] [conv, bn, relu, conv, ...] ...
    vgg = create_model("vgg11_bn", num_classes=4, in_channels=3, image_size=32)
    two = tuple(f"features.{i}." for i in (0, 1, 4, 5))
    assert resolve_freeze(vgg, "stages:2") == _names(vgg, two)
    assert resolve_freeze(vgg, "up-to:features.5") == _names(vgg, two)
    assert resolve_freeze(vgg, "backbone") == _names(vgg, ("features.",))
    # LeNet-5 has no stem: stages:1 is the first conv alone
    lenet = create_model("lenet5", num_classes=4, in_channels=1, image_size=28)
    assert resolve_freeze(lenet, "stages:1") == {"features.0.weight", "features.0.bias"}


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("bakbone", "did you mean: backbone"),
        ("stages:7", "from 0 to 4"),
        ("stages:two", "whole number"),
        ("up-to:layr2", "did you mean: layer2"),
        ("stage:2", "did you mean: stages:"),
        ("layer9.*", "matches no parameter"),
    ],
)
def test_unknown_freeze_specs_name_the_forms_and_the_stages(spec, fragment):
    model = create_model("resnet18", num_classes=4, in_channels=3, image_size=16)
    with pytest.raises(ConfigError) as err:
        resolve_freeze(model, spec)
    msg = str(err.value)
    assert fragment in msg
    assert (
        "backbone | stages:N | up-to:LAYER" in msg
        and "stem, layer1, layer2, layer3, layer4, head" in msg
    )


def test_freezing_everything_or_giving_two_sources_is_a_config_error(tmp_path):
    model = create_model("lenet5", num_classes=3, in_channels=1, image_size=28)
    with pytest.raises(ConfigError, match="nothing to train"):
        prepare_transfer(model, TrainConfig(freeze="*"), class_names=["a", "b", "c"], in_channels=1)
    cfg = TrainConfig(weights="imagenet", init_from=str(tmp_path))
    with pytest.raises(ConfigError, match="use init_from alone"):
        prepare_transfer(model, cfg, class_names=["a", "b", "c"], in_channels=1)


# -- frozen BatchNorm through the real training loop ---------------------------------------------
def test_frozen_backbone_and_every_bn_statistic_stay_bit_identical_after_fine_tuning(tmp_path):
    """keras #9214 / ultralytics PR #8753: a frozen BN in train mode moves its running stats."""
    source = save_source(tmp_path / "src.safetensors", "resnet18", ["p", "q", "r"], seed=3)
    run = api.train(
        data="builtin:shapes?n=60&size=16",
        model="resnet18",
        init_from=str(tmp_path / "src.safetensors"),
        freeze="backbone",
        epochs=2,
        batch_size=16,
        lr=0.05,
        image_size=16,
        out=str(tmp_path),
        name="ft",
        report=False,
        keep="all",  # epoch 1's weights are compared with epoch 2's
    )
    ckpt = run.run_dir / "checkpoints"
    first, last = (
        load_file(ckpt / "epoch-0001.safetensors"),
        load_file(ckpt / "epoch-0002.safetensors"),
    )
    backbone = [k for k in source if not k.startswith("fc.")]
    bn_keys = [k for k in backbone if k.endswith(BN_BUFFERS)]
    assert len(bn_keys) == 3 * 20  # ResNet-18: 20 BatchNorm layers (17 + 3 downsample)
    for key in backbone:  # every frozen parameter and every BN statistic, bit for bit
        assert torch.equal(last[key], source[key]), key
    assert last["fc.weight"].shape == (5, 512)  # 5 shapes: the 3-class head was replaced
    assert not torch.equal(first["fc.weight"], last["fc.weight"])  # the head did train
    meta = json.loads((run.run_dir / "preprocess.json").read_text())
    assert meta["mean"] == [0.25, 0.25, 0.25]  # the source's normalisation travels with it


def _random_loader(n: int, channels: int, size: int, classes: int, batch: int) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    targets = torch.arange(n) % classes
    mean, std = torch.full((channels,), 0.5), torch.full((channels,), 0.25)
    return TensorLoader(images, targets, mean, std, batch, shuffle=True, seed=0)


def test_fine_tune_recipe_head_first_then_discriminative_rates_and_no_state_for_frozen(tmp_path):
    save_source(tmp_path / "src.safetensors", "resnet18", ["p", "q", "r"], seed=1)
    model = create_model("resnet18", num_classes=4, in_channels=3, image_size=16)
    cfg = TrainConfig(
        model="resnet18", init_from=str(tmp_path / "src.safetensors"), strategy="fine-tune",
        head_epochs=1, lr=0.1, lr_mult=0.5, epochs=2, schedule="constant", warmup_epochs=0,
    )  # fmt: skip
    plan = prepare_transfer(model, cfg, class_names=list("abcd"), in_channels=3)
    assert plan.include_frozen
    optimizer = build_optimizer(
        "sgd",
        param_groups(model, 5e-4, cfg.lr, plan.lr_scale, include_frozen=plan.include_frozen),
        lr=cfg.lr, momentum=0.9, nesterov=True, device=torch.device("cpu"),
    )  # fmt: skip
    loader = _random_loader(16, 3, 16, 4, 8)
    trainer = Trainer(
        model, ClassificationTask(4), optimizer, build_scheduler(optimizer, "constant", 4, 0),
        device=torch.device("cpu"), callbacks=plan.callbacks, train_mode=plan.train_mode,
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    head = {"fc.weight", "fc.bias"}

    trainer.fit(loader, None, 1)  # epoch 1: the head alone
    for name, p in params.items():
        has_state = len(optimizer.state.get(p, {})) > 0
        assert has_state == (name in head), name
        assert p.requires_grad == (name in head)
        if name not in head:
            assert torch.equal(p.detach(), before[name]) and p.grad is None
    for key, value in model.state_dict().items():
        if key.endswith(BN_BUFFERS):
            assert torch.equal(value, before[key]), key
    rows = plan.layer_rows()
    for row in rows:
        module = model.get_submodule(row["layer"])
        assert row["requires_grad"] == all(
            p.requires_grad for p in module.parameters(recurse=False)
        )
    assert {r["layer"] for r in rows if r["status"] == "modifiable"} == {"fc"}

    trainer.fit(loader, None, 2)  # epoch 2: everything, each group at lr_mult x the next one's rate
    assert all(len(optimizer.state.get(p, {})) > 0 for p in params.values())
    assert not torch.equal(model.layer1[0].bn1.running_mean, before["layer1.0.bn1.running_mean"])
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    expected = {"conv1.weight": 0.5**5, "layer1.0.conv1.weight": 0.5**4,
                "layer2.0.conv1.weight": 0.5**3, "layer3.0.conv1.weight": 0.5**2,
                "layer4.0.conv1.weight": 0.5, "fc.weight": 1.0}  # fmt: skip
    for name, scale in expected.items():
        assert lr_of[id(params[name])] == pytest.approx(0.1 * scale), name


def test_gradual_unfreezes_one_group_from_the_top_per_epoch():
    model = create_model("lenet5", num_classes=3, in_channels=1, image_size=28)
    cfg = TrainConfig(strategy="gradual", epochs=4)
    plan = prepare_transfer(model, cfg, class_names=list("abc"), in_channels=1)
    assert plan.unfreeze_epoch == [2, 1, 0]  # stage1, stage2, head
    callback = plan.callbacks[0]
    groups = {
        "stage1": "features.0.weight",
        "stage2": "features.3.weight",
        "head": "classifier.4.weight",
    }
    params = dict(model.named_parameters())
    expected = [
        {"head"},
        {"head", "stage2"},
        {"head", "stage2", "stage1"},
        {"head", "stage2", "stage1"},
    ]
    for epoch, trains in enumerate(expected):
        callback.on_epoch_start(SimpleNamespace(state=LoopState(epoch=epoch), model=model))
        assert {g for g, p in groups.items() if params[p].requires_grad} == trains
    assert unfreeze_epochs("linear-probe", plan.groups)[:2] == [float("inf")] * 2


@pytest.mark.parametrize(
    ("model_name", "freeze", "trains"),
    [
        ("resnet18", "none", {"fc"}),  # one linear layer: a linear probe proper
        ("lenet5", "none", {"classifier.0", "classifier.2", "classifier.4"}),  # the FC stack
        ("lenet5", "classifier.0.*,classifier.2.*", {"classifier.4"}),  # docs/transfer.md's way
    ],
)
def test_linear_probe_trains_the_whole_classifier_as_docs_transfer_says(
    model_name: str, freeze: str, trains: set[str]
) -> None:
    in_channels = 1 if model_name == "lenet5" else 3
    model = create_model(model_name, num_classes=3, in_channels=in_channels, image_size=28)
    cfg = TrainConfig(strategy="linear-probe", freeze=freeze, epochs=3)
    plan = prepare_transfer(model, cfg, class_names=list("abc"), in_channels=in_channels)
    for epoch in range(3):  # the same in every epoch: nothing unfreezes later
        plan.apply(model, epoch)
        layers = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
        assert layers == trains, epoch


def test_train_mode_keeps_only_frozen_batchnorm_in_eval():
    model = create_model("resnet18", num_classes=4, in_channels=3, image_size=16)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(("conv1.", "bn1.", "layer1.")))
    train_mode(model)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.training == (not name.startswith(("bn1", "layer1."))), name
    assert model.training and model.fc.training


def test_layer_table_lists_every_layer_with_its_state():
    from rich.console import Console

    model = create_model("vgg11_bn", num_classes=4, in_channels=3, image_size=32)
    plan = prepare_transfer(model, TrainConfig(freeze="stages:2", model="vgg11_bn"),
                            class_names=list("abcd"), in_channels=3)  # fmt: skip
    with_params = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    rows = plan.layer_rows()
    assert [r["layer"] for r in rows] == with_params
    for r in rows:
        own = list(model.get_submodule(r["layer"]).parameters(recurse=False))
        assert r["requires_grad"] == all(p.requires_grad for p in own)
        assert (r["status"] == "frozen") == (not any(p.requires_grad for p in own))
        assert r["parameters"] == sum(p.numel() for p in own)
    assert [r["layer"] for r in rows if r["status"] == "frozen"] == [
        "features.0", "features.1", "features.4", "features.5"
    ]  # fmt: skip
    console = Console(width=140, record=True)
    console.print(plan.layer_table())
    text = console.export_text()
    assert text.count("frozen (BN eval)") == 2 and text.count("modifiable") == len(rows) - 4
    json.dumps(plan.to_dict())  # JSON-able


# -- sources ----------------------------------------------------------------------------------
def test_other_class_count_and_channels_reinitialise_the_head_and_adapt_the_first_conv(tmp_path):
    source = save_source(tmp_path / "a.safetensors", "lenet5", ["0", "1", "2"], in_channels=1,
                         image_size=28)  # fmt: skip
    model = create_model("lenet5", num_classes=5, in_channels=3, image_size=28)
    report = load_pretrained(model, str(tmp_path / "a.safetensors"), model_name="lenet5",
                             class_names=list("abcde"), in_channels=3)  # fmt: skip
    assert report.kind == "cnnlab" and report.head_replaced
    assert set(report.reinitialised) == {"classifier.4.weight", "classifier.4.bias"}
    assert report.adapted == ["features.0.weight"]
    state = model.state_dict()
    # 1 -> 3 channels: the grey kernel repeated and divided by 3 (a grey image gives the same
    # response)
    torch.testing.assert_close(
        state["features.0.weight"], source["features.0.weight"].repeat(1, 3, 1, 1) / 3
    )
    for key in report.loaded:
        assert torch.equal(state[key], source[key]), key
    assert len(report.loaded) + 3 == len(state)
    assert report.preprocess["mean"] == [0.25, 0.25, 0.25]  # per target channel


def test_same_class_count_with_other_names_never_loads_the_old_head(tmp_path):
    source = save_source(tmp_path / "a.safetensors", "lenet5", ["0", "1", "2"], in_channels=1,
                         image_size=28)  # fmt: skip
    for names, replaced in ((["0", "1", "2"], False), (["5", "6", "7"], True)):
        torch.manual_seed(1)
        model = create_model("lenet5", num_classes=3, in_channels=1, image_size=28)
        report = load_pretrained(model, str(tmp_path / "a.safetensors"), model_name="lenet5",
                                 class_names=names, in_channels=1)  # fmt: skip
        same = torch.equal(model.state_dict()["classifier.4.weight"], source["classifier.4.weight"])
        assert same == (not replaced) and report.head_replaced == replaced
        assert ("classifier.4.weight" in report.reinitialised) == replaced


def test_a_source_of_another_architecture_fails_listing_the_keys(tmp_path):
    save_source(tmp_path / "lenet.safetensors", "lenet5", ["a", "b"], in_channels=3, image_size=32)
    model = create_model("resnet18", num_classes=2, in_channels=3, image_size=32)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, str(tmp_path / "lenet.safetensors"), model_name="resnet18",
                        class_names=["a", "b"], in_channels=3)  # fmt: skip
    msg = str(err.value)
    assert "missing keys" in msg and "conv1.weight" in msg
    assert "unexpected keys" in msg and "features.0.weight" in msg
    assert "model=lenet5" in msg


def test_torchvision_and_timm_layout_files_load_without_network(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(num_classes=10)
    torch.save({"state_dict": tv.state_dict()}, tmp_path / "tv_resnet18.pth")
    model = create_model("resnet18", num_classes=5, in_channels=3, image_size=64)
    report = load_pretrained(model, str(tmp_path / "tv_resnet18.pth"), model_name="resnet18",
                             class_names=list("abcde"), in_channels=3)  # fmt: skip
    assert report.kind == "file" and report.layout == "torchvision"
    assert set(report.reinitialised) == {"fc.weight", "fc.bias"}  # 10 -> 5 classes
    ours = model.state_dict()
    for key, value in tv.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key

    # timm keeps VGG's hidden FC layers as convolutions under pre_logits.*, the output as head.fc
    vgg = create_model("vgg11", num_classes=7, in_channels=3, image_size=32)
    timm_state = {}
    for key, value in vgg.state_dict().items():
        for old, new in (("classifier.0.", "pre_logits.fc1."), ("classifier.3.", "pre_logits.fc2."),
                         ("classifier.6.", "head.fc.")):  # fmt: skip
            if key.startswith(old):
                key = new + key[len(old) :]
                if new != "head.fc." and value.ndim == 2:
                    value = value[:, :, None, None]  # (out, in) -> (out, in, 1, 1) conv kernel
        timm_state[key] = value.clone()
    from safetensors.torch import save_file

    save_file(timm_state, str(tmp_path / "timm_vgg11.safetensors"))
    target = create_model("vgg11", num_classes=7, in_channels=3, image_size=32)
    report = load_pretrained(target, str(tmp_path / "timm_vgg11.safetensors"), model_name="vgg11",
                             class_names=list("abcdefg"), in_channels=3)  # fmt: skip
    assert report.layout == "timm" and report.reinitialised == []
    for key, value in vgg.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


# -- embeddings and the lr finder ------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return api.train(data="builtin:digits", model="lenet5", epochs=1, batch_size=64, out=str(out),
                     name="digits", report=False).run_dir  # fmt: skip


def test_embed_writes_the_classifier_input_with_labels_and_ids(digits_run, tmp_path):
    from cnnlab.transfer.embed import embed

    path = embed(digits_run, split="test", out=tmp_path / "emb.npz", device="cpu")
    with np.load(path, allow_pickle=False) as z:
        features, labels, ids = z["features"], z["labels"], z["ids"]
        assert list(z["class_names"]) == [str(i) for i in range(10)]
    split_ids = json.loads((digits_run / "splits.json").read_text())["splits"]["test"]
    assert list(ids) == split_ids and features.shape == (len(split_ids), 84)
    # independent reference: LeNet's layers up to the 84-unit hidden layer, applied by hand
    model, meta, _ = api.load_checkpoint_model(digits_run)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    bundle = api.load_source(api.make_config(TrainConfig, **saved_config(digits_run)))
    test = split_by_ids(bundle, split_ids, "test")
    x = api.split_to_uint8(test, spec).float() / 255
    x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    with torch.no_grad():
        h = model.features(x)
        h = model.pool(h) if model.pool is not None else h
        expected = model.classifier[:4](h.flatten(1)).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, test.targets)


def test_lr_find_repeats_exactly_and_follows_its_formulas(tmp_path):
    import pandas as pd

    from cnnlab.transfer.lr_find import BETA, lr_find, plot_lr_find, smooth_losses

    cfg = TrainConfig(data="builtin:digits", model="lenet5", batch_size=32, device="cpu")
    a = lr_find(cfg, start=1e-4, end=10.0, steps=15, seed=3)
    b = lr_find(cfg, start=1e-4, end=10.0, steps=15, seed=3)
    assert a["losses"] == b["losses"] and a["suggested_lr"] == b["suggested_lr"]
    # the first batch's loss depends on the seed (init and shuffle), not on the lr schedule
    c = lr_find(cfg, start=1e-4, end=10.0, steps=3, seed=4)
    assert c["losses"][0] != a["losses"][0]
    n = a["steps_run"]
    np.testing.assert_allclose(a["lrs"], np.geomspace(1e-4, 10.0, 15)[:n], rtol=1e-12)
    reference = pd.Series(a["losses"]).ewm(alpha=1 - BETA, adjust=True).mean().to_numpy()
    np.testing.assert_allclose(a["smoothed"], reference, rtol=1e-12)
    np.testing.assert_allclose(smooth_losses(a["losses"]), reference, rtol=1e-12)
    assert a["lrs"][0] <= a["suggested_lr"] <= a["lrs"][-1]
    png = plot_lr_find(a, tmp_path / "lr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_suggestion_skips_the_first_tenth_of_the_curve_as_fastai_does():
    """builtin:digits at batch 16: the smoothed curve's start swung, and "steepest descent" named
    the 2nd of 100 batches (1.1e-5), a rate that does not train."""
    from cnnlab.transfer.lr_find import suggest_lr

    lrs = np.geomspace(1e-5, 1.0, 100)
    smoothed = np.full(100, 2.3)
    smoothed[1] = 1.5  # a swing of the first few losses
    smoothed[60:80] = np.linspace(2.3, 0.5, 20)  # the descent, around 1e-2
    smoothed[80:] = 0.5 + np.linspace(0, 3, 20)  # and the blow-up
    got = suggest_lr(lrs, smoothed)
    assert 60 <= int(np.flatnonzero(lrs == got["steepest"])[0]) < 80
    assert got["min_div10"] == pytest.approx(lrs[79] / 10)


def test_embed_returns_the_file_it_wrote_for_a_folder_or_another_suffix(digits_run, tmp_path):
    """`cnnlab embed RUN --out FOLDER` wrote FOLDER.npz beside the folder and `--out feats.txt`
    wrote feats.txt.npz (NumPy's suffix), both while saying "features written to" the name given:
    a file that was not there. A folder gets the default name inside it; the path printed exists."""
    from cnnlab.transfer.embed import embed

    folder = tmp_path / "features"
    folder.mkdir()
    assert (
        embed(digits_run, split="test", out=folder, device="cpu") == folder / "embeddings-test.npz"
    )
    assert not (tmp_path / "features.npz").exists()
    path = embed(digits_run, split="test", out=tmp_path / "feats.txt", device="cpu")
    assert path == tmp_path / "feats.txt.npz" and path.is_file()
    with np.load(folder / "embeddings-test.npz", allow_pickle=False) as z:
        assert z["features"].shape[1] == 84


def test_embed_names_an_unknown_split_with_the_closest(tmp_path):
    """`cnnlab embed RUN --split tst` said "split='tst' is not one of ...": the Python keyword,
    not the flag, and no close match. Refused before any model is loaded."""
    from cnnlab.transfer.embed import embed

    with pytest.raises(ConfigError, match=r"--split 'tst' is not a split \(did you mean: test\?\)"):
        embed(tmp_path / "no-run", split="tst")
