"""The artifact manifest: what an exported directory holds and how to run it (DESIGN.md).

Torch-free: the runtime reads and validates manifests without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import ArtifactError, ChecksumError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
FORMATS = ("onnx", "openvino", "coreml", "torch", "native")


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    """Everything a runtime needs besides the model files themselves."""

    format: str
    task: str | None
    arch: dict
    head: dict | None
    input_size: list[int]  # (H, W) the graph was exported for
    max_batch: int
    precision: str  # fp32 | fp16 | int8 | fp8 | mixed
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
        known = set(cls.__dataclass_fields__)
        required = ["format", "task", "arch", "head", "input_size", "max_batch", "precision", "rope_mode",
                    "preprocessing", "outputs"]
        missing = [k for k in required if k not in data]
        if missing:
            raise ArtifactError(f"{where} lacks the fields {missing}")
        if data["format"] not in FORMATS:
            raise ArtifactError(f"{where} has unknown format {data['format']!r}; expected one of {FORMATS}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def verify_files(self, root: Path) -> None:
        """Every listed file exists with its recorded size and sha256."""
        for rel, info in self.files.items():
            p = root / rel
            if not p.is_file():
                raise ArtifactError(f"artifact {root} is missing {rel} (listed in its manifest)")
            if p.stat().st_size != info.get("size"):
                raise ChecksumError(f"{p} has {p.stat().st_size} bytes, the manifest says {info.get('size')}: "
                                    "the file was altered or truncated; re-export the artifact")
            if sha256(p) != info.get("sha256"):
                raise ChecksumError(f"{p} does not match its sha256 in the manifest: the file was altered; "
                                    "re-export the artifact")

    def file_for(self, role: str) -> str | None:
        return next((rel for rel, info in self.files.items() if info.get("role") == role), None)


def read_manifest(root: str | os.PathLike, verify: bool = True) -> Manifest:
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
    directory and returns {relative path: role}; checksums and the manifest are added there and the
    directory is renamed into place, so a failed export never leaves a half-written artifact."""
    from .. import __version__

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        roles = build(tmp)
        manifest.files = {rel: {"sha256": sha256(tmp / rel), "size": (tmp / rel).stat().st_size, "role": role}
                          for rel, role in sorted(roles.items())}
        manifest.sdk_version = __version__
        manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        (tmp / MANIFEST).write_text(manifest.to_json())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

