"""Reading logs only below the allowed directories (spec: interfaces.md, the allow-list).

The monitor is often started by an agent, which can be talked into pointing it at
``/etc/shadow``. A pattern's directory is checked before anything is read (config.py);
here, every file actually opened (the live log, each rotation, each glob match) is
checked by the real path of the open descriptor: a symlink planted in an allowed
directory, or one swapped in between a check and the open, leads nowhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Sequence

from .stop import signals_held

# The kernel's name for an open descriptor's file (Linux): the path it was reached by,
# every symlink resolved, at the moment of asking.
PROC_FD = "/proc/self/fd/{}"
_DELETED = " (deleted)"


class OutsideAllowed(OSError):
    """A log file whose real path is not below an allowed directory."""

    def __init__(self, path: str, real: str) -> None:
        super().__init__(f"{path} resolves to {real}")
        self.path, self.real = path, real


class NotRegularFile(OSError):
    """A FIFO, device or directory where a log file was expected: never opened for
    reading (a FIFO would block the monitor forever)."""


def is_within(real: str, roots: Sequence[Path]) -> bool:
    """``real`` (an absolute, resolved path) is one of ``roots`` or below one, by whole
    path components: /var/log-evil is not below /var/log."""
    for root in roots:
        base = str(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False


def open_log(path: str, roots: Sequence[Path] | None) -> BinaryIO:
    """Open a log file for reading, refusing one outside ``roots`` (None: no allow-list).

    Raises FileNotFoundError and other OSErrors as ``open`` does, NotRegularFile, and
    OutsideAllowed. The path is checked before opening (nothing outside is even opened
    in the common case), then the descriptor after, which is what counts.
    """
    if roots is not None:
        real = os.path.realpath(path)
        if not is_within(real, roots):
            raise OutsideAllowed(path, real)
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer. No effect on files.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    f = None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        if roots is not None:
            real = _real_path_of(fd, path, st)
            if real is None:
                raise OutsideAllowed(path, "a file that changed while it was being opened")
            if not is_within(real, roots):
                raise OutsideAllowed(path, real)
        # The descriptor passes to the file object whole: a SIGTERM raised just after
        # fdopen made it (the handler runs between any two bytecodes) used to close it
        # twice, once with the dropped file object and once below; the second close
        # failed with EBADF, whose OSError replaced the stop, and the stop was lost
        # ("cannot read access.log: Bad file descriptor" and a --follow monitor that
        # went on: tests/test_stop_bounded.py).
        with signals_held():
            f = os.fdopen(fd, "rb")
        return f
    except BaseException:
        if f is None:
            os.close(fd)
        else:
            f.close()
        raise


def _real_path_of(fd: int, path: str, st: os.stat_result) -> str | None:
    """Where the open descriptor really is. Without /proc, the resolved name, trusted
    only if it is the same inode as the descriptor (else a swap happened: refused)."""
    try:
        real = os.readlink(PROC_FD.format(fd))
        if real.endswith(_DELETED) and not os.path.exists(real):
            real = real[:-len(_DELETED)]      # rotated away since the open: where it was
        if real.startswith(os.sep):
            return real
    except OSError:
        pass
    real = os.path.realpath(path)
    try:
        again = os.stat(real)
    except OSError:
        return None
    return real if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino) else None
