"""The tasks package: its public names, its facts taken from spec.py, and an import graph without circles."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

import sapiens2_edge.tasks as tasks
from sapiens2_edge import spec

TASKS_DIR = Path(tasks.__file__).parent

# Every name sapiens2_edge.tasks offered before its modules were grouped by task.
PUBLIC = [
    "TASKS", "get_pipeline", "Pipeline", "load_image", "MAX_SIDE", "MAX_PIXELS",
    "MEAN", "STD", "MEAN_RGB", "STD_RGB", "DEFAULT_INPUT_SIZE", "Letterbox",
    "PoseResult", "SegResult", "NormalResult", "PointmapResult", "AlbedoResult",
    "PosePipeline", "SegPipeline", "NormalPipeline", "PointmapPipeline", "AlbedoPipeline",
    "decode_heatmaps", "pose_demo_json",
    "KEYPOINT_NAMES", "NUM_KEYPOINTS", "KEYPOINT_GROUPS", "FLIP_INDICES", "SKELETON",
    "COCO17_NAMES", "COCO17_FROM_308", "to_coco17",
    "SEG_CLASSES", "SEG_PALETTE", "SEG_FLIP_PAIRS",
]


def _imports(path: Path) -> set[str]:
    """Modules of sapiens2_edge a file under tasks/ imports (module level and inside functions)."""
    package = "sapiens2_edge.tasks"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not base.startswith("sapiens2_edge"):
                continue
            found.add(base)
            for alias in node.names:  # "from . import pose" names a module
                if (TASKS_DIR / f"{alias.name}.py").exists() and base == package:
                    found.add(f"{package}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sapiens2_edge"))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(TASKS_DIR.glob("*.py")):
        name = "sapiens2_edge.tasks" if path.stem == "__init__" else f"sapiens2_edge.tasks.{path.stem}"
        graph[name] = _imports(path)
    return graph


def test_public_names_stay_importable():
    missing = [n for n in PUBLIC if not hasattr(tasks, n)]
    assert not missing
    assert set(PUBLIC) <= set(tasks.__all__)


def test_tasks_import_only_errors_spec_and_tasks():
    allowed = ("sapiens2_edge.errors", "sapiens2_edge.spec", "sapiens2_edge.tasks")
    bad = {m: sorted(i for i in imps if not i.startswith(allowed)) for m, imps in _graph().items()}
    assert not {m: b for m, b in bad.items() if b}


def test_no_import_circle_inside_tasks():
    graph = {m: {i for i in imps if i in _graph_names()} for m, imps in _graph().items()}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return seen

    # the package __init__ re-exports its modules; no module may import the package back
    circles = sorted(m for m in graph if m in reachable(m))
    assert not circles, f"modules that import themselves through others: {circles}"


def _graph_names() -> set[str]:
    return {"sapiens2_edge.tasks" if p.stem == "__init__" else f"sapiens2_edge.tasks.{p.stem}"
            for p in TASKS_DIR.glob("*.py")}


def test_facts_come_from_spec():
    assert tasks.TASKS is spec.TASKS and tasks.DEFAULT_INPUT_SIZE is spec.DEFAULT_INPUT_SIZE
    for task in spec.TASKS:
        pipe = tasks.get_pipeline(task, (64, 48))
        assert pipe.output_names == spec.output_names(task) and pipe.num_outputs == len(spec.output_names(task))


def test_decode_heatmaps_input_size_is_h_w():
    hm = np.zeros((1, 32, 24), np.float32)  # no positive peak: (-1, -1) heatmap px = -(W / (w-1), H / (h-1))
    kps, _ = tasks.decode_heatmaps(hm, (128, 96))
    np.testing.assert_allclose(kps[0], [-96 / 23, -128 / 31], rtol=1e-6)
    default, explicit = tasks.decode_heatmaps(hm), tasks.decode_heatmaps(hm, (1024, 768), 11)
    np.testing.assert_array_equal(default[0], explicit[0])
