"""Lines from standard input: ``kubectl logs -f ... | main.py --log-path -``."""

from __future__ import annotations

import os
import select
from typing import Iterator

from .read_lines import CHUNK


class StreamSource:
    """Lines from standard input (``--log-path -``: ``kubectl logs -f ... | main.py``).

    A pipe has no identity or offsets to resume from, so rounds are known by a hash of
    the whole line and piping the same lines again counts nothing twice.
    """

    path = "<stdin>"

    def __init__(self, fd: int, max_line: int = 64 * 2**20) -> None:
        self.fd = fd
        self.max_line = max_line
        self.eof = False
        self.position = 0
        self._carry = b""

    def lines(self, block: bool) -> Iterator[tuple[int, int, bytes | None]]:
        """Complete lines available now (``block``: read until end of input)."""
        while not self.eof:
            if not block:
                ready, _, _ = select.select([self.fd], [], [], 0)
                if not ready:
                    return
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                self.eof = True
                break
            yield from self._split(chunk)
        if self.eof and self._carry:
            # The writer closed the pipe mid-line: the fragment is final.
            start = self.position
            fragment, self._carry = self._carry, b""
            self.position += len(fragment)
            yield start, self.position, fragment if len(fragment) <= self.max_line else None

    def _split(self, chunk: bytes) -> Iterator[tuple[int, int, bytes | None]]:
        buf = self._carry + chunk if self._carry else chunk
        base = self.position
        i = 0
        while True:
            nl = buf.find(b"\n", i)
            if nl < 0:
                break
            yield base + i, base + nl + 1, (buf[i:nl] if nl - i <= self.max_line else None)
            i = nl + 1
        self._carry = buf[i:]
        self.position = base + i
        if len(self._carry) > self.max_line:
            self._carry = self._carry[-1:]  # never buffer a runaway line whole
