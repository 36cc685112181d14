"""Session id -> file name. A session id is a header any client sets: it never becomes a
path unsanitised (spec: storage.md, "File names")."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

UNSESSIONED_ID = "(unsessioned)"
UNSESSIONED_FILE = "~unsessioned.json"
SUFFIX = ".json"

# Lower case only, so that case twins cannot share a file on a case-insensitive disk;
# no "~": hashed names contain one, so a readable name can never equal a hashed one.
_SAFE = re.compile(r"[a-z0-9][a-z0-9._:@+=-]{0,199}")
_UNSAFE_RUN = re.compile(r"[^a-z0-9._:@+=-]+")
# Names Windows refuses whatever their extension: harmless here, but the store may be
# copied to such a machine.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}


# Ids cached by :func:`file_name_for` at most this long: a client sending a new 60 KB id
# per request would otherwise pin 8,192 of them (half a gigabyte) in a long-lived monitor.
_CACHED_ID_CHARS = 256


def file_name_for(session_id: str) -> str:
    """The file name (no directory) of a session; distinct ids give distinct names."""
    if len(session_id) > _CACHED_ID_CHARS:
        return _file_name_for(session_id)
    return _cached_file_name_for(session_id)


def _file_name_for(session_id: str) -> str:
    if (_SAFE.fullmatch(session_id) and ".." not in session_id
            and session_id.split(".", 1)[0] not in _RESERVED):
        return session_id + SUFFIX
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    prefix = _UNSAFE_RUN.sub("_", session_id.lower())[:60].strip("._")
    return f"{prefix}~{digest}{SUFFIX}"


# Lookups repeat for the live sessions (a few hundred interleave in a busy log); at
# 65,536 a catch-up of 100,000 short sessions kept ~12 MB of ids and names never asked
# for again.
_cached_file_name_for = lru_cache(maxsize=8192)(_file_name_for)


def is_session_file(name: str) -> bool:
    """True for names the store writes for sessions (not state, index, lock or temps)."""
    return name.endswith(SUFFIX) and not name.startswith(".")
