"""The artifact manifest: what an exported directory holds and how to run it (DESIGN.md)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import ArtifactError
from .files import check_files, describe_files, write_directory
from .formats import FORMATS

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("format", "task", "arch", "head", "input_size", "max_batch", "precision", "rope_mode", "preprocessing",
            "outputs")


@dataclass
class Manifest:
    """Everything a runtime needs besides the model files themselves."""

    format: str
    task: str | None
    arch: dict
    head: dict | None
    input_size: list[int]  # (H, W) the graph was exported for
    max_batch: int
    precision: str  # fp32 | fp16 | int8-weight | int8 | fp8 | mixed
    rope_mode: str
    preprocessing: dict
    outputs: list[str]
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {sha256, size, role}
    quantization: dict | None = None
    fidelity: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    sdk_version: str = ""
    schema_version: int = SCHEMA_VERSION
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest") -> "Manifest":
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} must hold a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise ArtifactError(f"{where} has no integer schema_version")
        if version > SCHEMA_VERSION:
            raise ArtifactError(f"{where} uses manifest schema {version}, newer than this SDK's {SCHEMA_VERSION}; "
                                "upgrade sapiens2-edge (pip install -U sapiens2-edge) to read it")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ArtifactError(f"{where} lacks the fields {missing}")
        if data["format"] not in FORMATS:
            raise ArtifactError(f"{where} has unknown format {data['format']!r}; expected one of {tuple(FORMATS)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def verify_files(self, root: Path) -> None:
        """Every listed file exists with its recorded size and sha256."""
        check_files(Path(root), self.files)

    def file_for(self, role: str) -> str | None:
        return next((rel for rel, info in self.files.items() if info.get("role") == role), None)

    def require_file(self, role: str, root) -> str:
        """The relative path of the file with ``role``; an ArtifactError when the manifest lists none."""
        rel = self.file_for(role)
        if rel is None:
            raise ArtifactError(f"the manifest of {root} lists no {role} file")
        return rel


def is_artifact(path) -> bool:
    try:
        return (Path(path) / MANIFEST).is_file()
    except TypeError:
        return False


def read_manifest(root: str | os.PathLike, verify: bool = True) -> Manifest:
    """The validated manifest of the artifact at ``root`` (``verify``: check every file's sha256)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} is not an artifact directory: it has no {MANIFEST}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from None
    manifest = Manifest.from_dict(data, str(path))
    if verify:
        manifest.verify_files(root)
    return manifest


def write_artifact(out_dir: str | os.PathLike, manifest: Manifest, build: Callable[[Path], dict[str, str]],
                   overwrite: bool = False) -> Path:
    """Build an artifact atomically: ``build(tmp)`` writes the files into a temporary sibling
    directory and returns {relative path: role}; checksums and the manifest (whose ``sdk_version``
    the caller sets) are added there and the directory is renamed into place."""

    def fill(tmp: Path) -> None:
        manifest.files = describe_files(tmp, build(tmp))
        manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        (tmp / MANIFEST).write_text(manifest.to_json())

    return write_directory(out_dir, fill, overwrite)
