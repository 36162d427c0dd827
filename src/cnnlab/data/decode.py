"""The one image decoding policy of cnnlab.

Every path that turns a file (or uploaded bytes) into pixels -- training, evaluation, prediction,
the pre-flight scan and serving -- goes through :func:`decode_image` (via :func:`load_image`,
:func:`load_image_bytes` or :func:`inspect_image`), so a picture looks the same to the model
everywhere. The user-facing table is ``docs/data-policy.md``; the steps, in order:

1. **Read** the whole file into memory. ``FileNotFoundError`` -> "file not found",
   ``PermissionError`` -> "unreadable: permission denied"; any other ``OSError`` (network file
   systems) is retried ``READ_RETRIES`` times with a short back-off, then reported.
   Zero bytes -> "empty file".
2. **Identify by content**, never by extension: ``Image.open(fp, formats=ALLOWED_FORMATS)``.
   Only JPEG (incl. multi-picture MPO), PNG, BMP, GIF, TIFF, WEBP and PPM/PGM/PBM are parsed;
   anything else is refused without being handed to another Pillow plugin. A magic-byte sniff
   names refused formats ("format PSD not allowed ...") and tells an unknown file
   ("not an image") from a broken header of an allowed format.
3. **Pixel limit before decoding**: the declared ``W x H`` must be ``<= max_pixels``
   (default ``DEFAULT_MAX_PIXELS`` = 50 MP), otherwise "exceeds max pixels W×H > LIMIT".
   Pillow's ``DecompressionBombWarning`` is turned into that error locally (``catch_warnings``
   around ``open`` only); ``Image.MAX_IMAGE_PIXELS`` is never changed. Pillow's own hard stop
   (``2 * Image.MAX_IMAGE_PIXELS`` ~ 179 MP) bounds how far ``max_pixels`` can be raised.
4. **Full decode** (``im.load()``), not ``verify()``: only a full decode finds a truncated
   JPEG. PNG is additionally ``verify()``-ed because ``load()`` does not check chunk CRCs.
   Bytes after a JPEG's end-of-image marker are harmless and accepted.
5. **First frame** of animated GIF/WEBP/APNG and multi-page TIFF/MPO; the frame count is reported
   in :class:`ImageInfo` ``notes``.
6. **EXIF orientation** (tag 274, values 2-8) applied with ``ImageOps.exif_transpose``.
7. **Mode policy** (:func:`normalize_mode`), all deterministic integer arithmetic:

   =================  =============================================================
   ``1``              ``L`` (0 / 255)
   ``L``, ``RGB``      as is (a ``transparency`` entry makes them ``RGBA`` first)
   ``P``              ``RGBA`` if it has transparency, else ``RGB`` (palette lookup)
   ``LA``/``RGBA``     composited over ``background`` (default white, see below)
   ``CMYK``/YCCK,     Pillow ``convert("RGB")``
   ``YCbCr``, ``HSV``
   ``I;16*``          16-bit -> 8-bit by ``v >> 8`` (high byte; 65535 -> 255, never
                      saturated as a plain ``convert`` would do), then ``L``
   ``I`` (32-bit)     must lie in 0..65535, then treated as 16-bit; else error
   ``F`` (float)      must be finite and in [0, 1]; ``round(255 * v)`` -> ``L``; else error
   other              error "unsupported pixel mode X"
   =================  =============================================================

   Output ``"RGB"`` replicates a grey channel; output ``"L"`` uses ITU-R 601-2 luma
   ``L = R*299/1000 + G*587/1000 + B*114/1000`` (Pillow's ``convert("L")``).

   *Background*: transparent pixels are composited over white ``(255, 255, 255)``, which is what
   browsers, viewers and document pages show for transparent logos/icons/scans -- the pictures a
   photo dataset usually contains. Pillow's plain ``convert("RGB")`` would instead expose
   whatever colour hides under alpha = 0 (often black, sometimes garbage). MNIST-like digits are
   white-on-black *grey* images without alpha and are not affected. The commands decode with
   the default (no option changes it; an export records it in its preprocessing metadata); a
   caller of these functions may pass another ``background``, and must then use it everywhere.

Errors are :class:`cnnlab.errors.DataError` ``(path, reason)`` with the short reasons below; the
Pillow message is kept as ``__cause__``. Only Pillow's documented family of hostile-input
exceptions is caught (``DECODE_ERRORS``); anything else is a cnnlab bug and keeps its traceback.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cnnlab.config import DEFAULT_MAX_PIXELS
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Pillow format names that may be parsed at all (``Image.open(..., formats=...)``).
#: "PPM" covers PBM/PGM/PPM/PNM; "JPEG" also admits camera multi-picture files (format "MPO").
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

# DEFAULT_MAX_PIXELS (50 MP) lives in cnnlab.config, the bottom layer, beside --max-image-pixels.
# The reasons below name no flag: predict and evaluate use the limit the run recorded; commands
# with the option add the hint.

#: White: what viewers and browsers show behind transparent pixels (see module docstring).
DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

#: Output modes a model can ask for: 3 channels or 1 channel.
OUTPUT_MODES = ("RGB", "L")

#: Attempts for a read that fails with an OSError other than not-found / permission (NFS, SMB).
READ_RETRIES = 3

#: What Pillow raises on hostile or broken input (its OSS-Fuzz harness treats the same family as
#: expected). ``UnidentifiedImageError`` is an ``OSError``; the bomb error is not.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    MemoryError,
    NotImplementedError,
    OverflowError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

# Short reasons (the scan groups bad files by these exact strings).
R_EMPTY = "empty file"
R_NOT_IMAGE = "not an image (cannot identify format)"
R_CORRUPT = "truncated or corrupt image data"
R_PNG_CRC = "CRC error / corrupt PNG"
R_NOT_FOUND = "file not found"
R_PERMISSION = "unreadable: permission denied"
R_IS_DIR = "is a directory, not an image file"
R_NO_MEMORY = "not enough memory to decode (a lower pixel limit or fewer workers would help)"

# Magic bytes -> format name. Used only to word an error after Pillow refused a file; it never
# decides what is decoded.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),
    (0, b"MM\x00+", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF", "PDF"),
    (0, b"SIMPLE  =", "FITS"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"icns", "ICNS"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG2000"),
)
_FTYP_BRANDS = {
    b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
    b"mif1": "HEIC", b"msf1": "HEIC", b"avif": "AVIF", b"avis": "AVIF",
}  # fmt: skip
_FORMAT_HINTS = {
    "HEIC": "convert it to JPEG or PNG (HEIC needs the pillow-heif plugin, not enabled by cnnlab)",
    "AVIF": "convert it to JPEG, PNG or WEBP",
    "SVG": "vector images must be rendered to PNG first",
    "PDF": "export the page as PNG first",
}

#: Extension (lower case) -> format the content is expected to have; used for "mismatch" notes.
EXTENSION_FORMATS: dict[str, str] = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG",
    ".bmp": "BMP", ".dib": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM", ".pnm": "PPM",
}  # fmt: skip

# warnings.catch_warnings swaps the process-wide filter list; this lock keeps our own threads
# from interleaving their swaps. It is held only around Image.open (header parsing), never
# around the decode, so threads still decode in parallel (Pillow releases the GIL there).
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageInfo:
    """What decoding one file found out. ``width``/``height`` are after EXIF orientation."""

    path: str
    format: str  # from content, e.g. "JPEG" (Pillow's name; "MPO" for multi-picture JPEG)
    mode: str  # pixel mode stored in the file, before normalisation ("I;16", "P", "CMYK", ...)
    width: int
    height: int
    n_frames: int = 1
    exif_orientation: int = 1  # 1 = upright (also when the tag is absent)
    file_bytes: int = 0
    sha256: str = ""  # of the file's bytes (exact-duplicate and leakage detection)
    notes: tuple[str, ...] = ()  # normalisations that happened: frames dropped, alpha, 16-bit, ...

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class Decoded:
    """A decoded image (already in the requested output mode) and what was learnt about it."""

    image: Image.Image
    info: ImageInfo


# ----------------------------------------------------------------------------- public functions


def load_image(
    path: str | os.PathLike[str],
    *,
    mode: str = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = DEFAULT_BACKGROUND,
    draft: int | None = None,
) -> Image.Image:
    """Decode ``path`` under the cnnlab policy; returns a loaded PIL image in ``mode`` ("RGB"/"L").

    ``draft``: the side (pixels) the caller will shrink the image to. A JPEG much larger than that is then
    decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (``Image.draft``), never below ``draft`` on
    either side: the same pixels after the caller's resize, several times less decoding work.
    Raises :class:`DataError` ``(path, reason)`` for anything that cannot be used.
    """
    data = read_image_bytes(path)
    return decode_image(
        data, os.fspath(path), mode=mode, max_pixels=max_pixels, background=background, draft=draft
    ).image


def load_image_bytes(
    data: bytes | bytearray | memoryview | BinaryIO,
    name: str = "<upload>",
    *,
    mode: str = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = DEFAULT_BACKGROUND,
) -> Image.Image:
    """Same policy for in-memory bytes or a binary file object (serving). ``name`` is only used in
    messages (and for the extension-mismatch note); it is never used as a path."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        try:
            raw = data.read()
        except OSError as e:
            raise DataError(name, f"unreadable: {e.strerror or e}") from e
    return decode_image(raw, name, mode=mode, max_pixels=max_pixels, background=background).image


def inspect_image(
    path: str | os.PathLike[str],
    *,
    mode: str = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = DEFAULT_BACKGROUND,
) -> ImageInfo:
    """Fully decode ``path`` exactly as :func:`load_image` does and return only the metadata
    (format, stored mode, size, frames, EXIF orientation, sha256, notes). Raises DataError."""
    data = read_image_bytes(path)
    return decode_image(
        data, os.fspath(path), mode=mode, max_pixels=max_pixels, background=background
    ).info


def read_image_bytes(path: str | os.PathLike[str], *, retries: int = READ_RETRIES) -> bytes:
    """All bytes of ``path``; transient ``OSError`` s are retried ``retries`` times (50, 100 ms)."""
    name = os.fspath(path)
    last: OSError | None = None
    for attempt in range(max(1, retries)):
        try:
            with open(name, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(name, R_NOT_FOUND) from None
        except PermissionError:
            raise DataError(name, R_PERMISSION) from None
        except IsADirectoryError:
            raise DataError(name, R_IS_DIR) from None
        except OSError as e:  # EIO, ESTALE, ETIMEDOUT ... on network storage
            last = e
            if attempt + 1 < retries:
                log.warning("read of %s failed (%s); retrying (slow or flaky storage?)", name, e)
                time.sleep(0.05 * 2**attempt)
    assert last is not None
    raise DataError(
        name, f"unreadable: {last.strerror or last} (after {retries} attempts; flaky storage?)"
    ) from last


def decode_image(
    data: bytes,
    name: str,
    *,
    mode: str = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = DEFAULT_BACKGROUND,
    draft: int | None = None,
) -> Decoded:
    """The policy itself (module docstring, steps 2-7) on the bytes of one file called ``name``."""
    bg = _check_options(mode, max_pixels, background)
    if len(data) == 0:
        raise DataError(name, R_EMPTY)
    notes: list[str] = []
    fmt = "?"
    try:
        im = _open(data, max_pixels)
        fmt = im.format or "?"
        width, height = im.size
        if width * height > max_pixels:
            raise DataError(name, _too_big(width, height, max_pixels))
        _note_extension(name, fmt, notes)
        n_frames = _frame_count(im, fmt, notes)
        if fmt == "PNG":
            # load() does not check chunk CRCs; verify() does (it raises SyntaxError).
            _open(data, max_pixels).verify()
        if draft and fmt == "JPEG" and min(width, height) >= 2 * draft:
            im.draft(
                im.mode, (draft, draft)
            )  # reduced-scale DCT decode; still a full (truncation) check
        im.load()  # full decode: the only reliable truncation check
        orientation = _orientation(im, notes)
        if orientation != 1:  # skip the copy exif_transpose makes for upright images
            im = ImageOps.exif_transpose(im)
        stored_mode = im.mode
        out = _normalize(im, mode, bg, name, notes)
        if isinstance(out, ImageFile.ImageFile):
            out = out.copy()  # a plain Image, detached from the file object and its bytes
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(name, _bomb_reason(data, max_pixels)) from e
    except UnidentifiedImageError as e:
        raise DataError(name, _unidentified_reason(data)) from e
    except SyntaxError as e:  # Pillow's PNG/TIFF parsers signal broken structure this way
        raise DataError(name, R_PNG_CRC if fmt == "PNG" else R_CORRUPT) from e
    except MemoryError as e:
        raise DataError(name, R_NO_MEMORY) from e
    except DECODE_ERRORS as e:
        log.debug("decode of %s failed: %r", name, e)
        raise DataError(name, R_CORRUPT) from e
    info = ImageInfo(
        path=name,
        format=fmt,
        mode=stored_mode,
        width=out.width,
        height=out.height,
        n_frames=n_frames,
        exif_orientation=orientation,
        file_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        notes=tuple(notes),
    )
    return Decoded(out, info)


def normalize_mode(
    im: Image.Image,
    mode: str = "RGB",
    *,
    background: Sequence[int] = DEFAULT_BACKGROUND,
    name: str = "<image>",
) -> Image.Image:
    """Apply the mode policy (module docstring, step 7) to an already-decoded PIL image, e.g. one
    coming from a torchvision dataset. Returns a new image in ``mode`` ("RGB" or "L")."""
    bg = _check_options(mode, DEFAULT_MAX_PIXELS, background)
    return _normalize(im, mode, bg, name, [])


def pil_to_uint8(
    im: Image.Image, mode: str = "RGB", *, background: Sequence[int] = DEFAULT_BACKGROUND
) -> np.ndarray:
    """``(H, W, C)`` uint8 array (C = 3 for "RGB", 1 for "L") after the mode policy."""
    out = normalize_mode(im, mode, background=background, name=str(getattr(im, "filename", "")))
    arr = np.array(out, dtype=np.uint8)  # copy: independent of the PIL buffer
    return arr[:, :, None] if arr.ndim == 2 else arr


def sniff_format(data: bytes) -> str | None:
    """Format named by the leading magic bytes (``None`` if unknown). For messages only."""
    head = data[:64]
    for offset, magic, fmt in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "PPM"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    text = data[:1024].lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    return None


# ----------------------------------------------------------------------------- helpers


def _check_options(mode: str, max_pixels: int, background: Sequence[int]) -> tuple[int, int, int]:
    if mode not in OUTPUT_MODES:
        raise ConfigError(f"image mode must be one of {OUTPUT_MODES}, got {mode!r}")
    hard = 2 * Image.MAX_IMAGE_PIXELS  # Pillow raises DecompressionBombError above this
    if not isinstance(max_pixels, int) or not 1 <= max_pixels <= hard:
        raise ConfigError(
            f"max_pixels (--max-image-pixels) must be an integer in 1..{hard} (Pillow's hard "
            f"limit), got {max_pixels!r}"
        )
    bg = tuple(background)
    if len(bg) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in bg):
        raise ConfigError(f"background must be three integers 0..255 (R, G, B), got {background!r}")
    return bg  # type: ignore[return-value]


def _open(data: bytes, max_pixels: int) -> Image.Image:
    # Our max_pixels is the authority: below Pillow's warning threshold the warning can only
    # fire for images we reject anyway (turn it into an error); a user who raised max_pixels
    # above it has accepted such sizes, so the warning is silenced.
    action = "error" if max_pixels <= Image.MAX_IMAGE_PIXELS else "ignore"
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)


def _too_big(width: int, height: int, max_pixels: int) -> str:
    return f"exceeds max pixels {width}×{height} > {max_pixels}"


def _bomb_reason(data: bytes, max_pixels: int) -> str:
    """Pillow stopped at open; re-read only the header of the (allowed) format to name W×H."""
    fmt = sniff_format(data)
    if fmt in ALLOWED_FORMATS and fmt in Image.OPEN:
        factory = Image.OPEN[fmt][0]
        try:
            with _OPEN_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                width, height = factory(io.BytesIO(data), "").size  # header only, no decode
            return _too_big(width, height, max_pixels)
        except DECODE_ERRORS:
            pass
    return f"exceeds max pixels (declared size > {max_pixels})"


def _unidentified_reason(data: bytes) -> str:
    fmt = sniff_format(data)
    if fmt is None:
        return R_NOT_IMAGE
    if fmt == "PNG":  # a PNG signature Pillow refused: a header chunk failed its CRC / is broken
        return R_PNG_CRC
    if fmt in ALLOWED_FORMATS:
        return R_CORRUPT
    hint = _FORMAT_HINTS.get(fmt, "convert it to JPEG or PNG")
    return f"format {fmt} not allowed (allowed: {', '.join(ALLOWED_FORMATS)}); {hint}"


def _note_extension(name: str, fmt: str, notes: list[str]) -> None:
    ext = Path(name).suffix.lower()
    expected = EXTENSION_FORMATS.get(ext)
    actual = "JPEG" if fmt == "MPO" else fmt
    if expected is not None and expected != actual:
        notes.append(f"extension {ext} but content is {fmt}")


def _frame_count(im: Image.Image, fmt: str, notes: list[str]) -> int:
    try:
        n = int(getattr(im, "n_frames", 1))
        if n > 1:
            im.seek(0)
    except DECODE_ERRORS:  # a broken later frame must not spoil frame 0
        notes.append("frame count unreadable; first frame used")
        return 1
    if n > 1:
        kind = "images (MPO)" if fmt == "MPO" else "pages" if fmt == "TIFF" else "frames"
        notes.append(f"{n} {kind}; first used")
    return n


def _orientation(im: Image.Image, notes: list[str]) -> int:
    value = im.getexif().get(0x0112)  # 274 = Orientation
    if value is None:
        return 1
    if not isinstance(value, int) or not 1 <= value <= 8:
        notes.append(f"invalid EXIF orientation {value!r} ignored")
        return 1
    if value != 1:
        notes.append(f"EXIF orientation {value} applied")
    return value


def _normalize(
    im: Image.Image, mode: str, bg: tuple[int, int, int], name: str, notes: list[str]
) -> Image.Image:
    """Module docstring, step 7. Returns a new image in ``mode``."""
    m = im.mode
    if m == "1":
        im = im.convert("L")  # 0 / 255
    elif m.startswith("I;16"):  # I;16, I;16L, I;16B, I;16N (numpy sees the right byte order)
        arr = np.asarray(im)
        if arr.dtype.kind != "u":  # I;16S (signed) and friends: not a plain 16-bit image
            raise DataError(name, f"unsupported pixel mode {m}")
        im = Image.fromarray((arr >> 8).astype(np.uint8))  # high byte: 65535 -> 255
        notes.append(f"{m} scaled to 8 bit (v >> 8)")
    elif m == "I":
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise DataError(
                name,
                f"32-bit integer pixels outside 0..65535 (min {lo}, max {hi}); save as 8 or 16 bit",
            )
        im = Image.fromarray((arr >> 8).astype(np.uint8))
        notes.append("I (32-bit int, 0..65535) scaled to 8 bit (v >> 8)")
    elif m == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise DataError(name, "float image has NaN/Inf pixels")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                name,
                f"float pixels outside [0, 1] (min {lo:g}, max {hi:g}); rescale or save as 8 bit",
            )
        im = Image.fromarray(np.rint(arr * 255.0).astype(np.uint8))
        notes.append("F (float 0..1) scaled to 8 bit round(255 v)")
    elif m in ("P", "PA"):
        im = im.convert("RGBA" if m == "PA" or "transparency" in im.info else "RGB")
    elif m in ("L", "RGB"):
        if "transparency" in im.info:  # tRNS colour key in grey/RGB PNGs
            im = im.convert("RGBA")
    elif m in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif m != "RGBA":  # CMYK (incl. Adobe YCCK JPEGs), YCbCr, HSV, RGBX, ...
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise DataError(name, f"unsupported pixel mode {m}") from e
        notes.append(f"{m} converted to RGB")
    if im.mode == "RGBA":
        canvas = Image.new("RGBA", im.size, (*bg, 255))
        im = Image.alpha_composite(canvas, im).convert("RGB")
        notes.append(f"transparency composited over background {bg}")
    if mode == "RGB" and im.mode != "RGB":
        im = im.convert("RGB")  # grey replicated to 3 channels
    elif mode == "L" and im.mode != "L":
        im = im.convert("L")  # ITU-R 601-2 luma
    return im
