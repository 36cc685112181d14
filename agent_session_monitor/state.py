""".state.json: where reading stopped in each log file, and the counters (storage.md).

Written atomically and always after the session files it describes, so it is never
ahead of the data. The previous version is kept as ``.state.json.bak``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import EXIT_USAGE, MonitorError
from .fsutil import atomic_write
from .parse import utc_now

STATE_VERSION = 1


@dataclass
class SourceState:
    """One log file, known by identity: (dev, ino) confirmed by a fingerprint of its head.

    ``fp`` is the SHA-256 of the first ``fp_len`` bytes (decompressed for gzip), fixed
    when first recorded: it is also the namespace of the idempotency keys of lines
    without a request_id, so it must not change while the file lives.
    """

    fp: str
    fp_len: int
    dev: int
    ino: int
    path: str
    offset: int = 0
    size: int = 0
    mtime: float = 0.0
    tail: str = ""            # hash of the 64 bytes before offset: catches in-place rewrites
    # The matching fingerprint grows with the file up to 1 KiB (``fp`` stays fixed): a
    # head of a few bytes ("\n", one short line) is shared by unrelated files.
    head_fp: str = ""
    head_len: int = 0
    gz: bool = False
    live: bool = False        # last seen under a live path (not a rotation)
    gz_complete: bool = False
    missing_since: float | None = None  # wall-clock epoch: orphans expire after days
    loss_reported: bool = False

    def matching(self) -> tuple[str, int]:
        return (self.head_fp, self.head_len) if self.head_len else (self.fp, self.fp_len)

    @classmethod
    def from_dict(cls, data: dict) -> "SourceState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class State:
    sources: list[SourceState] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    alerts: dict = field(default_factory=dict)  # budget thresholds already fired
    extra: dict = field(default_factory=dict)   # other components' progress (exporters)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def count_kind(self, group: str, kind: str, n: int = 1) -> None:
        bucket = self.counters.setdefault(group, {})
        bucket[kind] = bucket.get(kind, 0) + n

    def to_json(self) -> bytes:
        data = {
            "version": STATE_VERSION,
            "written_at": utc_now(),
            "sources": [asdict(s) for s in self.sources],
            "counters": self.counters,
            "alerts": self.alerts,
            "extra": self.extra,
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _parse(raw: bytes, path: Path) -> State:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    version = data.get("version")
    if version != STATE_VERSION:
        # Never misread fields of another layout (C7).
        raise MonitorError(f"state file {path} has version {version!r}, this monitor reads "
                           f"version {STATE_VERSION}; upgrade the monitor or move the file away",
                           EXIT_USAGE)
    return State(sources=[SourceState.from_dict(s) for s in data.get("sources", [])],
                 counters=data.get("counters") or {}, alerts=data.get("alerts") or {},
                 extra=data.get("extra") or {})


def load_state(path: Path, reset_from: str | None = None) -> tuple[State, str | None]:
    """Load the state, falling back to the backup; returns (state, note for the user).

    A missing state starts from the beginning (idempotency keys make that safe). A
    corrupt one with no usable backup is an error unless ``reset_from`` says what to do.
    """
    if not path.exists() and not path.with_name(path.name + ".bak").exists():
        return State(), None
    problems = []
    for candidate in (path, path.with_name(path.name + ".bak")):
        try:
            raw = candidate.read_bytes()
            state = _parse(raw, candidate)
        except FileNotFoundError:
            problems.append(f"{candidate.name} missing")
            continue
        except MonitorError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as e:
            problems.append(f"{candidate.name}: {e}")
            continue
        note = None if candidate == path else (
            f"state file {path} unreadable ({'; '.join(problems)}); resumed from {candidate}")
        return state, note
    if reset_from == "beginning":
        return State(), f"state file {path} unreadable; re-reading logs from the beginning"
    if reset_from == "end":
        state = State()
        state.extra["reset_to_end"] = True
        return state, f"state file {path} unreadable; starting at the end of the logs"
    raise MonitorError(f"state file {path} is unreadable ({'; '.join(problems)}); "
                       "rerun with --reset-from beginning (safe: nothing is counted twice) "
                       "or --reset-from end", EXIT_USAGE)


def save_state(path: Path, state: State) -> None:
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        try:
            # A hard link is instant and atomic; the old state becomes the backup.
            tmp = path.with_name(".tmp-bak-" + path.name)
            if tmp.exists():
                tmp.unlink()
            os.link(path, tmp)
            os.replace(tmp, backup)
        except OSError:
            pass
    atomic_write(path, state.to_json())
