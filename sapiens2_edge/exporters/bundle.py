"""A pose artifact that carries its person detector: ``export(pose, out, detector=DET_DIR)``.

The detector artifact is checked (a complete artifact whose checksums hold and whose task is
``"detection"``) and copied, file by file as its manifest lists them, into ``detector/`` inside the
pose artifact. The pose manifest lists the copies (with their checksums, role ``detector:<role>``)
and names the folder in ``options["detector"]``; so the runtime reads nothing outside the pose
artifact, and a missing or altered detector file fails the pose artifact's own checksum check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..artifact import MANIFEST, read_manifest
from ..artifact.paths import inside
from ..errors import ArtifactError, ConfigError, TaskMismatchError
from ..spec import DETECTION_TASK

#: The folder of a pose artifact that holds its detector artifact (``options["detector"]``).
BUNDLED_DETECTOR = "detector"
ROLE_PREFIX = "detector:"


def check_bundled_detector(path: str | os.PathLike, task: str | None) -> Path:
    """The detector artifact directory ``path`` after checking it can go with a ``task`` export."""
    if task != "pose":
        raise ConfigError(f"detector= bundles a person detector with a pose artifact; this is a {task or 'backbone'} "
                          "model (drop detector=)")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"detector= takes the directory of an exported detector artifact, got {type(path).__name__}")
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"detector= {str(root)!r} is not a directory; expected an exported detector artifact "
                            "(s2e.export(rtmdet, DIR) or sapiens2-edge export rtmdet_m.safetensors -o DIR)")
    manifest = read_manifest(root)  # the manifest and every file's checksum
    if manifest.task != DETECTION_TASK:
        raise TaskMismatchError(f"detector= {str(root)!r} is a {manifest.task or 'backbone'} artifact, not a person "
                                f"detector (its manifest's task is {manifest.task!r}, expected {DETECTION_TASK!r})")
    return root


def copy_detector(src: Path, out: Path) -> dict[str, str]:
    """Copy the detector artifact ``src`` into ``out/detector``; returns {relative path: role} of
    the copies, for the pose manifest."""
    manifest = read_manifest(src)
    dest = out / BUNDLED_DETECTOR
    files = {f"{BUNDLED_DETECTOR}/{MANIFEST}": f"{ROLE_PREFIX}manifest"}
    dest.mkdir()
    shutil.copyfile(inside(src, MANIFEST), dest / MANIFEST)
    for rel, info in manifest.files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inside(src, rel), target)
        files[f"{BUNDLED_DETECTOR}/{rel}"] = ROLE_PREFIX + str(info.get("role"))
    read_manifest(dest)  # the copies' checksums
    return files


__all__ = ["BUNDLED_DETECTOR", "ROLE_PREFIX", "check_bundled_detector", "copy_detector"]
