"""Store-wide maintenance under the writer lock: reprice, rebuild the index."""

from __future__ import annotations

import math
import os

from ..store.durable import atomic_write_many
from ..store.index import PRICING_EPOCH, REPRICING, epoch_value as _epoch
from ..store.names import is_session_file
from .rounds import reprice_round
from .state import save_state
from ..store.document import in_round_order, summarise
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
    # /metrics' cost counters must never go down, and a reprice may lower them: it
    # starts a new pricing epoch, a new series for each (web/metrics.py). Until it has
    # ended (or if it is killed: until a reprice ends), /metrics shows no cost at all,
    # never a half-repriced total under either epoch.
    epoch = pricing_epoch(monitor) + 1
    monitor.index.set_meta(REPRICING, str(epoch))
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
            # priced_by went to the end of its round: back in a new round's key order,
            # or the next run that writes the file would write other bytes
            doc["rounds"] = [in_round_order(rnd) for rnd in doc["rounds"]]
            summarise(doc)
            batch.append((name, doc, dump_document(doc)))
            changed_sessions += 1
        if len(batch) >= BATCH:
            _commit(monitor, batch)
            batch = []
    _commit(monitor, batch)
    if changed_sessions:
        monitor.index.set_meta(PRICING_EPOCH, str(epoch))
        monitor.state.extra[PRICING_EPOCH] = epoch   # after the data it describes
        save_state(monitor.config.state_path, monitor.state)
    monitor.index.set_meta(REPRICING, None)
    return changed_sessions, rounds, math.fsum(after_total) - math.fsum(before_total)


def end_upgrade_reprice(monitor) -> None:
    """After an upgrade that changed stored costs (store/upgrade.py): the new pricing
    epoch it announced is the store's, as at the end of :func:`reprice_store`."""
    epoch = _epoch(monitor.index.meta(REPRICING))
    if epoch <= pricing_epoch(monitor):
        epoch = pricing_epoch(monitor) + 1
    monitor.index.set_meta(PRICING_EPOCH, str(epoch))
    monitor.state.extra[PRICING_EPOCH] = epoch   # after the data it describes
    save_state(monitor.config.state_path, monitor.state)
    monitor.index.set_meta(REPRICING, None)


def pricing_epoch(monitor) -> int:
    """The store's pricing epoch: the index's, or the state's if the index was rebuilt
    from nothing (the larger: both only grow)."""
    return max(_epoch(monitor.index.meta(PRICING_EPOCH)),
               _epoch(monitor.state.extra.get(PRICING_EPOCH)))


def sync_pricing_epoch(monitor) -> str | None:
    """At the start of a run: the index goes on from the state's epoch (an index rebuilt
    from nothing starts at 0); a note if a reprice was cut short."""
    epoch = pricing_epoch(monitor)
    if _epoch(monitor.index.meta(PRICING_EPOCH)) != epoch:
        monitor.index.set_meta(PRICING_EPOCH, str(epoch))
    if monitor.index.meta(REPRICING) is not None:
        return ("a reprice (--reprice, or the upgrade of an old store) was cut short: stored "
                "costs are partly repriced and /metrics shows no cost until --reprice is run "
                "to the end")
    return None


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
