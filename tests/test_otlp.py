"""The hand-written OTLP protobuf encoder, checked by decoding its bytes with the official
opentelemetry-proto classes (a test-only dependency: tools/install_test_deps.sh), and the
span a round becomes: every attribute, ids, times, status, content rules."""

from __future__ import annotations

import json
import unittest

from tests.helpers import require_tool
from tests.otlp_support import load_proto

from agent_session_monitor import __version__
from agent_session_monitor.otel import spans as otlp, wire
from agent_session_monitor.store.names import UNSESSIONED_ID

pb = load_proto()
SID = "agent:main:discord:channel:1465367993012981988"


def full_round(**changes) -> dict:
    """A stored round with every field the store can give (content mode)."""
    rnd = {
        "round": 3, "timestamp": "2026-02-01T09:30:15.123Z", "request_id": "req-42",
        "key": "req-42", "model": "gpt-4o-2024-08-06", "input_tokens": 1250,
        "output_tokens": 800, "reasoning_tokens": 150, "cached_tokens": 1024,
        "cache_write_tokens": 64, "total_tokens": 2050,
        "buckets": {"input": 162, "cache_read": 1024, "cache_write": 64, "output": 650,
                    "reasoning": 150},
        "cost_usd": 0.0123, "priced_as": "gpt-4o", "has_tool_calls": True,
        "response_type": "stream", "chat_round": 2, "chat_id": "chatcmpl-abc", "consumer": "alice",
        "api": "openai-route", "api_type": "openai", "llm_first_token_duration": 420,
        "llm_service_duration": 1500, "messages_offset": 2,
        "messages": [{"role": "assistant", "content": None,
                      "tool_calls": [{"id": "call_1", "type": "function",
                                      "function": {"name": "grep", "arguments": "{\"p\":\"x\"}"}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "3 matches"},
                     {"role": "user", "content": [{"type": "text", "text": "and now?"},
                                                  {"type": "image_url", "image_url": {"url": "u"}}]}],
        "question": [{"type": "text", "text": "and now?"},
                     {"type": "image_url", "image_url": {"url": "u"}}],
        "answer": "Done: 3 matches.",
        "system": "You are terse.",
        "tool_calls": [{"id": "call_2", "function": {"name": "read_file",
                                                    "arguments": {"path": "a.py"}}}],
        "source": {"fp": "abcd", "offset": 0},
    }
    rnd.update(changes)
    return rnd


def decode(spans: list[otlp.Span], resource: dict | None = None):
    data = wire.encode_request([wire.encode_span(s) for s in spans],
                               resource or otlp.resource_attributes("agent-session-monitor"))
    request = pb.ExportTraceServiceRequest()
    request.ParseFromString(data)
    # A round trip through the official encoder gives the same bytes: nothing was
    # left unknown or written in a form protobuf would not write.
    return request, data


def attributes(kvs) -> dict:
    out = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


class Encoding(unittest.TestCase):
    maxDiff = None

    def setUp(self) -> None:
        require_tool(self, "opentelemetry-proto (tools/install_test_deps.sh)", found=pb is not None)

    def test_every_attribute_of_a_full_round(self):
        span = otlp.round_to_span(SID, full_round(), store_content=True, provider="openai")
        request, data = decode([span])
        self.assertEqual(request.SerializeToString(), data)
        self.assertEqual(len(request.resource_spans), 1)
        rs = request.resource_spans[0]
        self.assertEqual(attributes(rs.resource.attributes), {
            "service.name": "agent-session-monitor", "service.version": __version__,
            "telemetry.sdk.name": "agent_session_monitor", "telemetry.sdk.language": "python"})
        self.assertEqual(rs.scope_spans[0].scope.name, "agent_session_monitor")
        self.assertEqual(rs.scope_spans[0].scope.version, __version__)
        (s,) = rs.scope_spans[0].spans
        trace_id, span_id = otlp.span_ids(SID, "req-42")
        self.assertEqual((s.trace_id, s.span_id), (trace_id, span_id))
        self.assertEqual((len(s.trace_id), len(s.span_id)), (16, 8))
        self.assertEqual(s.parent_span_id, b"")
        self.assertEqual(s.name, "chat gpt-4o-2024-08-06")
        self.assertEqual(s.kind, 3)   # SPAN_KIND_CLIENT
        self.assertEqual(s.start_time_unix_nano, 1769938215123000000)
        self.assertEqual(s.end_time_unix_nano, 1769938215123000000 + 1500 * 10**6)
        self.assertEqual(s.status.code, 0)   # unset: the request succeeded
        self.assertEqual(attributes(s.attributes), {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-2024-08-06",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 1250,
            "gen_ai.usage.output_tokens": 800,
            "gen_ai.usage.cache_read.input_tokens": 1024,
            "gen_ai.usage.cache_creation.input_tokens": 64,
            "gen_ai.usage.reasoning.output_tokens": 150,
            "gen_ai.conversation.id": SID,
            "gen_ai.response.id": "chatcmpl-abc",
            "gen_ai.response.time_to_first_chunk": 0.42,
            "openinference.span.kind": "LLM",
            "session.id": SID,
            "user.id": "alice",
            "llm.model_name": "gpt-4o-2024-08-06",
            "llm.provider": "openai",
            "llm.token_count.prompt": 1250,
            "llm.token_count.completion": 800,
            "llm.token_count.total": 2050,
            "llm.token_count.prompt_details.cache_read": 1024,
            "llm.token_count.prompt_details.cache_write": 64,
            "llm.token_count.completion_details.reasoning": 150,
            "llm.cost.total": 0.0123,
            "agent_session_monitor.request_id": "req-42",
            "agent_session_monitor.priced_as": "gpt-4o",
            "agent_session_monitor.chat_round": 2,
            "agent_session_monitor.api": "openai-route",
            "agent_session_monitor.api_type": "openai",
            "agent_session_monitor.response_type": "stream",
            "agent_session_monitor.first_token_ms": 420,
            "agent_session_monitor.service_ms": 1500,
            "agent_session_monitor.key": "req-42",
            "agent_session_monitor.has_tool_calls": True,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "Done: 3 matches.",
            "llm.output_messages.0.message.tool_calls.0.tool_call.id": "call_2",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "read_file",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments":
                '{"path":"a.py"}',
            "input.value": "and now?\n" + json.dumps({"type": "image_url", "image_url": {"url": "u"}},
                                                     separators=(",", ":")),
            "input.mime_type": "text/plain",
            "output.value": "Done: 3 matches.",
            "output.mime_type": "text/plain",
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "You are terse.",
            "llm.input_messages.1.message.role": "assistant",
            "llm.input_messages.1.message.tool_calls.0.tool_call.function.name": "grep",
            "llm.input_messages.1.message.tool_calls.0.tool_call.function.arguments": '{"p":"x"}',
            "llm.input_messages.2.message.role": "tool",
            "llm.input_messages.2.message.content": "3 matches",
            "llm.input_messages.2.message.tool_call_id": "call_1",
            "llm.input_messages.3.message.role": "user",
            "llm.input_messages.3.message.content": "and now?\n" + json.dumps(
                {"type": "image_url", "image_url": {"url": "u"}}, separators=(",", ":")),
        })

    def test_no_content_mode_sends_tokens_and_tool_names_only(self):
        rnd = full_round(tool_calls=[{"function": {"name": "read_file"}}])
        for name in ("messages", "answer", "system", "question"):
            del rnd[name]
        span = otlp.round_to_span(SID, rnd, store_content=False)
        request, _ = decode([span])
        attrs = attributes(request.resource_spans[0].scope_spans[0].spans[0].attributes)
        content = [k for k in attrs if k.startswith(("input.", "output.", "llm.input_messages"))
                   or k.endswith(("arguments", "content", "tool_call.id"))]
        self.assertEqual(content, [])
        self.assertEqual(attrs["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"],
                         "read_file")
        self.assertEqual(attrs["gen_ai.usage.input_tokens"], 1250)
        self.assertNotIn("gen_ai.provider.name", attrs)   # no provider given: none guessed
        # Even a round that still holds content (a store switched to --no-content) keeps
        # it out of the span.
        span = otlp.round_to_span(SID, full_round(), store_content=False)
        attrs = attributes(decode([span])[0].resource_spans[0].scope_spans[0].spans[0].attributes)
        self.assertFalse([k for k in attrs if "content" in k or k.startswith(("input.", "output."))])
        self.assertNotIn("llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
                         attrs)

    def test_unpriced_unsessioned_failed_round(self):
        rnd = {"timestamp": "2026-02-01T09:30:15.123Z", "request_id": None, "key": "ab12:4096",
               "model": None, "input_tokens": 10, "output_tokens": 0, "reasoning_tokens": 0,
               "cached_tokens": 0, "cache_write_tokens": 0, "cost_usd": None,
               "has_tool_calls": False, "response_type": "error", "usage_missing": True,
               "gateway": {"response_code": "503", "path": "/v1/chat/completions"},
               "time_source": "read"}
        span = otlp.round_to_span(UNSESSIONED_ID, rnd, store_content=True)
        request, _ = decode([span])
        s = request.resource_spans[0].scope_spans[0].spans[0]
        self.assertEqual(s.name, "chat")
        self.assertEqual(s.start_time_unix_nano, s.end_time_unix_nano)
        self.assertEqual(s.status.code, 2)
        self.assertEqual(s.status.message, "HTTP 503")
        self.assertEqual(attributes(s.attributes), {
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 0,
            "gen_ai.usage.cache_read.input_tokens": 0,
            "gen_ai.usage.cache_creation.input_tokens": 0,
            "gen_ai.usage.reasoning.output_tokens": 0,
            "openinference.span.kind": "LLM",
            "llm.token_count.prompt": 10, "llm.token_count.completion": 0,
            "llm.token_count.total": 10, "llm.token_count.prompt_details.cache_read": 0,
            "llm.token_count.prompt_details.cache_write": 0,
            "llm.token_count.completion_details.reasoning": 0,
            "agent_session_monitor.unpriced": True,
            "agent_session_monitor.response_type": "error",
            "agent_session_monitor.time_source": "read",
            "agent_session_monitor.key": "ab12:4096",
            "agent_session_monitor.has_tool_calls": False,
            "agent_session_monitor.usage_missing": True,
            "error.type": "503", "http.response.status_code": 503})

    def test_ids_are_deterministic_and_distinct(self):
        a = otlp.round_to_span(SID, full_round(), True)
        b = otlp.round_to_span(SID, full_round(answer="another run"), True)
        self.assertEqual((a.trace_id, a.span_id), (b.trace_id, b.span_id))
        c = otlp.round_to_span(SID, full_round(key="req-43"), True)
        d = otlp.round_to_span("other", full_round(), True)
        self.assertEqual(len({a.span_id, c.span_id, d.span_id}), 3)
        self.assertEqual(len({a.trace_id, c.trace_id, d.trace_id}), 3)   # a trace per round
        e = otlp.round_to_span(SID, full_round(), True, trace_per_session=True)
        f = otlp.round_to_span(SID, full_round(key="req-43"), True, trace_per_session=True)
        self.assertEqual(e.trace_id, f.trace_id)
        self.assertEqual(e.span_id, a.span_id)
        # Unsessioned rounds share no trace even so: it would hold every stray request.
        g = otlp.round_to_span(UNSESSIONED_ID, full_round(), True, trace_per_session=True)
        h = otlp.round_to_span(UNSESSIONED_ID, full_round(key="x"), True, trace_per_session=True)
        self.assertNotEqual(g.trace_id, h.trace_id)
        # Fixed values: a change of derivation would re-send every span as a new one.
        self.assertEqual(otlp.span_ids("s", "k")[1].hex(),
                         __import__("hashlib").sha256(b"asm.span\0s\0k\0").hexdigest()[:16])

    def test_text_is_capped_on_a_character_boundary_and_the_span_bounded(self):
        huge = "日本語" * 40000            # 360 KB of three-byte characters
        messages = [{"role": "user", "content": huge + str(i)} for i in range(100)]
        span = otlp.round_to_span(SID, full_round(messages=messages, answer=huge,
                                                  question=messages[-1]["content"]), True)
        request, data = decode([span])
        attrs = attributes(request.resource_spans[0].scope_spans[0].spans[0].attributes)
        for key, value in attrs.items():
            if isinstance(value, str):
                self.assertLessEqual(len(value.encode()), otlp.TEXT_CAP, key)
        self.assertTrue(attrs["output.value"].endswith(otlp.TRUNCATED))
        self.assertLess(len(data), otlp.CONTENT_BUDGET + 3 * otlp.TEXT_CAP + 8192)
        self.assertGreater(attrs["agent_session_monitor.messages_omitted"], 90)
        kept = [k for k in attrs if k.startswith("llm.input_messages.") and k.endswith(".content")]
        self.assertTrue(kept)
        last = max(kept, key=lambda k: int(k.split(".")[2]))
        self.assertTrue(attrs[last].startswith("日本語"))   # the latest messages are the ones kept

    def test_hostile_text_stays_valid_protobuf(self):
        rnd = full_round(answer="lone \ud800 surrogate", consumer="\x1b[2J\u202e",
                         messages=[{"role": "user", "content": {"not": "a string"}}, "junk", 5])
        request, _ = decode([otlp.round_to_span("s\ud800id", rnd, True)])
        attrs = attributes(request.resource_spans[0].scope_spans[0].spans[0].attributes)
        self.assertEqual(attrs["output.value"], "lone ? surrogate")
        self.assertEqual(attrs["session.id"], "s?id")
        self.assertEqual(attrs["user.id"], "\x1b[2J\u202e")
        self.assertEqual(attrs["llm.input_messages.1.message.content"], '{"not":"a string"}')

    def test_values_of_every_type_and_many_spans(self):
        values = {"neg": -5, "big": 2**63 - 1, "min": -2**63, "zero": 0, "t": True, "f": False,
                  "d": -1.5e300, "s": "", "list": ["a", "b"]}
        spans = [otlp.Span(bytes(range(16)), bytes([i % 250 + 1] * 8), f"n{i}", 0, 2**64 - 1,
                           dict(values), "bad" if i % 2 else None) for i in range(300)]
        request, _ = decode(spans, {"service.name": "x", "n": 7})
        got = request.resource_spans[0].scope_spans[0].spans
        self.assertEqual(len(got), 300)
        self.assertEqual(attributes(got[7].attributes), values)
        self.assertEqual(got[7].end_time_unix_nano, 2**64 - 1)
        self.assertEqual((got[7].status.code, got[7].status.message), (2, "bad"))
        self.assertEqual(attributes(request.resource_spans[0].resource.attributes),
                         {"service.name": "x", "n": 7})

    def test_partial_success_response_is_read(self):
        response = pb.ExportTraceServiceResponse()
        response.partial_success.rejected_spans = 3
        response.partial_success.error_message = "span too large"
        self.assertEqual(wire.decode_partial_success(response.SerializeToString()),
                         (3, "span too large"))
        self.assertEqual(wire.decode_partial_success(pb.ExportTraceServiceResponse()
                                                     .SerializeToString()), (0, ""))
        self.assertEqual(wire.decode_partial_success(b"<html>proxy error</html>"), (0, ""))


class Times(unittest.TestCase):
    """No dependency needed."""

    def test_time_ns_is_exact(self):
        self.assertEqual(otlp.time_ns("1970-01-01T00:00:00.001Z"), 10**6)
        self.assertEqual(otlp.time_ns("2026-02-01T09:30:15.123Z"), 1769938215123000000)
        self.assertEqual(otlp.time_ns("not a time"), 0)
        self.assertEqual(otlp.time_ns(None), 0)


if __name__ == "__main__":
    unittest.main()
