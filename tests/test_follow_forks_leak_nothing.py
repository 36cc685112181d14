"""A long-lived follower forks a commit process for every burst big enough to be a
catch-up: hundreds of forks a day. Each must leave nothing behind in the monitor: no
descriptor (pipe ends, SQLite connections reopened around the fork), no zombie, no
child. Run in a fresh interpreter so that no thread of another test turns the commit
process into the thread fallback. ASM_FOLLOW_PASSES sets the passes (default 50; 200
were checked by hand: 11 descriptors after the first pass and after the last)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.helpers import ROOT, TempDirTest

PASSES = int(os.environ.get("ASM_FOLLOW_PASSES", "50"))

SCRIPT = textwrap.dedent("""
    import io, json, os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tests.helpers import record_commit_process_starts
    from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
    from tests.test_commit_process import agent_lines
    from tests.helpers import write_lines

    tmp, passes = Path(sys.argv[2]), int(sys.argv[3])
    log = tmp / "access.log"
    started = record_commit_process_starts()
    lines = agent_lines(1, passes * 12, 40, 3)
    config = MonitorConfig(log_paths=[str(log)], output_dir=tmp / "sessions",
                           checkpoint_bytes=8000, follow=True)
    fds = []
    write_lines(log, lines[:12])
    with Monitor(config, err=io.StringIO()) as monitor:
        for i in range(passes):
            if i:
                write_lines(log, lines[12 * i:12 * i + 12])   # ~25 kB: a catch-up
            monitor.poll_once()
            fds.append(sorted(os.listdir("/proc/self/fd")))
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    print(json.dumps({"fds": fds, "started": started, "children": children}))
""")


class FollowForksLeakNothing(TempDirTest):
    def test_many_follow_passes_with_a_commit_process_each_leak_no_descriptor_or_child(self):
        run = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(self.tmp), str(PASSES)],
                             capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr)
        seen = json.loads(run.stdout)
        self.assertEqual(len(seen["started"]), PASSES, "not every pass forked a commit process")
        self.assertNotIn(None, seen["started"], "the thread fallback was used")
        self.assertEqual(seen["children"], [], "a commit process outlived its pass")
        first, last = seen["fds"][0], seen["fds"][-1]
        self.assertEqual(len(last), len(first), (first, last))
