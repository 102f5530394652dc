"""The folders a process writes (the coordinator's run folder, a client's state folder):
checked before any work, written atomically, their failures said in one line.

Why: an operator's fault (a read-only mount, a file where the folder should be, a full disk)
must stop a command with one line naming the path and exit 2, like a configuration error,
not with a traceback; and no failure may leave a 0-byte or half-written file that a later
reader (the live table, a resumed run, ``fedlora report``) takes for a result. So files are
written to a temporary name and renamed, append-only logs are cut back to their last whole
record, and a small reserve keeps room for a run's last words when its disk fills mid-run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

# Free space a folder must have for a command to start, and the reserve a run folder keeps
# for its summary and the log's last lines: both fit in far less.
RESERVE_BYTES = 256 << 10
RESERVE_NAME = ".fedlora-reserve"

_REASONS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "not a directory",
    errno.EIO: "I/O error",
}


class StorageError(Exception):
    """A folder or file that cannot be written; the message names the path and says why,
    ``why`` is the reason alone ("no space left on device")."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


def reason(e: OSError) -> str:
    """The errno in the words an operator acts on."""
    return _REASONS.get(e.errno or 0, e.strerror or str(e))


def is_full(e: BaseException) -> bool:
    """Whether a failed write ran out of space (rather than permission or a bad path)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _in_the_way(path: Path) -> Path | None:
    """The first existing component of ``path`` that is not a folder, if any."""
    try:
        for p in [*reversed(path.parents), path]:
            if not p.exists():
                return None
            if not p.is_dir():
                return p
    except OSError:  # a folder we may not look into: mkdir will say why
        return None
    return None


def prepare_dir(path: Path, what: str) -> Path:
    """Creates ``path`` and proves it writable with :data:`RESERVE_BYTES` to spare (written,
    synced and removed), so a read-only, misplaced or full folder stops the command before
    any work. ``what`` names the folder in the message ("run folder", "state folder")."""
    blocker = _in_the_way(path)
    if blocker is not None:
        where = "is a file" if blocker == path else f"{blocker} is a file"
        raise StorageError(f"storage error: {what} {path}: {where}, not a folder", "a file is in the way")
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"storage error: {what} {path}: {reason(e)}", reason(e)) from None
    probe = path / f".fedlora-probe-{os.getpid()}"
    try:
        _replace(probe, bytes(RESERVE_BYTES))
    except OSError as e:
        if not existed:  # leave nothing behind: the folder we made is empty
            with contextlib.suppress(OSError):
                path.rmdir()
        raise StorageError(f"storage error: {what} {path}: {reason(e)}", reason(e)) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return path


def file_sha256(path: Path) -> str:
    """A file's sha256, read through a map of it: a model-sized file is hashed without a copy."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest()


def tree_sha256(path: Path) -> str:
    """A file's sha256, or a folder's (a ``save_to_disk`` data set): the sha256 of each file's
    name relative to the folder and digest, in name order, so a folder is checked as one thing
    and a renamed, added or changed file changes it."""
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def write_atomic(path: Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Writes ``path`` whole or not at all: a temporary file in the same folder, synced, then
    renamed over it; on failure ``path`` is as it was and no temporary file is left. ``data``
    may be a function that writes the content into the open file, for content too large to
    build in memory first."""
    try:
        _replace(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as e:
        raise StorageError(f"storage error: {path}: cannot write: {reason(e)}", reason(e)) from e
    return path


def _replace(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Temp file beside ``path``, fsynced, renamed over it, then the folder fsynced: after a
    crash of the process or the machine, ``path`` holds its old content or ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yields a temporary folder beside ``path``; when the block ends without error it replaces
    ``path`` (a saved adapter appears whole or not at all), otherwise it is removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Appender:
    """An append-only file of whole records (``metrics.jsonl``), created on the first record.

    A record the disk cannot take is cut back off, so the file never ends in half a line.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def append(self, data: bytes) -> None:
        try:
            fd = self._open()
            start = os.lseek(fd, 0, os.SEEK_END)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        except OSError as e:
            raise StorageError(f"storage error: {self.path}: cannot write: {reason(e)}",
                               reason(e)) from e

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def truncate(self, size: int) -> None:
        """Cuts the file back to its first ``size`` bytes (a resumed run's journaled prefix)."""
        os.ftruncate(self._open(), size)

    def sync(self) -> int:
        """Makes every record durable; returns the file's size."""
        try:
            fd = self._open()
            os.fsync(fd)
            return os.fstat(fd).st_size
        except OSError as e:
            raise StorageError(f"storage error: {self.path}: cannot sync: {reason(e)}", reason(e)) from e

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Reserve:
    """Space held in a run folder (:data:`RESERVE_BYTES`, a hidden file) and given back on
    the first write that fails there, so the summary and the log's reason still fit on a disk
    that filled mid-run (unless something else takes the space first)."""

    def __init__(self, folder: Path):
        self.path = write_atomic(folder / RESERVE_NAME, bytes(RESERVE_BYTES))

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
