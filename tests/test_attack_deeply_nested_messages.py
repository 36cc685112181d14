"""A client nests the content it sends (messages, question, system; and what the model
answered) deeper than the JSON decoder goes (~985 levels in CPython 3.11) or deeper than
the readers walk: before, the whole line was bad_ai_log (its own round never billed: free
rounds for nesting deep enough), and a round nested a few hundred levels deep was stored
but crashed `cli.py show`. Now the round is billed with the gateway's counts, the too-deep
field is kept as the JSON text it was logged as (``nested_as_text``), the line is counted
under warnings.deeply_nested_messages, and every reader answers.

Generated: seeded logs of normal agent sessions (growing histories, so the history-reuse
paths run) with lines nested 65 to 100,000 levels deep in lists, objects and both, in
each client-controlled field, in a raw header (a forged key), and in a field the gateway
writes (that one stays bad_ai_log: the plugin never writes it, and it decides the bill).
Run through cron mode (parse worker on and off, commit process on and off) and one
long-lived follow-mode monitor; compared with the ground truth; then every CLI command,
page, /metrics and the search.
"""

from __future__ import annotations

import io
import json
import os
import random
import unittest
from unittest import mock

from tests.helpers import TempDirTest, load_store, parse_with_peak, write_lines
from tests.loggen import envoy_line, go_json
from tests.test_forgery import genuine_outer
from tests.test_fuzz_pipeline import ReaderSweep, monitor_main
from agent_session_monitor.ingest import history
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.values import MAX_DEPTH
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, Request

SEED = int(os.environ.get("ASM_FUZZ_SEED", "1985"))
READ_TIME = "2026-03-01T00:00:00.000Z"
# Depths around every limit: the readers' bound (64), the decoder's (~985 from the
# stack it runs on), and far past it.
DEPTHS = (65, 66, 100, 400, 900, 950, 970, 980, 984, 985, 986, 990, 1000, 1100, 2000,
          5000, 100_000)
# Levels a place adds above the value put there (a message's content: the list, the
# message).
ADDED = {"message_content": 2, "message_element": 1, "assistant_tool_calls": 4}
PLACES = ("message_content", "message_element", "assistant_tool_calls", "question",
          "system", "answer", "reasoning", "tool_calls", "other_plugin_key")


def nested_text(rng: random.Random, depth: int) -> str:
    """A JSON value nested ``depth`` levels: lists, objects or both, with some text."""
    shape = rng.choice(("list", "dict", "mixed"))
    opens, closes = [], []
    for _ in range(depth):
        kind = shape if shape != "mixed" else rng.choice(("list", "dict"))
        if kind == "list":
            opens.append("[1," if rng.random() < 0.1 else "[")
            closes.append("]")
        else:
            opens.append('{"k":')
            closes.append("}")
    return "".join(opens) + '"deep <&> 退款"' + "".join(reversed(closes))


def ai_log_text(ai: dict, place: str | None, nested: str | None) -> str:
    """The ai_log as the plugin writes it (Go: sorted keys), with ``nested`` spliced
    into ``place``."""
    text = go_json(ai)
    if place is None:
        return text
    marker = go_json("NESTED-HERE")
    assert marker in text, place
    return text.replace(marker, nested, 1)


class Generated:
    """A log and its ground truth: per session, the gateway's counts of every paid round."""

    def __init__(self, seed: int, sessions: int = 6, rounds: int = 14,
                 deep_share: float = 0.3, depths=DEPTHS) -> None:
        rng = random.Random(seed)
        self.lines: list[bytes] = []
        self.truth: dict[str, dict] = {}
        self.deep_rounds = 0       # billed, some field kept as text
        self.gateway_deep = 0      # bad_ai_log: a field the gateway writes
        self.header_deep = 0       # a raw header: billed, forged
        self.at_the_limit = 0      # MAX_DEPTH levels: kept as JSON
        # (session, chat_round) -> {field: its text} (a header opening brackets leaves the
        # request_id unsure: not taken)
        self.expected_text: dict[tuple, dict] = {}
        histories = {f"deep-s{i}": [] for i in range(sessions)}
        deep_history: dict[str, str] = {}   # session -> the nested text its history holds
        n = 0
        for _r in range(rounds):
            for sid in histories:
                n += 1
                hist = histories[sid]
                # Long enough (a few KB per message) that lines pass HISTORY_MIN_BYTES.
                hist.append({"role": "user",
                             "content": f"q{n} " + "lorem ipsum " * rng.randint(5, 400)})
                counts = {"input_token": rng.randint(1, 10**6),
                          "output_token": rng.randint(0, 10**5),
                          "cached_tokens": rng.randint(0, 1000),
                          "reasoning_tokens": rng.randint(0, 500)}
                ai = {"session_id": sid,
                      "model": rng.choice(["gpt-4o", "qwen-max", "no-such-model"]),
                      **counts, "messages": list(hist), "question": hist[-1]["content"],
                      "answer": f"a{n}", "chat_round": len(hist)}
                outer = genuine_outer(n, request_id=f"req-{n:06d}", start_time=(
                    f"2026-02-01T09:{n // 60 % 60:02d}:{n % 60:02d}.000Z"))
                place, nested, kind = None, None, "normal"
                roll = rng.random()
                if roll < deep_share + 0.1:
                    # Deeper than MAX_DEPTH; or (the last 0.1) exactly as deep as a
                    # field may be and stay JSON, which every reader must then walk.
                    kind = "deep" if roll < deep_share else "max"
                    place = rng.choice(PLACES)
                    nested = nested_text(rng, rng.choice(depths) if kind == "deep"
                                         else MAX_DEPTH - ADDED.get(place, 0))
                    if place == "message_content" and kind == "max":
                        place = "question"
                    if place == "message_content":
                        if sid in deep_history:
                            place = "question"
                        else:
                            # Kept in the history: every later request re-logs it.
                            hist[-1] = {"role": "user", "content": "NESTED-HISTORY"}
                            deep_history[sid] = nested
                            place = None
                elif roll < deep_share + 0.14:
                    kind = "gateway"
                    place, nested = "input_token_details", nested_text(rng, rng.choice(depths))
                elif roll < deep_share + 0.18:
                    kind = "header"
                    depth = rng.choice(depths)
                    outer["user_agent"] = ('curl/8","x_deep":' + "[" * depth + "]" * depth
                                           + ',"y":"z')
                ai["messages"] = list(hist)
                if place == "message_element":
                    ai["messages"].append("NESTED-HERE")
                elif place == "assistant_tool_calls":
                    ai["messages"].append({"role": "assistant", "tool_calls": [
                        {"id": "c1", "type": "function", "function": "NESTED-HERE"}]})
                elif place == "other_plugin_key":
                    ai["safecheck_detail"] = "NESTED-HERE"
                elif place is not None:
                    ai[place] = "NESTED-HERE"
                text = ai_log_text(ai, place, nested)
                if sid in deep_history:
                    text = text.replace(go_json("NESTED-HISTORY"), deep_history[sid], 1)
                self.lines.append(envoy_line(outer, text))
                if kind == "gateway":
                    self.gateway_deep += 1
                    continue
                self.header_deep += kind == "header"
                self.at_the_limit += kind == "max"
                fields = []
                if sid in deep_history:
                    fields.append("messages")
                if kind == "deep" and place is not None:
                    fields.append({"message_content": "messages", "message_element": "messages",
                                   "assistant_tool_calls": "messages",
                                   "other_plugin_key": "safecheck_detail"}.get(place, place))
                if fields:
                    self.deep_rounds += 1
                    self.expected_text[(sid, len(hist))] = {
                        f: _member_text(text, f) for f in fields}
                t = self.truth.setdefault(sid, {"input": 0, "output": 0, "cached": 0,
                                                "reasoning": 0, "rounds": 0})
                t["input"] += counts["input_token"]
                t["output"] += counts["output_token"]
                t["cached"] += counts["cached_tokens"]
                t["reasoning"] += counts["reasoning_tokens"]
                t["rounds"] += 1


def _member_text(text: str, key: str) -> str:
    """The exact text of the ai_log's top-level member ``key``, found without decoding
    (brackets counted outside strings): what the round must keep."""
    at = text.index(f'"{key}":')
    # The top-level member: Go sorts keys, and no other member holds this quoted key
    # followed by a colon at top level before it (the generator's keys are distinct).
    i = at + len(key) + 3
    depth, in_string, start = 0, False, i
    while True:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        elif depth == 0 and c in ",}":
            return text[start:i]
        i += 1


def without_read_time(rnd: dict) -> dict:
    if rnd.get("time_source") == "read":
        return {k: v for k, v in rnd.items() if k not in ("timestamp", "round")}
    return rnd


def stored_totals(docs: dict) -> dict:
    totals = {}
    for sid, doc in docs.items():
        t = {"input": 0, "output": 0, "cached": 0, "reasoning": 0, "rounds": 0}
        for rnd in doc["rounds"]:
            t["input"] += rnd["input_tokens"]
            t["output"] += rnd["output_tokens"]
            t["cached"] += rnd["cached_tokens"]
            t["reasoning"] += rnd["reasoning_tokens"]
            t["rounds"] += 1
        totals[sid] = t
    return totals


class ParseDeeplyNested(unittest.TestCase):
    def test_every_depth_and_place_is_billed_with_the_gateways_counts(self):
        rng = random.Random(SEED)
        cases = 0
        for depth in DEPTHS:
            for place in ("question", "system", "answer", "reasoning", "tool_calls",
                          "other_plugin_key", "message_content"):
                history.CACHE.clear()
                history.RAW.clear()
                ai = {"session_id": "s", "model": "gpt-4o", "input_token": 1234,
                      "output_token": 56, "messages": [{"role": "user", "content": "hi"}]}
                key = place if place not in ("other_plugin_key", "message_content") else (
                    "safecheck" if place == "other_plugin_key" else None)
                if key:
                    ai[key] = "NESTED-HERE"
                else:
                    ai["messages"] = [{"role": "user", "content": "NESTED-HERE"}]
                    key = "messages"
                nested = nested_text(rng, depth)
                text = ai_log_text(ai, place, nested)
                raw = envoy_line(genuine_outer(1), text).rstrip(b"\n")
                with self.subTest(depth=depth, place=place):
                    req = parse_line(raw, READ_TIME)
                    self.assertIsInstance(req, Request)
                    self.assertEqual((req.session_id, req.input_token, req.output_token),
                                     ("s", 1234, 56))
                    self.assertIn("deeply_nested_messages", req.warnings)
                    self.assertEqual(req.ai[key], _member_text(text, key))
                    self.assertEqual(req.nested_as_text, (key,))
                    cases += 1
        self.assertEqual(cases, len(DEPTHS) * 7)

    def test_shallow_enough_content_is_kept_as_json(self):
        # MAX_DEPTH levels in the field itself: a message's content two levels less.
        for depth in (1, 10, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH):
            nested = "[" * depth + '"x"' + "]" * depth
            inner = "[" * (depth - 2) + '"x"' + "]" * (depth - 2) if depth > 2 else '"x"'
            ai = {"session_id": "s", "input_token": 1, "question": "NESTED-HERE",
                  "messages": [{"role": "user", "content": "NESTED-HERE"}]}
            text = ai_log_text(ai, "question", inner).replace(go_json("NESTED-HERE"), nested)
            req = parse_line(envoy_line(genuine_outer(1), text).rstrip(b"\n"), READ_TIME)
            self.assertEqual(req.ai["question"], json.loads(nested))
            self.assertEqual(req.ai["messages"][0]["content"], json.loads(inner))
            self.assertNotIn("deeply_nested_messages", req.warnings)
            self.assertEqual(req.nested_as_text, ())

    def test_a_field_the_gateway_writes_nested_deep_is_still_a_bad_line(self):
        for depth in (65, 990, 5000):
            for key in ("input_token_details", "usage", "model", "session_id", "start_time"):
                ai = {"session_id": "s", "model": "gpt-4o", "input_token": 1, key: "NESTED-HERE"}
                text = ai_log_text(ai, key, "[" * depth + "]" * depth)
                with self.subTest(depth=depth, key=key), self.assertRaises(BadLine) as cm:
                    parse_line(envoy_line(genuine_outer(1), text).rstrip(b"\n"), READ_TIME)
                self.assertEqual(cm.exception.kind, "bad_ai_log")
                self.assertIn(key, cm.exception.detail)

    def test_a_raw_header_nested_deep_keeps_the_paid_round_forged(self):
        for depth in (65, 990, 5000, 100_000):
            outer = genuine_outer(1, user_agent='a","x":' + "[" * depth + "]" * depth + ',"y":"b')
            ai = {"session_id": "s", "model": "gpt-4o", "input_token": 77, "output_token": 1}
            req = parse_line(envoy_line(outer, go_json(ai)).rstrip(b"\n"), READ_TIME)
            self.assertIsInstance(req, Request, depth)
            self.assertEqual(req.input_token, 77)
            # Read by place: the header's keys ignored (forged, or a line json could
            # not decode, salvaged).
            self.assertTrue({"forged", "salvaged"} & set(req.warnings), req.warnings)

    def test_malformed_deep_content_is_a_bad_line_not_a_guess(self):
        # Brackets that do not match, or text cut inside: not JSON, not billed.
        for tail in ("]" * 1999 + "}", "]" * 1998, "]" * 2000 + "]", "]" * 1000):
            text = '{"input_token":1,"question":' + "[" * 2000 + tail + ',"session_id":"s"}'
            with self.assertRaises(BadLine) as cm:
                parse_line(envoy_line(genuine_outer(1), text).rstrip(b"\n"), READ_TIME)
            self.assertEqual(cm.exception.kind, "bad_ai_log")

    def test_keys_written_twice_beside_deep_content_are_checked_as_before(self):
        for depth in (100, 990, 5000):
            deep = "[" * depth + "]" * depth
            base = '{"input_token":5,"question":' + deep + ',"session_id":"s"'
            # Equal copies: flagged once; differing copies of a billing key: not billed.
            req = parse_line(envoy_line(genuine_outer(1), base + ',"answer":"a","answer":"a"}')
                             .rstrip(b"\n"), READ_TIME)
            self.assertEqual(req.warnings.count("duplicate_key"), 1, depth)
            self.assertEqual(req.warnings.count("deeply_nested_messages"), 1, depth)
            with self.assertRaises(BadLine) as cm:
                parse_line(envoy_line(genuine_outer(1), base + ',"input_token":6}')
                           .rstrip(b"\n"), READ_TIME)
            self.assertEqual(cm.exception.kind, "duplicate_key")

    def test_a_million_levels_with_something_between_brackets_stay_small(self):
        # "[1,[1,..." or '{"k":{"k":...': each level its own run of brackets. The open
        # ones were kept as a list of runs (~100 bytes a level: 1.3 GB for a 50 MB line).
        for unit, close in (("[1,", "]"), ('{"k":', "}"), ('["x",', "]")):
            levels = 4 * 2**20 // (len(unit) + 1)
            text = ('{"input_token":3,"question":' + unit * levels + "1" + close * levels
                    + ',"session_id":"s"}')
            raw = envoy_line(genuine_outer(1), text).rstrip(b"\n")
            req, peak = parse_with_peak(raw, READ_TIME)
            self.assertEqual(req.input_token, 3)
            self.assertEqual(req.nested_as_text, ("question",))
            # The line, its text and the kept field: a few times 4 MB, not 100 MB.
            self.assertLess(peak, 40 * 2**20, unit)

    def test_fifty_megabytes_of_brackets(self):
        depth = 25 * 2**20
        text = '{"input_token":9,"question":' + "[" * depth + "]" * depth + ',"session_id":"s"}'
        req = parse_line(envoy_line(genuine_outer(1), text).rstrip(b"\n"), READ_TIME)
        self.assertEqual(req.input_token, 9)
        self.assertEqual(len(req.ai["question"]), 2 * depth)


class DeepTextInsideAField(TempDirTest):
    def test_a_usage_text_nested_past_the_decoder_is_no_provider_cost_not_a_stop(self):
        # A usage object logged as a JSON string (provider_cost reads its cost): under
        # 4 KB, "[" two characters a level nest past json's limit. It made build_round
        # raise RecursionError: "internal error" at the same line on every run.
        lines = []
        for n, depth in enumerate((500, 990, 2000)):
            usage = '{"cost":' + "[" * depth + "]" * depth + "}"
            ai = {"session_id": f"u{n}", "model": "gpt-4o", "input_token": 10 + n,
                  "output_token": 1, "usage": usage}
            lines.append(envoy_line(genuine_outer(n), go_json(ai)))
        log = self.tmp / "access.log"
        write_lines(log, lines, "wb")
        code, _out, err = monitor_main("--log-path", str(log), "--output-dir", str(self.out),
                                       "--allow-log-dir", str(self.tmp))
        self.assertEqual(code, 0, err)
        docs = load_store(self.out)
        self.assertEqual(sorted(docs), ["u0", "u1", "u2"])
        for n in range(3):
            rnd = docs[f"u{n}"]["rounds"][0]
            self.assertEqual(rnd["input_tokens"], 10 + n)
            self.assertNotIn("provider_cost_usd", rnd)


    def test_a_detail_map_text_nested_deep_is_unreadable_details_not_stored(self):
        # A detail map logged as a JSON string is not walked as a member: decoded, one
        # nested past MAX_DEPTH is as unreadable as one json cannot decode (bad_details).
        for depth in (65, 500, 990, 5000):
            details = '{"cached_tokens":' + "[" * depth + "]" * depth + "}"
            ai = {"session_id": "s", "model": "gpt-4o", "input_token": 10, "output_token": 1,
                  "input_token_details": details}
            req = parse_line(envoy_line(genuine_outer(1), go_json(ai)).rstrip(b"\n"),
                             READ_TIME)
            self.assertEqual((req.input_token, req.input_details), (10, {}), depth)
            self.assertIn("bad_details", req.warnings)


class DeeplyNestedThroughTheMonitor(TempDirTest):
    def check_store(self, gen: Generated, out, counters: dict) -> None:
        docs = load_store(out)
        self.assertEqual(stored_totals(docs), gen.truth)
        self.assertEqual(counters.get("bad_lines", {}).get("bad_ai_log", 0), gen.gateway_deep)
        self.assertEqual(counters.get("warnings", {}).get("deeply_nested_messages", 0),
                         gen.deep_rounds)
        kept = 0
        for sid, doc in docs.items():
            for rnd in doc["rounds"]:
                want = gen.expected_text.get((sid, rnd["chat_round"]))
                if want is None:
                    self.assertNotIn("nested_as_text", rnd)
                    continue
                self.assertEqual(sorted(rnd["nested_as_text"]), sorted(want))
                for field, text in want.items():
                    value = rnd["extra"][field] if field == "safecheck_detail" else rnd[field]
                    self.assertEqual(value, text, field)
                self.assertIn("deeply_nested_messages", rnd["warnings"])
                kept += 1
        self.assertEqual(kept, gen.deep_rounds)

    def run_cron(self, gen: Generated, env: dict) -> None:
        log = self.tmp / "access.log"
        write_lines(log, gen.lines, "wb")
        out = self.tmp / ("s-" + "-".join(f"{k}{v}" for k, v in sorted(env.items())))
        with mock.patch.dict(os.environ, env):
            code, stdout, err = monitor_main("--log-path", str(log), "--output-dir", str(out),
                                             "--allow-log-dir", str(self.tmp),
                                             "--checkpoint-bytes", "200000")
        self.assertEqual(code, 0, err[-3000:])
        self.assertNotIn("Traceback", err)
        self.assertNotIn("internal error", err)
        if gen.deep_rounds:
            self.assertIn("nested", stdout + err)
        self.check_store(gen, out, json.loads((out / ".state.json").read_text())["counters"])
        return out

    def test_cron_worker_and_commit_process_on_and_off_then_every_reader(self):
        gen = Generated(SEED + 1)
        self.assertGreater(gen.deep_rounds, 10)
        self.assertGreater(gen.gateway_deep, 0)
        self.assertGreater(gen.header_deep, 0)
        self.assertGreater(gen.at_the_limit, 3)
        stores = []
        for worker in ("0", "-1"):
            for commit in ("1", "0"):
                stores.append(self.run_cron(gen, {"ASM_PARSE_AHEAD_BYTES": worker,
                                                  "ASM_COMMIT_PROCESS": commit}))
        reference = load_store(stores[0])
        for out in stores[1:]:
            other = load_store(out)
            self.assertEqual(sorted(other), sorted(reference))
            for sid, doc in other.items():
                # (A header that opens a list leaves the line's time unsure: read time.)
                self.assertEqual(sorted((without_read_time(r) for r in doc["rounds"]),
                                        key=lambda r: r["key"]),
                                 sorted((without_read_time(r)
                                         for r in reference[sid]["rounds"]),
                                        key=lambda r: r["key"]), (out, sid))
        calls = ReaderSweep(self, stores[0], random.Random(SEED)).run(sample=6)
        self.assertGreater(calls, 300)
        # Search (FTS) for a word of the deep text and of a normal round.
        from agent_session_monitor.web.routes import WebApp
        app = WebApp(stores[0], tz_name=None, log=io.StringIO(), max_lag=0)
        for q in ("deep", "lorem", "%5B%5B%5B"):
            self.assertEqual(app.handle("GET", f"/?q={q}", {"Host": "127.0.0.1:0"}).status, 200)
        for extra in (["--rebuild-index"], ["--reprice"]):
            code, _, err = monitor_main("--output-dir", str(stores[0]), "--log-path",
                                        str(self.tmp / "access.log"), "--allow-log-dir",
                                        str(self.tmp), *extra)
            self.assertEqual(code, 0, err)

    def test_one_long_lived_follow_monitor(self):
        gen = Generated(SEED + 2, sessions=4, rounds=12)
        rng = random.Random(SEED + 3)
        log = self.tmp / "access.log"
        log.touch()
        for worker, commit in (("0", "1"), ("-1", "0")):
            out = self.tmp / f"follow{worker}{commit}"
            write_lines(log, [], "wb")
            with mock.patch.dict(os.environ, {"ASM_PARSE_AHEAD_BYTES": worker,
                                              "ASM_COMMIT_PROCESS": commit}):
                config = MonitorConfig(log_paths=[str(log)], output_dir=out, follow=True,
                                       allow_log_dirs=[str(self.tmp)]) \
                    if "allow_log_dirs" in MonitorConfig.__dataclass_fields__ else \
                    MonitorConfig(log_paths=[str(log)], output_dir=out, follow=True)
                err = io.StringIO()
                with Monitor(config, err=err) as monitor:
                    at = 0
                    while at < len(gen.lines):
                        step = rng.randint(1, 9)
                        data = b"".join(gen.lines[at:at + step])
                        cut = rng.randrange(len(data) + 1)
                        write_lines(log, [data[:cut]])
                        monitor.poll_once()
                        write_lines(log, [data[cut:]])
                        monitor.poll_once()
                        at += step
                self.assertNotIn("Traceback", err.getvalue())
            self.check_store(gen, out, json.loads((out / ".state.json").read_text())["counters"])
            ReaderSweep(self, out, random.Random(SEED)).run(sample=3)


if __name__ == "__main__":
    unittest.main()


class StoresOlderVersionsWroteDeep(TempDirTest):
    """Before, content json could decode (up to ~985 levels) was stored nested as it
    came: such a store must still be read by every reader (show walked ~5 frames per
    level and crashed from ~200; a file json cannot decode from a reader's stack was
    left out of the index by --rebuild-index, its bill with it) and extended by the
    monitor."""

    def test_deep_content_an_older_version_stored_is_read_and_extended(self):
        rng = random.Random(SEED + 4)
        log = self.tmp / "access.log"
        lines, want = [], 0
        for n, depth in enumerate((100, 200, 400, 800, 900, 940, 960)):
            nested = "[" * depth + '"x"' + "]" * depth
            ai = {"session_id": f"old-{n % 3}", "model": "gpt-4o", "input_token": 1000 + n,
                  "output_token": n, "question": "NESTED-HERE",
                  "messages": [{"role": "user", "content": f"m{n}"}]}
            lines.append(envoy_line(genuine_outer(n), ai_log_text(ai, "question", nested)))
            want += 1000 + n
        write_lines(log, lines, "wb")
        # As the older version did: no depth check at parse.
        with mock.patch("agent_session_monitor.ingest.parse.deep_members",
                        lambda ai, skip=0: False):
            code, _out, err = monitor_main("--log-path", str(log), "--output-dir",
                                           str(self.out), "--allow-log-dir", str(self.tmp))
        self.assertEqual(code, 0, err)
        stored = b"".join(p.read_bytes() for p in self.out.glob("old-*.json"))
        # Stored nested, as the old version did.
        self.assertTrue(b'"question":' + b"[" * 940 in stored, "not stored nested")
        ReaderSweep(self, self.out, rng).run(sample=3)
        code, _out, err = monitor_main("--output-dir", str(self.out), "--rebuild-index")
        self.assertEqual(code, 0, err)
        code, out, err = monitor_main("--output-dir", str(self.out), "--log-path", str(log),
                                      "--allow-log-dir", str(self.tmp))
        self.assertEqual(code, 0, err)
        # One more round of each session, by this version.
        more = [envoy_line(genuine_outer(100 + n, request_id=f"more-{n}"), go_json(
            {"session_id": f"old-{n}", "model": "gpt-4o", "input_token": 7, "output_token": 1}))
            for n in range(3)]
        write_lines(log, more)
        code, _out, err = monitor_main("--log-path", str(log), "--output-dir", str(self.out),
                                       "--allow-log-dir", str(self.tmp))
        self.assertEqual(code, 0, err)
        self.assertNotIn("corrupt", err)
        docs = load_store(self.out)
        self.assertEqual(sum(r["input_tokens"] for d in docs.values() for r in d["rounds"]),
                         want + 21)
        from agent_session_monitor.cli import main as cli_main
        printed = io.StringIO()
        self.assertEqual(cli_main(["stats-model", "--json", "--data-dir", str(self.out)],
                                  out=printed, err=io.StringIO()), 0)
        self.assertIn(str(want + 21), printed.getvalue().replace(",", ""))
        ReaderSweep(self, self.out, rng).run(sample=3)
