"""The shortcuts a checkpoint's commit takes to save CPU (ondisk.py's type-exact
comparison and derived buckets, the index rows of one-round sessions and groups, rows
prepared without a snapshot of the rounds' text) give exactly what their plain
definitions give: seeded generated values and documents, compared type-exactly."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import unittest

from agent_session_monitor.pricing.cost import bucket_counts, usage_buckets
from agent_session_monitor.store import fulltext, index, ondisk
from agent_session_monitor.store.sessions import dump_document
from tests.helpers import ROOT, TempDirTest, load_store

CASES = 3000
LEAVES = ["q", "A", "", "北京", 1, 1.0, True, 0, False, 0.0, -0.0, None, 2**64, 1e308,
          float("inf")]


def plain_same(a: object, b: object) -> bool:
    """ondisk.same_json by definition: one recursive call per member; dict keys in the same
    order (a reference gives the referenced order back: tests/test_faithful_key_order)."""
    if type(a) is not type(b):
        return False
    if type(a) is str or type(a) is int or type(a) is bool or a is None:
        return a == b
    if type(a) is float:
        return repr(a) == repr(b)
    if type(a) is list:
        return len(a) == len(b) and all(plain_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return list(a) == list(b) and all(plain_same(v, b[k]) for k, v in a.items())
    return a == b


def value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.random()
    if depth > 3 or pick < 0.5:
        return rng.choice(LEAVES)
    if pick < 0.75:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice("abc"): value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def look_alike(rng: random.Random, v: object) -> object:
    """A copy of ``v``, now and then with one thing changed into something == may take
    for the same (1 for True, 0.0 for -0.0, another key order, a member more)."""
    swaps = {1: [True, 1.0], True: [1], 0: [False, 0.0, -0.0], "q": ["A", "q "]}
    if isinstance(v, list):
        out = [look_alike(rng, x) for x in v]
        if rng.random() < 0.05:
            out.append("q")
        return out
    if isinstance(v, dict):
        items = [(k, look_alike(rng, x)) for k, x in v.items()]
        if rng.random() < 0.1:
            items.reverse()
        return dict(items)
    if rng.random() < 0.15:
        try:
            return rng.choice(swaps.get(v, [v]))
        except TypeError:   # unhashable: never here, leaves are hashable
            return v
    if isinstance(v, str):
        return "".join(v)   # equal, not the same object
    return v


def round_doc(rng: random.Random, n_rounds: int) -> dict:
    rounds = []
    for i in range(n_rounds):
        cost = rng.choice([None, 0.0, -0.0, 1, 0, 2.5, 1e-9, 1e300, rng.random()])
        rnd = {
            "key": f"sha256:{rng.getrandbits(128):032x}",
            "timestamp": f"2026-02-01T{rng.randint(0, 2):02d}:{rng.randint(0, 59):02d}:00.000Z",
            "model": rng.choice(["gpt-4o", "claude", None, "m\ud800"]),
            "consumer": rng.choice([None, "alice"]),
            "buckets": {name: rng.choice([0, 5, 1000, -3, 2**63])
                        for name in rng.sample(ondisk._BUCKET_NAMES, rng.randint(0, 6))},
            "cost_usd": cost,
            "has_tool_calls": rng.random() < 0.3,
            "question": rng.choice([None, "hello 北京", [{"type": "text", "text": "x"}]]),
            "answer": rng.choice([None, "sunny", ""]),
        }
        if rng.random() < 0.2:
            rnd["tool_calls"] = [{"function": {"name": "f", "arguments": '{"q": 1}'}}]
        rounds.append(rnd)
    return {"session_id": rng.choice(["agent:main:main", "u-1", "agent:w:telegram:direct:1"]),
            "rounds": rounds, "created_at": rounds[0]["timestamp"] if rounds else None,
            "updated_at": rounds[-1]["timestamp"] if rounds else None,
            "total_cost_usd": 1.5, "unpriced_rounds": 0, "model": "gpt-4o",
            "models": ["gpt-4o"], "consumers": []}


def plain_rows(doc: dict) -> tuple[list[tuple], list[tuple], tuple]:
    """usage rows, round_usage rows (sid 0) and the session row's sums, by definition:
    every summed column a plain sum over the group's rounds, the cost an fsum."""
    per_round = []
    for r in doc["rounds"]:
        per_round.append((0, r["timestamp"], index.quarter_hour(r["timestamp"]),
                          index.sql_text(r.get("model")), index.sql_text(r.get("consumer")),
                          *index.round_sums(r)))
    groups: dict[tuple, list] = {}
    for row in per_round:
        groups.setdefault(row[2:5], []).append(row)
    usage = []
    for group, members in groups.items():
        sums = []
        for i in range(5, 20):
            column = [m[i] for m in members]
            sums.append(math.fsum(column) if i == 17 else sum(column))
        usage.append((0, *group, *sums))
    totals = tuple(sum(row[i] for row in per_round) for i in range(6, 11))
    tool_calls = sum(row[-1] for row in per_round)
    return usage, per_round, (len(per_round), *totals, tool_calls)


def exact(rows: object) -> str:
    return repr(rows)   # type-exact: 1 is not 1.0, -0.0 is not 0.0


class CommitCpuPaths(unittest.TestCase):
    def setUp(self) -> None:
        self.rng = random.Random(20261130)

    def test_type_exact_comparison_agrees_with_its_plain_recursive_definition(self):
        rng = self.rng
        agreed = {True: 0, False: 0}
        for _ in range(CASES):
            a = value(rng)
            b = look_alike(rng, a) if rng.random() < 0.8 else value(rng)
            self.assertEqual(ondisk.same_json(a, b), plain_same(a, b), (a, b))
            self.assertEqual(ondisk.same_json(b, a), plain_same(b, a), (b, a))
            agreed[plain_same(a, b)] += 1
        # Both answers were exercised, many times.
        self.assertGreater(min(agreed.values()), CASES // 10)

    def test_a_message_nested_deeper_than_the_plain_recursion_went_is_still_compared(self):
        # The plain definition needed three frames per level and raised RecursionError
        # below json's own depth limit, which failed the whole commit.
        deep = json.loads("[" * 600 + '"x"' + "]" * 600)
        self.assertTrue(ondisk.same_json(deep, json.loads(json.dumps(deep))))
        doc = {"session_id": "s", "context_tip": None,
               "rounds": [{"key": "k", "timestamp": "t", "question": deep,
                           "messages": [{"role": "user", "content": json.loads(json.dumps(deep))}]}]}
        self.assertEqual(json.loads(dump_document(doc))["rounds"][0]["messages_refs"],
                         {"0": "question"})

    def test_derived_buckets_are_the_non_zero_buckets_of_usage_buckets(self):
        rng = self.rng
        counts = [0, 1, 7, 1000, -5, True, False, "12", "x", 2.5, None, 2**64]
        for _ in range(CASES):
            rnd = {name: rng.choice(counts) for name in
                   ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")}
            details = {k: rng.choice(counts) for k in rng.sample(
                ["cached_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                 "cached_content_token_count"], rng.randint(0, 3))}
            if rng.random() < 0.3:
                details["cache_creation"] = {"ephemeral_1h_input_tokens": rng.choice(counts),
                                             "ephemeral_5m_input_tokens": rng.choice(counts)}
            rnd["input_token_details"] = rng.choice([details, None, "odd"])
            rnd["output_token_details"] = rng.choice([
                None, {}, {"reasoning_tokens": rng.choice(counts)},
                {"thoughts_token_count": rng.choice(counts)}])
            args = [ondisk._count(rnd[k]) for k in ("input_tokens", "output_tokens",
                                                    "cached_tokens", "reasoning_tokens")]
            ind, outd = rnd["input_token_details"], rnd["output_token_details"]
            args += [ind if isinstance(ind, dict) else None, outd]
            whole = usage_buckets(*args)
            self.assertEqual(bucket_counts(*args), tuple(whole.as_dict().values()))
            expected = {k: v for k, v in whole.as_dict().items() if v}
            derived = ondisk._derived_buckets(rnd)
            self.assertEqual(list(derived.items()), list(expected.items()))

    def test_rows_of_one_round_sessions_and_groups_are_their_plain_sums(self):
        rng = self.rng
        for i in range(CASES // 3):
            doc = round_doc(rng, rng.choice([0, 1, 1, 1, 2, 3, 6]))
            usage, per_round, sums = plain_rows(doc)
            rows, rounds = index.usage_rows(0, doc)
            self.assertEqual(exact(rows), exact(usage))
            self.assertEqual(exact(rounds), exact(per_round))
            row = index.session_row("f.json", doc, 10, rounds)
            self.assertEqual(exact(row[5:11] + row[16:17]), exact(sums))

    def test_rows_prepared_without_a_snapshot_are_the_snapshots_rows(self):
        rng = self.rng
        for i in range(CASES // 30):
            docs = [(f"s{j}.json", round_doc(rng, rng.randint(0, 4)), j)
                    for j in range(rng.randint(0, 12))]
            with_copy = index.prepare_rows(docs, True)
            without = index.prepare_rows(docs, True, snapshot=False)
            self.assertEqual(exact([p[:5] for p in without]), exact([p[:5] for p in with_copy]))
            for a, b in zip(with_copy, without):
                self.assertEqual([(k, fulltext.round_text(r)) for k, r in a[5]],
                                 [(k, fulltext.round_text(r)) for k, r in b[5]])
                # The same rows, sid added, as one session at a time would have them.
            for name, doc, size in docs:
                rows, rounds = index.usage_rows(0, doc)
                prepared = next(p for p in without if p[0] == name)
                self.assertEqual(exact(prepared[2]), exact([r[1:] for r in rows]))
                self.assertEqual(exact(prepared[3]), exact([r[1:] for r in rounds]))
                self.assertEqual(exact(prepared[1]), exact(index.session_row(name, doc, size,
                                                                             rounds)))

    def test_a_session_file_is_json_dumps_of_its_compact_form(self):
        rng = self.rng
        for _ in range(CASES // 10):
            doc = round_doc(rng, rng.randint(0, 4))
            doc["context_tip"] = doc["rounds"][-1]["key"] if doc["rounds"] else None
            for r in doc["rounds"]:
                r["messages"] = [{"role": "user", "content": look_alike(rng, r["question"])}]
                r["messages_offset"] = 0
            data = dump_document(doc)
            try:
                expected = json.dumps(ondisk.compact(doc), ensure_ascii=False,
                                      separators=(",", ":"), allow_nan=False).encode("utf-8")
            except UnicodeEncodeError:   # a lone surrogate: escaped instead
                expected = json.dumps(ondisk.compact(doc), ensure_ascii=True,
                                      separators=(",", ":"), allow_nan=False).encode("ascii")
            except ValueError:   # inf in a value: dump_document drops that round's content
                continue
            self.assertEqual(data, expected)

    def test_remembered_prompt_refs_are_the_prompts_hashes(self):
        rng = self.rng
        prompts = ["You are Claude Code." * rng.randint(1, 50), "系统提示", "", "\ud800x",
                   ["block"], {"type": "text"}, "a" * 300]
        saved = ondisk.PROMPT_REF_CHARS
        try:
            for limit in (saved, 700):   # 700: the memory is emptied again and again
                ondisk.PROMPT_REF_CHARS = limit
                for _ in range(CASES // 10):
                    doc = round_doc(rng, rng.randint(1, 4))
                    for r in doc["rounds"]:
                        if rng.random() < 0.8:
                            r["system"] = rng.choice(prompts)
                    warm = ondisk.compact(doc)
                    ondisk._PROMPT_REFS.clear()
                    ondisk._PROMPT_CHARS = 0
                    self.assertEqual(exact(warm), exact(ondisk.compact(doc)))
                    for ref, prompt in warm.get("systems", {}).items():
                        self.assertTrue(ref.startswith(ondisk._ref(prompt)))
                    self.assertLessEqual(ondisk._PROMPT_CHARS, limit)
        finally:
            ondisk.PROMPT_REF_CHARS = saved


class DeeplyNestedMessages(TempDirTest):
    def test_a_question_nested_as_deep_as_the_parser_admits_is_stored_not_a_crash(self):
        # The plain comparison raised RecursionError from ~400 levels: main.py stopped
        # with an internal error, at the same line on every run after.
        lines = []
        for n, depth in enumerate((450, 900)):
            nested = "[" * depth + '"x"' + "]" * depth
            ai = ('{"model":"gpt-4o","input_token":100,"output_token":10,"messages":'
                  f'[{{"role":"user","content":{nested}}}],"question":{nested},'
                  f'"answer":"a","session_id":"deep-{depth}"}}')
            lines.append(json.dumps({"ai_log": ai, "request_id": f"r{n}",
                                     "start_time": "2026-02-01T09:00:00.000Z"}))
        log = self.tmp / "access.log"
        log.write_text("\n".join(lines) + "\n")
        done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--log-path", str(log),
                               "--output-dir", str(self.out), "--allow-log-dir", str(self.tmp)],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        docs = load_store(self.out)
        self.assertEqual(sorted(docs), ["deep-450", "deep-900"])
        for depth in (450, 900):
            # Deeper than the readers walk (nesting.MAX_DEPTH): the JSON text as logged.
            rnd = docs[f"deep-{depth}"]["rounds"][0]
            self.assertEqual(rnd["question"], "[" * depth + '"x"' + "]" * depth)
            self.assertEqual(rnd["nested_as_text"], ["messages", "question"])
            self.assertEqual(rnd["input_tokens"], 100)


if __name__ == "__main__":
    unittest.main()
