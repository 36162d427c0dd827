"""Class imbalance (docs/imbalance.md): class weights against scikit-learn, focal loss against a NumPy
hand computation and cross-entropy, balanced accuracy against scikit-learn, the balanced sampler's
distribution, determinism and resumption, what a run records, and the one-line refusals."""

from __future__ import annotations

import json
import logging
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab.config import TrainConfig
from cnnlab.data.loader import TensorLoader, balanced_indices, seeded_generator
from cnnlab.errors import ConfigError, DataError
from cnnlab.tasks.classification import (
    ClassificationTask,
    balanced_accuracy,
    classification_loss,
    focal_loss,
)
from cnnlab.tasks.classify.imbalance import auto_class_weights, class_balance, read_class_weights

NAMES = ["cat", "dog", "eel"]


# -- class weights ----------------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [[5, 50, 500], [1, 1, 1], [3, 97], [10, 20, 30, 40, 1000]])
def test_auto_weights_are_sklearns_balanced_weights_and_average_1_over_samples(counts):
    from sklearn.utils.class_weight import compute_class_weight

    y = np.repeat(np.arange(len(counts)), counts)
    ref = compute_class_weight("balanced", classes=np.arange(len(counts)), y=y)
    got = auto_class_weights(counts)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert np.dot(counts, got) / sum(counts) == pytest.approx(1.0, rel=1e-12)


def test_auto_weights_leave_a_class_without_training_images_at_1():
    got = auto_class_weights([0, 10, 30])
    assert got[0] == 1.0 and got[1:] == pytest.approx([40 / (2 * 10), 40 / (2 * 30)])


def _weights_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "weights.json"
    path.write_text(text)
    return path


def test_a_weights_file_is_read_in_class_order(tmp_path):
    path = _weights_file(tmp_path, '{"eel": 0.5, "cat": 2, "dog": 0}')
    assert read_class_weights(path, NAMES) == [2.0, 0.0, 0.5]


@pytest.mark.parametrize(
    "text, named",
    [
        ('{"cat": 1, "dog": 2}', "'eel'"),  # a class missing
        ('{"cat": 1, "dog": 2, "eel": 1, "cta": 3}', "'cta'"),  # an unknown class
        ('{"cat": -1, "dog": 2, "eel": 1}', "'cat'"),  # negative
        ('{"cat": NaN, "dog": 2, "eel": 1}', "'cat'"),  # non-finite (Python's json reads NaN)
        ('{"cat": Infinity, "dog": 2, "eel": 1}', "'cat'"),
        ('{"cat": "2", "dog": 2, "eel": 1}', "'cat'"),  # not a number
        ('{"cat": true, "dog": 2, "eel": 1}', "'cat'"),
        ('{"cat": 0, "dog": 0, "eel": 0}', "every class weight is 0"),
        ("[1, 2, 3]", "JSON object"),
        ('{"cat": 1,', "not valid JSON"),
    ],
)
def test_a_bad_weights_file_is_refused_naming_the_file_and_class(tmp_path, text, named):
    """bad-inputs #68: a class missing, an unknown class, a negative or non-finite weight."""
    path = _weights_file(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_class_weights(path, NAMES)
    assert named in str(err.value) and str(path) in str(err.value)


def test_an_unknown_class_in_the_weights_file_gets_close_matches(tmp_path):
    path = _weights_file(tmp_path, '{"cat": 1, "dog": 2, "eel": 1, "dgo": 3}')
    with pytest.raises(DataError, match=r"'dgo'.*did you mean: dog"):
        read_class_weights(path, NAMES)


def test_a_missing_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="class-weights file not found"):
        read_class_weights(tmp_path / "nope.json", NAMES)


# -- focal loss and the weighted loss ---------------------------------------------------------------
def _numpy_focal(logits: np.ndarray, targets: np.ndarray, gamma: float, alpha=None) -> float:
    """FL = -alpha_t (1 - p_t)^gamma log p_t, averaged over the batch, by hand."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    pt = p[np.arange(len(targets)), targets]
    a = np.ones(len(targets)) if alpha is None else np.asarray(alpha)[targets]
    return float(np.mean(-a * (1 - pt) ** gamma * np.log(pt)))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_loss_equals_the_hand_computation(gamma, weighted):
    rng = np.random.default_rng(int(gamma * 10) + weighted)
    logits = rng.normal(0, 3, (64, 5))
    targets = rng.integers(0, 5, 64)
    alpha = rng.uniform(0.1, 4, 5) if weighted else None
    got = focal_loss(
        torch.tensor(logits), torch.tensor(targets), gamma,
        None if alpha is None else torch.tensor(alpha),
    )  # fmt: skip
    assert got.item() == pytest.approx(_numpy_focal(logits, targets, gamma, alpha), rel=1e-10)


def test_focal_loss_with_gamma_0_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, 7, generator=g) * 4
    targets = torch.randint(0, 7, (100,), generator=g)
    ce = F.cross_entropy(logits, targets)
    torch.testing.assert_close(focal_loss(logits, targets, 0.0), ce, rtol=1e-6, atol=1e-7)
    w = torch.rand(7, generator=g) + 0.1
    weighted = F.cross_entropy(logits, targets, weight=w, reduction="none").mean()
    torch.testing.assert_close(focal_loss(logits, targets, 0.0, w), weighted, rtol=1e-6, atol=1e-7)
    got = classification_loss(logits, targets, criterion="focal", focal_gamma=0.0)
    torch.testing.assert_close(got, ce, rtol=1e-6, atol=1e-7)


def test_unweighted_cross_entropy_is_exactly_the_old_call():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(32, 4, generator=g), torch.randint(0, 4, (32,), generator=g)
    got = classification_loss(logits, targets, label_smoothing=0.1)
    assert torch.equal(got, F.cross_entropy(logits, targets, label_smoothing=0.1))


def test_weighted_cross_entropy_is_the_batch_mean_of_weighted_sample_losses():
    """Keras' class_weight convention: sum_i w_{y_i} l_i / B (not PyTorch's / sum_i w_{y_i})."""
    rng = np.random.default_rng(2)
    logits, targets, w = rng.normal(size=(40, 3)), rng.integers(0, 3, 40), np.array([0.5, 2.0, 7.0])
    got = classification_loss(torch.tensor(logits), torch.tensor(targets), weight=torch.tensor(w))
    assert got.item() == pytest.approx(_numpy_focal(logits, targets, 0.0, w), rel=1e-10)


def test_focal_gradient_stays_finite_where_the_model_is_certain():
    logits = torch.tensor([[80.0, -80.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 2]), 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_the_task_adds_weighted_focal_auxiliary_heads():
    class Net(torch.nn.Module):
        aux_weight = 0.3

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.aux_logits: list[torch.Tensor] = []

        def forward(self, x):
            self.aux_logits = [self.lin(x) * 0.5]
            return self.lin(x)

    torch.manual_seed(0)
    net, x, y = Net(), torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    task = ClassificationTask(3, class_weights=[1.0, 2.0, 3.0], criterion="focal", focal_gamma=1.5)
    out = task.loss(net, x, y)
    w = torch.tensor([1.0, 2.0, 3.0])
    with torch.no_grad():
        main = focal_loss(net.lin(x), y, 1.5, w)
        aux = focal_loss(net.lin(x) * 0.5, y, 1.5, w)
    torch.testing.assert_close(out["loss"].detach(), main + 0.3 * aux)
    with pytest.raises(ValueError, match="2 class weights for 3 classes"):
        ClassificationTask(3, class_weights=[1.0, 2.0])


# -- balanced accuracy ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_validation_balanced_accuracy_matches_sklearn(seed):
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    k = 5
    targets = rng.choice(k, size=60, p=[0.6, 0.2, 0.1, 0.1, 0.0] if seed % 2 else None)
    probs = torch.softmax(torch.tensor(rng.normal(size=(60, k))), 1).float()
    got = ClassificationTask(k).metrics_from_probs(probs, torch.tensor(targets))
    with warnings.catch_warnings():  # a class absent from the targets: sklearn warns, then skips it
        warnings.simplefilter("ignore")
        ref = balanced_accuracy_score(targets, probs.argmax(1).numpy())
    assert got["balanced_accuracy"] == pytest.approx(ref, abs=1e-12)
    assert got["accuracy"] == pytest.approx(float((probs.argmax(1).numpy() == targets).mean()))
    assert balanced_accuracy(probs.argmax(1), torch.tensor(targets), k) == got["balanced_accuracy"]


def test_val_balanced_accuracy_is_a_monitor_choice():
    from cnnlab.engine.trainer import check_monitor, recorded_metrics

    assert "val_balanced_accuracy" in recorded_metrics(ClassificationTask)
    check_monitor("val_balanced_accuracy", ClassificationTask, "classification")
    with pytest.raises(ConfigError, match="did you mean: val_balanced_accuracy"):
        check_monitor("val_balanced_acc", ClassificationTask, "classification")


# -- the balanced sampler ---------------------------------------------------------------------------
def test_balanced_draws_give_every_class_the_same_chance_and_each_sample_1_over_its_count():
    """Per-sample draw probability 1 / (K n_c), checked with a chi-square test on 600,000 draws."""
    from scipy.stats import chisquare

    targets = torch.tensor([0] * 5 + [1] * 45 + [2] * 450)  # counts 5, 45, 450
    n = 600_000
    drawn = balanced_indices(targets, n, seeded_generator(0, 0))
    assert drawn.dtype == torch.int64 and len(drawn) == n
    per_sample = np.bincount(drawn.numpy(), minlength=500)
    counts = np.array([5, 45, 450])
    expected = n / (3 * counts[targets.numpy()])  # P(i) = 1 / (K n_{y_i})
    assert chisquare(per_sample, expected).pvalue > 1e-4
    per_class = np.bincount(targets[drawn].numpy(), minlength=3)
    assert chisquare(per_class).pvalue > 1e-4  # uniform over the classes


def test_balanced_draws_skip_classes_without_samples():
    targets = torch.tensor([0, 0, 3, 3, 3, 3])  # classes 1 and 2 absent
    drawn = balanced_indices(targets, 10_000, seeded_generator(1))
    share = (targets[drawn] == 0).float().mean().item()
    assert set(targets[drawn].tolist()) == {0, 3} and share == pytest.approx(0.5, abs=0.03)
    assert len(balanced_indices(targets, 0, seeded_generator(1))) == 0


def _loader(**kw) -> TensorLoader:
    images = torch.randint(0, 255, (60, 1, 6, 6), dtype=torch.uint8)
    targets = torch.tensor([0] * 50 + [1] * 8 + [2] * 2)
    return TensorLoader(images, targets, torch.tensor([0.5]), torch.tensor([0.25]), 8, **kw)


def test_the_balanced_sampler_is_seeded_by_seed_and_epoch():
    ld = _loader(sampler="balanced", seed=3, shuffle=True, drop_last=True)
    first = torch.cat([b[2] for b in ld.batches(0)])
    assert torch.equal(first, torch.cat([b[2] for b in ld.batches(0)]))  # same seed and epoch
    assert not torch.equal(first, torch.cat([b[2] for b in ld.batches(1)]))  # the epoch mixed in
    other = _loader(sampler="balanced", seed=4, shuffle=True, drop_last=True)
    assert not torch.equal(first, torch.cat([b[2] for b in other.batches(0)]))
    assert len(ld) == 60 // 8  # an epoch is still N draws
    torch.testing.assert_close(
        ld.order(2), balanced_indices(ld.targets, 60, seeded_generator(3, 2))
    )
    classes = ld.targets[torch.cat([ld.order(e) for e in range(50)])]
    assert np.bincount(classes.numpy()) / len(classes) == pytest.approx([1 / 3] * 3, abs=0.03)


def test_the_balanced_sampler_resumes_mid_epoch_with_the_same_batches():
    ld = _loader(sampler="balanced", seed=1, augment=("crop", "flip"), drop_last=True)
    full = list(ld.batches(5))
    tail = list(ld.batches(5, start=3))
    assert len(tail) == len(full) - 3
    for a, b in zip(full[3:], tail, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_balanced_shards_are_the_single_process_batches_split_by_rank():
    single = _loader(sampler="balanced", seed=2, drop_last=True).order(3)
    ranks = [
        _loader(sampler="balanced", seed=2, drop_last=True, shard=(r, 2)).order(3) for r in (0, 1)
    ]
    assert torch.equal(ranks[0], single[0::2]) and torch.equal(ranks[1], single[1::2])


def test_an_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="sampler must be"):
        _loader(sampler="weighted").order(0)
    with pytest.raises(ConfigError, match="did you mean: balanced"):
        TrainConfig(sampler="balnced")


def test_streamed_files_give_the_balanced_batches_of_the_cache(tmp_path):
    """StreamLoader (files decoded per batch by worker processes) draws the TensorLoader's order."""
    from cnnlab import api
    from cnnlab.data.loader import FileImages, StreamLoader
    from cnnlab.data.tensors import PreprocessSpec, decode_files

    rng = np.random.default_rng(0)
    paths = []
    for i in range(14):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(paths[-1])
    spec = PreprocessSpec(10, 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    targets = np.array([0] * 11 + [1] * 3)
    cached = torch.from_numpy(decode_files(paths, spec, cache_dir=tmp_path / "cache"))
    kw = {
        "shuffle": True,
        "sampler": "balanced",
        "seed": 5,
        "augment": ("crop",),
        "drop_last": True,
    }
    memory = api.make_loader(cached, targets, spec, torch.device("cpu"), 4, **kw)
    stream = api.make_loader(FileImages([str(p) for p in paths], spec), targets, spec,
                             torch.device("cpu"), 4, **kw)  # fmt: skip
    assert isinstance(stream, StreamLoader)
    for start in (0, 2):
        for a, b in zip(memory.batches(1, start), stream.batches(1, start), strict=True):
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"loss": "focall"}, "did you mean: focal"),
        ({"focal_gamma": -1.0}, "focal_gamma must be a number >= 0"),
        ({"focal_gamma": float("nan")}, "focal_gamma must be a number >= 0"),
        ({"loss": "focal", "label_smoothing": 0.1}, "loss=focal does not combine"),
        ({"class_weights": " "}, "class_weights must be none, auto or a JSON file"),
    ],
)
def test_bad_imbalance_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_cli_names_both_flags_when_focal_loss_meets_label_smoothing(tmp_path):
    """It said "--loss=focal does not combine with label_smoothing > 0": the second option in
    Python's spelling, which the command line does not have."""
    from cli_process import in_process

    proc = in_process("train", "--data", "builtin:digits", "--out", str(tmp_path),
                      "--loss", "focal", "--label-smoothing", "0.1")  # fmt: skip
    assert proc.returncode == 2 and not list(tmp_path.iterdir())
    assert proc.stderr.startswith(
        "error: option --loss=focal does not combine with option --label-smoothing 0.1 > 0"
    ), proc.stderr


def test_cli_names_the_bad_weights_file_in_one_line(tmp_path, capsys):
    from cnnlab.cli import main

    path = _weights_file(tmp_path, '{"0": 1, "1": 2}')
    code = main(["train", "--data", "builtin:digits", "--epochs", "1", "--out", str(tmp_path),
                 "--class-weights", str(path)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert str(path) in err and "'2'" in err and "give every class a weight" in err
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("lenet5-*"))  # no run folder


# -- a run: what it records, what it says, and that it learns ---------------------------------------
def _imbalanced_folder(root: Path, train: dict[str, int], held_out: int = 40) -> Path:
    """train/ val/ test/ of 12 px grey images: 'minor' has a brighter centre square."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", train), ("val", {c: held_out // 2 for c in train}),
                          ("test", {c: held_out for c in train})):  # fmt: skip
        for c, n in counts.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (12, 12))
                if c == "minor":
                    img[3:9, 3:9] = np.clip(img[3:9, 3:9] + 60, 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


RUN = {"model": "lenet5", "epochs": 3, "batch_size": 16, "lr": 0.02, "augment": (),
       "device": "cpu", "precision": "32", "report": False}  # fmt: skip


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    return _imbalanced_folder(tmp_path_factory.mktemp("imb") / "data", {"major": 160, "minor": 6})


def test_weights_and_the_sampler_find_the_minority_that_plain_training_misses(imbalanced, tmp_path):
    """The learning check, with plain cross-entropy as its negative control: on 27:1 training
    data, plain training never predicts the minority; auto weights and the balanced sampler do."""
    from cnnlab import api

    runs = {
        name: api.train(data=str(imbalanced), out=str(tmp_path), name=name, **RUN, **kw)
        for name, kw in (
            ("none", {}),
            ("weights", {"class_weights": "auto"}),
            ("sampler", {"sampler": "balanced"}),
        )  # fmt: skip
    }
    recall = {k: r.test_metrics["per_class"]["minor"]["recall"] for k, r in runs.items()}
    balanced = {k: r.test_metrics["balanced_accuracy"] for k, r in runs.items()}
    assert recall["none"] <= 0.3, recall  # the control: the minority is (almost) never found
    for method in ("weights", "sampler"):
        assert recall[method] >= 0.6, recall
        assert balanced[method] >= balanced["none"] + 0.2, balanced


def test_a_run_records_its_class_balance_and_says_it(imbalanced, tmp_path, caplog):
    """bad-inputs #69: a class with fewer than 5 training images is named with its count and the
    remedies suggested; the weights are said and recorded; val_balanced_accuracy is monitored."""
    from cnnlab import api
    from cnnlab.engine.checkpoint import CheckpointManager

    data = _imbalanced_folder(tmp_path / "tiny", {"major": 40, "minor": 3}, held_out=8)
    with caplog.at_level(logging.WARNING):
        plain = api.train(data=str(data), out=str(tmp_path), name="plain", **RUN | {"epochs": 1})
    said = caplog.text
    assert "'minor' (3)" in said and "fewer than 5 training images" in said
    assert "imbalanced 13.3:1" in said and "--class-weights auto" in said
    assert "--sampler balanced" in said and "--monitor val_balanced_accuracy" in said
    assert "class imbalance" not in said  # said once, by training, not again by the data scan
    record = json.loads((plain.run_dir / "class_balance.json").read_text())
    assert record["train_class_counts"] == {"major": 40, "minor": 3} and record["imbalanced"]
    assert record["class_weights"]["mode"] == "none" and record["class_weights"]["weights"] is None
    assert (plain.run_dir / "report.html").exists() is False  # report=False in RUN

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run = api.train(
            data=str(data), out=str(tmp_path), name="weighted", class_weights="auto",
            loss="focal", focal_gamma=1.0, monitor="val_balanced_accuracy",
            **RUN | {"epochs": 2, "report": True},
        )  # fmt: skip
    record = json.loads((run.run_dir / "class_balance.json").read_text())
    weights = record["class_weights"]
    assert weights["mode"] == "auto" and weights["mean_weight_over_training_samples"] == 1.0
    assert weights["weights"] == pytest.approx({"major": 43 / 80, "minor": 43 / 6})
    assert record["loss"] == "focal" and record["focal_gamma"] == 1.0
    assert "class weights (N / (K n_c), mean 1 over training images)" in caplog.text
    assert "major 0.5375, minor 7.167" in caplog.text
    assert "imbalanced 13.3:1" not in caplog.text  # something is done about it: no suggestion
    # nor the data scan's own advice ("class imbalance 13.3:1 in train; train with ..."), which
    # was said beside the remedy being used
    assert "class imbalance" not in caplog.text and "--sampler balanced" not in caplog.text
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["class_weights"] == "auto" and config["loss"] == "focal"
    vals = [h["val_balanced_accuracy"] for h in run.history]
    best = CheckpointManager(run.run_dir / "checkpoints").manifest()["best"]["epoch"]
    assert best == 1 + max(range(len(vals)), key=lambda i: (vals[i], -i))  # chosen on it
    # the report opens with balanced accuracy and per-class recall, rarest class first
    page = (run.run_dir / "report.html").read_text()
    section = page.index("Imbalanced training set (13.3:1)")
    assert section < page.index("Headline metrics")
    table = page[section : page.index("Headline metrics")]
    assert table.index("<td>minor</td>") < table.index("<td>major</td>")
    head = page[page.index("Headline metrics") :]
    assert head.index("balanced accuracy") < head.index("<td>accuracy</td>")


def test_a_balanced_run_keeps_accuracy_first_in_its_report(tmp_path):
    from cnnlab import api

    data = _imbalanced_folder(tmp_path / "even", {"major": 12, "minor": 12}, held_out=8)
    run = api.train(data=str(data), out=str(tmp_path), **RUN | {"epochs": 1, "report": True})
    page = (run.run_dir / "report.html").read_text()
    assert "Imbalanced training set" not in page
    head = page[page.index("Headline metrics") :]
    assert head.index("<td>accuracy</td>") < head.index("balanced accuracy")


def test_a_resumed_run_keeps_the_weights_it_recorded(tmp_path):
    """The weights file may change after the run started: --resume trains on with the recorded
    weights (class_balance.json), not the file's new ones."""
    path = _weights_file(tmp_path, '{"cat": 1, "dog": 2, "eel": 3}')
    cfg = TrainConfig(class_weights=str(path))
    first = class_balance(cfg, np.array([0, 1, 2, 2]), NAMES)
    first.record(tmp_path)
    path.write_text('{"cat": 9, "dog": 9, "eel": 9}')
    again = class_balance(cfg, np.array([0, 1, 2, 2]), NAMES, recorded=tmp_path)
    assert again.weights == [1.0, 2.0, 3.0] and again.task_options()["class_weights"] == [1, 2, 3]


def test_data_check_suggests_the_imbalance_options(tmp_path, capsys):
    from cnnlab.cli import main

    root = tmp_path / "data"
    for c, n in (("many", 24), ("few", 2)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 30 * i % 255, np.uint8)).save(root / c / f"{i}.png")
    assert main(["data", "check", str(root)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "class imbalance 12.0:1" in err
    for flag in ("--class-weights auto", "--sampler balanced", "--loss focal",
                 "--monitor val_balanced_accuracy"):  # fmt: skip
        assert flag in err


def test_sigterm_mid_epoch_then_resume_with_the_balanced_sampler_is_bit_identical(
    imbalanced, tmp_path, monkeypatch
):
    """Stopped mid-epoch through the real SIGTERM path and resumed: the balanced sampler redraws
    the epoch from (seed, epoch) and the recorded class weights are used (the file changed in
    between), so the weights equal an uninterrupted --deterministic run's."""
    from safetensors.torch import load_file

    from cnnlab import api
    from cnnlab.engine import callbacks as cbs

    weights = _weights_file(tmp_path, '{"major": 1, "minor": 5}')
    options = RUN | {"epochs": 2, "seed": 3, "deterministic": True, "augment": ("flip",),
                     "sampler": "balanced", "class_weights": str(weights), "loss": "focal"}  # fmt: skip
    full = api.train(data=str(imbalanced), out=str(tmp_path), name="full", **options)
    original = cbs.GracefulInterrupt.on_fit_start

    def start_then_arm(self, trainer):
        original(self, trainer)
        state = trainer.state

        class Kill(cbs.Callback):
            def on_batch_end(self, t, loss, correct, size):
                if (state.epoch, state.step) == (1, 4):
                    signal.raise_signal(signal.SIGTERM)

        trainer.callbacks.append(Kill())

    with monkeypatch.context() as m:
        m.setattr(cbs.GracefulInterrupt, "on_fit_start", start_then_arm)
        with pytest.raises(api.Interrupted, match="--resume"):
            api.train(data=str(imbalanced), out=str(tmp_path), name="part", **options)
    part = tmp_path / "part"
    assert list((part / "checkpoints").glob("epoch-0002-step-*.safetensors"))  # mid-epoch
    weights.write_text('{"major": 7, "minor": 7}')  # the recorded weights win on resume
    resumed = api.train(resume=str(part))
    assert resumed.run_dir == part
    a = load_file(full.run_dir / "checkpoints" / "epoch-0002.safetensors")
    b = load_file(part / "checkpoints" / "epoch-0002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((part / "class_balance.json").read_text())
    assert record["class_weights"]["weights"] == {"major": 1.0, "minor": 5.0}
