"""cnnlab.data.prefetch: the child that scans and decodes while `cnnlab train` imports torch warms
exactly the caches training reads, stays silent, is joined, and ends with its parent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from cli_process import SRC, assert_user_error, ok
from PIL import Image

from cnnlab import api
from cnnlab.config import TrainConfig, make_config
from cnnlab.data import prefetch
from cnnlab.data.sources import warm_caches

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the warm-up child is forked")


def _folder(root: Path, classes=("disc", "square"), per_class=12, size=16, note=True) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size), dtype=np.uint8)
            img[4:12, 4:12] = 200 if k == 0 else 0
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    if note:  # one warning, printed by the parent alone
        (root / "notes.txt").write_text("not an image\n")
    return root


def _decoded(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("images-*.npy")}


def _cfg(**kw) -> TrainConfig:
    return make_config(TrainConfig, **({"model": "lenet5", "epochs": 1, "batch_size": 8} | kw))


def test_warm_fills_exactly_the_caches_training_reads(tmp_path, monkeypatch):
    data = _folder(tmp_path / "data")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    warm_caches(_cfg(data=str(data)))
    warmed = _decoded(cache)
    assert len(warmed) == 3  # train, val, test (the split carved by the scan's split)
    api.train(data=str(data), model="lenet5", epochs=1, batch_size=8, out=str(tmp_path / "runs"),
              report=False)  # fmt: skip
    assert _decoded(cache) == warmed  # every split a cache hit: the child's keys are training's
    # the negative control: a size the child did not decode at gives new keys
    api.train(data=str(data), model="lenet5", epochs=1, batch_size=8, image_size=20,
              out=str(tmp_path / "runs"), report=False)  # fmt: skip
    assert len(_decoded(cache) - warmed) == 3


def test_a_size_only_the_model_knows_is_left_to_the_parent(tmp_path, monkeypatch):
    data = _folder(tmp_path / "data", size=80)  # > 64 px: the model's input size decides
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    warm_caches(_cfg(data=str(data), model="resnet18"))
    assert _decoded(tmp_path / "cache") == set()  # scanned (and split), nothing decoded
    assert list((tmp_path / "cache" / "scans").glob("scan-*.json"))


def test_wanted_only_where_it_can_help():
    assert not prefetch.wanted(_cfg(data="builtin:digits"))  # arrays: nothing to cache
    # this test process has imported torch: nothing left to overlap, so never a fork here
    assert "torch" in sys.modules and not prefetch.wanted(_cfg(data="/some/folder"))
    assert prefetch.config_for(None, {"data": "x", "epochs": -1}) is None  # invalid: no child


def _script(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": SRC, "CNNLAB_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip


def test_the_child_is_joined_and_torch_free(tmp_path):
    data = _folder(tmp_path / "data")
    proc = _script(
        f"""
        import os, sys
        from cnnlab.data import prefetch
        from cnnlab.data.sources import warm_caches
        cfg = prefetch.config_for(None, {{"data": {str(data)!r}, "model": "lenet5"}})
        assert prefetch.start(cfg, warm_caches)
        prefetch.wait()
        try:
            os.waitpid(-1, os.WNOHANG)
            print("a child left")
        except ChildProcessError:
            print("joined", "torch" in sys.modules)
        """,
        tmp_path,
    )
    assert proc.stdout.split() == ["joined", "False"], proc.stderr
    assert proc.stderr == ""  # the child printed nothing (not even the non-image warning)
    assert len(_decoded(tmp_path / "cache")) == 3


def test_the_child_ends_with_its_parent(tmp_path):
    data = _folder(tmp_path / "data", per_class=600)  # long enough to be still working
    proc = _script(
        f"""
        import glob, os, time
        from cnnlab.data import prefetch
        from cnnlab.data.sources import warm_caches
        cfg = prefetch.config_for(None, {{"data": {str(data)!r}, "model": "lenet5"}})
        prefetch.start(cfg, warm_caches)
        print(prefetch._CHILD, flush=True)
        end = time.monotonic() + 60
        while not glob.glob({str(tmp_path / "cache")!r} + "/images-*.tmp") and time.monotonic() < end:
            time.sleep(0.002)  # until the child is writing a decoded split
        print("decoding" if time.monotonic() < end else "never decoding", flush=True)
        os._exit(0)  # then the parent dies, its child unjoined
        """,
        tmp_path,
    )
    pid, state = proc.stdout.split()[:2]
    assert state == "decoding", proc.stdout
    child = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 60
    while child.exists() and time.monotonic() < deadline:  # gone, or a zombie ("Z") of init
        try:
            if ") Z " in child.read_text():
                break
        except OSError:
            break
        time.sleep(0.05)
    # killed with its parent, the child never finished: had it run on, all three splits would be
    # decoded (what test_the_child_is_joined_and_torch_free sees with the parent alive)
    assert len(_decoded(tmp_path / "cache")) < 3
    # killed mid-decode by a signal that raises, the decoding's own cleanup ran: no half-written
    # file left (with SIGTERM's default action the .tmp stays: checked)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cli_train_prints_each_warning_and_error_once(tmp_path):
    data = _folder(tmp_path / "data")
    proc = ok("train", "--data", str(data), "--model", "lenet5", "--epochs", "1", "--batch-size",
              "8", "--out", str(tmp_path / "runs"), "--no-report")  # fmt: skip
    assert proc.stderr.count("non-image") == 1, proc.stderr
    one = _folder(tmp_path / "one", classes=("disc",), note=False)
    assert_user_error("train", "--data", str(one), "--model", "lenet5", "--epochs", "1",
               "--out", str(tmp_path / "runs"), names="disc")  # fmt: skip
