""".state.json: where reading stopped in each log file, and the counters (storage.md).

Written atomically and always after the session files it describes, so it is never
ahead of the data. The previous version is kept as ``.state.json.bak``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import EXIT_USAGE, MonitorError
from ..store.durable import atomic_write
from ..values import utc_now

STATE_VERSION = 1


@dataclass
class SourceState:
    """One log file, known by identity: (dev, ino) confirmed by a fingerprint of its head.

    ``fp`` is the SHA-256 of the first ``fp_len`` bytes (decompressed for gzip), fixed
    when first recorded: it is also the namespace of the idempotency keys of lines
    without a request_id, so it must not change while the file lives. A new file whose
    head is a known one's gets those bytes and a random salt instead (tail.py, _adopt)
    and is matched by ``head_fp``.
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
    # Hash of the last line before offset (logfile.line_hash): what a copy must hold. In
    # Higress's format the 64 bytes of ``tail`` are a line's last fields (user agent,
    # forwarded-for, response details), alike from line to line; the whole line holds
    # the gateway's request id, time and ports. "": not known (an older state).
    line: str = ""
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
        old = self.counters.get(name, 0)
        self.counters[name] = (old if _is_int(old) else 0) + n

    def count_kind(self, group: str, kind: str, n: int = 1) -> None:
        bucket = self.counters.get(group)
        if not isinstance(bucket, dict):
            bucket = self.counters[group] = {}
        old = bucket.get(kind, 0)
        bucket[kind] = (old if _is_int(old) else 0) + n

    def described(self) -> str:
        """What a save would record, but when it was written and the pass count: equal
        to the last save's, a save would change nothing an operator or a restart reads
        (an idle ``--follow`` poll: monitor.checkpoint skips it)."""
        counters = {k: v for k, v in self.counters.items() if k != "passes"}
        return json.dumps([[asdict(s) for s in self.sources], counters, self.alerts,
                           self.extra], sort_keys=True)

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


class OtherVersion(MonitorError):
    """The state file was written for another layout: refused, never misread."""


class BadState(ValueError):
    """The state file parses but does not hold what this monitor writes."""


_MAX_OFFSET = 2**63 - 1          # what os.pread and SQLite take
_INT_FIELDS = {"fp_len": 1024, "dev": 2**64 - 1, "ino": 2**64 - 1, "offset": _MAX_OFFSET,
               "size": _MAX_OFFSET, "head_len": 1024}
_HASH_FIELDS = ("fp", "tail", "head_fp", "line")
_BOOL_FIELDS = ("gz", "live", "gz_complete", "loss_reported")
_REQUIRED = ("fp", "fp_len", "dev", "ino", "path")
_COUNTERS = {"passes", "lines_read", "rounds_stored", "duplicates_skipped", "non_ai_lines"}
_COUNTER_GROUPS = {"bad_lines", "warnings", "file_events", "lost_bytes"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if _is_int(value):
        return abs(value) < 2**63     # a float of it would overflow past 1e308
    return isinstance(value, float) and math.isfinite(value)


def _source(data: object, i: int) -> SourceState:
    """One entry of ``sources``, checked field by field: a hand edit, a disk error or an
    older bug must never reach the tailer as a string offset or a negative inode."""
    if not isinstance(data, dict):
        raise BadState(f"sources[{i}] is not an object")
    for name in _REQUIRED:
        if name not in data:
            raise BadState(f"sources[{i}] has no {name}")
    for name, limit in _INT_FIELDS.items():
        if name in data and not (_is_int(data[name]) and 0 <= data[name] <= limit):
            raise BadState(f"sources[{i}].{name} is not a whole number in 0..{limit}")
    for name in _HASH_FIELDS:
        value = data.get(name, "")
        if not (isinstance(value, str) and (value == "" and name != "fp" or _is_sha(value))):
            raise BadState(f"sources[{i}].{name} is not a SHA-256 hex digest")
    for name in _BOOL_FIELDS:
        if name in data and not isinstance(data[name], bool):
            raise BadState(f"sources[{i}].{name} is not true or false")
    if not isinstance(data["path"], str) or "\0" in data["path"]:
        raise BadState(f"sources[{i}].path is not a path")
    if "mtime" in data and not _is_number(data["mtime"]):
        raise BadState(f"sources[{i}].mtime is not a number")
    missing = data.get("missing_since")
    if missing is not None and not _is_number(missing):
        raise BadState(f"sources[{i}].missing_since is not a number")
    names = {f.name for f in fields(SourceState)}
    return SourceState(**{k: v for k, v in data.items() if k in names})


def _is_sha(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _counters(data: object) -> dict:
    """Counters are whole numbers, or maps of a kind to a whole number."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadState("counters is not an object")
    for name, value in data.items():
        group = isinstance(value, dict)
        if name in _COUNTER_GROUPS and not group or name in _COUNTERS and group:
            raise BadState(f"counters.{name} is not a {'map of counts' if not group else 'count'}")
        values = value.values() if group else (value,)
        if not all(_is_int(v) and v >= 0 for v in values):
            raise BadState(f"counters.{name} is not a count")
    return data


def _alerts(data: object) -> dict:
    """The alert memory (budget_watch.py): ``fired`` an object, ``outbox`` a list of
    objects, each either as such or as the JSON text of one."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadState("alerts is not an object")
    for name, kind in (("fired", dict), ("outbox", list)):
        value = data.get(name)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise BadState(f"alerts.{name} is not JSON") from None
        if value is not None and not isinstance(value, kind):
            raise BadState(f"alerts.{name} is not a JSON {kind.__name__}")
        if kind is list and value and not all(isinstance(e, dict) for e in value):
            raise BadState(f"alerts.{name} holds something other than objects")
    return data


def _parse(raw: bytes, path: Path) -> State:
    """The state in ``raw``; BadState (a ValueError) if anything in it is unusable."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadState("nested too deeply") from None
    if not isinstance(data, dict):
        raise BadState("not an object")
    version = data.get("version")
    if not _is_int(version):
        raise BadState(f"version {version!r} is not a number")
    if version != STATE_VERSION:
        # Never misread fields of another layout (C7).
        raise OtherVersion(f"state file {path} has version {version!r}, this monitor reads "
                           f"version {STATE_VERSION}; upgrade the monitor, or move the file "
                           "away or rerun with --reset-from beginning (nothing is counted twice)",
                           EXIT_USAGE)
    sources = data.get("sources")
    if not isinstance(sources, list):
        raise BadState("sources is not a list")
    parsed = [_source(s, i) for i, s in enumerate(sources)]
    keys = {(s.fp, s.dev, s.ino) for s in parsed}
    if len(keys) != len(parsed):
        raise BadState("a file is listed twice in sources")
    extra = data.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise BadState("extra is not an object")
    return State(sources=parsed, counters=_counters(data.get("counters")),
                 alerts=_alerts(data.get("alerts")), extra=extra or {})


def load_state(path: Path, reset_from: str | None = None) -> tuple[State, str | None]:
    """Load the state, falling back to the backup; returns (state, note for the user).

    A missing state starts from the beginning (idempotency keys make that safe). A
    corrupt one with no usable backup is an error unless ``reset_from`` says what to do.
    """
    if not path.exists() and not path.with_name(path.name + ".bak").exists():
        return State(), None
    problems = []
    other_version: OtherVersion | None = None
    for candidate in (path, path.with_name(path.name + ".bak")):
        try:
            raw = candidate.read_bytes()
            state = _parse(raw, candidate)
        except FileNotFoundError:
            problems.append(f"{candidate.name} missing")
            continue
        except OtherVersion as e:
            other_version = other_version or e
            if candidate == path:
                break    # a newer monitor's state: its backup is no better
            continue
        except (OSError, ValueError, RecursionError) as e:
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
    if other_version is not None:
        raise other_version
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
            # A writer killed between this and the write below left the backup a link of
            # the state: a rename between two links of one file does nothing.
            os.unlink(tmp)
        except FileNotFoundError:
            pass   # renamed, as it should be
        except OSError:
            pass
    atomic_write(path, state.to_json())
