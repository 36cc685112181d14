"""Full-text search over what the conversations said, in the derived index (SQLite FTS5).

One row per round: its question, answer and reasoning and the names and arguments of its
tool calls. ``fts_rounds`` maps each row to its session (``sid``) and the round's key (the
hash of its log line, so a round's text never changes under it): a pass indexes only the
rounds whose keys the index has not seen and deletes those gone, so its cost follows the
new rounds, not the length of the conversation (a row per session had to be deleted and
written again whole, 22 MB for a 2,000-round session, on every new round). A search
still matches sessions: every word must occur somewhere in the session, each word
looked up on its own (:func:`where`). With ``main.py --no-content`` the rounds hold
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
ROUNDS = "fts_rounds"
SCHEMA = (f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(text, "
          "tokenize = 'unicode61 remove_diacritics 2')")
# rowid = the content_fts row of the round (none when the round says nothing).
ROUNDS_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {ROUNDS} (rowid INTEGER PRIMARY KEY, "
                 f"sid INTEGER NOT NULL, key TEXT NOT NULL); "
                 f"CREATE INDEX IF NOT EXISTS {ROUNDS}_sid ON {ROUNDS} (sid, key)")
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
    db.executescript(ROUNDS_SCHEMA)
    return True


def present(db: sqlite3.Connection) -> bool:
    """Whether this index has the table and this SQLite can use it (an index made where
    FTS5 exists, read where it does not, is searched by ids and models only)."""
    return available() and db.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                                      (TABLE,)).fetchone() is not None


def _text(value: object, depth: int = 0) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:FIELD_CHARS]
    if isinstance(value, list):   # content blocks
        if depth > TEXT_DEPTH:
            return ""   # deeper than any real content (an older store's hostile nesting)
        parts = []
        for block in value:
            if isinstance(block, dict):
                parts.append(_text(block.get("text") or block.get("content"), depth + 1))
            else:
                parts.append(_text(block, depth + 1))
        return " ".join(p for p in parts if p)[:FIELD_CHARS]
    if isinstance(value, dict):
        return _json_text(value)
    return str(value)[:FIELD_CHARS]


# Levels of content blocks indexed (real content has a few; fmt.TEXT_DEPTH likewise).
TEXT_DEPTH = 32


def _json_text(value: dict) -> str:
    # str() of a dict, as before; repr recurses, so a deep one is not indexed.
    try:
        return str(value)[:FIELD_CHARS]
    except RecursionError:
        return ""


def round_text(r: dict) -> str:
    """What one round said, as one text to index (spaced where a script has no spaces)."""
    return _clean(_round_text(r))


def _round_text(r: dict) -> str:
    parts = []
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
    if text.isascii():   # O(1): no CJK character to space out (most rounds)
        return text
    # " ".join of the split is _CJK.sub(r" \1 ", text) without a template expansion in
    # Python per character.
    return " ".join(_CJK.split(text))


def session_text(doc: dict) -> str:
    """What a session said, as one text (the rounds' texts, one per line)."""
    return "\n".join(t for t in (_round_text(r) for r in doc.get("rounds") or []
                                  if isinstance(r, dict)) if t)


def round_keys(doc: dict, snapshot: bool = True,
               texts: bool = False) -> list[tuple[str, dict | str]]:
    """(key, the fields of the round its text is made of) of every round, taken when the
    rows are prepared: the document may gain rounds afterwards while another process
    writes (a round's text is fixed by its key, so its fields are enough). Only those
    fields: the rows cross a pipe to the commit process, and a round's messages, the
    bulk of it, say nothing the index keeps. ``snapshot=False``: the round itself in
    place of that copy (its rows are written before it can change). ``texts``: its
    text (:func:`round_text`) in place of either; :func:`sync` takes all three."""
    if texts:
        return [(str(r.get("key") or f"@{i}"), round_text(r))
                for i, r in enumerate(doc.get("rounds") or []) if isinstance(r, dict)]
    if not snapshot:
        return [(str(r.get("key") or f"@{i}"), r)
                for i, r in enumerate(doc.get("rounds") or []) if isinstance(r, dict)]
    return [(str(r.get("key") or f"@{i}"), {name: r.get(name) for name in TEXT_FIELDS})
            for i, r in enumerate(doc.get("rounds") or []) if isinstance(r, dict)]


# The round fields :func:`round_text` reads.
TEXT_FIELDS = ("question", "answer", "reasoning", "tool_calls")


def sync(db: sqlite3.Connection, sid: int, rounds: list[tuple[str, dict]]) -> int:
    """Bring the session's rows up to ``rounds`` (from :func:`round_keys`, or with each
    round's text in its place: index.rows_ahead): index the
    rounds whose keys it has not seen, delete the rows of rounds it no longer has.
    Returns the characters written to the full-text table. The caller holds the
    transaction and has checked :func:`present`."""
    have: dict[str, list[int]] = {}
    for rowid, key in db.execute(f"SELECT rowid, key FROM {ROUNDS} WHERE sid = ?", (sid,)):
        have.setdefault(key, []).append(rowid)
    new = []
    for key, rnd in rounds:
        rowids = have.get(key)
        if rowids:
            rowids.pop()
        else:
            new.append((key, rnd))
    gone = [(rowid,) for rowids in have.values() for rowid in rowids]
    if gone:
        db.executemany(f"DELETE FROM {TABLE} WHERE rowid = ?", gone)
        db.executemany(f"DELETE FROM {ROUNDS} WHERE rowid = ?", gone)
    written = 0
    for key, rnd in new:
        rowid = db.execute(f"INSERT INTO {ROUNDS} (sid, key) VALUES (?, ?)",
                           (sid, key)).lastrowid
        text = rnd if type(rnd) is str else round_text(rnd)   # (index.rows_ahead made it)
        if text:
            db.execute(f"INSERT INTO {TABLE} (rowid, text) VALUES (?, ?)", (rowid, text))
            written += len(text)
    return written


def sync_many(db: sqlite3.Connection, sessions: list[tuple[int, list[tuple[str, dict]]]]) -> int:
    """:func:`sync` for many sessions (sid, rounds), in that order: the rows they have
    read in a few queries and the new ones written with one ``executemany`` per table,
    with the row ids one-by-one inserts would have got. Returns the characters written."""
    have: dict[int, dict[str, list[int]]] = {}
    sids = [sid for sid, _rounds in sessions]
    for i in range(0, len(sids), _SIDS_PER_QUERY):
        part = sids[i:i + _SIDS_PER_QUERY]
        # In any order: which of a key's rows is kept matters only when one is deleted,
        # and then every session goes through sync.
        for rowid, sid, key in db.execute(
                f"SELECT rowid, sid, key FROM {ROUNDS} WHERE sid IN "
                f"({','.join('?' * len(part))})", part):
            have.setdefault(sid, {}).setdefault(key, []).append(rowid)
    new = []
    for sid, rounds in sessions:
        seen = have.get(sid)
        if not seen:
            new.extend((sid, key, rnd) for key, rnd in rounds)
            continue
        for key, rnd in rounds:
            rowids = seen.get(key)
            if rowids:
                rowids.pop()
            else:
                new.append((sid, key, rnd))
        if any(seen.values()):
            # Rows of rounds gone: deleted between one session's inserts and the next's,
            # they free row ids SQLite would hand out again. Rare (a repair, a prune):
            # session by session, as SQLite would.
            return sum(sync(db, sid, rounds) for sid, rounds in sessions)
    top = db.execute(f"SELECT max(rowid) FROM {ROUNDS}").fetchone()[0] or 0
    if top + len(new) >= 2**62:   # near the largest row id, where SQLite picks at random
        return sum(sync(db, sid, rounds) for sid, rounds in sessions)
    keyed, texts = [], []
    written = 0
    for sid, key, rnd in new:
        top += 1   # the row id an insert without one gets: the largest so far, plus one
        keyed.append((top, sid, key))
        text = rnd if type(rnd) is str else round_text(rnd)   # (index.rows_ahead made it)
        if text:
            texts.append((top, text))
            written += len(text)
    db.executemany(f"INSERT INTO {ROUNDS} (rowid, sid, key) VALUES (?, ?, ?)", keyed)
    db.executemany(f"INSERT INTO {TABLE} (rowid, text) VALUES (?, ?)", texts)
    return written


_SIDS_PER_QUERY = 500   # below SQLite's oldest limit on bound values (999)


def delete(db: sqlite3.Connection, sids_sql: str, params: tuple = ()) -> None:
    """Delete the rows of the sessions ``sids_sql`` (a SELECT of sids) names."""
    db.execute(f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {ROUNDS} "
               f"WHERE sid IN ({sids_sql}))", params)
    db.execute(f"DELETE FROM {ROUNDS} WHERE sid IN ({sids_sql})", params)


def delete_all(db: sqlite3.Connection) -> None:
    db.execute(f"DELETE FROM {TABLE}")
    db.execute(f"DELETE FROM {ROUNDS}")


def _clean(text: str) -> str:
    """A string SQLite can bind (a lone surrogate from a client's JSON becomes U+FFFD)."""
    if text.isascii():   # O(1), no copy: ASCII holds no surrogate
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def terms(text: str) -> list[str]:
    """A user's search text as FTS5 queries, one per word (a prefix match for words, a
    phrase of characters for CJK); every one must match the session."""
    out = []
    for word in _WORD.findall(text):
        if _CJK.match(word):
            out.append('"' + " ".join(word) + '"')
        else:
            out.append('"' + word.replace('"', "") + '"*')
    return out


def query(text: str) -> str | None:
    """All of :func:`terms` as one FTS5 query (for a single text). None when the text
    has no word at all."""
    found = terms(text)
    return " AND ".join(found) if found else None


def where(text: str) -> tuple[str, list] | None:
    """An SQL condition on ``sid``: the sessions whose rounds, together, hold every word
    of ``text``. None when the text has no word at all."""
    found = terms(text)
    if not found:
        return None
    one = (f"sid IN (SELECT sid FROM {ROUNDS} WHERE rowid IN (SELECT rowid FROM {TABLE} "
           f"WHERE {TABLE} MATCH ?))")
    return "(" + " AND ".join([one] * len(found)) + ")", found
