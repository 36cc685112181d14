"""Crash-safe file primitives: atomic replace, durable directories, the writer lock."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from ..errors import MonitorError

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


def refuse_symlink(path: Path) -> None:
    """Raise if ``path`` is a symbolic link: the store never writes (or reads its own
    files) through one, which whoever could plant it would aim at another database, a
    file to create, or someone else's conversation."""
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise MonitorError(f"refusing to use {path}: it is a symbolic link (to {target}) and "
                           "the store never writes through one; remove it (it is not ours)")


def check_store_dir(directory: Path) -> None:
    """Before the monitor writes ``directory``: not world-writable (anyone could plant
    files in it), and none of its own files (all named with a leading dot) a symlink."""
    try:
        st = os.stat(directory)
    except OSError as e:
        raise MonitorError(f"cannot use {directory}: {e.strerror}") from e
    if st.st_mode & stat.S_IWOTH:
        raise MonitorError(f"refusing to write to {directory}: it is world-writable, so anyone "
                           "on this machine could plant files (symlinks) in it; run "
                           f"chmod 700 {directory}")
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        raise MonitorError(f"cannot list {directory}: {e.strerror}") from e
    for entry in entries:
        # Temp names are not ours to refuse: remove_stale_temps unlinks them (the link,
        # never its target).
        if entry.name.startswith(".") and not entry.name.startswith(TMP_PREFIX) \
                and entry.is_symlink():
            refuse_symlink(Path(entry.path))


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of the regular file ``path``, never through a symlink and
    never blocking on a FIFO (OSError otherwise: ELOOP for a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_path(path: Path | str) -> None:
    """fsync a file or a directory by name. On a directory it makes the renames inside
    durable: without it a rename can vanish on power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(directory: Path, data: bytes) -> tuple[int, str]:
    """A new temp file in ``directory`` holding ``data``, still open (fd, path).

    mkstemp creates it 0600 with O_EXCL|O_NOFOLLOW, so no fchmod is needed (a chmod
    would dirty the inode a second time for nothing)."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        view = memoryview(data)
        while view:
            # os.write, not a buffered file: a buffered write can swallow ENOSPC at close.
            n = os.write(fd, view)
            view = view[n:]
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    return fd, tmp


def _write_temp(directory: Path, data: bytes, sync: bool) -> str:
    fd, tmp = _open_temp(directory, data)
    try:
        if sync:
            os.fsync(fd)
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


# Files of a batch held open at once: each chunk is written, synced and renamed before
# the next one is opened, so a batch of 100,000 sessions never needs 100,000 descriptors.
CHUNK_FILES = 256
# Test hooks (tests/test_crash.py): "PHASE:K" SIGKILLs the monitor at the K-th file of a
# batch in that phase (write, sync, rename) or, for "dir", before the directory fsync
# (and, with fault_at, "index:0" / "state:0" at those steps of a commit).
# Inside a commit process (ingest/commit_process.py) "the monitor" is both processes, so
# a kill means what it says wherever the batch is written. FAULT_SCOPE_ENV arms the
# fault only inside a commit process and kills just that process ("child") or just the
# monitor that forked it ("parent"). FAULT_ERRNO_ENV ("ENOSPC", "EACCES") raises that
# OSError at the point instead of a kill: a disk that fills in the middle of a batch.
FAULT_ENV = "ASM_FAULT_BATCH"
FAULT_SCOPE_ENV = "ASM_FAULT_BATCH_SCOPE"
FAULT_ERRNO_ENV = "ASM_FAULT_BATCH_ERRNO"
_fault_parent: int | None = None   # set in a commit process: the monitor that forked it


def in_commit_process(parent: int) -> None:
    """Called by a commit process after its fork: fault hooks kill ``parent`` too."""
    global _fault_parent
    _fault_parent = parent


def atomic_write_many(directory: Path, items: Iterable[tuple[Path, bytes]], workers: int = 8) -> None:
    """Atomically replace many files of one directory, durably, at the cost of a batch.

    What durability needs is an order, not an fsync+rename+directory fsync per file:
    each file's data is on disk before its rename can be, and every rename is on disk
    before the caller goes on (to the index, then ``.state.json``). So the files of a
    chunk are all written first, their data is fsynced together, then they are renamed,
    and the directory is fsynced once for the whole batch. ``os.sync()``/``syncfs`` would
    flush every other writer's data on a shared disk too: only our own files are synced.

    The fsyncs of a chunk run on a few threads: they release the GIL and ext4 commits
    concurrent fsyncs in one journal transaction, so a chunk of hundreds of files costs a
    few journal commits instead of hundreds.

    ``items`` may be a generator: each file's bytes are written to its temp file as they
    come, so a batch never holds more than one serialised file in memory.
    """
    fault = _fault_point()
    done = {"write": 0, "sync": 0, "rename": 0}
    chunk: list[tuple[int, str, Path]] = []
    pool: ThreadPoolExecutor | None = None
    renamed = 0
    try:
        for path, data in items:
            fd, tmp = _open_temp(directory, data)
            chunk.append((fd, tmp, path))
            _maybe_fault(fault, done, "write")
            if len(chunk) >= CHUNK_FILES:
                pool = _commit_chunk(chunk, pool, workers, fault, done)
                renamed += len(chunk)
                chunk = []
        if chunk:
            pool = _commit_chunk(chunk, pool, workers, fault, done)
            renamed += len(chunk)
            chunk = []
    except BaseException:
        for fd, tmp, _path in chunk:
            _close_quietly(fd)
            _unlink_quietly(tmp)
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    if renamed:
        if fault == ("dir", 0):
            _kill_self()
        fsync_path(directory)


def _commit_chunk(chunk: list[tuple[int, str, Path]], pool: ThreadPoolExecutor | None,
                  workers: int, fault, done: dict) -> ThreadPoolExecutor | None:
    """fsync the open temp files of ``chunk`` (concurrently), close and rename them."""
    fds = [fd for fd, _tmp, _path in chunk]
    synced = (lambda: _maybe_fault(fault, done, "sync")) if fault else None
    if len(fds) == 1:
        _fsync_all(fds, synced)
    else:
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=workers)
        # One task per worker over a slice, not one per file: a Future per file costs
        # more than its fsync's Python side.
        n = min(workers, len(fds))
        list(pool.map(_fsync_all, [fds[i::n] for i in range(n)], [synced] * n))
    for fd, _tmp, _path in chunk:
        os.close(fd)
    for i, (fd, tmp, path) in enumerate(chunk):
        try:
            _maybe_fault(fault, done, "rename")
            os.replace(tmp, path)
        except BaseException:
            for _fd, later, _p in chunk[i:]:
                _unlink_quietly(later)
            chunk.clear()   # every descriptor is closed already
            raise
    return pool


def _fsync_all(fds: list[int], synced=None) -> None:
    for fd in fds:
        os.fsync(fd)
        if synced is not None:
            synced()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def fault_at(step: str) -> None:
    """Test hook between the steps of a commit: "index:0" before the index rows are
    written, "state:0" before ``.state.json`` is (the batch's files are durable)."""
    fault = _fault_point()
    if fault is not None and fault[0] == step:
        _kill_self()


def _fault_point() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    if os.environ.get(FAULT_SCOPE_ENV) and _fault_parent is None:
        return None
    phase, _, k = spec.partition(":")
    return phase, int(k or 0)


_fault_lock = threading.Lock()


def _maybe_fault(fault: tuple[str, int] | None, done: dict, phase: str) -> None:
    if fault is None:
        return
    with _fault_lock:   # "sync" is counted on the fsync threads
        done[phase] += 1
        hit = fault[0] == phase and done[phase] == fault[1]
    if hit:
        _kill_self()


def _kill_self() -> None:
    import signal

    name = os.environ.get(FAULT_ERRNO_ENV)
    if name:
        code = getattr(errno, name)
        raise OSError(code, os.strerror(code))
    scope = os.environ.get(FAULT_SCOPE_ENV)
    if _fault_parent is not None and scope != "child":
        os.kill(_fault_parent, signal.SIGKILL)
        if scope == "parent":
            return
    os.kill(os.getpid(), signal.SIGKILL)


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

        try:
            # O_NOFOLLOW: a planted .lock symlink would make us create or lock its target.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
        except OSError as e:
            if e.errno == errno.ELOOP:
                refuse_symlink(self.path)
            raise
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
