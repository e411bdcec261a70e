"""Facts the Sapiens2 specification fixes, defined once for every layer (torch-free).

Python code imports them from here; the C++ engine has one table of them,
``cpp/include/s2e/spec.hpp``, which ``tests/test_spec_facts.py`` checks equal to this module
so the two cannot drift.
"""

from __future__ import annotations

from .errors import ConfigError

TASKS: tuple[str, ...] = ("pose", "seg", "normal", "pointmap", "albedo")

# Raw outputs of each task head, in the order a backend returns them (graph output names too).
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "pose": ("heatmaps",),
    "seg": ("logits",),
    "normal": ("normal",),
    "pointmap": ("pointmap", "scale"),
    "albedo": ("albedo",),
}
PRETRAIN_OUTPUT_NAMES: tuple[str, ...] = ("featmap",)

# The person detector (spec 2.1, RTMDet-m) as an exported artifact: its manifest's task, its input
# (H, W) and its raw outputs, per level (strides 8, 16, 32) class logits then box distances.
DETECTION_TASK = "detection"
DETECTOR_INPUT_SIZE: tuple[int, int] = (640, 640)
DETECTOR_STRIDES: tuple[int, ...] = (8, 16, 32)
DETECTION_OUTPUT_NAMES: tuple[str, ...] = (*(f"cls_{s}" for s in DETECTOR_STRIDES),
                                           *(f"box_{s}" for s in DETECTOR_STRIDES))

PATCH_SIZE = 16
NUM_STORAGE_TOKENS = 8
NUM_PREFIX_TOKENS = 1 + NUM_STORAGE_TOKENS  # 1 CLS + 8 storage tokens = 9
WINDOW_SIZE = 4  # 4K tokenizer: 4x4 patch windows
DEFAULT_INPUT_SIZE: tuple[int, int] = (1024, 768)  # (H, W)

# The released checkpoints (spec 1.10): official Hugging Face ids are
# facebook/sapiens2-pretrain-{size} and facebook/sapiens2-{task}-{size}. Albedo has configs and a
# demo but no released weights.
RELEASED_PRETRAIN_SIZES: tuple[str, ...] = ("0.1b", "0.4b", "0.8b", "1b", "1b-4k", "5b")
RELEASED_TASKS: tuple[str, ...] = ("pose", "seg", "normal", "pointmap")
RELEASED_TASK_SIZES: tuple[str, ...] = ("0.4b", "0.8b", "1b", "5b")


def check_task(task: object) -> str:
    """``task`` when it is one of :data:`TASKS`, else a :class:`ConfigError` listing them."""
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def output_names(task: str | None) -> tuple[str, ...]:
    """The raw output names of a task head (``None``: a pretrain backbone's featmap; the person
    detector's for :data:`DETECTION_TASK`)."""
    if task is None:
        return PRETRAIN_OUTPUT_NAMES
    if task == DETECTION_TASK:
        return DETECTION_OUTPUT_NAMES
    return OUTPUT_NAMES[check_task(task)]
