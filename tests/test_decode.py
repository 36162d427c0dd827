"""The one decoding policy (cnnlab.data.decode) against bad-inputs.md sections B and C.

Every fixture is generated with Pillow/NumPy in memory or tmp_path. References are independent of
the code under test: NumPy formulas (luma, alpha compositing, ``>> 8``, EXIF rotations from the
EXIF spec), Pillow's own raw decode, or the pixels that were written.
"""

from __future__ import annotations

import errno
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

import cnnlab.data.decode as decode_mod
from cnnlab.data.decode import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    inspect_image,
    load_image,
    load_image_bytes,
    normalize_mode,
    pil_to_uint8,
    read_image_bytes,
    sniff_format,
)
from cnnlab.errors import ConfigError, DataError

# Which bad-inputs.md case each test covers: tests/bad_inputs_map.py (checked by
# tests/test_bad_inputs_map.py).


# ----------------------------------------------------------------------------- fixtures


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb_array(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    """Four flat colour blocks: survives JPEG and makes every rotation/flip distinguishable."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return a


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR width/height and fix its CRC: a tiny file, a huge declared size."""
    p = bytearray(png)
    i = png.index(b"IHDR")
    p[i + 4 : i + 12] = struct.pack(">II", width, height)
    p[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(p[i : i + 17])))
    return bytes(p)


@pytest.fixture
def jpeg_bytes() -> bytes:
    return encode(Image.fromarray(rgb_array(48, 64)), "JPEG", quality=90)


@pytest.fixture
def png_bytes() -> bytes:
    return encode(Image.fromarray(rgb_array()), "PNG")


def reason_of(data: bytes, name: str = "x.jpg", **kw) -> str:
    with pytest.raises(DataError) as info:
        decode_image(data, name, **kw)
    assert info.value.path == name  # the error always names the file
    return info.value.reason


# ----------------------------------------------------------------------------- B. file level


def test_case_11_zero_byte_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.jpg"
    f.write_bytes(b"")
    with pytest.raises(DataError, match="empty file") as info:
        load_image(f)
    assert info.value.path == str(f) and info.value.reason == "empty file"


def test_case_12_html_saved_as_jpg(tmp_path: Path) -> None:
    f = tmp_path / "photo.jpg"
    f.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(DataError) as info:
        load_image(f)
    assert info.value.reason == "not an image (cannot identify format)"
    assert str(f) in str(info.value)


def test_case_13_truncated_jpeg(tmp_path: Path, jpeg_bytes: bytes) -> None:
    cut = jpeg_bytes[: len(jpeg_bytes) * 2 // 3]
    # Pillow's verify() does not notice (why the policy needs a full decode) ...
    Image.open(io.BytesIO(cut)).verify()
    f = tmp_path / "cut.jpg"
    f.write_bytes(cut)
    # ... the full decode does.
    with pytest.raises(DataError) as info:
        load_image(f)
    assert info.value.reason == "truncated or corrupt image data"
    assert isinstance(info.value.__cause__, OSError)  # Pillow's own message is kept


def test_case_14_jpeg_with_bytes_after_eoi_is_accepted(jpeg_bytes: bytes) -> None:
    assert jpeg_bytes.endswith(b"\xff\xd9")
    padded = jpeg_bytes + b"\x00trailing garbage" * 20
    got = np.asarray(load_image_bytes(padded, "padded.jpg"))
    want = np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"))
    np.testing.assert_array_equal(got, want)


def test_case_15_truncated_png(png_bytes: bytes) -> None:
    assert reason_of(png_bytes[: len(png_bytes) // 2], "t.png") == "truncated or corrupt image data"


def test_case_15_png_bad_idat_crc(png_bytes: bytes) -> None:
    i = png_bytes.index(b"IDAT")
    (length,) = struct.unpack(">I", png_bytes[i - 4 : i])
    p = bytearray(png_bytes)
    p[i + 4 + length] ^= 0xFF  # first CRC byte of the IDAT chunk; the pixel data is intact
    # a plain load() does not check CRCs; verify() raises SyntaxError (reference behaviour)
    Image.open(io.BytesIO(bytes(p))).load()
    with pytest.raises(SyntaxError):
        Image.open(io.BytesIO(bytes(p))).verify()
    assert reason_of(bytes(p), "crc.png") == "CRC error / corrupt PNG"


def test_case_15_png_bad_header_crc(png_bytes: bytes) -> None:
    p = bytearray(png_bytes)
    i = png_bytes.index(b"IHDR")
    p[i + 17] ^= 0xFF  # IHDR CRC: Pillow refuses to identify the file at all
    assert reason_of(bytes(p), "hdr.png") == "CRC error / corrupt PNG"


def test_case_16_decompression_bomb_rejected_before_decoding(png_bytes: bytes) -> None:
    bomb = patch_png_size(png_bytes, 20000, 20000)  # 400 MP declared in a < 2 KB file
    assert len(bomb) < 4096
    reason = reason_of(bomb, "bomb.png")
    # no flag in the reason: predict uses the run's limit; commands with the option add the hint
    want = f"exceeds max pixels 20000×20000 > {DEFAULT_MAX_PIXELS}"
    assert reason == want
    # far beyond Pillow's own hard limit: still our message, with the declared size
    assert "200000×100000" in reason_of(patch_png_size(png_bytes, 200000, 100000), "b.png")


def test_case_17_between_pillow_warning_and_error_is_our_error(png_bytes: bytes) -> None:
    before = Image.MAX_IMAGE_PIXELS
    w, h = 10000, 10000  # 100 MP: Pillow alone would only *warn* (89.5 MP < 100 MP < 179 MP)
    assert Image.MAX_IMAGE_PIXELS < w * h < 2 * Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may leak out
        reason = reason_of(patch_png_size(png_bytes, w, h), "w.png")
    assert reason.startswith("exceeds max pixels 10000×10000")
    assert Image.MAX_IMAGE_PIXELS == before  # never changed globally


def test_case_18_huge_photo_names_the_option(png_bytes: bytes) -> None:
    reason = reason_of(patch_png_size(png_bytes, 12000, 9000), "huge.png")
    assert f"12000×9000 > {DEFAULT_MAX_PIXELS}" in reason  # the size and the limit it passed
    # the limit is configurable: a real 32x24 image against max_pixels just below / at its size
    assert "32×24 > 767" in reason_of(png_bytes, "s.png", max_pixels=32 * 24 - 1)
    assert decode_image(png_bytes, "s.png", max_pixels=32 * 24).image.size == (32, 24)
    with pytest.raises(ConfigError, match="max-image-pixels"):
        decode_image(png_bytes, "s.png", max_pixels=3 * Image.MAX_IMAGE_PIXELS)


def test_case_19_exotic_format_not_allowed(tmp_path: Path) -> None:
    ico = encode(Image.fromarray(rgb_array(16, 16)), "ICO")
    assert Image.open(io.BytesIO(ico)).format == "ICO"  # Pillow itself would parse it
    f = tmp_path / "icon.ico"
    f.write_bytes(ico)
    with pytest.raises(DataError, match=r"format ICO not allowed \(allowed: JPEG, PNG"):
        load_image(f)
    psd_header = b"8BPS\x00\x01" + b"\x00" * 40
    assert reason_of(psd_header, "a.psd").startswith("format PSD not allowed")


def test_case_20_heic_and_avif_report_format_and_hint() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32
    reason = reason_of(heic, "IMG_0001.HEIC")
    assert reason.startswith("format HEIC not allowed") and "pillow-heif" in reason
    if features.check("avif"):  # Pillow 13 can write AVIF: a real file, refused by the allow-list
        avif = encode(Image.fromarray(rgb_array(8, 8)), "AVIF")
        assert reason_of(avif, "a.avif").startswith("format AVIF not allowed")


def test_case_21_permission_denied_and_deleted(tmp_path: Path, monkeypatch, jpeg_bytes) -> None:
    f = tmp_path / "locked.jpg"
    f.write_bytes(jpeg_bytes)

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    # root ignores chmod 000, so the refusal is simulated where the module opens files
    monkeypatch.setattr(decode_mod, "open", denied, raising=False)
    with pytest.raises(DataError) as info:
        load_image(f)
    assert (info.value.path, info.value.reason) == (str(f), "unreadable: permission denied")
    monkeypatch.undo()
    f.unlink()  # deleted between scan and load
    with pytest.raises(DataError) as info:
        load_image(f)
    assert (info.value.path, info.value.reason) == (str(f), "file not found")


def test_case_22_transient_read_errors_are_retried(tmp_path: Path, monkeypatch, jpeg_bytes) -> None:
    f = tmp_path / "nfs.jpg"
    f.write_bytes(jpeg_bytes)
    calls = {"n": 0}
    real_open = open

    def flaky(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= fails:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(decode_mod, "open", flaky, raising=False)
    monkeypatch.setattr(decode_mod.time, "sleep", lambda s: None)
    fails = 2  # two failures, third attempt succeeds
    assert read_image_bytes(f) == jpeg_bytes and calls["n"] == 3
    calls["n"], fails = 0, 99
    with pytest.raises(DataError, match="Input/output error.*after 3 attempts"):
        load_image(f)
    assert calls["n"] == decode_mod.READ_RETRIES


# ----------------------------------------------------------------------------- C. pixel content

# EXIF orientation -> what a viewer shows, written from the EXIF 2.3 spec as NumPy operations.
EXIF_REFERENCE = {
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1, :],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # mirrored + rotated 270 CW = transpose
    6: lambda a: np.rot90(a, k=-1),  # stored rotated: display rotated 90 CW
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, k=1),  # display rotated 90 CCW
}


@pytest.mark.parametrize("orientation", sorted(EXIF_REFERENCE))
def test_case_23_exif_orientation_applied(orientation: int) -> None:
    a = rgb_array(6, 10, seed=orientation)  # lossless PNG: exact pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(a), "PNG", exif=exif)
    decoded = decode_image(data, "o.png")
    np.testing.assert_array_equal(np.asarray(decoded.image), EXIF_REFERENCE[orientation](a))
    assert decoded.info.exif_orientation == orientation


def test_case_23_exif_orientation_6_jpeg() -> None:
    a = quadrants(32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(a), "JPEG", exif=exif, quality=95)
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # as stored, 48 wide
    got = load_image_bytes(data, "o6.jpg")
    assert raw.shape == (32, 48, 3) and got.size == (32, 48)  # (W, H): now portrait
    np.testing.assert_array_equal(np.asarray(got), np.rot90(raw, k=-1))
    # red (stored top-left) is now top-right
    assert tuple(np.asarray(got)[2, 29]) == pytest.approx((255, 0, 0), abs=8)


def test_case_24_grayscale_l_and_la() -> None:
    g = rgb_array()[:, :, 0]
    data = encode(Image.fromarray(g), "PNG")
    rgb = np.asarray(load_image_bytes(data, "g.png"))
    assert rgb.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], g)  # grey replicated to 3 channels
    np.testing.assert_array_equal(np.asarray(load_image_bytes(data, "g.png", mode="L")), g)

    alpha = rgb_array(seed=1)[:, :, 0]
    la = encode(Image.fromarray(np.dstack([g, alpha])), "PNG")
    assert Image.open(io.BytesIO(la)).mode == "LA"
    got = np.asarray(load_image_bytes(la, "la.png", mode="L")).astype(int)
    want = np.rint((g * alpha.astype(float) + 255 * (255 - alpha.astype(float))) / 255)
    assert np.abs(got - want).max() <= 1  # composited over white


def test_case_24_l_output_is_itu_601_luma() -> None:
    a = rgb_array()
    got = np.asarray(load_image_bytes(encode(Image.fromarray(a), "PNG"), "c.png", mode="L"))
    r, g, b = (a[:, :, i].astype(float) for i in range(3))
    want = np.rint((299 * r + 587 * g + 114 * b) / 1000)
    assert got.dtype == np.uint8 and np.abs(got - want).max() <= 1


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_case_25_rgba_composited_on_background(background) -> None:
    rgb, alpha = rgb_array(seed=2), rgb_array(seed=3)[:, :, 0]
    alpha[0, 0], alpha[0, 1] = 0, 255
    data = encode(Image.fromarray(np.dstack([rgb, alpha])), "PNG")
    got = np.asarray(load_image_bytes(data, "a.png", background=background)).astype(float)
    a = alpha[:, :, None].astype(float)
    want = np.rint((rgb * a + np.array(background, float) * (255 - a)) / 255)
    assert np.abs(got - want).max() <= 1
    np.testing.assert_array_equal(got[0, 0], background)  # fully transparent -> background
    np.testing.assert_array_equal(got[0, 1], rgb[0, 1])  # opaque -> unchanged


def test_case_25_palette_with_transparency() -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    p = Image.fromarray(idx, mode="L").convert("P")
    p.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    data = encode(p, "PNG", transparency=1)  # palette entry 1 is fully transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    got = np.asarray(load_image_bytes(data, "p.png"))
    want = np.array([[10, 20, 30], [255, 255, 255], [0, 255, 0]], np.uint8)[idx]
    np.testing.assert_array_equal(got, want)
    black = np.asarray(load_image_bytes(data, "p.png", background=(0, 0, 0)))
    np.testing.assert_array_equal(black[idx == 1], 0)


def test_case_26_cmyk_jpeg() -> None:
    a = quadrants()
    data = encode(Image.fromarray(a).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    got = load_image_bytes(data, "cmyk.jpg")
    assert got.mode == "RGB"
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # Pillow's conversion
    np.testing.assert_array_equal(np.asarray(got), want)
    # and it is the original picture again (block centres, JPEG tolerance)
    for y, x in [(8, 12), (8, 36), (24, 12), (24, 36)]:
        assert np.abs(np.asarray(got)[y, x].astype(int) - a[y, x]).max() <= 12


@pytest.mark.parametrize("fmt,dtype", [("PNG", "<u2"), ("TIFF", ">u2"), ("TIFF", "<u2")])
def test_case_27_16bit_scaled_not_saturated(fmt: str, dtype: str) -> None:
    v = np.array([[0, 255, 256, 4660, 32768, 65535]], dtype=dtype)
    data = encode(Image.fromarray(v), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    got = np.asarray(load_image_bytes(data, "d." + fmt.lower(), mode="L"))
    np.testing.assert_array_equal(got, (v.astype(np.uint32) >> 8).astype(np.uint8))
    np.testing.assert_array_equal(got[0], [0, 0, 1, 18, 128, 255])
    # what the policy avoids: Pillow's plain convert clips everything >= 255 to white
    plain = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert plain[0, 3] == 255 != got[0, 3]
    rgb = np.asarray(load_image_bytes(data, "d.png"))
    np.testing.assert_array_equal(rgb[:, :, 1], got)


def test_case_28_float_images() -> None:
    ok = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    got = np.asarray(load_image_bytes(encode(Image.fromarray(ok), "TIFF"), "f.tif", mode="L"))
    np.testing.assert_array_equal(got, np.rint(ok * 255).astype(np.uint8))
    nan = np.array([[0.0, np.nan]], np.float32)
    assert "NaN/Inf" in reason_of(encode(Image.fromarray(nan), "TIFF"), "nan.tif")
    inf = np.array([[0.0, np.inf]], np.float32)
    assert "NaN/Inf" in reason_of(encode(Image.fromarray(inf), "TIFF"), "inf.tif")
    big = np.array([[0.0, 200.0]], np.float32)
    assert "outside [0, 1]" in reason_of(encode(Image.fromarray(big), "TIFF"), "big.tif")


def test_case_28_int32_images() -> None:
    ok = np.array([[0, 256, 65535]], np.int32)
    got = np.asarray(load_image_bytes(encode(Image.fromarray(ok), "TIFF"), "i.tif", mode="L"))
    np.testing.assert_array_equal(got, [[0, 1, 255]])
    bad = np.array([[-5, 70000]], np.int32)
    assert "outside 0..65535" in reason_of(encode(Image.fromarray(bad), "TIFF"), "i.tif")


def test_case_29_animated_gif_first_frame(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (8, 6), c) for c in colours]
    f = tmp_path / "anim.gif"
    frames[0].save(f, save_all=True, append_images=frames[1:], duration=50, loop=0)
    np.testing.assert_array_equal(np.asarray(load_image(f))[0, 0], colours[0])
    info = inspect_image(f)
    assert info.n_frames == 3 and info.format == "GIF"
    assert "3 frames; first used" in info.notes


def test_case_29_multipage_tiff_first_page() -> None:
    pages = [Image.new("RGB", (5, 4), (v, v, v)) for v in (10, 200)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    d = decode_image(data, "p.tif")
    assert d.info.n_frames == 2 and "2 pages; first used" in d.info.notes
    assert np.asarray(d.image).max() == 10


def test_case_30_tiny_image_accepted() -> None:
    d = decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), "dot.png")
    assert d.image.size == (1, 1) and np.asarray(d.image)[0, 0].tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- API details


def test_bilevel_and_extension_mismatch_note(png_bytes: bytes) -> None:
    bits = np.array([[0, 1, 1, 0]], bool)
    got = np.asarray(load_image_bytes(encode(Image.fromarray(bits), "PNG"), "b.png", mode="L"))
    np.testing.assert_array_equal(got, [[0, 255, 255, 0]])
    d = decode_image(png_bytes, "really_a_png.JPG")  # case 6: accepted, noted
    assert d.info.format == "PNG" and "extension .jpg but content is PNG" in d.info.notes


def test_bytes_file_object_and_path_agree(tmp_path: Path, jpeg_bytes: bytes) -> None:
    f = tmp_path / "a.jpeg"
    f.write_bytes(jpeg_bytes)
    from_path = np.asarray(load_image(f))
    np.testing.assert_array_equal(np.asarray(load_image_bytes(jpeg_bytes, "u")), from_path)
    np.testing.assert_array_equal(np.asarray(load_image_bytes(io.BytesIO(jpeg_bytes))), from_path)
    info = inspect_image(f)
    import hashlib

    assert info.sha256 == hashlib.sha256(jpeg_bytes).hexdigest()
    assert (info.width, info.height, info.format, info.mode) == (64, 48, "JPEG", "RGB")


def test_pil_to_uint8_and_normalize_mode() -> None:
    a = rgb_array()
    arr = pil_to_uint8(Image.fromarray(a), "RGB")
    assert arr.shape == (24, 32, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, a)
    grey = pil_to_uint8(Image.fromarray(a), "L")
    assert grey.shape == (24, 32, 1)
    np.testing.assert_array_equal(grey[:, :, 0], np.asarray(Image.fromarray(a).convert("L")))
    i16 = Image.fromarray(np.array([[65535, 512]], np.uint16))
    np.testing.assert_array_equal(normalize_mode(i16, "L"), [[255, 2]])


def test_bad_options_are_config_errors(png_bytes: bytes) -> None:
    with pytest.raises(ConfigError, match="mode"):
        decode_image(png_bytes, "a.png", mode="RGBA")
    with pytest.raises(ConfigError, match="background"):
        decode_image(png_bytes, "a.png", background=(0, 0, 300))


def test_sniff_format_table() -> None:
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"P6\n3 2\n255\n") == "PPM"
    assert sniff_format(b"<?xml version='1.0'?><svg xmlns='x'/>") == "SVG"
    assert sniff_format(b"hello") is None


# ----------------------------------------------------------------------------- fuzz


_FUZZ_BASES = {
    "jpg": encode(Image.fromarray(quadrants(16, 24)), "JPEG", quality=80),
    "png": encode(Image.fromarray(rgb_array(12, 10)), "PNG"),
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(_FUZZ_BASES)),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
    insert=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.binary(max_size=16))),
)
def test_fuzz_mutated_bytes_decode_or_data_error(kind, edits, cut, insert) -> None:
    data = bytearray(_FUZZ_BASES[kind])
    for pos, byte in edits:
        data[pos % len(data)] = byte
    if insert is not None:
        pos, blob = insert
        data[pos % len(data) : pos % len(data)] = blob
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    name = f"fuzz.{kind}"
    try:
        d = decode_image(bytes(data), name, max_pixels=1_000_000)
    except DataError as e:  # the only allowed failure, always naming the file
        assert e.path == name and e.reason
        return
    assert d.image.mode == "RGB" and d.image.width * d.image.height <= 1_000_000
    assert np.asarray(d.image).dtype == np.uint8
