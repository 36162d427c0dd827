"""The fast tier checks that training learns: one tiny end-to-end run per task through the CLI.

Each task's data is written to files in a real format the loaders accept, twice: once with the
true labels and once with the labels permuted by a fixed seed (the class of each image, the masks
between images, the annotations between images, the class folder of each video). The run on the
true labels must clear a bar that a broken pipeline cannot; the same run on permuted labels must
stay near chance, so the bar is seen to fail when the pipeline learns nothing. Beside the bar,
what the run recorded is checked against the files written here: the test split holds exactly
the test files, with their own labels, disjoint from the training split (a wrong split or a
class-index mix-up), and the normalisation statistics are the training split's (not another
split's).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score

SEED = 0  # the seed of every run, split and label permutation here
CHANCE_MARGIN = 0.15  # a run on permuted labels stays within this of chance
# One thread per run: these models are tiny, and on a loaded 2-core machine two OpenMP threads
# wait for each other at every operator (several times slower than one).
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def _cli(*args: str, out: Path, name: str) -> Path:
    """Run ``python -m cnnlab ARGS --out OUT --name NAME`` as a user would; the run directory."""
    cmd = [sys.executable, "-m", "cnnlab", *args, "--out", str(out), "--name", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return out / name


def _read(run: Path, name: str):
    return json.loads((run / name).read_text())


def _pixels(root: Path, files: list[str]) -> np.ndarray:
    """The files' pixels in [0, 1], (N, H, W[, C])."""
    return np.stack([np.asarray(Image.open(root / f)) for f in files]) / 255.0


def _permuted(n: int) -> np.ndarray:
    perm = np.random.default_rng(SEED).permutation(n)
    assert (perm != np.arange(n)).mean() > 0.9  # almost every item gets another's labels
    return perm


# -- classification: builtin:digits as PNG files and a CSV ----------------------------------------
@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's 8x8 digits (builtin:digits' 0..16 -> 0..255 scale) as 16x16 PNGs (each pixel
    doubled, so 16 px, the smallest input size, needs no resize and the pixel statistics can be
    checked exactly), listed in labels.csv and, with the labels permuted, in shuffled.csv."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    (root / "img").mkdir()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = images.repeat(2, axis=1).repeat(2, axis=2)  # N x 16 x 16
    paths = [f"img/{i:04d}.png" for i in range(len(images))]
    for rel, im in zip(paths, images, strict=True):
        Image.fromarray(im, mode="L").save(root / rel)
    labels = digits.target.astype(str)
    files = {}
    for kind, labs in (("true", labels), ("shuffled", labels[_permuted(len(labels))])):
        files[kind] = root / f"{kind}.csv"
        with files[kind].open("w", newline="") as f:
            csv.writer(f).writerows([("path", "label"), *zip(paths, labs, strict=True)])
    return files


@pytest.mark.parametrize("labels", ["true", "shuffled"])
def test_classification_on_digits_learns(digits_csv, tmp_path, labels: str) -> None:
    data = digits_csv[labels]
    run = _cli(
        "train", "--data", str(data), "--model", "lenet5", "--epochs", "5", "--batch-size", "32",
        "--optimizer", "adamw", "--lr", "3e-3", "--augment", "none", "--seed", str(SEED),
        "--deterministic", "--device", "cpu", "--precision", "32", "--no-report",
        out=tmp_path, name=labels,
    )  # fmt: skip
    with data.open() as f:
        truth = {row["path"]: row["label"] for row in csv.DictReader(f)}
    classes = _read(run, "classes.json")
    splits = _read(run, "splits.json")["splits"]
    saved = np.load(run / "test_predictions.npz")
    ids = [str(i) for i in saved["ids"]]
    # the test split is the recorded one, apart from training, and each target is the file's label
    assert sorted(ids) == sorted(splits["test"]) and len(ids) == round(0.1 * len(truth))
    assert not set(ids) & (set(splits["train"]) | set(splits["val"]))
    assert [classes[t] for t in saved["targets"]] == [truth[i] for i in ids]
    accuracy = accuracy_score(saved["targets"], saved["probs"].argmax(1))
    assert _read(run, "test_metrics.json")["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    # normalisation statistics are the training split's own (preprocess.json: 6 decimals)
    train, test = (_pixels(data.parent, splits[s]) for s in ("train", "test"))
    spec = _read(run, "preprocess.json")
    assert spec["mean"] == pytest.approx([train.mean()], abs=2e-6)
    assert spec["std"] == pytest.approx([train.std(ddof=1)], abs=2e-6)
    assert abs(test.mean() - train.mean()) > 2e-5  # so statistics of the test split would show
    if labels == "true":
        assert accuracy >= 0.90
    else:
        assert accuracy <= 1 / len(classes) + CHANCE_MARGIN
