"""Calibration and "I don't know": temperature scaling and ECE against references, the
alternative out-of-domain scores against references, and on the session's tiny run:
calibration.json recorded by training, predict --min-confidence, out-of-domain flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.metrics import calibration as cal
from cnnlab.metrics.scores import expected_calibration_error


def _overconfident(n: int = 600, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is too sure: a good class signal, scaled up 4x, with label noise."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), targets] += 1.5
    flip = rng.random(n) < 0.2
    targets[flip] = rng.integers(0, k, flip.sum())
    return 4 * logits, targets


def test_temperature_minimises_nll_as_a_grid_search_does():
    logits, targets = _overconfident()
    t = cal.fit_temperature(logits, targets)
    grid = np.exp(np.linspace(math.log(0.05), math.log(50), 1001))
    nll = [cal.nll_from_logits(logits, targets, g) for g in grid]
    best = grid[int(np.argmin(nll))]
    assert t == pytest.approx(best, rel=7e-3)  # the grid's spacing in T
    assert t > 1  # over-confident logits are softened
    assert cal.nll_from_logits(logits, targets, t) <= min(nll) + 1e-9
    # scipy's bounded Brent search on log T finds the same minimum
    from scipy.optimize import minimize_scalar

    ref = minimize_scalar(lambda v: cal.nll_from_logits(logits, targets, math.exp(v)),
                          bounds=cal.LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-8})  # fmt: skip
    assert t == pytest.approx(math.exp(ref.x), rel=1e-5)
    # and as PyTorch's cross-entropy measures it
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits / t), torch.tensor(targets))
    assert cal.nll_from_logits(logits, targets, t) == pytest.approx(ce.item(), rel=1e-10)
    # the argmax never moves
    assert (cal.softmax_t(logits, t).argmax(1) == logits.argmax(1)).all()


@pytest.mark.slow  # importing torchmetrics takes seconds
def test_ece_matches_torchmetrics():
    from torchmetrics.classification import MulticlassCalibrationError

    logits, targets = _overconfident(seed=1)
    for temperature in (1.0, cal.fit_temperature(logits, targets)):
        probs = cal.softmax_t(logits, temperature)
        ref = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")(
            torch.tensor(probs), torch.tensor(targets)
        )
        ece = expected_calibration_error(targets, probs, n_bins=15)
        assert ece == pytest.approx(ref.item(), abs=1e-6)


def test_temperature_lowers_ece():
    logits, targets = _overconfident(seed=1)
    t = cal.fit_temperature(logits, targets)
    before = expected_calibration_error(targets, cal.softmax_t(logits), n_bins=15)
    after = expected_calibration_error(targets, cal.softmax_t(logits, t), n_bins=15)
    assert after < before / 2


def test_ece_hand_worked_example():
    # 4 predictions; bins of width 0.5: (0, 0.5] holds 0.3 (wrong); (0.5, 1] holds 0.6 (right),
    # 0.9 (right), 0.8 (wrong): ECE = 1/4 |0 - 0.3| + 3/4 |2/3 - 0.7667| = 0.075 + 0.075 = 0.15
    probs = np.array([[0.3, 0.25, 0.25, 0.2], [0.6, 0.4, 0, 0], [0.1, 0.9, 0, 0], [0, 0, 0.8, 0.2]])
    targets = np.array([1, 0, 1, 3])
    assert expected_calibration_error(targets, probs, n_bins=2) == pytest.approx(0.15)


def test_energy_score_and_mahalanobis_distance_against_references():
    from scipy.spatial.distance import mahalanobis
    from scipy.special import logsumexp

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 6)) + np.repeat(np.eye(6)[:4] * 5, 50, axis=0)
    targets = np.repeat(np.arange(4), 50)
    g = cal.fit_class_gaussians(features, targets, num_classes=5)  # class 4 has no samples
    assert np.isnan(g["means"][4]).all()
    queries = rng.normal(size=(7, 6)) * 3
    got = cal.mahalanobis_distance(queries, **g)
    want = [min(mahalanobis(q, m, g["precision"]) ** 2 for m in g["means"][:4]) for q in queries]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    logits = rng.normal(size=(9, 4)) * 30
    np.testing.assert_allclose(cal.energy_score(logits), -logsumexp(logits, axis=1), rtol=1e-12)
    np.testing.assert_allclose(cal.msp_score(cal.softmax_t(logits)),
                               1 - cal.softmax_t(logits).max(1))  # fmt: skip
    assert cal.quantile_threshold(np.arange(101.0), 0.99) == pytest.approx(99.0)


def test_min_confidence_must_be_a_probability():
    from cnnlab.engine.calibration import check_min_confidence
    from cnnlab.errors import ConfigError

    assert check_min_confidence(None) is None and check_min_confidence("0.5") == 0.5
    for bad in ("1.5", "-0.1", "nan", "half"):
        with pytest.raises(ConfigError, match="--min-confidence"):
            check_min_confidence(bad)


# -- the session's tiny run (LeNet-5 on builtin:digits, one epoch) --------------------------------
@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's two sample photos, uniform noise and an all-white image."""
    from sklearn.datasets import load_sample_image

    folder = tmp_path_factory.mktemp("ood")
    paths = {}
    for name in ("china.jpg", "flower.jpg"):
        paths[name] = folder / name
        Image.fromarray(load_sample_image(name)).save(paths[name])
    rng = np.random.default_rng(0)
    paths["noise"] = folder / "noise.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths["noise"])
    paths["white"] = folder / "white.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(paths["white"])
    return paths


def test_training_records_calibration(run: Path):
    record = json.loads((run / "calibration.json").read_text())
    assert record["temperature"] > 0 and record["nll_after"] <= record["nll_before"] + 1e-9
    assert {"ece_before", "ece_after", "bins", "out_of_domain", "weights"} <= set(record)
    ood = record["out_of_domain"]
    assert ood["score"] == "energy" and 0 <= ood["false_alarm_rate_test"] <= 1


def test_predict_min_confidence_and_out_of_domain(run: Path, digits, odd_images, capsys):
    """The mechanics on the session's run. Its one epoch leaves LeNet-5 near chance (validation
    NLL 2.29 = log 10, every energy score about -log 10 = -2.30), so no score tells photos from
    digits there; the real check is test_demo_run_flags_photos_noise_and_white (slow)."""
    from cnnlab import api
    from cnnlab.cli import main

    record = json.loads((run / "calibration.json").read_text())
    threshold = record["out_of_domain"]["threshold"]
    assert record["out_of_domain"]["false_alarm_rate_test"] <= 0.05  # most test digits in domain
    preds = api.predict(run, [*digits, *odd_images.values()], top_k=3, min_confidence=0.5)
    for p in preds:
        assert p.unknown == (p.top[0][1] < 0.5) and p.answer == (
            "unknown" if p.unknown else p.top[0][0]
        )
        ood = p.out_of_domain
        assert ood["threshold"] == threshold and ood["score"] == "energy"
        assert ood["out_of_domain"] == (ood["value"] > threshold)
    # a photo goes through predict's own path: decoded, made grey, resized to the run's input
    assert Path(preds[len(digits)].path).name == "china.jpg" and preds[len(digits)].top
    assert main(["predict", str(run), str(odd_images["noise"]), "--format", "json",
                 "--min-confidence", "1"]) == 0  # fmt: skip
    row = json.loads(capsys.readouterr().out)[0]
    assert (
        row["answer"] == "unknown"
        and row["unknown"]
        and set(row["out_of_domain"]) == {"score", "value", "threshold", "out_of_domain"}
    )


def test_predict_min_confidence_bad_value_is_one_line(run: Path, digits, capsys):
    from cnnlab.cli import main

    for bad in ("1.5", "x"):
        assert main(["predict", str(run), str(digits[0]), "--min-confidence", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --min-confidence {bad}:") and "\n" not in err


def test_runs_without_calibration_predict_as_before(run: Path, digits, tmp_path):
    import shutil

    from cnnlab import api

    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("evaluations", "calibration.json"))
    preds = api.predict(old, digits[:2], top_k=1)
    assert all(p.out_of_domain is None and not p.unknown for p in preds)


@pytest.mark.slow
def test_demo_run_flags_photos_noise_and_white(tmp_path, odd_images, capsys):
    """The issue's check on the demo run (`cnnlab demo`: LeNet-5 on builtin:mnist-sample, 40
    epochs): at least 95 % of the test digits in domain; the flower photo, noise and an all-white
    image out of domain -- in predict, and in explain's warning. The city photo sits near the
    threshold and its side depends on the CPU's arithmetic: flagged on an AVX-512 CPU's demo run,
    missed on an AVX2 CPU's (energy -7.43 against the threshold -6.42); docs/calibration.md says so,
    and it is not asserted either way."""
    from cnnlab import api
    from cnnlab.cli import main

    run = api.demo(out=tmp_path / "runs", report=False).run_dir
    record = json.loads((run / "calibration.json").read_text())
    ood = record["out_of_domain"]
    assert ood["false_alarm_rate_test"] <= 0.05, ood
    # T minimises the validation NLL (T = 1 is a candidate), so NLL cannot rise; ECE is not what
    # it minimises: on a model already calibrated to ~1 % it moves within the 15 bins' noise (an
    # AVX2 CPU's demo run: 0.0084 -> 0.0101), so it must improve or stay below 2 %
    assert record["nll_after"] <= record["nll_before"]
    assert record["ece_after"] <= max(record["ece_before"], 0.02), record
    odd = [odd_images[name] for name in ("flower.jpg", "noise", "white")]
    preds = api.predict(run, odd, top_k=1)
    for p in preds:
        # with a margin: these three scored 3.2-3.9 above the threshold on an AVX2 CPU's demo run
        assert p.out_of_domain["value"] > ood["threshold"] + 1.0, (p.path, p.out_of_domain)
        assert p.out_of_domain["out_of_domain"], (p.path, p.out_of_domain, ood["threshold"])
    capsys.readouterr()
    flower = str(odd_images["flower.jpg"])
    assert main(["explain", str(run), flower, "--out", str(tmp_path / "x")]) == 0
    assert "looks out of domain" in capsys.readouterr().err
    assert "looks out of domain" in (tmp_path / "x" / "explain.html").read_text()


def assert_same_predictions(got, want, tol: float = 1e-5) -> None:
    for g, w in zip(got, want, strict=True):
        assert [c for c, _ in g.top] == [c for c, _ in w.top]
        np.testing.assert_allclose([p for _, p in g.top], [p for _, p in w.top], atol=tol)
        assert g.out_of_domain["out_of_domain"] == w.out_of_domain["out_of_domain"]
        assert g.out_of_domain["value"] == pytest.approx(w.out_of_domain["value"], abs=1e-4)


def test_an_exported_checkpoint_carries_the_calibration(run: Path, digits, tmp_path):
    from cnnlab import api
    from cnnlab.export import export_model, read_export_metadata

    record = json.loads((run / "calibration.json").read_text())
    out = export_model(run, format="safetensors", out=tmp_path / "model.safetensors").path
    meta = read_export_metadata(out)
    assert meta["temperature"] == record["temperature"]
    assert meta["out_of_domain"]["threshold"] == record["out_of_domain"]["threshold"]
    assert_same_predictions(api.predict(out, digits, top_k=3), api.predict(run, digits, top_k=3))


@pytest.mark.slow  # an ONNX export: seconds
def test_onnx_applies_the_calibration(run: Path, digits, odd_images, tmp_path):
    from cnnlab import api
    from cnnlab.export import export_model, read_export_metadata

    record = json.loads((run / "calibration.json").read_text())
    out = export_model(run, format="onnx", out=tmp_path / "model.onnx").path
    assert read_export_metadata(out)["temperature"] == record["temperature"]
    files = [*digits, *odd_images.values()]
    assert_same_predictions(api.predict(out, files, top_k=3), api.predict(run, files, top_k=3))


def test_evaluate_uses_the_temperature_and_leaves_the_run_as_recorded(
    run: Path, run_digests, tmp_path
):
    from cnnlab import api
    from cnnlab.metrics.calibration import softmax_t

    record = json.loads((run / "calibration.json").read_text())
    before = run_digests(run)
    result = api.evaluate(run, out=tmp_path / "eval", report=False)
    assert run_digests(run) == before
    assert result["metrics"]["temperature"] == record["temperature"]
    with np.load(tmp_path / "eval" / "test_predictions.npz") as z:
        probs, targets = z["probs"].astype(np.float64), z["targets"]
    # probs are softmax(logits / T): T log p differs from the logits by a constant per row,
    # so re-scaling by T gives back softmax(logits), whose ECE training recorded as ece_before
    uncalibrated = softmax_t(np.log(np.clip(probs, 1e-30, 1)), 1 / record["temperature"])
    assert expected_calibration_error(targets, uncalibrated) == pytest.approx(
        record["test"]["ece_before"], abs=1e-3
    )
    assert result["metrics"]["ece"] == pytest.approx(record["test"]["ece_after"], abs=1e-4)


def test_probs_from_logits_are_the_batchwise_scores_to_the_bit():
    """What lets training score the test split once: softmax(logits / T) of the whole split is
    the concatenation of the per-batch scores predict_probs computes (float32, row by row)."""
    import torch

    from cnnlab.engine.calibration import TemperatureScores
    from cnnlab.tasks.classification import ClassificationTask
    from cnnlab.tasks.classify.evaluate import probs_from_logits

    logits = torch.randn(700, 7, generator=torch.Generator().manual_seed(0)) * 6
    for t, task in ((1.0, ClassificationTask(7)), (1.7, TemperatureScores(7, 1.7))):
        batches = torch.cat([task.scores(b) for b in logits.split(256)]).numpy().astype(np.float64)
        whole = probs_from_logits(logits.numpy().astype(np.float64), 7, t)
        assert whole.dtype == np.float64 and np.array_equal(whole, batches)


@pytest.mark.slow  # four scorings of the test split with bootstrap intervals: ~4 s on 2 busy cores
def test_test_metrics_from_calibrations_logits_are_the_predicted_ones(run: Path, tmp_path):
    """Training scores the test split once: its logits serve calibration and the test metrics.
    The probabilities (T != 1 and T = 1) and metrics are those predicting the split gives, to
    the bit, and calibration's test record is the one it computes from its own loader."""
    import torch

    from cnnlab.config import PreprocessSpec, TrainConfig, make_config
    from cnnlab.data.sources import load_source, split_by_ids
    from cnnlab.engine.calibration import fit_calibration, split_logits
    from cnnlab.engine.loaders import make_loader, split_to_uint8
    from cnnlab.engine.weights import load_checkpoint_model
    from cnnlab.run import read_json, saved_config
    from cnnlab.tasks.classify.evaluate import BATCH, evaluate_model

    cpu = torch.device("cpu")
    model, meta, weights = load_checkpoint_model(run, cpu)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    bundle = load_source(make_config(TrainConfig, **saved_config(run)))
    ids = read_json(run / "splits.json")["splits"]
    split = {k: split_by_ids(bundle, ids[k], k) for k in ("val", "test")}
    images = {k: split_to_uint8(v, spec) for k, v in split.items()}
    loader = {k: make_loader(images[k], v.targets, spec, cpu, BATCH) for k, v in split.items()}
    logits = split_logits(model, loader["test"], 10, device=cpu, precision="32")
    record = json.loads((run / "calibration.json").read_text())
    for calibration in (record, None):  # T fitted, and T = 1
        kw = dict(device=cpu, precision="32", report=False, calibration=calibration)
        given = evaluate_model(model, spec, images["test"], split["test"], meta["class_names"],
                               logits=logits, **kw)  # fmt: skip
        predicted = evaluate_model(model, spec, images["test"], split["test"],
                                   meta["class_names"], **kw)  # fmt: skip
        assert np.array_equal(given["probs"], predicted["probs"])
        assert np.array_equal(given["targets"], predicted["targets"])
        assert json.dumps(given["metrics"]) == json.dumps(predicted["metrics"])
    kw = dict(device=cpu, precision="32", weights=weights)
    own = fit_calibration(model, {"val": loader["val"], "test": loader["test"]}, 10, **kw)
    shared = fit_calibration(model, {"val": loader["val"]}, 10, logits={"test": logits}, **kw)
    assert shared == own and "test" in own


def test_report_section_shows_ece_and_false_alarms(run: Path, tmp_path):
    from cnnlab.report.calibration_section import calibration_section
    from cnnlab.report.html import png_figure

    record = json.loads((run / "calibration.json").read_text())
    page = calibration_section(record, tmp_path, png_figure)
    assert f"{record['ece_before']:.4f} / {record['ece_after']:.4f}" in page
    assert "false-alarm rate, in-domain test images" in page and "energy" in page
    assert (tmp_path / "reliability_calibration.png").is_file()
    assert calibration_section(None, tmp_path, png_figure) == ""


def test_serve_predict_is_calibrated_and_flags_out_of_domain(run: Path, digits):
    import threading

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
        calibration=load_calibration(run, weights),
    )  # fmt: skip
    info = calibration_info(served)
    assert info["temperature"] == served.calibration.temperature
    assert info["out_of_domain"]["score"] == "energy"
    got = predict_bytes(served, digits[0].read_bytes())
    want = api.predict(run, digits[:1], top_k=3)[0]
    assert [r["class"] for r in got["top"]] == [c for c, _ in want.top]
    np.testing.assert_allclose([r["probability"] for r in got["top"]], [p for _, p in want.top],
                               atol=1e-5)  # fmt: skip
    assert got["out_of_domain"] == pytest.approx(want.out_of_domain)


@pytest.mark.parametrize("n, few", [(6, True), (49, True), (60, False)])
def test_a_temperature_fitted_on_few_validation_images_is_said_and_recorded(
    n: int, few: bool, tmp_path: Path, caplog
) -> None:
    """6 validation images gave T = 19 without a word; below 50 images (or 2 a class) training
    now warns once, naming the count and the fix, and calibration.json says so. T is unchanged."""
    with caplog.at_level("WARNING", logger="cnnlab.engine.calibration"):
        record, logits, targets = _fitted_on_random_logits(tmp_path, n=n, classes=3, seed=0)
    assert record["temperature"] == cal.fit_temperature(logits, targets)
    assert record["fitted_on"] == {
        "split": "val", "num_samples": n, "few_samples": few, "reliable_from": 50
    }  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "validation image" in r.getMessage()]
    if not few:
        assert said == []
        return
    assert len(said) == 1
    assert f"fitted on only {n} validation image(s)" in said[0]
    assert "a larger --val-fraction" in said[0]


def _fitted_on_random_logits(
    tmp_path: Path, *, n: int, classes: int, seed: int
) -> tuple[dict, np.ndarray, np.ndarray]:
    """calibration.json's record fitted on ``n`` random validation logits of ``classes`` classes
    (given as logits: no model runs), with those logits and targets."""
    from cnnlab.engine.calibration import fit_calibration

    rng = np.random.default_rng(seed)
    logits, targets = rng.normal(0, 4, (n, classes)), rng.integers(0, classes, n)
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"weights")
    record = fit_calibration(
        torch.nn.Identity(), {}, classes, device=torch.device("cpu"), precision="32",
        weights=weights, logits={"val": (logits, targets)},
    )  # fmt: skip
    return record, logits, targets


def test_few_validation_images_also_counts_two_per_class(tmp_path: Path) -> None:
    record, _, _ = _fitted_on_random_logits(tmp_path, n=100, classes=60, seed=1)  # < 2 a class
    assert record["fitted_on"]["few_samples"] and record["fitted_on"]["reliable_from"] == 120


@pytest.mark.parametrize("n", [6, 60])
def test_the_report_section_cautions_about_a_temperature_fitted_on_few_images(
    n: int, tmp_path: Path
) -> None:
    """calibration.json said few_samples and training warned on the console, but the report's
    section showed T and its ECE as if they held. Now it says how many images T was fitted on,
    from how many it is reliable and the fix (the console warning's own words); a record from
    before few_samples existed renders as before, with no caution."""
    from cnnlab.report.calibration_section import calibration_html, calibration_section
    from cnnlab.report.html import png_figure

    record, _, _ = _fitted_on_random_logits(tmp_path, n=n, classes=3, seed=0)
    record = json.loads(json.dumps(record))  # as the report reads it back from calibration.json
    page = calibration_section(record, tmp_path, png_figure)  # the section as the report draws it
    caution = f"fitted on only {n} validation images</b>. Below 50 images T, the ECE"
    assert (caution in page) is (n < 50)
    assert (cal.FEW_SAMPLES_FIX in page) is (n < 50)
    assert "a larger --val-fraction" in cal.FEW_SAMPLES_FIX  # the fix the console names
    old = record | {"fitted_on": {"split": "val", "num_samples": n}}  # before few_samples
    for before in (old, {k: v for k, v in record.items() if k != "fitted_on"}):
        page = calibration_html(before, "data:,")
        assert f"{record['ece_before']:.4f} / {record['ece_after']:.4f}" in page
        assert "Caution" not in page and cal.FEW_SAMPLES_FIX not in page
