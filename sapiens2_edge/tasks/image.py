"""Loading and validating input images.

Every task works on RGB uint8 arrays of shape (H, W, 3). :func:`load_image` is the single
place where user input is turned into that form, so the policy below holds everywhere.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ImageNotFoundError, InvalidImageError

MAX_SIDE = 32768
"""Largest accepted image side in pixels."""
MAX_PIXELS = 2**28
"""Largest accepted pixel count (H * W), about 268 megapixels."""


def _is_pil_image(x: Any) -> bool:
    # Only look for PIL if the caller has imported it: a PIL image cannot exist otherwise,
    # and the runtime must not require Pillow.
    if "PIL.Image" not in sys.modules:
        return False
    return isinstance(x, sys.modules["PIL.Image"].Image)


def _check_size(h: int, w: int, what: str) -> None:
    if h == 0 or w == 0:
        raise InvalidImageError(f"{what} is empty (H x W = {h} x {w}); expected at least 1 x 1 pixels")
    if h > MAX_SIDE or w > MAX_SIDE or h * w > MAX_PIXELS:
        raise InvalidImageError(
            f"{what} is too large (H x W = {h} x {w}); the limit is {MAX_SIDE} pixels per side "
            f"and {MAX_PIXELS} pixels in total. Downscale it first."
        )


# -- image size from the file header, before decoding ---------------------------------------------
# OpenCV has no header-only read (imread / imdecode allocate the full image first, so a 300 KB PNG
# declaring 17000 x 17000 pixels costs 867 MB before any size check), and Pillow, whose Image.open
# is lazy, is not a runtime dependency. So the size is read here from the header of each format
# OpenCV decodes (a few struct reads, no allocation in proportion to the declared size) and checked
# against MAX_SIDE / MAX_PIXELS first; a file in any other format is refused.
SUPPORTED_FORMATS = "JPEG, PNG, BMP, GIF, WebP, TIFF, PNM (PBM/PGM/PPM)"


def _png_size(b: bytes) -> tuple[int, int] | None:
    if len(b) >= 24 and b[12:16] == b"IHDR":
        w, h = struct.unpack(">II", b[16:24])
        return h, w
    return None


def _jpeg_size(b: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first frame header (SOF0-SOF15 but DHT/JPG/DAC)."""
    pos = 2
    while pos + 4 <= len(b):
        if b[pos] != 0xFF:
            return None
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", b[pos + 2:pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(b):
                return None
            h, w = struct.unpack(">HH", b[pos + 5:pos + 9])
            return h, w
        if length < 2:
            return None
        pos += 2 + length
    return None


def _bmp_size(b: bytes) -> tuple[int, int] | None:
    if len(b) < 26:
        return None
    (header,) = struct.unpack("<I", b[14:18])
    if header == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack("<HH", b[18:22])
    else:
        w, h = struct.unpack("<ii", b[18:26])
    return abs(h), abs(w)


def _gif_size(b: bytes) -> tuple[int, int] | None:
    if len(b) < 10:
        return None
    w, h = struct.unpack("<HH", b[6:10])
    return h, w


def _tiff_size(b: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first IFD (classic TIFF and BigTIFF)."""
    e = "<" if b[:2] == b"II" else ">"
    big = struct.unpack(e + "H", b[2:4])[0] == 43
    try:
        if big:
            (off,) = struct.unpack(e + "Q", b[8:16])
            (n,) = struct.unpack(e + "Q", b[off:off + 8])
            start, size = off + 8, 20
        else:
            (off,) = struct.unpack(e + "I", b[4:8])
            (n,) = struct.unpack(e + "H", b[off:off + 2])
            start, size = off + 2, 12
        found: dict[int, int] = {}
        for i in range(min(n, 4096)):
            raw = b[start + i * size:start + (i + 1) * size]
            tag, typ = struct.unpack(e + "HH", raw[:4])
            if tag in (256, 257):
                value = raw[-8:] if big else raw[-4:]
                fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
                if fmt is None:
                    return None
                found[tag] = struct.unpack(e + fmt, value[:struct.calcsize(fmt)])[0]
        return (found[257], found[256]) if len(found) == 2 else None
    except (struct.error, KeyError):
        return None


def _pnm_size(b: bytes) -> tuple[int, int] | None:
    head = b[2:512]
    tokens: list[bytes] = []
    for line in head.splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            break
    if len(tokens) < 2 or not (tokens[0].isdigit() and tokens[1].isdigit()) or max(len(tokens[0]), len(tokens[1])) > 12:
        return None
    return int(tokens[1]), int(tokens[0])


def header_size(b: bytes) -> tuple[str, tuple[int, int] | None]:
    """(format, (H, W) declared by its header, or None when the header is unreadable) of an image file's
    bytes; format "" when it is none of :data:`SUPPORTED_FORMATS`."""
    if b.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", _png_size(b)
    if b.startswith(b"\xff\xd8"):
        return "JPEG", _jpeg_size(b)
    if b.startswith(b"BM"):
        return "BMP", _bmp_size(b)
    if b[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF", _gif_size(b)
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return "WebP", (16383, 16383)  # the format's own limit per side, within MAX_PIXELS
    if b[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF", _tiff_size(b)
    if len(b) > 2 and b[0:1] == b"P" and b[1:2] in b"123456":
        return "PNM", _pnm_size(b)
    return "", None


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageNotFoundError(f"image file not found: '{path}'")
    if not path.is_file():
        raise InvalidImageError(f"image path is not a file: '{path}'")
    # np.fromfile + imdecode instead of cv2.imread: it works with non-ASCII paths everywhere.
    data = np.fromfile(str(path), dtype=np.uint8)
    fmt, size = header_size(data[:1 << 20].tobytes()) if data.size else ("", None)
    if not fmt:
        raise InvalidImageError(f"cannot decode image file '{path}': not a format this SDK reads "
                                f"(expected {SUPPORTED_FORMATS}; convert other formats to PNG or JPEG)")
    if size is None:
        raise InvalidImageError(f"cannot decode image file '{path}': its {fmt} header is corrupt or truncated "
                                "(no image size found)")
    _check_size(*size, f"image '{path}' ({fmt} header)")
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise InvalidImageError(f"cannot decode image file '{path}': {str(e).strip()[:200]}") from None
    if bgr is None:
        raise InvalidImageError(
            f"cannot decode image file '{path}': not an image format OpenCV can read "
            "(expected e.g. JPEG, PNG, BMP, TIFF, WebP)"
        )
    _check_size(bgr.shape[0], bgr.shape[1], f"image '{path}'")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _from_array(a: np.ndarray, what: str = "image") -> np.ndarray:
    if a.ndim not in (2, 3):
        raise InvalidImageError(
            f"{what} must have shape (H, W, 3) (or (H, W) grayscale / (H, W, 4) RGBA), "
            f"got an array of shape {a.shape}"
        )
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    if channels not in (1, 3, 4):
        raise InvalidImageError(
            f"{what} has {channels} channels (shape {a.shape}); expected 3 (RGB), "
            "1 (grayscale) or 4 (RGBA)"
        )
    _check_size(h, w, what)
    if a.dtype != np.uint8:
        hint = "np.clip(x * 255, 0, 255).astype(np.uint8)" if a.dtype.kind == "f" else "x.astype(np.uint8)"
        nan = ""
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            nan = " The array also contains NaN or inf values, which no image can hold."
        raise InvalidImageError(
            f"expected a uint8 RGB image with values 0-255, got dtype {a.dtype}; "
            f"convert with e.g. {hint}.{nan}"
        )
    if channels == 1:
        a = cv2.cvtColor(a.reshape(h, w), cv2.COLOR_GRAY2RGB)
    elif channels == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def load_image(image: Any) -> np.ndarray:
    """Return ``image`` as a C-contiguous RGB uint8 array of shape (H, W, 3).

    Accepted inputs and the conversion policy:

    - a path (``str`` / ``os.PathLike``): decoded with OpenCV (BGR -> RGB); grayscale files
      become RGB and an alpha channel is dropped. A missing or undecodable file is an error
      naming the path.
    - a PIL image: converted with ``.convert("RGB")`` (palette, L, LA, RGBA, CMYK...).
    - a numpy array of dtype uint8 with shape (H, W, 3), taken as **RGB**; (H, W) and
      (H, W, 1) grayscale are replicated to 3 channels; (H, W, 4) RGBA has its alpha
      dropped (not composited). Any other channel count is an error.
    - non-uint8 arrays are refused (no guessing whether floats are 0-1 or 0-255); the message
      says how to convert, and mentions NaN/inf if the array holds any.
    - empty images (a side of 0) and images with a side over :data:`MAX_SIDE` or more than
      :data:`MAX_PIXELS` pixels are refused.

    All failures raise :class:`~sapiens2_edge.errors.InvalidImageError`.
    """
    if isinstance(image, (str, os.PathLike)):
        return _read_file(Path(image))
    if _is_pil_image(image):
        w, h = image.size
        _check_size(h, w, "PIL image")
        return _from_array(np.asarray(image.convert("RGB")), "PIL image")
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise InvalidImageError(
        f"expected an image as a file path, a PIL image or a numpy uint8 array (H, W, 3), "
        f"got {type(image).__module__}.{type(image).__qualname__}"
    )
