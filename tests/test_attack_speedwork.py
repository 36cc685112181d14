"""Attacks on the speed work of issue 16: what each shortcut assumes, broken on purpose.

- history.py (the re-logged messages taken from the session's previous request): its
  result must be the whole decode's, type for type, for any text, and an ai_log that is
  not JSON must stay a bad line whatever the cache holds.
"""

from __future__ import annotations

import json
import random
import unittest

from tests.helpers import ROOT  # noqa: F401

from agent_session_monitor.ingest import history
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


class HistoryCacheAttack(unittest.TestCase):
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


if __name__ == "__main__":
    unittest.main()
