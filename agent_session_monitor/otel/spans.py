"""A stored round -> one OTLP span: its ids, times and attributes (wire.py encodes it).

A span carries the OpenTelemetry GenAI conventions (``gen_ai.*``, the names current in
opentelemetry-semantic-conventions 0.66) and the OpenInference ones Phoenix reads
(``llm.*``, ``session.id``...). Its ids are hashes of the session id and the round's
idempotency key, so a replay or a resend produces the same span, which backends that key
spans by id (Phoenix: ``ON CONFLICT (span_id) DO NOTHING``) store once.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
from dataclasses import dataclass, field

from .. import __version__
from ..pricing import tokens
from ..store.names import UNSESSIONED_ID
from ..store.document import round_question

SCOPE_NAME = "agent_session_monitor"
TEXT_CAP = 32 * 1024             # bytes of one text attribute (a prompt can be megabytes)
CONTENT_BUDGET = 256 * 1024      # bytes of all content attributes of one span
MAX_MESSAGES = 64                # messages new in a round exported, the latest ones
TRUNCATED = " [truncated]"

# pricing.provider_of() names (LiteLLM's) -> (gen_ai.provider.name, llm.provider).
# Values outside both lists are passed through: both conventions allow custom names.
PROVIDERS = {
    "openai": ("openai", "openai"), "azure": ("azure.ai.openai", "azure"),
    "anthropic": ("anthropic", "anthropic"), "gemini": ("gcp.gemini", "google"),
    "vertex_ai": ("gcp.vertex_ai", "google"), "bedrock": ("aws.bedrock", "aws"),
    "mistral": ("mistral_ai", "mistralai"), "xai": ("x_ai", "xai"),
    "deepseek": ("deepseek", "deepseek"), "groq": ("groq", "groq"),
    "cohere": ("cohere", "cohere"), "perplexity": ("perplexity", "perplexity"),
}


@dataclass
class Span:
    """What one OTLP span says; ``attributes`` values are str, int, float, bool or a
    list of str (insertion order is kept on the wire)."""

    trace_id: bytes
    span_id: bytes
    name: str
    start_ns: int
    end_ns: int
    attributes: dict = field(default_factory=dict)
    error: str | None = None     # status message when the request failed


# -- ids and times -------------------------------------------------------------------

def _digest(*parts: str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        # surrogatepass: a session id from a hostile log may hold a lone surrogate,
        # and names.file_name_for() hashes it the same way.
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return h.digest()


def span_ids(session_id: str, key: str, trace_per_session: bool = False) -> tuple[bytes, bytes]:
    """(trace_id, span_id) of a round: 16 and 8 bytes, never all zero (invalid in OTLP).

    By default every round is its own trace, grouped by ``session.id`` /
    ``gen_ai.conversation.id``: one trace per session would grow without end (Tempo
    rejects traces over 5 MB by default) and Phoenix shows a session as its traces."""
    span = _digest("asm.span", session_id, key)[:8]
    if trace_per_session and session_id != UNSESSIONED_ID:
        trace = _digest("asm.trace", session_id)[:16]
    else:
        trace = _digest("asm.trace", session_id, key)[:16]
    return (trace if any(trace) else b"\0" * 15 + b"\1",
            span if any(span) else b"\0" * 7 + b"\1")


_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z")


def time_ns(timestamp: object) -> int:
    """Nanoseconds since the epoch of a stored ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (0 if not one).

    Integer arithmetic: a float would round the milliseconds of a 2026 time."""
    m = _TIME.fullmatch(timestamp) if isinstance(timestamp, str) else None
    if m is None:
        return 0
    seconds = calendar.timegm(tuple(int(g) for g in m.groups()[:6]) + (0, 0, 0))
    frac = (m.group(7) or "").ljust(9, "0")
    return seconds * 10**9 + int(frac)


# -- round -> span --------------------------------------------------------------------

def round_to_span(session_id: str, rnd: dict, store_content: bool, provider: str | None = None,
                  trace_per_session: bool = False) -> Span:
    """The span of one stored round (``session_id`` as in ``SessionStore.new_rounds``).

    ``provider`` is the pricing table's provider of the model, when known. Content
    (question, answer, messages, tool arguments) is exported only with ``store_content``.
    """
    trace_id, span_id = span_ids(session_id, rnd["key"], trace_per_session)
    start = time_ns(rnd.get("timestamp"))
    duration = rnd.get("llm_service_duration")
    end = start + duration * 10**6 if isinstance(duration, int) and duration > 0 else start
    model = rnd.get("model")
    a: dict = {"gen_ai.operation.name": "chat"}
    names = PROVIDERS.get(provider or "", (provider, provider))
    if provider:
        a["gen_ai.provider.name"] = names[0]
        a["gen_ai.system"] = names[0]   # the name before semconv 1.37; older backends read it
    if model:
        a["gen_ai.request.model"] = model
        a["gen_ai.response.model"] = model   # the model as the provider answered (ai_log)
    # The normalised columns (tokens.py): semconv's input_tokens includes cache reads and
    # writes, output_tokens the reasoning, whatever the provider logged.
    t = tokens.of_round(rnd)
    inp, out = t["input"], t["output"]
    cache_read, cache_write, reasoning = t["cached"], t["cache_write"], t["reasoning"]
    a.update({
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": out,
        "gen_ai.usage.cache_read.input_tokens": cache_read,
        "gen_ai.usage.cache_creation.input_tokens": cache_write,
        "gen_ai.usage.reasoning.output_tokens": reasoning,
    })
    sessioned = session_id != UNSESSIONED_ID
    if sessioned:
        a["gen_ai.conversation.id"] = session_id
    if rnd.get("chat_id"):
        a["gen_ai.response.id"] = rnd["chat_id"]
    first = rnd.get("llm_first_token_duration")
    if isinstance(first, int):
        a["gen_ai.response.time_to_first_chunk"] = first / 1000.0   # seconds, per semconv
    # OpenInference (Phoenix, Arize).
    a["openinference.span.kind"] = "LLM"
    if sessioned:
        a["session.id"] = session_id
    if rnd.get("consumer"):
        a["user.id"] = rnd["consumer"]
    if model:
        a["llm.model_name"] = model
    if provider:
        a["llm.provider"] = names[1]
    a.update({
        "llm.token_count.prompt": inp,
        "llm.token_count.completion": out,
        "llm.token_count.total": t["total"],
        "llm.token_count.prompt_details.cache_read": cache_read,
        "llm.token_count.prompt_details.cache_write": cache_write,
        "llm.token_count.completion_details.reasoning": reasoning,
    })
    cost = rnd.get("cost_usd")
    if cost is None:
        a["agent_session_monitor.unpriced"] = True
    else:
        a["llm.cost.total"] = float(cost)
    # The monitor's own fields, under its name.
    for name, attr in (("request_id", "request_id"), ("priced_as", "priced_as"),
                       ("chat_round", "chat_round"), ("api", "api"), ("api_type", "api_type"),
                       ("response_type", "response_type"),
                       ("llm_first_token_duration", "first_token_ms"),
                       ("llm_service_duration", "service_ms"), ("time_source", "time_source")):
        value = rnd.get(name)
        if value is not None:
            a["agent_session_monitor." + attr] = value
    a["agent_session_monitor.key"] = rnd["key"]
    a["agent_session_monitor.has_tool_calls"] = bool(rnd.get("has_tool_calls"))
    if rnd.get("usage_missing"):
        a["agent_session_monitor.usage_missing"] = True
    error = _error(rnd)
    if error is not None:
        code = (rnd.get("gateway") or {}).get("response_code")
        a["error.type"] = str(code) if code else "error"
        if isinstance(code, str) and code.isdigit():
            a["http.response.status_code"] = int(code)
    _tool_calls(a, rnd.get("tool_calls"), store_content)
    if store_content:
        _content(a, rnd)
    name = f"chat {model}" if model else "chat"
    return Span(trace_id, span_id, name, start, end, a, error)


def _error(rnd: dict) -> str | None:
    code = (rnd.get("gateway") or {}).get("response_code")
    if isinstance(code, str) and not code.startswith("2"):
        return f"HTTP {code}"
    if rnd.get("response_type") == "error":
        return "error response"
    return None


def _tool_calls(a: dict, calls: object, store_content: bool) -> None:
    """The model's tool calls as OpenInference output-message tool calls: names always
    (the store keeps them in privacy mode too: which tools ran drives an agent's cost),
    arguments only with content."""
    if not isinstance(calls, list) or not calls:
        return
    a["llm.output_messages.0.message.role"] = "assistant"
    for i, call in enumerate(calls[:MAX_MESSAGES]):
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else (call if isinstance(call, dict) else {})
        prefix = f"llm.output_messages.0.message.tool_calls.{i}.tool_call."
        if isinstance(fn.get("name"), str):
            a[prefix + "function.name"] = fn["name"]
        if store_content:
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                a[prefix + "id"] = call["id"]
            args = fn.get("arguments", fn.get("input"))
            if args is not None:
                a[prefix + "function.arguments"] = _cap(args if isinstance(args, str) else _json(args))


def _content(a: dict, rnd: dict) -> None:
    """Question, answer and the messages new in the round, each capped at TEXT_CAP and
    all together at CONTENT_BUDGET (the full context is in the store, not in the span)."""
    budget = [CONTENT_BUDGET]

    def put(name: str, value: object) -> bool:
        text = _cap(value if isinstance(value, str) else _json(value))
        size = len(text.encode("utf-8", "replace"))
        if size > budget[0]:
            return False
        budget[0] -= size
        a[name] = text
        return True

    try:
        question = round_question(rnd)
    except (AttributeError, IndexError, TypeError):   # a hand-edited store: no question
        question = None
    if question is not None:
        put("input.value", _text(question))   # content blocks read better as their text
        a["input.mime_type"] = "text/plain"
    if rnd.get("answer") is not None:
        put("output.value", rnd["answer"])
        a["output.mime_type"] = "text/plain"
        a["llm.output_messages.0.message.role"] = "assistant"
        put("llm.output_messages.0.message.content", rnd["answer"])
    messages = rnd.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    if rnd.get("system") is not None:
        messages.insert(0, {"role": "system", "content": rnd["system"]})
    # The latest messages matter most: fill the budget from the end, then number them
    # in order from 0 as OpenInference expects.
    kept: list[dict] = []
    for message in reversed(messages[-MAX_MESSAGES:]):
        content = message.get("content")
        cost = len(_cap(_text(content)).encode("utf-8", "replace")) if content is not None else 0
        if cost > budget[0]:
            break
        budget[0] -= cost
        kept.append(message)
    kept.reverse()
    omitted = len(messages) - len(kept)
    if omitted:
        a["agent_session_monitor.messages_omitted"] = omitted
    for i, message in enumerate(kept):
        prefix = f"llm.input_messages.{i}.message."
        a[prefix + "role"] = str(message.get("role") or "unknown")
        if message.get("content") is not None:
            a[prefix + "content"] = _cap(_text(message["content"]))
        if isinstance(message.get("name"), str):
            a[prefix + "name"] = message["name"]
        if isinstance(message.get("tool_call_id"), str):
            a[prefix + "tool_call_id"] = message["tool_call_id"]
        calls = message.get("tool_calls")
        for j, call in enumerate(calls[:MAX_MESSAGES] if isinstance(calls, list) else []):
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                tc = f"{prefix}tool_calls.{j}.tool_call."
                if isinstance(fn.get("name"), str):
                    a[tc + "function.name"] = fn["name"]
                if fn.get("arguments") is not None:
                    args = fn["arguments"]
                    a[tc + "function.arguments"] = _cap(args if isinstance(args, str) else _json(args))


def _text(content: object) -> str:
    """A message's content as text: OpenAI/Anthropic content blocks joined by their text;
    blocks without text (images, tool results as objects) as compact JSON."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, dict) and isinstance(block.get("content"), str):
                parts.append(block["content"])   # Anthropic tool_result
            else:
                parts.append(_json(block))
        return "\n".join(parts)
    return _json(content)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _cap(text: str) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= TEXT_CAP:
        return text
    # Cut on a character boundary: protobuf strings must be valid UTF-8.
    return data[:TEXT_CAP - len(TRUNCATED)].decode("utf-8", "ignore") + TRUNCATED


def resource_attributes(service_name: str, extra: dict | None = None) -> dict:
    """The resource: ``service.name``, the monitor's version, and what the user added
    (``OTEL_RESOURCE_ATTRIBUTES``, e.g. ``openinference.project.name`` for Phoenix)."""
    attrs = {"service.name": service_name, "service.version": __version__,
             "telemetry.sdk.name": SCOPE_NAME, "telemetry.sdk.language": "python"}
    attrs.update(extra or {})
    attrs["service.name"] = service_name
    return attrs
