"""A compressed rotation cut for good (gzip killed, the disk full, the original gone) is
said once, and a follower does not decompress it again at every poll.

A cold attacker cut an access.log.1.gz at 75%: two cron runs billed the 2,240 rounds
before the cut, exit 0, and nothing anywhere said that the rest was lost (a .gz with a
bad CRC says "corrupt gzip data ... kept the lines before the damage"); a --follow
monitor decompressed the whole file again at every poll, for good (4.5% of a core for
a 0.56 MB file). A .gz that ends early is one gzip is still writing until it has not
changed for --rotate-wait; then it is cut: counted (file_events.bad_gzip), said once,
and not read again while it does not change."""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from unittest import mock

from agent_session_monitor.ingest import gzip_stream
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig
from agent_session_monitor.monitor_cli import main as monitor_main
from tests.helpers import TempDirTest, make_line, stored_inputs


class GzipCutForGood(TempDirTest):
    def setUp(self):
        super().setUp()
        data = b"".join(make_line(n, session=f"s{n % 5}") for n in range(1, 301))
        packed = gzip.compress(data, mtime=0)
        self.gz = self.tmp / "access.log.1.gz"
        self.gz.write_bytes(packed[:len(packed) * 3 // 4])
        (self.tmp / "access.log").write_bytes(b"")
        # how many whole lines the cut file holds
        d = __import__("zlib").decompressobj(wbits=31)
        kept = d.decompress(self.gz.read_bytes())
        self.whole = kept.count(b"\n")
        self.assertTrue(0 < self.whole < 300)

    def decompressions(self):
        real, calls = gzip_stream.GzipChunks.__iter__, [0]

        def counted(chunks):
            calls[0] += 1
            return real(chunks)

        return mock.patch.object(gzip_stream.GzipChunks, "__iter__", counted), calls

    def test_cron_says_it_once_and_bills_the_lines_before_the_cut(self):
        old = time.time() - 7200
        os.utime(self.gz, (old, old))
        argv = ["--log-path", str(self.tmp / "access.log"), "--output-dir", str(self.out),
                "--allow-log-dir", str(self.tmp), "--rotate-wait", "1"]
        said = []
        for _run in range(3):
            err = io.StringIO()
            self.assertEqual(monitor_main(argv, out=io.StringIO(), err=err), 0, err.getvalue())
            said.append(err.getvalue().count("compressed data ends early"))
        self.assertEqual(said, [1, 0, 0])
        self.assertEqual(stored_inputs(self.out), [100 + n for n in range(1, self.whole + 1)])
        state = json.loads((self.out / ".state.json").read_text())
        self.assertEqual(state["counters"]["file_events"]["bad_gzip"], 1)

    def test_a_follower_reads_it_once_and_says_it_once_quiet(self):
        config = MonitorConfig(log_paths=[str(self.tmp / "access.log")], output_dir=self.out,
                               follow=True, allowed_log_dirs=[self.tmp], rotate_wait=0.5)
        patch, calls = self.decompressions()
        err = io.StringIO()
        with patch, Monitor(config, err=err) as monitor:
            monitor.poll_once()
            first = calls[0]
            self.assertEqual(err.getvalue().count("compressed data ends early"), 0)  # fresh
            for _ in range(10):   # quiet for --rotate-wait and more: polls with no change
                time.sleep(0.1)
                monitor.poll_once()
        self.assertEqual(err.getvalue().count("compressed data ends early"), 1, err.getvalue())
        self.assertEqual(calls[0], first, "decompressed again though it did not change")
        self.assertEqual(stored_inputs(self.out), [100 + n for n in range(1, self.whole + 1)])
