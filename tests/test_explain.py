"""Layer trace, CAMs, pointing game and the explain page, against independent computations."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab.errors import ConfigError, DataError
from cnnlab.explain.cam import (
    cam_target_stage,
    check_methods,
    compute_cams,
    explain_classes,
    gradient_saliency,
    resize_cams,
)
from cnnlab.explain.pointing import centre_hits, map_ious, point_hits, tied_peaks
from cnnlab.explain.trace import MAX_CHANNELS, trace_image
from cnnlab.models import create_model
from cnnlab.report.explain_page import explain_image, write_explain_page

SIZE = 32
FAMILIES = ["lenet5", "alexnet", "googlenet", "vgg11", "resnet18"]  # one model per family


def _model(name: str, num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes, in_channels=3, image_size=SIZE).eval()


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- trace --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_trace_equals_a_real_forward_pass(name: str) -> None:
    model, x = _model(name), _image()
    # reference: our own hooks on every leaf module, outputs cloned at call time (in-place ReLUs)
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach().clone()))
        for n, m in model.named_modules()
        # nn.Identity stands for a layer a small-input variant removed: not a layer
        if n and next(m.children(), None) is None and not isinstance(m, torch.nn.Identity)
    ]
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()

    trace = trace_image(model, x, class_names=["a", "b", "c", "d"])
    assert trace.input_shape == (3, SIZE, SIZE)
    calls: dict[str, int] = defaultdict(int)
    checked = 0
    for layer in trace.layers:
        if layer.name not in seen:  # residual add / concat / GoogLeNet's functional ReLU rows
            continue
        ref = seen[layer.name][calls[layer.name]][0]
        calls[layer.name] += 1
        assert layer.output_shape == tuple(ref.shape), layer.name
        if layer.maps is not None:
            assert layer.maps.shape[0] == min(MAX_CHANNELS, ref.shape[0])  # memory bound
            torch.testing.assert_close(layer.maps, ref[: layer.maps.shape[0]])
            torch.testing.assert_close(layer.channel_means, ref.mean((1, 2)))
            assert layer.stats["max"] == pytest.approx(float(ref.max()), rel=1e-5, abs=1e-6)
        else:
            torch.testing.assert_close(layer.vector, ref[: layer.vector.numel()])
        checked += 1
    # every executed leaf module call is in the trace, in the same number
    assert checked == sum(len(v) for v in seen.values())

    # the output layer's values are the logits; probabilities are their softmax
    assert trace.layers[-1].kind == "output"
    torch.testing.assert_close(trace.layers[-1].vector, logits[0])
    torch.testing.assert_close(trace.probs, torch.softmax(logits[0], 0))
    assert trace.class_names[trace.predicted] == "abcd"[int(logits.argmax())]

    # the lecture's words, the first filters and the flattened vector
    kinds = {layer.kind for layer in trace.layers}
    assert {"convolution", "ReLU", "pooling", "output"} <= kinds
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert trace.first_filters_shape == tuple(first.weight.shape)
    torch.testing.assert_close(trace.first_filters, first.weight[:64].detach())
    feats = model.forward_features(x)
    first_vector = next(i for i, lay in enumerate(trace.layers) if len(lay.output_shape) == 1)
    assert trace.flatten_length == math.prod(trace.layers[first_vector - 1].output_shape)
    # the last stage's output shape is forward_features' shape
    assert tuple(trace.stages[-1]["output_shape"]) == tuple(feats.shape[1:])
    json.dumps(trace.to_dict())  # JSON-able: numbers only


def test_trace_rejects_a_batch() -> None:
    with pytest.raises(ConfigError, match=r"\(1, C, H, W\)"):
        trace_image(_model("lenet5"), torch.zeros(2, 3, SIZE, SIZE))


# --- CAMs ---------------------------------------------------------------------------------------
def _reference_gradcam(
    model: torch.nn.Module,
    x: torch.Tensor,
    cls: int,
    module_path: str,
    centres: np.ndarray | None = None,
):
    """ReLU(sum_k mean_ij(dy_c/dA_k) A_k), min-max scaled, bilinearly resized, scaled -- by hand.

    ``centres``: the pixel (row = column) each cell is centred on, for maps that do not tile the
    image (unpadded convolutions); None: PyTorch's half-pixel resize, right for padded ones.
    """
    store: dict[str, torch.Tensor] = {}

    def keep(m, i, o):
        o.retain_grad()
        store["A"] = o

    h = model.get_submodule(module_path).register_forward_hook(keep)
    x = x.clone().requires_grad_(True)  # so that the hooked activation is part of a graph
    y = model(x)[0, cls]
    y.backward()
    h.remove()
    a, g = store["A"].detach()[0], store["A"].grad[0]
    cam = torch.relu((g.mean((1, 2))[:, None, None] * a).sum(0))
    raw = cam.clone()
    cam = cam - cam.min()
    cam = cam / (cam.max() + 1e-7)
    if centres is None:
        up = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        up = up[0, 0]
    else:  # separable linear interpolation between cell centres, edge values held beyond them
        pixels = np.arange(x.shape[-1])
        rows = np.stack([np.interp(pixels, centres, col) for col in cam.numpy().T], 1)
        up = torch.from_numpy(np.stack([np.interp(pixels, centres, row) for row in rows]))
    up = up - up.min()  # the package scales again after resizing
    return (up / (up.max() + 1e-7)).numpy(), raw


@pytest.mark.parametrize("name", ["resnet18", "lenet5"])
def test_gradcam_equals_an_independent_computation(name: str) -> None:
    model, x = _model(name, seed=1), _image(1)
    stage = cam_target_stage(model, (SIZE, SIZE), 3)
    centres = None
    if name == "lenet5":  # unpadded: conv 5x5, pool 2, conv 5x5, pool 2 -> a 5 x 5 map at 32 px;
        # cell i sees input pixels 4i .. 4i + 15, so it is centred on pixel 4i + 7.5
        assert stage["output_shape"][-2:] == (5, 5)
        centres = 4 * np.arange(5) + 7.5
    compared = 0
    for cls in range(4):
        ref, raw = _reference_gradcam(model, x, cls, stage["module"], centres)
        if float(raw.max()) <= 0:  # an all-negative class gives an all-zero map: nothing to see
            continue
        got = compute_cams(model, x, [cls], method="gradcam")[0]
        assert got.shape == (SIZE, SIZE)
        np.testing.assert_allclose(got, ref, atol=1e-4)
        compared += 1
    assert compared >= 1


def test_cams_have_input_resolution_and_unit_range() -> None:
    model, x = _model("resnet18", seed=2), _image(2)
    cams = explain_classes(model, x, [0, 2], methods=("gradcam", "gradcam++", "eigencam"))
    assert set(cams.maps) == {"gradcam", "gradcam++", "eigencam", "saliency"}
    assert cams.target_layer == "layer4" and cams.target_shape == (512, 4, 4)
    for per_class in cams.maps.values():
        assert set(per_class) == {0, 2}
        for m in per_class.values():
            assert m.shape == (SIZE, SIZE) and m.dtype == np.float32
            assert m.min() >= 0 and m.max() <= 1
    # Eigen-CAM does not depend on the class
    np.testing.assert_allclose(cams.maps["eigencam"][0], cams.maps["eigencam"][2])


def test_gradient_saliency_is_the_input_gradient() -> None:
    model, x = _model("lenet5", seed=3), _image(3)
    xr = x.clone().requires_grad_(True)
    model(xr)[0, 1].backward()
    ref = xr.grad[0].abs().amax(0)
    np.testing.assert_allclose(gradient_saliency(model, x, [1])[0], (ref / ref.max()).numpy(), 1e-5)


def test_gradcam_of_a_gap_network_is_cam() -> None:
    # conv -> global average pool -> linear: dy_c/dA_k = w_ck / (h w) everywhere, so Grad-CAM is
    # Zhou et al.'s CAM, ReLU(sum_k w_ck A_k), computed here without autograd
    model, x = _model("lenet5_gap", seed=4), _image(4)
    assert cam_target_stage(model, (SIZE, SIZE), 3)["module"] == "features.10"
    with torch.no_grad():
        features = model.forward_features(x)[0]  # 128 x 8 x 8
        weights = model.get_classifier().weight.detach()  # 4 x 128
    compared = 0
    for cls in range(4):
        cam = torch.relu(torch.einsum("k,khw->hw", weights[cls], features))
        if float(cam.max()) <= 0:
            continue
        up = F.interpolate(cam[None, None], size=(SIZE, SIZE), mode="bilinear")[0, 0]
        up = (up - up.min()) / (up.max() - up.min())
        got = compute_cams(model, x, [cls], method="gradcam")[0]
        np.testing.assert_allclose(got, up.numpy(), atol=1e-4)
        compared += 1
    assert compared >= 1


def test_resize_places_cells_on_their_receptive_fields() -> None:
    # padded ("same") geometry: cells tile the image, exactly PyTorch's half-pixel bilinear resize
    maps = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(maps)[:, None], size=(32, 32), mode="bilinear")[:, 0]
    ref = ref - ref.flatten(1).amin(1)[:, None, None]
    ref = ref / ref.flatten(1).amax(1)[:, None, None]
    np.testing.assert_allclose(resize_cams(maps, (32, 32), 8), ref.numpy(), atol=1e-5)
    # unpadded geometry, worked by hand: a 3 x 3 map 4 px apart on 16 px is centred on pixels
    # 3.5, 7.5, 11.5; one hot middle cell falls off linearly to 0 at the next centres
    hot = np.zeros((1, 3, 3), np.float32)
    hot[0, 1, 1] = 1
    f = np.clip(1 - np.abs(np.arange(16) - 7.5) / 4, 0, None)
    expected = np.outer(f, f) / np.outer(f, f).max()
    np.testing.assert_allclose(resize_cams(hot, (16, 16), 4)[0], expected, atol=1e-6)
    # a stride that cannot fit the map (r * (h - 1) > H - 1) falls back to tiling the image
    np.testing.assert_allclose(resize_cams(maps, (32, 32), 64), ref.numpy(), atol=1e-5)


def test_cam_target_skips_one_pixel_stages() -> None:
    # VGG's five 2x2 poolings leave 1x1 at 32 px: a CAM there would be a constant
    stage = cam_target_stage(_model("vgg11"), (SIZE, SIZE), 3)
    assert stage["stage"] == "stage4" and stage["output_shape"][-2:] == (2, 2)
    with pytest.raises(ConfigError, match="did you mean"):
        cam_target_stage(_model("vgg11"), (SIZE, SIZE), 3, stage="stage6")


def test_unknown_cam_method_is_a_config_error() -> None:
    assert check_methods(["GradCAM", "grad-cam++"]) == ("gradcam", "gradcam++")
    with pytest.raises(ConfigError, match="gradcam"):
        check_methods(["gradcan"])


# --- pointing game (hand-worked cases) -----------------------------------------------------------
def test_pointing_hits_and_iou_by_hand() -> None:
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[:, 2:5, 2:5] = 1  # a 3x3 object
    maps = np.zeros((3, 8, 8), np.float32)
    maps[0, 3, 3] = 1  # peak inside
    maps[1, 5, 5] = 1  # peak one pixel diagonally outside: a hit only with tolerance 1
    maps[2, 7, 0] = 1  # far away
    assert point_hits(maps, masks, tolerance=0).tolist() == [True, False, False]
    assert point_hits(maps, masks, tolerance=1).tolist() == [True, True, False]
    # thresholded map: map >= 0.5 * max; a 2x3 block over the 3x3 object -> IoU 6 / 9
    maps2 = np.zeros((1, 8, 8), np.float32)
    maps2[0, 2:4, 2:5] = 0.8
    maps2[0, 4, 2] = 0.3  # below half the maximum: off
    assert map_ious(maps2, masks[:1])[0] == pytest.approx(6 / 9)
    assert map_ious(np.zeros((1, 8, 8)), masks[:1])[0] == 0.0  # an empty map overlaps nothing
    # the centre baseline points at (3, 3), inside the object
    assert centre_hits(masks).all()
    # a maximum reached at two pixels is a tie (argmax takes the first in row-major order)
    maps[1, 0, 0] = 1
    assert tied_peaks(maps).tolist() == [False, True, False]


@pytest.mark.slow
def test_pointing_game_on_shapes(tmp_path: Path) -> None:
    """Grad-CAM of the shapes recipe (lenet5_gap, 32 px) points inside the shape: the issue's check.

    About two to three minutes on two CPU cores. Measured over three training seeds (see
    benchmarks/results/pointing_game.md): 0.96-1.00 at 1 px (0.997 for this seed), 0.85-0.94 at
    0 px (0.933); the centre baseline is 0.59 (1 px), a random point 0.19.
    """
    import cnnlab.api as api
    from cnnlab.explain.pointing import SHAPES_RECIPE, shapes_pointing_game

    run = api.train(out=str(tmp_path), name="shapes", report=False, **SHAPES_RECIPE)
    result = shapes_pointing_game(run.run_dir, n=300, methods=("gradcam",))["gradcam"]
    assert result["classification_accuracy"] >= 0.95, result["classification_accuracy"]
    assert result["target_layer"] == "features.10"  # the conv before global average pooling
    by_tolerance = result["pointing_by_tolerance"]
    assert result["tolerance_px"] == 1 and result["pointing_accuracy"] == by_tolerance["1"]
    assert result["pointing_accuracy"] >= 0.90, by_tolerance  # the target, 1 px
    assert by_tolerance["0"] >= 0.80, by_tolerance  # and without any tolerance
    assert result["pointing_accuracy"] >= result["centre_baseline"] + 0.2, result


# --- the page and the one function the CLI calls -----------------------------------------------
def _sections_present(page: str) -> None:
    for section in (
        "input",
        "probabilities",
        "cams",
        "filters",
        "feature-maps",
        "flatten",
        "fully-connected",
        "layers",
    ):
        assert f'id="{section}"' in page, section
    for words in (
        "after convolution",
        "after ReLU",
        "after pooling",
        "Grad-CAM",
        "gradient saliency",
    ):
        assert words in page, words
    # self-contained: no scripts, nothing fetched
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_explain_page_is_written_with_every_section(tmp_path: Path) -> None:
    model, x = _model("lenet5", num_classes=3), _image(4)
    trace = trace_image(model, x, class_names=["cat", "dog", "cow"])
    cams = explain_classes(
        model, x, [i for i, _, _ in trace.top_k(2)], class_names=trace.class_names
    )
    pixels = (np.random.default_rng(0).random((3, SIZE, SIZE)) * 255).astype(np.uint8)
    path = write_explain_page(trace, cams, tmp_path, pixels, title="t")
    page = path.read_text()
    _sections_present(page)
    assert f"<b>{trace.flatten_length:,}</b>" in page
    pngs = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {
        "input.png",
        "probabilities.png",
        "cams.png",
        "first_layer_filters.png",
        "fully_connected.png",
    } <= pngs
    assert sum(n.startswith("maps_") for n in pngs) == 6  # LeNet: conv, ReLU, pool twice (+pool)
    for name in pngs:
        with Image.open(tmp_path / "figures" / name) as im:
            assert im.width > 0 and im.height > 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    import cnnlab.api as api

    out = tmp_path_factory.mktemp("runs")
    return api.train(
        data="builtin:digits",
        model="lenet5",
        epochs=1,
        out=str(out),
        name="d",
        report=False,
        batch_size=64,
    ).run_dir


def test_explain_image_end_to_end(digits_run: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    img = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "zero.png")
    result = explain_image(digits_run, tmp_path / "zero.png", out_dir=tmp_path / "x", top_k=3)
    assert Path(result["html"]).is_file() and Path(result["json"]).is_file()
    _sections_present(Path(result["html"]).read_text())
    numbers = json.loads(Path(result["json"]).read_text())
    probs = numbers["trace"]["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert [t["class"] for t in result["top"]] == sorted(probs, key=probs.get, reverse=True)[:3]
    assert numbers["trace"]["input_shape"] == [1, 16, 16]  # the run's preprocessing: grey, 16 px
    # default output folder: inside the run
    default = explain_image(digits_run, tmp_path / "zero.png", top_k=1, methods=("gradcam",))
    assert Path(default["html"]).parent == digits_run / "explain" / "zero"
    with pytest.raises(DataError, match="missing.png"):
        explain_image(digits_run, tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="did you mean"):
        explain_image(digits_run, tmp_path / "zero.png", methods=("gradcamm",))


def test_two_images_of_the_same_name_get_two_explain_folders(tmp_path):
    """cat/001.png and then dog/001.png once shared RUN/explain/001/: the second page silently
    replaced the first. The same image explained again keeps its folder."""
    import json

    from cnnlab.report.explain_page import default_explain_dir

    cat, dog = tmp_path / "cat" / "001.png", tmp_path / "dog" / "001.png"
    first = default_explain_dir(tmp_path / "run", cat)
    assert first == tmp_path / "run" / "explain" / "001"
    first.mkdir(parents=True)
    (first / "explain.json").write_text(json.dumps({"image": str(cat)}))
    assert default_explain_dir(tmp_path / "run", cat) == first
    second = default_explain_dir(tmp_path / "run", dog)
    assert second == tmp_path / "run" / "explain" / "001-2"
    second.mkdir()
    (second / "explain.json").write_text(json.dumps({"image": str(dog)}))
    assert default_explain_dir(tmp_path / "run", dog) == second
    assert default_explain_dir(tmp_path / "run", tmp_path / "fox" / "001.png").name == "001-3"


def test_the_same_image_from_another_working_directory_keeps_its_explain_folder(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """explain.json recorded the image's path as given: `cat/seven.png` explained from the folder
    above cat/ read, from inside cat/, as cat/cat/seven.png, another image, so the same image
    explained there as `seven.png` got a second page `seven-2/`. The path is now recorded
    absolute; another image of the same name still gets its own folder, and an explain.json
    from before (a relative path) is still read."""
    from sklearn.datasets import load_digits

    from cnnlab.report.explain_page import default_explain_dir

    digits = load_digits()
    for folder, k in (("cat", 7), ("dog", 17)):
        (tmp_path / folder).mkdir()
        pixels = np.round(digits.images[k] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / folder / "seven.png")
    kw = dict(top_k=1, methods=("gradcam",), saliency=False)
    base = digits_run / "explain"  # digits_run is absolute: the same run from any folder
    monkeypatch.chdir(tmp_path)
    first = explain_image(digits_run, "cat/seven.png", **kw)
    monkeypatch.chdir(tmp_path / "cat")
    again = explain_image(digits_run, "seven.png", **kw)
    assert Path(first["html"]).parent == Path(again["html"]).parent == base / "seven"
    recorded = json.loads(Path(again["json"]).read_text())["image"]
    assert recorded == str((tmp_path / "cat" / "seven.png").resolve())
    other = explain_image(digits_run, "../dog/seven.png", **kw)
    assert Path(other["html"]).parent == base / "seven-2"
    assert not (base / "seven-3").exists()
    # an explain.json written before: its relative path read from the working directory
    old = base / "eight"
    old.mkdir()
    (old / "explain.json").write_text(json.dumps({"image": "eight.png"}))
    assert default_explain_dir(digits_run, Path("eight.png")) == old
    assert default_explain_dir(digits_run, Path("../dog/eight.png")) == base / "eight-2"


def test_the_docs_square_is_a_square() -> None:
    """docs/explain.md saves `make_shapes(1, 48, seed=...)` as square.png and its result shows the
    class "square"; seed 77 drew a triangle, so the page a new user got did not match the text."""
    from cnnlab.data.builtin import make_shapes

    doc = (Path(__file__).parents[1] / "docs" / "explain.md").read_text(encoding="utf-8")
    found = re.search(r"make_shapes\(1, (\d+), seed=(\d+)\).*?save\('(\w+)\.png'\)", doc)
    assert found is not None, "docs/explain.md no longer makes its example image with make_shapes"
    size, seed, name = int(found[1]), int(found[2]), found[3]
    shapes = make_shapes(1, size, seed=seed)
    assert shapes.class_names[int(shapes.targets[0])] == name == "square"
