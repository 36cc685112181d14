"""The web UI while the monitor commits: a reader never gets a 5xx.

A monitor process commits to the index in a loop, exactly as main.py does after a poll
(mark the files pending, rewrite them atomically, replace their rows and clear the mark
in one transaction), growing one long session, adding new ones and rewriting another;
meanwhile reader threads call the web app's ``handle()`` on the overview, a session page,
the JSON API and a full-text search. Every answer must be a 200 and the server log must
hold no traceback: a reader gets the last committed state (or waits briefly), never an
error. Regression for tests/bench_web.py's "monitor commits every 1 s" phase.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import quote

from tests.helpers import TempDirTest

from agent_session_monitor.store.index import Index
from agent_session_monitor.web.routes import WebApp

ROOT = Path(__file__).resolve().parent.parent
HOST = {"Host": "127.0.0.1:8888"}

# The monitor, in its own process (as in production: SQLite locks across processes).
MONITOR = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from agent_session_monitor.store.index import Index
    from agent_session_monitor.store.names import file_name_for
    from agent_session_monitor.store.document import new_document, summarise
    from agent_session_monitor.store.sessions import dump_document
    directory, seconds = Path(sys.argv[2]), float(sys.argv[3])
    index = Index(directory)
    if index.needs_rebuild:
        index.rebuild()
    docs = {}

    def rnd(sid, i):
        return {"round": i + 1, "timestamp": f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
                "request_id": f"{sid}-{i}", "key": f"{sid}-{i}", "model": "gpt-4o",
                "input_tokens": 100, "output_tokens": 10, "reasoning_tokens": 0,
                "cached_tokens": 0, "cache_write_tokens": 0, "total_tokens": 110,
                "buckets": {"input": 100, "output": 10}, "cost_usd": 0.001, "priced_as": "gpt-4o",
                "has_tool_calls": False, "consumer": None, "response_type": "stream",
                "messages": [], "messages_offset": 0, "context_key": None,
                "question_is_last_message": True, "question": f"weather refund {sid} {i}",
                "answer": "sunny " * 50, "reasoning": None, "tool_calls": []}

    def commit(sids):
        names = []
        for sid in sids:
            doc = docs.setdefault(sid, new_document(sid))
            doc["rounds"].append(rnd(sid, len(doc["rounds"])))
            summarise(doc)
            names.append(file_name_for(sid))
        index.mark_pending(names)
        batch = []
        for sid, name in zip(sids, names):
            data = dump_document(docs[sid])
            tmp = directory / (name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, directory / name)
            batch.append((name, docs[sid], len(data)))
        index.update(batch)

    commit(["long"] + [f"s{i}" for i in range(20)])
    print("ready", flush=True)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        commit(["long", f"new{n}", f"s{n % 20}"])
        n += 1
    index.close()
    print("commits", n, flush=True)
""")


class ReadersWhileTheMonitorCommits(TempDirTest):

    def test_overview_session_page_and_search_never_answer_5xx_while_the_monitor_commits(self):
        self.out.mkdir()
        Index(self.out).rebuild()
        monitor = subprocess.Popen([sys.executable, "-c", MONITOR, str(ROOT), str(self.out), "12"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(monitor.stdout.readline().strip(), "ready")
            log = io.StringIO()
            # max_lag 0: every overview is computed while the commits go on, none cached.
            app = WebApp(self.out, log=log, max_lag=0)
            app.gate.port = 8888
            paths = ["/", f"/session?id={quote('long')}", "/api/stats", "/api/sessions?q=refund",
                     "/?q=weather+sunny", f"/api/session?id={quote('long')}"]
            answers: list[tuple[str, int]] = []
            stop = threading.Event()

            def hammer(offset: int) -> None:
                i = offset
                while not stop.is_set():
                    path = paths[i % len(paths)]
                    answers.append((path, app.handle("GET", path, HOST).status))
                    i += 1

            threads = [threading.Thread(target=hammer, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            try:
                out, _ = monitor.communicate(timeout=120)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
        finally:
            if monitor.poll() is None:
                monitor.kill()
                monitor.wait()
        commits = int(out.split()[-1])
        self.assertGreater(commits, 5, "the monitor committed while the pages were read")
        self.assertGreater(len(answers), len(paths), "every page was read during the commits")
        failed = [a for a in answers if a[1] != 200]
        self.assertEqual(failed, [], log.getvalue()[-3000:])
        self.assertNotIn("Traceback", log.getvalue())


if __name__ == "__main__":
    import unittest
    unittest.main()
