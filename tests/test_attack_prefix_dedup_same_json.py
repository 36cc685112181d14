"""Attack: make the stored conversation say what the agent never sent, through the
deduplication of the history every request re-logs.

A session stores each round's messages after the prefix it shares with the previous
request (document.common_prefix, in the monitor and in the parse-ahead worker). Python's
``==`` equates ``1``, ``1.0`` and ``true``, ``0`` and ``-0.0``, and dicts whatever their key
order, so a message re-logged as ``1.0`` after ``1`` (or ``{"b":2,"a":1}`` after
``{"a":1,"b":2}``) was taken for the earlier one and the file gave back the earlier
spelling for the later request. A message is shared only when it is the same JSON value:
the same types, the same key order (ondisk._same, which the on-disk references use).

Generated (seeded): JSON values of every type, and for each a respelling that Python
takes for equal and JSON does not (int/float/bool, -0.0, key orders, at any depth, in
OpenAI and Anthropic-shaped messages); sessions of three requests whose re-logged history
holds such a respelling at a random place, in short lines and in lines long enough for the
history cache (history.py). Through common_prefix, then main.py (cron) with the parse-ahead
worker forced on and off, and ``cli.py show --full-context``: every round's whole request
is given back as logged, byte for byte as JSON. And loggen's Claude sessions (tool_use /
tool_result turns) store each round's new messages only, as OpenAI's do.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import subprocess
import sys
import unittest

from tests.helpers import ROOT, TempDirTest, load_store, write_lines
from agent_session_monitor.cli import main as cli_main
from agent_session_monitor.ingest.forgery import HIGRESS_FORMAT
from agent_session_monitor.store.document import common_prefix, full_context

START = 1_767_225_600   # 2026-01-01T00:00:00Z


def text(value: object) -> str:
    """The JSON a value is, types and key order included."""
    return json.dumps(value, ensure_ascii=False)


def value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 2, 7, 2**53, -(2**31), rng.randrange(10**6)])
    if kind == 1:
        return rng.choice([0.0, 1.0, 2.0, 0.5, -3.0, 1e16, 2.0**53, float(rng.randrange(99))])
    if kind == 2:
        return rng.choice([True, False])
    if kind == 3:
        return rng.choice(["", "x", "1", "true", "héllo", "a\nb"])
    if kind == 4:
        return None
    if kind == 5:
        return rng.randrange(100)
    if kind == 6:
        return [value(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    keys = rng.sample(["a", "b", "type", "text", "n", "ttl", "id", "cache_control"],
                      rng.randint(2, 4))
    return {k: value(rng, depth + 1) for k in keys}


def respelled(rng: random.Random, v: object) -> object | None:
    """A value Python's ``==`` takes for ``v`` that is another JSON value; None if none."""
    t = type(v)
    if t is bool:
        return rng.choice([int(v), float(v)])
    if t is int:
        options = []
        if abs(v) <= 2**53:
            options.append(float(v))
        if v in (0, 1):
            options.append(bool(v))
        if v == 0:
            options.append(-0.0)
        return rng.choice(options) if options else None
    if t is float:
        options = []
        if v.is_integer() and abs(v) <= 2**53:
            options.append(int(v))
        if v in (0.0, 1.0):
            options.append(bool(v))
        if v == 0.0:
            options.append(-v)
        return rng.choice(options) if options else None
    if t is dict:
        items = list(v.items())
        if len(items) > 1 and rng.random() < 0.4:
            shift = rng.randint(1, len(items) - 1)
            return dict(items[shift:] + items[:shift])
        for at in rng.sample(range(len(items)), len(items)):
            w = respelled(rng, items[at][1])
            if w is not None:
                out = dict(items)
                out[items[at][0]] = w
                return out
        return dict(items[1:] + items[:1]) if len(items) > 1 else None
    if t is list:
        for at in rng.sample(range(len(v)), len(v)):
            w = respelled(rng, v[at])
            if w is not None:
                return v[:at] + [w] + v[at + 1:]
    return None


def message(rng: random.Random, n: int) -> dict:
    """A message holding something that can be respelled."""
    while True:
        shape = rng.randrange(3)
        if shape == 0:
            msg = {"role": "user", "content": value(rng)}
        elif shape == 1:   # Anthropic content blocks
            msg = {"role": "user", "content": [
                {"type": "text", "text": f"part {n}",
                 "cache_control": {"type": "ephemeral", "ttl": value(rng)}},
                {"type": "tool_result", "tool_use_id": f"t{n}", "content": value(rng)}]}
        else:              # a tool call whose arguments are an object
            msg = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"c{n}", "type": "function",
                 "function": {"name": "f", "arguments": value(rng)}}]}
        if respelled(rng, msg) is not None:
            return msg


def equal_pairs(seed: int, count: int) -> list[tuple[object, object]]:
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < count:
        v = message(rng, len(pairs)) if rng.random() < 0.5 else value(rng)
        w = respelled(rng, v)
        if w is not None:
            pairs.append((v, w))
    return pairs


def sessions(seed: int, count: int) -> list[tuple[str, list[list]]]:
    """(session id, the message list of each of its three requests)."""
    rng = random.Random(seed)
    out = []
    for s in range(count):
        history = [message(rng, i) for i in range(rng.randint(1, 4))]
        if rng.random() < 0.5:   # long lines: the history cache reuses decoded messages
            history.insert(0, {"role": "system", "content": "rules " * 2000})
        requests = [copy.deepcopy(history)]
        for r in range(2):
            logged = copy.deepcopy(requests[-1])
            if rng.random() < 0.85:   # else re-logged as it was: shared, as it must be
                at = rng.randrange(len(logged))
                logged[at] = respelled(rng, logged[at]) or logged[at]
            logged += [{"role": "assistant", "content": f"answer {r}"},
                       message(rng, 100 + r)]
            requests.append(logged)
        out.append((f"s{s:03d}", requests))
    return out


def log_line(session: str, requests: int, messages: list, n: int) -> bytes:
    ai = {"session_id": session, "model": "gpt-4o", "input_token": 1000 + n,
          "output_token": 5, "messages": messages, "question": messages[-1].get("content"),
          "answer": f"answer {requests}"}
    outer = dict.fromkeys(HIGRESS_FORMAT[1:], "-")
    t = START + n
    outer.update(start_time=f"2026-01-01T{t // 3600 % 24:02d}:{t // 60 % 60:02d}:"
                            f"{t % 60:02d}.000Z", request_id=f"r{n}", method="POST")
    return json.dumps({"ai_log": json.dumps(ai, ensure_ascii=False), **outer},
                      ensure_ascii=False).encode() + b"\n"


class SharedPrefixIsTheSameJson(unittest.TestCase):
    def test_values_python_takes_for_equal_are_never_shared(self):
        pairs = equal_pairs(7, 3000)
        for v, w in pairs:
            with self.subTest(v=text(v)[:200], w=text(w)[:200]):
                self.assertEqual(v, w)                   # what Python's == says
                self.assertNotEqual(text(v), text(w))    # what JSON says
                base = [{"role": "system", "content": "s"}, v]
                self.assertEqual(common_prefix(base, [base[0], w, "more"]), 1)
                self.assertEqual(common_prefix(base, [dict(base[0]), w]), 1)
                # The same JSON, in other objects (a line parsed again): shared.
                self.assertEqual(common_prefix(base, copy.deepcopy(base) + ["x"]), 2)
        kinds = {(type(v).__name__, type(w).__name__) for v, w in pairs}
        for kind in (("int", "float"), ("float", "int"), ("bool", "int"), ("int", "bool"),
                     ("dict", "dict"), ("list", "list")):
            self.assertIn(kind, kinds)


class StoredConversationIsWhatWasLogged(TempDirTest):
    def run_main(self, log, out, ahead: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), ASM_PARSE_AHEAD_BYTES=ahead)
        run = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--log-path", str(log), "--output-dir",
             str(out), "--allow-log-dir", str(self.tmp), "-q"],
            capture_output=True, text=True, env=env, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])

    def test_every_round_gives_back_its_request_as_logged_in_every_path(self):
        generated = sessions(23, 60)
        lines, logged = [], {}
        for r in range(3):   # requests of all sessions interleaved, in time order
            for sid, requests in generated:
                n = len(lines)
                lines.append(log_line(sid, r, requests[r], n))
                logged[1000 + n] = requests[r]
        log = self.tmp / "access.log"
        write_lines(log, lines)
        stores = {}
        for ahead in ("-1", "0"):   # parsing in process; in the parse-ahead worker
            out = self.tmp / f"sessions{ahead}"
            self.run_main(log, out, ahead)
            docs = load_store(out)
            self.assertEqual(len(docs), len(generated))
            checked = 0
            for doc in docs.values():
                by_key = {r["key"]: r for r in doc["rounds"]}
                for rnd in doc["rounds"]:
                    with self.subTest(ahead=ahead, session=doc["session_id"],
                                      round=rnd["round"]):
                        got, want = (text(full_context(by_key, rnd)),
                                     text(logged[rnd["input_tokens"]]))
                        # (not assertEqual: its diff of two 12 KB lines takes seconds)
                        at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y),
                                  min(len(got), len(want)))
                        self.assertTrue(got == want, f"stored {got[at - 80:at + 80]!r} "
                                        f"logged {want[at - 80:at + 80]!r}")
                    checked += 1
            self.assertEqual(checked, len(lines))
            stores[ahead] = sorted((n, (out / n).read_bytes()) for n in os.listdir(out)
                                   if not n.startswith("."))
        self.assertEqual(stores["-1"], stores["0"])
        # What the CLI shows of a session's last request: the whole request as logged.
        for sid, requests in generated[:12]:
            out, err = io.StringIO(), io.StringIO()
            code = cli_main(["--data-dir", str(self.tmp / "sessions-1"), "--json", "show",
                             sid, "--round", "3", "--full-context"], out=out, err=err)
            self.assertEqual(code, 0, err.getvalue())
            shown = json.loads(out.getvalue())
            self.assertIn(text(requests[2]), text(shown), sid)


class ClaudeSessionsAreLinearToo(TempDirTest):
    def test_claude_tool_use_sessions_store_each_rounds_new_messages_only(self):
        """Anthropic messages (content blocks, tool_use / tool_result turns) share their
        prefix as OpenAI's do (storage.md, "Messages: linear"): each round stores the
        messages new since the previous request (loggen's ground truth), and its full
        request comes back as logged. (The assistant turn's tool_use blocks are stored
        in it, not as references to the round's tool_calls, whose shape differs: one
        copy per round, linear.)"""
        from tests.loggen import generate

        gen = generate(seed=5, sessions=40, max_requests=12)
        log = self.tmp / "access.log"
        write_lines(log, [line + b"\n" for line in gen.lines])
        self.assertEqual(self.run_monitor(log)[0], 0)
        logged = {}
        for line in gen.lines:
            outer = json.loads(line)
            logged[outer["request_id"]] = json.loads(outer["ai_log"]).get("messages")
        new = {e.request_id: e.new_messages for e in gen.events}
        claude_rounds = tool_use_rounds = 0
        for doc in load_store(self.out).values():
            by_key = {r["key"]: r for r in doc["rounds"]}
            for rnd in doc["rounds"]:
                rid = rnd["request_id"]
                if not isinstance(logged.get(rid), list):
                    continue
                with self.subTest(request=rid):
                    self.assertEqual(len(rnd["messages"]), new[rid])
                    self.assertEqual(text(full_context(by_key, rnd)), text(logged[rid]))
                if str(rnd.get("model")).startswith("claude"):
                    claude_rounds += 1
                    tool_use_rounds += any(
                        isinstance(m.get("content"), list) and any(
                            isinstance(b, dict) and b.get("type") == "tool_use"
                            for b in m["content"]) for m in logged[rid])
        self.assertGreater(claude_rounds, 20)
        self.assertGreater(tool_use_rounds, 10)


if __name__ == "__main__":
    unittest.main()
