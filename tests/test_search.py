"""Finding a session: by model family and by what its conversation said.

Generated: a log of agent sessions in English, Chinese and hostile HTML through the
monitor, then searches for words drawn from the stored rounds, each compared with
what the stored questions, answers, reasoning and tool calls contain. Also: --no-content
indexes nothing, a Python without FTS5 says so and still searches ids, and hostile
query syntax is only ever text.
"""

from __future__ import annotations

import io
import json
import random
import re
import sqlite3
import unicodedata
import unittest
from unittest import mock

from tests import loggen
from tests.helpers import TempDirTest, ingest, load_store

from agent_session_monitor.store import fulltext
from agent_session_monitor.cli import main as cli_main
from agent_session_monitor.store.index import INDEX_NAME
from agent_session_monitor.reports.reader import StoreReader, model_family


class ModelFamily(unittest.TestCase):
    """The documented rule (README, "list"): a name, or a dated snapshot of it."""

    def test_a_name_matches_itself_and_its_dated_snapshots(self):
        for name, wanted in [("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
                             ("gpt-4o-mini", "gpt-4o-mini"),
                             ("claude-sonnet-4-20250514", "claude-sonnet-4"),
                             ("gpt-4-0613", "gpt-4"), ("o1-2024-12-17", "o1"),
                             ("openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
                             ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
                             ("GPT-4o-Mini-2024-07-18", "gpt-4o-mini"),
                             ("qwen-max-latest", "qwen-max"),
                             ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18")]:
            self.assertTrue(model_family(name, wanted), (name, wanted))

    def test_another_model_sharing_a_prefix_never_matches(self):
        for name, wanted in [("gpt-4o-mini-2024-07-18", "gpt-4o"),
                             ("claude-sonnet-4-5-20250929", "claude-sonnet-4"),
                             ("gpt-4o-2024-08-06", "gpt-4"), ("o1-mini", "o1"),
                             ("qwen-max", "qwen"), ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
                             ("dashscope/qwen-max", "openai/qwen-max"), ("o3-mini", "o3-")]:
            self.assertFalse(model_family(name, wanted), (name, wanted))


def _fold(text: str) -> str:
    """Lower case without diacritics, as the index's tokenizer compares."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.lower())
                   if not unicodedata.combining(c))


def _said(value: object) -> str:
    """The text of a question / answer: content blocks say their text (or nested
    content), not their ids or types."""
    if isinstance(value, list):
        return " ".join(_said(b.get("text") or b.get("content")) if isinstance(b, dict)
                        else _said(b) for b in value)
    return "" if value is None else str(value)


def _round_texts(doc: dict) -> str:
    """What a session said, straight from its rounds (independent of fulltext.py)."""
    parts = []
    for r in doc["rounds"]:
        for key in ("question", "answer", "reasoning"):
            parts.append(_said(r.get(key)))
        for call in r.get("tool_calls") or []:
            fn = call.get("function") or {}
            parts += [str(fn.get("name") or ""), str(fn.get("arguments") or "")]
    return _fold("\n".join(parts))


# Words as FTS5's unicode61 tokenizer cuts them: "_" separates (get_weather is two words).
_WORDS = re.compile(r"[a-z][a-z0-9]{3,}")
_HAN = re.compile(r"[\u4e00-\u9fff]{2,}")


class CjkSpacing(unittest.TestCase):
    def test_every_cjk_character_is_spaced_exactly_as_the_substitution_spaces_it(self):
        # session_text splits instead of substituting (speed): the text must not change.
        rng = random.Random(16)
        alphabet = "ab 1_\n。，北京東京한국語カナ\u3040\u30ff\ud7af\uf900"
        pattern = re.compile(fulltext._CJK.pattern)
        for _ in range(5000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            doc = {"rounds": [{"question": text}]}
            self.assertEqual(fulltext.session_text(doc), pattern.sub(r" \1 ", text))


class ContentSearch(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"
        with open(self.log, "wb") as f:
            for line, _e, _k in loggen.iter_records(seed=31, sessions=40, max_requests=10,
                                                   unsessioned_every=11):
                f.write(line)

    def cli(self, *argv: str, store=None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(["--data-dir", str(store or self.out), *argv], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def found(self, text: str, store=None) -> set[str]:
        code, out, err = self.cli("list", "--search", text, "--limit", "0", "--json",
                                  store=store)
        self.assertEqual(code, 0, err)
        return {r["session_id"] for r in json.loads(out)}

    def test_random_words_find_exactly_the_sessions_that_said_them(self):
        ingest(self.out, self.log)
        docs = load_store(self.out)
        said = {doc["session_id"]: _round_texts(doc) for doc in docs.values()}
        rng = random.Random(15)
        words = sorted({w for t in said.values() for w in _WORDS.findall(t)})
        han = sorted({h[i:i + 2] for t in said.values() for h in _HAN.findall(t)
                      for i in range(len(h) - 1)})
        self.assertGreater(len(words), 30)
        self.assertGreater(len(han), 10)
        queries = rng.sample(words, 25) + rng.sample(han, 10) + ["北京", "斐波那契"]
        queries += [f"{a} {b}" for a, b in zip(rng.sample(words, 5), rng.sample(words, 5))]
        for query in queries:
            terms = query.split()
            expected = set()
            for sid, text in said.items():
                tokens = set(re.findall(r"[^\W_]+", text))
                def has(term):
                    if _HAN.fullmatch(term):
                        return term in text   # CJK: a run of characters
                    return any(t.startswith(term) for t in tokens)   # a word, by prefix
                if all(has(t) for t in terms):
                    expected.add(sid)
            ids = {sid for sid in said if query.lower() in _fold(sid)
                   or any(query.lower() in m.lower() for m in docs_models(docs, sid))}
            self.assertEqual(self.found(query), expected | ids, query)

    def test_a_store_with_sessions_pending_after_a_crash_is_searched_whole(self):
        ingest(self.out, self.log)
        before = self.found("北京")
        self.assertTrue(before)
        db = sqlite3.connect(self.out / INDEX_NAME)
        names = [r[0] for r in db.execute("SELECT file FROM sessions LIMIT 3")]
        with db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('pending', ?)", (json.dumps(names),))
        db.close()
        self.assertEqual(self.found("北京"), before)   # the overlay carries the text index

    def test_hostile_query_syntax_is_only_text(self):
        ingest(self.out, self.log)
        for query in ['"', "*", "NEAR(a b)", "a OR b", "content_fts:1", "'; DROP TABLE",
                      "\x00", "\ud800", "a" * 5000, "^", "(", "AND", "", "-x", "--x"]:
            code, out, err = self.cli("list", f"--search={query}", "--json")
            self.assertEqual(code, 0, (query, err))
            json.loads(out)

    def test_a_quote_or_a_cjk_model_name_searches_model_names_not_their_json(self):
        # The index keeps a session's models as JSON text ('["gpt-4o", "o1"]', non-ASCII
        # as \u escapes): '"' matched every session, and "模型" none.
        lines = []
        for n, (sid, model) in enumerate((("a", "模型-x"), ("b", "gpt-4o"), ("c", "o1"))):
            ai = {"session_id": sid, "model": model, "input_token": 5, "output_token": 1}
            lines.append(json.dumps({"ai_log": json.dumps(ai), "request_id": f"r{n}",
                                     "start_time": f"2026-02-01T09:00:0{n}.000Z"}) + "\n")
        self.log.write_text("".join(lines))
        ingest(self.out, self.log)
        self.assertEqual(self.found("模型"), {"a"})
        self.assertEqual(self.found("gpt"), {"b"})
        for query in ('"', '", "', '4o", "o1', "[", "\\u6a21"):
            self.assertEqual(self.found(query), set(), query)

    def test_no_content_stores_and_indexes_nothing_of_the_conversation(self):
        code = self.run_monitor(self.log, extra=["--no-content", "-q"])[0]
        self.assertEqual(code, 0)
        db = sqlite3.connect(self.out / INDEX_NAME)
        self.assertEqual(db.execute(f"SELECT COUNT(*) FROM {fulltext.TABLE}").fetchone()[0], 0)
        db.close()
        self.assertEqual(self.found("北京"), set())
        self.assertEqual(self.found("weather"), set())
        # Ids and models are not content: still found.
        self.assertTrue(self.found("agent:main"))

    def test_without_fts5_search_says_so_and_matches_ids_and_models(self):
        with mock.patch.object(fulltext, "available", return_value=False):
            ingest(self.out, self.log)
            code, out, err = self.cli("list", "--search", "gpt-4o")
            self.assertEqual(code, 0)
            self.assertIn("no FTS5", err)
            self.assertIn("gpt-4o", out)
        # An index made where FTS5 exists, read where it does not: the same answer.
        other = self.tmp / "other"
        ingest(other, self.log)
        with mock.patch.object(fulltext, "available", return_value=False):
            code, out, err = self.cli("list", "--search", "weather", store=other)
            self.assertEqual(code, 0)
            self.assertIn("no FTS5", err)

    def test_updates_and_rebuilds_keep_the_text_index_in_step(self):
        lines = self.log.read_bytes().splitlines(keepends=True)
        half = self.tmp / "half.log"
        half.write_bytes(b"".join(lines[: len(lines) // 2]))
        ingest(self.out, half)
        with open(half, "ab") as f:
            f.write(b"".join(lines[len(lines) // 2:]))
        ingest(self.out, half)          # sessions updated in place
        first = {q: self.found(q) for q in ("北京", "weather", "refund", "coupon")}
        reader = StoreReader.open(self.out)
        try:
            count = reader.db.execute(f"SELECT COUNT(*) FROM {fulltext.TABLE}").fetchone()[0]
            mapped = reader.db.execute(f"SELECT COUNT(*) FROM {fulltext.ROUNDS}").fetchone()[0]
            rounds = reader.db.execute("SELECT SUM(rounds) FROM sessions").fetchone()[0]
        finally:
            reader.close()
        # One row per round, never a stale copy: the second pass added only new rounds.
        self.assertEqual(mapped, rounds)
        self.assertLessEqual(count, rounds)
        (self.out / INDEX_NAME).unlink()
        for suffix in ("-wal", "-shm"):
            (self.out / (INDEX_NAME + suffix)).unlink(missing_ok=True)
        # No index: readers index the files in memory; the answers are the same.
        self.assertEqual({q: self.found(q) for q in first}, first)


def docs_models(docs: dict, sid: str) -> list[str]:
    for doc in docs.values():
        if doc["session_id"] == sid:
            return doc.get("models") or []
    return []


class SearchOnTheWeb(TempDirTest):
    def test_the_overview_search_box_searches_the_conversations(self):
        from tests.test_web import Running

        log = self.tmp / "access.log"
        with open(log, "wb") as f:
            for line, _e, _k in loggen.iter_records(seed=31, sessions=20, max_requests=6):
                f.write(line)
        ingest(self.out, log)
        server = Running(self.out)
        self.addCleanup(server.close)
        status, _, body = server.get("/api/sessions?q=%E5%8C%97%E4%BA%AC")   # 北京
        self.assertEqual(status, 200)
        found = {s["session_id"] for s in json.loads(body)["sessions"]}
        said = {d["session_id"] for d in load_store(self.out).values()
                if "北京" in _round_texts(d)}
        self.assertEqual(found, said)
        self.assertTrue(found)
        status, _, page = server.get("/?q=%E5%8C%97%E4%BA%AC")
        self.assertIn('placeholder="id, model or words said"', page.decode())


if __name__ == "__main__":
    unittest.main()


class IncrementalTextIndex(unittest.TestCase):
    """A pass writes to the full-text table only what the new rounds said: the work of a
    pass does not grow with the session's history. Counted in the rows and characters
    each pass changes in the table's stored content (FTS5's ``_content`` shadow table),
    not in time."""

    def setUp(self):
        if not fulltext.available():
            self.skipTest("this Python's SQLite has no FTS5")

    @staticmethod
    def _content(db: sqlite3.Connection) -> dict:
        return dict(db.execute(f"SELECT id, c0 FROM {fulltext.TABLE}_content"))

    def test_a_pass_on_a_long_session_writes_only_its_new_rounds_text(self):
        import tempfile
        from pathlib import Path
        from agent_session_monitor.store.index import Index
        rng = random.Random(7)
        words = ["refund", "weather", "北京", "coupon", "invoice", "déjà", "kubectl"]

        def rnd(i: int) -> dict:
            return {"key": f"k{i}", "timestamp": f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:"
                    f"{i % 60:02d}.000Z", "model": "gpt-4o",
                    "question": " ".join(rng.choices(words, k=50)) + f" q{i}",
                    "answer": "answer " * 40 + f"a{i}", "reasoning": None,
                    "tool_calls": [{"id": f"c{i}", "function": {"name": "bash",
                                                                "arguments": f"ls t{i}"}}]}

        measured = {}   # session length after the pass -> (rows changed, characters)
        with tempfile.TemporaryDirectory() as tmp:
            index = Index(Path(tmp))
            index.rebuild()
            doc = {"session_id": "long", "rounds": []}
            for n in range(1, 501):
                doc["rounds"].append(rnd(n - 1))
                watch = n in (2, 50, 250, 500)
                before = self._content(index.db) if watch else None
                index.update([("long.json", doc, 0)])
                if watch:
                    after = self._content(index.db)
                    changed = {k: v for k, v in after.items() if before.get(k) != v}
                    gone = set(before) - set(after)
                    measured[n] = (len(changed) + len(gone), sum(map(len, changed.values())))
            # The index still finds words of the first and the last round, and a word
            # of each in one search (every word somewhere in the session).
            for words_of in (["q0"], ["q499"], ["q0", "a499"]):
                where, params = fulltext.where(" ".join(words_of))
                self.assertEqual(index.db.execute(f"SELECT COUNT(*) FROM sessions WHERE {where}",
                                                  params).fetchone()[0], 1, words_of)
            index.close()
        self.assertEqual({n: rows for n, (rows, _) in measured.items()},
                         {2: 1, 50: 1, 250: 1, 500: 1}, measured)
        chars = [c for _, c in measured.values()]
        # The 500th round's pass writes what one round said, as the 2nd round's did.
        self.assertLess(max(chars), 2 * min(chars), measured)
