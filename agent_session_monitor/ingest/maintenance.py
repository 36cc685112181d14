"""Store-wide maintenance under the writer lock: reprice, rebuild the index."""

from __future__ import annotations

import math
import os

from ..store.durable import atomic_write_many
from ..store.names import is_session_file
from .rounds import reprice_round
from ..store.document import summarise
from ..store.sessions import dump_document, read_document, unreadable_reason

BATCH = 500


def reprice_store(monitor, skipped: list[tuple[str, str]] | None = None
                  ) -> tuple[int, int, float]:
    """Recompute every round's cost from its stored buckets with ``monitor.table``, and
    record which price data priced it (``priced_by``).

    Rounds keep their token buckets, so a new price table or override applies without
    re-reading the logs. Returns (sessions changed, rounds repriced, change in USD);
    files that cannot be read are left as they are and added to ``skipped`` as
    (file name, why).
    """
    directory = monitor.config.output_dir
    names = sorted(n for n in os.listdir(directory) if is_session_file(n))
    changed_sessions = rounds = 0
    before_total, after_total = [], []
    batch: list[tuple[str, dict, bytes]] = []
    for name in names:
        try:
            doc = read_document(directory / name)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            if skipped is not None:
                skipped.append((name, unreadable_reason(e)))
            continue
        before = [_priced(r) for r in doc["rounds"]]
        for rnd in doc["rounds"]:
            reprice_round(rnd, monitor.table)
        after = [_priced(r) for r in doc["rounds"]]
        rounds += len(after)
        before_total.extend(c[0] for c in before if c[0] is not None)
        after_total.extend(c[0] for c in after if c[0] is not None)
        if before != after:   # a new cost, or the same cost from other price data
            summarise(doc)
            batch.append((name, doc, dump_document(doc)))
            changed_sessions += 1
        if len(batch) >= BATCH:
            _commit(monitor, batch)
            batch = []
    _commit(monitor, batch)
    return changed_sessions, rounds, math.fsum(after_total) - math.fsum(before_total)


def _priced(rnd: dict) -> tuple:
    return rnd.get("cost_usd"), rnd.get("priced_as"), rnd.get("priced_by")


def _commit(monitor, batch: list[tuple[str, dict, bytes]]) -> None:
    if not batch:
        return
    directory = monitor.config.output_dir
    monitor.index.mark_pending(name for name, _doc, _data in batch)
    atomic_write_many(directory, [(directory / name, data) for name, _doc, data in batch])
    monitor.index.update([(name, doc, len(data)) for name, doc, data in batch])


def rebuild_index(monitor) -> tuple[int, list[tuple[str, str]]]:
    """Rebuild the index; returns (files indexed, [(file, why) for each left out])."""
    n = monitor.index.rebuild(monitor._index_progress if monitor.progress else None)
    return n, list(monitor.index.skipped)
