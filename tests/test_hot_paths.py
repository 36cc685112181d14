"""The per-line and per-session fast paths give exactly what their plain definitions give.

Ingestion takes shortcuts on the common clean input (a count checked inline, a detail map
decoded once and copied, rates resolved once per price, one pass to summarise a session,
optional round fields inserted rather than written then deleted). Each is checked here
against the plain statement of the rule, on many seeded random inputs that include what
a hostile log sends (bools, negative and huge counts, numeric strings, floats, nested
maps, absent and null keys), so a shortcut can never change a stored byte or a figure.
"""

from __future__ import annotations

import gc
import json
import math
import pickle
import random
import unittest

from unittest import mock

from agent_session_monitor.ingest import history, parse
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request, _decode
from agent_session_monitor.ingest.rounds import build_round, for_build_round, provider_cost
from agent_session_monitor.pricing import tokens
from agent_session_monitor.pricing.cost import (
    PRICE_FIELDS, Buckets, Price, Tier, _count, _rates, bucket_cost, bucket_counts, split_cost,
    usage_buckets,
)
from agent_session_monitor.pricing.table import load_price_table
from agent_session_monitor.store import document, fulltext
from agent_session_monitor.store.sanitize import MAX_COST
from agent_session_monitor.store.index import _json_list, quarter_hour, usage_rows
from tests.helpers import parse_outcome

SEED = 1616
CASES = 3000
READ_TIME = "2026-03-01T00:00:00.000Z"
COUNTS = [0, 0, 1, 7, 120, 4096, 2**40, 2**40 + 1, 2**70, -1, -5, True, False, None, "12", "0",
          "-3", "x", 2.0, 2.5, 1e308, [], {}]
DETAIL_KEYS = ["cached_tokens", "cache_read_input_tokens", "cached_content_token_count",
               "cache_creation_input_tokens", "reasoning_tokens", "thoughts_token_count",
               "audio_tokens", "cache_creation"]
BUCKET_NAMES = ["input", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning"]
# Every field a stored round can have, in the order build_round writes them (a round
# read back from its file is put in that order: store/document.py).
ROUND_ORDER = document.ROUND_ORDER
OPTIONAL = ["total_tokens", "priced_by", "provider_cost_usd", "chat_round", "chat_id",
            "consumer", "api", "api_type", "llm_first_token_duration", "llm_service_duration"]


def plain_from_buckets(buckets: object) -> dict[str, int]:
    """tokens.py's definition, one bucket at a time."""
    b = buckets if isinstance(buckets, dict) else {}

    def n(name: str) -> int:
        value = b.get(name)
        return value if type(value) is int and value > 0 else 0

    inp = n("input") + n("cache_read") + n("cache_write") + n("cache_write_1h")
    out = n("output") + n("reasoning")
    return {"input": inp, "cached": n("cache_read"),
            "cache_write": n("cache_write") + n("cache_write_1h"), "output": out,
            "reasoning": n("reasoning"), "total": inp + out}


def plain_usage_buckets(input_token, output_token, cached_tokens, reasoning_tokens,
                        input_details, output_details) -> Buckets:
    """pricing.md's split, reading every detail key whether or not it is there."""
    def nonneg(v):
        return v if type(v) is int and v > 0 else 0
    ind = input_details if isinstance(input_details, dict) else {}
    outd = output_details if isinstance(output_details, dict) else {}
    input_token, output_token = nonneg(input_token), nonneg(output_token)
    cache_read = (nonneg(cached_tokens) or _count(ind, "cached_tokens")
                  or _count(ind, "cache_read_input_tokens")
                  or _count(ind, "cached_content_token_count"))
    write_5m, write_1h = _count(ind, "cache_creation_input_tokens"), 0
    split = ind.get("cache_creation")
    if isinstance(split, dict) and ("ephemeral_1h_input_tokens" in split
                                    or "ephemeral_5m_input_tokens" in split):
        write_1h = _count(split, "ephemeral_1h_input_tokens")
        write_5m = max(_count(split, "ephemeral_5m_input_tokens"), write_5m - write_1h)
    anthropic = any(ind.get(k) is not None
                    for k in ("cache_read_input_tokens", "cache_creation_input_tokens"))
    uncached = (input_token if anthropic or cache_read > input_token
                else max(input_token - cache_read - write_5m - write_1h, 0))
    thoughts = _count(outd, "thoughts_token_count")
    detail = _count(outd, "reasoning_tokens")
    reasoning = nonneg(reasoning_tokens) or detail or thoughts
    from_thoughts = reasoning > 0 and reasoning == thoughts and not detail
    text = output_token if from_thoughts or reasoning > output_token else output_token - reasoning
    return Buckets(uncached, cache_read, write_5m, write_1h, text, reasoning)


def random_details(rng: random.Random) -> object:
    if rng.random() < 0.1:
        return rng.choice([None, "x", 5, []])
    details = {}
    for key in rng.sample(DETAIL_KEYS, rng.randint(0, 4)):
        if key == "cache_creation":
            details[key] = {k: rng.choice(COUNTS) for k in rng.sample(
                ["ephemeral_1h_input_tokens", "ephemeral_5m_input_tokens", "other"],
                rng.randint(0, 3))}
        else:
            details[key] = rng.choice(COUNTS)
    return details


class HotPathsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.rng = random.Random(SEED)

    def test_normalised_columns_equal_their_definition_for_any_stored_buckets(self):
        rng = self.rng
        for _ in range(CASES * 5):
            buckets = {name: rng.choice(COUNTS)
                       for name in rng.sample(BUCKET_NAMES + ["other"], rng.randint(0, 7))}
            self.assertEqual(tokens.from_buckets(buckets), plain_from_buckets(buckets), buckets)
        for odd in (None, [], "buckets", 7):
            self.assertEqual(tokens.from_buckets(odd), plain_from_buckets(odd))

    def test_bucket_split_equals_the_rule_read_key_by_key(self):
        rng = self.rng
        for _ in range(CASES * 5):
            args = (rng.choice(COUNTS), rng.choice(COUNTS), rng.choice(COUNTS),
                    rng.choice(COUNTS), random_details(rng), random_details(rng))
            plain = plain_usage_buckets(*args)
            self.assertEqual(usage_buckets(*args), plain, args)
            self.assertEqual(bucket_counts(*args), tuple(plain.as_dict().values()), args)

    def test_cost_equals_the_per_bucket_rates_whatever_the_tier(self):
        rng = self.rng
        prices = [Price(input=2.5, output=10.0, cache_read=1.25),
                  Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75,
                        cache_write_1h=6.0, reasoning=20.0),
                  Price(input=1.0, output=2.0, tiers=(
                      Tier(1000, input=2.0), Tier(200_000, input=4.0, output=8.0,
                                                   cache_read=0.5)))]
        for _ in range(CASES * 3):
            price = rng.choice(prices)
            b = Buckets(*(rng.choice([0, 1, 999, 1000, 1001, 150_000, 2**40]) for _ in range(6)))
            rates = _rates(price, b.prompt_tokens)
            plain = math.fsum(getattr(b, f) * rates[f] for f in PRICE_FIELDS) / 1e6
            self.assertEqual(bucket_cost(b, price), plain)
            self.assertEqual(split_cost(tuple(b.as_dict().values()), price), plain)
        # A new price object with the same id as a dropped one is never given its rates.
        for _ in range(50):
            cheap = Price(input=rng.random(), output=rng.random())
            self.assertEqual(bucket_cost(Buckets(input=10**6), cheap), 10**6 * cheap.input / 1e6)

    def test_built_rounds_keep_one_field_order_and_leave_out_only_empty_optional_fields(self):
        rng, table = self.rng, load_price_table()
        # Rounds linked into one session (context_key, messages_truncated) keep it too:
        # it is the order a round read back from its file is given (document.in_round_order).
        session = document.Session(document.new_document("s"), "s.json")
        history: list = []
        for i in range(CASES):
            ai = self._random_ai_log(rng)
            line = json.dumps({"ai_log": json.dumps(ai), "start_time": rng.choice(
                ["2026-02-01T09:37:12.000Z", "-", "2026-02-01T09:37:12+08:00"]),
                "response_code": rng.choice(["200", "500", "-"]), "path": "/v1"}).encode()
            try:
                req = parse_line(line, READ_TIME)
            except BadLine:
                continue
            if not isinstance(req, Request):
                continue
            for content in (True, False):
                rnd = build_round(req, f"sha256:{i:032x}", {"fp": "f" * 16, "offset": i},
                                  table, content)
                if content:
                    history = history + [{"role": "user", "content": str(i)}] \
                        if rng.random() < 0.8 else [{"role": "user", "content": str(i)}]
                    session.add(rnd, rng.choice([history, history, "cut [truncated] x", None]))
                keys = list(rnd)
                self.assertEqual(keys, sorted(keys, key=ROUND_ORDER.index), ai)
                self.assertEqual(list(document.in_round_order(rnd)), keys)
                for name in OPTIONAL:
                    self.assertNotIn(rnd.get(name, "absent"), (None, {}), (name, ai))
                self.assertEqual(rnd["has_tool_calls"], bool(rnd["tool_calls"]) or
                                 rnd.get("tool_calls_truncated", False))
                self.assertEqual("extra" in rnd, content and any(
                    k not in _known_ai_keys() for k in ai))
                found = table.lookup(rnd["model"]) if rnd["model"] is not None else None
                self.assertEqual("priced_as" in rnd, rnd["model"] is not None
                                 and (found is None or found[0] != rnd["model"]))

    def test_a_built_rounds_counts_and_cost_are_its_buckets_split_and_priced_plainly(self):
        """build_round splits and prices the usage without a Buckets object: every count,
        bucket, cost and detail map it stores equals the plain computation."""
        rng, table = self.rng, load_price_table()
        hostile = Price(input=1e300, output=1e300)   # a cost that overflows: unpriced
        overflowed = 0
        for i in range(CASES):
            ai = self._random_ai_log(rng)
            for key in ("input_token", "output_token", "cached_tokens", "reasoning_tokens"):
                if rng.random() < 0.3:
                    ai[key] = rng.choice([0, 1, 7, 4096, 2**40, "123", 3.0])
            line = json.dumps({"ai_log": json.dumps(ai), "start_time": "2026-02-01T09:37:12.000Z"})
            try:
                req = parse_line(line.encode(), READ_TIME)
            except BadLine:
                continue
            if not isinstance(req, Request):
                continue
            prices = table if rng.random() < 0.9 else mock.Mock(
                lookup=lambda model: (model, hostile), provenance=lambda key: None)
            warnings = list(req.warnings)
            rnd = build_round(req, f"sha256:{i:032x}", {"fp": "f" * 16, "offset": i}, prices,
                              rng.random() < 0.5)
            b = usage_buckets(req.input_token, req.output_token, req.cached_tokens,
                              req.reasoning_tokens, req.input_details, req.output_details)
            self.assertEqual(rnd["buckets"], {k: v for k, v in b.as_dict().items() if v}, ai)
            self.assertEqual(rnd["reasoning_tokens"], b.reasoning if req.reasoning_tokens
                             is None else req.reasoning_tokens)
            self.assertEqual(rnd["cached_tokens"], b.cache_read if req.cached_tokens is None
                             else req.cached_tokens)
            self.assertEqual(rnd["cache_write_tokens"], b.cache_write + b.cache_write_1h)
            found = prices.lookup(rnd["model"]) if rnd["model"] is not None else None
            cost = bucket_cost(b, found[1]) if found is not None else None
            if cost is not None and not (math.isfinite(cost) and 0 <= cost < MAX_COST):
                cost = None
                warnings.append("cost_out_of_range")
                overflowed += 1
            self.assertEqual(rnd["cost_usd"], cost, ai)
            self.assertEqual(set(rnd.get("warnings", [])), set(warnings + (
                ["truncated_by_gateway"] if any(k.endswith("_truncated") for k in rnd) else []
            )), ai)
            self.assertEqual(rnd.get("provider_cost_usd"), provider_cost(req.ai), ai)
            for name, details in (("input_token_details", req.input_details),
                                  ("output_token_details", req.output_details)):
                self.assertEqual(rnd[name], {k: v for k, v in details.items()
                                             if v not in (0, "0", None, "", {}, [])}, ai)
            for name in ("chat_round", "llm_first_token_duration", "llm_service_duration"):
                value = req.ai.get(name)
                whole = value if type(value) is int else (
                    int(value) if isinstance(value, str) and value.isascii()
                    and value.isdigit() and len(value) < 19 else None)
                # What a reader accepts back (sanitize.py): 0 .. 2**53, else left out.
                if whole is not None and not 0 <= whole <= 2**53:
                    whole = None
                self.assertEqual(rnd.get(name), whole, (name, ai))
            for name in ("chat_id", "consumer", "api", "api_type"):
                value = req.ai.get(name)
                self.assertEqual(rnd.get(name), value if isinstance(value, str)
                                 and value not in ("", "-") else None, (name, ai))
        self.assertGreater(overflowed, 10)   # the hostile table was met

    def test_a_request_reduced_for_the_monitor_builds_the_same_round(self):
        """The parse worker sends a request reduced to what build_round reads
        (rounds.for_build_round): for any ai_log (unknown keys, provider costs, cut
        values, every Envoy field, a failed status) and either content mode, the round
        built from it is the round built from the whole request, field order included,
        and it pickles to the same bytes as it would unreduced (what the worker sends)."""
        rng, table = self.rng, load_price_table()
        envoy = ["authority", "method", "path", "response_code", "route_name", "duration",
                 "upstream_cluster", "user_agent", "x_forwarded_for", "request_id"]
        failed = 0
        for i in range(CASES):
            ai = self._random_ai_log(rng)
            for _ in range(rng.randrange(3)):
                ai[rng.choice(["x_custom", "safecheck_status", "usage_cost", "provider_cost",
                               "response_cost", "model_alias"])] = rng.choice(
                    ["v", 3, None, {"a": 1}, "0.5"])
            outer = {"ai_log": json.dumps(ai), "start_time": rng.choice(
                ["2026-02-01T09:37:12.000Z", "-"])}
            for name in envoy:
                if rng.random() < 0.6:
                    outer[name] = rng.choice(["200", "500", "-", "/v1/chat", "r", ""])
            try:
                whole = parse_line(json.dumps(outer).encode(), READ_TIME)
            except BadLine:
                continue
            if not isinstance(whole, Request):
                continue
            failed += whole.gateway.get("response_code") not in (None, "200")
            reduced = pickle.loads(pickle.dumps(whole))
            for_build_round(reduced)
            for content in (True, False):
                key, source = f"sha256:{i:032x}", {"fp": "f" * 16, "offset": i}
                a = build_round(pickle.loads(pickle.dumps(whole)), key, source, table, content)
                b = build_round(pickle.loads(pickle.dumps(reduced)), key, source, table,
                                content)
                self.assertEqual(list(a), list(b), ai)
                self.assertTrue(same_json(a, b), ai)
                self.assertEqual(pickle.dumps(a), pickle.dumps(b), ai)
        self.assertGreater(failed, 100)   # failed requests keep their gateway fields

    def _random_ai_log(self, rng: random.Random) -> dict:
        ai = {"session_id": rng.choice(["s1", "s2", "", None, 5]), "model": rng.choice(
            ["gpt-4o", "gpt-4o-2024-08-06", "claude-sonnet-4-5", "no-such-model", "", "-", None, 3])}
        for key in ("input_token", "output_token", "total_token", "cached_tokens",
                    "reasoning_tokens"):
            if rng.random() < 0.7:
                ai[key] = rng.choice([0, 5, 1200, "42", None, 2.0])
        for key in ("input_token_details", "output_token_details"):
            if rng.random() < 0.6:
                details = random_details(rng)
                ai[key] = json.dumps(details) if rng.random() < 0.6 else details
        for key, values in (("chat_round", [1, "2", "x", None, -1, 2**53, 2**53 + 1, "9007199254740993"]),
                            ("chat_id", ["c1", "", "-", None, 5]),
                            ("consumer", ["team-a", "", "-", None]),
                            ("api", ["chat", "-"]), ("api_type", ["openai", ""]),
                            ("llm_first_token_duration", [12, "34", None, 1.5]),
                            ("llm_service_duration", [99, None]),
                            ("response_type", ["stream", "-", None]),
                            ("cost", [0.01, "$0.02", None, True]),
                            ("usage", ['{"cost": 0.5}', {"cost": 1}, "x"]),
                            ("question", ["hi", "cut [truncated] here", None]),
                            ("answer", ["ok", None]), ("system", ["sys", None]),
                            ("tool_calls", [[{"function": {"name": "f"}}], [], "a [truncated] b", "-"]),
                            ("cache_status", ["hit"]), ("messages", [[{"role": "user", "content": "q"}]])):
            if rng.random() < 0.5:
                ai[key] = rng.choice(values)
        return ai

    def test_session_summary_equals_each_total_computed_on_its_own(self):
        rng, table = self.rng, load_price_table()
        for _ in range(CASES // 3):
            doc = document.new_document(rng.choice(["s", None]))
            for i in range(rng.randint(0, 6)):
                rnd = {"round": i + 1, "timestamp": f"2026-02-01T09:{rng.randint(0, 59):02d}:00.000Z",
                       "key": f"k{i}", "model": rng.choice(["gpt-4o", "m2", None, ""]),
                       "consumer": rng.choice(["a", "b", None, ""]),
                       "buckets": {n: rng.choice([1, 5, 300]) for n in rng.sample(BUCKET_NAMES, 3)},
                       "cost_usd": rng.choice([None, 0.0, 0.1, 1e-9, 3.3]),
                       "has_tool_calls": rng.random() < 0.5}
                for _total, field in document.SUMMARY_TOKEN_FIELDS:
                    if rng.random() < 0.8:
                        rnd[field] = rng.choice([0, 3, 70, None])
                if rng.random() < 0.3:
                    rnd["provider_cost_usd"] = rng.choice([0.0, 0.2])
                if rnd["cost_usd"] is not None and rng.random() < 0.7:
                    rnd["priced_by"] = rng.choice([table.table_id, "override:1"])
                doc["rounds"].append(rnd)
            document.summarise(doc)
            rounds = doc["rounds"]
            unpriced = [r for r in rounds if r.get("cost_usd") is None]
            for total, field in document.SUMMARY_TOKEN_FIELDS:
                self.assertEqual(doc[total], sum(r.get(field) or 0 for r in rounds))
            self.assertEqual(doc["tokens"], tokens.of_rounds(rounds))
            priced = [r["cost_usd"] for r in rounds if r.get("cost_usd") is not None]
            self.assertEqual(doc["total_cost_usd"],
                             math.fsum(priced) if priced or not unpriced else None)
            self.assertEqual(doc["unpriced_rounds"], len(unpriced))
            self.assertEqual(doc["models"], list(dict.fromkeys(
                r["model"] for r in rounds if r.get("model"))))
            self.assertEqual(doc["consumers"], list(dict.fromkeys(
                r["consumer"] for r in rounds if r.get("consumer"))))
            self.assertEqual(doc["unpriced_models"], list(dict.fromkeys(
                r.get("model") or "(no model)" for r in unpriced)))
            self.assertEqual(list(doc), list(document.new_document(doc["session_id"]
                                                                   if "unsessioned" not in doc
                                                                   else None)))
            rows, per_round = usage_rows(7, doc)
            self.assertEqual(len(per_round), len(rounds))
            cost_at = 5 + 12   # the cost column of a round_usage row
            for (sid, bucket, model, consumer, *sums) in rows:
                members = [r for r in per_round if r[2:5] == (bucket, model, consumer)]
                for i, value in enumerate(sums):
                    column = [m[5 + i] for m in members]
                    expected = math.fsum(column) if 5 + i == cost_at else sum(column)
                    self.assertEqual(value, expected)
                    self.assertIs(type(value), type(expected))

    def test_quarter_hours_and_model_lists_as_computed_directly(self):
        for minute in range(60):
            stamp = f"2026-02-01T09:{minute:02d}:59.999Z"
            self.assertEqual(quarter_hour(stamp), f"2026-02-01T09:{minute // 15 * 15:02d}")
        for values in (["gpt-4o"], [], ["a", "b"], [1], [True], [1.0], ["\ud800"], [None]):
            self.assertEqual(_json_list(values), json.dumps(values))
            self.assertEqual(_json_list(list(values)), json.dumps(values))

    def test_the_fields_sent_for_full_text_give_the_whole_rounds_text(self):
        rng = self.rng
        values = [None, "", "hello 北京", ["x"], [{"type": "text", "text": "块 text"}], 5,
                  {"a": 1}, "\ud800"]
        calls = [None, [], "cut [truncated] x", [{"function": {"name": "f", "arguments": "{}"}}],
                 [{"name": "g", "input": {"q": 1}}], [{"function": {"name": "h"}}], ["odd"]]
        for i in range(CASES):
            rnd = {"key": rng.choice([f"k{i}", None, ""]), "messages": [{"content": "m"}]}
            for name in ("question", "answer", "reasoning"):
                if rng.random() < 0.8:
                    rnd[name] = rng.choice(values)
            if rng.random() < 0.8:
                rnd["tool_calls"] = rng.choice(calls)
            (key, fields), = fulltext.round_keys({"rounds": [rnd]})
            self.assertEqual(key, str(rnd["key"] or "@0"))
            self.assertNotIn("messages", fields)
            self.assertEqual(fulltext.round_text(fields), fulltext.round_text(rnd))

    def test_round_text_as_its_plain_definition(self):
        # The ASCII shortcuts (no CJK to space out, no surrogate to replace) against the
        # definition: every CJK character spaced by _CJK.sub, lone surrogates replaced.
        def plain(rnd: dict) -> str:
            parts = [fulltext._text(rnd.get(k)) for k in ("question", "answer", "reasoning")]
            for call in rnd.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call.get("function"), dict) else call
                args = fn.get("arguments") if "arguments" in fn else fn.get("input")
                if args is not None:
                    parts += [fulltext._text(fn.get("name")), fulltext._text(args)]
            text = fulltext._CJK.sub(r" \1 ", "\n".join(p for p in parts if p))
            return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")

        rng = self.rng
        alphabet = ["a", " ", "\n", "é", "北", "京", "ア", "한", "\ud800", "\udfff", "~", "\x7f",
                    "\x80", "😀", "\u3000", "\uffff"]
        for _ in range(CASES):
            def text() -> str | None:
                if rng.random() < 0.15:
                    return None
                return "".join(rng.choice(alphabet[:rng.choice([3, 5, len(alphabet)])])
                               for _ in range(rng.randint(0, 12)))
            rnd = {"question": text(), "answer": text(), "reasoning": text()}
            if rng.random() < 0.3:
                rnd["tool_calls"] = [{"function": {"name": text(), "arguments": text() or "{}"}}]
            self.assertEqual(fulltext.round_text(rnd), plain(rnd), rnd)

    def test_a_remembered_detail_map_is_a_copy_and_still_refuses_impossible_counts(self):
        def line(details: str) -> bytes:
            return json.dumps({"ai_log": json.dumps({
                "session_id": "s", "model": "gpt-4o", "input_token": 10, "output_token": 2,
                "input_token_details": details})}).encode()

        first = parse_line(line('{"cached_tokens":4}'), READ_TIME)
        first.input_details["cached_tokens"] = 10**6   # a caller changing its map
        again = parse_line(line('{"cached_tokens":4}'), READ_TIME)
        self.assertEqual(again.input_details, {"cached_tokens": 4})
        for _ in range(2):   # never remembered as good
            with self.assertRaises(BadLine) as caught:
                parse_line(line('{"cached_tokens":%d}' % (2**41)), READ_TIME)
            self.assertEqual(caught.exception.kind, "out_of_range")
        for _ in range(2):   # a bool is no count, remembered or not
            req = parse_line(line('{"cached_tokens":true}'), READ_TIME)
            self.assertEqual(req.input_details, {"cached_tokens": True})


def same_json(a: object, b: object) -> bool:
    """Equal as JSON values of the same types, keys in the same order (== takes 1 for
    1.0 and True); iterative, for values nested to the recursion limit."""
    todo = [(a, b)]
    while todo:
        x, y = todo.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            todo.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            todo.extend(zip(x, y))
        elif x != y:
            return False
    return True


def _text_message(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.1:
        return "x" * rng.randint(0, 3)
    if pick < 0.2:
        return "引用 \u2028 \\ \" 🙏 " + str(rng.randint(0, 9))
    return f"message {rng.randint(0, 10**6)}"


def random_message(rng: random.Random) -> object:
    pick = rng.random()
    if pick < 0.55:
        return {"role": rng.choice(["user", "assistant", "tool"]), "content": _text_message(rng)}
    if pick < 0.7:
        return {"role": "user", "content": [{"type": "text", "text": _text_message(rng)},
                                           {"type": "tool_result", "content": rng.randint(0, 99)}]}
    # Values whose text a longer one begins with: 12 / 123, 1 / 1.5 / 1e5, "ab" / "abc".
    return rng.choice([12, 123, 1, 1.5, 1e5, -1, -12, 0, True, False, None, "ab", "abc", [], {},
                       {"session_id": "s0"}, {"messages": [1]}, [[["deep"]]], 2**80,
                       {"a": 1, "a": 2}])


def _mutate(rng: random.Random, messages: list) -> list:
    """The next request's list: usually the same plus new messages; sometimes a client
    rewrites it (an edit of the same length, a cut, a summary, an extended last value)."""
    messages = list(messages)
    pick = rng.random()
    if pick < 0.6 or not messages:
        messages += [random_message(rng) for _ in range(rng.randint(0, 3))]
    elif pick < 0.7:
        i = rng.randrange(len(messages))
        text = json.dumps(messages[i])
        j = rng.randrange(len(text))
        edited = text[:j] + ("7" if text[j] != "7" else "8") + text[j + 1:]
        try:
            messages[i] = json.loads(edited)
        except ValueError:
            messages[i] = random_message(rng)
    elif pick < 0.8:
        messages = messages[:rng.randrange(len(messages))]
    elif pick < 0.9:
        last = messages[-1]
        messages[-1] = {12: 123, 1: 1.5, "ab": "abc", -1: -12, 0: 0.5}.get(
            last if type(last) in (int, str) else None, random_message(rng))
    else:
        messages = [{"role": "user", "content": "Summary of the conversation so far"}]
    return messages


def _ai_log_text(rng: random.Random, session: object, messages: object) -> str:
    """An ai_log as a producer (or a hostile client) writes it: usually Go's compact
    sorted form; sometimes whitespace, a duplicate key, broken JSON, extra data, a
    constant Python's json would take, a nested session_id to mislead the guess."""
    ai = {"answer": "a", "input_token": rng.randint(0, 50), "messages": messages,
          "model": "gpt-4o", "output_token": 3}
    if session is not ...:
        ai["session_id"] = session
    if rng.random() < 0.1:
        ai["tool_calls"] = [{"session_id": "s" + str(rng.randint(0, 4))}]
    if rng.random() < 0.05:   # a nested "messages" list before the top-level one
        ai["answer"] = {"k": 1, "messages": [rng.randint(0, 3)]}
    seps = (",", ":") if rng.random() < 0.85 else rng.choice([(", ", ": "), (",", ": "), (" ,", ":")])
    text = json.dumps(ai, ensure_ascii=rng.random() < 0.5, separators=seps)
    pick = rng.random()
    if pick < 0.03:
        text = text[:-1] + ',"messages":' + json.dumps(messages) + "}"
    elif pick < 0.06:
        text = text[:rng.randrange(len(text))]
    elif pick < 0.08:
        text += rng.choice([" ", "\n", "x", "{}", " \t"])
    elif pick < 0.1:
        text = text.replace('"output_token":3', '"output_token":' + rng.choice(
            ["NaN", "Infinity", "-Infinity", "1e999", "0x1", "01", "1.", "9" * 5000]))
    elif pick < 0.12:
        text = text.replace('"messages":[', '"messages":[' + "[" * 600 + "]" * 600 + ",", 1)
    elif pick < 0.13:
        text = text.replace('"a"', '"\\ud800"', 1)
    elif pick < 0.16:   # the key twice, the first time not a list
        text = '{"messages":' + rng.choice(["null", "[1]", '"x"']) + "," + text[1:]
    elif pick < 0.18 and ',"model"' in text:   # a trailing comma after the messages
        text = text[:text.index(',"model"')] + ",}"
    return text


def history_for_every_line(test: unittest.TestCase) -> None:
    """Lines of any length take the history shortcuts (parse.HISTORY_MIN_BYTES leaves
    the short generated lines of these tests to the whole parse otherwise)."""
    patcher = mock.patch.object(parse, "HISTORY_MIN_BYTES", 0)
    patcher.start()
    test.addCleanup(patcher.stop)


class HistoryFastPathTest(unittest.TestCase):
    """history.py: the ai_log with the re-logged history taken from the previous request
    of the session equals the whole decode of it, whatever the text."""

    def setUp(self) -> None:
        history_for_every_line(self)

    def test_the_history_fast_path_decodes_exactly_what_a_whole_decode_does(self):
        rng = random.Random(SEED)
        cache = history.HistoryCache(limit=64 * 2**10)   # small: evictions happen too
        lists = {f"s{i}": [] for i in range(5)}
        fast = hits = 0
        for _ in range(CASES * 2):
            sid = rng.choice(list(lists) + [None, 7, ..., "s\"1", "s0 "])
            key = sid if isinstance(sid, str) and sid in lists else rng.choice(list(lists))
            lists[key] = _mutate(rng, lists[key])
            messages = lists[key] if rng.random() < 0.95 else rng.choice(
                ["cut [truncated] here", None, {"role": "user"}, 5])
            text = _ai_log_text(rng, sid if sid is not ... else ..., messages)
            before = cache.get(sid) if isinstance(sid, str) else None
            got = history.decode_ai_log(text, cache)
            try:
                want = _decode(text)
            except (ValueError, RecursionError):
                self.assertIsNone(got, text[:200])
                continue
            if got is None:
                continue
            fast += 1
            if before is not None and before[1] and isinstance(got.get("messages"), list) \
                    and got["messages"] and got["messages"][0] is before[1][0]:
                hits += 1
            self.assertTrue(same_json(got, want), text[:300])
        # The cases exercise the shortcut, not only the fallback (a key written twice,
        # one of _mutate's cases, goes to the whole decode, which notes it).
        self.assertGreater(fast, CASES)
        self.assertGreater(hits, CASES // 5)

    def test_a_line_decodes_the_same_through_parse_line_at_any_nesting_depth(self):
        """Near the recursion limit the fast path gives up where the whole decode
        would (it scans from a stack at least as deep), so a line too deeply nested is
        the same bad line, and one that is not is the same request."""
        def line(messages: str, calls: str = "[]") -> bytes:
            ai = ('{"input_token":1,"messages":' + messages + ',"model":"gpt-4o",'
                  '"output_token":2,"session_id":"deep","tool_calls":' + calls + "}")
            return json.dumps({"ai_log": ai}).encode()

        def outcome(raw: bytes, fast: bool):
            try:
                if fast:
                    return parse_line(raw, READ_TIME).ai
                with mock.patch.object(parse, "decode_ai_log", lambda text: None):
                    return parse_line(raw, READ_TIME).ai
            except BadLine as e:
                return e.kind

        limit = 1000
        for depth in list(range(limit - 40, limit + 5)) + [5000]:
            nested = "[" * depth + "]" * depth
            hi = '[{"role":"user","content":"hi"}'
            for messages, calls in ((f"[{nested}]", "[]"), (hi + "," + nested + "]", "[]"),
                                    (hi + "]", nested)):
                history.CACHE.clear()
                outcome(line(hi + "]"), True)   # the session's previous request, cached
                raw = line(messages, calls)
                fast, plain = outcome(raw, True), outcome(raw, False)
                self.assertTrue(fast == plain if isinstance(plain, str)
                                else same_json(fast, plain), (depth, messages[:30]))

    def test_reused_messages_are_not_changed_by_the_caller_of_an_earlier_line(self):
        cache = history.HistoryCache()
        first = history.decode_ai_log('{"messages":[{"role":"user","content":"a"}],'
                                      '"session_id":"s"}', cache)
        first["messages"].append({"role": "assistant", "content": "changed"})
        second = history.decode_ai_log('{"messages":[{"role":"user","content":"a"},'
                                       '{"role":"user","content":"b"}],"session_id":"s"}', cache)
        self.assertEqual(second["messages"], [{"role": "user", "content": "a"},
                                              {"role": "user", "content": "b"}])
        self.assertIs(second["messages"][0], first["messages"][0])   # taken, not decoded


def _outer_line(rng: random.Random, ai_text: object, n: int) -> bytes:
    """A Higress access-log line around ``ai_text`` (escaped ASCII-only or not, as
    producers differ), sometimes with what a client sends through its headers."""
    from agent_session_monitor.ingest.forgery import HIGRESS_FORMAT

    agent = rng.choice(["curl/8", 'x\\"messages\\":[1]', "ua " + history.TOKEN,
                        'ua","messages":"', "\u00e9t\u00e9"])
    fields = {k: f"v{n}" for k in HIGRESS_FORMAT}
    fields.update(ai_log=ai_text, start_time=f"2026-03-01T00:00:{n % 60:02d}.000Z",
                  request_id=f"r{n}", response_code="200", user_agent=agent)
    line = json.dumps(fields, ensure_ascii=rng.random() < 0.5, separators=(",", ":")).encode()
    pick = rng.random()
    if pick < 0.05:   # a header that breaks the line (salvaged), or forges a key
        line = line.replace(b'"user_agent":"', b'"user_agent":"a"b', 1)
    elif pick < 0.1:
        line = line.replace(b'"user_agent":"', b'"user_agent":"x","ai_log":"{}","u":"', 1)
    elif pick < 0.13:
        line = line.replace(b'"user_agent":"', b'"user_agent":"\xff', 1)
    elif pick < 0.16:
        line = b"\xef\xbb\xbf" + line + b"\r"
    elif pick < 0.18:
        line = line[:rng.randrange(len(line))]
    return line


class RawHistoryFastPathTest(unittest.TestCase):
    """history.shorten/restore: a line whose ai_log repeats, in the same bytes, the
    messages of its session's previous request parses to exactly what the whole line
    does, whatever the line."""

    def setUp(self) -> None:
        history_for_every_line(self)

    def outcome(self, raw: bytes):
        return parse_outcome(raw, READ_TIME)

    def test_lines_with_their_history_replaced_parse_as_the_whole_lines_do(self):
        rng = random.Random(SEED + 1)
        history.CACHE.clear()
        history.RAW.clear()
        lists = {f"s{i}": [] for i in range(4)}
        shortened = 0
        original_shorten = history.shorten

        def counting(raw, cache=history.RAW):
            nonlocal shortened
            found = original_shorten(raw, cache)
            shortened += found is not None
            return found

        for n in range(CASES):
            sid = rng.choice(list(lists) + ["s0"] * 3)
            lists[sid] = _mutate(rng, lists[sid])
            ai = _ai_log_text(rng, sid, lists[sid]) if rng.random() < 0.9 else None
            if ai is None:   # the ai_log as an object, as some producers log it
                ai = {"session_id": sid, "messages": lists[sid], "input_token": 1}
            raw = _outer_line(rng, ai, n)
            with mock.patch.object(parse, "shorten", counting):
                fast = self.outcome(raw)
            with mock.patch.object(parse, "shorten", lambda raw: None), \
                    mock.patch.object(parse, "decode_ai_log", lambda text: None), \
                    mock.patch.object(parse, "remember", lambda raw, ai: None):
                plain = self.outcome(raw)
            self.assertEqual(fast[0], plain[0], raw[:300])
            if fast[0] == "request":
                self.assertTrue(all(same_json(a, b) for a, b in zip(fast[1], plain[1])),
                                raw[:300])
            else:
                self.assertEqual(fast, plain)
        self.assertGreater(shortened, CASES // 6)   # the shortcut was taken, often

    def test_a_line_holding_the_token_or_an_earlier_messages_list_is_parsed_whole(self):
        """A client cannot make its own list stand for the history: the token is
        random to the process, and a line that holds it anyway is parsed whole."""
        history.CACHE.clear()
        history.RAW.clear()
        past = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]

        def line(ai: dict) -> bytes:
            return json.dumps({"ai_log": json.dumps(ai, separators=(",", ":")),
                               "start_time": "2026-03-01T00:00:00.000Z"}).encode()

        parse_line(line({"messages": past, "session_id": "s"}), READ_TIME)
        # The same bytes in a list nested before the messages, which begin with the token.
        mine = [history.TOKEN, {"role": "user", "content": "mine"}]
        raw = line({"answer": {"messages": past}, "messages": mine, "session_id": "s"})
        self.assertIn(history.TOKEN.encode(), raw)
        self.assertEqual(parse_line(raw, READ_TIME).ai["messages"], mine)
        # Without it, the nested list is taken for the history, and the token it left is
        # not the first message: parsed whole too.
        raw = line({"answer": {"messages": past}, "messages": past + mine[1:],
                    "session_id": "s"})
        req = parse_line(raw, READ_TIME)
        self.assertEqual(req.ai["messages"], past + mine[1:])
        self.assertEqual(req.ai["answer"], {"messages": past})


class HistoryThresholdTest(unittest.TestCase):
    """parse.HISTORY_MIN_BYTES: a line shorter than it is parsed whole (its history is
    neither looked up nor kept), a longer one may take the shortcuts; sessions whose
    lines grow across it and fall back below it parse exactly as with no shortcut."""

    def test_sessions_crossing_the_threshold_parse_as_the_whole_lines_do(self):
        rng = random.Random(SEED + 2)
        history.CACHE.clear()
        history.RAW.clear()
        limit = parse.HISTORY_MIN_BYTES
        lists = {f"s{i}": [] for i in range(4)}
        looked = {"below": 0, "above": 0}
        sides = {"below": 0, "above": 0}
        shortened = 0
        original_shorten = history.shorten

        def counting(raw, cache=history.RAW):
            nonlocal shortened
            looked["below" if len(raw) < limit else "above"] += 1
            found = original_shorten(raw, cache)
            shortened += found is not None
            return found

        for n in range(CASES):
            sid = rng.choice(list(lists))
            grown = _mutate(rng, lists[sid])
            if rng.random() < 0.3:   # a tool output that takes the line across the limit
                grown.append({"role": "tool", "content": rng.choice(["x", "\u00e9", '"', "<", "\n"])
                              * rng.randint(0, limit // 2)})
            if len(json.dumps(grown)) > 2 * limit or rng.random() < 0.05:
                grown = grown[-1:]   # a new conversation under the same id: short again
            lists[sid] = grown
            raw = _outer_line(rng, _ai_log_text(rng, sid, grown), n)
            sides["below" if len(raw) < limit else "above"] += 1
            with mock.patch.object(parse, "shorten", counting):
                fast = parse_outcome(raw, READ_TIME)
            with mock.patch.object(parse, "shorten", lambda raw: None), \
                    mock.patch.object(parse, "decode_ai_log", lambda text: None), \
                    mock.patch.object(parse, "remember", lambda raw, ai: None):
                plain = parse_outcome(raw, READ_TIME)
            self.assertEqual(fast[0], plain[0], raw[:300])
            if fast[0] == "request":
                self.assertTrue(all(same_json(a, b) for a, b in zip(fast[1], plain[1])),
                                raw[:300])
            else:
                self.assertEqual(fast, plain)
        self.assertEqual(looked["below"], 0)   # shorter lines never look
        self.assertGreater(sides["below"], CASES // 5)
        self.assertGreater(sides["above"], CASES // 5)
        self.assertGreater(shortened, CASES // 20)   # longer ones take the shortcut
        history.CACHE.clear()
        history.RAW.clear()


class PickledRequestTest(unittest.TestCase):
    def test_a_request_pickled_as_the_parse_worker_sends_it_comes_back_field_for_field(self):
        """Request.__reduce__ (its constructor's arguments, not the default slot state):
        every field of requests parsed from seeded hostile lines survives the round trip
        type for type, and the copy is a Request that pickles alike again."""
        import pickle
        rng = random.Random(SEED + 4)
        lists = {f"s{i}": [] for i in range(3)}
        requests = 0
        for n in range(CASES // 2):
            sid = rng.choice(list(lists) + [None, 7])
            key = sid if sid in lists else "s0"
            lists[key] = _mutate(rng, lists[key])
            try:
                raw = _outer_line(rng, _ai_log_text(rng, sid, lists[key]), n)
            except UnicodeEncodeError:   # a lone surrogate the generator wrote unescaped
                continue
            try:
                req = parse_line(raw, READ_TIME)
            except BadLine:
                continue
            if not isinstance(req, Request):
                continue
            requests += 1
            if rng.random() < 0.5:   # as the worker sends it: without its messages
                req.ai = {k: v for k, v in req.ai.items() if k != "messages"}
            try:
                data = pickle.dumps(req, protocol=pickle.HIGHEST_PROTOCOL)
            except RecursionError:   # nested too deeply: the worker sends it back to redo
                continue
            back = pickle.loads(data)
            self.assertIs(type(back), Request)
            for name in Request.__slots__:
                self.assertTrue(same_json(getattr(back, name), getattr(req, name)),
                                (name, raw[:200]))
            self.assertEqual(pickle.dumps(back, protocol=2), pickle.dumps(req, protocol=2))
        self.assertGreater(requests, CASES // 4)


class CollectorDuringAPassTest(unittest.TestCase):
    def test_a_pass_runs_the_collector_less_often_and_restores_it_however_it_ends(self):
        from agent_session_monitor.ingest import monitor
        before = gc.get_threshold()
        seen = []

        def a_pass(self, stats):
            seen.append(gc.get_threshold())
            if len(seen) == 2:
                raise KeyboardInterrupt

        mon = monitor.Monitor.__new__(monitor.Monitor)   # no store: only the pass runs
        mon._pass_cut = False
        with mock.patch.object(monitor.Monitor, "_pass", a_pass):
            mon.poll_once()
            self.assertEqual(gc.get_threshold(), before)
            with self.assertRaises(KeyboardInterrupt):
                mon.poll_once()
        self.assertEqual(gc.get_threshold(), before)
        self.assertTrue(mon._pass_cut)
        self.assertEqual([t[0] for t in seen], [monitor.PASS_GC_THRESHOLD] * 2)
        self.assertEqual([t[1:] for t in seen], [before[1:]] * 2)


def _known_ai_keys() -> frozenset:
    from agent_session_monitor.ingest.rounds import KNOWN_AI_KEYS
    return KNOWN_AI_KEYS


if __name__ == "__main__":
    unittest.main()
