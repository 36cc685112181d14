"""Money across --reprice and --keep: nothing billed is lost or counted twice, and a
Prometheus counter of /metrics never goes down.

--reprice recomputes stored costs with other prices: lower ones used to lower
asm_cost_usd_total, which Prometheus reads as a counter reset (increase() and rate() then
count the whole total again). Now each reprice that changes a cost starts a new pricing
epoch, a label of the cost series (new series; the old ones end), and while a reprice
runs (or after one was killed, until one ends) /metrics shows no cost at all, never a
half-repriced total under either epoch.

--keep prunes by the wall clock, which may jump back or far forward between runs (a
wrong NTP step, a VM restored from a snapshot): every round must still be counted once,
pruned or not, across re-reads of the log (a lost state) and index rebuilds."""

from __future__ import annotations

import io
import json
import os
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

from agent_session_monitor.ingest import maintenance
from agent_session_monitor.monitor_cli import main as monitor_main
from agent_session_monitor.store import retention
from agent_session_monitor.store.sessions import dump_document, read_document
from agent_session_monitor.store.names import is_session_file
from agent_session_monitor.store.pruned_archive import ARCHIVE_NAME
from agent_session_monitor.web import metrics
from tests.helpers import TempDirTest, make_line, write_lines

SEED = int(os.environ.get("ASM_MONEY_SEED", "5"))
MODELS = ("gpt-4o", "gpt-4o-mini", "deepseek-chat", "my-private-model")
SAMPLE = re.compile(r"^(asm_\w+)(\{[^}]*\})? (\S+)$")


def lines(rng: random.Random, first: int, count: int, days: int = 0) -> list[bytes]:
    """``count`` Higress lines numbered from ``first`` (input tokens 100 + n), models
    and sessions drawn from ``rng``; with ``days``, start times spread over that many
    days before 2026-06-01."""
    out = []
    for n in range(first, first + count):
        line = json.loads(make_line(n, session=f"s{rng.randrange(12)}", model=rng.choice(MODELS),
                                    output_token=rng.randrange(1, 500)))
        if days:
            moment = datetime(2026, 6, 1, tzinfo=timezone.utc) - timedelta(
                seconds=rng.randrange(days * 86400))
            line["start_time"] = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        out.append(json.dumps(line).encode() + b"\n")
    return out


def scrape(out: Path) -> dict[tuple[str, str], float]:
    """The counters /metrics serves now: (name, labels) -> value."""
    db = retention.sqlite3.connect(f"file:{out / '.index.sqlite'}?mode=ro", uri=True)
    try:
        text = metrics.render(metrics.usage_text(db), out)
    finally:
        db.close()
    counters = {m.group(1) for m in re.finditer(r"^# TYPE (\S+) counter$", text, re.M)}
    found = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) in counters:
            found[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return found


class Monotonic:
    """Every counter sample ever seen, by series: none may be lower later, also after
    the series was absent for a while."""

    def __init__(self, test) -> None:
        self.test, self.high = test, {}

    def see(self, samples: dict, when: str) -> None:
        for key, value in samples.items():
            before = self.high.get(key)
            if before is not None:
                self.test.assertGreaterEqual(value + 1e-12, before, (when, key))
            self.high[key] = max(value, before or value)


def stored_cost(out: Path) -> float:
    return sum(r["cost_usd"] for name in os.listdir(out) if is_session_file(name)
               for r in read_document(out / name)["rounds"] if r.get("cost_usd") is not None)


def cost_samples(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0] == "asm_cost_usd_total"}


class RepriceNeverLowersACounter(TempDirTest):
    def run_main(self, *argv: str) -> tuple[int, str]:
        err = io.StringIO()
        code = monitor_main([*argv, "--output-dir", str(self.store), "-q"], out=io.StringIO(),
                            err=err)
        return code, err.getvalue()

    def reprice(self, rng: random.Random, seen: Monotonic, step: str, fail_at: int | None = None):
        """--reprice with random overrides (or none: back to the bundled prices), in
        batches of 1-3 sessions, /metrics scraped after each batch."""
        argv = ["--reprice"]
        if rng.random() < 0.75:
            prices = {m: {"input": round(rng.uniform(0.01, 20), 4),
                          "output": round(rng.uniform(0.01, 60), 4)}
                      for m in rng.sample(MODELS, rng.randint(1, len(MODELS)))}
            path = self.tmp / f"prices-{step}.json"
            path.write_text(json.dumps(prices))
            argv += ["--pricing", str(path)]
        real, batches = maintenance._commit, [0]

        def commit(monitor, batch):
            batches[0] += 1
            if fail_at is not None and batches[0] == fail_at:
                raise OSError(28, "No space left on device")
            real(monitor, batch)
            during = scrape(self.store)
            self.assertEqual(cost_samples(during), {}, "a half-repriced cost was shown")
            seen.see(during, f"{step} batch {batches[0]}")

        with mock.patch.object(maintenance, "BATCH", rng.randint(1, 3)), \
                mock.patch.object(maintenance, "_commit", commit):
            return self.run_main(*argv)

    def test_seeded_reprices_up_and_down_never_lower_a_series_and_end_exact(self):
        for case in range(6):
            rng = random.Random(SEED * 100 + case)
            with self.subTest(case=case):
                self.store = self.tmp / f"store{case}"
                log = self.tmp / f"access{case}.log"
                seen, n = Monotonic(self), 1
                epochs = []
                for step in range(6):
                    if step == 0 or rng.random() < 0.4:
                        count = rng.randint(20, 60)
                        write_lines(log, lines(rng, n, count))
                        n += count
                        code, err = self.run_main("--log-path", str(log),
                                                  "--allow-log-dir", str(self.tmp))
                        self.assertEqual(code, 0, err)
                    else:
                        code, err = self.reprice(rng, seen, f"case {case} step {step}")
                        self.assertEqual(code, 0, err)
                    after = scrape(self.store)
                    seen.see(after, f"case {case} step {step}")
                    costs = cost_samples(after)
                    self.assertAlmostEqual(sum(costs.values()), stored_cost(self.store), places=9)
                    # a file repriced is what a later run writes from it: the same bytes
                    # (priced_by, changed by a reprice, was moved to its round's end)
                    for path in self.store.iterdir():
                        if is_session_file(path.name):
                            self.assertEqual(dump_document(read_document(path)),
                                             path.read_bytes(), path)
                    epochs.append({re.search(r'pricing_epoch="(\d+)"', k[1]).group(1)
                                   for k in costs})
                    self.assertEqual(len(epochs[-1]), 1, costs)   # one epoch at a time
                order = [int(next(iter(e))) for e in epochs]
                self.assertEqual(order, sorted(order))   # epochs only grow

    def test_a_reprice_cut_short_shows_no_cost_until_one_ends(self):
        rng = random.Random(SEED)
        self.store = self.tmp / "store"
        log = self.tmp / "access.log"
        write_lines(log, lines(rng, 1, 80))
        self.assertEqual(self.run_main("--log-path", str(log), "--allow-log-dir", str(self.tmp))[0], 0)
        seen = Monotonic(self)
        seen.see(scrape(self.store), "before")
        code, err = self.reprice(rng, seen, "cut", fail_at=2)
        self.assertEqual(code, 1, err)
        self.assertEqual(cost_samples(scrape(self.store)), {})
        # The monitor says so at its start (even with -q), and goes on ingesting.
        write_lines(log, lines(rng, 81, 10))
        code, err = self.run_main("--log-path", str(log), "--allow-log-dir", str(self.tmp))
        self.assertEqual(code, 0, err)
        self.assertIn("a reprice (--reprice, or the upgrade of an old store) was cut short", err)
        self.assertEqual(cost_samples(scrape(self.store)), {})
        code, err = self.reprice(rng, seen, "again")
        self.assertEqual(code, 0, err)
        after = scrape(self.store)
        seen.see(after, "after")
        self.assertAlmostEqual(sum(cost_samples(after).values()), stored_cost(self.store), places=9)

    def test_the_epoch_survives_an_index_rebuilt_from_nothing(self):
        rng = random.Random(SEED + 1)
        self.store = self.tmp / "store"
        log = self.tmp / "access.log"
        write_lines(log, lines(rng, 1, 40))
        self.assertEqual(self.run_main("--log-path", str(log), "--allow-log-dir", str(self.tmp))[0], 0)
        seen = Monotonic(self)
        for step in range(3):
            (self.tmp / "p.json").write_text(json.dumps({"gpt-4o": {"input": step + 1.0,
                                                                     "output": 1.0}}))
            code, err = self.run_main("--reprice", "--pricing", str(self.tmp / "p.json"))
            self.assertEqual(code, 0, err)
            seen.see(scrape(self.store), f"reprice {step}")
        before = {k: v for k, v in scrape(self.store).items() if "pricing_epoch" in k[1]}
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.store / ".index.sqlite") + suffix).unlink(missing_ok=True)
        code, err = self.run_main("--log-path", str(log), "--allow-log-dir", str(self.tmp))
        self.assertEqual(code, 0, err)
        after = scrape(self.store)
        seen.see(after, "rebuilt")
        self.assertEqual({k: v for k, v in after.items() if "pricing_epoch" in k[1]}, before)


class _Clock(datetime):
    """datetime whose now() is the jumped wall clock."""
    offset = timedelta(0)

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + cls.offset


class KeepWithClockJumps(TempDirTest):
    JUMPS = (timedelta(0), -timedelta(days=3650), -timedelta(days=1), timedelta(days=1),
             timedelta(days=30), timedelta(days=365 * 50), timedelta(days=200))

    def test_keep_with_the_clock_jumping_back_and_forth_counts_every_round_once(self):
        pruned = 0
        for case in range(5):
            rng = random.Random(SEED * 1000 + case)
            with self.subTest(case=case):
                base = self.tmp / f"case{case}"
                base.mkdir()
                log, store, reference = base / "access.log", base / "store", base / "reference"
                seen, n, events = Monotonic(self), 1, []
                for step in range(8):
                    count = rng.randint(10, 50)
                    write_lines(log, lines(rng, n, count, days=rng.choice((1, 30, 400))))
                    n += count
                    jump = rng.choice(self.JUMPS)
                    keep = rng.choice(("1h", "2d", "30d", "400d"))
                    what = rng.choice(("pass", "pass", "lost state", "rebuild"))
                    events.append((jump.days, keep, what))
                    if what == "lost state":   # the whole log is read again
                        for name in (".state.json", ".state.json.bak"):
                            (store / name).unlink(missing_ok=True)
                    if what == "rebuild":
                        self.assertEqual(monitor_main(["--output-dir", str(store), "-q",
                                                       "--rebuild-index"], out=io.StringIO(),
                                                      err=io.StringIO()), 0)
                    _Clock.offset = jump
                    err = io.StringIO()
                    with mock.patch.object(retention, "datetime", _Clock):
                        code = monitor_main(["--log-path", str(log), "--allow-log-dir", str(base),
                                             "--output-dir", str(store), "-q", "--keep", keep],
                                            out=io.StringIO(), err=err)
                    self.assertEqual(code, 0, (events, err.getvalue()))
                    err = io.StringIO()
                    self.assertEqual(monitor_main(["--log-path", str(log), "--allow-log-dir",
                                                   str(base), "--output-dir", str(reference),
                                                   "-q"], out=io.StringIO(), err=err), 0)
                    got, want = scrape(store), scrape(reference)
                    usage = ("asm_tokens_total", "asm_cost_usd_total", "asm_rounds_total",
                             "asm_unpriced_rounds_total", "asm_tool_call_rounds_total")
                    # (the state's counters start again from zero with a lost state, as
                    # README says; the index's never go down)
                    seen.see({k: v for k, v in got.items() if k[0] in usage}, str(events))
                    self.assertEqual({k: round(v, 9) for k, v in got.items() if k[0] in usage},
                                     {k: round(v, 9) for k, v in want.items() if k[0] in usage},
                                     events)
                pruned += (store / ARCHIVE_NAME).exists()
        self.assertGreater(pruned, 0, "no case pruned anything: the class tests nothing")
