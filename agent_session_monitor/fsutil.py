"""Crash-safe file primitives: atomic replace, durable directories, the writer lock."""

from __future__ import annotations

import errno
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from .errors import MonitorError

TMP_PREFIX = ".tmp-"
FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_dir(path: Path) -> None:
    """Create ``path`` (0700) if missing; an existing directory keeps its mode."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as e:
        raise MonitorError(f"cannot create directory {path}: {e.strerror}") from e
    if not path.is_dir():
        raise MonitorError(f"{path} exists and is not a directory")


def fsync_path(path: Path | str) -> None:
    """fsync a file or a directory by name. On a directory it makes the renames inside
    durable: without it a rename can vanish on power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes, sync: bool) -> str:
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        view = memoryview(data)
        while view:
            # os.write, not a buffered file: a buffered write can swallow ENOSPC at close.
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mix."""
    tmp = _write_temp(path.parent, data, sync=True)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if sync_dir:
        fsync_path(path.parent)


def atomic_write_many(directory: Path, items: Iterable[tuple[Path, bytes]], workers: int = 8) -> None:
    """Atomically replace many files of one directory, then fsync the directory once.

    ``items`` may be a generator: each file's bytes are written to its temp file as they
    come, so a batch never holds more than one serialised file in memory.

    The fsyncs run on a few threads: they release the GIL and ext4 commits concurrent
    fsyncs in one journal transaction, which makes a batch of hundreds of session files
    cost a few journal commits instead of hundreds.
    """
    temps: list[str] = []
    paths: list[Path] = []
    try:
        for path, data in items:
            temps.append(_write_temp(directory, data, sync=False))
            paths.append(path)
        if not temps:
            return
        if len(temps) == 1:
            fsync_path(temps[0])
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(temps))) as pool:
                list(pool.map(fsync_path, temps))
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            _unlink_quietly(tmp)
        raise
    fsync_path(directory)


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a killed writer left behind; only names with our prefix."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if name.startswith(TMP_PREFIX):
            _unlink_quietly(os.path.join(directory, name))
            removed += 1
    return removed


class DirLock:
    """An exclusive ``flock`` on ``<dir>/.lock``: one writer per store.

    The kernel drops the lock when the holder dies, even by SIGKILL, so it never goes
    stale the way a PID file does. (flock is not reliable over NFS: keep the store local.)
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
