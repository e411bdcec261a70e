"""The image files a run reads: an image or a folder of them, pose boxes per image, a calibration split."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidBoxError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(path: str | Path) -> list[Path]:
    """``path`` itself when it is a file, else the images of the folder (by suffix, sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return files
    if not path.exists():
        raise ConfigError(f"input {path} does not exist; expected an image file or a folder of images")
    return [path]


def load_boxes(path: str | Path | None, names: list[str]) -> dict[str, Any]:
    """Person boxes per image name from a JSON file: ``{"image.jpg": [[x1, y1, x2, y2], ...], ...}``,
    or a plain list of boxes when there is a single image. None: no boxes."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidBoxError(f"cannot read boxes file {path}: {e}") from None
    if isinstance(data, list):
        if len(names) != 1:
            raise InvalidBoxError(f"{path} holds a plain list of boxes, but there are {len(names)} images; "
                                  'use {"image name": [[x1, y1, x2, y2], ...]}')
        return {names[0]: data}
    if not isinstance(data, dict):
        raise InvalidBoxError(f"{path} must hold a JSON object mapping image names to box lists")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InvalidBoxError(f"{path} has boxes for images that are not inputs: {unknown[:5]}")
    return data


def split_images(calib: str | Path, holdout: str | Path | None, calib_size: int,
                 eval_samples: int) -> tuple[list[Path], list[Path], str]:
    """Calibration images, held-out images and a word on where the held-out set came from.

    Without ``holdout`` the held-out images are the folder's images past the first ``calib_size``;
    when none are left, the calibration images themselves (and the word says so).
    """
    images = list_images(calib)
    if holdout is not None:
        return images[:calib_size], list_images(holdout)[:eval_samples], f"{holdout}"
    rest = images[calib_size:calib_size + eval_samples]
    if rest:
        return images[:calib_size], rest, f"{len(rest)} images of {calib} not used for calibration"
    return images[:calib_size], images[:eval_samples], "the calibration images (no held-out images were left)"


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def is_video(source: str | os.PathLike) -> bool:
    """A stream URL or a video file (by suffix): predicted frame by frame, not as images."""
    text = str(source)
    return "://" in text or Path(text).suffix.lower() in VIDEO_SUFFIXES
