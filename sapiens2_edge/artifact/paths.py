"""Paths inside an artifact: every file a manifest names is a plain relative path that stays inside
the artifact directory, reached without following a symbolic link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ArtifactError

MAX_NAME = 1024  # characters of one relative path


def path_problem(rel: object) -> str | None:
    """Why ``rel`` is not a valid file name of an artifact (None when it is): a non-empty relative
    path with ``/`` separators, no ``.``/``..`` or empty parts, no backslash or NUL."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if len(rel) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if "\\" in rel or "\0" in rel:
        return "holds a backslash or NUL character"
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return "is an absolute path"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "has an empty, '.' or '..' part"
    return None


def check_relative(rel: object, where: str) -> str:
    problem = path_problem(rel)
    if problem:
        raise ArtifactError(f"{where}: the file name {str(rel)[:200]!r} {problem}; an artifact lists its files as "
                            "relative paths inside its directory (e.g. 'model.onnx')")
    return rel  # type: ignore[return-value]


def inside(root: str | os.PathLike, rel: str, kind: str = "file") -> Path:
    """``root / rel`` after checking that ``rel`` is a valid relative name and that no part of the
    path from ``root`` is a symbolic link; ``kind`` ("file", "dir" or "any") is what it must be.
    Raises ArtifactError when it is missing or is not that."""
    root = Path(root)
    check_relative(rel, f"artifact {root}")
    path = root
    parts = rel.split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {root} is missing {rel} (listed in its manifest)") from None
        except OSError as e:
            raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError(f"{path} is a symbolic link; the files of an artifact must be inside its directory, "
                                "not links (re-export the artifact or copy the files in)")
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"artifact {root} is missing {rel}: {path} is not a directory")
        if last and kind == "file" and not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file (listed in the manifest of {root} as a file)")
        if last and kind == "dir" and not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{path} is not a directory")
    return path


def no_links(root: str | os.PathLike) -> None:
    """Refuse a symbolic link anywhere under ``root`` (a package directory a runtime reads whole)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            if os.path.islink(os.path.join(dirpath, name)):
                raise ArtifactError(f"{os.path.join(dirpath, name)} is a symbolic link; the files of an artifact "
                                    "must be inside its directory, not links")
