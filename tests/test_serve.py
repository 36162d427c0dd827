"""The web explorer: API answers, hostile uploads, report files, and the page in headless Chromium.

References: ``cnnlab.api.predict`` for the classes and probabilities, an independent
``torch.nn.functional.conv2d`` for the first layer's feature maps, Pillow for PNG decoding.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import re
import shutil
import socket
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

with warnings.catch_warnings():  # Starlette 1.x asks for "httpx2"; httpx still works for tests
    warnings.filterwarnings("ignore", message=".*httpx2", category=UserWarning)
    from fastapi.testclient import TestClient  # noqa: E402

from cnnlab.api import predict as api_predict  # noqa: E402
from cnnlab.config import PreprocessSpec  # noqa: E402
from cnnlab.engine.checkpoint import save_weights  # noqa: E402
from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.models import create_model  # noqa: E402
from cnnlab.serve.app import (  # noqa: E402
    STATIC_DIR,
    ApiError,
    create_app,
    heat_colours,
    read_upload,
)

SIZE = 16  # LeNet-5 input: sklearn's 8 x 8 digits enlarged ("fit") to 16 x 16
MAX_UPLOAD = 20_000  # bytes: small, so that "too large" is cheap to send
# a src/href attribute, CSS url() or fetch() that leaves this server: "https://cdn...", "//cdn..."
EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?(?:https?:)?//"""
    r"""|url\(\s*["']?(?:https?:)?//"""
    r"""|fetch\(\s*["'](?:https?:)?//"""
)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _digit_png(image8: np.ndarray) -> bytes:
    """sklearn digit (8 x 8, values 0..16) -> grey PNG bytes, 0..255."""
    return _png((image8 * (255 / 16)).round().astype(np.uint8))


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 60-byte PNG whose header declares ``width x height`` pixels (one tiny IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A run folder with a LeNet-5 briefly trained on sklearn's digits, a report and decoys."""
    from sklearn.datasets import load_digits

    from cnnlab.data.decode import load_image_bytes
    from cnnlab.data.tensors import pil_to_chw

    root = tmp_path_factory.mktemp("serve")
    run_dir = root / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "figures").mkdir()
    digits = load_digits()
    spec = PreprocessSpec(SIZE, 1, (0.3,), (0.35,), "fit", {"max_pixels": 1_000_000})
    # the same path as serving: PNG bytes -> decoding policy -> resize -> uint8
    pngs = [_digit_png(im) for im in digits.images]
    pixels = np.stack([pil_to_chw(load_image_bytes(b, mode="L"), spec) for b in pngs])
    x = (torch.from_numpy(pixels).float() / 255 - 0.3) / 0.35
    y = torch.from_numpy(digits.target)
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_channels=1, image_size=SIZE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a busy machine
    try:
        for _ in range(3):  # ~40 steps on digits 0..1599: about 85% held-out accuracy, ~2 s
            for idx in torch.randperm(1600).split(128):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    meta = {
        "model": "lenet5",
        "num_classes": 10,
        "in_channels": 1,
        "image_size": SIZE,
        "class_names": [str(i) for i in range(10)],
        "preprocess": spec.to_dict(),
    }
    ckpt = run_dir / "checkpoints" / "best.safetensors"
    save_weights(ckpt, model.state_dict(), meta)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "report.html").write_text("<html><body><h1>Report of run</h1></body></html>")
    (run_dir / "figures" / "curve.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    (run_dir / "test_predictions.npz").write_bytes(b"not for the web")
    (run_dir / ".hidden.html").write_text("hidden")
    outside = root / "outside.html"
    outside.write_text("secret outside the run")
    os.symlink(outside, run_dir / "figures" / "escape.html")
    # held-out digits (not trained on) as files, as a user would upload them
    files = []
    for i in range(1700, 1706):
        path = root / f"digit{i}_{digits.target[i]}.png"
        path.write_bytes(pngs[i])
        files.append(path)
    return {"dir": run_dir, "ckpt": ckpt, "files": files, "targets": digits.target[1700:1706]}


@pytest.fixture(scope="module")
def client(run: dict) -> TestClient:
    app = create_app(run["ckpt"], max_upload_bytes=MAX_UPLOAD, top_k=3, max_concurrency=2)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _upload(client: TestClient, data: bytes, url: str = "/api/predict", name: str = "x.png"):
    return client.post(url, files={"file": (name, data, "application/octet-stream")})


def _assert_short_error(response, status: int, run: dict) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    text = body["error"]
    assert len(text) < 200 and "Traceback" not in text and str(run["dir"].parent) not in text
    return text


# -- prediction ------------------------------------------------------------------------------------
@pytest.mark.precision
def test_predict_json_matches_api_predict(
    client: TestClient, run: dict, precision: str, precision_tol: float
) -> None:
    """The web explorer (fp32) and `api.predict` at the precision under test give the same answer:
    to 1e-5 at the default precision on any CPU, to bf16's tolerance when bf16 is forced."""
    reference = api_predict(run["ckpt"], run["files"], top_k=3, device="cpu", precision=precision)
    tol = precision_tol
    correct = 0
    for path, ref in zip(run["files"], reference, strict=True):
        body = _upload(client, path.read_bytes(), name=path.name).json()
        got = {t["class"]: t["probability"] for t in body["top"]}
        if tol <= 1e-5:  # fp32 both sides: the same ranking
            assert list(got) == [c for c, _ in ref.top]
        common = [c for c, _ in ref.top if c in got]
        assert ref.top[0][0] in got
        np.testing.assert_allclose(
            [got[c] for c in common], [p for c, p in ref.top if c in got], atol=tol
        )
        assert [t["index"] for t in body["top"]] == [int(t["class"]) for t in body["top"]]
        correct += body["top"][0]["class"] == path.stem.split("_")[1]
    assert correct >= 4, "the briefly trained LeNet should read most held-out digits"


def test_raw_image_body_gives_the_same_answer(client: TestClient, run: dict) -> None:
    data = run["files"][0].read_bytes()
    raw = client.post("/api/predict", content=data, headers={"content-type": "image/png"})
    assert raw.status_code == 200
    assert raw.json() == _upload(client, data).json()


def test_top_k_below_one_is_refused_not_clamped(client: TestClient, run: dict) -> None:
    """`?top_k=0` or `-3` was answered with the server's own top-k, without a word; now a 400 naming
    top_k and its range, as the CLI's --top-k refuses values < 1. A good one is answered."""
    data = run["files"][0].read_bytes()
    for url in ("/api/predict", "/api/explain"):
        for bad in ("0", "-3", "2.5", "many"):
            text = _assert_short_error(_upload(client, data, f"{url}?top_k={bad}"), 400, run)
            assert text == (  # the range said is the one answered: 99 is (all classes)
                "top_k must be a whole number >= 1 (more than the 10 classes answers them all), "
                f"got {bad!r}"
            )
    assert len(_upload(client, data, "/api/predict?top_k=2").json()["top"]) == 2
    assert len(_upload(client, data, "/api/predict?top_k=99").json()["top"]) == 10  # all classes
    assert len(_upload(client, data).json()["top"]) == 3  # the server's --top-k
    for bad in (0, -3):  # the Python door, as the command line's
        with pytest.raises(ConfigError, match=rf"^--top-k must be a whole number >= 1, got {bad}$"):
            create_app(run["ckpt"], top_k=bad)


# -- hostile and broken uploads --------------------------------------------------------------------
# -- what predict decides, serve decides ------------------------------------------------------------
def _copy_run(run: dict, folder: Path) -> Path:
    target = folder / "run"
    (target / "checkpoints").mkdir(parents=True)
    shutil.copy(run["ckpt"], target / "checkpoints" / "best.safetensors")
    shutil.copy(run["dir"] / "config.json", target / "config.json")
    return target


@pytest.fixture(scope="module")
def op_run(run: dict, tmp_path_factory) -> dict:
    """A copy of the run with an operating point on class 3 (its record as `cnnlab evaluate`
    writes it), the threshold halfway between the third and fourth highest P(3) of the held-out
    files, so that both decisions occur."""
    from cnnlab.engine.checkpoint import sha256_file

    folder = _copy_run(run, tmp_path_factory.mktemp("serve_op"))
    weights = folder / "checkpoints" / "best.safetensors"
    plain = api_predict(weights, run["files"], top_k=10, device="cpu", operating_point=False)
    p3 = sorted(dict(p.top)["3"] for p in plain)
    threshold = (p3[2] + p3[3]) / 2
    point = {
        "positive_class": "3", "positive_index": 3, "threshold": threshold,
        "decision": "positive when P(3) >= threshold, else negative", "target": "f1",
        "rule": "the threshold maximising F1",
        "weights": {"file": weights.name, "sha256": sha256_file(weights)},
    }  # fmt: skip
    (folder / "operating_point.json").write_text(json.dumps(point))
    return {"dir": folder, "ckpt": weights, "point": point}


def test_serve_applies_the_run_operating_point_as_predict_does(run: dict, op_run: dict) -> None:
    reference = api_predict(op_run["ckpt"], run["files"], top_k=3, device="cpu", precision="32")
    app = create_app(op_run["ckpt"], top_k=3)
    with TestClient(app, raise_server_exceptions=False) as c:
        info = c.get("/api/info").json()
        point = op_run["point"]
        assert info["operating_point"] == {
            k: point[k] for k in ("positive_class", "positive_index", "threshold", "target", "rule")
        }
        for path, ref in zip(run["files"], reference, strict=True):
            body = _upload(c, path.read_bytes()).json()
            assert ref.decision is not None
            assert body["decision"]["positive"] == ref.decision["positive"]
            assert body["decision"]["class"] == "3"
            assert body["decision"]["threshold"] == point["threshold"]
            assert body["decision"]["probability"] == pytest.approx(
                ref.decision["probability"], abs=1e-5
            )
            assert [t["class"] for t in body["top"]] == [cls for cls, _ in ref.top]
        assert {p.decision["positive"] for p in reference} == {True, False}
    # --ignore-operating-point: classes only, as predict's
    bare = create_app(op_run["ckpt"], top_k=3, operating_point=False)
    with TestClient(bare, raise_server_exceptions=False) as c:
        assert "operating_point" not in c.get("/api/info").json()
        assert "decision" not in _upload(c, run["files"][0].read_bytes()).json()


@pytest.mark.parametrize("command", ["serve", "export"])
def test_serve_and_export_refuse_an_operating_point_of_other_weights_in_their_own_words(
    command: str, op_run: dict, tmp_path: Path
) -> None:
    """The refusal names the command that would apply the operating point and that command's
    own way past it (predict's wording, `cnnlab predict --ignore-operating-point`, was said by
    all three); nothing is exported."""
    from cnnlab.api import export
    from cnnlab.errors import ConfigError

    folder = tmp_path / "run"
    shutil.copytree(op_run["dir"], folder)
    record = json.loads((folder / "operating_point.json").read_text())
    record["weights"]["sha256"] = "0" * 64  # as if the run had been resumed to new best weights
    (folder / "operating_point.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError) as err:
        if command == "serve":
            create_app(folder / "checkpoints" / "best.safetensors")
        else:
            export(folder / "checkpoints" / "best.safetensors", format="safetensors",
                   out=tmp_path / "model.safetensors")  # fmt: skip
    message = str(err.value)
    assert f"other weights (best.safetensors) than best.safetensors, which {command} would use" in (
        message
    )
    assert f"`cnnlab {command} RUN --ignore-operating-point`" in message
    assert "predict" not in message and not (tmp_path / "model.safetensors").exists()


LABELS = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def ml_run(run: dict, tmp_path_factory) -> dict:
    """A multi-label run folder: an untrained (seeded) LeNet-5 with three sigmoid outputs on the
    digits' preprocessing, and thresholds.json with a threshold per label that splits the
    held-out files' probabilities, so that both answers occur for every label."""
    from cnnlab.engine.checkpoint import read_weights

    folder = tmp_path_factory.mktemp("serve_ml") / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    _, meta = read_weights(run["ckpt"])
    torch.manual_seed(3)
    model = create_model("lenet5", num_classes=3, in_channels=1, image_size=SIZE)
    meta = meta | {"num_classes": 3, "class_names": LABELS, "multilabel": True}
    weights = folder / "checkpoints" / "best.safetensors"
    save_weights(weights, model.state_dict(), meta)
    # thresholds: the median probability of each label over the files (no thresholds file yet:
    # every label at 0.5, which predict warns about)
    plain = api_predict(weights, run["files"], device="cpu", precision="32")
    probs = np.array([[dict((n, p) for n, p, _ in q.labels)[name] for name in LABELS]
                      for q in plain])  # fmt: skip
    thresholds = np.median(probs, axis=0)
    saved = dict(zip(LABELS, thresholds.tolist(), strict=True))
    record = {"method": "f1", "tuned_on": "val", "thresholds": saved}
    (folder / "thresholds.json").write_text(json.dumps(record))
    return {"dir": folder, "ckpt": weights, "thresholds": saved}


def test_serve_answers_every_label_of_a_multilabel_run_as_predict_does(
    run: dict, ml_run: dict
) -> None:
    reference = api_predict(ml_run["ckpt"], run["files"], device="cpu", precision="32")
    app = create_app(ml_run["ckpt"], top_k=2)
    with TestClient(app, raise_server_exceptions=False) as c:
        info = c.get("/api/info").json()
        assert info["multilabel"] is True and info["thresholds"] == ml_run["thresholds"]
        predicted = set()
        for path, ref in zip(run["files"], reference, strict=True):
            body = _upload(c, path.read_bytes()).json()
            assert body["multilabel"] is True
            got = [(i["label"], i["probability"], i["threshold"]) for i in body["labels"]]
            assert [n for n, _, _ in got] == [n for n, _, _ in ref.labels]  # most probable first
            np.testing.assert_allclose([p for _, p, _ in got], [p for _, p, _ in ref.labels],
                                       atol=1e-5)  # fmt: skip
            assert [t for _, _, t in got] == [ml_run["thresholds"][n] for n, _, _ in got]
            assert body["predicted_labels"] == [n for n, _, _ in ref.predicted_labels]
            assert [i["predicted"] for i in body["labels"]] == [p >= t for _, p, t in got]
            assert [t["class"] for t in body["top"]] == [n for n, _, _ in got[:2]]
            predicted.update(body["predicted_labels"])
        assert predicted == set(LABELS)
        explained = _upload(c, run["files"][0].read_bytes(), url="/api/explain").json()
        assert explained["predicted_labels"] == [n for n, _, _ in reference[0].predicted_labels]
        assert explained["cam"]["class"] == reference[0].labels[0][0]
    with pytest.raises(Exception, match="--tta flip averages single-label views"):
        create_app(ml_run["ckpt"], tta="flip")


def test_bad_uploads_get_their_status_and_the_server_keeps_answering(
    client: TestClient, run: dict
) -> None:
    good = run["files"][0].read_bytes()
    png = _png(np.full((20, 20), 128, np.uint8))
    cases = [
        (b"<html>an error page saved as .png</html>", 415),  # not an image
        (b"8BPS" + b"\x00" * 64, 415),  # PSD: a format outside the allow-list
        (bomb_png(), 413),  # header declares 30000 x 30000 = 9e8 pixels
        (png[: len(png) // 2], 422),  # truncated
        (b"\x00" * (MAX_UPLOAD + 1), 413),  # body over the byte limit
        (b"", 400),  # empty
    ]
    for data, status in cases:
        for url in ("/api/predict", "/api/explain"):
            text = _assert_short_error(_upload(client, data, url), status, run)
            assert text
        ok = _upload(client, good)
        assert ok.status_code == 200 and ok.json()["top"]  # still answering
    bomb = _upload(client, bomb_png()).json()["error"]
    assert "30000×30000" in bomb and "1000000" in bomb


def test_other_request_shapes_are_refused(client: TestClient, run: dict) -> None:
    text = client.post("/api/predict", content=b"{}", headers={"content-type": "application/json"})
    _assert_short_error(text, 415, run)
    form = client.post("/api/predict", data={"field": "value"})  # urlencoded, not multipart
    _assert_short_error(form, 415, run)
    empty_file = client.post("/api/predict", files={"file": ("a.png", b"")})
    assert "empty upload" in _assert_short_error(empty_file, 400, run)
    # a good image under another field name: 400, as docs/deploy.md says (it was answered, 200)
    good = run["files"][0].read_bytes()
    other_field = client.post("/api/predict", files={"nope": ("a.png", good, "image/png")})
    assert "no 'file' field" in _assert_short_error(other_field, 400, run)
    body = b'--XyZ\r\nContent-Disposition: form-data; name="other"\r\n\r\nvalue\r\n--XyZ--\r\n'
    no_file = client.post(
        "/api/predict", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"}
    )
    assert "no 'file' field" in _assert_short_error(no_file, 400, run)
    broken = client.post(
        "/api/predict", content=b"garbage", headers={"content-type": "multipart/form-data"}
    )
    assert "boundary" in _assert_short_error(broken, 400, run)
    _assert_short_error(client.get("/no/such/page"), 404, run)


def test_client_file_names_never_become_paths(
    client: TestClient, run: dict, tmp_path, tmp_path_factory
) -> None:
    absolute = tmp_path_factory.mktemp("elsewhere") / "abs.png"  # an absolute path outside cwd
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for name in ("../../escape.png", str(absolute), "..\\win.png", "a\x00b.png"):
            response = _upload(client, run["files"][0].read_bytes(), name=name)
            assert response.status_code == 200
            assert name not in response.text
        assert list(tmp_path.iterdir()) == []
    finally:
        os.chdir(cwd)
    assert not absolute.exists() and list(absolute.parent.iterdir()) == []


def test_body_is_read_in_chunks_and_refused_early() -> None:
    """read_upload stops consuming the stream as soon as the limit is passed."""

    class FakeRequest:
        def __init__(self, headers: dict[str, str], chunks: int):
            self.headers = headers
            self.total = chunks
            self.consumed = 0

        async def stream(self):
            for _ in range(self.total):
                self.consumed += 1
                yield b"\x00" * 1000

    streamed = FakeRequest({"content-type": "image/png"}, chunks=100)
    with pytest.raises(ApiError) as err:
        asyncio.run(read_upload(streamed, 5_000))
    assert err.value.status == 413 and streamed.consumed == 6  # 6000 bytes > 5000: stop there

    declared = FakeRequest({"content-type": "image/png", "content-length": "100000"}, chunks=100)
    with pytest.raises(ApiError) as err:
        asyncio.run(read_upload(declared, 5_000))
    assert err.value.status == 413 and declared.consumed == 0  # refused before reading


def test_saturated_server_answers_503_then_recovers(client: TestClient, run: dict) -> None:
    slots = client.app.state.slots
    taken = 0
    while slots.try_acquire():
        taken += 1
    timeout, slots.timeout_s = slots.timeout_s, 0.2  # the upload waits 0.2 s for a turn, then 503
    try:
        busy = _upload(client, run["files"][0].read_bytes())
        _assert_short_error(busy, 503, run)
        assert busy.headers["retry-after"] == "1"
        assert client.get("/api/info").status_code == 200  # pages are not rationed
    finally:
        slots.timeout_s = timeout
        for _ in range(taken):
            slots.release()
    assert _upload(client, run["files"][0].read_bytes()).status_code == 200


def test_twenty_concurrent_uploads_wait_their_turn_and_all_succeed(run: dict) -> None:
    """2 slots, 20 uploads at once: the others queue (bounded wait) instead of a 503 each; every
    answer equals the answer to the same upload alone."""
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(run["ckpt"], max_upload_bytes=MAX_UPLOAD, top_k=3, max_concurrency=2)
    data = [f.read_bytes() for f in run["files"]]
    with TestClient(app, raise_server_exceptions=False) as c:
        alone = [_upload(c, d).json()["top"] for d in data]
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda i: _upload(c, data[i % len(data)]), range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    for i, a in enumerate(answers):
        assert a.json()["top"] == alone[i % len(data)]


def test_a_waiting_upload_gets_the_slot_a_finished_one_frees(run: dict) -> None:
    """The queue is awaited, not polled: an upload blocked on a full server is answered 200 as
    soon as the slot is released from another thread, well inside its timeout."""
    app = create_app(run["ckpt"], max_upload_bytes=MAX_UPLOAD, max_concurrency=1)
    slots = app.state.slots
    slots.timeout_s = 30.0
    with TestClient(app, raise_server_exceptions=False) as c:
        assert slots.try_acquire()
        result: dict = {}

        def upload() -> None:
            result["response"] = _upload(c, run["files"][0].read_bytes())

        t = threading.Thread(target=upload)
        t.start()
        assert slots.someone_waited.wait(10)  # the upload has joined the line
        slots.release()
        t.join(10)
    assert result["response"].status_code == 200


def test_serve_limits_are_options(run: dict) -> None:
    """--max-image-pixels, --max-concurrency, --max-upload-mb reach the app; the 413 for pixels
    names the flag that `cnnlab serve` has."""
    from cnnlab.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "RUN", "--max-image-pixels", "50", "--max-concurrency", "3",
         "--max-upload-mb", "0.5", "--queue-timeout", "2"]
    )  # fmt: skip
    assert (args.max_image_pixels, args.max_concurrency, args.max_upload_mb) == (50, 3, 0.5)
    app = create_app(run["ckpt"], max_image_pixels=50, max_concurrency=3, queue_timeout_s=2)
    with TestClient(app, raise_server_exceptions=False) as c:
        info = c.get("/api/info").json()
        assert (info["max_pixels"], info["max_concurrency"]) == (50, 3)
        refused = _upload(c, run["files"][0].read_bytes())  # an 8 x 8 digit: 64 pixels > 50
        assert refused.status_code == 413
        assert "8×8 > 50 (raise --max-image-pixels)" in refused.json()["error"]


# -- explain ---------------------------------------------------------------------------------------
def _decode_uri(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_explain_returns_the_lecture_layers_and_a_cam(client: TestClient, run: dict) -> None:
    data = run["files"][1].read_bytes()
    body = _upload(client, data, "/api/explain").json()
    kinds = [layer["kind"] for layer in body["layers"]]
    # the lecture's order: convolution, ReLU, pooling (twice), flattening, fully connected, output
    for a, b in [("convolution", "ReLU"), ("ReLU", "pooling"), ("pooling", "flattening"),
                 ("flattening", "fully connected"), ("fully connected", "output")]:  # fmt: skip
        assert kinds.index(a) < kinds.index(b)
    assert kinds[-1] == "output" and body["predicted"] == body["top"][0]["class"]
    for layer in body["layers"]:
        assert _decode_uri(layer["image"]).size > 0
    overlay = _decode_uri(body["cam"]["overlay"])
    assert overlay.shape == (224, 224, 3)
    assert body["cam"]["method"] == "gradcam" and body["cam"]["class"] == body["predicted"]

    # the first convolution's grid, tile 0, against conv2d computed here
    from cnnlab.api import load_checkpoint_model
    from cnnlab.data.decode import load_image_bytes
    from cnnlab.data.tensors import pil_to_chw

    model, meta, _ = load_checkpoint_model(run["ckpt"])
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    pixels = pil_to_chw(load_image_bytes(data, mode="L"), spec)
    x = (torch.tensor(pixels).float()[None] / 255 - 0.3) / 0.35
    conv = model.get_submodule(body["layers"][0]["name"])
    with torch.no_grad():
        fmap = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)[0, 0].numpy()
    h, w = fmap.shape
    expected = np.round(255 * (fmap - fmap.min()) / (fmap.max() - fmap.min()))
    grid = _decode_uri(body["layers"][0]["image"]).astype(int)
    factor = -(-40 // max(h, w))  # tiles are enlarged to at least 40 px by an integer factor
    tile = grid[: h * factor : factor, : w * factor : factor]
    assert np.abs(tile - expected).max() <= 1
    assert body["layers"][0]["output_shape"] == [conv.out_channels, h, w]


def test_heat_colours_by_hand() -> None:
    # r = clip(1.5 - |4v - 3|), g = clip(1.5 - |4v - 2|), b = clip(1.5 - |4v - 1|), times 255
    got = heat_colours(np.array([[0.0, 0.5, 1.0, 0.25]]))
    assert got[0].tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0], [0, 128, 255]]


# -- report and documentation ----------------------------------------------------------------------
def test_report_serves_only_files_inside_the_run(client: TestClient) -> None:
    page = client.get("/report")  # redirects to /report/ so that relative links resolve inside
    assert page.status_code == 200 and "Report of run" in page.text
    assert client.get("/report/figures/curve.png").headers["content-type"] == "image/png"
    for path in (
        "/report/%2e%2e/outside.html",
        "/report/..%2Foutside.html",
        "/report/figures/escape.html",  # a symlink leaving the run
        "/report/test_predictions.npz",  # not a report type
        "/report/checkpoints/best.safetensors",
        "/report/.hidden.html",
        "/report/%2Fetc%2Fpasswd",
        "/report/C:%5Cwindows%5Cwin.ini",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "secret" not in response.text
    assert client.post("/report/report.html").status_code == 405  # read-only


def test_pages_and_docs_use_no_external_assets(client: TestClient) -> None:
    for url in ("/", "/docs", "/static/app.js", "/static/style.css", "/static/docs.js"):
        response = client.get(url)
        assert response.status_code == 200, url
        # no src/href/url()/fetch pointing off this server (a CDN script, font, stylesheet)
        assert not EXTERNAL.findall(response.text), url
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/explain", "/api/info"} <= set(spec["paths"])
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


# -- a live server and the page in headless Chromium -----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(run: dict):
    """The explorer under uvicorn in a thread, on a free localhost port."""
    yield from _live(create_app(run["ckpt"], max_upload_bytes=MAX_UPLOAD, top_k=3))


def _live(app):
    uvicorn = pytest.importorskip("uvicorn")
    port = _free_port()

    class Server(uvicorn.Server):  # says when it listens: awaited, not polled
        ready = threading.Event()

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            self.ready.set()

    server = Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(20) and server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(timeout=10)


def test_live_server_refuses_a_declared_oversize_body_without_reading_it(live) -> None:
    _, port = live
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(50_000_000))  # announced, never sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and b"upload larger than" in response.read()
    conn.close()
    again = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    again.request("GET", "/api/info")
    assert again.getresponse().status == 200


def test_browser_upload_shows_prediction_feature_maps_and_cam(live, run: dict, tmp_path) -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _ = live
    image = run["files"][2]
    expected = api_predict(run["ckpt"], [image], top_k=1, device="cpu")[0].top[0][0]
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url + "/")
            page.wait_for_selector("#model-info:has-text('lenet5')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            top = page.get_attribute("#top li:first-child", "data-class")
            status = page.text_content("#status")
            maps = page.eval_on_selector_all("img.fmap", "els => els.map(e => e.naturalWidth)")
            cam = page.eval_on_selector("#cam-overlay", "e => e.naturalWidth")
            kinds = page.eval_on_selector_all("#layers li", "els => els.map(e => e.dataset.kind)")
            shot = tmp_path / "explorer.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    assert top == expected and status == f"predicted: {expected}"
    assert maps and all(w > 0 for w in maps)
    assert cam == 224
    assert {"convolution", "ReLU", "pooling", "flattening", "fully connected", "output"} <= set(
        kinds
    )
    assert all(u.startswith((url, "data:", "blob:")) for u in requests), requests
    assert shot.stat().st_size > 10_000


def _browser(pw):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    return pw.chromium.launch(
        executable_path=chromium,
        args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ],
    )  # fmt: skip


@pytest.mark.slow  # a browser and a second server: ~5 s
def test_browser_shows_the_labels_above_threshold_of_a_multilabel_run(
    run: dict, ml_run: dict
) -> None:
    if not Path(shutil.which("chromium") or "/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    image = run["files"][0]
    expected = api_predict(ml_run["ckpt"], [image], device="cpu")[0]
    server = _live(create_app(ml_run["ckpt"], top_k=3))
    url, _ = next(server)
    try:
        with sync_api.sync_playwright() as pw:
            browser = _browser(pw)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(url + "/")
                page.wait_for_selector("#model-info:has-text('lenet5')")
                page.set_input_files("#file", str(image))
                page.wait_for_selector("body[data-state=done]", timeout=30_000)
                shown = page.eval_on_selector_all(
                    "#labels li[data-label]", "els => els.map(e => e.dataset.label)"
                )
                listed = page.eval_on_selector_all("#top li", "els => els.length")
                status = page.text_content("#status")
            finally:
                browser.close()
    finally:
        next(server, None)
    names = [n for n, _, _ in expected.predicted_labels]
    assert shown == names and listed == len(LABELS)  # every label listed, the answer above
    assert status == f"predicted labels: {', '.join(names) or 'none'}"


def test_static_files_are_packaged() -> None:
    names = {p.name for p in STATIC_DIR.iterdir()}
    assert {"index.html", "app.js", "style.css", "docs.html", "docs.js"} <= names


def test_a_run_that_does_not_load_is_one_line_and_no_address(tmp_path: Path, capsys) -> None:
    """`cnnlab serve` announces its address only once the model is loaded and the port bound:
    a folder without a checkpoint is the one-line error alone (stdout stays empty)."""
    from cnnlab.cli import main

    (tmp_path / "not-a-run").mkdir()
    assert main(["serve", str(tmp_path / "not-a-run"), "--port", "0"]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert captured.out == "" and len(lines) == 1, captured
    assert lines[0].startswith("error: ") and "not-a-run" in lines[0], lines


def test_a_taken_port_is_one_line_naming_port_before_the_model_loads(
    tmp_path: Path, capsys
) -> None:
    """A port another process listens on is refused in one line that names --port and says how
    to pick another, before the run is even read (the folder here is not a run at all)."""
    import socket

    from cnnlab.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "not-a-run").mkdir()
        assert main(["serve", str(tmp_path / "not-a-run"), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert captured.out == "" and len(lines) == 1, captured
    assert f"--port {port} on 127.0.0.1 is in use" in lines[0] and "--port 0" in lines[0], lines


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_out_of_range_is_one_line_naming_port(tmp_path: Path, capsys, port: str) -> None:
    """`cnnlab serve RUN --port 99999` was socket.bind's OverflowError as a traceback; now one
    line naming --port and its range, before the run is read (the folder is not a run at all)."""
    from cnnlab.cli import main

    (tmp_path / "not-a-run").mkdir()
    assert main(["serve", str(tmp_path / "not-a-run"), "--port", port]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert captured.out == "" and len(lines) == 1, captured
    assert lines[0] == (
        f"error: --port {port} is not a TCP port; give a whole number from 1 to 65535, or "
        "--port 0 to let the system choose a free one"
    ), lines


@pytest.mark.slow  # a browser and a second server: ~5 s
def test_browser_says_which_test_time_views_the_answers_average(run: dict) -> None:
    if not Path(shutil.which("chromium") or "/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    texts = {}
    for tta in (None, "flip"):
        server = _live(create_app(run["ckpt"], max_upload_bytes=MAX_UPLOAD, top_k=3, tta=tta))
        url, _ = next(server)
        try:
            with sync_api.sync_playwright() as pw:
                browser = _browser(pw)
                try:
                    page = browser.new_page()
                    page.goto(url + "/")
                    page.wait_for_selector("#model-info:has-text('lenet5')")
                    texts[tta] = page.text_content("#model-info")
                finally:
                    browser.close()
        finally:
            next(server, None)  # stops the server
    assert texts["flip"].endswith("input; test-time augmentation: flip"), texts
    assert "augmentation" not in texts[None], texts
