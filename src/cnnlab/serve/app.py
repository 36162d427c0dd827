"""The web explorer: a FastAPI app around one trained model (``cnnlab serve RUN``).

Endpoints (the contract is ``GET /openapi.json``; ``GET /docs`` renders it with a local page):

* ``GET /``              the explorer page (plain HTML/CSS/JS from ``static/``, nothing from a CDN)
* ``GET /api/info``      model name, classes, input size, limits
* ``POST /api/predict``  an image (``multipart/form-data`` field ``file``, or the raw bytes with an
  ``image/*`` content type) -> ``{"top": [{"class", "index", "probability"}, ...]}``, best first,
  ``probability = softmax(logits / T)`` (T: the run's temperature, docs/calibration.md) and, for a
  calibrated run, ``"out_of_domain": {"score", "value", "threshold", "out_of_domain"}``, and
  ``"tta"``: the test-time augmentation views averaged (``cnnlab serve RUN --tta flip``); for a
  segmentation run the mask (a palette PNG at the upload's size, as ``cnnlab predict RUN`` writes
  it), the class areas and a colour overlay; for a detection run the boxes in the upload's pixels
  above ``score_threshold`` (query parameter; default: the run's) and the image with the boxes
  drawn; with ``--tta flip`` both are those of ``cnnlab predict RUN --tta flip`` and ``"tta"``
  says so. The run's recorded ``task`` decides.
* ``POST /api/explain``  the same upload -> the top classes, the layer trace (one entry per executed
  layer in the lecture's words -- convolution, ReLU, pooling, flattening, fully connected, output,
  plus batch norm / residual add / concat for the deeper families -- with its feature maps as a PNG
  grid) and a Grad-CAM overlay for the predicted class (PNG data URIs); segmentation and
  detection runs: 422 pointing to ``cnnlab explain RUN IMAGE``
* ``GET /report/``       the run's ``report.html`` (read-only; ``/report/<file>`` serves other
  report files, only from inside the run directory and only of harmless types)

Safety, after the serving rows of ``reference/bad-inputs.md``:

* binds ``127.0.0.1`` unless told otherwise (there is no authentication);
* the request body is read in chunks and refused with **413** as soon as it passes
  ``max_upload_bytes`` (plus a little multipart framing), or at once when ``Content-Length``
  says so: nothing is buffered beyond the limit; the multipart body is parsed in memory
  (nothing from an upload is written to disk) and client file names are never used, not as paths
  nor in messages;
* pixels come from the one decoding policy (:func:`cnnlab.data.decode.load_image_bytes`) with the
  run's pixel limit: not an image / a refused format -> **415**, a decompression bomb (a header
  declaring more pixels than the limit) -> **413** before any decoding, a truncated or corrupt
  image -> **422**; the reason is the decoder's short text;
* errors are ``{"error": "short reason"}`` without stack traces or paths;
* at most ``max_concurrency`` uploads are processed at a time; more wait in line, up to
  ``queue_timeout_s`` seconds each (a LeNet prediction takes milliseconds, so a burst of uploads
  is served, not refused), and get **503** with ``Retry-After`` only when the wait runs out or
  ``max_queue`` uploads are already waiting (the model itself runs one request at a time under a
  lock: the layer trace and Grad-CAM hook into the shared module).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnlab.config import PreprocessSpec
from cnnlab.engine.trainer import autocast
from cnnlab.engine.tta import (
    DetectTTAModel,
    SegmentTTAModel,
    average_probs,
    check_detect_tta,
    check_segment_tta,
    parse_tta,
)
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


def _classification_loader() -> Any:
    from cnnlab.engine.weights import load_checkpoint_model

    return load_checkpoint_model


def _segmentation_loader() -> Any:
    from cnnlab.segment import load_segmentation_model

    return load_segmentation_model


def _detection_loader() -> Any:
    from cnnlab.detect import load_detection_model

    return load_detection_model


# task recorded in the checkpoint -> its loader: (run, device) -> (model, meta, weights path)
SERVED_TASKS = {
    "classification": _classification_loader,
    "segmentation": _segmentation_loader,
    "detection": _detection_loader,
}
# segmentation and detection --tta: the task's check (its one-line error for other views) and the
# wrapper its predict runs (cnnlab.engine.tta), so served masks / boxes are predict's
TASK_TTA = {"segmentation": check_segment_tta, "detection": check_detect_tta}
TTA_MODELS = {"segmentation": SegmentTTAModel, "detection": DetectTTAModel}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MULTIPART_OVERHEAD = 16 * 1024  # boundary lines and part headers around the file, in bytes
MAX_PARTS = 4  # form parts accepted in one upload (we need one)
MAX_MAPS = 8  # feature maps drawn per layer (the first ones: a channel can be followed)
MAX_LAYER_IMAGES = 80  # layers drawn per explanation (ResNet-152 has ~500 rows; keeps JSON small)
UNDRAWN_KINDS = frozenset({"batch norm", "dropout"})  # listed with statistics, not drawn
TILE_MIN = 40  # px: small maps (LeNet's 5 x 5) are enlarged by an integer factor to at least this
TILE_MAX = 96  # px: large maps (ResNet's 112 x 112) are shrunk to at most this
CAM_DISPLAY = 224  # px: side of the CAM overlay and input images
CAM_ALPHA = 0.5  # overlay = (1 - alpha) * picture + alpha * heat colour
REPORT_TYPES = {  # what /report/<file> may return (never weights, optimizer state or caches)
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # everything from this server; images also as data: URIs (feature maps) and blob: (preview)
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}


class ApiError(Exception):
    """An answer other than 200: HTTP status and a short reason for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Slots:
    """A counting semaphore with a bounded line: ``size`` holders at a time, at most ``max_queue``
    waiting, each for at most ``timeout_s`` seconds (then :meth:`acquire` returns False).

    ``try_acquire()`` never waits. Used from one event loop (the server's); the counters are
    guarded by a lock so that tests may take slots from another thread.
    """

    def __init__(self, size: int, *, timeout_s: float = 10.0, max_queue: int = 64):
        if size < 1:
            raise ConfigError(f"--max-concurrency must be at least 1, got {size}")
        if timeout_s < 0:
            raise ConfigError(f"--queue-timeout must be >= 0 seconds, got {timeout_s}")
        self.size = size
        self.timeout_s = float(timeout_s)
        self.max_queue = max(0, int(max_queue))
        self.used = 0
        self.waiting = 0
        # set when an upload first has to wait (for tests and monitoring)
        self.someone_waited = threading.Event()
        self._lock = threading.Lock()
        # (loop, event) that the next release sets; made by the first waiter, in the server's loop
        self._freed: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def try_acquire(self) -> bool:
        with self._lock:
            if self.used >= self.size:
                return False
            self.used += 1
            return True

    async def acquire(self) -> bool:
        """Wait for a slot (woken waiters race for it) up to ``timeout_s`` seconds."""
        if self.try_acquire():
            return True
        if self.waiting >= self.max_queue:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        self.waiting += 1
        self.someone_waited.set()
        try:
            while True:
                if self._freed is None:
                    self._freed = (loop, asyncio.Event())
                freed = self._freed[1]
                if self.try_acquire():  # a release between the check above and now
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(freed.wait(), left)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                    return self.try_acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        with self._lock:
            self.used = max(0, self.used - 1)
            freed, self._freed = self._freed, None
        if freed is None:
            return
        loop, event = freed  # wake every waiter of that loop; they race for the slot
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(event.set)


@dataclass
class Served:
    """The model and everything needed to turn an upload into its input."""

    model: torch.nn.Module
    meta: dict[str, Any]
    spec: PreprocessSpec
    class_names: list[str]
    run_dir: Path | None
    device: torch.device
    top_k: int
    max_upload_bytes: int
    max_pixels: int
    cam_method: str
    lock: threading.Lock
    precision: str = "32"  # of /api/predict (cnnlab.engine.devices.inference_precision)
    task: str = "classification"  # the task the checkpoint records
    # classification: the run's temperature and out-of-domain check (cnnlab.engine.calibration)
    calibration: Any = None
    # test-time augmentation views (cnnlab.engine.tta), () for none: classification "flip", "crop",
    # "shift"; segmentation and detection "flip" (the model is then the task's TTA wrapper)
    tta: tuple[str, ...] = ()
    # single-label classification: the run's operating point (RUN/operating_point.json, checked
    # against the weights as `cnnlab predict` does), None for none
    operating_point: dict[str, Any] | None = None
    # multi-label classification: each label's decision threshold (L,), None for single-label
    thresholds: np.ndarray | None = None


# -- the app ---------------------------------------------------------------------------------------
def create_app(
    run_or_checkpoint: str | Path,
    *,
    max_upload_bytes: int = 10_000_000,
    top_k: int = 5,
    max_concurrency: int = 2,
    queue_timeout_s: float = 10.0,
    max_image_pixels: int | None = None,
    device: str = "cpu",
    cam_method: str = "gradcam",
    precision: str = "auto",
    tta: str | tuple[str, ...] | None = None,
    operating_point: bool = True,
) -> FastAPI:
    """A FastAPI app serving the model of a run directory or ``.safetensors`` checkpoint.

    ``max_image_pixels``: the decompression-bomb limit for uploads (None: the run's own, as in
    training). ``max_concurrency`` uploads are worked on at once; more wait up to
    ``queue_timeout_s`` seconds for a turn before a 503. ``precision``: inference precision of
    /api/predict (auto: fp32 on CPU, the run's own on CUDA, as `cnnlab predict`; the layer trace
    and CAMs of /api/explain are fp32). ``tta`` ("flip", "crop", "shift" or a comma list; classification
    runs): the probabilities are the mean of the views' (cnnlab.engine.tta); segmentation and
    detection runs take "flip" (the mask of the mean per-pixel probabilities of the image and its
    mirror, or the two views' boxes merged: what ``cnnlab predict RUN --tta flip`` writes); the
    answers and /api/info say which views (``"tta"``). ``operating_point``: apply the run's
    operating point (RUN/operating_point.json) as `cnnlab predict RUN` does: each answer's
    ``"decision"``.
    A multi-label run answers every label with its probability and threshold (``"labels"``).
    """
    from cnnlab import __version__
    from cnnlab.engine.devices import inference_precision, resolve_device
    from cnnlab.explain.cam import check_methods
    from cnnlab.run import checkpoint_metadata, run_dir_of, trained_precision

    if max_upload_bytes < 1:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload_bytes} bytes")
    if int(top_k) < 1:  # as the CLI's --top-k: 0 or -3 were clamped to 1 without a word
        raise ConfigError(f"--top-k must be a whole number >= 1, got {top_k}")
    if max_image_pixels is not None and max_image_pixels < 1:
        raise ConfigError(f"--max-image-pixels must be positive, got {max_image_pixels}")
    slots = Slots(max_concurrency, timeout_s=queue_timeout_s)
    recorded = checkpoint_metadata(run_or_checkpoint)
    task = str(recorded.get("task", "classification"))
    if task not in SERVED_TASKS:
        raise ConfigError(
            f"serve covers classification, segmentation and detection runs; {run_or_checkpoint} "
            f"is a {task} run (predict it with `cnnlab video predict RUN VIDEO`)"
        )
    views = parse_tta(tta)
    multilabel = bool(recorded.get("multilabel"))  # answers are per-label sigmoids
    if multilabel:
        from cnnlab.tasks.classify.multilabel import check_tta

        check_tta(views)
    if task in TASK_TTA:  # the views the task's own predict takes, in its own words
        views = TASK_TTA[task](views)
    dev = resolve_device(device)
    model, meta, weights = SERVED_TASKS[task]()(run_or_checkpoint, dev)
    if views and task in TASK_TTA:  # the wrapper `cnnlab predict RUN --tta` puts around it
        model = TTA_MODELS[task](model, views).eval()
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    run_path = Path(run_or_checkpoint).expanduser()
    run_dir = run_path if run_path.is_dir() else run_dir_of(Path(weights))
    precision = inference_precision(precision, dev, trained_precision(run_dir_of(Path(weights))))
    served = Served(
        model=model,
        meta=meta,
        spec=spec,
        class_names=[str(c) for c in meta["class_names"]],
        run_dir=run_dir.resolve() if run_dir is not None else None,
        device=dev,
        top_k=max(1, min(int(top_k), len(meta["class_names"]))),
        max_upload_bytes=int(max_upload_bytes),
        max_pixels=int(max_image_pixels) if max_image_pixels is not None else _max_pixels(spec),
        cam_method=check_methods((cam_method,))[0],
        lock=threading.Lock(),
        precision=precision,
        task=task,
        tta=views,
    )
    if task == "classification":
        import pytorch_grad_cam  # noqa: F401 -- about 5 s (OpenCV); now, not in the first request

        from cnnlab.engine.calibration import from_metadata, load_calibration
        from cnnlab.tasks.classify.multilabel import model_thresholds
        from cnnlab.tasks.classify.operating_point import for_weights

        weights_run = run_dir_of(Path(weights))
        if multilabel:  # the run's thresholds.json (an exported checkpoint: its own)
            served.thresholds = model_thresholds(weights_run, meta, served.class_names)
        else:
            served.calibration = load_calibration(weights_run, Path(weights))
            served.calibration = served.calibration or from_metadata(meta)
            if operating_point:  # the run's own; an exported checkpoint: the one it carries
                served.operating_point = for_weights(
                    weights_run, Path(weights), served.class_names, command="serve"
                ) or meta.get("operating_point")

    app = FastAPI(
        title=f"cnnlab explorer: {meta['model']}",
        version=__version__,
        description=(
            f"Run a trained cnnlab {task} model on an image and look inside it. Uploads: "
            f"multipart field `file` or raw image bytes, at most {max_upload_bytes} bytes. "
            'Errors are JSON `{"error": reason}`: 413 too large (body or pixels), '
            "415 not an image, 422 corrupt image, 503 busy."
        ),
        docs_url=None,  # FastAPI's Swagger UI loads its JS/CSS from a CDN; /docs is local instead
        redoc_url=None,
    )
    app.state.served = served
    app.state.slots = slots

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)  # the traceback stays in the log
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    upload_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "400": {"description": "empty upload, malformed multipart, or no `file` field"},
            "413": {"description": "body larger than the limit, or image over the pixel limit"},
            "415": {"description": "not an image, or a format outside the allow-list"},
            "422": {"description": "truncated or corrupt image"},
            "503": {"description": "busy: no turn within the queue timeout; retry"},
        },
    }

    async def _with_slot(request: Request, work: Any) -> dict[str, Any]:
        if not await slots.acquire():
            raise ApiError(
                503,
                f"busy: {slots.size} uploads in progress and no turn within "
                f"{slots.timeout_s:g} s; retry",
                {"Retry-After": "1"},
            )
        try:
            data = await read_upload(request, served.max_upload_bytes)
            return await run_in_threadpool(work, served, data)
        finally:
            slots.release()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    @app.get("/api/info", summary="The served model: name, classes, input, limits")
    async def info() -> dict[str, Any]:
        return {
            "model": served.meta["model"],
            "num_classes": len(served.class_names),
            "class_names": served.class_names,
            "image_size": served.spec.image_size,
            "in_channels": served.spec.in_channels,
            "top_k": served.top_k,
            "max_upload_bytes": served.max_upload_bytes,
            "max_pixels": served.max_pixels,
            "max_concurrency": slots.size,
            "cam_method": served.cam_method,
            "report": _report_file(served, "report.html") is not None,
            "cnnlab_version": __version__,
            "task": served.task,
            **calibration_info(served),
            **decision_info(served),
            **(
                {"score_threshold": float(served.meta.get("score_threshold", 0.5))}
                if served.task == "detection"
                else {}
            ),
        }

    @app.post(
        "/api/predict",
        summary=(
            "The task's output for one uploaded image: top-k classes (classification), mask and "
            "class areas (segmentation), boxes (detection; query `score_threshold`)"
        ),
        openapi_extra=upload_doc,
    )
    async def predict(request: Request) -> dict[str, Any]:
        if served.task == "segmentation":
            return await _with_slot(request, segment_bytes)
        if served.task == "detection":
            threshold = score_threshold_param(request.query_params.get("score_threshold"))
            return await _with_slot(
                request, lambda s, data: detect_bytes(s, data, score_threshold=threshold)
            )
        return await _with_slot(request, _with_top_k(request, served, predict_bytes))

    @app.post(
        "/api/explain",
        summary="Top-k, layer trace with feature maps, Grad-CAM overlay (PNG data URIs)",
        openapi_extra=upload_doc,
    )
    async def explain(request: Request) -> dict[str, Any]:
        if served.task == "classification":
            return await _with_slot(request, _with_top_k(request, served, explain_bytes))
        return await _with_slot(request, explain_elsewhere)

    @app.get("/report", include_in_schema=False)
    async def report_root() -> RedirectResponse:
        return RedirectResponse("/report/", status_code=307)  # so relative links resolve inside

    @app.get("/report/{path:path}", summary="The run's report (read-only files of the run dir)")
    async def report(path: str = "") -> FileResponse:
        target = _report_file(served, path or "report.html")
        if target is None:
            raise ApiError(404, "no such report file in this run")
        return FileResponse(target, media_type=REPORT_TYPES[target.suffix.lower()])

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def check_port_free(host: str, port: int) -> None:
    """A ConfigError naming ``--port`` when ``host:port`` cannot be bound (taken, or not allowed);
    uvicorn would otherwise log its own lines and exit with code 3 after the model has loaded.
    The probe socket is closed at once; port 0 (the system chooses) always passes."""
    import errno
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        # 99999 or -1 reached socket.bind, whose OverflowError was a traceback
        raise ConfigError(
            f"--port {port} is not a TCP port; give a whole number from 1 to 65535, or --port 0 "
            "to let the system choose a free one"
        )
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as uvicorn binds: SO_REUSEADDR, so a port left in TIME_WAIT by a stopped server passes
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise ConfigError(
                f"--port {port} on {host} {why}; pass another --port, or --port 0 to let the "
                "system choose a free one"
            ) from None


def serve(
    run: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    ready: Callable[[str], None] | None = None,
    **app_options: Any,
) -> None:
    """Run the explorer with uvicorn until Ctrl-C. ``app_options`` go to :func:`create_app`.

    ``ready(url)`` is called once the app is built (the model loaded) and uvicorn listens, with
    the URL of the port it bound (``port=0``: the one the system chose): a run that does not
    load, or a port that is taken, never announces an address first."""
    import uvicorn

    check_port_free(host, port)  # before the model loads: a taken port is one line, at once
    app = create_app(run, **app_options)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "binding %s makes the model reachable from other machines; there is no "
            "authentication -- put a proxy with TLS, auth and a body-size limit in front",
            host,
        )

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:  # uvicorn could not listen and has said why
                return
            bound = self.servers[0].sockets[0].getsockname()[1]
            url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/"
            log.info("cnnlab explorer on %s (API contract: /openapi.json)", url)
            if ready is not None:
                ready(url)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        timeout_keep_alive=5,
        limit_concurrency=64,  # connections; uploads are limited further by max_concurrency
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run(app, ...), with the hook
        Server(config).run()


# -- uploads ---------------------------------------------------------------------------------------
async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a request, reading at most ``max_bytes`` (+ multipart framing).

    ``multipart/form-data``: the part named ``file`` (a form without one is refused with 400);
    ``image/*`` or ``application/octet-stream``: the body itself. Raises :class:`ApiError`.
    """
    content_type = request.headers.get("content-type", "")
    is_multipart = content_type.lower().startswith("multipart/form-data")
    limit = max_bytes + (MULTIPART_OVERHEAD if is_multipart else 0)
    too_big = ApiError(413, f"upload larger than {max_bytes} bytes (the limit is --max-upload-mb)")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_big  # refuse before reading a byte of it
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    if is_multipart:
        data = multipart_file(bytes(body), content_type)
    elif content_type.lower().startswith(("image/", "application/octet-stream")):
        data = bytes(body)
    else:
        raise ApiError(
            415,
            "send multipart/form-data with a 'file' field, or the raw image with an image/* "
            "content type",
        )
    if len(data) > max_bytes:
        raise too_big
    if not data:
        raise ApiError(400, "empty upload: no image bytes received")
    return data


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The bytes of the ``file`` part of an in-memory ``multipart/form-data`` body."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary")
    parts: list[dict[str, Any]] = []
    header: dict[str, bytearray] = {}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, f"too many form parts (at most {MAX_PARTS})")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def on_header_end() -> None:
        key = bytes(header.get("field", b"")).decode("latin-1").lower()
        parts[-1]["headers"][key] = bytes(header.get("value", b""))
        header.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks, max_size=len(body))  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise ApiError(400, "malformed multipart body") from None
    for part in parts:  # only the field the API documents; the file name itself is never used
        _, disposition = parse_options_header(part["headers"].get("content-disposition", b""))
        if disposition.get(b"name") == b"file":
            return bytes(part["data"])
    raise ApiError(400, "no 'file' field in the form: send the image as the form field 'file'")


# -- model work (runs in a worker thread) ----------------------------------------------------------
def _max_pixels(spec: PreprocessSpec) -> int:
    from cnnlab.data.decode import DEFAULT_MAX_PIXELS

    return int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS))


def decode_upload(served: Served, data: bytes) -> np.ndarray:
    """Bytes -> ``(C, S, S)`` uint8 through the training decoding policy; DataError -> ApiError."""
    from cnnlab.data.tensors import pil_to_chw

    return pil_to_chw(decode_image(served, data), served.spec)


def decode_image(served: Served, data: bytes) -> Image.Image:
    """Bytes -> the decoded picture at its own size (mode L or RGB, as the model's channels),
    through the training decoding policy; DataError -> ApiError (413 / 415 / 422)."""
    from cnnlab.data.decode import DEFAULT_BACKGROUND, R_NOT_IMAGE, load_image_bytes
    from cnnlab.data.tensors import image_mode

    try:
        im = load_image_bytes(
            data,
            "upload",  # the client's file name is never used, not even in messages
            mode=image_mode(served.spec.in_channels),
            max_pixels=served.max_pixels,
            background=tuple(served.spec.decode.get("background", DEFAULT_BACKGROUND)),
        )
    except DataError as err:
        reason = err.reason
        if reason.startswith("exceeds max pixels"):
            raise ApiError(413, f"{reason} (raise --max-image-pixels)") from None
        if reason == R_NOT_IMAGE or reason.startswith("format "):
            raise ApiError(415, reason) from None
        raise ApiError(422, reason) from None
    return im


def _normalise(served: Served, pixels: np.ndarray) -> torch.Tensor:
    """``(C, S, S)`` uint8 -> ``(1, C, S, S)`` float32 ``(x/255 - mean)/std`` on the device."""
    x = (
        torch.tensor(pixels, dtype=torch.float32).unsqueeze(0) / 255
    )  # a copy: pixels may be read-only
    mean = torch.tensor(served.spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(served.spec.std).view(1, -1, 1, 1)
    return ((x - mean) / std).to(served.device)


def _top(served: Served, probs: torch.Tensor) -> list[dict[str, Any]]:
    values, indices = probs.topk(served.top_k)
    return [
        {"class": served.class_names[i], "index": int(i), "probability": float(p)}
        for p, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def predict_bytes(served: Served, data: bytes) -> dict[str, Any]:
    """Top-k of one uploaded image: ``softmax(model(x) / T)`` (T: the run's temperature, 1 for a
    run without calibration), computed in float32 after a forward pass at the served precision
    (fp32 by default on CPU); with the run's out-of-domain verdict (``out_of_domain``)."""
    pixels = decode_upload(served, data)
    x = _normalise(served, pixels)
    if served.thresholds is not None:
        with served.lock, torch.inference_mode(), autocast(served.device, served.precision):
            probs = served.model(x).float().sigmoid()[0].cpu()  # (L,) as multilabel.sigmoid_fn
        return {
            "task": "classification",
            "model": served.meta["model"],
            "precision": served.precision,
            **label_answers(served, probs),
        }
    with served.lock, torch.inference_mode(), autocast(served.device, served.precision):
        probs, verdict = calibrated_probs(served, x)
    return {
        "task": "classification",
        "model": served.meta["model"],
        "top": _top(served, probs),
        "precision": served.precision,
        "tta": list(served.tta),  # the views averaged; [] for none
        **verdict,
        **decision(served, probs),
    }


def decision(served: Served, probs: torch.Tensor) -> dict[str, Any]:
    """``{"decision": {"class", "probability", "threshold", "positive"}}`` under the run's
    operating point (positive: probability >= threshold, as cnnlab.engine.predict decides), or
    {} without one."""
    point = served.operating_point
    if point is None:
        return {}
    pos, threshold = int(point["positive_index"]), float(point["threshold"])
    p = float(probs[pos])
    return {
        "decision": {
            "class": served.class_names[pos],
            "probability": p,
            "threshold": threshold,
            "positive": p >= threshold,
        }
    }


def label_answers(served: Served, probs: torch.Tensor) -> dict[str, Any]:
    """A multi-label answer from sigmoid probabilities (L,): ``labels`` (every label, most
    probable first, with its threshold and whether it is predicted), ``predicted_labels`` (the
    names at or above their thresholds) and ``top`` (the first top-k labels, for the page)."""
    assert served.thresholds is not None
    values = probs.double().numpy()
    order = np.argsort(-values, kind="stable")  # ties: lower index first, as predict_files
    labels = [
        {
            "label": served.class_names[j],
            "index": int(j),
            "probability": float(values[j]),
            "threshold": float(served.thresholds[j]),
            "predicted": bool(values[j] >= served.thresholds[j]),
        }
        for j in order
    ]
    return {
        "multilabel": True,
        "labels": labels,
        "predicted_labels": [item["label"] for item in labels if item["predicted"]],
        "top": [
            {"class": item["label"], "index": item["index"], "probability": item["probability"]}
            for item in labels[: served.top_k]
        ],
    }


def decision_info(served: Served) -> dict[str, Any]:
    """/api/info's decision rule: the operating point, or the multi-label thresholds."""
    if served.thresholds is not None:
        return {
            "multilabel": True,
            "thresholds": dict(zip(served.class_names, served.thresholds.tolist(), strict=True)),
        }
    point = served.operating_point
    if point is None:
        return {}
    return {
        "operating_point": {
            "positive_class": point["positive_class"],
            "positive_index": int(point["positive_index"]),
            "threshold": float(point["threshold"]),
            "target": point.get("target"),
            "rule": point.get("rule"),
        }
    }


def calibrated_probs(served: Served, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """(probabilities (K,) of one image, {"out_of_domain": verdict} or {}): the run's calibration
    applied (cnnlab.engine.calibration), averaged over the TTA views (cnnlab.engine.tta: the
    mean of the views' calibrated probabilities; the out-of-domain score is the original view's);
    the caller holds the model lock."""
    cal = served.calibration
    mean, logits = average_probs(
        served.model, x, served.tta, cal.temperature if cal is not None else 1.0
    )
    probs = mean[0].cpu()
    if cal is None or cal.threshold is None:
        return probs, {}
    score = float(cal.ood_scores(logits.cpu().numpy().astype(np.float64))[0])
    return probs, {"out_of_domain": cal.verdict(score)}


def calibration_info(served: Served) -> dict[str, Any]:
    """/api/info's calibration entries: the TTA views (every task), the temperature and the
    out-of-domain rule (classification)."""
    cal = served.calibration
    tta = {"tta": list(served.tta)}
    if cal is None:
        return tta
    info: dict[str, Any] = tta | {"temperature": cal.temperature}
    if cal.threshold is not None:
        info["out_of_domain"] = cal.describe()
    return info


def explain_bytes(served: Served, data: bytes) -> dict[str, Any]:
    """Top-k, layer trace and Grad-CAM of one uploaded image (JSON with PNG data URIs)."""
    from cnnlab.explain.cam import cam_target_stage, compute_cams
    from cnnlab.explain.trace import trace_image

    pixels = decode_upload(served, data)
    x = _normalise(served, pixels)
    with served.lock:
        trace = trace_image(served.model, x, class_names=served.class_names, max_channels=MAX_MAPS)
        predicted = trace.predicted
        cam = compute_cams(served.model, x, [predicted], method=served.cam_method)[0]
        stage = cam_target_stage(served.model, tuple(x.shape[-2:]), x.shape[1])
    payload = explain_payload(trace, cam, pixels, method=served.cam_method, stage=stage)
    payload["model"] = served.meta["model"]
    payload["top"] = _top(served, trace.probs)
    if served.thresholds is not None:  # sigmoid per label; the CAM is of the most probable
        with served.lock, torch.inference_mode():
            payload.update(label_answers(served, served.model(x).float().sigmoid()[0].cpu()))
        return payload
    probs = trace.probs
    if served.calibration is not None or served.tta:  # calibrated, TTA top-k; out-of-domain
        with served.lock, torch.inference_mode():
            probs, verdict = calibrated_probs(served, x)
        payload["top"] = _top(served, probs)
        payload.update(verdict)
    payload.update(decision(served, probs))
    return payload


def segment_bytes(served: Served, data: bytes) -> dict[str, Any]:
    """The mask of one uploaded image at the image's own size, as ``cnnlab predict RUN`` writes it
    (:func:`cnnlab.data.masks.logits_to_image_mask`; a palette PNG whose pixel values are the class
    indices), each class's share of the pixels, and a colour overlay (PNG data URIs). Under
    ``--tta flip`` ``served.model`` is a SegmentTTAModel: the mask of the averaged probabilities."""
    from cnnlab.data.masks import logits_to_image_mask
    from cnnlab.data.tensors import pil_to_chw
    from cnnlab.report.segmentation_report import colorize, overlay

    im = decode_image(served, data)
    x = _normalise(served, pil_to_chw(im, served.spec))
    with served.lock, torch.inference_mode(), autocast(served.device, served.precision):
        logits = served.model(x).float()[0]
    ignore = int(served.meta.get("ignore_index", 255))
    mask = logits_to_image_mask(logits, im.width, im.height, served.spec.resize, ignore)
    palette = np.asarray(served.meta.get("palette") or [], dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette[:256]
    png = Image.fromarray(mask)  # mode L: the values are the class indices
    png.putpalette(lut.flatten().tolist())  # -> mode P, the same indices, coloured
    buf = io.BytesIO()
    png.save(buf, format="PNG")
    rgb = np.asarray(im.convert("RGB"))
    counts = np.bincount(mask.ravel(), minlength=256)
    return {
        "task": "segmentation",
        "model": served.meta["model"],
        "class_names": served.class_names,
        # share of the image's pixels predicted as each class (crop margins: ignore_index, in none)
        "areas": [
            {"class": name, "index": k, "fraction": round(float(counts[k] / mask.size), 6)}
            for k, name in enumerate(served.class_names)
        ],
        "size": [im.width, im.height],
        "mask": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
        "overlay": png_uri(overlay(rgb, colorize(mask, palette, ignore))),
        "precision": served.precision,
        "tta": list(served.tta),  # the views averaged; [] for none
    }


def _with_top_k(request: Request, served: Served, work: Callable[..., Any]) -> Callable[..., Any]:
    """``work`` answering the request's ``top_k`` query parameter (default: the server's
    --top-k); a bad one is refused (400) before the upload is read."""
    value = request.query_params.get("top_k")
    if value is None:
        return work
    k = top_k_param(value, served)
    return lambda s, data: work(replace(s, top_k=k), data)


def top_k_param(value: str, served: Served) -> int:
    """The ``top_k`` query parameter: a whole number >= 1, as the CLI's --top-k; more than the
    run's classes answers them all (as `cnnlab predict --top-k`)."""
    count = len(served.class_names)
    text = value.strip()
    if not text.isdigit() or int(text) < 1:  # "0", "-3", "2.5", "x": refused, never clamped
        raise ApiError(
            # it said "in [1, 10] (the classes)" while 99 was answered with all 10
            400,
            f"top_k must be a whole number >= 1 (more than the {count} classes answers them "
            f"all), got {value[:20]!r}",
        )
    return min(int(text), count)


def score_threshold_param(value: str | None) -> float | None:
    """The ``score_threshold`` query parameter: None (the run's own) or a number in [0, 1]."""
    if value is None:
        return None
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:  # also refuses nan
        raise ApiError(400, f"score_threshold must be a number in [0, 1], got {value[:20]!r}")
    return threshold


def detect_bytes(
    served: Served, data: bytes, *, score_threshold: float | None = None
) -> dict[str, Any]:
    """The boxes of one uploaded image above ``score_threshold`` (default: the run's), in the
    image's own pixels (:func:`cnnlab.data.boxes.unmap_boxes`), rows as ``cnnlab predict RUN``
    writes them to predictions.json (COCO ``bbox`` [x, y, w, h]), and the image with the boxes
    drawn (PNG data URI). Under ``--tta flip`` ``served.model`` is a DetectTTAModel: the image's and
    its mirror's boxes merged, before the threshold (as predict)."""
    from torchvision.utils import draw_bounding_boxes

    from cnnlab.data.boxes import unmap_boxes
    from cnnlab.data.tensors import pil_to_chw

    meta = served.meta
    threshold = float(
        meta.get("score_threshold", 0.5) if score_threshold is None else score_threshold
    )
    cats = list(meta.get("category_ids") or range(len(served.class_names)))
    im = decode_image(served, data)
    x = _normalise(served, pil_to_chw(im, served.spec))
    with served.lock, torch.inference_mode(), autocast(served.device, served.precision):
        p = served.model(x)[0]
    scores_all = p["scores"].float().cpu()
    keep = scores_all >= threshold
    boxes = unmap_boxes(p["boxes"].float().cpu()[keep].numpy(), im.width, im.height,
                        served.spec.image_size, served.spec.resize)  # fmt: skip
    labels, scores = p["labels"].cpu()[keep].tolist(), scores_all[keep].tolist()
    names = served.class_names
    detections = [
        {"category": names[lab], "category_id": cats[lab], "score": round(s, 5),
         "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)]}
        for b, lab, s in zip(boxes.tolist(), labels, scores, strict=True)
    ]  # fmt: skip
    rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    drawn = rgb if not len(boxes) else draw_bounding_boxes(
        rgb, torch.as_tensor(boxes).reshape(-1, 4),
        labels=[f"{names[lab]} {s:.2f}" for lab, s in zip(labels, scores, strict=True)],
        colors="red", width=2,
    )  # fmt: skip
    return {
        "task": "detection",
        "model": meta["model"],
        "class_names": names,
        "score_threshold": threshold,
        "size": [im.width, im.height],
        "detections": detections,
        "image": png_uri(np.ascontiguousarray(drawn.permute(1, 2, 0).numpy())),
        "precision": served.precision,
        "tta": list(served.tta),  # the views whose boxes were merged; [] for none
    }


def explain_elsewhere(served: Served, data: bytes) -> dict[str, Any]:
    """/api/explain of a segmentation or detection run: the upload is checked like any other (the
    same 413 / 415 / 422), then refused with a pointer to the command that explains it."""
    decode_image(served, data)
    raise ApiError(
        422,
        f"the explorer explains classification runs; for this {served.task} run use "
        "`cnnlab explain RUN IMAGE` (layer trace and CAMs as an HTML page)",
    )


# -- drawing: trace + CAM -> JSON with PNG data URIs -----------------------------------------------
def explain_payload(
    trace: Any,
    cam: np.ndarray,
    pixels: np.ndarray,
    *,
    method: str = "gradcam",
    stage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON for the page from a :class:`cnnlab.explain.trace.Trace`, a CAM ``(S, S)`` in [0, 1] and
    the model's input pixels ``(C, S, S)`` uint8.

    Each layer: its kind, detail and output shape, statistics over the whole output, and ``image``:
    a grid of its first feature maps (each map min-max scaled on its own, so its pattern is visible
    whatever its range; the numbers are in ``stats``), or for vectors (flattening, fully
    connected, output) the values as a strip, row-major, scaled the same way. Batch norm and
    dropout rows, and rows after the first ``MAX_LAYER_IMAGES`` drawn ones, have ``image: null``.
    """
    layers = []
    drawn = 0
    for layer in trace.layers:
        entry = layer.to_dict()
        entry["image"] = None
        if layer.kind in UNDRAWN_KINDS:
            pass  # batch norm rescales, dropout is the identity in eval mode: nothing new to see
        elif drawn >= MAX_LAYER_IMAGES:
            entry["image_omitted"] = f"only the first {MAX_LAYER_IMAGES} layers are drawn"
        elif layer.maps is not None:
            entry["image"] = png_uri(map_grid(layer.maps.numpy()))
            entry["maps_shown"] = int(layer.maps.shape[0])
        elif layer.vector is not None:
            entry["image"] = png_uri(vector_strip(layer.vector.numpy()))
            entry["values_shown"] = int(layer.vector.shape[0])
        drawn += entry["image"] is not None
        layers.append(entry)
    picture = pixels_to_rgb(pixels)
    predicted = trace.class_names[trace.predicted]
    return {
        "predicted": predicted,
        "input": {"shape": list(trace.input_shape), "image": png_uri(_display(picture))},
        "first_conv": {"name": trace.first_conv, "weight_shape": list(trace.first_filters_shape)},
        "flatten_length": trace.flatten_length,
        "layers": layers,
        "cam": {
            "method": method,
            "class": predicted,
            "target_layer": (stage or {}).get("name", ""),
            "target_shape": list((stage or {}).get("output_shape", ())),
            "overlay": png_uri(_display(cam_overlay(picture, cam))),
            "heatmap": png_uri(_display(heat_colours(cam))),
        },
    }


def png_uri(image: np.ndarray) -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> ``data:image/png;base64,...``."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def scale01(a: np.ndarray) -> np.ndarray:
    """``(a - min) / (max - min)`` (all zeros when the array is constant)."""
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def map_grid(maps: np.ndarray, gap: int = 2) -> np.ndarray:
    """``(K, h, w)`` float feature maps -> one grey uint8 grid image, ``ceil(sqrt(K))`` columns.

    Each tile is scaled to its own [0, 255]; tiles are enlarged by an integer factor (nearest
    neighbour, so pixels stay pixels) to at least ``TILE_MIN`` px, or shrunk to ``TILE_MAX``.
    """
    k, h, w = maps.shape
    factor = max(1, math.ceil(TILE_MIN / max(h, w)))
    th, tw = h * factor, w * factor
    if max(th, tw) > TILE_MAX:
        shrink = TILE_MAX / max(th, tw)
        th, tw = max(1, round(th * shrink)), max(1, round(tw * shrink))
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.full((rows * (th + gap) - gap, cols * (tw + gap) - gap), 255, dtype=np.uint8)
    for i in range(k):
        tile = Image.fromarray((scale01(maps[i]) * 255).round().astype(np.uint8))
        resample = Image.Resampling.NEAREST if th >= h else Image.Resampling.BOX
        tile = tile.resize((tw, th), resample)
        r, c = divmod(i, cols)
        grid[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = tile
    return grid


def vector_strip(values: np.ndarray, width: int = 32, cell: int = 6) -> np.ndarray:
    """``(L,)`` values -> grey cells, ``width`` per row (row-major), each ``cell`` px square."""
    n = values.shape[0]
    cols = min(width, n)
    rows = math.ceil(n / cols)
    padded = np.zeros(rows * cols)
    padded[:n] = scale01(values)
    img = (padded.reshape(rows, cols) * 255).round().astype(np.uint8)
    return np.kron(img, np.ones((cell, cell), dtype=np.uint8))


def pixels_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(C, S, S)`` uint8 (C = 1 or 3) -> ``(S, S, 3)`` uint8."""
    hwc = pixels.transpose(1, 2, 0)
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else np.ascontiguousarray(hwc)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """``(H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8, the "jet" ramp (blue, cyan, yellow, red):
    ``r = clip(1.5 - |4v - 3|)``, ``g = clip(1.5 - |4v - 2|)``, ``b = clip(1.5 - |4v - 1|)``."""
    v = np.clip(cam.astype(np.float64), 0.0, 1.0)
    rgb = np.stack([1.5 - np.abs(4 * v - c) for c in (3, 2, 1)], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


def cam_overlay(picture: np.ndarray, cam: np.ndarray, alpha: float = CAM_ALPHA) -> np.ndarray:
    """``(1 - alpha) * picture + alpha * heat_colours(cam)``, both ``(H, W, 3)`` uint8."""
    blend = (1 - alpha) * picture.astype(np.float64) + alpha * heat_colours(cam)
    return np.clip(blend.round(), 0, 255).astype(np.uint8)


def _display(image: np.ndarray, side: int = CAM_DISPLAY) -> np.ndarray:
    """Enlarge a small picture to about ``side`` px: nearest for an integer factor (LeNet's 16 px
    digits stay crisp), bilinear down for large ones."""
    h, w = image.shape[:2]
    if max(h, w) >= side:
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    factor = max(1, side // max(h, w))
    return np.kron(image, np.ones((factor, factor, 1), dtype=np.uint8)) if factor > 1 else image


# -- report files ----------------------------------------------------------------------------------
def _report_file(served: Served, rel: str) -> Path | None:
    """``run_dir / rel`` if it is a regular file of an allowed type inside the run directory.

    Refused: no run directory, empty/absolute paths, ``..``, hidden parts, NUL, backslashes or
    colons (Windows drive and ADS forms), other types, and anything whose real path (symlinks
    resolved) leaves the run directory.
    """
    root = served.run_dir
    if root is None or not rel or "\x00" in rel or "\\" in rel or ":" in rel:
        return None
    parts = Path(rel).parts
    if Path(rel).is_absolute() or any(p in ("..", "") or p.startswith(".") for p in parts):
        return None
    if Path(rel).suffix.lower() not in REPORT_TYPES:
        return None
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target
