"""One inference precision policy, and evaluation that never rewrites what training recorded.

The same run and image give the same probabilities from `predict`, `evaluate`, `serve` and the ONNX
parity check on one machine; bf16 inference happens only when asked, and is recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_process import in_process

from cnnlab import api
from cnnlab.engine.devices import (
    inference_precision,
    machine_info,
    resolve_precision,
    tolerance,
)
from cnnlab.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# -- the policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("trained", [None, "32", "bf16", "16"])
def test_inference_defaults_to_fp32_on_cpu_whatever_training_used(trained):
    assert inference_precision("auto", CPU, trained) == "32"
    assert inference_precision(None, CPU, trained) == "32"


def test_inference_on_cuda_follows_what_the_run_was_validated_with():
    assert inference_precision("auto", CUDA, "bf16") == "bf16"
    assert inference_precision("auto", CUDA, "16") == "16"
    assert inference_precision("auto", CUDA, "32") == "32"
    assert inference_precision("auto", CUDA, None) == "32"  # unknown: the exact one


def test_an_explicit_precision_wins_and_bad_ones_are_refused():
    assert inference_precision("bf16", CPU, "32") == "bf16"
    assert inference_precision("32", CUDA, "bf16") == "32"
    with pytest.raises(ConfigError, match="--precision 16 needs a CUDA GPU"):
        inference_precision("16", CPU)
    with pytest.raises(ConfigError, match="is not one of"):
        inference_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="--precision 16 needs a CUDA GPU"):
        resolve_precision("16", CPU)


def test_tolerances_grow_as_the_mantissa_shrinks():
    assert tolerance("32") < tolerance("16") < tolerance("bf16")
    # bf16 keeps 8 significant bits: one rounding of a probability near 1 moves it by up to 2^-8
    assert tolerance("bf16") > 2**-8


def test_machine_info_names_the_cpu_and_its_bf16_support():
    info = machine_info("cpu")
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["native_bf16"] == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert info["torch_threads"] == torch.get_num_threads() and info["cpu_model"]
    assert ("gpu_name" in info) == torch.cuda.is_available()


# -- a trained run, read back ----------------------------------------------------------------------
def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


_cli = in_process  # the commands in this process: what they compute is the subject here


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    run = api.train(
        data="builtin:digits", out=str(out), name="d", model="lenet5", epochs=2, batch_size=64,
        lr=0.05, seed=0, report=True,
    )  # fmt: skip
    return run.run_dir


def test_run_json_records_the_machine_and_both_precisions(digits_run: Path):
    record = json.loads((digits_run / "run.json").read_text())
    assert record["inference_precision"] == inference_precision("auto", CPU, record["precision"])
    machine = record["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["native_bf16"] == torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.precision
def test_evaluate_leaves_the_run_byte_identical_and_reproduces_its_metrics(
    digits_run: Path, precision: str
):
    before = _digests(digits_run)
    recorded = json.loads((digits_run / "test_metrics.json").read_text())
    result = _cli("evaluate", str(digits_run), "--json", "--precision", precision)
    assert result.returncode == 0, result.stderr
    after = {k: v for k, v in _digests(digits_run).items() if not k.startswith("evaluations/")}
    assert after == before  # test_metrics.json, test_predictions.npz, report.html, checkpoints ...
    folders = sorted((digits_run / "evaluations").iterdir())
    assert folders and str(folders[-1]) in result.stderr  # it says where the results went
    record = json.loads((folders[-1] / "evaluation.json").read_text())
    used = inference_precision(precision, CPU)
    assert record["precision"] == used and record["split"] == "test"
    assert record["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    metrics = json.loads(result.stdout)
    assert metrics == json.loads((folders[-1] / "test_metrics.json").read_text())
    if used == json.loads((digits_run / "run.json").read_text())["inference_precision"]:
        assert metrics == recorded  # the same machine and precision: exactly what training recorded
    else:  # bf16 forced: near what fp32 recorded
        assert abs(metrics["accuracy"] - recorded["accuracy"]) <= 3 / metrics["num_samples"]


@pytest.mark.precision
def test_predict_evaluate_and_the_model_agree_on_probabilities(
    digits_run: Path, precision: str, precision_tol: float
):
    """`evaluate`'s saved probabilities of the test images equal `predict`'s on the same pixels."""
    model, meta, _ = api.load_checkpoint_model(digits_run)
    ev = api.evaluate(digits_run, report=False, precision=precision)
    saved = np.load(Path(ev["out_dir"]) / "test_predictions.npz")
    recorded = np.load(digits_run / "test_predictions.npz")
    assert list(saved["ids"]) == list(recorded["ids"])
    np.testing.assert_allclose(saved["probs"], recorded["probs"], atol=precision_tol, rtol=0)
    # the checkpoint in plain fp32, batch by batch, is the reference of both
    spec = api.PreprocessSpec.from_dict(meta["preprocess"])
    from cnnlab.data.sources import load_source, split_by_ids

    cfg = api.make_config(api.TrainConfig, data="builtin:digits", seed=0)
    bundle = load_source(cfg)
    ids = json.loads((digits_run / "splits.json").read_text())["splits"]["test"]
    split = split_by_ids(bundle, ids, "test")
    x = api.split_to_uint8(split, spec).float() / 255
    x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    # probabilities are calibrated: softmax(logits / T), T fitted on validation (calibration.json)
    temperature = json.loads((digits_run / "calibration.json").read_text())["temperature"]
    with torch.inference_mode():
        want = (model(x) / temperature).softmax(1).numpy()
    np.testing.assert_allclose(recorded["probs"], want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(saved["probs"], want, atol=precision_tol, rtol=0)


def test_evaluate_refuses_to_write_into_the_run_folder_itself(digits_run: Path):
    before = _digests(digits_run / "checkpoints")
    result = _cli("evaluate", str(digits_run), "--out", str(digits_run))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "never rewrites" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert _digests(digits_run / "checkpoints") == before


def test_evaluate_into_a_new_folder_and_refuse_a_used_one(digits_run: Path, tmp_path: Path):
    ev = api.evaluate(digits_run, report=False, out=tmp_path / "mine")
    assert Path(ev["out_dir"]) == tmp_path / "mine"
    assert (tmp_path / "mine" / "test_metrics.json").is_file()
    with pytest.raises(ConfigError, match="not empty"):
        api.evaluate(digits_run, report=False, out=tmp_path / "mine")


def test_bf16_inference_is_explicit_close_and_recorded(digits_run: Path, tmp_path: Path):
    img = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(img)
    exact = dict(api.predict(digits_run, [img], top_k=10)[0].top)
    low = dict(api.predict(digits_run, [img], top_k=10, precision="bf16")[0].top)
    assert exact.keys() == low.keys()
    np.testing.assert_allclose(
        [low[c] for c in exact], list(exact.values()), atol=tolerance("bf16")
    )
    result = _cli("predict", str(digits_run), str(img), "--precision", "bf16", "--format", "json")
    assert result.returncode == 0 and "inference precision: bf16" in result.stderr
    assert json.loads(result.stdout)[0]["top"]


def test_onnx_prediction_refuses_another_precision(tmp_path: Path):
    from cnnlab.tasks.classify.predict import predict

    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"")
    with pytest.raises(ConfigError, match="float32 in onnxruntime"):
        predict(fake, [tmp_path], precision="bf16")


@pytest.mark.precision
def test_the_web_explorer_answers_as_predict_does_at_the_same_precision(
    digits_run: Path, tmp_path: Path, precision: str, precision_tol: float
):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from cnnlab.serve.app import create_app

    img = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)).save(img)
    reference = dict(api.predict(digits_run, [img], top_k=10)[0].top)  # fp32, the default
    used = inference_precision(precision, CPU)
    with TestClient(create_app(digits_run, top_k=10, precision=precision)) as client:
        body = client.post("/api/predict", files={"file": ("d.png", img.read_bytes())}).json()
    assert body["precision"] == used
    got = {t["class"]: t["probability"] for t in body["top"]}
    np.testing.assert_allclose(
        [got[c] for c in reference], list(reference.values()), atol=precision_tol
    )
    if used == "32":
        assert list(got) == list(reference)  # the same ranking
