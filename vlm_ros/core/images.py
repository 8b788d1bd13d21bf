"""Decode sensor_msgs/Image and sensor_msgs/CompressedImage payloads without ROS.

The node hands over the plain message fields; every function here returns a fresh numpy array that owns
its memory (never a view into the message buffer) or raises :class:`ImageDecodeError`. Nothing else
escapes: the inputs are untrusted (a bag, another robot, a misconfigured driver).

Conventions:
- colour output: (H, W, 3) uint8 RGB.
- depth output: (H, W) float32 metres, NaN where invalid (REP 118: 16UC1 in millimetres with 0 = no
  return; 32FC1 in metres with NaN = no return; we also map 0, negatives and +/-inf to NaN).
"""

from __future__ import annotations

import operator
import struct

import cv2
import numpy as np

__all__ = [
    "ImageDecodeError",
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "decode_image",
    "decode_depth",
    "decode_compressed",
    "decode_compressed_depth",
    "encode_image",
    "encode_compressed",
    "encode_depth",
    "bytes_per_pixel",
]

DEFAULT_MAX_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """The payload cannot be decoded into an image; the message says why."""


# encoding -> (channels, bytes per channel). Names as in sensor_msgs/image_encodings.hpp.
_LAYOUT: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
    "rgba16": (4, 2),
    "bgra16": (4, 2),
    "mono16": (1, 2),
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
    "bayer_rggb16": (1, 2),
    "bayer_bggr16": (1, 2),
    "bayer_gbrg16": (1, 2),
    "bayer_grbg16": (1, 2),
    # 4:2:2 packed YUV, 2 bytes per pixel. ROS "yuv422" is UYVY; "yuv422_yuy2" is YUYV.
    "yuv422": (2, 1),
    "uyvy": (2, 1),
    "yuv422_yuy2": (2, 1),
    "yuyv": (2, 1),
    # depth
    "16uc1": (1, 2),
    "32fc1": (1, 4),
}

COLOR_ENCODINGS: frozenset[str] = frozenset(k for k in _LAYOUT if k not in ("16uc1", "32fc1"))
DEPTH_ENCODINGS: frozenset[str] = frozenset({"16uc1", "mono16", "32fc1"})

# ROS names a Bayer pattern by its top-left 2x2 block read row-major (rggb = R G / G B). OpenCV names it
# by the 2x2 block starting at the second row and second column, so ROS rggb is OpenCV "BG". Checked with
# a synthetic mosaic of known colour (test_images.py::test_bayer_colours); OpenCV >= 4.x also has aliases
# COLOR_BayerRGGB2RGB == COLOR_BayerBG2RGB that agree with this table.
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}

# plain channel layouts -> OpenCV conversion to RGB (8-bit; 16-bit is reduced to 8-bit first)
_TO_RGB = {
    "mono8": cv2.COLOR_GRAY2RGB,
    "mono16": cv2.COLOR_GRAY2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "rgba16": cv2.COLOR_RGBA2RGB,
    "bgr8": cv2.COLOR_BGR2RGB,
    "bgr16": cv2.COLOR_BGR2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "bgra16": cv2.COLOR_BGRA2RGB,
}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_COMPRESSED_DEPTH_HEADER = 12  # compressed_depth_image_transport ConfigHeader: int32 format + 2 x float32


def bytes_per_pixel(encoding: str) -> int:
    """Bytes per pixel of a known encoding (case-insensitive); ImageDecodeError if unknown."""
    channels, depth = _layout(encoding)
    return channels * depth


# ------------------------------------------------------------------------------------------------
# validation helpers


def _norm_encoding(encoding: object) -> str:
    if not isinstance(encoding, str):
        raise ImageDecodeError(f"encoding must be a string, got {type(encoding).__name__}")
    return encoding.strip().lower()


def _layout(encoding: object) -> tuple[int, int]:
    enc = _norm_encoding(encoding)
    try:
        return _LAYOUT[enc]
    except KeyError:
        raise ImageDecodeError(f"unsupported encoding {encoding!r}") from None


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ImageDecodeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ImageDecodeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _as_bytes(data: object) -> np.ndarray:
    """A flat read-only uint8 view of any C-contiguous buffer (bytes, bytearray, array.array, ndarray)."""
    if isinstance(data, str) or (isinstance(data, np.ndarray) and data.dtype.hasobject):
        raise ImageDecodeError("data must be bytes-like, got str or an object array")
    try:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError) as exc:
        raise ImageDecodeError(f"data must be a C-contiguous bytes-like object ({exc})") from None
    return np.frombuffer(view, dtype=np.uint8)


def _check_size(width: object, height: object, max_pixels: int) -> tuple[int, int]:
    w = _as_int("width", width)
    h = _as_int("height", height)
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"image size must be positive, got {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
    return w, h


def _raw_view(
    encoding: object, width: object, height: object, step: object, data: object, is_bigendian: bool, max_pixels: int
) -> tuple[str, np.ndarray]:
    """Validate a raw Image and return (encoding, (H, W, C) view) with no copy.

    The view has the encoding's channel type (uint8, uint16 or float32, byte order from is_bigendian)
    and skips row padding.
    """
    enc = _norm_encoding(encoding)
    channels, depth = _layout(enc)
    w, h = _check_size(width, height, max_pixels)
    s = _as_int("step", step)
    row_bytes = w * channels * depth
    if s < row_bytes:
        raise ImageDecodeError(f"step {s} is shorter than a row of {w} {enc} pixels ({row_bytes} bytes)")
    buf = _as_bytes(data)
    if buf.size != s * h:
        raise ImageDecodeError(f"data has {buf.size} bytes, expected step*height = {s}*{h} = {s * h}")
    if enc in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") and w % 2:
        raise ImageDecodeError(f"{enc} needs an even width, got {w}")
    order = ">" if is_bigendian else "<"
    dtype = np.dtype(np.uint8) if depth == 1 else np.dtype(f"{order}{'f' if enc == '32fc1' else 'u'}{depth}")
    rows = buf.reshape(h, s)[:, :row_bytes]  # (H, W*C*depth) uint8, strided over the padding
    return enc, rows.view(dtype).reshape(h, w, channels)  # (H, W, C)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit by keeping the high byte (65535 -> 255); uint8 passes through."""
    if img.dtype == np.uint8:
        return img
    return (img >> 8).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# raw images


def decode_image(
    encoding: str,
    width: int,
    height: int,
    step: int,
    data: bytes | memoryview | np.ndarray,
    is_bigendian: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a sensor_msgs/Image into an owned (H, W, 3) uint8 RGB array.

    16-bit encodings keep their high byte (cameras that use only 10-12 bits will look dark).
    Depth encodings (16UC1, 32FC1) are refused here: use :func:`decode_depth`.
    """
    enc, img = _raw_view(encoding, width, height, step, data, is_bigendian, max_pixels)
    if enc not in COLOR_ENCODINGS:
        raise ImageDecodeError(f"{encoding!r} is a depth encoding; use decode_depth")
    try:
        if enc.startswith("bayer_"):
            if img.shape[0] < 2 or img.shape[1] < 2:
                raise ImageDecodeError(f"a Bayer image needs at least 2x2 pixels, got {img.shape[1]}x{img.shape[0]}")
            mosaic = np.ascontiguousarray(img[:, :, 0])  # (H, W) uint8/uint16
            if mosaic.dtype != np.uint8 and mosaic.dtype.byteorder == ">":
                mosaic = mosaic.astype(np.uint16)  # native byte order for OpenCV
            rgb = cv2.cvtColor(mosaic, _BAYER_TO_RGB[enc[6:10]])  # (H, W, 3)
            return np.ascontiguousarray(_to_uint8(rgb))
        if enc in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
            code = cv2.COLOR_YUV2RGB_UYVY if enc in ("yuv422", "uyvy") else cv2.COLOR_YUV2RGB_YUY2
            return cv2.cvtColor(np.ascontiguousarray(img), code)  # (H, W, 2) -> (H, W, 3)
    except cv2.error as exc:
        raise ImageDecodeError(f"OpenCV could not convert {enc}: {exc}") from None
    img = _to_uint8(img)  # (H, W, C) uint8, still a view into data for 8-bit encodings
    if enc in ("rgb8", "rgb16"):
        return np.array(img, dtype=np.uint8, order="C", copy=True)  # the one copy
    # OpenCV reads the strided, read-only view directly and writes a new array: still one copy,
    # several times faster than numpy's copy of a channel-reversed view
    code = _TO_RGB[enc]
    src = img[:, :, 0] if enc.startswith("mono") else img  # (H, W) or (H, W, C)
    try:
        return cv2.cvtColor(src, code)  # (H, W, 3)
    except cv2.error as exc:
        raise ImageDecodeError(f"OpenCV could not convert {enc}: {exc}") from None


def decode_depth(
    encoding: str,
    width: int,
    height: int,
    step: int,
    data: bytes | memoryview | np.ndarray,
    is_bigendian: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a depth sensor_msgs/Image into an owned (H, W) float32 array in metres, NaN = invalid.

    REP 118: 16UC1 (and mono16) hold millimetres with 0 = no return; 32FC1 holds metres. Zero, negative
    and non-finite depths become NaN.
    """
    enc, img = _raw_view(encoding, width, height, step, data, is_bigendian, max_pixels)
    if enc not in DEPTH_ENCODINGS:
        raise ImageDecodeError(f"unsupported depth encoding {encoding!r} (expected 16UC1, mono16 or 32FC1)")
    return _depth_to_metres(img[:, :, 0], enc)


def _depth_to_metres(raw: np.ndarray, enc: str) -> np.ndarray:
    """(H, W) uint16 millimetres or float32 metres -> owned (H, W) float32 metres with NaN."""
    if enc == "32fc1":
        out = raw.astype(np.float32)  # native byte order, owned
        with np.errstate(invalid="ignore"):
            out[~(np.isfinite(out) & (out > 0))] = np.nan
        return out
    out = raw.astype(np.float32) * np.float32(0.001)
    out[raw == 0] = np.nan
    return out


# ------------------------------------------------------------------------------------------------
# compressed images


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG spec puts first."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageDecodeError("truncated or malformed PNG header")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


# JPEG start-of-frame markers carry the size: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the SOF segment, walking the marker segments up to the first scan.

    Also insists on an end-of-image marker after the scan starts: entropy-coded data stuffs every 0xFF
    byte, so a missing FF D9 means the file was cut short (some OpenCV versions decode a truncated JPEG
    into a partly grey image without complaint).
    """
    i, n = 2, len(data)
    size: tuple[int, int] | None = None
    while i < n:
        if data[i] != 0xFF:
            raise ImageDecodeError("malformed JPEG: expected a marker")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # segments without a length
            continue
        if marker == 0xD9:
            break
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2:
            raise ImageDecodeError("malformed JPEG: bad segment length")
        if marker == 0xDA:  # start of scan
            if size is None:
                raise ImageDecodeError("malformed JPEG: scan before the frame header")
            if data.find(b"\xff\xd9", i + length) < 0:
                raise ImageDecodeError("truncated JPEG: no end-of-image marker")
            return size
        if marker in _SOF_MARKERS and size is None:
            if i + 7 > n:
                break
            h, w = struct.unpack(">HH", data[i + 3 : i + 7])
            size = (w, h)
        i += length
    raise ImageDecodeError("truncated or malformed JPEG: no frame header and scan found")


def _sniff(data: bytes) -> str:
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    raise ImageDecodeError("data is neither PNG nor JPEG (magic bytes do not match)")


def _checked_header(data: bytes, max_pixels: int) -> str:
    """Sniff the container and refuse, before decoding, an image whose header declares too many pixels."""
    kind = _sniff(data)
    w, h = _png_size(data) if kind == "png" else _jpeg_size(data)
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{kind} header declares an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(f"{kind} header declares {w}x{h} pixels, over the limit of {max_pixels}")
    return kind


def _imdecode(data: bytes, flags: int, kind: str) -> np.ndarray:
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:
        raise ImageDecodeError(f"{kind} decoding failed: {exc}") from None
    if img is None or img.size == 0:
        raise ImageDecodeError(f"{kind} data is corrupt or truncated")
    return img


def _payload(data: object) -> bytes:
    buf = _as_bytes(data)
    if buf.size == 0:
        raise ImageDecodeError("compressed image is empty")
    return buf.tobytes()


def decode_compressed(format: str, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) into an owned (H, W, 3) uint8 RGB array.

    ``format`` is free text ("jpeg", "png", "bgr8; jpeg compressed bgr8", ...); the magic bytes decide.
    Grey images are replicated to 3 channels, alpha is dropped, 16-bit PNG keeps its high byte.
    The declared size is checked against ``max_pixels`` before anything is decompressed.
    """
    if not isinstance(format, str):
        raise ImageDecodeError(f"format must be a string, got {type(format).__name__}")
    raw = _payload(data)
    if "compresseddepth" in format.lower().replace(" ", ""):
        raise ImageDecodeError(f"format {format!r} is a compressedDepth image; use decode_compressed_depth")
    kind = _checked_header(raw, max_pixels)
    bgr = _imdecode(raw, cv2.IMREAD_COLOR, kind)  # (H, W, 3) uint8 BGR
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ImageDecodeError(f"{kind} decoded to an unexpected layout {bgr.shape} {bgr.dtype}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place, bgr is ours


def decode_compressed_depth(format: str, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a compressed depth image into an owned (H, W) float32 array in metres, NaN = invalid.

    Supported: a plain 16-bit grey PNG of millimetres ("16UC1; png compressed ..."), and the PNG variant
    of compressed_depth_image_transport ("16UC1; compressedDepth png" / "32FC1; compressedDepth png"),
    whose payload is a 12-byte header (int32 format, float32 quant A, float32 quant B; little-endian) then
    a 16-bit PNG: raw millimetres for 16UC1, quantised inverse depth for 32FC1 (depth = A / (v - B),
    v = 0 invalid). The RVL variant is refused.
    """
    if not isinstance(format, str):
        raise ImageDecodeError(f"format must be a string, got {type(format).__name__}")
    raw = _payload(data)
    fmt = format.lower()
    encoding = fmt.split(";", 1)[0].strip()
    quant: tuple[float, float] | None = None
    if "compresseddepth" in fmt.replace(" ", ""):
        if "rvl" in fmt:
            raise ImageDecodeError("compressedDepth RVL is not supported; publish with the png format")
        if len(raw) <= _COMPRESSED_DEPTH_HEADER:
            raise ImageDecodeError("compressedDepth payload is shorter than its header")
        _, qa, qb = struct.unpack("<iff", raw[:_COMPRESSED_DEPTH_HEADER])
        raw = raw[_COMPRESSED_DEPTH_HEADER:]
        if encoding == "32fc1":
            if not (np.isfinite(qa) and np.isfinite(qb)):
                raise ImageDecodeError("compressedDepth header has non-finite quantisation parameters")
            quant = (qa, qb)
        elif encoding not in ("16uc1", "mono16"):
            raise ImageDecodeError(f"unsupported compressedDepth encoding {encoding!r}")
    elif encoding not in ("16uc1", "mono16", "png", ""):
        # compressed_image_transport writes 16-bit depth losslessly only as "16UC1; png compressed ..."
        raise ImageDecodeError(f"unsupported compressed depth format {format!r} (expected a 16UC1 PNG)")
    kind = _checked_header(raw, max_pixels)
    if kind != "png":
        raise ImageDecodeError("compressed depth must be PNG (JPEG is lossy and 8-bit)")
    img = _imdecode(raw, cv2.IMREAD_UNCHANGED, kind)
    if img.ndim != 2 or img.dtype != np.uint16:
        raise ImageDecodeError(f"compressed depth must be a 16-bit single-channel PNG, got {img.shape} {img.dtype}")
    if quant is None:
        return _depth_to_metres(img, "16uc1")
    qa, qb = quant
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = (np.float32(qa) / (img.astype(np.float32) - np.float32(qb))).astype(np.float32)
        out[(img == 0) | ~np.isfinite(out) | (out <= 0)] = np.nan
    return out


# ------------------------------------------------------------------------------------------------
# encoding (tests, bag writers)


def encode_image(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """(data, step) of a sensor_msgs/Image holding ``rgb`` ((H, W, 3) uint8 RGB) in ``encoding``.

    Supports rgb8, bgr8, rgba8 and bgra8 (alpha 255), mono8 (ITU-R BT.601 luma). Rows are unpadded.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    enc = encoding.strip().lower()
    h, w = rgb.shape[:2]
    if enc == "rgb8":
        out = rgb
    elif enc == "bgr8":
        out = rgb[:, :, ::-1]
    elif enc in ("rgba8", "bgra8"):
        out = np.empty((h, w, 4), np.uint8)  # (H, W, 4)
        out[:, :, :3] = rgb if enc == "rgba8" else rgb[:, :, ::-1]
        out[:, :, 3] = 255
    elif enc == "mono8":
        out = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)  # (H, W)
    else:
        raise ValueError(f"encode_image does not support {encoding!r}")
    data = np.ascontiguousarray(out).tobytes()
    return data, len(data) // h


def encode_compressed(rgb: np.ndarray, fmt: str, colour_encoding: str = "rgb8",
                      jpeg_quality: int = 95) -> tuple[str, bytes]:
    """(format, data) of a sensor_msgs/CompressedImage of ``rgb`` as compressed_image_transport writes it.

    fmt: "jpeg" or "png". colour_encoding: the source image's encoding; mono8 compresses one grey channel, any
    other bgr8. The format string reads "<colour_encoding>; <fmt> compressed <mono8|bgr8>".
    """
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"encode_compressed supports jpeg and png, not {fmt!r}")
    if colour_encoding == "mono8":
        pixels, target = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "mono8"
    else:
        pixels, target = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "bgr8"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", pixels, params)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError(f"OpenCV could not encode a {fmt} image")
    return f"{colour_encoding}; {fmt} compressed {target}", buf.tobytes()


def encode_depth(depth_m: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """(data, step) of a little-endian depth sensor_msgs/Image from (H, W) metres (NaN = invalid).

    16UC1: rounded millimetres; invalid, non-positive or beyond 65.535 m -> 0 (no return).
    32FC1: float32 metres; invalid or non-positive -> NaN.
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2 or depth.shape[0] == 0 or depth.shape[1] == 0:
        raise ValueError(f"expected a non-empty (H, W) depth array, got {depth.shape}")
    enc = encoding.strip().lower()
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
        if enc == "16uc1":
            mm = np.where(valid, np.rint(depth * 1000.0), 0.0)
            mm[(mm > 65535) | (mm < 0)] = 0
            out = mm.astype("<u2")
        elif enc == "32fc1":
            out = np.where(valid, depth, np.nan).astype("<f4")
        else:
            raise ValueError(f"encode_depth does not support {encoding!r}")
    data = out.tobytes()
    return data, len(data) // depth.shape[0]
