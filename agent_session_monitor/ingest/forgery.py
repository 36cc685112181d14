"""Forgery through raw headers (input-format.md, "Fields a client controls").

Envoy pastes some request headers into the line unescaped, so a client can end a value
with ``"`` and write keys of its own after it. Here: the fast check that a line holds
none (:func:`_is_trusted`), the choice of each genuine field by its place in Higress's
fixed key order (:func:`_genuine_fields`), and the salvage of the ai_log from a line a
header broke (:func:`_salvage`).
"""

from __future__ import annotations

import json
import re
from itertools import islice
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
# (helm/core/templates/configmap.yaml: each is a %REQ(...)% of the accessLogFormat;
# trace_id is X-B3-TraceId; requested_server_name is the TLS ClientHello's SNI, which the
# client writes and TLS libraries pass on with quotes in it: BoringSSL refuses only an
# empty, over-long or NUL-holding name.)
CLIENT_FIELDS = frozenset(("authority", "path", "request_id", "requested_server_name",
                           "trace_id", "user_agent", "x_forwarded_for"))
# The outer keys whose value decides a round, its time or its identity.
SENSITIVE_FIELDS = ("ai_log", "start_time", "timestamp", "request_id")
# The outer keys an event time is read from (ai_log.py, _TIME_SOURCES).
TIME_FIELDS = ("start_time", "timestamp")
_SENSITIVE_KEYS = tuple(f'"{k}"'.encode() for k in SENSITIVE_FIELDS)
# Keys whose value the gateway writes itself, never a request header pasted raw: those of
# Higress's format that are not client fields, and the skill's examples' own. In a format
# not declared, only a key of these names can sit before the genuine ai_log without
# leaving its place in doubt (any other name may be a raw header: nginx's http_user_agent).
GATEWAY_FIELDS = frozenset(HIGRESS_FORMAT[1:] + ("__file_offset__", "timestamp")) - CLIENT_FIELDS


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
    global _DECLARED, _CLIENT, _TEXT_LAYOUTS
    _DECLARED = tuple((keys, tuple(k in raw for k in keys)) for keys, raw in formats)
    _CLIENT = CLIENT_FIELDS.union(*(raw for _keys, raw in formats))
    _TEXT_LAYOUTS = (_HIGRESS_TEXT, *(_TextLayout(keys, gap) for keys, gap in _DECLARED),
                     _HIGRESS_NON_AI_TEXT)


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
_HIGRESS_NON_AI = HIGRESS_FORMAT[1:]   # a route logged without ai-statistics


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
        # A key spelled with escapes ("ai\\u005flog" is ai_log) escapes that count: a
        # line holding any \\u takes the exact path, which decodes every key.
        return _CLIENT.isdisjoint(keys) and not any(
            raw.count(k) > 1 for k in _SENSITIVE_KEYS) and b"\\u" not in raw
    tail = raw.find(_AI_LOG_END)
    if tail < 0:
        return False
    quotes = raw.count(b'"', tail)
    # A quote is escaped only after an odd run of backslashes: a header value ending in
    # an escaped backslash (``\\\\"``) ends with a real quote, and counting every ``\\"``
    # let each such header hide one quote of a key the client wrote (four of them hid a
    # whole second ai_log, which json keeps: a bill replaced with no warning).
    return quotes == _TAIL_QUOTES or \
        quotes - len(_ESCAPED_QUOTE.findall(raw, tail)) == _TAIL_QUOTES


_ESCAPED_QUOTE = re.compile(rb'(?<!\\)(?:\\\\)*\\"')


def _genuine_fields(outer: dict, warnings: list[str], text: str = "") -> dict:
    """The outer fields a client cannot have written; "forged" (and "untrusted_time") are
    added to ``warnings`` when the line holds keys a client wrote.

    For a line in Higress's format or a declared one (--log-format), each field is taken
    by its place in the fixed key order (:func:`_align`, on the keys json read; else
    :func:`_read_by_place`, on the line's text, for a header that opened an object); keys
    a client added are dropped, and a field whose place is ambiguous (a client copied
    whole runs of the format) is dropped too, so that the event time falls back to the
    read time; an ai_log whose place is ambiguous is never billed (``ambiguous_ai_log``).
    For another format, a sensitive field is kept only when it occurs once, a time only
    when it comes before every client-controlled field, ``ai_log`` only when it comes
    before every client-controlled field and is the only one, or the first of several
    with only keys the gateway writes (GATEWAY_FIELDS) before it; several ai_logs
    otherwise leave the genuine one's place unknown: BadLine ``ambiguous_ai_log`` (or a
    forged non-AI line when none is an AI one). Raises :class:`BadLine`
    ``untrusted_ai_log`` for a line whose only ai_log comes after a raw header: the same
    bytes are a custom format that puts it there and a client writing one into a format
    that has none, so it can never decide a bill.
    """
    pairs = outer.pairs if isinstance(outer, _Duplicated) else list(outer.items())
    keys = [k for k, _ in pairs]
    first_client = next((i for i, k in enumerate(keys) if k in _CLIENT), len(keys))
    # A value that is not a string can hide genuine keys only where a client writes.
    nested = first_client < len(keys) and any(
        type(v) is not str for k, v in pairs if k != "ai_log")
    if first_client == len(keys) and not nested and not isinstance(outer, _Duplicated):
        return outer   # no raw header field in this format: nothing to forge with
    if not nested:
        # Higress's format; the declared ones; Higress's without its ai_log (a route
        # logged without ai-statistics), only when no format with an ai_log reads the
        # line. Every reading the line has counts (_agreed).
        readings = (((HIGRESS_FORMAT, None),) + _DECLARED if keys[0] == "ai_log"
                    else _DECLARED + ((_HIGRESS_NON_AI, None),))
        found = []
        for fmt, gap in readings:
            if found and fmt is _HIGRESS_NON_AI:
                break
            places = _align(keys, fmt, gap)
            if places is None:
                continue
            genuine, ambiguous = {}, None
            forged = len(pairs) != len(fmt)
            for name, where in zip(fmt, places):
                if len(where) == 1:
                    genuine[name] = pairs[next(iter(where))][1]
                else:
                    forged = True
                    if name == "ai_log":
                        ambiguous = [pairs[i][1] for i in sorted(where)]
            found.append((genuine, forged, ambiguous))
        if found:
            return _agreed(found, warnings)
    if text and _DECLARED:
        # A header opened an object that swallowed genuine keys: the declared layouts
        # are read by place on the text, as a line a header broke is.
        found = [r for layout in _TEXT_LAYOUTS[1:-1]
                 if (r := _read_by_place(text, layout)) is not None]
        if found:
            if nested:
                warnings.append("forged")
            return _agreed(found, warnings)
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    forged = nested or len(counts) != len(keys)
    ai_at = [i for i, k in enumerate(keys) if k == "ai_log"]
    if len(ai_at) > 1:
        # A client wrote all but one. The first is the genuine one when every key before
        # it is one the gateway writes (no header precedes it to write it from); else a
        # header of a name not known here may have, and its place is unknown.
        if _gateway_prefix(keys[:ai_at[0]]):
            ai_at = ai_at[:1]
        else:
            _refuse_ambiguous([pairs[i][1] for i in ai_at], True)
            ai_at = []
    # The genuine ai_log: the one before every raw header of a known name.
    take_ai = len(ai_at) == 1 and ai_at[0] < first_client
    genuine = {}
    late_time = False
    seen: set = set()
    for i, (k, v) in enumerate(pairs):
        if k in seen:
            continue
        seen.add(k)
        if k == "ai_log":
            if not take_ai:
                continue
        elif k in TIME_FIELDS and i > first_client:
            # After a raw header of a format not known here, a client may have written
            # it: never an event time (the format can be declared, --log-format, to
            # read it by place).
            late_time = True
            continue
        elif k in SENSITIVE_FIELDS and (nested or counts[k] > 1):
            continue
        genuine[k] = v
    if "ai_log" not in genuine and counts.get("ai_log") == 1 and not forged:
        at = keys.index("ai_log")
        raise _untrusted(next(k for k in reversed(keys[:at]) if k in _CLIENT))
    if forged:
        warnings.append("forged")
    if late_time:
        warnings.append("untrusted_time")
    return genuine


def _gateway_prefix(keys: list[str]) -> bool:
    """No key of these can be a raw header: each is one the gateway writes and no
    declared format marks raw."""
    return all(k in GATEWAY_FIELDS and k not in _CLIENT for k in keys)


def _agreed(found: list, warnings: list[str]) -> dict:
    """The fields every reading of the line (one per format it can be read as: Higress's,
    each declared one) puts at one place with one value; "forged" to ``warnings`` when
    a client wrote keys. Readings that disagree on an AI ai_log (a client made the
    line of one format read as another's, or copied keys around the ai_log) bill
    nothing: BadLine ``ambiguous_ai_log``."""
    genuine, forged, ambiguous = found[0]
    if len(found) > 1 or ambiguous is not None:
        copies = []
        for fields, _forged, unsure in found:
            copies += unsure if unsure is not None else [fields.get("ai_log")]
        if any(c != copies[0] for c in copies):
            _refuse_ambiguous(copies)
            genuine = {k: v for k, v in genuine.items() if k != "ai_log"}
        for fields, other_forged, _unsure in found[1:]:
            agreed = {k: v for k, v in genuine.items() if k in fields and fields[k] == v}
            forged = forged or other_forged or len(agreed) != len(genuine) \
                or len(fields) != len(genuine)
            genuine = agreed
    if forged:
        warnings.append("forged")
    return genuine


def _refuse_ambiguous(candidates: list, undeclared: bool = False) -> None:
    """An ai_log a client made ambiguous (it copied the format's keys around it into a
    header; or, in a format not declared, wrote one where any of them may be the
    format's): never billed, and counted unless every copy is a non-AI one."""
    if any(not (v is None or v == "-" or v == "") for v in candidates):
        raise BadLine("ambiguous_ai_log", (
            f"{len(candidates)} ai_log keys, the first after a key that may be a raw "
            "header of a format not declared: which one the gateway wrote is unknown, "
            "none is billed; log ai_log first or declare the format (--log-format)")
            if undeclared else (
            f"{len(candidates)} readings of the line by the format's places give "
            "different ai_logs (a client copied the format's keys into a header "
            "around it): none is billed; a format whose ai_log comes before every "
            "request header cannot be forged so"))


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



def _salvage(text: str, warnings: list[str]) -> dict | None:
    """Recover ai_log (and times, ids) from a line that is not valid JSON; "forged" and
    "untrusted_time" go to ``warnings``.

    Envoy's TEXT format does not escape other fields, so a User-Agent holding ``"``
    (or ending in ``\\``) breaks the line while the ai_log, which the plugin escaped, is
    intact. A line of Higress's format or a declared one is read by place
    (:func:`_read_by_place`). Of another format the ai_log is taken when it precedes
    every raw header field or occurs once; a time or id only when its key occurs
    exactly once (a time: before every raw header too), so it cannot come from hostile
    text.
    """
    found = [r for layout in _TEXT_LAYOUTS[:-1]
             if (r := _read_by_place(text, layout)) is not None]
    if not found:   # Higress's without ai_log only when no format with one reads it
        found = [r for r in (_read_by_place(text, _TEXT_LAYOUTS[-1]),) if r is not None]
    if found:
        return _agreed(found, warnings)
    first_client = min((i for i in (text.find(f'"{k}":"') for k in _CLIENT) if i >= 0),
                       default=len(text))
    ai_at = text.find('"ai_log":"')
    if ai_at < 0:
        return None
    # Every ai_log key, however spelled ("ai\u005flog", "ai_log" :): a client's copies.
    copies = [m for m in _ANY_AI_LOG_KEY.finditer(text)
              if m.group(1) == "ai_log" or _string_at(m.group(0), 1) == "ai_log"]
    repeated = len(copies) > 1
    if repeated and (ai_at > first_client or copies[0].start() != ai_at
                     or not _gateway_prefix(_keys_before(text, ai_at))):
        # As in _genuine_fields: only keys the gateway writes may precede the genuine one.
        _refuse_ambiguous([_value_after(text, m.end()) for m in copies], True)
        warnings.append("forged")
        return {}
    if ai_at > first_client:
        # A lone ai_log after a raw header: a client may have written it (_genuine_fields).
        raise _untrusted(max(_CLIENT, key=lambda k: text.rfind(f'"{k}":"', 0, ai_at)))
    ai = _string_at(text, ai_at + len('"ai_log":"'))
    if ai is None:
        return None
    outer = {"ai_log": ai}
    forged = repeated
    late_time = False
    for key in ("start_time", "timestamp", "request_id"):
        at = _unique_marker(text, key)
        if key in TIME_FIELDS and text.find(f'"{key}":"') > first_client:
            late_time = True   # as in _genuine_fields: a client may have written it
        elif at is not None:
            value = _string_at(text, at + len(key) + 4, False)
            if value is not None:
                outer[key] = value
        if at is None and text.count(f'"{key}":') > 1:
            forged = True
    if forged:
        warnings.append("forged")
    if late_time:
        warnings.append("untrusted_time")
    return outer


# A quoted key, plain or with escapes, and its colon (group 1: a plain key's text).
_ANY_AI_LOG_KEY = re.compile(r'"(ai_log)"[ \t\r\n]*:|"[^"]*\\u[^"]*"[ \t\r\n]*:')
_WS_MATCH = re.compile(r"[ \t\r\n]*").match


def _keys_before(text: str, at: int) -> list[str]:
    """The keys of the line before offset ``at`` (where a key starts), or ["?"] when
    that part is not a run of valid members (a header broke it)."""
    head = text[:at].rstrip()
    if head.endswith(","):
        head = head[:-1]
    try:
        pairs = json.loads(head + "}", object_pairs_hook=list)
    except (ValueError, RecursionError):
        return ["?"]
    return [k for k, _v in pairs] if isinstance(pairs, list) else ["?"]


def _value_after(text: str, at: int) -> object:
    """The string value after a key's colon at ``at``; "?" (an AI ai_log for
    _refuse_ambiguous) when it is not one."""
    m = _WS_MATCH(text, at)
    value = _string_at(text, m.end() + 1, False) if text.startswith('"', m.end()) else None
    return "?" if value is None else value


def _string_at(text: str, at: int, strict: bool = True) -> str | None:
    try:
        value, _end = scanstring(text, at, strict)
    except ValueError:
        return None
    return value


def _unique_marker(text: str, key: str) -> int | None:
    marker = f'"{key}":"'
    start = text.find(marker)
    if start < 0 or text.find(marker, start + 1) >= 0:
        return None
    return start


# Reading a line by place on its text (a line a header broke, or a header that opened an
# object): Envoy writes the format's template with each operator replaced, so the line
# is the template's keys in order, each value either written by Envoy (a JSON string:
# quotes escaped, or none inside) or a raw header pasted as it came, which may hold
# anything, quotes and copies of the format's keys included. A raw value ends at a
# quote followed by the next key of the format; every way of cutting the line so is a
# reading, and a field is taken only when every reading puts it at the same place.
_WS = "[ \t]*"
# Places one field can have: a 60 KiB header (Envoy's default limit) holds at most ~5,000
# copies of a key; more (8 MB of copies cost 190 MB here) and the line is not read by
# place: the fallback of _salvage (Higress's ai_log, first, is still billed) or refused.
MAX_PLACES = 10_000


class _TextLayout:
    """A format's keys, which are raw headers, and the patterns that find its keys."""

    __slots__ = ("keys", "raw", "first", "after", "cut", "end", "marks")

    def __init__(self, keys: tuple[str, ...], raw: tuple[bool, ...]) -> None:
        quoted = [re.escape(json.dumps(k)) for k in keys]
        self.keys, self.raw = keys, raw
        self.first = re.compile(r"\{" + _WS + quoted[0] + _WS + ":" + _WS)
        # The separator and key before each field after the first, after the value
        # before it (whose closing quote a raw value's pattern includes).
        self.after = [re.compile(_WS + "," + _WS + q + _WS + ":" + _WS) for q in quoted[1:]]
        self.cut = [re.compile('"' + _WS + "," + _WS + q + _WS + ":" + _WS) for q in quoted[1:]]
        self.end = re.compile(_WS + r"\}" + _WS + r"\Z")
        # A key a client wrote into a raw value: any of the format's or a sensitive one.
        names = sorted(set(keys) | set(SENSITIVE_FIELDS))
        self.marks = re.compile('"(?:' + "|".join(re.escape(k) for k in names) + ')"'
                                + _WS + ":")


def _read_by_place(text: str, layout: _TextLayout) -> tuple[dict, bool, list | None] | None:
    """The fields of ``text`` read as ``layout`` (see above), each only when all readings
    agree on its place; whether a client wrote keys (a field with several places, or a
    raw value holding a key); and the ai_log's values when it has several places (else
    None). None when the text is not a line of this layout."""
    keys, raw, n = layout.keys, layout.raw, len(layout.keys)
    m = layout.first.match(text)
    if m is None:
        return None
    # Forward: the value starts each field can have; for a value Envoy wrote, its
    # decoded value, end and the next field's start; for a raw one, the quote-key
    # matches after it (where it can end).
    starts: list[set[int]] = [set() for _ in range(n)]
    starts[0] = {m.end()}
    parsed: list[dict] = [{} for _ in range(n)]
    cuts: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for j in range(n):
        last = j == n - 1
        if raw[j]:
            here = {v for v in starts[j] if text.startswith('"', v)}
            if not here:
                return None
            starts[j] = here
            lo = min(here)
            if last:
                m = _RAW_END.search(text, lo + 1)
                cuts[j] = [(m.start(), len(text))] if m else []
            else:
                # (matches cannot overlap: each starts with a quote a comma follows)
                cuts[j] = [(c.start(), c.end()) for c in
                           islice(layout.cut[j].finditer(text, lo + 1), MAX_PLACES + 1)]
            if not cuts[j] or len(cuts[j]) > MAX_PLACES:
                return None
            if not last:
                starts[j + 1] = {nxt for q, nxt in cuts[j] if q > lo}
        else:
            for v in starts[j]:
                if not text.startswith('"', v):
                    continue
                try:
                    value, end = scanstring(text, v + 1, False)
                except ValueError:
                    continue
                follow = layout.end if last else layout.after[j]
                e = follow.match(text, end)
                if e is not None:
                    parsed[j][v] = (value, end, None if last else e.end())
            if not parsed[j]:
                return None
            if not last:
                starts[j + 1] = {nxt for _value, _end, nxt in parsed[j].values()}
    # Backward: the starts on some complete reading.
    good: list[set[int]] = [set() for _ in range(n)]
    for j in range(n - 1, -1, -1):
        last = j == n - 1
        if raw[j]:
            ends = [q for q, nxt in cuts[j] if last or nxt in good[j + 1]]
            if ends:
                hi = max(ends)
                good[j] = {v for v in starts[j] if v < hi}
        else:
            good[j] = {v for v, (_value, _end, nxt) in parsed[j].items()
                       if last or nxt in good[j + 1]}
        if not good[j]:
            return None
    genuine: dict = {}
    forged = False
    ambiguous = None
    for j, name in enumerate(keys):
        if len(good[j]) != 1:
            forged = True
            if name == "ai_log":
                ambiguous = [parsed[j][v][0] for v in sorted(good[j])]
            continue
        v = next(iter(good[j]))
        if not raw[j]:
            genuine[name] = parsed[j][v][0]
            continue
        # A raw value ends at the quote before the next field's (one) start.
        nxt = good[j + 1] if j + 1 < n else None
        ends = [q for q, after in cuts[j] if q > v and (nxt is None or after in nxt)]
        if len(ends) != 1 or (nxt is not None and len(nxt) != 1):
            continue
        value = text[v + 1:ends[0]]
        if layout.marks.search(value):
            forged = True
        genuine[name] = _raw_value(value)
    return genuine, forged, ambiguous


_RAW_END = re.compile('"' + _WS + r"\}" + _WS + r"\Z")


def _raw_value(value: str) -> str:
    """A raw header's text as json would read it when it is a valid JSON string body
    (a valid line's value), else as Envoy wrote it."""
    try:
        decoded, end = scanstring(value + '"', 0, False)
    except ValueError:
        return value
    return decoded if end == len(value) + 1 else value


_HIGRESS_TEXT = _TextLayout(HIGRESS_FORMAT, tuple(k in CLIENT_FIELDS for k in HIGRESS_FORMAT))
_HIGRESS_NON_AI_TEXT = _TextLayout(HIGRESS_FORMAT[1:], _HIGRESS_TEXT.raw[1:])
_TEXT_LAYOUTS: tuple = (_HIGRESS_TEXT, _HIGRESS_NON_AI_TEXT)
