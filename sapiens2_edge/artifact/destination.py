"""Where an export puts its directory, without ever losing data.

* The destination is checked before any work: a new path, or with ``overwrite`` an existing
  directory that the caller's ``replaceable`` accepts (an artifact); anything else is refused.
* One export at a time per destination: a lock file ``.NAME.lock`` beside it (``flock``); a second
  export to the same path while one runs is refused at once.
* The directory is built in ``.NAME.tmp-PID-XXXX`` beside the destination and moved into place
  in one step (``renameat2``: RENAME_NOREPLACE for a new path, RENAME_EXCHANGE to replace), so the
  destination is always the old complete directory or the new one. Where the system lacks
  ``renameat2`` the old one is renamed to ``.NAME.old`` first; an export that finds one left by a
  killed process puts it back (or removes it when the new directory is in place).
* Temporary directories of killed exports (their PID no longer alive) are removed by the next
  export to the same destination; a failed build removes its own.
* Directories are created with ``mkdir`` (mode 0o777), so permissions follow the umask.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ArtifactError

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def destination(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as an absolute path with a name (``"."`` becomes the current directory's path)."""
    try:
        out = Path(os.path.abspath(os.fspath(out_dir)))
    except TypeError:
        raise ArtifactError(f"out_dir must be a path, got {type(out_dir).__name__}") from None
    if not out.name or out.parent == out:
        raise ArtifactError(f"cannot write an artifact to {out}: choose a directory path with a name")
    return out


def check_destination(out_dir: str | os.PathLike, overwrite: bool,
                      replaceable: Callable[[Path], str | None] | None = None) -> Path:
    """The destination path, after checking that it is free, or (``overwrite``) that what is there
    may be replaced: ``replaceable(out)`` returns why not, or None."""
    out = destination(out_dir)
    if not os.path.lexists(out):
        return out
    if not overwrite:
        raise ArtifactError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    problem = "is not a directory" if out.is_symlink() or not out.is_dir() else None
    if problem is None and replaceable is not None:
        problem = replaceable(out)
    if problem:
        raise ArtifactError(f"{out} {problem}: overwrite=True replaces only an artifact directory an export wrote; "
                            "move or remove it yourself, or choose another out_dir")
    return out


def write_directory(out_dir: str | os.PathLike, build: Callable[[Path], None], overwrite: bool = False,
                    replaceable: Callable[[Path], str | None] | None = None) -> Path:
    """Write a directory atomically: ``build(tmp)`` fills a temporary sibling directory, which then
    replaces the destination in one step (see the module notes)."""
    out = destination(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create the directory {out.parent}: {e.strerror}") from None
    with _locked(out):
        recover(out)
        check_destination(out, overwrite, replaceable)
        tmp = _make_tmp(out)
        try:
            build(tmp)
            _move_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the build's leftovers, or the replaced directory
    return out


def _sibling(out: Path, tag: str) -> Path:
    return out.with_name(f".{out.name}.{tag}")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold the destination's lock file; refuse at once when another export holds it."""
    import fcntl

    path = _sibling(out, "lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ArtifactError(f"cannot create the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ArtifactError(f"another export to {out} is in progress (it holds {path}); wait for it to finish "
                                "or export to another directory") from None
        try:  # the file may have been unlinked by its previous holder between our open and flock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def recover(out: Path) -> None:
    """Undo what a killed export left (call with the lock held): a ``.NAME.old`` is put back when
    the destination is missing, else removed; temporary directories of dead processes go."""
    old = _sibling(out, "old")
    if os.path.lexists(old):
        if os.path.lexists(out):
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(old, out)
            except OSError as e:
                raise ArtifactError(f"cannot put back {old}, the artifact a killed export left, as {out}: "
                                    f"{e.strerror}; rename it yourself") from None
    prefix = f".{out.name}.tmp-"
    for entry in os.scandir(out.parent):
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-")[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(entry.path, ignore_errors=True)


def _make_tmp(out: Path) -> Path:
    tmp = _sibling(out, f"tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(tmp, 0o777)  # the umask applies
    except OSError as e:
        raise ArtifactError(f"cannot create {tmp}: {e.strerror}") from None
    return tmp


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True when done; False when this system has no renameat2 (or the filesystem lacks the flag)."""
    func = getattr(_libc(), "renameat2", None)
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def _move_into_place(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out``; a replaced ``out`` ends up at ``tmp`` (removed by the caller)."""
    try:
        if not os.path.lexists(out):
            if not _renameat2(tmp, out, _RENAME_NOREPLACE):
                os.rename(tmp, out)
        elif not _renameat2(tmp, out, _RENAME_EXCHANGE):
            old = _sibling(out, "old")
            os.rename(out, old)
            os.rename(tmp, out)
            os.rename(old, tmp)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise ArtifactError(f"{out} appeared while the export was running; nothing was replaced") from None
        raise ArtifactError(f"cannot move the new artifact into place at {out}: {e.strerror}") from None
