"""Shared fixtures: small generated datasets in real file formats (nothing is downloaded), and one
tiny run trained through the command line (`run`), made once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_process import ok
from hypothesis import HealthCheck, Phase, Verbosity, settings
from PIL import Image

# Tests never touch the user's decode cache nor a cache another test session left behind: every
# session gets a fresh folder (a user's CNNLAB_CACHE is overridden on purpose), removed at exit.
# Subprocesses started by the tests inherit it through the environment.
_CACHE = tempfile.mkdtemp(prefix="cnnlab-test-cache-")
os.environ["CNNLAB_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
torch.set_num_threads(min(2, torch.get_num_threads()))

# The inference precision that precision-sensitive tests ask for (`predict`, `evaluate`, `serve`, ONNX
# parity). CI runs those tests (marked `precision`) a second time with CNNLAB_TEST_PRECISION=bf16, so a
# CPU without native bf16 exercises the bf16 path too (emulated: slow, fine for tiny models). Their
# tolerances come from the precision in use (cnnlab.engine.devices.tolerance), never from the CPU.
TEST_PRECISION = os.environ.get("CNNLAB_TEST_PRECISION", "auto")


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] != "evaluations"
    }


@pytest.fixture
def run_digests():
    """sha256 of every file a run recorded (later evaluations' own folder left out): a command that
    reads a run must leave this unchanged."""
    return _digests


@pytest.fixture
def precision() -> str:
    """The inference precision under test ("auto" or what CNNLAB_TEST_PRECISION forces)."""
    return TEST_PRECISION


@pytest.fixture
def precision_tol(precision: str) -> float:
    """Probability tolerance for comparing an inference at `precision` (on CPU) with an fp32 one."""
    from cnnlab.engine.devices import inference_precision, tolerance

    return tolerance(inference_precision(precision, torch.device("cpu")))


# Hypothesis: on CI (the CI variable set) the same examples on every run, so two runs give the same
# verdict; locally random examples, and any failure prints the blob that replays it
# (@reproduce_failure). HYPOTHESIS_PROFILE picks a profile explicitly.
settings.register_profile(
    "ci",
    derandomize=True,
    print_blob=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.register_profile(
    "debug", print_blob=True, deadline=None, verbosity=Verbosity.verbose, phases=list(Phase)
)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
settings.load_profile(_PROFILE)


def _shape_image(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A bright disc (0) or a bright square (1) on dark noise: easy to learn, in RGB."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    r = size * rng.uniform(0.2, 0.3)
    mask = (
        ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2)
        if kind == 0
        else ((abs(yy - cy) <= r) & (abs(xx - cx) <= r))
    )
    img = rng.integers(0, 50, (size, size, 3)).astype(np.uint8)
    img[mask] = rng.integers(150, 256, 3)
    return img


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory) -> Path:
    """Class-per-subfolder dataset of JPEG and PNG files in mixed modes (L, RGB, RGBA, P), 20 per class."""
    root = tmp_path_factory.mktemp("mixed") / "shapes"
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P"]
    for k, name in enumerate(["disc", "square"]):
        (root / name).mkdir(parents=True)
        for i in range(20):
            im = Image.fromarray(_shape_image(k, 24, rng)).convert(modes[i % 4])
            ext = ".png" if im.mode in ("RGBA", "P") or i % 2 else ".jpg"
            im.save(root / name / f"{name}_{i:02d}{ext}")
    return root


@pytest.fixture(scope="session")
def csv_dataset(mixed_folder: Path) -> Path:
    """A CSV `path,label` next to the images of `mixed_folder` (relative paths)."""
    rows = ["path,label"]
    for f in sorted(mixed_folder.rglob("*.*")):
        rows.append(f"{f.relative_to(mixed_folder)},{f.parent.name}")
    csv_path = mixed_folder / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


# -- one tiny trained run and a few images, made once per session (the CLI and start-up tests) ----
@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="session")
def digits(work: Path) -> list[Path]:
    """Four sklearn digits as grey PNGs (what the run below was trained on)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = work / "digits"
    folder.mkdir()
    paths = []
    for i in range(4):
        p = folder / f"d{i}_{d.target[i]}.png"
        Image.fromarray((d.images[i] * (255 / 16)).round().astype(np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def run(work: Path) -> Path:
    """`cnnlab train`'s happy path: LeNet-5 on builtin:digits, one epoch."""
    proc = ok(
        "train", "--data", "builtin:digits", "--model", "lenet5", "--epochs", "1",
        "--batch-size", "64", "--seed", "0", "--precision", "32", "--no-report",
        "--out", str(work / "runs"), "--name", "tiny",
    )  # fmt: skip
    assert "run directory:" in proc.stdout
    run_dir = work / "runs" / "tiny"
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    return run_dir
