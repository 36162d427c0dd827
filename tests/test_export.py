"""Exports (ONNX, TorchScript, safetensors): parity with PyTorch, carried metadata, ONNX prediction.

The references are independent of the export code: PyTorch's own forward of a freshly loaded
checkpoint, ``onnxruntime`` sessions opened here, ``onnx.load`` for the metadata, ``np.allclose``
for the tolerance rule and ``cnnlab.api.predict`` for prediction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.api import load_checkpoint_model
from cnnlab.api import predict as api_predict
from cnnlab.config import PreprocessSpec
from cnnlab.engine.checkpoint import read_weights, save_weights
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models import list_models

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from cnnlab.export import (  # noqa: E402 -- after the skips
    ATOL,
    RTOL,
    ExportCheckError,
    compare_outputs,
    export_metadata,
    export_model,
    export_module,
    predict_onnx,
    read_export_metadata,
    sidecar_path,
)

FAST = {"lenet5", "resnet18"}  # the fast tier; every other model of the zoo is marked slow
# (rtol, atol) per model: torchvision's test_onnx tolerance, except the two deepest ResNets, where
# float32 rounding over 100+ layers of an untrained net moves single near-zero logits by up to
# ~5e-4 (measured: resnet101 6e-5, resnet152 4.4e-4 on logits of about 1), and three RegNets, whose
# logits are only ~0.3 (torchvision's fc init, std 0.01) and whose rounding grows ~1.25x a block
# (regnet_x_3_2gf: relative 2e-7 after the stem, 7e-5 at the logits, float32 vs float64): near-zero
# logits differ by up to 3.2e-5 (measured: x_3_2gf 3.2e-5, y_1_6gf 2.7e-5, y_32gf 2.6e-5)
TOLERANCE = {
    "resnet101": (1e-2, 1e-4),
    "resnet152": (1e-2, 1e-4),
    **dict.fromkeys(("regnet_x_3_2gf", "regnet_y_1_6gf", "regnet_y_32gf"), (RTOL, 1e-4)),
}
VARIES = 10 * 1e-5  # outputs for two inputs must differ by 10 x atol for parity to mean much
CLASSES = ["cat", "dog", "10", "2", "ünï"]  # unusual order and names: must survive as they are


def _spec(in_channels: int, size: int) -> PreprocessSpec:
    mean = (0.3,) if in_channels == 1 else (0.485, 0.456, 0.406)
    std = (0.25,) if in_channels == 1 else (0.229, 0.224, 0.225)
    return PreprocessSpec(size, in_channels, mean, std, "fit", {"max_pixels": 1_000_000})


def _randomise_batchnorm(model: nn.Module, gen: torch.Generator, calibrate: tuple = ()) -> None:
    """Fresh batch norms are identities (mean 0, var 1, weight 1, bias 0): give them random affine
    parameters and real running statistics, so an exporter that mishandles them (folding, training
    mode) is caught. ``calibrate``: input shape ``(C, H, W)``; the running statistics are then the
    exact averages over two training-mode passes of :func:`_inputs` (``momentum=None``), as after
    training, which also keeps deep untrained networks' activations at a sane scale.

    The calibration pictures must be of the kind the model is then checked on (the exporter's
    ``check_inputs`` and this module's parity inputs): calibrated on N(0, 1) noise, the exporter's
    pixel pictures (std 1.26 and channel means up to 0.42 after the normalisation) sat above the
    calibrated scale, and the untrained EfficientNets amplify that excess block after block
    (B1: rms 1.3 after the stem's batch norm, 420 after the last one), so their logits reached
    1e3-4e6 and float32 rounding, amplified alike, moved them by 1e-4 to over 100 % between ONNX
    Runtime and PyTorch. Calibrated on pictures, their logits stay within 1-6 and differ by
    < 3e-5."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        n = m.num_features
        m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
        m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)
        m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    if calibrate and bns:
        was_training = model.training
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for seed in (0, 1):
                model(torch.from_numpy(_inputs(calibrate[0], calibrate[1], 8, seed)))
        for m in bns:
            m.momentum = 0.1
        model.train(was_training)


def make_checkpoint(folder: Path, name: str, in_channels: int = 3, size: int = 32) -> Path:
    """A cnnlab checkpoint (safetensors + metadata) of a randomly initialised zoo model."""
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES), in_channels=in_channels, image_size=size)
    _randomise_batchnorm(model, torch.Generator().manual_seed(1), (in_channels, size, size))
    model.eval()
    with torch.no_grad():
        two = model(torch.from_numpy(_inputs(in_channels, size, 2, 99)))
    if (two[0] - two[1]).abs().max() < 10 * VARIES:
        # torchvision's VGG init without batch norm (normal, std 0.01, in the fully connected
        # layers) shrinks the signal until untrained outputs hardly depend on the input, which
        # would make parity vacuous: He initialisation keeps the signal's scale through the
        # layers (vgg11/13/16/19 come here; the batch-norm models never do, so their calibrated
        # statistics stay those of these weights)
        gen = torch.Generator().manual_seed(2)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
    meta = {
        "model": name,
        "num_classes": len(CLASSES),
        "in_channels": in_channels,
        "image_size": size,
        "class_names": CLASSES,
        "preprocess": _spec(in_channels, size).to_dict(),
        "cnnlab_version": "test",
    }
    path = folder / f"{name}.safetensors"
    save_weights(path, model.state_dict(), meta)
    return path


def _inputs(in_channels: int, size: int, batch: int, seed: int) -> np.ndarray:
    """Random pictures ``(batch, C, S, S)``: uniform 8-bit pixels through :func:`_spec`'s
    normalisation, the kind of input ``cnnlab.export.check_inputs`` feeds the exporter's check
    (and the one the test checkpoints' batch norms are calibrated on, see _randomise_batchnorm)."""
    spec = _spec(in_channels, size)
    mean = np.reshape(spec.mean, (1, -1, 1, 1))
    std = np.reshape(spec.std, (1, -1, 1, 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (batch, in_channels, size, size))
    return ((pixels / 255 - mean) / std).astype(np.float32)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> dict:
    """One LeNet-5 checkpoint (grey, 16 px) and its ONNX export, shared by the fast tests."""
    folder = tmp_path_factory.mktemp("lenet")
    ckpt = make_checkpoint(folder, "lenet5", in_channels=1, size=16)
    result = export_model(ckpt, format="onnx", out=folder / "model.onnx")
    return {"folder": folder, "ckpt": ckpt, "onnx": result}


# -- parity for every model of the zoo -------------------------------------------------------------
ZOO = [
    pytest.param(name, marks=() if name in FAST else pytest.mark.slow, id=name)
    for name in list_models()
]


@pytest.mark.parametrize("name", ZOO)
def test_onnx_matches_pytorch_for_every_model(name: str, tmp_path: Path) -> None:
    in_channels, size = (1, 16) if name.startswith("lenet") else (3, 32)
    rtol, atol = TOLERANCE.get(name, (RTOL, ATOL))
    ckpt = make_checkpoint(tmp_path, name, in_channels, size)
    result = export_model(ckpt, format="onnx", out=tmp_path / f"{name}.onnx", rtol=rtol, atol=atol)
    assert result.max_abs_diff is not None and result.opset == 18
    assert (result.rtol, result.atol) == (rtol, atol)

    model, _, _ = load_checkpoint_model(ckpt, "cpu")  # an independent PyTorch reference
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str), f"batch axis is not dynamic: {inp.shape}"
    for batch, seed in ((1, 10), (5, 11)):  # sizes the export itself neither traced nor checked
        x = _inputs(in_channels, size, batch, seed)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {inp.name: x})[0]
        assert got.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)
    # the outputs depend on the input (else the comparison above proves little)
    x = _inputs(in_channels, size, 2, 12)
    with torch.no_grad():
        two = model(torch.from_numpy(x)).numpy()
    assert np.abs(two[0] - two[1]).max() > VARIES


# -- the tolerance rule, against numpy -------------------------------------------------------------
def test_compare_outputs_follows_numpy_allclose() -> None:
    gen = np.random.default_rng(0)
    for _ in range(200):
        ref = gen.normal(0, gen.choice([1e-4, 1.0, 100.0]), (3, 4)).astype(np.float32)
        got = ref + gen.normal(0, gen.choice([1e-7, 1e-5, 1e-3, 1e-1]), ref.shape).astype(
            np.float32
        )
        expected_ok = np.allclose(got, ref, rtol=RTOL, atol=ATOL)
        if expected_ok:
            assert compare_outputs("x", got, ref) == pytest.approx(np.abs(got - ref).max())
        else:
            with pytest.raises(ExportCheckError, match="rtol=0.001, atol=1e-05"):
                compare_outputs("x", got, ref)
    with pytest.raises(ExportCheckError, match="shape"):
        compare_outputs("x", np.zeros((1, 3)), np.zeros((1, 4)))
    with pytest.raises(ExportCheckError):
        compare_outputs("x", np.array([np.nan]), np.array([0.0]))


# -- metadata --------------------------------------------------------------------------------------
def test_onnx_metadata_round_trip(lenet: dict) -> None:
    result = lenet["onnx"]
    proto = onnx.load(str(result.path))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}  # every value is JSON
    _, ckpt_meta = read_weights(lenet["ckpt"])
    assert props["class_names"] == CLASSES
    assert PreprocessSpec.from_dict(props["preprocess"]) == PreprocessSpec.from_dict(
        ckpt_meta["preprocess"]
    )
    assert props["input"]["channel_order"] == "L" and props["input"]["layout"] == "NCHW"
    assert props["input"]["mean"] == [0.3] and props["input"]["std"] == [0.25]
    assert props["decoding"]["max_pixels"] == 1_000_000
    assert props["decoding"]["exif_transpose"] is True
    # the sidecar carries the same dictionary, and read_export_metadata reads it all back
    assert sidecar_path(result.path).name == "model.preprocess.json"
    assert json.loads(sidecar_path(result.path).read_text()) == props
    assert read_export_metadata(result.path) == props
    # the graph is in opset 18 and names its input / output as documented
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_back_with_metadata(lenet: dict, tmp_path: Path) -> None:
    result = export_model(lenet["ckpt"], format="torchscript", out=tmp_path / "m.torchscript.pt")
    extra = {"cnnlab.json": ""}
    loaded = torch.jit.load(str(result.path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["cnnlab.json"])
    assert meta["class_names"] == CLASSES
    assert meta == read_export_metadata(result.path)
    model, _, _ = load_checkpoint_model(lenet["ckpt"], "cpu")
    x = torch.from_numpy(_inputs(1, 16, 4, 3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=RTOL, atol=ATOL)


def test_safetensors_loads_back_as_a_checkpoint(lenet: dict, tmp_path: Path) -> None:
    result = export_model(lenet["ckpt"], format="safetensors", out=tmp_path / "m.safetensors")
    assert result.max_abs_diff == 0.0
    exported, meta, _ = load_checkpoint_model(result.path, "cpu")  # cnnlab reads it as a checkpoint
    model, _, _ = load_checkpoint_model(lenet["ckpt"], "cpu")
    assert meta["class_names"] == CLASSES
    assert PreprocessSpec.from_dict(meta["preprocess"]).mean == (0.3,)
    x = torch.from_numpy(_inputs(1, 16, 3, 4))
    with torch.no_grad():
        assert torch.equal(exported(x), model(x))
    state, _ = read_weights(result.path)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    # without --out: an export/ folder beside a checkpoint that is not in a run directory
    default = export_model(lenet["ckpt"], format="safetensors")
    assert default.path == lenet["ckpt"].parent / "export" / "lenet5.safetensors"


def test_stated_tolerance_is_the_one_of_torchvision(lenet: dict) -> None:
    assert (RTOL, ATOL) == (1e-3, 1e-5)
    assert (lenet["onnx"].rtol, lenet["onnx"].atol) == (RTOL, ATOL)
    assert lenet["onnx"].max_abs_diff < ATOL + RTOL  # and LeNet is far inside it


def test_export_uses_eval_mode_and_restores_the_mode(tmp_path: Path) -> None:
    """Dropout and batch norm differ between modes: the ONNX file must compute eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    _randomise_batchnorm(model, torch.Generator().manual_seed(2))
    model.train()
    meta = export_metadata(
        {
            "model": "tiny",
            "num_classes": 3,
            "class_names": ["a", "b", "c"],
            "preprocess": _spec(1, 8).to_dict(),
        }
    )
    result = export_module(model, meta, format="onnx", out=tmp_path / "tiny.onnx")
    assert model.training, "the model's training mode was not restored"
    x = _inputs(1, 8, 2, 5)
    got = ort.InferenceSession(str(result.path)).run(None, {"images": x})[0]
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


# -- prediction with the ONNX file -----------------------------------------------------------------
@pytest.mark.precision
def test_predict_onnx_matches_api_predict(
    lenet: dict, tmp_path: Path, precision: str, precision_tol: float
) -> None:
    gen = np.random.default_rng(0)
    files = []
    for i in range(4):
        pixels = gen.integers(0, 256, (12 + 4 * i, 20, 3 if i % 2 else 1), dtype=np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(path)
        files.append(path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    files.append(bad)

    got = predict_onnx(lenet["onnx"].path, files, top_k=3)
    ref = api_predict(lenet["ckpt"], files, top_k=3, device="cpu", precision=precision)
    tol = precision_tol  # ONNX runs fp32; the checkpoint at the precision under test
    assert [p.path for p in got] == [p.path for p in ref]
    for g, r in zip(got, ref, strict=True):
        assert g.error == r.error
        if r.error is None:
            want = dict(r.top)
            if tol <= 1e-5:
                assert [c for c, _ in g.top] == [c for c, _ in r.top]
            np.testing.assert_allclose(
                [p for c, p in g.top if c in want],
                [want[c] for c, _ in g.top if c in want],
                atol=tol,
            )
    assert got[-1].error and got[-1].top == []


def test_predict_onnx_refuses_a_file_without_metadata(lenet: dict, tmp_path: Path) -> None:
    proto = onnx.load(str(lenet["onnx"].path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(CheckpointError, match="export it with"):
        predict_onnx(bare, [], top_k=1)
    # with the sidecar beside it, the preprocessing is found again
    sidecar_path(bare).write_text(sidecar_path(lenet["onnx"].path).read_text())
    assert predict_onnx(bare, [], top_k=1) == []


def test_bad_options_are_config_errors(lenet: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean: onnx"):
        export_model(lenet["ckpt"], format="onx")
    with pytest.raises(ConfigError, match="folder"):
        export_model(lenet["ckpt"], format="onnx", out=tmp_path)
    # a file named as another format's: `predict x.onnx` could not have read it
    with pytest.raises(ConfigError, match=r"x\.onnx: a torchscript export is not named \*\.onnx; "
                       r"give e\.g\. .*x\.torchscript\.pt, or give --format onnx"):  # fmt: skip
        export_model(lenet["ckpt"], format="torchscript", out=tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="give --format torchscript"):
        export_model(lenet["ckpt"], format="onnx", out=tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(CheckpointError):
        export_model(tmp_path / "missing.safetensors", format="onnx")


def test_an_export_given_where_a_run_is_needed_says_what_reads_it(
    lenet: dict, tmp_path: Path
) -> None:
    """`cnnlab serve model.onnx` / `explain` / `evaluate` and `predict model.torchscript.pt` said
    only "expected a run directory or a .safetensors checkpoint": nothing on which command reads
    the file or what to give instead."""
    from cli_process import in_process

    from cnnlab.run import resolve_weights

    onnx_file = lenet["onnx"].path
    with pytest.raises(CheckpointError, match=r"an ONNX export is read by `cnnlab predict FILE"):
        resolve_weights(onnx_file)
    script = export_model(lenet["ckpt"], format="torchscript", out=tmp_path / "m.torchscript.pt")
    with pytest.raises(CheckpointError, match="a TorchScript export is for LibTorch/C"):
        resolve_weights(script.path)
    proc = in_process("evaluate", str(onnx_file))
    assert proc.returncode == 2 and "give the run it was exported from" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("options", "said"),
    [
        # a safetensors file named .onnx: `predict m.onnx` failed to parse it as ONNX
        ({"format": "safetensors", "out": "m.onnx"}, "a safetensors export is named *.safetensors"),
        ({"format": "onnx", "out": "m.txt"}, "give e.g. {tmp}/m.onnx"),
        ({"format": "torchscript", "out": "m.onnx"}, "a torchscript export is not named *.onnx"),
        # a negative tolerance failed every check, removed the file and said "please report this"
        ({"format": "onnx", "rtol": -1.0}, "--rtol -1.0 must be a number >= 0"),
        ({"format": "onnx", "atol": float("nan")}, "--atol nan must be a number >= 0"),
    ],
)
def test_an_output_name_or_tolerance_that_cannot_work_is_refused_first(
    lenet: dict, tmp_path: Path, options: dict, said: str
) -> None:
    if "out" in options:
        options = options | {"out": tmp_path / options["out"]}
    with pytest.raises(ConfigError, match=re.escape(said.format(tmp=tmp_path))):
        export_model(lenet["ckpt"], **options)
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(ConfigError, match="give a file name such as .*model.torchscript.pt"):
        export_model(lenet["ckpt"], format="torchscript", out=tmp_path)


# -- multi-label runs: sigmoid semantics and thresholds travel with the file -------------------------
def _image_files(folder: Path, n: int = 6) -> list[Path]:
    gen = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        files.append(folder / f"img{i}.png")
        Image.fromarray(gen.integers(0, 256, (14 + 2 * i, 18), dtype=np.uint8)).save(files[-1])
    return files


def test_a_multilabel_run_exports_with_its_thresholds_and_predicts_as_the_run(
    lenet: dict, tmp_path: Path, capsys
) -> None:
    """The LeNet checkpoint as a multi-label run of five labels (a run folder with
    thresholds.json): the ONNX file and the exported .safetensors answer every label with the
    probability (to 1e-5) and threshold predicting the run gives, and the same labels."""
    from cnnlab.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    state, meta = read_weights(lenet["ckpt"])
    weights = run / "checkpoints" / "best.safetensors"
    save_weights(weights, state, meta | {"multilabel": True})
    files = _image_files(tmp_path / "img")
    # thresholds between the labels' probabilities on these files: every label is both predicted
    # and not predicted somewhere, so a wrong threshold or a softmax would change answers
    plain = api_predict(weights, files, device="cpu", precision="32")
    probs = np.array([[dict((n, p) for n, p, _ in q.labels)[c] for c in CLASSES] for q in plain])
    thresholds = dict(zip(CLASSES, np.median(probs, axis=0).tolist(), strict=True))
    (run / "thresholds.json").write_text(json.dumps({"thresholds": thresholds}))

    onnx_file = export_model(weights, format="onnx", out=tmp_path / "ml.onnx").path
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["multilabel"] is True and props["class_names"] == CLASSES
    assert props["thresholds"] == thresholds and "sigmoid" in props["output"]["meaning"]
    assert "operating_point" not in props and "temperature" not in props
    st_file = export_model(weights, format="safetensors", out=tmp_path / "ml.safetensors").path
    assert read_export_metadata(st_file)["thresholds"] == thresholds

    reference = api_predict(weights, files, device="cpu", precision="32")
    seen = set()
    for exported in (onnx_file, st_file):
        for got, ref in zip(api_predict(exported, files, device="cpu"), reference, strict=True):
            assert [n for n, _, _ in got.labels] == [n for n, _, _ in ref.labels]
            np.testing.assert_allclose(
                [p for _, p, _ in got.labels], [p for _, p, _ in ref.labels], atol=1e-5, rtol=0
            )
            assert [t for _, _, t in got.labels] == [thresholds[n] for n, _, _ in ref.labels]
            assert [n for n, _, _ in got.predicted_labels] == [
                n for n, _, _ in ref.predicted_labels
            ]
            seen.update(n for n, _, _ in got.predicted_labels)
    assert seen == set(CLASSES)
    with pytest.raises(ConfigError, match="--tta flip averages single-label views"):
        predict_onnx(onnx_file, files, tta=("flip",))
    assert main(["predict", str(onnx_file), str(files[0]), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["labels"]
