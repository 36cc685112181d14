"""Crash-safe file primitives: atomic replace, durable directories, the writer lock."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:   # imported when a pool is made: concurrent.futures brings logging,
    from concurrent.futures import ThreadPoolExecutor   # ~5 ms of every run's start

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


# The store's own files, opened in place rather than replaced by a rename (a rename
# replaces a planted symlink instead of writing through it, so session files and
# .state.json need no such check when written). SQLite opens its journals itself.
_SQLITE_FILES = (".index.sqlite", ".otlp-outbox.sqlite", ".pruned.sqlite")
STORE_FILES = (".lock", ".state.json", ".state.json.bak",
               *(name + suffix for name in _SQLITE_FILES
                 for suffix in ("", "-wal", "-shm", "-journal")))


def check_store_dir(directory: Path) -> None:
    """Before the monitor writes ``directory``: not world-writable (anyone could plant
    files in it), and none of its own files (STORE_FILES) a symlink.

    By name, not by listing the directory: a store of 100,000 sessions took 75 ms to
    list and check on every cron pass, a cost that grew with history (tests/bench.py's
    steady-state figure)."""
    try:
        st = os.stat(directory)
    except OSError as e:
        raise MonitorError(f"cannot use {directory}: {e.strerror}") from e
    if st.st_mode & stat.S_IWOTH:
        raise MonitorError(f"refusing to write to {directory}: it is world-writable, so anyone "
                           "on this machine could plant files (symlinks) in it; run "
                           f"chmod 700 {directory}")
    for name in STORE_FILES:
        refuse_symlink(directory / name)


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


def _open_temp(directory: Path | str, data: bytes) -> tuple[int, str]:
    """A new temp file in ``directory`` holding ``data``, still open (fd, path).

    Created 0600 with O_EXCL|O_NOFOLLOW (as mkstemp does), so no fchmod is needed (a
    chmod would dirty the inode a second time for nothing). Named by process and a
    counter, not by mkstemp's random names: a catch-up creates one per session, and
    mkstemp's Python side cost a third of the open itself. O_EXCL still makes a name
    taken by anyone else (a killed writer's leftover, a planted link) the next one."""
    for _attempt in range(_TEMP_ATTEMPTS):
        tmp = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{next(_temp_numbers)}")
        try:
            fd = os.open(tmp, _TEMP_FLAGS, FILE_MODE)
            break
        except FileExistsError:
            continue
    else:
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


# mkstemp's flags (O_NOFOLLOW, O_CLOEXEC where they exist; O_BINARY, O_NOINHERIT on Windows).
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL
for _flag in ("O_NOFOLLOW", "O_CLOEXEC", "O_BINARY", "O_NOINHERIT"):
    _TEMP_FLAGS |= getattr(os, _flag, 0)
_TEMP_ATTEMPTS = 100
_temp_numbers = itertools.count()


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


# Files of a chunk: a chunk's fsyncs run while the next one is written (_Syncing), so a
# batch holds at most two chunks open, and a batch of 100,000 sessions never needs
# 100,000 descriptors (256 at most, as when chunks of 256 were synced one at a time).
CHUNK_FILES = 128
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


def atomic_write_many(directory: Path, items: Iterable[tuple[Path | str, bytes]],
                      workers: int = 8) -> None:
    """Atomically replace many files of one directory, durably, at the cost of a batch.

    What durability needs is an order, not an fsync+rename+directory fsync per file:
    each file's data is on disk before its rename can be, and every rename is on disk
    before the caller goes on (to the index, then ``.state.json``). So the files of a
    chunk are all written first, their data is fsynced together, then they are renamed,
    and the directory is fsynced once for the whole batch.

    A batch of a full chunk or more (128 files; a catch-up's checkpoint: thousands) is made
    durable by one ``syncfs(2)`` of the store's filesystem where Linux has it
    (:class:`_WholeBatch`): every file is written and closed, the filesystem synced once,
    then every file renamed. Measured on 25,001 session files (101 MB, ext4 on this
    virtio disk): an fsync per file 10.0 s wall and 5.1 s of CPU, one syncfs 1.1 s and
    0.8 s; the kernel's work per fsync, not the disk, was the cost. syncfs also writes
    whatever else is dirty on that filesystem (another program's unsynced writes): on a
    busy shared disk that is the price of one sync, bounded by the kernel's dirty limits.
    A smaller batch (a steady-state pass: a few sessions) keeps an fsync per file, which
    never waits for anyone else's data.

    The fsyncs of a chunk run on a few threads: they release the GIL and ext4 commits
    concurrent fsyncs in one journal transaction, so a chunk of hundreds of files costs a
    few journal commits instead of hundreds. They run while the next chunk is serialised
    and written (its renames wait for them), not while this thread waits.

    ``items`` may be a generator: each file's bytes are written to its temp file as they
    come, so a batch never holds more than one serialised file in memory.
    """
    fault = _fault_point()
    done = {"write": 0, "sync": 0, "rename": 0}
    chunk: list[tuple[int, str, Path | str]] = []
    syncing: _Syncing | None = None   # the chunk before, its fsyncs running
    pool: ThreadPoolExecutor | None = None
    renamed = 0
    folder = os.fspath(directory)
    whole: _WholeBatch | None = None   # past its first chunk, with syncfs: one sync
    # Opened before the batch's first file is: syncfs reports a writeback error of the
    # filesystem only if it happened after the descriptor it is given was opened (Linux
    # samples the error sequence at open), so one opened at the first full chunk would
    # miss an EIO on the pages of a file written before. The final fsync uses it too.
    dirfd = -1
    try:
        for path, data in items:
            if dirfd < 0:
                dirfd = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            fd, tmp = _open_temp(folder, data)
            chunk.append((fd, tmp, path))
            _maybe_fault(fault, done, "write")
            if len(chunk) >= CHUNK_FILES:
                if whole is None and syncing is None:
                    whole = _WholeBatch.start(dirfd)
                if whole is not None:
                    whole.add(chunk)
                    chunk = []
                    continue
                if syncing is not None:
                    renamed += syncing.rename(fault, done)
                if pool is None:
                    pool = _pool(workers)
                syncing, chunk = _Syncing(chunk, pool, workers, fault, done), []
        if whole is not None:
            whole.add(chunk)
            chunk = []
            renamed += whole.sync_and_rename(fault, done)
            whole = None
        if syncing is not None:
            renamed += syncing.rename(fault, done)
            syncing = None
        if chunk:
            if len(chunk) > 1 and pool is None:
                pool = _pool(workers)
            syncing, chunk = _Syncing(chunk, pool, workers, fault, done), []
            renamed += syncing.rename(fault, done)
            syncing = None
    except BaseException:
        if whole is not None:
            whole.abandon()
        if syncing is not None:
            syncing.abandon()
        for fd, tmp, _path in chunk:
            _close_quietly(fd)
            _unlink_quietly(tmp)
        raise
    else:
        if renamed:
            if fault == ("dir", 0):
                _kill_self()
            os.fsync(dirfd)
    finally:
        if pool is not None:
            pool.shutdown()
        if dirfd >= 0:
            _close_quietly(dirfd)


def _pool(workers: int) -> "ThreadPoolExecutor":
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers)


def _wait(tasks: list) -> None:
    if tasks:   # futures exist only where a pool was made
        from concurrent.futures import wait

        wait(tasks)


class _Syncing:
    """The open temp files of a chunk whose fsyncs run on the pool's threads (one task
    per worker over a slice, not a Future per file: that costs more than the fsync's
    Python side) while the next chunk is serialised and written: a batch's creates no
    longer wait for its fsyncs. Each file is still renamed only after its own fsync
    has returned, and the directory is fsynced after every rename."""

    def __init__(self, chunk: list[tuple[int, str, Path | str]], pool: ThreadPoolExecutor | None,
                 workers: int, fault, done: dict) -> None:
        self.chunk = chunk
        fds = [fd for fd, _tmp, _path in chunk]
        synced = (lambda: _maybe_fault(fault, done, "sync")) if fault else None
        self.tasks: list = []
        if len(fds) == 1 or pool is None:
            _fsync_all(fds, synced)   # on failure the caller still holds the chunk
            return
        n = min(workers, len(fds))
        try:
            for i in range(n):
                self.tasks.append(pool.submit(_fsync_all, fds[i::n], synced))
        except BaseException:
            _wait(self.tasks)   # the caller closes the files: not while one is synced
            raise

    def rename(self, fault, done: dict) -> int:
        """Wait for the chunk's fsyncs, close its files and rename them; how many."""
        _wait(self.tasks)
        for task in self.tasks:
            if task.exception() is not None:
                self.abandon()
                raise task.exception()
        chunk, self.chunk = self.chunk, []
        for fd, _tmp, _path in chunk:
            os.close(fd)
        for i, (fd, tmp, path) in enumerate(chunk):
            try:
                _maybe_fault(fault, done, "rename")
                os.replace(tmp, path)
            except BaseException:
                for _fd, later, _p in chunk[i:]:
                    _unlink_quietly(later)
                raise
        return len(chunk)

    def abandon(self) -> None:
        """After a failure: once no fsync uses them, close and delete the temp files."""
        _wait(self.tasks)
        chunk, self.chunk = self.chunk, []
        for fd, tmp, _path in chunk:
            _close_quietly(fd)
            _unlink_quietly(tmp)


class _WholeBatch:
    """The temp files of a batch made durable by one ``syncfs`` of their filesystem:
    each is closed once written (a batch of 100,000 files holds no descriptor but the
    directory's), synced all at once at the end, then renamed in order. A file is
    renamed only after the sync has returned, so on a crash at any point a session file
    is the old one or the whole new one, as with an fsync per file."""

    def __init__(self, dirfd: int, syncfs) -> None:
        self.dirfd = dirfd   # the caller's: open before the batch's first file, and closed by it
        self.syncfs = syncfs
        self.files: list[tuple[str, Path | str]] = []   # (temp, destination), in order

    @classmethod
    def start(cls, dirfd: int) -> "_WholeBatch | None":
        """A whole batch for the directory open as ``dirfd``, or None where there is no
        syncfs (then the caller fsyncs per chunk)."""
        syncfs = _syncfs_function()
        if syncfs is None:
            return None
        return cls(dirfd, syncfs)

    def add(self, chunk: list[tuple[int, str, Path | str]]) -> None:
        for i, (fd, tmp, path) in enumerate(chunk):
            try:
                os.close(fd)
            except BaseException:
                for later_fd, later, _p in chunk[i + 1:]:
                    _close_quietly(later_fd)
                    _unlink_quietly(later)
                _unlink_quietly(tmp)
                raise
            self.files.append((tmp, path))

    def sync_and_rename(self, fault, done: dict) -> int:
        for _ in self.files:
            _maybe_fault(fault, done, "sync")   # test hook: a kill inside the batched sync
        if self.syncfs(self.dirfd) != 0:
            code = _ctypes_errno()
            if code not in (errno.ENOSYS, errno.EPERM):
                raise OSError(code, os.strerror(code), "syncfs")
            for tmp, _path in self.files:   # syncfs refused (a sandbox): one fsync each
                fsync_path(tmp)
        files, self.files = self.files, []
        self.close()
        for i, (tmp, path) in enumerate(files):
            try:
                _maybe_fault(fault, done, "rename")
                os.replace(tmp, path)
            except BaseException:
                for later, _p in files[i:]:
                    _unlink_quietly(later)
                raise
        return len(files)

    def abandon(self) -> None:
        files, self.files = self.files, []
        for tmp, _path in files:
            _unlink_quietly(tmp)
        self.close()

    def close(self) -> None:
        self.dirfd = -1   # atomic_write_many closes it


_syncfs = False   # not looked up yet
# Test hook: "fsync" makes every batch fsync per chunk, the path taken where there is no
# syncfs (tests/test_crash.py runs its kills on both).
BATCH_SYNC_ENV = "ASM_BATCH_SYNC"


def _syncfs_function():
    """libc's ``syncfs`` (Linux), or None. Looked up once, on the first batch that needs
    it: ctypes is the standard library's, and a plain cron pass never loads it."""
    global _syncfs
    if os.environ.get(BATCH_SYNC_ENV) == "fsync":
        return None
    if _syncfs is False:
        _syncfs = None
        if sys.platform.startswith("linux"):   # elsewhere an fsync per file
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                function = libc.syncfs
                function.argtypes = [ctypes.c_int]
                function.restype = ctypes.c_int
                _syncfs = function
            except (OSError, AttributeError, ImportError):
                pass
    return _syncfs


def _ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno() or errno.EIO


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


# Present while a writer of the directory is at work (begin_writing .. end_writing): a
# writer killed by SIGKILL or a power cut leaves it with its temp files, so the next
# writer knows to look for them. A temp name itself: the sweep removes it too.
WRITING_MARK = TMP_PREFIX + "writing"


def begin_writing(directory: Path, sweep: bool = False) -> int:
    """Called by the store's one writer, holding its DirLock, before it writes anything in
    ``directory``: the temp files a killed writer left are removed, then the mark is set
    (and made durable before any temp file can be). Returns the number removed.

    Without the mark the directory is not listed (unless ``sweep``): listing a store of
    100,000 sessions cost every cron pass ~50 ms, and a clean exit leaves no temp file.
    Temp files left by a version without the mark are removed by the first ``sweep``
    (a --follow start); until then they are only dead bytes no reader looks at."""
    removed = 0
    if sweep or os.path.lexists(directory / WRITING_MARK):
        removed = remove_stale_temps(directory)
    try:
        fd = os.open(directory / WRITING_MARK,
                     os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError:
        # A planted symlink (ELOOP) or a full or read-only disk: the write itself will say
        # so in one line; a mark that cannot be set costs at most a leftover temp file.
        return removed
    os.close(fd)
    fsync_path(directory)
    return removed


def end_writing(directory: Path) -> None:
    """The writer's clean end: every temp file of its own is renamed or removed."""
    _unlink_quietly(str(directory / WRITING_MARK))


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
