"""Calibration data: turn what the user passes into normalised (B, 3, H, W) float32 batches.

``calibration`` may be

* a folder of images (read in sorted name order),
* an iterable of images: RGB uint8 (H, W, 3) arrays or image paths,
* an iterable of already-normalised float tensors / arrays, (B, 3, H, W) or (3, H, W).

Images go through the task's own preprocessing, ``tasks.get_pipeline(model.task,
input_size=...)`` (pose with ``flip_test=False``: one crop per image, the whole image as the
box); a backbone-only model uses the seg pipeline (stretch to the input size, normalise).
Tensors must already have the calibration input size. At most ``limit`` samples are used
(default :data:`~sapiens2_edge.quantization.config.DEFAULT_CALIBRATION_SIZE`, see there for why).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ..errors import CalibrationError
from ..models.bf16 import attention_on_openvino as openvino_attention
from ..models.bf16 import bf16_autocast, bf16_precision

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def progress(iterable: Iterable, total: int | None, desc: str, enabled: Any = None, unit: str = "batch") -> Iterable:
    """A tqdm bar on a terminal, nothing otherwise (``enabled`` None = auto); a callable ``enabled``
    is the caller's own ``(iterable, total, desc) -> iterable`` progress display (given ``unit=``
    too where it takes that keyword)."""
    if callable(enabled):
        if unit != "batch" and "unit" in inspect.signature(enabled).parameters:
            return enabled(iterable, total, desc, unit=unit)
        return enabled(iterable, total, desc)
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)


def calibration_precision(asked: str, device: Any, cpuinfo: str | None = None) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why) for the calibration forwards on ``device``: ``auto`` is bf16 on a
    CPU with native bf16 (``cpuinfo``: its /proc/cpuinfo text, default this machine's), else fp32."""
    return bf16_precision(asked, device, cpuinfo)


def calibration_autocast(precision: str, device: Any) -> contextlib.AbstractContextManager:
    """The forwards' autocast for ``precision`` (bf16 GEMMs and attention, norms and the kept
    block-boundary activations in float32; no weight cache, see :func:`~sapiens2_edge.models.bf16.bf16_autocast`);
    nothing for fp32."""
    return bf16_autocast(device, enabled=precision == "bf16")


def attention_on_openvino(model: torch.nn.Module, precision: str, device: Any) -> contextlib.AbstractContextManager:
    """For the duration, the long attentions of ``model``'s bf16 CPU calibration forwards run on
    OpenVINO's kernel (about twice torch's bf16 speed; :func:`sapiens2_edge.models.bf16.attention_on_openvino`);
    the context yields whether they do. fp32 forwards keep torch's kernel."""
    if precision != "bf16":
        return contextlib.nullcontext(False)
    return openvino_attention(model, device)


def _is_image_item(item: Any) -> bool:
    if isinstance(item, (str, os.PathLike)):
        return True
    return isinstance(item, np.ndarray) and item.dtype == np.uint8


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"calibration folder '{folder}' holds no images; expected files with suffix "
                               f"{', '.join(IMAGE_SUFFIXES)}")
    return files


def _items(calibration: Any) -> Iterable:
    if isinstance(calibration, (str, os.PathLike)):
        p = Path(calibration).expanduser()
        if p.is_dir():
            return _folder_images(p)
        if p.is_file():
            return [p]
        raise CalibrationError(f"calibration path '{p}' does not exist; expected a folder of images, an image file, "
                               "or an iterable of images / normalised (B,3,H,W) tensors")
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        if isinstance(calibration, np.ndarray) and calibration.dtype == np.uint8:
            # (N, H, W, 3) stack of images, or a single (H, W, 3) image
            return list(calibration) if calibration.ndim == 4 else [calibration]
        return [calibration]  # one (B,3,H,W) batch
    if isinstance(calibration, (bytes, dict)) or not isinstance(calibration, Iterable):
        raise CalibrationError(f"calibration must be a folder, an iterable of images, or an iterable of normalised "
                               f"(B,3,H,W) tensors; got {type(calibration).__name__}")
    return calibration


def _tensor_batch(item: Any, index: int, input_size: tuple[int, int]) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(item)) if isinstance(item, np.ndarray) else item
    if not isinstance(t, torch.Tensor):
        raise CalibrationError(f"calibration item {index} is a {type(item).__name__}; expected an RGB uint8 "
                               "(H,W,3) array, an image path, or a normalised (B,3,H,W) float tensor/array")
    if t.ndim == 3:
        t = t[None]
    if not t.is_floating_point():
        raise CalibrationError(f"calibration item {index} is a {t.dtype} tensor of shape {tuple(t.shape)}; expected "
                               "normalised float (B,3,H,W) tensors (images go in as RGB uint8 (H,W,3) arrays)")
    h, w = input_size
    if t.ndim != 4 or t.shape[1] != 3 or tuple(t.shape[2:]) != (h, w) or t.shape[0] == 0:
        raise CalibrationError(f"calibration tensor {index} has shape {tuple(t.shape)}; expected (B, 3, {h}, {w}) "
                               f"for the calibration input size {h}x{w} (pass input_size= to calibrate at another size)")
    if not torch.isfinite(t).all():
        raise CalibrationError(f"calibration tensor {index} holds NaN or inf values; expected finite normalised inputs")
    return t.float()


class CalibrationSet:
    """Preprocessed calibration inputs, materialised once (a list of (b, 3, H, W) float32 tensors)."""

    def __init__(self, batches: list[torch.Tensor], input_size: tuple[int, int], source: str):
        self.batches = batches
        self.input_size = input_size
        self.source = source
        self.num_samples = sum(b.shape[0] for b in batches)

    def release(self) -> None:
        """Drop the inputs (their count, size and source stay): for a caller done with them."""
        self.batches = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def head(self, samples: int) -> list[torch.Tensor]:
        """The first ``samples`` inputs, as batches."""
        out, n = [], 0
        for b in self.batches:
            if n >= samples:
                break
            out.append(b[: samples - n])
            n += out[-1].shape[0]
        return out


def build_calibration_set(calibration: Any, task: str | None, input_size: tuple[int, int], limit: int,
                          batch_size: int, show_progress: bool | None = None) -> CalibrationSet:
    """Preprocess up to ``limit`` samples into batches of at most ``batch_size``."""
    if calibration is None:
        raise CalibrationError("no calibration data was given; expected a folder of images, an iterable of images, "
                               "or normalised (B,3,H,W) tensors")
    pipe = None
    samples: list[torch.Tensor] = []
    kind = None
    n = 0
    for i, item in enumerate(progress(_items(calibration), None, "preprocess", show_progress)):
        if n >= limit:
            break
        if _is_image_item(item):
            if pipe is None:
                from ..tasks import get_pipeline

                opts = {"flip_test": False} if task == "pose" else {}
                pipe = get_pipeline(task or "seg", input_size=tuple(input_size), **opts)
            batch, _ = pipe.preprocess(item)
            t = torch.from_numpy(np.ascontiguousarray(batch)).float()
            kind = kind or "images"
        else:
            t = _tensor_batch(item, i, input_size)
            kind = kind or "tensors"
        t = t[: limit - n]
        n += t.shape[0]
        samples.extend(t.split(1))
    if not samples:
        raise CalibrationError("the calibration set is empty; expected at least one image or (B,3,H,W) tensor")
    batches = [torch.cat(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    return CalibrationSet(batches, tuple(input_size), kind or "tensors")


__all__ = ["CalibrationSet", "attention_on_openvino", "build_calibration_set", "progress", "IMAGE_SUFFIXES"]
