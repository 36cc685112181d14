"""Parse one Higress access-log line into a :class:`Request` (spec: input-format.md).

Every quirk of the real producers is handled here and nowhere else: ai_log as a string
or an object, numbers as strings, details as strings or objects, ``timestamp`` instead
of ``start_time``, a line broken by an unescaped ``"`` in another field (the ai_log is
salvaged), NUL runs left by copytruncate, BOMs and CRLF. A line that cannot be used
raises :class:`BadLine` with a kind; the caller counts it and goes on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from json.decoder import scanstring

from ..store.names import UNSESSIONED_ID
from ..values import MAX_TOKENS, canonical_time

# Outer fields kept with the round: what a FinOps user filters or debugs by.
GATEWAY_FIELDS = ("authority", "method", "path", "response_code", "route_name", "duration",
                  "upstream_cluster", "user_agent")
TOKEN_FIELDS = ("input_token", "output_token", "total_token", "cached_tokens", "reasoning_tokens")
BOM = b"\xef\xbb\xbf"


class BadLine(Exception):
    """A line that is skipped; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(slots=True)
class Request:
    """One AI request as logged, validated, before it becomes a stored round."""

    ai: dict
    session_id: str | None
    request_id: str | None
    timestamp: str
    time_source: str
    gateway: dict
    input_token: int
    output_token: int
    total_token: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    input_details: dict
    output_details: dict
    has_usage: bool
    warnings: list[str] = field(default_factory=list)


def _reject_constant(name: str) -> None:
    # json accepts NaN and Infinity by default; Higress never writes them, and a NaN
    # token count would poison every total it touches.
    raise ValueError(f"non-standard constant {name}")


def _finite_float(text: str) -> float:
    # 1e999 parses as inf without any NaN/Infinity literal; the store refuses to write
    # non-finite numbers (they are not JSON), so such a line is bad input here.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


# strict: a raw control character inside a JSON string (a NUL above all) is never
# written by Go's json.Marshal nor by Envoy for its own fields. In a header value (TEXT
# mode does not escape them) it breaks the line and the ai_log is salvaged; inside the
# ai_log it makes the line bad (raw_control_char), never a session id holding a NUL.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_decode = _DECODER.decode


# -- forgery through raw headers (input-format.md, "Fields a client controls") ----------

# Envoy's TEXT access-log format of the Higress Helm chart: the keys, in their fixed order.
HIGRESS_FORMAT = (
    "ai_log", "authority", "bytes_received", "bytes_sent", "downstream_local_address",
    "downstream_remote_address", "duration", "istio_policy_status", "method", "path",
    "protocol", "request_id", "requested_server_name", "response_code", "response_flags",
    "route_name", "start_time", "trace_id", "upstream_cluster", "upstream_host",
    "upstream_local_address", "upstream_service_time", "upstream_transport_failure_reason",
    "user_agent", "x_forwarded_for", "response_code_details")
# Pasted in raw from request headers: a client can end the value with `"` and write keys
# of its own after it, so injected keys can only sit right after one of these.
CLIENT_FIELDS = frozenset(("authority", "path", "request_id", "user_agent", "x_forwarded_for"))
# The outer keys whose value decides a round, its time or its identity.
SENSITIVE_FIELDS = ("ai_log", "start_time", "timestamp", "request_id")


class _Duplicated(dict):
    """An object in which some key occurred more than once; ``pairs`` keeps them all."""

    __slots__ = ("pairs",)


def _pairs_hook(pairs: list) -> dict:
    # Python keeps the last of duplicate keys; a forged key placed after the genuine one
    # would win. Keep every pair when that happens, so the caller can choose by place.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        obj = _Duplicated(obj)
        obj.pairs = pairs
    return obj


_OUTER_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                                  object_pairs_hook=_pairs_hook)
_decode_outer = _OUTER_DECODER.decode
_GAP_AFTER = frozenset(i for i, k in enumerate(HIGRESS_FORMAT) if k in CLIENT_FIELDS)


_AI_LOG_END = b'","authority":"'
# Quotes after the ai_log string of a clean line: its closing one, then a quoted key and
# a quoted value for each of the other fields.
_TAIL_QUOTES = 1 + 4 * (len(HIGRESS_FORMAT) - 1)


def _is_trusted(raw: bytes, outer: dict) -> bool:
    """The fast path, true for a line no client wrote keys into.

    A line in Higress's format has exactly a quoted key and a quoted string value per
    field after its ai_log string (where the bulk is, and where every quote is escaped).
    Any key a client adds brings quotes of its own, and so does one that hides a genuine
    key inside an object; a quote it escapes with a trailing backslash leaves the next
    genuine key bare, which is not JSON. So one count of the quotes after the ai_log
    decides; escaped quotes in a header value (``\\"``) are not structure and are
    subtracted. A format without any raw header field has nothing a client writes into.
    """
    keys = tuple(outer)
    if keys != HIGRESS_FORMAT:
        return CLIENT_FIELDS.isdisjoint(keys)
    tail = raw.find(_AI_LOG_END)
    if tail < 0:
        return False
    quotes = raw.count(b'"', tail)
    return quotes == _TAIL_QUOTES or quotes - raw.count(b'\\"', tail) == _TAIL_QUOTES


def _genuine_fields(outer: dict) -> tuple[dict, bool]:
    """The outer fields a client cannot have written, and whether the line was forged.

    For a line in Higress's format, each field is taken by its place in the fixed key
    order (:func:`_align`); keys a client added are dropped, and a field whose place is
    ambiguous (a client copied whole runs of the format) is dropped too, so that the
    event time falls back to the read time. For another format, a sensitive field is
    kept only when it occurs once; ``ai_log`` only when no client-controlled field
    precedes it.
    """
    pairs = outer.pairs if isinstance(outer, _Duplicated) else list(outer.items())
    keys = [k for k, _ in pairs]
    nested = any(type(v) is not str for k, v in pairs if k != "ai_log")
    first_client = next((i for i, k in enumerate(keys) if k in CLIENT_FIELDS), len(keys))
    if first_client == len(keys) and not nested and not isinstance(outer, _Duplicated):
        return outer, False   # no raw header field in this format: nothing to forge with
    if not nested:
        fmt = HIGRESS_FORMAT if keys[0] == "ai_log" else HIGRESS_FORMAT[1:]
        places = _align(keys, fmt)
        if places is not None:
            genuine = {}
            forged = len(pairs) != len(fmt)
            for name, where in zip(fmt, places):
                if len(where) == 1:
                    genuine[name] = pairs[next(iter(where))][1]
                else:
                    forged = True
            return genuine, forged
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    forged = nested or len(counts) != len(keys)
    genuine = {}
    for i, (k, v) in enumerate(pairs):
        if k in genuine:
            continue
        if k == "ai_log":
            # Before any raw header it cannot be forged; after one, only a lone ai_log
            # in an unsuspicious line is taken (a custom format may put it there).
            if i > first_client and (nested or counts[k] > 1):
                continue
        elif k in SENSITIVE_FIELDS and (nested or counts[k] > 1):
            continue
        genuine[k] = v
    return genuine, forged


def _align(keys: list[str], fmt: tuple[str, ...]) -> list[set[int]] | None:
    """For each key of ``fmt``, the positions in ``keys`` it can hold in a reading of
    the line as ``fmt`` with extra keys only right after a client-controlled field; None
    when the line cannot be read so (another format). Forward and backward reachability
    over the fixed order: a position on both sides lies on a complete reading."""
    n, m = len(keys), len(fmt)
    if n < m or keys[0] != fmt[0] or keys[-1] != fmt[-1]:
        return None
    gap = [k in CLIENT_FIELDS for k in fmt]
    fwd: list[set[int]] = [{0}]
    for j in range(1, m):
        want, prev = fmt[j], fwd[-1]
        if gap[j - 1]:
            lo = min(prev) + 1
            here = {i for i in range(lo, n) if keys[i] == want}
        else:
            here = {i + 1 for i in prev if i + 1 < n and keys[i + 1] == want}
        if not here:
            return None
        fwd.append(here)
    bwd: list[set[int]] = [set()] * m
    bwd[m - 1] = {n - 1} & fwd[m - 1]
    for j in range(m - 2, -1, -1):
        want, nxt = fmt[j], bwd[j + 1]
        if not nxt:
            return None
        if gap[j]:
            hi = max(nxt)
            bwd[j] = {i for i in fwd[j] if i < hi}
        else:
            bwd[j] = {i - 1 for i in nxt if i - 1 in fwd[j]}
    if not bwd[0]:
        return None
    return bwd


def parse_line(raw: bytes, read_time: str) -> Request | str:
    """Parse one line (without its newline).

    Returns a :class:`Request`, or ``"blank"`` / ``"non_ai"`` for lines that are skipped
    silently; raises :class:`BadLine` for lines that are counted as bad.
    ``read_time`` is the event time used, and flagged, when the line carries none.
    """
    if raw and raw[0] in (0, 0xEF, 0x20, 0x09, 0x0D) or raw.endswith(b"\r"):
        raw = _clean_edges(raw)
    if not raw:
        return "blank"
    warnings: list[str] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Invalid bytes come from a raw header (a User-Agent): the plugin's ai_log is
        # valid UTF-8 (Go replaces bad bytes with U+FFFD). Keep them apart, so the paid
        # round survives when they are not in the ai_log (checked in _build).
        text = raw.decode("utf-8", "surrogateescape")
        warnings.append("bad_utf8")
    forged = False
    try:
        outer = _decode(text)
    except RecursionError:
        raise BadLine("bad_json", "nested too deeply") from None
    except ValueError as e:
        salvaged = _salvage(text)
        if salvaged is None:
            if str(e).startswith("Invalid control character"):
                raise BadLine("raw_control_char", str(e)[:120]) from None
            raise BadLine("bad_json", str(e)[:120]) from None
        outer, forged = salvaged
        warnings.append("salvaged")
        if str(e).startswith("Invalid control character"):
            warnings.append("raw_control_char")
    else:
        if not isinstance(outer, dict):
            raise BadLine("not_object", f"a JSON {type(outer).__name__}, not an object")
        if not _is_trusted(raw, outer):
            # The exact path: decode again keeping every key, and choose by place.
            outer, forged = _genuine_fields(_decode_outer(text))
    if forged:
        warnings.append("forged")
    ai = outer.get("ai_log")
    if ai is None or ai == "-" or ai == "":
        return "forged_non_ai" if forged else "non_ai"
    if "bad_utf8" in warnings:
        outer = _without_bad_bytes(outer)
    if isinstance(ai, str):
        try:
            ai = _decode(ai)
        except RecursionError:
            raise BadLine("bad_ai_log", "nested too deeply") from None
        except ValueError as e:
            if str(e).startswith("Invalid control character"):
                raise BadLine("raw_control_char", "in the ai_log: " + str(e)[:100]) from None
            raise BadLine("bad_ai_log", str(e)[:120]) from None
    if not isinstance(ai, dict):
        raise BadLine("bad_ai_log", f"ai_log is a JSON {type(ai).__name__}, not an object")
    return _build(outer, ai, read_time, warnings)


def _without_bad_bytes(outer: dict) -> dict:
    """The outer fields of a line holding invalid UTF-8: the ai_log must be free of it
    (else the line is bad_utf8), other strings get U+FFFD for each bad byte."""
    ai = outer.get("ai_log")
    if _has_bad_bytes(ai):
        raise BadLine("bad_utf8", "invalid UTF-8 inside the ai_log")
    clean = {}
    for k, v in outer.items():
        if isinstance(k, str) and _has_bad_bytes(k):
            continue
        if k != "ai_log" and isinstance(v, str) and _has_bad_bytes(v):
            v = v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        clean[k] = v
    return clean


def _has_bad_bytes(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_bytes(v) for v in value)
    return False


def _clean_edges(raw: bytes) -> bytes:
    raw = raw.rstrip(b"\r")
    # copytruncate with a writer lacking O_APPEND leaves a sparse run of NULs before
    # the next real line: it is padding, not a bad line.
    raw = raw.lstrip(b"\x00")
    if raw.startswith(BOM):
        raw = raw[3:]
    return raw.strip(b" \t\r")


def _salvage(text: str) -> tuple[dict, bool] | None:
    """Recover ai_log (and times, ids) from a line that is not valid JSON, and whether
    it was forged.

    Envoy's TEXT format does not escape other fields, so a User-Agent holding ``"``
    breaks the line while the ai_log, which the plugin escaped, is intact. The ai_log is
    taken when it precedes every raw header field (its place in Higress's format) or
    occurs once; a time or id only when its key occurs exactly once, so it cannot come
    from hostile text.
    """
    first_client = min((i for i in (text.find(f'"{k}":"') for k in CLIENT_FIELDS) if i >= 0),
                       default=len(text))
    ai_at = text.find('"ai_log":"')
    if ai_at < 0:
        return None
    repeated = text.find('"ai_log":"', ai_at + 1) >= 0
    if ai_at > first_client and repeated:
        return None
    ai = _string_at(text, ai_at + len('"ai_log":"'))
    if ai is None:
        return None
    outer = {"ai_log": ai}
    forged = repeated
    for key in ("start_time", "timestamp", "request_id"):
        value = _unique_string_value(text, key)
        if value is not None:
            outer[key] = value
        elif text.count(f'"{key}":') > 1:
            forged = True
    return outer, forged


def _string_at(text: str, at: int) -> str | None:
    try:
        value, _end = scanstring(text, at, True)
    except ValueError:
        return None
    return value


def _unique_string_value(text: str, key: str) -> str | None:
    marker = f'"{key}":"'
    start = text.find(marker)
    if start < 0 or text.find(marker, start + 1) >= 0:
        return None
    return _string_at(text, start + len(marker))


def _build(outer: dict, ai: dict, read_time: str, warnings: list[str]) -> Request:
    session_id = ai.get("session_id")
    if session_id is None or session_id == "":
        session_id = None
    elif not isinstance(session_id, str):
        # Never str() it: 123 and "123" would become one session.
        warnings.append("bad_session_id")
        session_id = None
    elif session_id.startswith(UNSESSIONED_ID):
        session_id = client_session_id(session_id)
        warnings.append("reserved_session_id")

    tokens = {}
    has_usage = False
    for name in TOKEN_FIELDS:
        value = ai.get(name)
        if value is None:
            tokens[name] = None
            continue
        tokens[name] = _token_count(name, value, warnings)
        has_usage = True

    timestamp, time_source = _event_time(outer, ai, read_time, warnings)
    request_id = outer.get("request_id")
    if not isinstance(request_id, str) or request_id in ("", "-"):
        request_id = None
    gateway = {k: outer[k] for k in GATEWAY_FIELDS if k in outer and outer[k] not in ("-", None)}
    return Request(
        ai=ai,
        session_id=session_id,
        request_id=request_id,
        timestamp=timestamp,
        time_source=time_source,
        gateway=gateway,
        input_token=tokens["input_token"] or 0,
        output_token=tokens["output_token"] or 0,
        total_token=tokens["total_token"],
        cached_tokens=tokens["cached_tokens"],
        reasoning_tokens=tokens["reasoning_tokens"],
        input_details=_details(ai.get("input_token_details"), warnings),
        output_details=_details(ai.get("output_token_details"), warnings),
        has_usage=has_usage,
        warnings=warnings,
    )


def client_session_id(session_id: str) -> str:
    """The id a client-sent session id is stored under. Ids beginning with the reserved
    label of the unsessioned bucket get a suffix, so that no client can write into, or
    pass for, that bucket: the mapping is one-to-one (a suffixed id sent literally is
    suffixed again) and never gives the bare label."""
    if session_id.startswith(UNSESSIONED_ID):
        return session_id + CLIENT_SUFFIX
    return session_id


CLIENT_SUFFIX = " (sent by a client)"


def _token_count(name: str, value: object, warnings: list[str]) -> int:
    # bool is an int subclass in Python: True must not count as one token.
    if type(value) is int:
        count = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        # Older Higress logs counts as numeric strings: a documented coercion.
        try:
            count = int(value)
        except ValueError:  # more digits than int() accepts
            raise BadLine("out_of_range", f"{name} has too many digits") from None
    elif type(value) is float and math.isfinite(value) and value.is_integer():
        count = int(value)
    else:
        raise BadLine("bad_tokens", f"{name} is {_describe(value)}")
    if count < 0:
        raise BadLine("bad_tokens", f"{name} is negative ({count})")
    if count > MAX_TOKENS:
        raise BadLine("out_of_range", f"{name} is {_describe(count)}, more than any request")
    return count


def _describe(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _details(value: object, warnings: list[str]) -> dict:
    """Provider detail maps arrive as an object or as a JSON string of one."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = _decode(value)
        except (ValueError, RecursionError):
            warnings.append("bad_details")
            return {}
    if not isinstance(value, dict):
        warnings.append("bad_details")
        return {}
    _check_counts(value, 0)
    return value


def _check_counts(details: dict, depth: int) -> None:
    """Detail maps feed the price buckets: a count no store can hold makes the line bad."""
    for key, value in details.items():
        if type(value) is int:
            count = value
        elif isinstance(value, str) and value.isascii() and value.isdigit():
            count = int(value) if len(value) < 30 else MAX_TOKENS + 1
        elif isinstance(value, dict) and depth < 2:
            _check_counts(value, depth + 1)
            continue
        else:
            continue
        if count > MAX_TOKENS:
            raise BadLine("out_of_range", f"{key} is {_describe(count)}, more than any request")


def _event_time(outer: dict, ai: dict, read_time: str, warnings: list[str]) -> tuple[str, str]:
    for source, value in (("start_time", outer.get("start_time")),
                          ("timestamp", outer.get("timestamp")),
                          ("ai_log", ai.get("start_time") or ai.get("timestamp"))):
        if isinstance(value, str) and value not in ("", "-"):
            canonical = canonical_time(value)
            if canonical is not None:
                if canonical[1]:
                    warnings.append("naive_time")
                return canonical[0], source
            warnings.append("bad_time")
    warnings.append("time_from_read")
    return read_time, "read"
