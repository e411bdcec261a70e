"""Top-down 308-keypoint pose (spec 2.1): UDP person crops, the flip test, decoding (heatmaps.py)
back to image pixels, the result type and its drawing.

Coordinates: image pixels are indexed at pixel centres (0 .. W0-1); the network input is
``input_size`` = (H, W) and the heatmaps are (h, w), a quarter of it for the released heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import ConfigError, InvalidBoxError, InvalidImageError, InvalidTensorError
from ..spec import DEFAULT_INPUT_SIZE, OUTPUT_NAMES
from .base import Pipeline, Result, _as_image_list
from .draw import finish, image_for, put_text
from .heatmaps import BLUR_KERNEL_SIZE, decode_channels, decode_heatmaps, flip_heatmaps
from .image import load_image
from .keypoints import (
    COCO17_SKELETON,
    COCO_FORMATS,
    FLIP_INDICES,
    KEYPOINT_GROUPS,
    NUM_KEYPOINTS,
    SKELETON,
    WHOLEBODY_PARTS,
    keypoint_subset,
    to_coco17,
    to_keypoint_set,
)
from .preprocess import normalize

BBOX_PADDING = 1.25
MAX_BOXES = 100
"""Default limit on person boxes per image (``Predictor(..., max_boxes=N)`` / ``get_pipeline("pose",
max_boxes=N)`` change it). Crops run in chunks, so memory does not grow with the limit; time does."""
CROP_BATCH = 16
"""Most crops (flipped ones included) per network call: with ``flip_test`` 8 boxes per call."""
MAX_BOX_COORD = float(2**24)
"""Box coordinates must lie within +-this many pixels (far beyond any accepted image side): larger
ones would overflow the crop arithmetic into inf / NaN keypoints."""
MIN_BOX_SIDE = 1e-3
"""Smallest box width and height in pixels (a smaller box overflows the crop's scale factor)."""


# -- boxes and crops ----------------------------------------------------------------------------
def validate_boxes(boxes: Any, image_size: tuple[int, int], max_boxes: int = MAX_BOXES) -> np.ndarray:
    """Check person boxes against an image of ``image_size`` = (H, W); return (n, 4) float64.

    Accepts an (n, 4) array-like of [x1, y1, x2, y2] in pixels (a single box of 4 numbers is
    taken as n = 1); an optional 5th column (a detector score) is ignored. A box may stick out
    of the image (the crop pads with zeros) but must overlap it, have coordinates within
    +-:data:`MAX_BOX_COORD` and sides of at least :data:`MIN_BOX_SIDE`; at most ``max_boxes``
    boxes are accepted.
    """
    h0, w0 = image_size
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:  # OverflowError: an int beyond float range
        raise InvalidBoxError(f"boxes must be numbers in an (n, 4) array of [x1, y1, x2, y2]; {e}") from None
    if b.ndim == 1 and b.shape[0] in (4, 5):
        b = b[None]
    elif b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] not in (4, 5):
        raise InvalidBoxError(
            f"boxes must be an (n, 4) array of [x1, y1, x2, y2] (or (n, 5) with a score column), got shape {b.shape}"
        )
    if len(b) > max_boxes:
        raise InvalidBoxError(
            f"got {len(b)} boxes for one image; at most max_boxes={max_boxes} are accepted per image. Raise the "
            "limit with Predictor(..., max_boxes=N) or get_pipeline('pose', max_boxes=N) (crops run in chunks, so "
            "memory stays flat; time grows with the number of boxes)"
        )
    b = b[:, :4]
    for i, box in enumerate(b):
        x1, y1, x2, y2 = box
        shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
        if not np.isfinite(box).all():
            raise InvalidBoxError(f"box {i} = {shown} contains NaN or inf; expected finite pixel coordinates [x1, y1, x2, y2]")
        if np.abs(box).max() > MAX_BOX_COORD:
            raise InvalidBoxError(f"box {i} = {shown} has a coordinate beyond +-{MAX_BOX_COORD:g} pixels; expected "
                                  f"pixel coordinates of the {w0} x {h0} (W x H) image")
        if x2 <= x1 or y2 <= y1:
            raise InvalidBoxError(f"box {i} = {shown} is degenerate; expected x2 > x1 and y2 > y1 ([x1, y1, x2, y2] order)")
        if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
            raise InvalidBoxError(f"box {i} = {shown} is {x2 - x1:g} x {y2 - y1:g} pixels; expected a width and "
                                  f"height of at least {MIN_BOX_SIDE:g} pixels")
        if x2 < 0 or y2 < 0 or x1 > w0 - 1 or y1 > h0 - 1:
            raise InvalidBoxError(
                f"box {i} = {shown} lies entirely outside the {w0} x {h0} (W x H) image; expected it to "
                f"overlap x in [0, {w0 - 1}], y in [0, {h0 - 1}]"
            )
    return b


def box_to_center_size(boxes: np.ndarray, aspect: float, padding: float = BBOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) xyxy boxes -> centres (n, 2) and padded, aspect-fixed sizes (n, 2) = (w, h).

    ``aspect`` is the network input's W / H: the box grows along one side to match it.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    sizes = (boxes[:, 2:] - boxes[:, :2]) * padding
    w, h = sizes[:, 0].copy(), sizes[:, 1].copy()
    wide = w > aspect * h
    h[wide] = w[wide] / aspect
    w[~wide] = aspect * h[~wide]
    return centers, np.stack([w, h], axis=1)


def udp_warp_matrix(center: Sequence[float], size: Sequence[float], input_size: tuple[int, int]) -> np.ndarray:
    """(2, 3) affine map from image pixels to crop pixels (UDP, no rotation).

    The box's left/right edges go to u = 0 and W-1, its top/bottom edges to v = 0 and H-1.
    """
    H, W = input_size
    (cx, cy), (bw, bh) = center, size
    sx, sy = (W - 1) / bw, (H - 1) / bh
    return np.array([[sx, 0.0, sx * (bw * 0.5 - cx)], [0.0, sy, sy * (bh * 0.5 - cy)]], dtype=np.float64)


def crop_person(image: np.ndarray, center: Sequence[float], size: Sequence[float], input_size: tuple[int, int]) -> np.ndarray:
    """Warp one person box of an RGB uint8 image to the network input size (zero borders)."""
    H, W = input_size
    m = udp_warp_matrix(center, size, input_size)
    shrink = min(np.linalg.norm(m[0, :2]), np.linalg.norm(m[1, :2])) < 1
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.warpAffine(image, m, (W, H), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def input_to_image(keypoints: np.ndarray, center: Sequence[float], size: Sequence[float],
                   input_size: tuple[int, int]) -> np.ndarray:
    """Network-input pixels -> image pixels, as the reference demo does: x / W * w_box + cx - w_box / 2.

    The crop used (W - 1) / w_box and this divides by W; combined with the decoder's
    W / (w - 1) the two cancel, so a UDP-encoded target maps back exactly.
    """
    H, W = input_size
    (cx, cy), (bw, bh) = center, size
    out = np.asarray(keypoints, dtype=np.float64) / np.array([W, H]) * np.array([bw, bh])
    return out + np.array([cx - bw * 0.5, cy - bh * 0.5])


# -- result ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class PoseResult(Result):
    """Keypoints of N people in original-image pixels.

    ``boxes`` (N, 4) float32 [x1, y1, x2, y2] as given (or the whole image);
    ``keypoints`` (N, K, 2) float32 (x, y); ``scores`` (N, K) float32 (the flip-averaged heatmap
    maximum; <= 0 means the heatmap had no positive peak and the location is meaningless);
    ``image_size`` (H, W).
    """

    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    task = "pose"

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    def to_coco17(self) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (N, 17, 2), scores (N, 17)) in COCO-17 order."""
        return to_coco17(self.keypoints, self.scores)

    def to_coco(self, image_id: int, category_id: int = 1, format: str = "coco17") -> list[dict[str, Any]]:
        """COCO keypoint *results* entries, one per person: ``image_id``, ``category_id``, ``bbox``
        ([x, y, w, h] of the person box), ``keypoints`` as flat [x, y, v] triplets with v the
        keypoint's score, and ``score`` = the mean keypoint score of the set (the detection score
        COCO ranks results by).

        ``format``: ``coco17`` (17 triplets) or ``wholebody133`` (COCO-WholeBody: ``keypoints``
        holds the 17 body triplets and ``foot_kpts`` (6), ``face_kpts`` (68), ``lefthand_kpts``
        (21), ``righthand_kpts`` (21) the rest, as its evaluation reads them; see
        :data:`~.keypoints.WHOLEBODY133_FROM_308` for the mapping). A keypoint with no 308
        counterpart is [0, 0, 0] and does not count in ``score``.
        """
        if format not in COCO_FORMATS:
            raise ConfigError(f"unknown COCO format {format!r}; expected one of {', '.join(COCO_FORMATS)}")
        for name, v in (("image_id", image_id), ("category_id", category_id)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ConfigError(f"{name} must be an integer (COCO ids are integers), got {v!r}")
        k = self.num_keypoints if self.keypoints.ndim == 3 else 0
        if k == 17 and format == "coco17":
            kps, scores, mapped = self.keypoints, self.scores, np.ones(17, bool)
        elif k == NUM_KEYPOINTS:
            kps, scores, mapped = to_keypoint_set(self.keypoints, self.scores, COCO_FORMATS[format])
        else:
            raise ConfigError(f"to_coco(format={format!r}) needs a {NUM_KEYPOINTS}-keypoint result"
                              f"{' (or 17 for coco17)' if format == 'coco17' else ''}, this one has {k}")
        entries = []
        for box, kp, sc in zip(self.boxes, kps, scores, strict=True):
            flat = np.concatenate([kp, sc[:, None]], axis=1).astype(np.float64)
            entry = {"image_id": int(image_id), "category_id": int(category_id),
                     "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
            if format == "coco17":
                entry["keypoints"] = [float(v) for v in flat.ravel()]
            else:
                for part, r in WHOLEBODY_PARTS.items():
                    entry["keypoints" if part == "body" else f"{part}_kpts"] = [float(v) for v in flat[r.start:r.stop].ravel()]
            entry["score"] = float(sc[mapped].mean()) if mapped.any() else 0.0
            entries.append(entry)
        return entries

    def arrays(self) -> dict[str, np.ndarray]:
        return {"boxes": self.boxes, "keypoints": self.keypoints, "scores": self.scores}

    def instances(self) -> list[dict[str, Any]]:
        """Per person, in the demo JSON layout: bbox, keypoints [[x, y] x K], keypoint_scores [K]."""
        return [
            {
                "bbox": [float(v) for v in box],
                "keypoints": [[float(x), float(y)] for x, y in kps],
                "keypoint_scores": [float(s) for s in sc],
            }
            for box, kps, sc in zip(self.boxes, self.keypoints, self.scores, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "image_size": [int(v) for v in self.image_size],
            "num_keypoints": self.num_keypoints,
            "instances": self.instances(),
            **({"random_weights": True} if self.random_weights else {}),
        }

    def draw(self, image: Any, kpt_thr: float = 0.3, **kwargs: Any) -> np.ndarray:
        """Boxes, skeleton links and keypoints whose score is above ``kpt_thr`` (see :func:`draw_pose`)."""
        return draw_pose(image, self, kpt_thr=kpt_thr, **kwargs)


GROUP_COLORS: dict[str, tuple[int, int, int]] = {
    "body": (51, 153, 255),
    "feet": (255, 128, 0),
    "right_hand": (255, 51, 51),
    "left_hand": (0, 255, 0),
    "extra": (255, 255, 0),
    "face": (255, 255, 255),
}
"""RGB colour of the keypoints and links of each keypoint group."""
BOX_COLOR = (0, 255, 0)


def _color_of(index: int, k: int) -> tuple[int, int, int]:
    if k != NUM_KEYPOINTS:
        return GROUP_COLORS["body"]
    for name, r in KEYPOINT_GROUPS.items():
        if index in r:
            return GROUP_COLORS[name]
    return GROUP_COLORS["body"]


OUTSIDE_MARKER = cv2.MARKER_TRIANGLE_UP


def draw_pose(image: Any, result: PoseResult, kpt_thr: float = 0.3, radius: int | None = None,
              thickness: int | None = None, boxes: bool = True, random_weights: bool | None = None) -> np.ndarray:
    """Boxes, skeleton links and the keypoints scoring above ``kpt_thr``.

    308-keypoint results use :data:`~.keypoints.SKELETON`, 17-keypoint ones the COCO skeleton,
    any other count only points. Sizes scale with the image unless given. A confident keypoint
    outside the image is never drawn where it lies: it gets a hollow triangle clipped to the image
    border (no links), and a note in the bottom-left corner counts them ("N keypoints outside");
    non-finite ones are only counted. A RANDOM WEIGHTS banner goes on top when ``random_weights``
    (None follows ``result.random_weights``).
    """
    canvas = image_for(image, result.image_size).copy()
    h, w = canvas.shape[:2]
    radius = radius or max(1, round(max(h, w) / 400))
    thickness = thickness or max(1, radius // 2)
    k = result.keypoints.shape[1] if result.keypoints.ndim == 3 else 0
    links = SKELETON if k == NUM_KEYPOINTS else COCO17_SKELETON if k == 17 else ()
    colors = [_color_of(i, k) for i in range(k)]
    outside_count = 0
    for box, kps, scores in zip(result.boxes, result.keypoints, result.scores, strict=True):
        if boxes:
            x1, y1, x2, y2 = (int(round(float(v))) for v in np.clip(np.nan_to_num(box[:4]), -1e6, 1e6))
            cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, thickness, cv2.LINE_AA)
        confident = scores > kpt_thr
        finite = np.isfinite(kps).all(1)
        safe = np.where(finite[:, None], kps, 0.0)
        inside = confident & finite & (safe[:, 0] > -0.5) & (safe[:, 0] < w - 0.5) & (safe[:, 1] > -0.5) & (safe[:, 1] < h - 0.5)
        outside = confident & ~inside
        outside_count += int(outside.sum())
        pts = np.round(np.clip(safe, -1e6, 1e6)).astype(np.int64)
        for a, b in links:
            if inside[a] and inside[b]:
                cv2.line(canvas, tuple(map(int, pts[a])), tuple(map(int, pts[b])), colors[b], thickness, cv2.LINE_AA)
        for i in np.flatnonzero(inside):
            cv2.circle(canvas, tuple(map(int, pts[i])), radius, colors[i], -1, cv2.LINE_AA)
        size = max(6, 4 * radius)
        for i in np.flatnonzero(outside & finite):
            x = int(np.clip(pts[i, 0], size // 2, max(size // 2, w - 1 - size // 2)))
            y = int(np.clip(pts[i, 1], size // 2, max(size // 2, h - 1 - size // 2)))
            cv2.drawMarker(canvas, (x, y), colors[i], OUTSIDE_MARKER, size, max(1, thickness), cv2.LINE_AA)
    if outside_count:
        note_h = max(10, min(24, round(h * 0.04)))
        put_text(canvas, f"{outside_count} keypoint{'s' if outside_count > 1 else ''} outside", 2, h - note_h - 2,
                 w // 2, note_h)
    return finish(canvas, result, random_weights)


# -- pipeline ------------------------------------------------------------------------------------
class PosePipeline(Pipeline):
    """Top-down pose over person boxes (None = the whole image).

    With ``flip_test`` (default, as the reference) ``preprocess`` returns 2n crops: the n crops
    followed by their horizontal mirrors; ``postprocess`` expects heatmaps for all 2n.
    ``max_boxes`` (default :data:`MAX_BOXES`) limits the boxes per image; calling the pipeline runs
    the crops in network calls of at most ``min(batch_size, crop_batch)`` samples
    (:data:`CROP_BATCH`), so memory stays flat in the number of boxes.
    """

    task = "pose"
    output_names = OUTPUT_NAMES["pose"]
    options = {"flip_test": True, "bbox_padding": BBOX_PADDING, "blur_kernel_size": BLUR_KERNEL_SIZE}

    def __init__(self, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, *, max_boxes: int = MAX_BOXES,
                 crop_batch: int = CROP_BATCH, keypoints: Any = None, **options: Any) -> None:
        for name, value in (("max_boxes", max_boxes), ("crop_batch", crop_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.max_boxes, self.crop_batch = max_boxes, crop_batch
        #: indices (into the 308 set) of the keypoints decoded, in result order; None: all
        self.keypoints = keypoint_subset(keypoints)
        super().__init__(input_size, **options)

    def __call__(self, images: Any, infer: Any, boxes: Any = None, batch_size: int | None = None) -> list:
        """As :meth:`Pipeline.__call__`, with each image's boxes split into chunks so that no network
        call gets more than ``min(batch_size, crop_batch)`` crops; the chunks' results are merged."""
        images = _as_image_list(images)
        ok_size = batch_size is None or (isinstance(batch_size, int) and not isinstance(batch_size, bool)
                                         and batch_size >= 1)
        if not ok_size or not isinstance(boxes, (list, tuple)) or len(boxes) != len(images):
            return super().__call__(images, infer, boxes, batch_size)  # says what is wrong, or no boxes
        step = min(batch_size or self.crop_batch, self.crop_batch)
        per = max(1, step // (2 if self.flip_test else 1))
        items: list[tuple[Any, Any]] = []
        owners: list[int] = []
        for i, (image, box) in enumerate(zip(images, boxes, strict=True)):
            if box is not None:
                image = load_image(image)
                box = validate_boxes(box, image.shape[:2], self.max_boxes)
            for start in range(0, max(len(box), 1) if box is not None else 1, per):
                items.append((image, None if box is None else box[start:start + per]))
                owners.append(i)
        parts = super().__call__([im for im, _ in items], infer, [bx for _, bx in items], step)
        merged: list[list[PoseResult]] = [[] for _ in images]
        for owner, part in zip(owners, parts, strict=True):
            merged[owner].append(part)
        return [ps[0] if len(ps) == 1 else PoseResult(
            np.concatenate([p.boxes for p in ps]), np.concatenate([p.keypoints for p in ps]),
            np.concatenate([p.scores for p in ps]), ps[0].image_size) for ps in merged]

    def _postprocess_subset(self, raw: np.ndarray, meta: dict[str, Any]) -> PoseResult:
        """Decode only ``self.keypoints``: flip averaging and decoding touch those channels alone."""
        n, k = meta["num_instances"], len(self.keypoints)
        keypoints = np.empty((n, k, 2), dtype=np.float32)
        scores = np.empty((n, k), dtype=np.float32)
        for i in range(n):
            kps, scores[i] = decode_channels(_flip_averaged(raw, i, n, meta["flip_test"]), raw.shape[1],
                                             self.keypoints, self.input_size, self.blur_kernel_size)
            keypoints[i] = input_to_image(kps, meta["centers"][i], meta["sizes"][i], self.input_size)
        return PoseResult(meta["boxes"].astype(np.float32), keypoints, scores, tuple(meta["image_size"]))

    def _validate_options(self) -> None:
        if not self.bbox_padding > 0:
            raise ConfigError(f"bbox_padding must be positive, got {self.bbox_padding}")
        if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0:
            raise ConfigError(f"blur_kernel_size must be a positive odd integer, got {self.blur_kernel_size}")

    def preprocess(self, image: Any, boxes: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        image = load_image(image)
        h0, w0 = image.shape[:2]
        if boxes is None:
            if h0 < 2 and w0 < 2:
                raise InvalidImageError(f"a {h0} x {w0} image is too small for pose; expected at least 2 pixels on one side")
            boxes = np.array([[0.0, 0.0, w0 - 1.0, h0 - 1.0]])
        else:
            boxes = validate_boxes(boxes, (h0, w0), self.max_boxes)
        H, W = self.input_size
        centers, sizes = box_to_center_size(boxes, W / H, self.bbox_padding)
        batch = np.empty((len(boxes), 3, H, W), dtype=np.float32)
        for i, (c, s) in enumerate(zip(centers, sizes, strict=True)):
            batch[i] = normalize(crop_person(image, c, s, self.input_size))
        if self.flip_test:
            batch = np.ascontiguousarray(np.concatenate([batch, batch[..., ::-1]]))
        meta = {
            "task": self.task, "batch_size": len(batch), "image_size": (h0, w0), "num_instances": len(boxes),
            "boxes": boxes, "centers": centers, "sizes": sizes, "flip_test": self.flip_test,
        }
        return batch, meta

    def postprocess(self, outputs: Any, meta: dict[str, Any]) -> PoseResult:
        n = meta["num_instances"]
        if n == 0:
            k = NUM_KEYPOINTS
            return PoseResult(np.zeros((0, 4), np.float32), np.zeros((0, k, 2), np.float32),
                              np.zeros((0, k), np.float32), tuple(meta["image_size"]))
        (raw,) = self._outputs(outputs, meta)
        if raw.ndim != 4 or raw.shape[2] < 2 or raw.shape[3] < 2:
            raise InvalidTensorError(f"pose heatmaps must have shape (B, K, h, w) with h, w >= 2, got {raw.shape}")
        hm = raw
        if meta["flip_test"] and raw.shape[1] != len(FLIP_INDICES):
            raise InvalidTensorError(
                f"flip test needs {len(FLIP_INDICES)} keypoint heatmaps (the flip table), got {raw.shape[1]}; "
                "use flip_test=False for other keypoint sets"
            )
        if self.keypoints is not None:
            return self._postprocess_subset(raw, meta)
        if meta["flip_test"]:
            hm = flip_heatmaps(raw[n:])  # average with the unflipped pass: (a + b) / 2
            hm += raw[:n]
            hm *= np.float32(0.5)
        keypoints = np.empty((n, hm.shape[1], 2), dtype=np.float32)
        scores = np.empty((n, hm.shape[1]), dtype=np.float32)
        for i in range(n):
            kps, scores[i] = decode_heatmaps(hm[i], self.input_size, self.blur_kernel_size)
            keypoints[i] = input_to_image(kps, meta["centers"][i], meta["sizes"][i], self.input_size)
        return PoseResult(meta["boxes"].astype(np.float32), keypoints, scores, tuple(meta["image_size"]))


def _flip_averaged(raw: np.ndarray, i: int, n: int, flip_test: bool):
    """``ids`` -> the (len(ids), h, w) heatmaps of instance ``i`` for those channels, flip-averaged
    as :func:`flip_heatmaps` + the unflipped pass, bit for bit, without touching other channels."""
    flip = np.asarray(FLIP_INDICES)

    def channels(ids: np.ndarray) -> np.ndarray:
        if not flip_test:
            return raw[i, ids]
        out = np.ascontiguousarray(raw[n + i, flip[ids], :, ::-1])
        out += raw[i, ids]
        out *= np.float32(0.5)
        return out
    return channels


def pose_demo_json(results: Sequence[PoseResult], image_names: Sequence[str], kpt_thr: float = 0.3,
                   video: str | None = None) -> dict[str, Any]:
    """The reference demo's JSON layout for a sequence of pose results (one per frame/image).

    ``image_size`` is the first frame's [H, W]; ``kpt_thr`` is only recorded (it affects
    drawing, not which keypoints are written).
    """
    if len(results) != len(image_names):
        raise ConfigError(f"got {len(results)} results but {len(image_names)} image names; expected one name per result")
    return {
        "video": video,
        "image_size": [int(v) for v in results[0].image_size] if results else None,
        "num_keypoints": results[0].num_keypoints if results else NUM_KEYPOINTS,
        "kpt_thr_used": float(kpt_thr),
        "frames": [{"image_name": str(name), "instances": r.instances()} for r, name in zip(results, image_names, strict=True)],
    }
