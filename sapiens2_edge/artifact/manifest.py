"""The artifact manifest: what an exported directory holds and how to run it (DESIGN.md)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import ArtifactError
from .destination import write_directory
from .files import check_files, describe_files
from .formats import FORMATS
from .paths import check_relative
from .reference import REFERENCE
from .schema import MAX_MANIFEST_BYTES, SCHEMA_VERSION, parse_json, validate

MANIFEST = "manifest.json"


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
        validate(data, where)  # every field's type and range (artifact/schema.py)
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
        return check_relative(rel, f"the manifest of {root}")


def is_artifact(path) -> bool:
    try:
        return (Path(path) / MANIFEST).is_file()
    except TypeError:
        return False


def looks_like_artifact(path) -> bool:
    """Whether ``path`` is a directory holding files an export writes (a model file of some format
    or the reference outputs): with or without its manifest, it is treated as an artifact."""
    try:
        names = set(os.listdir(path))
    except (OSError, TypeError, ValueError):
        return False
    tops = {f.split("/")[0] for fmt in FORMATS.values() for f in fmt.files} | {REFERENCE, MANIFEST}
    return bool(names & tops)


def read_manifest(root: str | os.PathLike, verify: bool = True) -> Manifest:
    """The validated manifest of the artifact at ``root`` (``verify``: check every file's sha256)."""
    root = Path(root)
    path = root / MANIFEST
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        what = "holds artifact files but" if looks_like_artifact(root) else "is not an artifact directory: it"
        raise ArtifactError(f"{root} {what} has no {MANIFEST}; an artifact is the complete directory an export "
                            "wrote - re-export it (a checkpoint is a .safetensors file, not such a directory)")
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactError(f"{path} is a symbolic link; the manifest must be a file inside the artifact")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is larger than the {MAX_MANIFEST_BYTES}-byte limit for a manifest")
    try:
        text = path.read_bytes()[: MAX_MANIFEST_BYTES + 1].decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from None
    manifest = Manifest.from_dict(parse_json(text, str(path)), str(path))
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

    return write_directory(out_dir, fill, overwrite, replaceable=replace_problem)


def replace_problem(out: Path) -> str | None:
    """Why ``overwrite=True`` must not replace the existing ``out`` (None: it is an artifact whose
    every file its manifest or format accounts for, so replacing it loses nothing else)."""
    if out.is_symlink():
        return "is a symbolic link"
    if not out.is_dir():
        return "is not a directory"
    try:
        manifest = read_manifest(out, verify=False)
    except ArtifactError as e:
        return f"is not a valid artifact ({e})"
    fmt = FORMATS[manifest.format]
    extra = []
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), out).replace(os.sep, "/")
            if rel != MANIFEST and rel not in manifest.files and not fmt.writes(rel):
                extra.append(rel)
    if extra:
        return f"holds files its manifest does not list ({', '.join(sorted(extra)[:5])}), which would be lost"
    return None
