"""Facts the Sapiens2 specification fixes, defined once for every layer (torch-free).

Python code imports them from here; the C++ engine's copies are checked equal to these by
``tests/test_layers.py`` so the two cannot drift.
"""

from __future__ import annotations

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

PATCH_SIZE = 16
NUM_PREFIX_TOKENS = 9  # 1 CLS + 8 storage tokens
DEFAULT_INPUT_SIZE: tuple[int, int] = (1024, 768)  # (H, W)


def output_names(task: str | None) -> tuple[str, ...]:
    """The raw output names of a task head (``None``: a pretrain backbone's featmap)."""
    if task is None:
        return PRETRAIN_OUTPUT_NAMES
    return OUTPUT_NAMES[task]
