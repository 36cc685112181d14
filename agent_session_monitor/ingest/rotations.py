"""Where the log files are: a live log and its rotations, oldest first (failure-scenarios.md,
B1): ``PATH.N[.gz]`` by number and ``PATH-DATE[.gz]`` (dateext) by date."""

from __future__ import annotations

import glob
import os
import re

_NUMERIC = re.compile(r"\.(\d+)(\.gz)?$")


def discover(patterns: list[str], max_rotate: int) -> list[tuple[str, bool]]:
    """Candidate paths, oldest first, each with whether it is a live log.

    Rotations are ``PATH.N`` / ``PATH.N.gz`` ordered by N as a number (never ``.10``
    before ``.2`` by string), and ``PATH-DATE[.gz]`` (dateext) ordered by their suffix.
    """
    found: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for pattern in patterns:
        lives = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for live in lives:
            for path, is_live in _with_rotations(live, max_rotate):
                if path not in seen:
                    seen.add(path)
                    found.append((path, is_live))
    return found


def _with_rotations(live: str, max_rotate: int) -> list[tuple[str, bool]]:
    directory, base = os.path.split(live)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        names = []
    numeric, dated = [], []
    for name in names:
        if name.startswith(base + "."):
            m = _NUMERIC.fullmatch(name[len(base):])
            if m and 1 <= int(m.group(1)) <= max_rotate:
                numeric.append((int(m.group(1)), name))
        elif name.startswith(base + "-") and max_rotate > 0:
            dated.append(name)
    dated.sort(key=lambda n: n[:-3] if n.endswith(".gz") else n)
    ordered = dated[-max_rotate:] if max_rotate else []
    ordered += [name for _, name in sorted(numeric, key=lambda t: (-t[0], t[1]))]
    result = [(os.path.join(directory, name), False) for name in ordered]
    result.append((live, True))
    return result
