"""Full-text search over what the conversations said, in the derived index (SQLite FTS5).

One row per session (its ``sid``): the question, answer and reasoning of every round and
the names and arguments of its tool calls. With ``main.py --no-content`` the rounds hold
none of that, so nothing is indexed. Each field is indexed up to ``FIELD_CHARS``
characters: enough for what people search for, while a pasted 5 MB file does not make
every update of its session slow.

Chinese, Japanese and Korean text has no spaces between words: each such character is
indexed as a token of its own and a query phrase matches them in sequence, so ``北京``
finds "我想去北京旅游". Other words match by prefix (``weath`` finds "weather").
Python builds without FTS5 still work: search then falls back to session ids and model
names, and says so (:func:`available`).
"""

from __future__ import annotations

import re
import sqlite3
from functools import lru_cache

FIELD_CHARS = 10_000
TABLE = "content_fts"
SCHEMA = (f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(text, "
          "tokenize = 'unicode61 remove_diacritics 2')")
MISSING = ("this Python's SQLite has no FTS5, so --search matches session ids and model "
           "names only (not what the conversations said)")

# Scripts written without spaces between words: one token per character.
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af])")
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+|\w+")


@lru_cache(maxsize=1)
def available() -> bool:
    """Whether this interpreter's SQLite has FTS5."""
    try:
        db = sqlite3.connect(":memory:")
        try:
            db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        finally:
            db.close()
        return True
    except sqlite3.Error:
        return False


def create(db: sqlite3.Connection) -> bool:
    """Create the table if FTS5 is there; whether the index has it."""
    if not available():
        return False
    db.execute(SCHEMA)
    return True


def present(db: sqlite3.Connection) -> bool:
    """Whether this index has the table and this SQLite can use it (an index made where
    FTS5 exists, read where it does not, is searched by ids and models only)."""
    return available() and db.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                                      (TABLE,)).fetchone() is not None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:FIELD_CHARS]
    if isinstance(value, list):   # content blocks
        parts = []
        for block in value:
            if isinstance(block, dict):
                parts.append(_text(block.get("text") or block.get("content")))
            else:
                parts.append(_text(block))
        return " ".join(p for p in parts if p)[:FIELD_CHARS]
    return str(value)[:FIELD_CHARS]


def session_text(doc: dict) -> str:
    """What a session said, as one text to index (spaced where a script has no spaces)."""
    parts = []
    for r in doc.get("rounds") or []:
        for key in ("question", "answer", "reasoning"):
            parts.append(_text(r.get(key)))
        for call in r.get("tool_calls") or []:
            if isinstance(call, dict):
                fn = call.get("function") if isinstance(call.get("function"), dict) else call
                args = fn.get("arguments") if "arguments" in fn else fn.get("input")
                if args is None:
                    continue   # --no-content keeps which tool ran, and indexes nothing
                parts.append(_text(fn.get("name")))
                parts.append(_text(args))
    text = "\n".join(p for p in parts if p)
    # " ".join of the split is _CJK.sub(r" \1 ", text) without a template expansion in
    # Python per character (the catch-up's main thread computes this for every session).
    return " ".join(_CJK.split(text)) if text else ""


def replace(db: sqlite3.Connection, rows: list[tuple[int, dict]]) -> None:
    """(sid, session document) -> its row, replacing the old one. The caller holds the
    transaction and has checked :func:`present`."""
    replace_texts(db, [(sid, row_text(doc)) for sid, doc in rows])


def row_text(doc: dict) -> str:
    """The text indexed for a session (computed apart from the write: index.prepare_rows)."""
    return _clean(session_text(doc))


def replace_texts(db: sqlite3.Connection, texts: list[tuple[int, str]]) -> None:
    """(sid, :func:`row_text`) -> its row, replacing the old one (none for empty text)."""
    db.executemany(f"DELETE FROM {TABLE} WHERE rowid = ?", [(sid,) for sid, _ in texts])
    db.executemany(f"INSERT INTO {TABLE} (rowid, text) VALUES (?, ?)",
                   [(sid, text) for sid, text in texts if text])


def _clean(text: str) -> str:
    """A string SQLite can bind (a lone surrogate from a client's JSON becomes U+FFFD)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def query(text: str) -> str | None:
    """A user's search text as an FTS5 query: every word must occur (a prefix match for
    words, a phrase of characters for CJK). None when the text has no word at all."""
    terms = []
    for word in _WORD.findall(text):
        if _CJK.match(word):
            terms.append('"' + " ".join(word) + '"')
        else:
            terms.append('"' + word.replace('"', "") + '"*')
    return " AND ".join(terms) if terms else None
