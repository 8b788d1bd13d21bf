"""vlm_ros.core.images: raw and compressed decoding, validation, bomb refusal, property tests."""

from __future__ import annotations

import array
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_ros.core.images import (
    COLOR_ENCODINGS,
    ImageDecodeError,
    bytes_per_pixel,
    decode_compressed,
    decode_compressed_depth,
    decode_depth,
    decode_image,
    encode_depth,
    encode_image,
)

RNG = np.random.default_rng(0)


def _rgb(h: int = 6, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pad_rows(rows: np.ndarray, pad: int, fill: int = 0xAB) -> tuple[bytes, int]:
    """(data, step) of (H, row_bytes) uint8 rows with ``pad`` junk bytes after each row."""
    h, row_bytes = rows.shape
    out = np.full((h, row_bytes + pad), fill, np.uint8)
    out[:, :row_bytes] = rows
    return out.tobytes(), row_bytes + pad


# ------------------------------------------------------------------------------------------------
# raw colour images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_round_trip(encoding: str) -> None:
    rgb = _rgb()
    data, step = encode_image(rgb, encoding)
    assert step == 8 * bytes_per_pixel(encoding)
    out = decode_image(encoding, 8, 6, step, data)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_bgr_channel_order_is_swapped() -> None:
    data = bytes([10, 20, 30])  # one bgr8 pixel: B=10 G=20 R=30
    np.testing.assert_array_equal(decode_image("bgr8", 1, 1, 3, data)[0, 0], [30, 20, 10])
    np.testing.assert_array_equal(decode_image("rgb8", 1, 1, 3, data)[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(decode_image("bgra8", 1, 1, 4, data + b"\x07")[0, 0], [30, 20, 10])


def test_mono8_replicated() -> None:
    rgb = _rgb()
    data, step = encode_image(rgb, "mono8")
    grey = np.frombuffer(data, np.uint8).reshape(6, 8)
    np.testing.assert_array_equal(grey, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    out = decode_image("mono8", 8, 6, step, data)
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding,channels", [("mono16", 1), ("rgb16", 3), ("bgr16", 3), ("rgba16", 4), ("bgra16", 4)])
def test_16bit_scaled_to_8bit(encoding: str, channels: int, bigendian: bool) -> None:
    raw = RNG.integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    raw[0, 0] = 65535
    raw[0, 1] = 255  # high byte 0: must not wrap or round up
    data = raw.astype(">u2" if bigendian else "<u2").tobytes()
    out = decode_image(encoding, 7, 5, 7 * channels * 2, data, is_bigendian=bigendian)
    high = (raw >> 8).astype(np.uint8)
    if channels == 1:
        expected = np.repeat(high, 3, axis=2)
    elif encoding.startswith("rgb"):
        expected = high[:, :, :3]
    else:
        expected = high[:, :, 2::-1]
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0, 0] == 255 and out[0, 1, 0] == 0


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "mono8", "mono16", "bayer_rggb8", "yuv422"])
def test_row_padding_is_skipped(encoding: str) -> None:
    w, h = 6, 4
    row_bytes = w * bytes_per_pixel(encoding)
    rows = RNG.integers(0, 256, (h, row_bytes), dtype=np.uint8)
    tight = decode_image(encoding, w, h, row_bytes, rows.tobytes())
    data, step = _pad_rows(rows, pad=5)
    padded = decode_image(encoding, w, h, step, data)
    np.testing.assert_array_equal(padded, tight)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "bgra8"])
def test_output_owns_memory_and_input_is_untouched(encoding: str) -> None:
    rgb = _rgb()
    data, step = encode_image(rgb, encoding)
    buf = bytearray(data)
    out = decode_image(encoding, 8, 6, step, buf)
    assert out.flags.owndata and out.flags.writeable and out.flags.c_contiguous
    out[:] = 0
    assert bytes(buf) == data


@pytest.mark.parametrize("container", [bytes, bytearray, memoryview, lambda b: array.array("B", b),
                                       lambda b: np.frombuffer(b, np.uint8)])
def test_accepts_message_buffer_types(container) -> None:
    # rclpy gives uint8[] fields as array.array('B'); bags give bytes; tests give numpy arrays
    rgb = _rgb()
    data, step = encode_image(rgb, "rgb8")
    np.testing.assert_array_equal(decode_image("rgb8", 8, 6, step, container(data)), rgb)


def test_encoding_names_are_case_insensitive() -> None:
    data, step = encode_image(_rgb(), "rgb8")
    np.testing.assert_array_equal(decode_image(" RGB8 ", 8, 6, step, data), decode_image("rgb8", 8, 6, step, data))


# ------------------------------------------------------------------------------------------------
# Bayer and YUV

COLOUR = (200, 100, 30)  # R, G, B: all different, so any swapped pattern shows


def _mosaic(pattern: str, h: int = 8, w: int = 10, rgb=COLOUR, scale: int = 1) -> np.ndarray:
    """(H, W) mosaic of a uniform colour under a ROS-named 2x2 pattern (read row-major)."""
    value = {"r": rgb[0] * scale, "g": rgb[1] * scale, "b": rgb[2] * scale}
    m = np.zeros((h, w), np.uint16 if scale > 1 else np.uint8)
    for dy in range(2):
        for dx in range(2):
            m[dy::2, dx::2] = value[pattern[dy * 2 + dx]]
    return m


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_colours(pattern: str) -> None:
    mosaic = _mosaic(pattern)
    out = decode_image(f"bayer_{pattern}8", 10, 8, 10, mosaic.tobytes())
    assert out.shape == (8, 10, 3)
    np.testing.assert_array_equal(out[2:-2, 2:-2], np.broadcast_to(COLOUR, (4, 6, 3)))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pattern", ["rggb", "gbrg"])
def test_bayer16_colours(pattern: str, bigendian: bool) -> None:
    mosaic = _mosaic(pattern, scale=256)  # 16-bit values whose high byte is COLOUR
    data = mosaic.astype(">u2" if bigendian else "<u2").tobytes()
    out = decode_image(f"bayer_{pattern}16", 10, 8, 20, data, is_bigendian=bigendian)
    np.testing.assert_array_equal(out[2:-2, 2:-2], np.broadcast_to(COLOUR, (4, 6, 3)))


def test_bayer_too_small_is_an_error() -> None:
    with pytest.raises(ImageDecodeError):
        decode_image("bayer_rggb8", 1, 1, 1, b"\x00")


@pytest.mark.parametrize("encoding,order",
                         [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")])
def test_yuv422_uniform_colour(encoding: str, order: str) -> None:
    y, u, v = 120, 90, 170
    # ITU-R BT.601 limited range ("video" YUV, Y in 16..235), the convention of 4:2:2 camera streams
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    expected = np.array([c + 1.596 * e, c - 0.813 * e - 0.391 * d, c + 2.018 * d])
    quad = {"uyvy": [u, y, v, y], "yuyv": [y, u, y, v]}[order]
    data = bytes(quad * (4 // 2) * 3)  # width 4, height 3: two quads per row
    out = decode_image(encoding, 4, 3, 8, data)
    assert np.abs(out - expected).max() <= 1.5


def test_yuv422_odd_width_is_an_error() -> None:
    with pytest.raises(ImageDecodeError, match="even width"):
        decode_image("yuv422", 3, 1, 6, bytes(6))


# ------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"width": 0}, "positive"),
        ({"height": 0}, "positive"),
        ({"width": -4}, "positive"),
        ({"step": 23}, "step"),
        ({"data": bytes(24 * 6 - 1)}, "bytes"),
        ({"data": bytes(24 * 6 + 1)}, "bytes"),
        ({"data": b""}, "bytes"),
        ({"encoding": "rgb9"}, "unsupported encoding"),
        ({"encoding": ""}, "unsupported encoding"),
        ({"encoding": "32FC1", "step": 32, "data": bytes(192)}, "decode_depth"),
        ({"width": 8.0}, "integer"),
        ({"step": "24"}, "integer"),
        ({"width": True}, "integer"),
        ({"data": "x" * 144}, "bytes-like"),
        ({"data": [0] * 144}, "bytes-like"),
        ({"data": np.zeros((6, 48), np.uint8)[:, ::2]}, "contiguous"),
        ({"encoding": None}, "string"),
    ],
)
def test_invalid_fields_are_refused(kwargs: dict, match: str) -> None:
    args = {"encoding": "rgb8", "width": 8, "height": 6, "step": 24, "data": bytes(24 * 6)}
    args.update(kwargs)
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(**args)


def test_pixel_limit() -> None:
    with pytest.raises(ImageDecodeError, match="exceeds"):
        decode_image("mono8", 100, 100, 100, bytes(10_000), max_pixels=9_999)
    assert decode_image("mono8", 100, 100, 100, bytes(10_000), max_pixels=10_000).shape == (100, 100, 3)
    # a huge declared size is refused before the data length is even looked at
    with pytest.raises(ImageDecodeError, match="exceeds"):
        decode_image("rgb8", 1 << 20, 1 << 20, 3 << 20, b"")


def test_error_type_is_a_value_error() -> None:
    assert issubclass(ImageDecodeError, ValueError)


# ------------------------------------------------------------------------------------------------
# raw depth


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_16uc1_millimetres(encoding: str, bigendian: bool) -> None:
    mm = np.array([[0, 1, 1000], [1500, 65535, 0]], np.uint16)
    data = mm.astype(">u2" if bigendian else "<u2").tobytes()
    out = decode_depth(encoding, 3, 2, 6, data, is_bigendian=bigendian)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    expected = np.array([[np.nan, 0.001, 1.0], [1.5, 65.535, np.nan]], np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_32fc1_invalid_values_are_nan(bigendian: bool) -> None:
    metres = np.array([[0.0, np.nan, np.inf], [-np.inf, -1.0, 2.25]], np.float32)
    data = metres.astype(">f4" if bigendian else "<f4").tobytes()
    out = decode_depth("32FC1", 3, 2, 12, data, is_bigendian=bigendian)
    assert out.dtype == np.float32 and out.dtype.isnative
    assert np.isnan(out.ravel()[:5]).all() and out[1, 2] == np.float32(2.25)


def test_depth_padding_and_round_trips() -> None:
    depth = RNG.uniform(0.2, 5.0, (4, 5))
    depth[0, 0] = np.nan
    depth[1, 1] = 0.0
    d16, s16 = encode_depth(depth, "16UC1")
    assert s16 == 10
    out16 = decode_depth("16UC1", 5, 4, s16, d16)
    np.testing.assert_allclose(out16, np.where(depth > 0, depth, np.nan), atol=5e-4, equal_nan=True)
    d32, s32 = encode_depth(depth, "32FC1")
    out32 = decode_depth("32FC1", 5, 4, s32, d32)
    np.testing.assert_allclose(out32, np.where(depth > 0, depth, np.nan), rtol=1e-6, equal_nan=True)
    padded, step = _pad_rows(np.frombuffer(d32, np.uint8).reshape(4, 20), pad=3)
    np.testing.assert_array_equal(decode_depth("32FC1", 5, 4, step, padded), out32)


def test_encode_depth_16uc1_out_of_range_is_no_return() -> None:
    data, _ = encode_depth(np.array([[70.0, -1.0, 65.535]]), "16UC1")
    assert np.frombuffer(data, "<u2").tolist() == [0, 0, 65535]


def test_depth_refuses_colour_encodings() -> None:
    with pytest.raises(ImageDecodeError, match="depth encoding"):
        decode_depth("rgb8", 1, 1, 3, bytes(3))


# ------------------------------------------------------------------------------------------------
# compressed images


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _jpeg(bgr: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed bgr8", "", "jpeg"])  # magic bytes decide
def test_png_round_trip(fmt: str) -> None:
    rgb = _rgb(9, 11)
    out = decode_compressed(fmt, _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.owndata and out.flags.writeable


def test_jpeg_round_trip_colours() -> None:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16] = (220, 30, 30)
    rgb[:, 16:32] = (30, 220, 30)
    rgb[:, 32:] = (30, 30, 220)
    out = decode_compressed("bgr8; jpeg compressed bgr8", _jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    assert out.shape == (32, 48, 3)
    # block centres, away from chroma-subsampling edges
    for x in (8, 24, 40):
        assert np.abs(out[16, x].astype(int) - rgb[16, x].astype(int)).max() <= 12


def test_grey_and_alpha_png_become_rgb() -> None:
    grey = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(decode_compressed("png", _png(grey)), np.repeat(grey[:, :, None], 3, axis=2))
    bgra = np.dstack([_rgb(5, 6), np.full((5, 6), 128, np.uint8)])
    np.testing.assert_array_equal(decode_compressed("png", _png(bgra)), bgra[:, :, 2::-1])


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"hello world, not an image", "neither PNG nor JPEG"),
        (b"\x89PNG\r\n\x1a\n", "truncated"),
        (b"\xff\xd8\xff", "JPEG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00", "JPEG"),
    ],
)
def test_compressed_garbage_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        decode_compressed("jpeg", data)


@pytest.mark.parametrize("encoder", [_png, _jpeg])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_compressed_is_refused(encoder, keep: float) -> None:
    data = encoder(_rgb(64, 64))
    with pytest.raises(ImageDecodeError):
        decode_compressed("", data[: int(len(data) * keep)])


def test_corrupt_png_body_is_refused() -> None:
    data = bytearray(_png(_rgb(32, 32)))
    data[60:200] = bytes(140)  # wipe the middle of the IDAT stream
    with pytest.raises(ImageDecodeError):
        decode_compressed("png", bytes(data))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(bytes(1024))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bomb_jpeg(width: int, height: int) -> bytes:
    sof = struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes([1, 0x11, 0])  # baseline, 1 component
    sos = struct.pack(">HB", 8, 1) + bytes([1, 0, 0, 63, 0])
    return b"\xff\xd8" + b"\xff\xc0" + sof + b"\xff\xda" + sos + b"\x00" * 16 + b"\xff\xd9"


@pytest.mark.parametrize("maker", [_bomb_png, _bomb_jpeg])
def test_decompression_bomb_refused_from_header(maker) -> None:
    data = maker(60_000, 60_000) if maker is _bomb_jpeg else maker(100_000, 100_000)
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_compressed("png", data)
    # decoding 100000x100000 (30 GB) would take far longer than this, or fail to allocate
    assert time.perf_counter() - t0 < 0.5


def test_header_limit_applies_to_real_images() -> None:
    data = _png(_rgb(10, 10))
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_compressed("png", data, max_pixels=99)
    assert decode_compressed("png", data, max_pixels=100).shape == (10, 10, 3)


def test_png_header_reads_declared_size() -> None:
    with pytest.raises(ImageDecodeError, match="7x3"):  # the size in the message comes from IHDR
        decode_compressed("png", _bomb_png(7, 3), max_pixels=20)


# ------------------------------------------------------------------------------------------------
# compressed depth


def test_png_16uc1_depth() -> None:
    mm = np.array([[0, 500, 1234], [65535, 1, 0]], np.uint16)
    out = decode_compressed_depth("16UC1; png compressed ", _png(mm))
    np.testing.assert_allclose(out, np.array([[np.nan, 0.5, 1.234], [65.535, 0.001, np.nan]]), rtol=1e-6,
                               equal_nan=True)


def test_compressed_depth_16uc1_with_header() -> None:
    mm = RNG.integers(0, 8000, (6, 7), dtype=np.uint16)
    header = struct.pack("<iff", 0, 0.0, 0.0)
    out = decode_compressed_depth("16UC1; compressedDepth png", header + _png(mm))
    np.testing.assert_allclose(out, np.where(mm > 0, mm / 1000.0, np.nan), rtol=1e-6, equal_nan=True)


def test_compressed_depth_32fc1_inverse_quantisation() -> None:
    # compressed_depth_image_transport's encoder with its defaults depth_quantization=100, depth_max=10
    z0, depth_max = 100.0, 10.0
    qa = np.float32(z0 * (z0 + 1.0))
    qb = np.float32(1.0 - qa / depth_max)
    depth = RNG.uniform(0.3, 9.5, (5, 8)).astype(np.float32)
    depth[0, 0] = np.nan  # no return
    with np.errstate(invalid="ignore"):
        inv = np.where(depth < depth_max, qa / depth + qb, 0).astype(np.uint16)  # C++ float -> ushort truncates
    header = struct.pack("<iff", 0, float(qa), float(qb))
    out = decode_compressed_depth("32FC1; compressedDepth png", header + _png(inv))
    assert np.isnan(out[0, 0])
    tol = depth.astype(np.float64) ** 2 / qa + 1e-4  # one quantisation step of inverse depth
    assert (np.abs(out - depth)[1:] <= tol[1:]).all() and (np.abs(out - depth)[0, 1:] <= tol[0, 1:]).all()


@pytest.mark.parametrize(
    "fmt,data,match",
    [
        ("16UC1; compressedDepth rvl", struct.pack("<iff", 0, 0, 0) + bytes(20), "RVL"),
        ("16UC1; compressedDepth png", b"\x00" * 8, "shorter"),
        ("16UC1; png compressed", None, "PNG"),  # a JPEG payload
        ("16UC1; png compressed", "8bit", "16-bit"),
        ("rgb8; jpeg compressed bgr8", None, "unsupported"),
    ],
)
def test_compressed_depth_refusals(fmt: str, data, match: str) -> None:
    if data is None:
        data = _jpeg(_rgb(8, 8))
    elif data == "8bit":
        data = _png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageDecodeError, match=match):
        decode_compressed_depth(fmt, data)


def test_compressed_depth_bomb_refused() -> None:
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_compressed_depth("16UC1; compressedDepth png",
                                struct.pack("<iff", 0, 0, 0) + _bomb_png(100_000, 100_000))


def test_decode_compressed_points_compressed_depth_elsewhere() -> None:
    with pytest.raises(ImageDecodeError, match="decode_compressed_depth"):
        decode_compressed("16UC1; compressedDepth png",
                          struct.pack("<iff", 0, 0, 0) + _png(np.zeros((2, 2), np.uint16)))


# ------------------------------------------------------------------------------------------------
# property tests: exactly the declared shape, or ImageDecodeError, never anything else

KNOWN = sorted(COLOR_ENCODINGS) + ["16UC1", "32FC1", "mono16"]
encodings = st.one_of(st.sampled_from(KNOWN), st.sampled_from([e.upper() for e in KNOWN]), st.text(max_size=12))
sizes = st.one_of(st.integers(-3, 9), st.integers(-(2**40), 2**40), st.sampled_from([2**31 - 1, 2**32, 2**63]))


@st.composite
def image_fields(draw):
    if draw(st.integers(0, 3)):  # mostly consistent fields with small perturbations, so decoding runs
        encoding = draw(st.sampled_from(KNOWN + [e.upper() for e in KNOWN]))
        width, height = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        step = width * bytes_per_pixel(encoding) + draw(st.sampled_from([0, 0, 0, 3, -1]))
        length = step * height + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
    else:  # anything
        encoding, width, height, step = draw(encodings), draw(sizes), draw(sizes), draw(sizes)
        length = draw(st.integers(0, 200))
    length = max(0, length)
    data = draw(st.binary(min_size=length, max_size=length))
    return encoding, width, height, step, data, draw(st.booleans())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_fields())
def test_property_decode_image(fields) -> None:
    encoding, width, height, step, data, bigendian = fields
    try:
        out = decode_image(encoding, width, height, step, data, bigendian)
    except ImageDecodeError:
        return
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_fields())
def test_property_decode_depth(fields) -> None:
    encoding, width, height, step, data, bigendian = fields
    try:
        out = decode_depth(encoding, width, height, step, data, bigendian)
    except ImageDecodeError:
        return
    assert out.shape == (height, width) and out.dtype == np.float32
    assert not np.isinf(out).any() and not (out <= 0).any()


_VALID = [_png(_rgb(5, 7)), _jpeg(_rgb(5, 7)), _png(np.arange(35, dtype=np.uint16).reshape(5, 7))]


@st.composite
def compressed_payloads(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(_VALID)))
    for _ in range(draw(st.integers(0, 4))):  # flip, cut or splice bytes of a valid file
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["png", "jpeg", "", "16UC1; png compressed", "32FC1; compressedDepth png"]),
       compressed_payloads())
def test_property_decode_compressed(fmt: str, data: bytes) -> None:
    try:
        out = decode_compressed(fmt, data, max_pixels=10_000)
    except ImageDecodeError:
        pass
    else:
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8 and out.shape[0] * out.shape[1] <= 10_000
    try:
        depth = decode_compressed_depth(fmt, data, max_pixels=10_000)
    except ImageDecodeError:
        pass
    else:
        assert depth.ndim == 2 and depth.dtype == np.float32 and not np.isinf(depth).any()
