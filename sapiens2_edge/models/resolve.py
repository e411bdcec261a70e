"""Where a checkpoint comes from: a file, a directory, ``$SAPIENS_CHECKPOINT_ROOT`` or the
Hugging Face hub (cache first, then a download unless offline).

Standard library only; ``huggingface_hub`` is optional and imported on demand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError
from ..spec import RELEASED_PRETRAIN_SIZES, RELEASED_TASK_SIZES, RELEASED_TASKS
from .safetensors_header import PICKLE_SUFFIXES, pickle_refusal, shorten

_DEFAULT_ROOT = "~/sapiens2_host"
_ROOT_ENV = "SAPIENS_CHECKPOINT_ROOT"
_DETECTOR_REPO = "sapiens-pose-bbox-detector"
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def official_filename(repo_id: str) -> str | None:
    """The README file name (relative to ``$SAPIENS_CHECKPOINT_ROOT``) for a Sapiens2 repo id.

    ``facebook/sapiens2-seg-0.4b`` -> ``seg/sapiens2_0.4b_seg.safetensors``;
    ``facebook/sapiens2-pretrain-1b-4k`` -> ``pretrain/sapiens2_1b_4k_pretrain.safetensors``;
    ``facebook/sapiens-pose-bbox-detector`` -> ``detector/rtmdet_m.pth``. ``None`` for any
    other id (including task/size pairs that were never released). The owner is not checked,
    so mirrors under another owner map to the same name.
    """
    if not isinstance(repo_id, str) or not _HF_ID.match(repo_id):
        return None
    name = repo_id.split("/", 1)[1].lower()
    if name == _DETECTOR_REPO:
        return "detector/rtmdet_m.pth"
    if not name.startswith("sapiens2-"):
        return None
    rest = name[len("sapiens2-"):]
    task, _, size = rest.partition("-")
    if task == "pretrain" and size in RELEASED_PRETRAIN_SIZES:
        return f"pretrain/sapiens2_{size.replace('-', '_')}_pretrain.safetensors"
    if task in RELEASED_TASKS and size in RELEASED_TASK_SIZES:
        return f"{task}/sapiens2_{size}_{task}.safetensors"
    return None


def checkpoint_root() -> Path:
    """``$SAPIENS_CHECKPOINT_ROOT`` (read at call time), default ``~/sapiens2_host``."""
    return Path(os.environ.get(_ROOT_ENV) or _DEFAULT_ROOT).expanduser()


def _looks_like_safetensors(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def _resolve_file(p: Path) -> Path:
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return p
    if suffix in PICKLE_SUFFIXES:
        raise CheckpointError(pickle_refusal(p))
    if _looks_like_safetensors(p):
        return p
    raise CheckpointError(
        f"{str(p)!r} is not a safetensors file (expected a .safetensors file, a directory "
        "holding one, or a Hugging Face repo id such as 'facebook/sapiens2-seg-0.4b')"
    )


def _pick_safetensors(files: list[Path], where: str, preferred: str | None = None) -> Path | None:
    """Choose one file: the preferred name, else the only one, else model.safetensors."""
    if not files:
        return None
    if preferred is not None:
        hits = sorted((f for f in files if f.name == preferred), key=lambda f: len(f.parts))
        if hits:
            return hits[0]
    if len(files) == 1:
        return files[0]
    named = sorted((f for f in files if f.name == "model.safetensors"), key=lambda f: len(f.parts))
    if named:
        return named[0]
    sharded = any(re.search(r"-\d+-of-\d+\.safetensors$", f.name) for f in files)
    hint = (
        " (this looks like a sharded checkpoint; merge the shards into one file)"
        if sharded
        else ""
    )
    raise CheckpointError(
        f"{where} holds {len(files)} .safetensors files and none is named "
        f"'model.safetensors', so which one to load is ambiguous: "
        f"{shorten([f.name for f in files], 10)}{hint}; pass the file path instead"
    )


def _resolve_dir(d: Path) -> Path:
    files = sorted(f for f in d.glob("*.safetensors") if f.is_file())
    picked = _pick_safetensors(files, f"directory {str(d)!r}")
    if picked is not None:
        return picked
    pickles = sorted(f.name for f in d.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    extra = (
        f"; it holds pickle-based files ({shorten(pickles)}), which are never loaded: "
        "convert them to safetensors"
        if pickles
        else ""
    )
    raise CheckpointNotFoundError(f"directory {str(d)!r} holds no .safetensors file{extra}")


def _hf_cache_dir(hub: Any) -> str:
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return str(Path(env["HF_HUB_CACHE"]).expanduser())
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return str(Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser())
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]).expanduser() / "hub")
    default = Path("~/.cache/huggingface/hub").expanduser()
    return str(getattr(hub.constants, "HF_HUB_CACHE", default))


def _hf_offline(hub: Any) -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    return bool(getattr(hub.constants, "HF_HUB_OFFLINE", False))


def _how_to_get(repo_id: str, official: str | None) -> str:
    root = checkpoint_root()
    lines = [
        "To get it, either:",
        f"  - download it: hf download {repo_id} --include '*.safetensors'",
        "    (older huggingface_hub: "
        f"huggingface-cli download {repo_id} --include '*.safetensors');",
        "    gated repos need `hf auth login` and the license accepted on huggingface.co",
    ]
    if official is not None:
        lines.append(f"  - or put the file at ${_ROOT_ENV}/{official} (here: {root / official})")
    lines.append("  - or pass the path of a local .safetensors file")
    return "\n".join(lines)


def _resolve_hf(repo_id: str) -> Path:
    official = official_filename(repo_id)
    if official is not None and not official.endswith(".safetensors"):
        raise CheckpointError(
            f"{repo_id!r} ships only a pickle-based checkpoint ({official}); pickle-based "
            "checkpoints are never loaded. Convert it to safetensors first"
        )
    tried: list[str] = []
    if official is not None:
        candidate = checkpoint_root() / official
        if candidate.is_file():
            return _resolve_file(candidate)
        tried.append(f"${_ROOT_ENV}/{official} ({candidate}): no such file")
    else:
        tried.append(
            f"${_ROOT_ENV}: {repo_id!r} is not an official Sapiens2 repo id, "
            "no file name to look for"
        )
    preferred = Path(official).name if official else None

    try:
        import huggingface_hub as hub
        import huggingface_hub.constants  # noqa: F401 - a lazy submodule in huggingface_hub >= 1.0
    except ImportError:
        tried.append(
            "Hugging Face cache: huggingface_hub is not installed (pip install huggingface_hub)"
        )
        raise CheckpointNotFoundError(
            f"checkpoint {repo_id!r} was not found locally and huggingface_hub is not installed "
            "(pip install huggingface_hub).\nTried:\n  - "
            + "\n  - ".join(tried)
            + "\n"
            + _how_to_get(repo_id, official)
        ) from None

    cache_dir = _hf_cache_dir(hub)
    offline = _hf_offline(hub)
    patterns = ["*.safetensors", "*.json"]

    def _pick(folder: str) -> Path | None:
        root = Path(folder)
        files = sorted(f for f in root.rglob("*.safetensors") if f.is_file())
        where = f"Hugging Face snapshot {str(root)!r} of {repo_id!r}"
        return _pick_safetensors(files, where, preferred)

    attempts = [True] if offline else [True, False]
    for local_only in attempts:
        try:
            folder = hub.snapshot_download(
                repo_id,
                allow_patterns=patterns,
                local_files_only=local_only,
                cache_dir=cache_dir,
            )
        except Exception as e:  # noqa: BLE001 - any hub failure means "not found here"
            kind = "cache" if local_only else "download"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            tried.append(f"Hugging Face {kind} ({cache_dir}): {type(e).__name__}: {msg}")
            continue
        picked = _pick(str(folder))
        if picked is not None:
            return picked
        kind = "cache" if local_only else "download"
        tried.append(f"Hugging Face {kind} ({folder}): no .safetensors file in the snapshot")
    if offline:
        tried.append("Hugging Face download: skipped, HF_HUB_OFFLINE is set")
    raise CheckpointNotFoundError(
        f"checkpoint {repo_id!r} was not found"
        + (" locally and HF_HUB_OFFLINE=1 forbids downloading it" if offline else "")
        + ".\nTried:\n  - "
        + "\n  - ".join(tried)
        + "\n"
        + _how_to_get(repo_id, official)
    )


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """Turn a file path, a directory or a Hugging Face repo id into a local .safetensors path.

    1. an existing file: a ``.safetensors`` file (or one whose bytes look like safetensors) is
       returned as is; ``.pth``/``.bin``/``.pt``/... are refused without being opened;
    2. an existing directory: its single ``*.safetensors`` (``model.safetensors`` when there
       are several);
    3. ``owner/name`` that is not an existing path: ``$SAPIENS_CHECKPOINT_ROOT/<official
       name>``, then the Hugging Face cache, then (unless offline) a download;
    4. anything else: :class:`CheckpointNotFoundError` saying what was tried.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise CheckpointError(
            f"checkpoint must be a path or a Hugging Face repo id, got {type(spec).__name__}"
        )
    raw = os.fspath(spec)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw.strip():
        raise CheckpointNotFoundError("empty checkpoint path / repo id")
    p = Path(raw).expanduser()
    if p.is_file():
        return _resolve_file(p)
    if p.is_dir():
        return _resolve_dir(p)
    looks_like_path = (
        p.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)
        or raw.startswith(("/", ".", "~"))
        or os.sep in raw.replace("/", "")
    )
    if isinstance(spec, str) and not looks_like_path and _HF_ID.match(raw):
        return _resolve_hf(raw)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointNotFoundError(
            f"no file at {str(p)!r} (and pickle-based checkpoints such as {p.suffix} are never "
            "loaded anyway: pass a .safetensors file)"
        )
    raise CheckpointNotFoundError(
        f"checkpoint {raw!r} not found: it is not an existing file or directory"
        + (
            ""
            if looks_like_path or not isinstance(spec, str)
            else ", nor a Hugging Face repo id of the form 'owner/name' "
            "(e.g. 'facebook/sapiens2-seg-0.4b')"
        )
        + ". Pass a .safetensors file, a directory holding one, or a repo id"
    )


__all__ = ["resolve_checkpoint", "official_filename", "checkpoint_root"]
