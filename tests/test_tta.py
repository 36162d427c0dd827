"""Test-time augmentation (cnnlab.engine.tta; `--tta` of evaluate, predict and serve)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax
from torch import nn

from cnnlab.errors import ConfigError


def test_parse_tta_names_and_errors():
    from cnnlab.engine.tta import num_views, parse_tta

    assert parse_tta(None) == parse_tta("none") == parse_tta("") == ()
    assert parse_tta("crop,flip") == parse_tta(["flip", "crop"]) == ("flip", "crop")
    assert parse_tta(" FLIP ") == ("flip",)
    assert parse_tta("shift,flip") == ("flip", "shift")
    views = ((), ("flip",), ("crop",), ("flip", "crop"), ("shift",), ("flip", "shift"))
    assert [num_views(v) for v in views] == [1, 2, 6, 12, 5, 10]
    with pytest.raises(ConfigError) as err:
        parse_tta("rotate")
    assert str(err.value) == (
        "--tta rotate: unknown view 'rotate'; allowed: none, or a comma list of flip, crop, shift "
        "(e.g. flip,crop)"
    )
    with pytest.raises(
        ConfigError, match=r"--tta flip,flp: unknown view 'flp' \(did you mean: flip"
    ):
        parse_tta("flip,flp")


class _Mirror(nn.Module):
    """Exactly flip-invariant: logits from the sum of each row with its mirror."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.head = nn.Linear(4 * 8, k)
        torch.manual_seed(0)
        nn.init.normal_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N x 1 x 4 x 8
        symmetric = x + x.flip(-1)  # the same tensor, bit for bit, for x and its mirror
        return self.head(symmetric.flatten(1))


def test_flip_on_a_flip_invariant_model_equals_no_tta():
    from cnnlab.engine.tta import average_probs

    model = _Mirror()
    x = torch.randn(5, 1, 4, 8)
    plain, _ = average_probs(model, x, (), temperature=1.7)
    flipped, logits = average_probs(model, x, ("flip",), temperature=1.7)
    torch.testing.assert_close(flipped, plain, rtol=0, atol=1e-7)
    torch.testing.assert_close(logits, model(x))  # the original view's raw logits
    # a model that is not flip-invariant does change under TTA (the test above can fail)
    skewed = nn.Sequential(nn.Flatten(), nn.Linear(32, 3))
    assert not torch.allclose(
        average_probs(skewed, x, ("flip",))[0], average_probs(skewed, x, ())[0], atol=1e-4
    )


class _Readout(nn.Module):
    """Hand-built: logits = the first 3 pixels of the first row (a model that sees position)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :3] * 3.0


def test_flip_average_equals_a_manual_computation():
    from cnnlab.engine.tta import average_probs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1, 6, 6)).astype(np.float32)
    t = 2.0
    want = (
        softmax(3 * x[:, 0, 0, :3] / t, axis=1) + softmax(3 * x[:, 0, 0, ::-1][:, :3] / t, axis=1)
    ) / 2
    got, _ = average_probs(_Readout(), torch.from_numpy(x), ("flip",), temperature=t)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    assert np.allclose(got.sum(1).numpy(), 1)


def test_flip_crop_views_are_tencrop_plus_the_image_and_its_mirror():
    """flip,crop: the original, its mirror and torchvision's TenCrop (one image at a time,
    crops resized back), the mean of their softmaxes computed with SciPy."""
    from torchvision.transforms import v2

    from cnnlab.engine.tta import CROP_SCALE, average_probs

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(3, 1, 16, 16)).astype(np.float32))
    side = round(16 * CROP_SCALE)
    tencrop, resize = v2.TenCrop(side), v2.Resize(16, antialias=True)
    want = []
    for image in x:
        views = [image, image.flip(-1), *(resize(c) for c in tencrop(image))]
        z = np.stack([_Readout()(v[None])[0].numpy() for v in views])
        want.append(softmax(z, axis=1).mean(0))
    got, _ = average_probs(_Readout(), x, ("flip", "crop"))
    np.testing.assert_allclose(got.numpy(), np.stack(want), rtol=1e-5, atol=1e-6)


def test_shift_views_are_the_image_moved_one_pixel_per_diagonal_with_edges_repeated():
    """shift at 16 px: d = 16 // 16 = 1; each view built pixel by pixel in NumPy (index clamped
    into the image: the edge repeated), and average_probs' result against SciPy's softmax."""
    from cnnlab.engine.tta import average_probs, tta_views

    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 1, 16, 16)).astype(np.float32)
    rows, cols = np.arange(16)[:, None], np.arange(16)[None, :]
    want = [x]
    for dy, dx in ((1, 1), (1, -1), (-1, 1), (-1, -1)):  # content moved down/up, right/left
        src_r, src_c = np.clip(rows - dy, 0, 15), np.clip(cols - dx, 0, 15)
        want.append(x[:, :, src_r, src_c])
    got = tta_views(torch.from_numpy(x), ("shift",))
    assert len(got) == 5
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.numpy(), w)
    probs, _ = average_probs(_Readout(), torch.from_numpy(x), ("shift",))
    z = np.stack([_Readout()(torch.from_numpy(v)).numpy() for v in want])  # views x N x K
    np.testing.assert_allclose(probs.numpy(), softmax(z, axis=2).mean(0), rtol=1e-5, atol=1e-6)


def test_tta_model_gives_the_averaged_probabilities_to_a_softmax():
    from cnnlab.engine.tta import TTAModel, average_probs

    x = torch.randn(4, 1, 6, 6)
    mean, _ = average_probs(_Readout(), x, ("flip", "crop"), temperature=0.5)
    torch.testing.assert_close(TTAModel(_Readout(), ("flip", "crop"), 0.5)(x).softmax(1), mean)


# -- through a trained run (conftest's `run`: LeNet-5 on builtin:digits, 8 x 8 grey) ----------------
@pytest.fixture(scope="module")
def mirrored(digits: list[Path], tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("mirrored")
    paths = []
    for p in digits:
        out = folder / p.name
        Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out)
        paths.append(out)
    return paths


def _probs(preds) -> np.ndarray:
    return np.array([[p for _, p in sorted(pred.top)] for pred in preds])


def test_predict_flip_is_the_mean_of_the_image_and_its_mirror(run: Path, digits, mirrored):
    """Calibrated probabilities (RUN/calibration.json's T) of each file and of its mirrored file,
    averaged by hand, equal predict --tta flip; the out-of-domain verdict is the original's."""
    from cnnlab import api

    k = 10
    plain = api.predict(run, digits, top_k=k)
    flipped = api.predict(run, mirrored, top_k=k)
    tta = api.predict(run, digits, top_k=k, tta="flip")
    np.testing.assert_allclose(
        _probs(tta), (_probs(plain) + _probs(flipped)) / 2, rtol=1e-5, atol=1e-6
    )
    assert [p.out_of_domain for p in tta] == [p.out_of_domain for p in plain]


def test_evaluate_reports_with_and_without_and_leaves_the_run(run: Path, run_digests, tmp_path):
    from cnnlab import api

    before = run_digests(run)
    plain = api.evaluate(run, out=tmp_path / "plain", report=False)
    result = api.evaluate(run, out=tmp_path / "tta", report=False, tta="flip")
    assert run_digests(run) == before  # evaluate never rewrites what training recorded
    tta = result["tta"]
    assert tta["views"] == ["flip"] and tta["num_views"] == 2
    assert tta["without"]["accuracy"] == plain["metrics"]["accuracy"]
    assert tta["with"]["accuracy"] == result["metrics"]["accuracy"]
    assert tta["change"]["log_loss"] == pytest.approx(
        result["metrics"]["log_loss"] - plain["metrics"]["log_loss"]
    )
    recorded = json.loads((tmp_path / "tta" / "evaluation.json").read_text())
    assert recorded["tta"] == json.loads(json.dumps(tta))
    assert "tta" not in json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    # the predictions file holds the TTA probabilities, which differ from single-view ones
    with (
        np.load(tmp_path / "tta" / "test_predictions.npz") as z,
        np.load(tmp_path / "plain" / "test_predictions.npz") as y,
    ):
        assert z["probs"].shape == y["probs"].shape and not np.allclose(z["probs"], y["probs"])


def test_cli_evaluate_prints_both_and_bad_tta_is_one_line(run: Path, digits, tmp_path, capsys):
    from cnnlab.cli import main

    assert (
        main(["evaluate", str(run), "--no-report", "--tta", "flip", "--out", str(tmp_path / "e")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "test-time augmentation: flip (2 views)" in printed and "with TTA" in printed
    for argv in (
        ["predict", str(run), str(digits[0]), "--tta", "rotate"],
        ["evaluate", str(run), "--tta", "flip,rotate"],
        ["evaluate", str(run), "--tta", "flip", "--target", "f1"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --tta") and "\n" not in err, err
        assert (
            "rotate" not in argv[-1] or "allowed: none, or a comma list of flip, crop, shift" in err
        )


def test_serve_answers_say_the_tta_and_match_predict(run: Path, digits):
    from cnnlab import api
    from cnnlab.config import PreprocessSpec
    from cnnlab.engine.calibration import load_calibration
    from cnnlab.engine.weights import load_checkpoint_model
    from cnnlab.serve.app import Served, calibration_info, predict_bytes

    model, meta, weights = load_checkpoint_model(run, "cpu")
    served = Served(
        model=model, meta=meta, spec=PreprocessSpec.from_dict(meta["preprocess"]),
        class_names=list(meta["class_names"]), run_dir=run, device=torch.device("cpu"), top_k=3,
        max_upload_bytes=10**6, max_pixels=10**6, cam_method="gradcam", lock=threading.Lock(),
        calibration=load_calibration(run, weights), tta=("flip",),
    )  # fmt: skip
    got = predict_bytes(served, digits[0].read_bytes())
    assert got["tta"] == ["flip"] and calibration_info(served)["tta"] == ["flip"]
    want = api.predict(run, digits[:1], top_k=3, tta="flip")[0]
    assert [t["class"] for t in got["top"]] == [c for c, _ in want.top]
    np.testing.assert_allclose([t["probability"] for t in got["top"]], [p for _, p in want.top],
                               atol=1e-6)  # fmt: skip
    assert got["out_of_domain"]["out_of_domain"] == want.out_of_domain["out_of_domain"]
    assert got["out_of_domain"]["value"] == pytest.approx(want.out_of_domain["value"], abs=1e-5)
    served.tta = ()
    assert predict_bytes(served, digits[0].read_bytes())["tta"] == []


def test_other_tasks_refuse_tta():
    """Detection and video runs refuse --tta (one line naming the option); checked at the api's
    door, before anything is loaded (segmentation's flip: tests/test_segment_tta.py)."""
    from cnnlab.api import _tta_option

    assert _tta_option(None, "segmentation", "r") == {} == _tta_option("none", "detection", "r")
    assert _tta_option("crop", "classification", "r") == {"tta": ("crop",)}
    for task in ("video-classification",):
        with pytest.raises(
            ConfigError,
            match=f"--tta is for classification, segmentation and detection runs; r is a {task} run",
        ):
            _tta_option("flip", task, "r")


@pytest.mark.slow  # an ONNX export: seconds
def test_onnx_predict_applies_the_same_tta(run: Path, digits, tmp_path):
    from cnnlab import api
    from cnnlab.export import export_model

    out = export_model(run, format="onnx", out=tmp_path / "model.onnx").path
    got = api.predict(out, digits, top_k=10, tta="flip,crop")
    want = api.predict(run, digits, top_k=10, tta="flip,crop")
    np.testing.assert_allclose(_probs(got), _probs(want), atol=1e-5)
