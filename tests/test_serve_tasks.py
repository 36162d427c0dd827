"""The web explorer for segmentation and detection runs: the upload's answer equals what
``cnnlab predict RUN`` writes for the same image (the mask file, the predictions.json rows), bad
uploads get the classification statuses, a video run is refused at start.

References: :func:`cnnlab.segment.predict_segmentation` and :func:`cnnlab.detect.predict_detection`
on the same file; Pillow decodes the returned PNG data URIs.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

with warnings.catch_warnings():  # Starlette 1.x asks for "httpx2"; httpx still works for tests
    warnings.filterwarnings("ignore", message=".*httpx2", category=UserWarning)
    from fastapi.testclient import TestClient  # noqa: E402

from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.serve.app import create_app  # noqa: E402

MAX_UPLOAD = 50_000  # bytes


def _picture(path: Path, rng: np.random.Generator, width: int, height: int) -> Path:
    """A shapes-like picture (dark background, bright rectangles) at a size other than the model's,
    so that the answer must be mapped back to the image's own pixels."""
    a = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    for _ in range(2):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        colour = rng.integers(120, 256, 3, dtype=np.uint8)
        a[y0 : y0 + height // 3, x0 : x0 + width // 3] = colour
    Image.fromarray(a).save(path)
    return path


def _decode(uri: str) -> Image.Image:
    head = "data:image/png;base64,"
    assert uri.startswith(head)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(head) :])))


def _bomb_png(side: int = 30_000) -> bytes:
    """A PNG whose header declares ``side x side`` grey pixels (one tiny IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _upload(client: TestClient, data: bytes, url: str = "/api/predict"):
    return client.post(url, files={"file": ("x.png", data, "application/octet-stream")})


# -- runs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    from cnnlab.segment import train_segmentation

    out = tmp_path_factory.mktemp("seg")
    result = train_segmentation(
        data="builtin:shapes?n=30&size=24", out=str(out), name="seg", encoder="lenet5",
        image_size=24, epochs=1, batch_size=4, report=False, device="cpu", precision="32",
        val_fraction=0.2, test_fraction=0.2,
    )  # fmt: skip
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def det_run(tmp_path_factory) -> Path:
    from cnnlab.detect import train_detection

    out = tmp_path_factory.mktemp("det")
    result = train_detection(
        data="builtin:shapes?n=12&size=64&objects=2", epochs=1, batch_size=4, val_fraction=0.0,
        test_fraction=0.0, out=str(out), device="cpu", report=False,
    )  # fmt: skip
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def seg_client(seg_run: Path):
    app = create_app(seg_run, max_upload_bytes=MAX_UPLOAD, device="cpu")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def det_client(det_run: Path):
    app = create_app(det_run, max_upload_bytes=MAX_UPLOAD, device="cpu")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# -- segmentation ----------------------------------------------------------------------------------
def test_segmentation_upload_returns_the_predicted_mask(
    seg_client: TestClient, seg_run: Path, tmp_path: Path
) -> None:
    from cnnlab.run import checkpoint_metadata
    from cnnlab.segment import predict_segmentation

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(41, 29), (24, 24)]):
        path = _picture(tmp_path / f"p{i}.png", rng, w, h)
        (ref_path,) = predict_segmentation(seg_run, [path], tmp_path / f"pred{i}", device="cpu")
        reference = np.asarray(Image.open(ref_path))
        response = _upload(seg_client, path.read_bytes())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["task"] == "segmentation" and body["size"] == [w, h]
        mask_png = _decode(body["mask"])
        assert mask_png.mode == "P" and mask_png.size == (w, h)
        assert mask_png.getpalette() == Image.open(ref_path).getpalette()
        np.testing.assert_array_equal(np.asarray(mask_png), reference)
        names = checkpoint_metadata(seg_run)["class_names"]
        assert body["class_names"] == names
        fractions = [a["fraction"] for a in body["areas"]]
        expected = [float((reference == k).mean()) for k in range(len(names))]
        np.testing.assert_allclose(fractions, expected, atol=1e-6)
        assert _decode(body["overlay"]).size == (w, h)
    info = seg_client.get("/api/info").json()
    assert info["task"] == "segmentation"


# -- detection -------------------------------------------------------------------------------------
def test_detection_upload_returns_the_predicted_boxes(
    det_client: TestClient, det_run: Path, tmp_path: Path
) -> None:
    from cnnlab.detect import predict_detection

    path = _picture(tmp_path / "a.png", np.random.default_rng(1), 80, 50)
    out = predict_detection(det_run, [path], tmp_path / "pred", device="cpu", score_threshold=0.05)
    rows = [{k: r[k] for k in ("category", "category_id", "score", "bbox")}
            for r in json.loads(out.read_text())]  # fmt: skip
    assert rows, "a threshold of 0.05 should leave boxes"
    response = det_client.post(
        "/api/predict?score_threshold=0.05",
        files={"file": ("a.png", path.read_bytes(), "image/png")},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "detection" and body["size"] == [80, 50]
    assert body["score_threshold"] == 0.05
    assert body["detections"] == rows
    assert _decode(body["image"]).size == (80, 50)
    # the run's own threshold by default: the same boxes, those below it left out
    run_threshold = det_client.get("/api/info").json()["score_threshold"]
    default = _upload(det_client, path.read_bytes()).json()
    assert default["score_threshold"] == run_threshold
    assert default["detections"] == [r for r in rows if r["score"] >= run_threshold]


def test_detection_threshold_parameter_is_checked(det_client: TestClient, tmp_path: Path) -> None:
    data = _picture(tmp_path / "a.png", np.random.default_rng(2), 40, 40).read_bytes()
    for bad in ("high", "1.5", "-0.1", "nan"):
        response = det_client.post(
            f"/api/predict?score_threshold={bad}", files={"file": ("a.png", data, "image/png")}
        )
        assert response.status_code == 400, bad
        assert "score_threshold" in response.json()["error"]


# -- test-time augmentation (`cnnlab serve RUN --tta flip`) ----------------------------------------
@pytest.fixture(scope="module")
def seg_tta_client(seg_run: Path):
    app = create_app(seg_run, max_upload_bytes=MAX_UPLOAD, device="cpu", tta="flip")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def det_tta_client(det_run: Path):
    app = create_app(det_run, max_upload_bytes=MAX_UPLOAD, device="cpu", tta="flip")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_segmentation_tta_serves_the_masks_of_predict_tta(
    seg_tta_client: TestClient, seg_client: TestClient, seg_run: Path, tmp_path: Path
) -> None:
    """--tta flip: the served mask is the one `cnnlab predict RUN --tta flip` writes for the same
    image, and not the plain one (the pictures are asymmetric: were the views not averaged, or the
    mirror's probabilities not mirrored back, the masks would be the plain ones or differ)."""
    from cnnlab.segment import predict_segmentation

    rng = np.random.default_rng(7)
    differs = 0
    for i, (w, h) in enumerate([(41, 29), (24, 24), (30, 52)]):
        path = _picture(tmp_path / f"p{i}.png", rng, w, h)
        (ref_path,) = predict_segmentation(
            seg_run, [path], tmp_path / f"pred{i}", device="cpu", tta="flip"
        )
        body = _upload(seg_tta_client, path.read_bytes()).json()
        assert body["task"] == "segmentation" and body["tta"] == ["flip"]
        mask = np.asarray(_decode(body["mask"]))
        np.testing.assert_array_equal(mask, np.asarray(Image.open(ref_path)))
        plain = _upload(seg_client, path.read_bytes()).json()
        assert plain["tta"] == []
        differs += int((np.asarray(_decode(plain["mask"])) != mask).sum())
    assert differs > 0, "flip TTA changed no pixel of three asymmetric pictures"
    assert seg_tta_client.get("/api/info").json()["tta"] == ["flip"]
    assert seg_client.get("/api/info").json()["tta"] == []


def test_detection_tta_serves_the_boxes_of_predict_tta(
    det_tta_client: TestClient, det_client: TestClient, det_run: Path, tmp_path: Path
) -> None:
    """--tta flip: the served boxes are the rows `cnnlab predict RUN --tta flip` writes (boxes
    and scores to 1e-5), and not the plain ones."""
    from cnnlab.detect import predict_detection

    path = _picture(tmp_path / "a.png", np.random.default_rng(1), 80, 50)
    out = predict_detection(
        det_run, [path], tmp_path / "pred", device="cpu", score_threshold=0.05, tta="flip"
    )
    rows = json.loads(out.read_text())
    assert rows, "a threshold of 0.05 should leave boxes"
    query = "/api/predict?score_threshold=0.05"
    body = _upload(det_tta_client, path.read_bytes(), query).json()
    assert body["task"] == "detection" and body["tta"] == ["flip"]
    got = body["detections"]
    assert [(d["category"], d["category_id"]) for d in got] == [
        (r["category"], r["category_id"]) for r in rows
    ]
    served = [d["bbox"] + [d["score"]] for d in got]  # x, y, w, h, score
    np.testing.assert_allclose(served, [r["bbox"] + [r["score"]] for r in rows], rtol=0, atol=1e-5)
    plain = _upload(det_client, path.read_bytes(), query).json()
    assert plain["tta"] == [] and plain["detections"] != got
    assert det_tta_client.get("/api/info").json()["tta"] == ["flip"]
    assert det_client.get("/api/info").json()["tta"] == []


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_tta_views_a_task_cannot_map_back_are_refused_as_predict_does(
    task: str, seg_run: Path, det_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`serve RUN --tta crop` of a segmentation or detection run: exit 2, the one line the task's
    own `predict RUN --tta crop` prints, before the model loads; an unknown view likewise."""
    from cnnlab.cli import main

    run = str(seg_run if task == "segmentation" else det_run)
    image = str(_picture(tmp_path / "a.png", np.random.default_rng(4), 20, 20))
    lines = {}
    for views in ("crop", "flip,shift", "mirror"):
        with pytest.raises(ConfigError):
            create_app(run, tta=views)
        capsys.readouterr()
        assert main(["serve", run, "--port", "0", "--tta", views]) == 2
        served = capsys.readouterr().err.strip().splitlines()
        assert main(["predict", run, image, "--out", str(tmp_path / "o"), "--tta", views]) == 2
        predicted = capsys.readouterr().err.strip().splitlines()
        assert len(served) == 1 and served == predicted, (served, predicted)
        assert served[0].startswith(f"error: --tta {views}")
        lines[views] = served[0]
    assert f"a {task} run" in lines["crop"] and "use --tta flip" in lines["crop"]
    assert "unknown view 'mirror'" in lines["mirror"]


@pytest.mark.slow  # two `python -m cnnlab` processes (torch imported): seconds each
def test_tta_refusal_from_the_command_line(seg_run: Path, det_run: Path) -> None:
    from cli_process import assert_user_error

    line = assert_user_error(
        "serve", str(seg_run), "--port", "0", "--tta", "crop", names="--tta crop"
    )
    assert (
        "a segmentation run averages per-pixel probabilities" in line and "use --tta flip" in line
    )
    line = assert_user_error(
        "serve", str(det_run), "--port", "0", "--tta", "crop", names="--tta crop"
    )
    assert "a detection run merges the boxes" in line and "use --tta flip" in line


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_bad_uploads_get_the_classification_statuses(
    task: str, seg_client: TestClient, det_client: TestClient, tmp_path: Path
) -> None:
    client = seg_client if task == "segmentation" else det_client
    good = _picture(tmp_path / "g.png", np.random.default_rng(3), 30, 20).read_bytes()
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    cases = [
        (b"<html>an error page saved as .png</html>", 415),
        (b"8BPS" + b"\x00" * 64, 415),  # PSD: outside the allow-list
        (_bomb_png(), 413),
        (png[: len(png) // 2], 422),  # truncated
        (b"\x00" * (MAX_UPLOAD + 1), 413),
        (b"", 400),
    ]
    for data, status in cases:
        for url in ("/api/predict", "/api/explain"):
            response = _upload(client, data, url)
            assert response.status_code == status, (url, status, response.text)
            assert set(response.json()) == {"error"} and len(response.json()["error"]) < 200
    assert _upload(client, good).status_code == 200  # still answering
    explain = _upload(client, good, "/api/explain")
    assert explain.status_code == 422
    assert "cnnlab explain RUN IMAGE" in explain.json()["error"]
    assert task in explain.json()["error"]


def test_video_run_is_refused_at_start(
    seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cnnlab.cli import main

    weights = seg_run / "checkpoints" / "best.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    fake = tmp_path / "video.safetensors"
    save_file(tensors, str(fake), metadata=meta | {"task": json.dumps("video-classification")})
    with pytest.raises(ConfigError, match="serve covers classification, segmentation and det"):
        create_app(fake)
    capsys.readouterr()
    assert main(["serve", str(fake), "--port", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "serve covers classification, segmentation and detection runs" in lines[0]
    assert "video-classification" in lines[0]


# -- the page in headless Chromium -----------------------------------------------------------------
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_page_shows_the_mask_or_the_boxes(
    task: str, seg_run: Path, det_run: Path, tmp_path: Path
) -> None:
    """The page draws the task's answer (mask and overlay, or the boxes) in place of the top-k
    bars and the layer trace, at the upload's own size; the list beside it follows the JSON."""
    import shutil
    import socket
    import threading

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    uvicorn = pytest.importorskip("uvicorn")
    app = create_app(seg_run if task == "segmentation" else det_run, device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Server(uvicorn.Server):  # says when it listens
        ready = threading.Event()

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            self.ready.set()

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    image = _picture(tmp_path / "up.png", np.random.default_rng(5), 80, 50)
    url = f"http://127.0.0.1:{port}"
    try:
        assert server.ready.wait(20) and server.started, "uvicorn did not start"
        with TestClient(app) as client:  # the JSON the page should show
            query = "?score_threshold=0.05" if task == "detection" else ""
            body = _upload(client, image.read_bytes(), "/api/predict" + query).json()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
            )
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                page.goto(url + "/")
                page.wait_for_selector(f"#model-info:has-text('({task})')")
                if task == "detection":
                    page.fill("#threshold", "0.05")
                page.set_input_files("#file", str(image))
                page.wait_for_selector("body[data-state=done]", timeout=30_000)
                drawn = page.eval_on_selector("#cam-overlay", "e => [e.naturalWidth, e.src]")
                mask = page.eval_on_selector("#input-image", "e => [e.naturalWidth, e.src]")
                labels = page.eval_on_selector_all(
                    "#top li[data-class]", "els => els.map(e => e.dataset.class)"
                )
                layers_hidden = page.eval_on_selector("#layers-section", "e => e.hidden")
                page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert layers_hidden
    assert drawn[0] == 80
    if task == "segmentation":
        assert drawn[1] == body["overlay"] and mask == [80, body["mask"]]
        areas = sorted(
            (a for a in body["areas"] if a["fraction"] > 0), key=lambda a: -a["fraction"]
        )
        assert labels == [a["class"] for a in areas]
    else:
        assert drawn[1] == body["image"]
        assert labels == [d["category"] for d in body["detections"][:20]]
