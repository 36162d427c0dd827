"""Operating points (docs/imbalance.md): the threshold finder's targets against scikit-learn's curves,
binary metrics and their bootstrap intervals against scikit-learn and an index bootstrap, and
`cnnlab evaluate RUN --positive C --target ...` / `cnnlab predict RUN` end to end: chosen on the
validation split, measured on the test split, stored without touching what training recorded,
applied by predict, and refused in one line when it cannot be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import ConfigError
from cnnlab.metrics.scores import find_threshold
from cnnlab.metrics.stats import (
    binary_intervals,
    binary_metrics,
    bootstrap_ci,
    recall_intervals,
)
from cnnlab.tasks.classify.operating_point import parse_target


# -- the threshold finder's targets -----------------------------------------------------------------
def _scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = np.round(rng.normal(y * 1.2, 1.0) * (3 if seed % 2 else 20)) / 10  # many ties when odd
    return y, s


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [0.0, 0.5, 0.8, 0.95, 1.0])
def test_recall_and_fpr_targets_agree_with_sklearns_roc_curve(seed, target):
    from sklearn.metrics import roc_curve

    y, s = _scores(seed)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)  # thresholds decreasing, +inf first
    threshold, recall = find_threshold(y, s, "recall", target=target)
    want = thr[1:][tpr[1:] >= target - 1e-12].max()  # the highest threshold reaching the recall
    assert threshold == want and recall == pytest.approx(np.mean(s[y] >= threshold))
    assert recall >= target - 1e-12
    ok = fpr[1:] <= target + 1e-12
    if ok.any():
        threshold, rate = find_threshold(y, s, "fpr", target=target)
        assert threshold == thr[1:][ok].min()  # the lowest threshold within the false-alarm rate
        assert rate == pytest.approx(np.mean(s[~y] >= threshold)) and rate <= target + 1e-12
    else:
        with pytest.raises(ValueError, match="no threshold reaches a false-positive rate"):
            find_threshold(y, s, "fpr", target=target)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
def test_precision_target_agrees_with_sklearns_precision_recall_curve(seed, target):
    from sklearn.metrics import precision_recall_curve

    y, s = _scores(seed)
    precision, _, thr = precision_recall_curve(y, s)  # precision[i] at thresholds[i]
    ok = precision[:-1] >= target - 1e-12
    if not ok.any():
        with pytest.raises(ValueError, match="no threshold reaches precision"):
            find_threshold(y, s, "precision", target=target)
        return
    threshold, reached = find_threshold(y, s, "precision", target=target)
    assert threshold == thr[ok].min()  # the lowest such threshold: the most positives found
    decided = s >= threshold
    assert reached == pytest.approx(y[decided].mean()) and reached >= target - 1e-12


def test_targets_need_a_value_in_0_1_and_both_classes():
    y, s = _scores(0)
    for bad in (None, 1.5, -0.1):
        with pytest.raises(ValueError, match="needs a target in"):
            find_threshold(y, s, "recall", target=bad)
    with pytest.raises(ValueError, match="both classes"):
        find_threshold(np.zeros(5, bool), np.arange(5.0), "recall", target=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        find_threshold(y, s, "sensitivity", target=0.5)


# -- binary metrics and their intervals -------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_agree_with_sklearn(seed):
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    y, p = rng.random(200) < 0.2, rng.random(200) < 0.35
    got = binary_metrics(y, p)
    tn, fp, fn, tp = skm.confusion_matrix(y, p).ravel()
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
    assert got["recall"] == pytest.approx(skm.recall_score(y, p))
    assert got["precision"] == pytest.approx(skm.precision_score(y, p))
    assert got["f1"] == pytest.approx(skm.f1_score(y, p))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert got["tnr"] == pytest.approx(skm.recall_score(~y, ~p))
    assert got["fpr"] == pytest.approx(fp / (fp + tn))


def test_undefined_binary_metrics_are_none():
    got = binary_metrics([False, False, True], [False, False, False])
    assert got["precision"] is None and got["recall"] == 0.0 and got["f1"] == 0.0
    got = binary_metrics([False, False], [True, False])
    assert got["recall"] is None and got["balanced_accuracy"] == 0.5  # over the class present


@pytest.mark.parametrize("name", ["recall", "precision", "fpr", "f1", "balanced_accuracy"])
def test_binary_intervals_agree_with_an_index_bootstrap(name):
    """The 2 x 2 multinomial shortcut against resampling the samples themselves (bootstrap_ci with
    a custom metric): two estimates of the same interval, within the Monte-Carlo error."""
    rng = np.random.default_rng(7)
    y = rng.random(400) < 0.25
    p = np.where(y, rng.random(400) < 0.8, rng.random(400) < 0.1)
    got = binary_intervals(y, p, n_boot=4000, seed=1)[name]

    def metric(t, pred):
        return binary_metrics(t.astype(bool), pred.astype(bool))[name]

    low, high = bootstrap_ci(y.astype(int), p.astype(int), metric, n_boot=4000, seed=2)
    assert got["low"] == pytest.approx(low, abs=0.02) and got["high"] == pytest.approx(
        high, abs=0.02
    )
    assert got["low"] <= got["value"] <= got["high"]
    again = binary_intervals(y, p, n_boot=4000, seed=1)[name]
    assert again == got  # seeded


def test_recall_intervals_agree_with_an_index_bootstrap():
    rng = np.random.default_rng(3)
    t = rng.choice(3, 300, p=[0.7, 0.25, 0.05])
    preds = np.where(rng.random(300) < 0.75, t, rng.integers(0, 3, 300))
    got = recall_intervals(t, preds, 4, n_boot=4000, seed=0)
    assert got[3] == (None, None)  # no true sample of class 3
    for k in range(3):

        def recall_k(tt, pp, k=k):
            return np.mean(pp[tt == k] == k) if (tt == k).any() else None

        low, high = bootstrap_ci(t, preds, recall_k, n_boot=4000, seed=1)
        assert got[k][0] == pytest.approx(low, abs=0.03) and got[k][1] == pytest.approx(
            high, abs=0.03
        )


# -- --target ---------------------------------------------------------------------------------------
def test_targets_parse():
    assert str(parse_target("recall=0.95")) == "recall=0.95"
    assert parse_target(" Precision = 0.9 ").value == 0.9
    assert parse_target("fpr=0").value == 0.0 and parse_target("f1").value is None
    assert str(parse_target("youden")) == "youden"


@pytest.mark.parametrize(
    "text, message",
    [
        ("recall=1.5", "must be in [0, 1], got 1.5"),
        ("recall=-0.1", "must be in [0, 1]"),
        ("recall=nan", "must be in [0, 1]"),
        ("recal=0.9", "unknown kind 'recal' (did you mean: recall?)"),
        ("sensitivity=0.9", "choose recall=R, precision=P, fpr=F"),
        ("recall", "recall needs a value"),
        ("precision=", "precision needs a value"),
        ("fpr=low", "'low' is not a number"),
        ("youden=0.5", "youden is maximised and takes no value"),
    ],
)
def test_bad_targets_are_refused(text, message):
    with pytest.raises(ConfigError) as err:
        parse_target(text)
    assert message in str(err.value)


# -- end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from cnnlab import api

    out = tmp_path_factory.mktemp("op")
    result = api.train(data="builtin:digits", model="lenet5", epochs=2, batch_size=64,
                       out=str(out), device="cpu", precision="32", report=False)  # fmt: skip
    return result.run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("evaluations"))
    (target / "operating_point.json").unlink(missing_ok=True)
    return target


def _predictions(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "test_predictions.npz") as z:
        return z["probs"].astype(np.float64), z["targets"]


def _digit_pngs(folder: Path, n: int = 6) -> list[Path]:
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_evaluate_chooses_on_validation_measures_on_test_and_only_adds_a_file(
    run_dir, tmp_path, run_digests
):
    from sklearn.metrics import precision_score, recall_score, roc_curve

    from cnnlab import api

    run = _copy(run_dir, tmp_path)
    before = run_digests(run)
    result = api.evaluate(run, positive="3", target="recall=0.9", report=False)
    point = result["operating_point"]
    after = run_digests(run)
    added = after.pop("operating_point.json")
    assert after == before  # what training recorded is untouched; one new file
    assert json.loads((run / "operating_point.json").read_text()) == point
    evaluation = Path(result["out_dir"])
    assert (evaluation / "operating_point.json").read_bytes() == (
        run / "operating_point.json"
    ).read_bytes()
    assert point["evaluation"] == evaluation.relative_to(run).as_posix() and added

    # the threshold: scikit-learn's ROC curve on the validation split's probabilities
    val_probs, val_t = _predictions(Path(api.evaluate(run, split="val", report=False)["out_dir"]))
    y = val_t == 3
    fpr, tpr, thr = roc_curve(y, val_probs[:, 3], drop_intermediate=False)
    assert point["threshold"] == pytest.approx(thr[1:][tpr[1:] >= 0.9].max(), rel=1e-6)
    assert point["chosen_on"]["recall"] >= 0.9 and point["chosen_on"]["positives"] == y.sum()
    # measured on the test split, as scikit-learn says at that threshold
    probs, t = _predictions(evaluation)
    decided = probs[:, 3] >= point["threshold"]
    metrics = point["evaluated_on"]["metrics"]
    assert metrics["recall"]["value"] == pytest.approx(recall_score(t == 3, decided))
    assert metrics["precision"]["value"] == pytest.approx(precision_score(t == 3, decided))
    for name in ("recall", "precision", "fpr", "f1", "balanced_accuracy"):
        iv = metrics[name]
        assert iv["low"] <= iv["value"] <= iv["high"]
    assert point["positive_class"] == "3" and point["target"] == "recall=0.9"
    assert point["evaluated_on"]["split"] == "test" and point["evaluated_on"]["num_samples"] == len(
        t
    )


def test_predict_applies_the_operating_point_and_says_which(run_dir, tmp_path, capsys):
    from cnnlab import api
    from cnnlab.cli import main

    run = _copy(run_dir, tmp_path)
    point = api.evaluate(run, positive="3", target="f1", report=False)["operating_point"]
    images = _digit_pngs(tmp_path / "img")
    plain = api.predict(run, images, top_k=10, operating_point=False)
    decided = api.predict(run, images, top_k=1)
    for a, b in zip(plain, decided, strict=True):
        p3 = dict(a.top)["3"]
        assert a.decision is None and b.decision is not None
        assert b.decision["probability"] == pytest.approx(p3, abs=1e-7)
        assert b.decision["positive"] == (p3 >= point["threshold"])
        assert b.decision["threshold"] == point["threshold"] and b.decision["class"] == "3"
    assert main(["predict", str(run), *map(str, images), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert f"P(3) >= {point['threshold']:.6g}" in captured.err and "f1" in captured.err
    header, *rows = captured.out.strip().splitlines()
    assert header == "path,rank,class,probability,error,decision,threshold,out_of_domain,ood_score"
    assert {r.split(",")[5] for r in rows} <= {"positive", "negative"}
    assert main(["predict", str(run), str(images[0]), "--ignore-operating-point"]) == 0
    captured = capsys.readouterr()
    assert "operating point" not in captured.err and "positive" not in captured.out
    assert main(["predict", str(run), str(images[0])]) == 0
    table = capsys.readouterr().out
    assert "3?" in table and ("positive" in table or "negative" in table)


def test_a_second_operating_point_needs_replace_and_the_first_stays_on_record(run_dir, tmp_path):
    from cnnlab import api

    run = _copy(run_dir, tmp_path)
    first = api.evaluate(run, positive="3", target="recall=0.9", report=False)
    with pytest.raises(
        ConfigError, match=r"operating_point.json exists .*--replace-operating-point"
    ):
        api.evaluate(run, positive="5", target="fpr=0.05", report=False)
    assert json.loads((run / "operating_point.json").read_text()) == first["operating_point"]
    second = api.evaluate(run, positive="5", target="fpr=0.05", report=False,
                          replace_operating_point=True)  # fmt: skip
    assert json.loads((run / "operating_point.json").read_text())["positive_class"] == "5"
    kept = json.loads((Path(first["out_dir"]) / "operating_point.json").read_text())
    assert kept == first["operating_point"] and second["operating_point"]["target"] == "fpr=0.05"


def test_an_operating_point_chosen_for_other_weights_is_refused_by_predict(run_dir, tmp_path):
    from cnnlab import api

    run = _copy(run_dir, tmp_path)
    api.evaluate(run, positive="3", target="f1", report=False)
    record = json.loads((run / "operating_point.json").read_text())
    record["weights"]["sha256"] = "0" * 64  # as if the run had been resumed to new best weights
    (run / "operating_point.json").write_text(json.dumps(record))
    image = _digit_pngs(tmp_path / "img", 1)
    with pytest.raises(ConfigError, match=r"other weights.*--replace-operating-point.*--ignore-"):
        api.predict(run, image)
    assert api.predict(run, image, operating_point=False)[0].decision is None


def test_an_unreachable_target_is_a_one_line_error_naming_the_target(monkeypatch):
    from cnnlab.tasks.classify import operating_point as op

    def unreachable(*args, **kwargs):
        raise ValueError("no threshold reaches precision 1; the highest precision is 0.8")

    monkeypatch.setattr(op, "find_threshold", unreachable)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    with pytest.raises(ConfigError, match=r"--target precision=1 on the validation split: no thr"):
        op.choose(np.array([0, 1, 1]), probs, 1, parse_target("precision=1"), "b")
    with pytest.raises(Exception, match="no image is of class 'b'"):
        op.choose(np.array([0, 0, 0]), probs, 1, parse_target("f1"), "b")


def test_operating_point_refusals(run_dir, tmp_path):
    from cnnlab import api

    run = _copy(run_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"no class '33' \(did you mean: 3\?\)"):
        api.evaluate(run, positive="33", target="f1")
    with pytest.raises(ConfigError, match="--target needs --positive CLASS"):
        api.evaluate(run, target="f1")
    with pytest.raises(ConfigError, match="--positive 3 needs --target"):
        api.evaluate(run, positive="3")
    with pytest.raises(ConfigError, match="--replace-operating-point needs"):
        api.evaluate(run, replace_operating_point=True)
    splits = json.loads((run / "splits.json").read_text())
    splits["splits"]["val"] = []
    (run / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(ConfigError, match="has no validation split"):
        api.evaluate(run, positive="3", target="f1")
    loose = tmp_path / "best.safetensors"
    shutil.copy(run / "checkpoints" / "best.safetensors", loose)
    with pytest.raises(ConfigError, match="not inside a run folder"):
        api.evaluate(loose, data="builtin:digits", positive="3", target="f1")
    assert not (run / "operating_point.json").exists()


@pytest.mark.parametrize(
    "args, named",
    [
        (["--positive", "3", "--target", "recall=1.5"], "recall=1.5"),
        (["--positive", "3", "--target", "recal=0.9"], "did you mean: recall"),
        (["--positive", "three", "--target", "recall=0.9"], "no class 'three'"),
    ],
)
def test_cli_errors_are_one_line(run_dir, capsys, args, named):
    from cnnlab.cli import main

    assert main(["evaluate", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and named in err
    assert not (run_dir / "operating_point.json").exists()


def test_cli_evaluate_prints_and_stores_the_operating_point(run_dir, tmp_path, capsys):
    from cnnlab.cli import main

    run = _copy(run_dir, tmp_path)
    assert main(["evaluate", str(run), "--positive", "3", "--target", "recall=0.8", "--json",
                 "--no-report"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["operating_point"]["target"] == "recall=0.8" and "accuracy" in printed
    assert main(["evaluate", str(run), "--positive", "3", "--target", "youden", "--no-report",
                 "--replace-operating-point"]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    assert "operating point: 3 positive when P(3) >=" in " ".join(shown.split())
    assert "balanced_accuracy" in shown and "operating_point.json" in " ".join(shown.split())


# -- what export and serve carry ------------------------------------------------------------------
@pytest.fixture(scope="module")
def op_run(run_dir, tmp_path_factory) -> dict:
    """A copy of the run with an operating point chosen by `cnnlab evaluate` (3 positive, max F1)
    and its ONNX export, shared by the export tests."""
    from cnnlab import api

    folder = tmp_path_factory.mktemp("op_export")
    run = _copy(run_dir, folder)
    point = api.evaluate(run, positive="3", target="f1", report=False)["operating_point"]
    result = api.export(run, format="onnx")
    return {"run": run, "point": point, "onnx": result.path, "images": _digit_pngs(folder / "i")}


def test_export_records_the_operating_point_and_predict_on_the_onnx_applies_it(
    op_run, tmp_path, capsys
):
    from cnnlab import api
    from cnnlab.cli import main
    from cnnlab.export import read_export_metadata

    point = op_run["point"]
    carried = read_export_metadata(op_run["onnx"])["operating_point"]
    assert carried["positive_class"] == "3" and carried["positive_index"] == 3
    assert carried["threshold"] == point["threshold"] and carried["target"] == "f1"
    assert carried["weights_sha256"] == point["weights"]["sha256"]
    on_run = api.predict(op_run["run"], op_run["images"], top_k=3)
    on_onnx = api.predict(op_run["onnx"], op_run["images"], top_k=3)
    for r, o in zip(on_run, on_onnx, strict=True):
        assert o.decision is not None and r.decision is not None
        assert o.decision["positive"] == r.decision["positive"]
        assert o.decision["threshold"] == r.decision["threshold"] == point["threshold"]
        assert o.decision["probability"] == pytest.approx(r.decision["probability"], abs=1e-5)
        assert [c for c, _ in o.top] == [c for c, _ in r.top]
    assert {p.decision["positive"] for p in on_run} == {True, False}  # both sides are exercised
    assert all(
        p.decision is None for p in api.predict(op_run["onnx"], op_run["images"][:1],
                                                operating_point=False)
    )  # fmt: skip
    # an exported .safetensors carries it too (outside the run folder: only its metadata says it)
    # and --ignore-operating-point leaves it out of the file
    carrying = api.export(op_run["run"], format="safetensors", out=tmp_path / "op.safetensors")
    on_st = api.predict(carrying.path, op_run["images"], top_k=3)
    assert [p.decision for p in on_st] == [p.decision for p in on_run]
    bare = api.export(op_run["run"], format="safetensors", out=tmp_path / "bare.safetensors",
                      operating_point=False)  # fmt: skip
    assert "operating_point" not in bare.metadata
    assert api.predict(bare.path, op_run["images"][:1])[0].decision is None
    # the command line says which operating point it applies, from the file's metadata
    assert main(["predict", str(op_run["onnx"]), str(op_run["images"][0])]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"P(3) >= {point['threshold']:.6g}" in said
    # it named FILE.onnx/operating_point.json, a path that cannot exist
    assert f"validation split; {op_run['onnx']});" in said and "onnx/operating_point" not in said
