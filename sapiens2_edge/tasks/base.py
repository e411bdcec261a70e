"""The interfaces every task implements (a pipeline and a result type) and the checks they share."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from ..errors import ConfigError, InvalidBoxError, InvalidTensorError
from ..spec import DEFAULT_INPUT_SIZE
from .image import _is_pil_image
from .preprocess import MEAN_RGB, STD_RGB

Infer = Callable[[np.ndarray], Sequence[np.ndarray]]


def check_input_size(input_size: Any) -> tuple[int, int]:
    """Validate a network input size given as (H, W)."""
    try:
        h, w = input_size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 2 or w < 2:
        raise ConfigError(f"input_size must be two integers (H, W) of at least 2, e.g. (1024, 768); got {input_size!r}")
    return int(h), int(w)


class Pipeline(ABC):
    """Pre- and post-processing of one task around a network that maps (B,3,H,W) -> raw outputs.

    ``preprocess(image, boxes)`` returns ``(batch, meta)``; ``postprocess(outputs, meta)`` turns
    the network's raw outputs for that batch into a typed result; calling the pipeline runs
    both around an ``infer`` callable for a list of images.
    """

    task: ClassVar[str] = ""
    output_names: ClassVar[tuple[str, ...]] = ()  # the task's entry of spec.OUTPUT_NAMES
    options: ClassVar[dict[str, Any]] = {}  # option name -> default value

    def __init__(self, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, **options: Any) -> None:
        self.input_size = check_input_size(input_size)
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"unknown option(s) {unknown} for task '{self.task}'; accepted options: {allowed}")
        for name, default in self.options.items():
            value = options.get(name, default)
            if type(value) is not type(default) and not (isinstance(default, float) and isinstance(value, int)
                                                           and not isinstance(value, bool)):
                raise ConfigError(
                    f"option {name}={value!r} for task '{self.task}' must be a {type(default).__name__}"
                )
            setattr(self, name, type(default)(value))
        self._validate_options()

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    def _validate_options(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Subclasses check option values here."""

    def __repr__(self) -> str:
        opts = "".join(f", {k}={getattr(self, k)!r}" for k in self.options)
        return f"{type(self).__name__}(input_size={self.input_size}{opts})"

    def config(self) -> dict[str, Any]:
        """The constants this pipeline applies (for an artifact manifest)."""
        return {
            "task": self.task,
            "input_size": list(self.input_size),
            "mean": list(MEAN_RGB),
            "std": list(STD_RGB),
            "channel_order": "RGB",
            "outputs": list(self.output_names),
            **{k: getattr(self, k) for k in self.options},
        }

    # -- the two halves ------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, image: Any, boxes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Image (and boxes) -> normalised (n,3,H,W) float32 batch and the meta postprocess needs."""

    @abstractmethod
    def postprocess(self, outputs: Sequence[np.ndarray], meta: dict[str, Any]) -> Any:
        """Raw network outputs for one preprocessed batch -> a typed result."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def _no_boxes(self, boxes: Any) -> None:
        if boxes is not None:
            raise ConfigError(f"boxes are only used by the pose task; got boxes for task '{self.task}'")

    def _outputs(self, outputs: Any, meta: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """Check the raw outputs' count and batch size and return them as float32 arrays."""
        if isinstance(outputs, np.ndarray):
            outputs = (outputs,)
        if not isinstance(outputs, (tuple, list)) or len(outputs) != self.num_outputs:
            got = f"{len(outputs)} arrays" if isinstance(outputs, (tuple, list)) else type(outputs).__name__
            raise InvalidTensorError(
                f"task '{self.task}' expects {self.num_outputs} raw output(s) {self.output_names}, got {got}"
            )
        out = []
        for name, a in zip(self.output_names, outputs, strict=True):
            a = np.asarray(a, dtype=np.float32)
            if a.ndim == 0 or a.shape[0] != meta["batch_size"]:
                raise InvalidTensorError(
                    f"output '{name}' of task '{self.task}' has shape {a.shape}; expected a leading batch "
                    f"dimension of {meta['batch_size']} (the size of the preprocessed batch)"
                )
            if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):  # NaN propagates; no big temp
                raise InvalidTensorError(
                    f"output '{name}' of task '{self.task}' contains NaN or inf; the model or backend "
                    "produced invalid values"
                )
            out.append(a)
        return tuple(out)

    # -- end to end ----------------------------------------------------------------------------
    def __call__(self, images: Any, infer: Infer, boxes: Any = None, batch_size: int | None = None) -> list:
        """Run preprocess -> ``infer`` -> postprocess over ``images``.

        ``images``: a list of images (arrays, PIL images or paths), a (N,H,W,3) array, or a single
        image. ``boxes``: None or one entry per image (None or an (n,4) array; pose only).
        ``batch_size``: None runs ``infer`` once per image; an integer groups the samples of
        consecutive images into calls of at most that many samples.
        """
        images = _as_image_list(images)
        if boxes is None:
            boxes = [None] * len(images)
        elif not isinstance(boxes, (list, tuple)) or len(boxes) != len(images):
            n = len(boxes) if isinstance(boxes, (list, tuple)) else type(boxes).__name__
            raise InvalidBoxError(
                f"boxes must be a list with one entry (None or an (n, 4) array) per image; "
                f"got {n} for {len(images)} image(s)"
            )
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer or None, got {batch_size!r}")

        results: list = []
        group: list[tuple[np.ndarray, dict]] = []

        def flush() -> None:
            sizes = [len(b) for b, _ in group]
            outs = _run_infer(infer, np.concatenate([b for b, _ in group]), batch_size)
            start = 0
            for (_, meta), n in zip(group, sizes, strict=True):
                results.append(self.postprocess(None if outs is None else tuple(o[start:start + n] for o in outs), meta))
                start += n
            group.clear()

        count = 0
        for image, box in zip(images, boxes, strict=True):
            batch, meta = self.preprocess(image, box)
            if group and (batch_size is None or count + len(batch) > batch_size):
                flush()
                count = 0
            group.append((batch, meta))
            count += len(batch)
        if group:
            flush()
        return results


class Result(ABC):
    """What every task's result offers.

    ``arrays()`` (what gets saved as .npy), ``to_dict()`` / ``to_json()`` (pose: every keypoint;
    dense tasks: a compact summary, never the full maps) and ``draw(image)`` (an RGB uint8
    visualisation with the image's shape).
    """

    task: str = ""
    random_weights: bool = False
    """True when the model that produced this result has random weights (its drawing says so)."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The raw result arrays, keyed by the name they are saved under."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (pose: every keypoint; dense tasks: a compact summary)."""

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @abstractmethod
    def draw(self, image: Any, **kwargs: Any) -> np.ndarray:
        """An RGB uint8 visualisation with the image's shape."""


def channel_stats(a: np.ndarray) -> dict[str, Any]:
    """Per-channel min / max / mean of an (H, W, C) array, as plain floats."""
    flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
    if flat.size == 0:
        return {"min": [], "max": [], "mean": []}
    return {
        "min": [float(v) for v in flat.min(0)],
        "max": [float(v) for v in flat.max(0)],
        "mean": [float(v) for v in flat.mean(0)],
    }


def _as_image_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, np.ndarray)) or _is_pil_image(images) or hasattr(images, "__fspath__"):
        return [images]
    if hasattr(images, "__iter__"):
        return list(images)
    return [images]  # load_image will say what is wrong with it


def _run_infer(infer: Infer, batch: np.ndarray, batch_size: int | None) -> tuple[np.ndarray, ...] | None:
    """Call ``infer`` on ``batch`` (in chunks of at most ``batch_size``) and concatenate the outputs."""
    if len(batch) == 0:
        return None
    step = batch_size or len(batch)
    chunks = []
    for i in range(0, len(batch), step):
        out = infer(np.ascontiguousarray(batch[i:i + step]))
        chunks.append((out,) if isinstance(out, np.ndarray) else tuple(out))
    if len({len(c) for c in chunks}) != 1:
        raise InvalidTensorError("infer returned a different number of outputs for different chunks")
    outs = tuple(np.concatenate([np.asarray(c[j]) for c in chunks]) if len(chunks) > 1 else np.asarray(chunks[0][j])
                 for j in range(len(chunks[0])))
    for j, o in enumerate(outs):
        if o.ndim == 0 or o.shape[0] != len(batch):
            raise InvalidTensorError(
                f"infer output {j} has shape {o.shape}; expected a leading batch dimension of {len(batch)} "
                "(one entry per input sample)"
            )
    return outs
