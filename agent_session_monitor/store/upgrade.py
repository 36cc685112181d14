"""Bring a store written by an earlier version up to the current session schema and
on-disk layout.

Schema 1 (before the faithful layout) left fields out of rounds: the answer and tool
calls moved into the next round, the question into the last message, round numbers
implied. ``store.read_document`` already reads that layout back whole; this module
rewrites such files in the current layout (every original field on disk), adds what
schema 2 records (normalised ``tokens`` totals, ``priced_by`` summaries) and re-splits the
usage of Gemini rounds whose cached content an earlier version did not read. A file of
the current schema in an older on-disk layout (:data:`ondisk.LAYOUT`: what repeats is
left out of each file differently) is read whole and written again as it is, in the
current layout.

It runs once, under the writer lock, before the monitor's first pass. Each file is
replaced atomically and indexed as the monitor does (marked pending first), and a file
already at the current schema and layout is left alone, so a run killed at any point
converges: the next one finishes the rest. The index records completion
(``meta.store_schema``: ``<schema>.<layout>``).
"""

from __future__ import annotations

import json
import os
from typing import Callable

from .index import PRICING_EPOCH, REPRICING, Index, epoch_value as _epoch
from .names import is_session_file
from ..pricing.cost import Buckets, bucket_cost, usage_buckets
from ..pricing.table import PriceTable
from .document import SCHEMA, in_document_order, in_round_order, summarise
from .ondisk import LAYOUT
from .sessions import dump_document, parse_document
from .durable import atomic_write_many, open_regular

BATCH = 200
_TEXT_DEFAULT = {"question": "", "answer": "", "reasoning": ""}


STORE_VERSION = f"{SCHEMA}.{LAYOUT}"


def upgrade_needed(index: Index) -> bool:
    return index.meta("store_schema") != STORE_VERSION


def upgrade_store(directory, index: Index, table: PriceTable, store_content: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> tuple[int, bool]:
    """Rewrite every session file older than :data:`SCHEMA` or :data:`LAYOUT`; returns
    how many, and whether a stored cost changed (Gemini's cache reads split again).

    A changed cost may be lower: /metrics' cost counters must then start a new pricing
    epoch, as after ``--reprice`` (ingest/maintenance.py). Before the first such file is
    written the index says a reprice is in progress (:data:`REPRICING`: /metrics shows
    no cost meanwhile, and a run killed here says so at its next start); the caller ends
    it (maintenance.end_upgrade_reprice)."""
    names = sorted(n for n in os.listdir(directory) if is_session_file(n))
    upgraded, repriced = 0, False
    batch: list[tuple[str, dict, bytes]] = []
    for i, name in enumerate(names, 1):
        if progress:
            progress(i, len(names))
        try:
            data, mtime = _read(directory / name)
            if _version(data) >= (SCHEMA, LAYOUT):
                continue
            doc = parse_document(data, mtime)
        except (OSError, ValueError):
            continue   # the monitor moves an unreadable file aside when it next needs it
        if _schema(doc) < SCHEMA:
            if upgrade_document(doc, table, store_content) and not repriced:
                repriced = True
                if index.meta(REPRICING) is None:
                    index.set_meta(REPRICING, str(_epoch(index.meta(PRICING_EPOCH)) + 1))
            # the summaries schema 2 adds, in a new document's place: what a later run
            # writes from this file is then the same bytes
            doc = in_document_order(doc)
        new = dump_document(doc)
        if new == data:
            continue   # a document no layout fits is written as it was: nothing to do
        batch.append((name, doc, new))
        upgraded += 1
        if len(batch) >= BATCH:
            _commit(directory, index, batch)
            batch = []
    _commit(directory, index, batch)
    index.set_meta("store_schema", STORE_VERSION)
    return upgraded, repriced


def upgrade_document(doc: dict, table: PriceTable, store_content: bool = True) -> bool:
    """A document read from a schema-1 file (expanded) -> the current schema, in place;
    whether a round's cost changed."""
    repriced = False
    rounds = doc.get("rounds") or []
    for rnd in rounds:
        for name, default in _TEXT_DEFAULT.items():
            rnd.setdefault(name, default if store_content else None)
        rnd.setdefault("tool_calls", [])
        rnd.setdefault("input_token_details", {})
        rnd.setdefault("output_token_details", {})
        before = rnd.get("cost_usd")
        _resplit_gemini_cache(rnd, table)
        repriced = repriced or rnd.get("cost_usd") != before
    # In a new round's key order (the defaults above went to the end): a later run that
    # reads the file and writes it again must write the same bytes.
    doc["rounds"] = [in_round_order(rnd) for rnd in rounds]
    summarise(doc)
    doc["schema"] = SCHEMA
    return repriced


def _resplit_gemini_cache(rnd: dict, table: PriceTable) -> None:
    """Gemini logs its cache reads only as ``cached_content_token_count``, which schema 1
    did not read: those tokens were priced as uncached input. Split them again and
    reprice the round (recording the table that did it)."""
    details = rnd.get("input_token_details")
    if not isinstance(details, dict) or "cached_content_token_count" not in details:
        return
    buckets = usage_buckets(rnd.get("input_tokens") or 0, rnd.get("output_tokens") or 0,
                            rnd.get("cached_tokens"), rnd.get("reasoning_tokens"), details,
                            rnd.get("output_token_details"))
    old = Buckets.from_dict(rnd.get("buckets") or {})
    if buckets == old:
        return
    rnd["buckets"] = {k: v for k, v in buckets.as_dict().items() if v}
    rnd["cached_tokens"] = buckets.cache_read
    found = table.lookup(rnd["model"]) if rnd.get("model") else None
    if found is not None:
        rnd["cost_usd"] = bucket_cost(buckets, found[1])
        if table.provenance(found[0]):
            rnd["priced_by"] = table.provenance(found[0])


def _schema(doc: dict) -> int:
    value = doc.get("schema")
    return value if type(value) is int else 1


def _commit(directory, index: Index, batch: list[tuple[str, dict, bytes]]) -> None:
    if not batch:
        return
    index.mark_pending(name for name, _doc, _data in batch)
    atomic_write_many(directory, [(directory / name, data) for name, _doc, data in batch])
    index.update([(name, doc, len(data)) for name, doc, data in batch])


def _read(path) -> tuple[bytes, float]:
    """A session file's bytes and mtime (never through a symlink: store.read_document)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read(), os.fstat(f.fileno()).st_mtime


def _version(data: bytes) -> tuple[int, int]:
    """(schema, on-disk layout) a file says it is in (layout 0: before layouts were
    numbered; a file that is no JSON object: (0, 0), parse_document says what is wrong)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return 0, 0
    if not isinstance(doc, dict):
        return 0, 0
    schema, layout = doc.get("schema", 1), doc.get("layout")
    return (schema if type(schema) is int else 1), (layout if type(layout) is int else 0)
