"""Forgery through raw headers (input-format.md, "Fields a client controls").

Envoy pastes some request headers into the line unescaped, so a client can end a value
with ``"`` and write keys of its own after it. Here: the fast check that a line holds
none (:func:`_is_trusted`), the choice of each genuine field by its place in Higress's
fixed key order (:func:`_genuine_fields`), and the salvage of the ai_log from a line a
header broke (:func:`_salvage`).
"""

from __future__ import annotations

import json
from json.decoder import scanstring

from .request import BadLine, _finite_float, _reject_constant

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
_SENSITIVE_KEYS = tuple(f'"{k}"'.encode() for k in SENSITIVE_FIELDS)


# Formats an operator declared with --log-format: (keys in order, for each whether a
# client writes it raw); and every raw field name, known or declared.
_DECLARED: tuple = ()
_CLIENT: frozenset = CLIENT_FIELDS
_RAW_MARKS = ("%REQ(", "%REQ_WITHOUT_QUERY(")
MAX_FORMAT_KEYS = 200


def parse_log_format(text: str) -> tuple[tuple[str, ...], frozenset]:
    """A ``--log-format`` value: the format's keys in order, and those a client writes
    raw. Either the keys separated by commas (raw: the names Higress's format gives its
    raw headers) or the access-log format itself, as in the gateway's configuration
    (a JSON object of command operators; raw: a value with a request header,
    ``%REQ(...)%``). Raises ValueError with the reason."""
    text = text.strip()
    raw: set = set()
    if text.startswith("{"):
        try:
            template = json.loads(text, object_pairs_hook=list)
        except ValueError:
            raise ValueError("not a JSON object of the format's keys and command "
                             "operators") from None
        if not isinstance(template, list) or not all(isinstance(v, str) for _k, v in template):
            raise ValueError("the format's values must be strings of command operators")
        keys = [k for k, _v in template]
        raw = {k for k, v in template if any(m in v for m in _RAW_MARKS)}
    else:
        keys = [k.strip() for k in text.split(",")]
    if len(keys) > MAX_FORMAT_KEYS or not all(keys) or len(set(keys)) != len(keys):
        raise ValueError(f"the keys must be distinct, non-empty, at most {MAX_FORMAT_KEYS}")
    if "ai_log" not in keys or len(keys) < 2:
        raise ValueError("it must hold ai_log and at least one other key")
    return tuple(keys), frozenset(raw | (CLIENT_FIELDS & set(keys)))


def declare_formats(formats: list) -> None:
    """Read lines of these formats (from :func:`parse_log_format`) by place; [] forgets
    them. Set before the parse worker forks: it inherits them."""
    global _DECLARED, _CLIENT
    _DECLARED = tuple((keys, tuple(k in raw for k in keys)) for keys, raw in formats)
    _CLIENT = CLIENT_FIELDS.union(*(raw for _keys, raw in formats))


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
        # No raw header of a known name; a sensitive key written twice still comes from
        # one of another name (an nginx-style "http_user_agent"), and json kept the last.
        # A quoted key is never in an escaped ai_log string: the count is of keys.
        return _CLIENT.isdisjoint(keys) and not any(
            raw.count(k) > 1 for k in _SENSITIVE_KEYS)
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
    kept only when it occurs once; ``ai_log`` only when it is the one ai_log before
    every client-controlled field. Raises :class:`BadLine` ``untrusted_ai_log`` for a
    line whose only ai_log comes after a raw header: the same bytes are a custom format
    that puts it there and a client writing one into a format that has none, so it can
    never decide a bill.
    """
    pairs = outer.pairs if isinstance(outer, _Duplicated) else list(outer.items())
    keys = [k for k, _ in pairs]
    first_client = next((i for i, k in enumerate(keys) if k in _CLIENT), len(keys))
    # A value that is not a string can hide genuine keys only where a client writes.
    nested = first_client < len(keys) and any(
        type(v) is not str for k, v in pairs if k != "ai_log")
    if first_client == len(keys) and not nested and not isinstance(outer, _Duplicated):
        return outer, False   # no raw header field in this format: nothing to forge with
    if not nested:
        # Higress's format; the declared ones; Higress's without its ai_log (a route
        # logged without ai-statistics).
        readings = (((HIGRESS_FORMAT, None),) + _DECLARED if keys[0] == "ai_log"
                    else _DECLARED + ((HIGRESS_FORMAT[1:], None),))
        for fmt, gap in readings:
            places = _align(keys, fmt, gap)
            if places is None:
                continue
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
    # The genuine ai_log can only be the one before every raw header; two there means
    # a header of a name not known here wrote one of them: neither is taken.
    safe_ai_logs = keys[:first_client].count("ai_log")
    genuine = {}
    for k, v in pairs:
        if k in genuine:
            continue
        if k == "ai_log":
            if safe_ai_logs != 1:
                continue
        elif k in SENSITIVE_FIELDS and (nested or counts[k] > 1):
            continue
        genuine[k] = v
    if "ai_log" not in genuine and counts.get("ai_log") == 1 and not forged:
        at = keys.index("ai_log")
        raise _untrusted(next(k for k in reversed(keys[:at]) if k in _CLIENT))
    return genuine, forged


def _untrusted(header: str) -> BadLine:
    return BadLine("untrusted_ai_log",
                   f"its ai_log comes after the client-controlled field {header}, where a "
                   "client can write one: log ai_log before every header field (as "
                   "Higress's default format does), or declare the format (--log-format)")


def _align(keys: list[str], fmt: tuple[str, ...],
           gap: tuple[bool, ...] | None = None) -> list[set[int]] | None:
    """For each key of ``fmt``, the positions in ``keys`` it can hold in a reading of
    the line as ``fmt`` with extra keys only right after a client-controlled field
    (``gap``: which; by default Higress's); None when the line cannot be read so
    (another format). Forward and backward reachability over the fixed order: a
    position on both sides lies on a complete reading."""
    n, m = len(keys), len(fmt)
    if gap is None:
        gap = tuple(k in CLIENT_FIELDS for k in fmt)
    if n < m or keys[0] != fmt[0] or (keys[-1] != fmt[-1] and not gap[-1]):
        return None
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
    # A last field a client writes may be followed by keys of its own.
    bwd[m - 1] = set(fwd[m - 1]) if gap[m - 1] else {n - 1} & fwd[m - 1]
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
    if ai_at > first_client:
        if repeated:
            return None
        # A lone ai_log after a raw header: a client may have written it (_genuine_fields).
        raise _untrusted(max(CLIENT_FIELDS, key=lambda k: text.rfind(f'"{k}":"', 0, ai_at)))
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
