"""Artifact files on disk: sha256 checks and the atomic write of a whole directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import ArtifactError, ChecksumError


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_files(root: Path, roles: dict[str, str]) -> dict[str, dict]:
    """{relative path: {sha256, size, role}} of the files ``roles`` names under ``root``."""
    return {rel: {"sha256": sha256(root / rel), "size": (root / rel).stat().st_size, "role": role}
            for rel, role in sorted(roles.items())}


def check_files(root: Path, files: dict[str, dict]) -> None:
    """Every file of ``files`` (as :func:`describe_files` lists them) exists with its size and sha256."""
    for rel, info in files.items():
        p = root / rel
        if not p.is_file():
            raise ArtifactError(f"artifact {root} is missing {rel} (listed in its manifest)")
        if p.stat().st_size != info.get("size"):
            raise ChecksumError(f"{p} has {p.stat().st_size} bytes, the manifest says {info.get('size')}: "
                                "the file was altered or truncated; re-export the artifact")
        if sha256(p) != info.get("sha256"):
            raise ChecksumError(f"{p} does not match its sha256 in the manifest: the file was altered; "
                                "re-export the artifact")


def write_directory(out_dir: str | os.PathLike, build: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Write a directory atomically: ``build(tmp)`` fills a temporary sibling directory, which is then
    renamed into place, so a failed build never leaves a half-written directory (nor its temp dir)."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
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
