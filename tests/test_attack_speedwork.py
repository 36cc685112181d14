"""Attacks on the speed work of issue 16: what each shortcut assumes, broken on purpose.

- history.py (the re-logged messages taken from the session's previous request): its
  result must be the whole decode's, type for type, for any text, and an ai_log that is
  not JSON must stay a bad line whatever the cache holds.
- the writing mark (durable.begin_writing): a cron pass sweeps temp files only when the
  mark says the last writer did not end cleanly, so the mark must be there for as long
  as a writer writes, through everything that writer survives.
- the forks of a pass (parse worker, commit process): a Ctrl-C or ``systemctl stop`` that
  comes while one is born must still stop the monitor.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import unittest

from tests.helpers import ROOT, TempDirTest, make_line, parse_outcome, write_lines

from unittest import mock

from agent_session_monitor.ingest import history, parse
from agent_session_monitor.ingest.parse import parse_line
from agent_session_monitor.ingest.request import BadLine, _decode

SEED = 16160
READ_TIME = "2026-03-01T00:00:00.000Z"


def same_json(a: object, b: object) -> bool:
    """Equal, type for type (1 is not 1.0 nor True), with the keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def go_json(value: object) -> str:
    """Go json.Marshal's form of ``value`` (compact, keys sorted, <>& escaped)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _message(rng: random.Random, sessions: str) -> object:
    """A logged message, now and then carrying what history.py looks for: a nested
    "session_id" (the hint it picks a cached list by), a nested "messages" list."""
    k = rng.random()
    if k < 0.4:
        return {"role": rng.choice(["user", "assistant"]),
                "content": rng.choice(["hi", "x" * rng.randint(0, 9), "é\u2028\"\\<&>", 12, 1.5])}
    if k < 0.55:
        return {"role": "tool", "content": go_json({"session_id": rng.choice(sessions)}),
                "meta": {"session_id": rng.choice(sessions)}}
    if k < 0.65:
        return {"session_id": rng.choice(sessions), "messages": [1, {"messages": []}]}
    return rng.choice(["s", 0, -1, 10**30, 1.25e10, True, None, [], {}, [[2]]])


def _member_dropped(rng: random.Random, text: str) -> str:
    """One member (or element) cut out with what precedes it, its comma kept: ``{,``,
    ``[,``, ``,,``, with or without whitespace: text no JSON decoder accepts."""
    seps = [i for i, c in enumerate(text) if c in "{,["]
    a = rng.choice(seps) + 1
    b = text.find(",", a)
    if b <= a:
        return text
    return text[:a] + rng.choice(["", " ", "\n", "\t", "\r"]) + text[b:]


_TOKENS = list('{}[],:"\\ \n') + ['"messages"', ',"messages":[', '"session_id":"', "]", "],",
                                   "\\u006d", "null", "1e999", "NaN", "0"]


def _mutated(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.35:
            text = _member_dropped(rng, text)
            continue
        anchors = [i for i in range(len(text))
                   if text.startswith(('"messages"', "[", "]", ",", "{", "}"), i)]
        i = max(0, min(len(text), rng.choice(anchors) + rng.randint(-2, 2)))
        token = rng.choice(_TOKENS)
        if op < 0.5:
            text = text[:i] + text[i + rng.randint(1, 30):]
        elif op < 0.6:   # a span repeated elsewhere (a key twice, a list then garbage)
            j = min(len(text), i + rng.randint(1, 40))
            k = rng.randrange(len(text) + 1)
            text = text[:k] + text[i:j] + text[k:]
        elif op < 0.8:
            text = text[:i] + token + text[i:]
        else:
            text = text[:i] + token + text[i + rng.randint(1, 3):]
    return text


_SESSIONS = ["agent:main:main", "agent:main:telegram:dm:42", "victim", "attacker", 's"q', "é"]


def _agent_message(rng: random.Random, n: int) -> object:
    k = rng.random()
    if k < 0.35:
        return {"role": "user", "content": f"q{n} " + rng.choice(
            ["hi", "<b>&x</b>", "\u2028", "x" * rng.randint(0, 200), "é中文", "\\\"", "\\u006d"])}
    if k < 0.5:
        return {"role": "assistant", "content": f"a{n}", "tool_calls": [{"id": f"c{n}", "type": "function",
                "function": {"name": "sessions_spawn", "arguments": go_json({"p": n})}}]}
    if k < 0.6:
        return {"role": "tool", "tool_call_id": f"c{n - 1}", "content": go_json(
            {"status": "accepted", "childSessionKey": "agent:main:subagent:" + rng.choice("ab")})}
    if k < 0.75:   # what the shortcuts look for, inside a message
        return {"role": "user", "content": [{"type": "text", "text": go_json({"messages": [n]})},
                                            {"session_id": rng.choice(_SESSIONS), "messages": [1]}]}
    return {"role": "user", "content": rng.choice([None, 12, 1.5, True, [], {}]),
            "session_id": rng.choice(_SESSIONS)}


def _irregular(rng: random.Random, text: str) -> str:
    """An ai_log text the producers do not write, each a trap for one assumption."""
    at = text.find(',"messages":[')
    if at < 0:
        return text
    return rng.choice([
        text.replace(',"messages":[', ', "messages": [', 1),          # whitespace
        text.replace(',"messages":[', ',"\\u006dessages":[', 1),      # an escaped key
        text[:-1] + ',"messages":[{"role":"user","content":"dup"}]}',   # the key twice
        "{" + text[at:],                                                # {,"messages"
        text + '{"x":1}',                                               # two objects
        text[:at] + ',"messages":[1]garbage' + text[at + 13:],          # a list then garbage
        text[:at] + ',"messages":"[cut [truncated] x"' + text[at + 13:].split("]", 1)[-1],
        text.replace('"messages":[', '"messages":[' + "[" * 1100 + "]" * 1100 + ",", 1),
        text.replace('"messages":[', '"messages":[' + "[" * 40, 1),  # never closed
    ])


def agent_log(seed: int, n: int) -> list[bytes]:
    """Seeded Higress lines of agents whose histories grow, are cut, edited in place,
    and copied from another session's (an attacker re-sending a victim's history with
    the victim's id nested in its last message); some ai_logs irregular, some lines
    forged through the User-Agent, with invalid UTF-8, NULs, a BOM or CR, or cut."""
    rng = random.Random(seed)
    histories: dict[str, list] = {s: [] for s in _SESSIONS}
    lines = []
    for i in range(n):
        sid = rng.choice(_SESSIONS)
        h = histories[sid]
        r = rng.random()
        if r < 0.6:
            h = h + [_agent_message(rng, i)]
        elif r < 0.68 and h:
            h = h[:rng.randrange(len(h))]
        elif r < 0.78:
            src = rng.choice(_SESSIONS)
            h = list(histories[src]) + [{"role": "user", "content": {"session_id": src}}]
        elif r < 0.84 and h:
            h = list(h)
            h[rng.randrange(len(h))] = _agent_message(rng, i)
        histories[sid] = h
        ai = {"input_token": rng.choice([10 + i, 2**40]), "output_token": 5,
              "model": rng.choice(["gpt-4o", "unknown-model"]), "messages": h,
              "answer": f"ans {i}", "session_id": sid}
        if rng.random() < 0.08:
            del ai["session_id"]
        text = go_json(ai)
        if rng.random() < 0.15:
            text = _irregular(rng, text)
        outer = {"ai_log": text, "authority": "llm", "path": "/v1/chat/completions",
                 "request_id": f"r{i % 20}", "response_code": "200",
                 "start_time": f"2026-02-01T09:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
                 "user_agent": "ua"}
        if rng.random() < 0.1:   # the ai_log escaped ASCII-only by another producer
            line = json.dumps(outer, separators=(",", ":")).encode()
        else:
            line = go_json(outer).encode()
        k = rng.random()
        if k < 0.03:
            line = line.replace(b'"user_agent":"ua"', b'"user_agent":"ua\xff\xfe"')
        elif k < 0.05:
            line = b"\x00" * 3 + line + b"\r"
        elif k < 0.06:
            line = b"\xef\xbb\xbf" + line
        elif k < 0.08:   # a forged ai_log after the genuine one, through the User-Agent
            line = line.replace(b'"user_agent":"ua"', b'"user_agent":"x","ai_log":"'
                                + go_json({"input_token": 1, "messages": h, "session_id": "victim"})
                                .replace('"', '\\"').encode() + b'"')
        elif k < 0.09:
            line = line[:len(line) // 2]
        lines.append(line)
    return lines


def _outcome(raw: bytes) -> tuple:
    return parse_outcome(raw, READ_TIME)


class ParseShortcutsAttack(unittest.TestCase):
    def setUp(self) -> None:
        # Lines of any length take the history shortcuts (the generated ones are short).
        patcher = mock.patch.object(parse, "HISTORY_MIN_BYTES", 0)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_agent_lines_parse_as_they_do_without_either_history_shortcut(self):
        """Every line of seeded agent logs (above) gives, with both history caches warm
        (the ai_log's decoded messages, history.CACHE; the line's bytes, history.RAW),
        exactly what it gives with neither: the same request type for type, or the
        same bad line (kind and detail), or the same skip."""
        taken = 0
        for seed in range(3):
            history.CACHE.clear()
            history.RAW.clear()
            for n, raw in enumerate(agent_log(SEED + seed, 500)):
                with mock.patch.object(parse, "shorten", lambda raw: None), \
                        mock.patch.object(parse, "decode_ai_log", lambda text: None):
                    want = _outcome(raw)
                before = len(history.RAW.items) and history.shorten(raw) is not None
                got = _outcome(raw)
                taken += bool(before)
                self.assertEqual(got[0], want[0], (seed, n, raw[:300]))
                if got[0] == "request":
                    self.assertTrue(same_json(got[1], want[1]), (seed, n, raw[:300]))
                else:
                    self.assertEqual(got, want, (seed, n, raw[:300]))
        history.CACHE.clear()
        history.RAW.clear()
        self.assertGreater(taken, 300)   # the byte shortcut ran, not only the whole parse


class HistoryCacheAttack(unittest.TestCase):
    def setUp(self) -> None:
        # Lines of any length take the history shortcuts (the generated ones are short).
        patcher = mock.patch.object(parse, "HISTORY_MIN_BYTES", 0)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_an_ai_log_missing_its_first_member_is_a_bad_line_not_a_request(self):
        """``{,"messages":[...]...}`` is not JSON (a member dropped, its comma kept): the
        whole decode refuses it, so the line is bad_ai_log. history.py decoded the part
        before ``,"messages":[`` plus ``}``, i.e. ``{}``, took it for an object and
        returned a request: a line the spec calls bad input became a stored round."""
        rng = random.Random(SEED)
        for n in range(200):
            sid = f"s{n % 7}"
            messages = [_message(rng, "AB") for _ in range(rng.randint(0, 6))]
            ai = {"input_token": 10 + n, "messages": messages, "model": "gpt-4o",
                  "output_token": 3, "session_id": sid}
            good = go_json(ai)
            at = good.index(',"messages":[')
            bad = "{" + rng.choice(["", " ", "\n", "\t", "\r"]) + good[at:]
            for warm in (False, True):
                history.CACHE.clear()
                if warm:   # the session's previous request is cached: the reuse path
                    parse_line(json.dumps({"ai_log": good}).encode(), READ_TIME)
                with self.subTest(n=n, warm=warm):
                    self.assertIsNone(history.decode_ai_log(bad, history.HistoryCache()))
                    with self.assertRaises(ValueError) as whole:
                        _decode(bad)
                    with self.assertRaises(BadLine) as got:
                        parse_line(json.dumps({"ai_log": bad}).encode(), READ_TIME)
                    self.assertEqual(got.exception.kind, "bad_ai_log")
                    self.assertEqual(got.exception.detail, str(whole.exception)[:120])
        history.CACHE.clear()

    def test_mutated_ai_logs_decode_as_the_whole_decode_or_not_at_all(self):
        """Seeded ai_logs of three sessions whose lists grow, are copied from one another
        (one session's text a prefix of another's) and carry nested "session_id" and
        "messages" keys, cut and spliced around the structure (members dropped with their
        commas, spans repeated, tokens inserted): the fast path gives the whole decode's
        value type for type, or None where the whole decode raises."""
        rng = random.Random(SEED + 1)
        cache = history.HistoryCache(limit=16 * 2**10)
        lists: dict[str, list] = {s: [] for s in "ABC"}
        fast = 0
        for _ in range(4000):
            sid = rng.choice("ABC")
            r = rng.random()
            if r < 0.55:
                lists[sid] = lists[sid] + [_message(rng, "ABC")]
            elif r < 0.65 and lists[sid]:
                lists[sid] = list(lists[sid])
                lists[sid][rng.randrange(len(lists[sid]))] = _message(rng, "ABC")
            elif r < 0.7:
                lists[sid] = lists[sid][:rng.randrange(len(lists[sid]) + 1)]
            elif r < 0.8:   # another session's whole history, then its own message
                lists[sid] = lists[rng.choice("ABC")] + [_message(rng, "ABC")]
            ai = {"input_token": 7, "messages": lists[sid], "model": "gpt-4o",
                  "session_id": rng.choice([sid, sid, sid, "A", 5])}
            text = go_json(ai)
            if rng.random() < 0.4:
                text = _mutated(rng, text)
            got = history.decode_ai_log(text, cache)
            if got is None:
                continue
            fast += 1
            try:
                want = _decode(text)
            except (ValueError, RecursionError):
                self.fail(f"the whole decode refuses {text[:300]!r}, history.py gives "
                          f"{got!r:.200}")
            self.assertTrue(same_json(got, want), text[:300])
        self.assertGreater(fast, 2000)   # the shortcut ran, not only the fallback


# A --follow monitor whose commit process is killed in a catch-up (the OOM killer; the
# fault hook kills it at its third file), goes on following, then dies by SIGKILL (or a
# power cut) with a temp file of a commit in flight. Run in a fresh interpreter: the
# commit process is forked only where the monitor has no other thread.
_FOLLOWER = """
import io, os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agent_session_monitor.errors import MonitorError
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.store import durable
log, out = sys.argv[2], Path(sys.argv[3])
config = MonitorConfig(log_paths=[log], output_dir=out, checkpoint_bytes=30000, follow=True)
with Monitor(config, err=io.StringIO()) as monitor:
    os.environ.update({durable.FAULT_ENV: "write:3", durable.FAULT_SCOPE_ENV: "child"})
    try:
        monitor.poll_once()
        sys.exit("the commit process was not killed")
    except MonitorError as e:
        assert "commit process" in str(e), e
    del os.environ[durable.FAULT_ENV], os.environ[durable.FAULT_SCOPE_ENV]
    monitor.poll_once()   # follow mode goes on: the next pass commits
    durable._open_temp(out, b"half a session file")   # a commit in flight...
    os.kill(os.getpid(), signal.SIGKILL)                # ...when the power goes
"""


class WritingMarkAttack(TempDirTest):
    def test_a_follower_that_outlived_its_commit_process_leaves_the_mark_when_killed(self):
        """The commit process's death is cleaned up by a sweep of the temp files, which
        took the writing mark with them (a temp name) while the monitor went on
        writing: killed later, it left temp files with no mark, and every cron pass
        after it skipped the sweep, so they stayed for good (fails before: one .tmp-
        file left after the cron pass)."""
        log = self.tmp / "access.log"
        write_lines(log, [make_line(n, session=f"s{n % 150}", history=1 + n // 150, pad=150)
                          for n in range(600)])
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASM_")}
        run = subprocess.run([sys.executable, "-c", _FOLLOWER, str(ROOT), str(log), str(self.out)],
                             env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, -signal.SIGKILL, run.stderr)
        self.assertTrue([n for n in os.listdir(self.out) if n.startswith(".tmp-") and n != ".tmp-writing"])
        code, _out, err = self.run_monitor(log)   # the next cron pass
        self.assertEqual(code, 0, err)
        self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".tmp-")], [])


# main.py with a SIGTERM sent to itself in the middle of every fork it makes (an at-fork
# hook of the parent): what a ``systemctl stop`` or a Ctrl-C does when it happens to
# come while a parse worker or a commit process is being forked.
_STOPPED_WHILE_FORKING = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGTERM))
from agent_session_monitor.monitor_cli import main
sys.exit(main(sys.argv[2:]))
"""


class StopWhileForking(TempDirTest):
    def stop_while_forking(self, env: dict, *extra: str) -> subprocess.CompletedProcess:
        log = self.tmp / "access.log"
        write_lines(log, [make_line(n, session=f"s{n % 5}", history=1 + n // 5) for n in range(40)])
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ASM_")}
        clean.update(env)
        argv = [sys.executable, "-c", _STOPPED_WHILE_FORKING, str(ROOT), "--log-path", str(log),
                "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp), "-q", "--follow",
                "--refresh-interval", "0.05", *extra]
        try:
            return subprocess.run(argv, env=clean, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            self.fail("the monitor went on following after a SIGTERM that came during a fork")

    def test_a_stop_during_the_parse_workers_fork_stops_the_monitor(self):
        """The parse worker was forked with SIGINT/SIGTERM deliverable: the handler's
        KeyboardInterrupt was raised inside an at-fork hook of the parent (logging's
        _releaseLock), where Python ignores it ("Exception ignored in"), so the stop was
        lost and the monitor followed on until SIGKILL (fails before: the 30 s timeout;
        seen without the hook in 1-3 of 40 stops of a follower forking every pass)."""
        run = self.stop_while_forking({"ASM_PARSE_AHEAD_BYTES": "0", "ASM_COMMIT_PROCESS": "0"})
        self.assertEqual(run.returncode, 143, run.stderr)
        self.assertIn("stopped; state saved.", run.stderr)
        self.assertNotIn("Exception ignored", run.stderr)

    def test_a_stop_during_the_commit_process_fork_stops_the_monitor(self):
        run = self.stop_while_forking({"ASM_PARSE_AHEAD_BYTES": "-1"}, "--checkpoint-bytes", "2000")
        self.assertEqual(run.returncode, 143, run.stderr)
        self.assertIn("stopped; state saved.", run.stderr)
        self.assertNotIn("Exception ignored", run.stderr)


if __name__ == "__main__":
    unittest.main()
