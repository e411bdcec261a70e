"""Artifact files on disk: sizes and sha256 checks (the atomic write is in ``destination.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import ArtifactError, ChecksumError
from .paths import inside, no_links


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
    """Every file of ``files`` (as :func:`describe_files` lists them) exists inside ``root`` (no
    symbolic link anywhere in the artifact) with its size and sha256."""
    no_links(root)
    for rel, info in files.items():
        p = inside(root, rel)
        if p.stat().st_size != info.get("size"):
            raise ChecksumError(f"{p} has {p.stat().st_size} bytes, the manifest says {info.get('size')}: "
                                "the file was altered or truncated; re-export the artifact")
        try:
            digest = sha256(p)
        except OSError as e:
            raise ArtifactError(f"cannot read {p}: {e.strerror}") from None
        if digest != info.get("sha256"):
            raise ChecksumError(f"{p} does not match its sha256 in the manifest: the file was altered; "
                                "re-export the artifact")
