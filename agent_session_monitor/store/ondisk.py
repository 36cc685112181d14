"""The on-disk form of a session document: every round as the original skill wrote it,
and text that every request re-logs stored once, inside ``messages`` only.

storage.md ("Every round as the original wrote it"): a round on disk carries ``round``,
``timestamp``, the token fields, ``model``, ``has_tool_calls``, ``response_type``,
``question``, ``answer``, ``reasoning``, ``tool_calls`` and the detail maps, as logged,
so a script written for the original skill reads them straight from the file. What
repeats is deduplicated inside ``messages`` (the one documented difference), never by
moving a round's own fields elsewhere:

- The request's last message *is* the round's ``question`` (Higress logs it twice). On
  disk that message keeps its keys but its ``content`` is ``null``, and the round's
  ``messages_refs`` says ``{"<i>": "question"}``.
- A round's ``answer`` and ``tool_calls`` come back in the next request as its first new
  message (the assistant turn; its tool calls without Higress's ``index``). In the round
  that continues it, that message's ``content`` / ``tool_calls`` are ``null`` and
  ``messages_refs`` says ``"answer"``, ``"tool_calls"`` or ``"answer+tool_calls"``: they
  are those of the round it continues (``context_key``).
- Claude's top-level ``system`` prompt (our addition, often kilobytes) lives once in
  ``doc["systems"]``; each round carries ``system_ref``.
- Our own bookkeeping that position implies: ``key`` when it is the ``request_id``,
  ``context_key`` when it is the previous round's key (a round that extends another,
  ``messages_offset`` > 0, without ``context_key`` extends the previous round; schema 1
  said ``context_is_previous``), ``cache_write_tokens`` when 0, and ``priced_by`` when
  it is the session's usual price data (``price_default``; a priced round that did not
  record it says ``"priced_by": null``); the session's ``priced_by`` counts and a null
  ``provider_cost`` are left out (the rounds say them).
- A Claude answer re-sent as the first text block of the next request's assistant turn:
  that block's ``text`` is ``null`` and ``messages_refs`` says ``"answer_block"``.
- Layout 3 (the document says ``"layout": 3``), bytes every round repeated:
  ``buckets`` is left out when the logged token fields and detail maps give it again
  (``usage_buckets``; a round whose buckets were split otherwise keeps them);
  a line-hash ``key`` (``sha256:`` + 32 hex) is written as ``"k"``, the same 16 bytes
  in base64url (22 characters: a lossless re-spelling, so keys of every older store
  still match and nothing about collisions changes); ``source`` is written as
  ``"src": <offset>`` when its log file (``fp``) is the previous round's; and the
  session's ``context_tip`` is left out when it is its last round's key; and
  ``messages_offset`` is left out when the round extends the previous round's whole
  request (its offset is that round's offset plus its messages).
- Layout 4 (``"layout": 4``): a placeholder that would say nothing but its role is left
  out of the list altogether, and its position in ``messages_refs`` names the whole
  message: ``"user:question"`` is ``{"content": <question>, "role": "user"}``,
  ``"tool:question"`` the same with ``"role": "tool"`` and the ``tool_call_id`` of the
  last call of the round it continues, ``"assistant:answer"`` /
  ``"assistant:tool_calls"`` (content null) / ``"assistant:answer+tool_calls"`` the
  previous answer's turn; positions count the whole list, and a message of any other
  shape (another role, key order or extra key, a result for another call) keeps its
  placeholder. ``total_tokens`` is left out when the logged total is the sum of the
  round's buckets (``null`` when none was logged), a chain's first ``messages_offset``
  when it is 0, and the session's ``unpriced_models`` / ``consumers`` when empty.

A placeholder ``null`` keeps the message's key order; only positions listed in
``messages_refs`` are references, so a message whose content really is ``null`` stays
itself. :func:`compact` is applied when a session is written and :func:`expand` when it
is read; ``expand(compact(doc)) == doc`` for every document (tests/test_compact.py).
:func:`expand` also reads every older layout (3, the unnumbered ones before it, and schema
1: answers moved into the next round, questions and round numbers left out), which
:mod:`upgrade` rewrites.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from ..pricing.cost import bucket_counts

REFS = "messages_refs"
_ANSWER, _CALLS, _BOTH, _QUESTION = "answer", "tool_calls", "answer+tool_calls", "question"
_BLOCK = "answer_block"
# Layout 4: a placeholder that would say nothing but its role is left out of the list
# altogether; the kind names the whole message (``"user:question"`` is
# ``{"content": <question>, "role": "user"}``), in the stored key order.
_WHOLE = {
    "user:question": (_QUESTION, ("content", "role")),
    "tool:question": (_QUESTION, ("content", "role", "tool_call_id")),
    "assistant:answer": (_ANSWER, ("content", "role")),
    "assistant:tool_calls": (_CALLS, ("content", "role", "tool_calls")),
    "assistant:answer+tool_calls": (_BOTH, ("content", "role", "tool_calls")),
}
_TOOL_QUESTION = "tool:question"
# (reference kind, role, keys in order) of a placeholder -> its whole-message kind
_WHOLE_SHAPES = {(kind, name.split(":")[0], keys): name for name, (kind, keys) in _WHOLE.items()}
# What a left-out message is before its reference fills it in (keys in their order).
_PLACEHOLDERS = {name: {key: (name.split(":")[0] if key == "role" else None) for key in keys}
                 for name, (_kind, keys) in _WHOLE.items()}
LAYOUT = 4
_LINE_KEY = re.compile(r"sha256:[0-9a-f]{32}")
_URLSAFE = bytes.maketrans(b"+/", b"-_")   # base64 -> base64url (base64.urlsafe_b64encode)


def compact(doc: dict) -> dict:
    """A copy of ``doc`` in its on-disk form (``doc`` itself is not changed)."""
    rounds = [dict(r) for r in doc["rounds"]]
    systems: dict[str, object] = {}
    known: dict[str, str] = {}   # a prompt text -> its ref: every round re-sends the same one
    for rnd in rounds:
        system = rnd.get("system")
        if system is not None:
            ref = known.get(system) if type(system) is str else None
            if ref is None:
                ref = _prompt_ref(system) if type(system) is str else _ref(system)
                while ref in systems and systems[ref] != system:
                    ref += "x"   # a hash collision must never swap two prompts
                systems.setdefault(ref, system)
                if type(system) is str:
                    known[system] = ref
            del rnd["system"]
            rnd["system_ref"] = ref
    by_key = {r["key"]: r for r in rounds}
    # Whole messages left out, per round: taken out of the lists only after every round's
    # references and offsets are known (they count the messages).
    whole: list[tuple[list, list[int]]] = []
    for rnd in rounds:
        messages = rnd.get("messages")
        if not isinstance(messages, list) or not messages:
            continue
        refs: dict[str, str] = {}
        base = _extended(rnd, by_key)
        first = messages[0]
        if base is not None and _is_assistant(first):
            kind = _answer_ref(first, base) or _answer_block_ref(first, base)
            if kind:
                refs["0"] = kind
        last = len(messages) - 1
        if str(last) not in refs and _is_message(messages[last]) \
                and rnd.get("question") is not None \
                and same_json(messages[last].get("content"), rnd["question"]):
            refs[str(last)] = _QUESTION
        if refs:
            messages = list(messages)
            left_out = []
            for at, kind in refs.items():
                i = int(at)
                name = _whole_kind(messages[i], kind, base)
                if name is not None:
                    refs[at] = name
                    left_out.append(i)
                elif kind == _BLOCK:
                    blocks = list(messages[i]["content"])
                    blocks[0] = {**blocks[0], "text": None}
                    messages[i] = {**messages[i], "content": blocks}
                else:
                    messages[i] = {k: (None if _replaced(k, kind) else v)
                                   for k, v in messages[i].items()}
            rnd["messages"] = messages
            rnd[REFS] = refs
            if left_out:
                whole.append((messages, left_out))
    default = _usual_price(rounds)
    # Layout 3's omissions need every round to have buckets and the session a tip to
    # give back; a document that lacks them is written as it is.
    layout = layout4 = "context_tip" in doc
    for rnd in rounds:
        if type(rnd.get("buckets")) is not dict or "messages_offset" not in rnd:
            layout = layout4 = False
            break
        if rnd.get("total_tokens", 0) is None:
            layout4 = False   # a null total could not be told from one never logged
    # Layout 4 also leaves out the session's empty lists (summarise always writes them).
    layout4 = layout4 and all(isinstance(doc.get(name), list) for name in _EMPTY_LISTS)
    previous, previous_end = None, None
    fp = None
    for rnd in rounds:
        key = rnd["key"]
        source = rnd.get("source")
        if fp is not None and type(source) is dict and source.get("fp") == fp \
                and _plain_source(source):
            del rnd["source"]
            rnd["src"] = source["offset"]
        fp = source.get("fp") if isinstance(source, dict) else None
        offset = rnd.get("messages_offset")
        if rnd.get("context_key") is not None and rnd["context_key"] == previous and offset:
            del rnd["context_key"]
            if layout and type(offset) is int and offset == previous_end:
                del rnd["messages_offset"]   # extends the previous round's whole request
        elif layout4 and offset == 0 and type(offset) is int and previous_end is None \
                and "context_key" not in rnd:
            del rnd["messages_offset"]       # a chain's first request, with nothing before
        messages = rnd.get("messages")
        previous_end = (offset or 0) + len(messages) \
            if type(offset) in (int, type(None)) and isinstance(messages, list) else None
        previous = key
        if key == rnd.get("request_id"):
            del rnd["key"]
        elif isinstance(key, str) and _LINE_KEY.fullmatch(key):
            del rnd["key"]
            rnd["k"] = binascii.b2a_base64(bytes.fromhex(key[7:]), newline=False) \
                .translate(_URLSAFE).decode()[:22]
        if rnd.get("cache_write_tokens") == 0 and "buckets" in rnd:
            del rnd["cache_write_tokens"]
        if layout4:
            total = rnd.get("total_tokens", _ABSENT)
            if total is _ABSENT:
                rnd["total_tokens"] = None   # not logged (absent says: derive it)
            elif type(total) is int and total == _bucket_total(rnd["buckets"]):
                del rnd["total_tokens"]      # the logged total is the buckets' sum
        if layout and _derived_buckets(rnd) == rnd["buckets"]:
            del rnd["buckets"]
        if default is not None and rnd.get("cost_usd") is not None:
            if rnd.get("priced_by") == default:
                del rnd["priced_by"]
            elif "priced_by" not in rnd:
                rnd["priced_by"] = None
    # Summaries the rounds already say: the count of rounds per price data, and a null
    # provider cost (a session that has one keeps it on disk).
    skip = {"rounds", "systems", "priced_by"}
    if doc.get("provider_cost") is None:
        skip.add("provider_cost")
    if layout and rounds and doc.get("context_tip") is not None \
            and doc["context_tip"] == doc["rounds"][-1].get("key"):
        skip.add("context_tip")
    if layout4:
        skip.update(name for name in _EMPTY_LISTS if doc[name] == [])
    out = {k: v for k, v in doc.items() if k not in skip}
    if systems:
        out["systems"] = systems
    if default is not None:
        out["price_default"] = default
    if layout:
        out["layout"] = LAYOUT if layout4 else 3
    for messages, left_out in whole:
        for i in sorted(left_out, reverse=True):
            del messages[i]
    out["rounds"] = rounds
    return out


_ABSENT = object()
_EMPTY_LISTS = ("unpriced_models", "consumers")


def _whole_kind(msg: dict, kind: str, base: dict | None) -> str | None:
    """Layout 4: the whole-message kind of a referenced message of a standard shape
    (only the values the reference gives, and its role), else None (a placeholder)."""
    name = _WHOLE_SHAPES.get((kind, msg.get("role"), tuple(msg)))
    if name is None:
        return None
    if kind == _CALLS and msg["content"] is not None:
        return None   # a tool_calls reference keeps the turn's own content
    if name == _TOOL_QUESTION and (msg["tool_call_id"] is None
                                   or msg["tool_call_id"] != _last_call_id(base)):
        return None   # the result of a call other than the last one base made
    return name


def _last_call_id(base: dict | None) -> str | None:
    """The id of the last tool call ``base`` made: what the last tool result of the next
    request answers."""
    calls = base.get("tool_calls") if base is not None else None
    if isinstance(calls, list) and calls and isinstance(calls[-1], dict):
        call_id = calls[-1].get("id")
        return call_id if isinstance(call_id, str) else None
    return None


def _bucket_total(buckets: object) -> int | None:
    if not isinstance(buckets, dict):
        return None
    total = 0
    for value in buckets.values():
        if type(value) is not int:
            return None
        total += value
    return total


def _restore_whole(rnd: dict) -> None:
    """Layout 4: put the whole messages a round's ``messages_refs`` names back into its
    list as the placeholders they stand for (the references then fill them in)."""
    refs, messages = rnd.get(REFS), rnd.get("messages")
    if not isinstance(refs, dict) or not isinstance(messages, list):
        return
    found = sorted((_position(at), at) for at, kind in refs.items()
                   if _is_whole(kind) and _position(at) is not None)
    for i, at in found:
        if i > len(messages):
            del refs[at]   # a hand edit pointing past the list: nothing to put back
        else:
            messages.insert(i, dict(_PLACEHOLDERS[refs[at]]))


def _is_whole(kind: object) -> bool:
    return isinstance(kind, str) and kind in _WHOLE


def _position(at: object) -> int | None:
    return int(at) if isinstance(at, str) and at.isascii() and at.isdigit() else None


def _plain_source(source: object) -> bool:
    return isinstance(source, dict) and list(source) == ["fp", "offset"] \
        and isinstance(source["fp"], str) and type(source["offset"]) is int


def _derived_buckets(rnd: dict) -> dict:
    """The round's buckets as its logged token fields and detail maps give them
    (rounds.build_round, only the non-zero ones)."""
    ind, outd = rnd.get("input_token_details"), rnd.get("output_token_details")
    counts = bucket_counts(_count(rnd.get("input_tokens")), _count(rnd.get("output_tokens")),
                           _count(rnd.get("cached_tokens")), _count(rnd.get("reasoning_tokens")),
                           ind if isinstance(ind, dict) else None,
                           outd if isinstance(outd, dict) else None)
    # Runs for every round of every session written: Buckets.as_dict's order.
    return {k: v for k, v in zip(_BUCKET_NAMES, counts) if v}


_BUCKET_NAMES = ("input", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning")


def _count(value: object) -> int:
    return value if type(value) is int else 0


def _line_key(short: object) -> str | None:
    """``sha256:`` + hex of a key written as 22 base64url characters (layout 3)."""
    if not isinstance(short, str) or len(short) != 22:
        return None
    try:
        raw = base64.urlsafe_b64decode(short + "==")
    except (binascii.Error, ValueError):
        return None
    return "sha256:" + raw.hex() if len(raw) == 16 else None


def _usual_price(rounds: list) -> str | None:
    counts: dict[str, int] = {}
    for rnd in rounds:
        by = rnd.get("priced_by")
        if isinstance(by, str) and rnd.get("cost_usd") is not None:
            counts[by] = counts.get(by, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def expand(doc: dict) -> dict:
    """Turn an on-disk document (schema 1 or 2, any layout) back into the plain form, in
    place."""
    systems = doc.pop("systems", None) or {}
    default = doc.pop("price_default", None)
    version = doc.pop("layout", None)
    version = version if type(version) is int else 0
    layout, layout4 = version >= 3, version >= 4
    rounds = doc.get("rounds") or []
    previous, previous_end = None, None
    fp = None
    for i, rnd in enumerate(rounds):
        rnd.setdefault("round", i + 1)
        _restore_whole(rnd)
        short = rnd.pop("k", None)
        if "key" not in rnd:
            rnd["key"] = _line_key(short) or rnd.get("request_id")
        if "src" in rnd:
            offset = rnd.pop("src")
            if fp is not None and type(offset) is int and "source" not in rnd:
                rnd["source"] = {"fp": fp, "offset": offset}
        source = rnd.get("source")
        fp = source.get("fp") if isinstance(source, dict) else None
        if layout and "buckets" not in rnd:
            rnd["buckets"] = _derived_buckets(rnd)
        if layout and "messages_offset" not in rnd and "context_key" not in rnd \
                and previous_end is not None:
            rnd["messages_offset"] = previous_end
        elif layout4 and "messages_offset" not in rnd and "context_key" not in rnd:
            rnd["messages_offset"] = 0
        if layout4:
            if "total_tokens" not in rnd:
                total = _bucket_total(rnd.get("buckets"))
                if total is not None:
                    rnd["total_tokens"] = total
            elif rnd["total_tokens"] is None:
                del rnd["total_tokens"]
        offset, messages = rnd.get("messages_offset"), rnd.get("messages")
        previous_end = (offset or 0) + len(messages) \
            if type(offset) in (int, type(None)) and isinstance(messages, list) else None
        if rnd.pop("context_is_previous", False) or (
                rnd.get("messages_offset") and "context_key" not in rnd):
            rnd["context_key"] = previous
        previous = rnd["key"]
        if "cache_write_tokens" not in rnd and "buckets" in rnd:
            rnd["cache_write_tokens"] = 0
        if "priced_by" in rnd:
            if rnd["priced_by"] is None:
                del rnd["priced_by"]
        elif default is not None and rnd.get("cost_usd") is not None:
            rnd["priced_by"] = default
        ref = rnd.pop("system_ref", None)
        if ref is not None:
            rnd["system"] = systems.get(ref)
    by_key = {r.get("key"): r for r in rounds}
    for rnd in rounds:
        refs = rnd.pop(REFS, None)
        if isinstance(refs, dict) and isinstance(rnd.get("messages"), list):
            messages = rnd["messages"]
            base = by_key.get(rnd.get("context_key"))
            for at, kind in refs.items():
                i = _position(at)
                if i is None or i >= len(messages) or not _is_message(messages[i]):
                    continue
                msg = messages[i] = dict(messages[i])
                if kind == _TOOL_QUESTION:
                    msg["content"] = rnd.get("question")
                    msg["tool_call_id"] = _last_call_id(base)
                    continue
                kind = _WHOLE[kind][0] if _is_whole(kind) else kind
                if kind == _BLOCK:
                    blocks = msg.get("content")
                    if base is not None and isinstance(blocks, list) and blocks \
                            and isinstance(blocks[0], dict):
                        msg["content"] = [{**blocks[0], "text": base.get("answer")}, *blocks[1:]]
                elif kind == _QUESTION:
                    msg["content"] = rnd.get("question")
                elif base is not None:
                    if kind in (_ANSWER, _BOTH):
                        msg["content"] = base.get("answer")
                    if kind in (_CALLS, _BOTH):
                        msg["tool_calls"] = _without_index(base.get("tool_calls"))
    _expand_schema_1(rounds, by_key)
    if layout and "context_tip" not in doc and rounds:
        doc["context_tip"] = rounds[-1]["key"]
    if layout4:
        for name in _EMPTY_LISTS:
            doc.setdefault(name, [])
    if doc.get("schema", 1) >= 2:
        doc.setdefault("provider_cost", None)
        doc["priced_by"] = price_summary(rounds)
    return doc


def price_summary(rounds: list) -> dict:
    """Priced rounds per price data ("unrecorded": priced by a version that did not say)."""
    counts: dict[str, int] = {}
    for rnd in rounds:
        if rnd.get("cost_usd") is not None:
            by = rnd.get("priced_by") or "unrecorded"
            counts[by] = counts.get(by, 0) + 1
    return counts


def _expand_schema_1(rounds: list, by_key: dict) -> None:
    """Schema 1 moved a round's answer / tool calls into the next round's first new
    message and its question into its own last message: put them back."""
    continued: set = set()
    for rnd in rounds:
        if rnd.pop("question_is_last_message", False) and "question" not in rnd:
            messages = rnd.get("messages")
            if isinstance(messages, list) and messages and _is_message(messages[-1]):
                rnd["question"] = messages[-1].get("content")
        base = _extended(rnd, by_key)
        if base is None or base.get("key") in continued:
            continue
        continued.add(base.get("key"))
        first = rnd["messages"][0] if rnd["messages"] else None
        if base.get("answer_in_next_message") and "answer" not in base:
            if _is_assistant(first) and "content" in first:
                base["answer"] = first["content"]
                del base["answer_in_next_message"]
        if base.get("tool_calls_in_next_message") and "tool_calls" not in base:
            calls = first.get("tool_calls") if _is_message(first) else None
            if isinstance(calls, list):
                base["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls)]
                del base["tool_calls_in_next_message"]


def _extended(rnd: dict, by_key: dict) -> dict | None:
    """The round ``rnd`` directly continues: its new messages start right after that
    round's whole request (so its first new message is that round's answer turn)."""
    base = by_key.get(rnd.get("context_key"))
    if base is None or not isinstance(rnd.get("messages"), list):
        return None
    if not isinstance(base.get("messages"), list):
        return None
    if rnd.get("messages_offset") != (base.get("messages_offset") or 0) + len(base["messages"]):
        return None
    return base


def _answer_ref(msg: dict, base: dict) -> str | None:
    """Which of ``base``'s answer fields the assistant message ``msg`` repeats."""
    answer = base.get("answer")
    same_answer = "content" in msg and answer is not None and answer != "" \
        and same_json(msg["content"], answer)
    calls = base.get("tool_calls")
    same_calls = isinstance(calls, list) and bool(calls) and isinstance(msg.get("tool_calls"), list) \
        and same_json(msg["tool_calls"], _without_index(calls))
    if same_answer and same_calls:
        return _BOTH
    return _ANSWER if same_answer else _CALLS if same_calls else None


def same_json(a: object, b: object) -> bool:
    """``a`` and ``b`` are the same JSON value, key order included, so that a reference
    gives ``a`` back as it was logged. Python's ``==`` is not enough: ``False == 0 ==
    0.0 == -0.0``, ``[True] == [1]``, ``{"a": 1, "b": 2} == {"b": 2, "a": 1}``, and
    ``question``/``answer`` are whatever JSON the log holds."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is str or kind is int or kind is bool or a is None:
        return a == b
    if kind is float:
        return repr(a) == repr(b)   # -0.0 is not 0.0 on disk
    # Containers: a text member (most of them) is compared here, not by a call of its own.
    if kind is list:
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):
            if type(x) is str:
                if type(y) is not str or x != y:
                    return False
            elif not same_json(x, y):
                return False
        return True
    if kind is dict:
        # Keys in the same order too: a reference gives back the referenced value's
        # order, and a file must give every message back as logged (a script printing or
        # hashing it sees the order; tests/test_faithful_key_order.py).
        if len(a) != len(b):
            return False
        for (k, x), (k2, y) in zip(a.items(), b.items()):
            if k != k2:
                return False
            if type(x) is str:
                if type(y) is not str or x != y:
                    return False
            elif not same_json(x, y):
                return False
        return True
    return a == b


def _answer_block_ref(msg: dict, base: dict) -> str | None:
    """Claude re-sends a streamed answer as the first text block of the assistant turn
    (its tool_use blocks follow, in another shape than Higress's tool_calls)."""
    answer, blocks = base.get("answer"), msg.get("content")
    if isinstance(answer, str) and answer and isinstance(blocks, list) and blocks:
        first = blocks[0]
        if isinstance(first, dict) and first.get("type") == "text" and first.get("text") == answer:
            return _BLOCK
    return None


def _replaced(key: str, kind: str) -> bool:
    if kind in (_QUESTION, _ANSWER):
        return key == "content"
    if kind == _CALLS:
        return key == "tool_calls"
    return key in ("content", "tool_calls")


def _without_index(calls: object) -> object:
    """Tool calls as the next request re-sends them: without the ``index`` Higress adds
    when it assembles a streamed answer's calls."""
    if not isinstance(calls, list):
        return calls
    return [{k: v for k, v in c.items() if k != "index"} if isinstance(c, dict) else c
            for c in calls]


def _is_message(msg: object) -> bool:
    return isinstance(msg, dict)


def _is_assistant(msg: object) -> bool:
    return isinstance(msg, dict) and msg.get("role") == "assistant"


def _prompt_ref(system: str) -> str:
    """:func:`_ref` of a prompt text, remembered: an agent's sessions share a handful of
    system prompts, often of tens of KB (Claude Code's), hashed again for every session
    written otherwise (45 us for 18 KB; a lookup hashes the text once per string)."""
    global _PROMPT_CHARS
    ref = _PROMPT_REFS.get(system)
    if ref is None:
        ref = _ref(system)
        if _PROMPT_CHARS + len(system) > PROMPT_REF_CHARS:
            _PROMPT_REFS.clear()
            _PROMPT_CHARS = 0
        if len(system) <= PROMPT_REF_CHARS:
            _PROMPT_REFS[system] = ref
            _PROMPT_CHARS += len(system)
    return ref


_PROMPT_REFS: dict[str, str] = {}
_PROMPT_CHARS = 0          # characters of the prompts held by _PROMPT_REFS
PROMPT_REF_CHARS = 4_000_000


def _ref(system: object) -> str:
    text = system if isinstance(system, str) else json.dumps(system, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
