"""Loading and validating input images.

Every task works on RGB uint8 arrays of shape (H, W, 3). :func:`load_image` is the single
place where user input is turned into that form, so the policy below holds everywhere.
"""

from __future__ import annotations

import os
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


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageNotFoundError(f"image file not found: '{path}'")
    if not path.is_file():
        raise InvalidImageError(f"image path is not a file: '{path}'")
    # np.fromfile + imdecode instead of cv2.imread: it works with non-ASCII paths everywhere.
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
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
