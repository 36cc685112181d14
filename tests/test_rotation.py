"""Rotation, truncation and partial-write scenarios (failure-scenarios.md B1, B2), driven
by file operations in Python so that each case is exact; tests/test_logrotate.py drives
the same cases through the real logrotate binary."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import threading

from tests.helpers import TempDirTest, make_line, stored_inputs, write_lines


def reqs(first: int, last: int, **kw) -> list[bytes]:
    return [make_line(n, **kw) for n in range(first, last + 1)]


def inputs(first: int, last: int) -> list[int]:
    return [100 + n for n in range(first, last + 1)]


class RotationScenarios(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.log = self.tmp / "access.log"

    def poll(self, *extra: str) -> tuple[int, str, str]:
        code, out, err = self.run_monitor(self.log, extra=list(extra))
        self.assertEqual(code, 0, err)
        return code, out, err

    def rotate(self, n_existing: int = 0, compress: bool = False) -> None:
        """``create``-style rename rotation of access.log into .1 (shifting older ones)."""
        for i in range(n_existing, 0, -1):
            for suffix in ("", ".gz"):
                src = self.tmp / f"access.log.{i}{suffix}"
                if src.exists():
                    os.replace(src, self.tmp / f"access.log.{i + 1}{suffix}")
        os.replace(self.log, self.tmp / "access.log.1")
        if compress:
            gzip_file(self.tmp / "access.log.1")
        self.log.touch()

    def state(self) -> dict:
        return json.loads((self.out / ".state.json").read_text())

    def test_r1_rename_rotation_while_stopped(self):
        write_lines(self.log, reqs(1, 5))
        self.poll()
        write_lines(self.log, reqs(6, 8))
        self.rotate()
        write_lines(self.log, reqs(9, 12))
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 12))

    def test_r2_two_rotations_between_polls(self):
        write_lines(self.log, reqs(1, 3))
        self.poll()
        write_lines(self.log, reqs(4, 5))
        self.rotate()
        write_lines(self.log, reqs(6, 7))
        self.rotate(1)
        write_lines(self.log, reqs(8, 9))
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 9))

    def test_r3_more_rotations_than_kept_reports_data_loss(self):
        write_lines(self.log, reqs(1, 2))
        self.poll()
        write_lines(self.log, reqs(3, 4))   # never read: rotated out of reach
        for k in range(7):
            self.rotate(min(k, 6))
            write_lines(self.log, reqs(10 + 2 * k, 11 + 2 * k))
        _code, _out, err = self.poll("--max-rotate", "5")
        self.assertIn("data loss", err)
        self.assertGreaterEqual(self.state()["counters"]["file_events"]["data_loss"], 1)
        got = stored_inputs(self.out)
        self.assertNotIn(103, got)
        self.assertEqual(len(got), len(set(got)))

    def test_r4_writer_keeps_writing_into_rotated_file(self):
        writer = open(self.log, "ab")
        writer.write(make_line(1))
        writer.flush()
        self.poll()
        self.rotate()
        writer.write(make_line(2))       # lazy reopen: still writes to .1
        writer.flush()
        write_lines(self.log, reqs(3, 3))
        self.poll()
        writer.write(make_line(4))
        writer.close()
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 4))

    def test_r5_copytruncate_with_append_writer(self):
        write_lines(self.log, reqs(1, 3))
        self.poll()
        write_lines(self.log, reqs(4, 5))
        shutil.copyfile(self.log, self.tmp / "access.log.1")
        os.truncate(self.log, 0)
        write_lines(self.log, reqs(6, 7))
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 7))

    def test_r6_copytruncate_with_writer_lacking_o_append(self):
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT, 0o644)
        for n in range(1, 4):
            os.write(fd, make_line(n))
        self.poll()
        shutil.copyfile(self.log, self.tmp / "access.log.1")
        os.truncate(self.log, 0)
        os.write(fd, make_line(4))       # lands at the old offset: a NUL hole before it
        os.close(fd)
        _code, _out, err = self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 4))
        self.assertNotIn("bad_lines", self.state()["counters"])

    def test_t6_copytruncate_then_regrow_past_old_offset(self):
        write_lines(self.log, reqs(1, 2))
        self.poll()
        shutil.copyfile(self.log, self.tmp / "access.log.1")
        os.truncate(self.log, 0)
        write_lines(self.log, reqs(3, 12))   # larger than before
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 12))

    def test_t6b_regrown_file_with_the_same_first_kib_counts_new_lines_at_old_offsets(self):
        # An agent's requests start alike (the same long system prompt first), so a log
        # truncated and regrown can keep its first KiB, hence its fingerprint, and hold
        # new lines at the offsets of old ones. A place is not a line: these are new
        # paid rounds, and skipping them as re-reads would hide their cost.
        def line(n: int) -> bytes:
            ai = {"api": "chat", "messages": [{"role": "system", "content": "p" * 2000}],
                  "session_id": "s1", "model": "gpt-4o", "input_token": 100 + n,
                  "output_token": 10, "answer": f"answer {n}"}
            outer = {"ai_log": json.dumps(ai), "start_time": f"2026-02-01T09:00:0{n}.000Z"}
            return json.dumps(outer).encode() + b"\n"

        write_lines(self.log, [line(1), line(2)])
        self.poll()
        os.truncate(self.log, 0)
        write_lines(self.log, [line(3), line(4), line(5)])   # line(3) where line(1) was, ...
        self.poll()
        self.poll()                                          # and a re-read adds nothing
        self.assertEqual(stored_inputs(self.out), inputs(1, 5))

    def test_r7_compress_without_delaycompress_while_stopped(self):
        write_lines(self.log, reqs(1, 3))
        self.poll()
        write_lines(self.log, reqs(4, 6))
        self.rotate(compress=True)
        write_lines(self.log, reqs(7, 8))
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 8))

    def test_r8_compress_with_delaycompress_over_two_cycles(self):
        write_lines(self.log, reqs(1, 2))
        self.poll()
        write_lines(self.log, reqs(3, 4))
        self.rotate()                         # .1 plain (delaycompress)
        write_lines(self.log, reqs(5, 6))
        self.poll()
        write_lines(self.log, reqs(7, 8))
        self.rotate(1)                        # .1 -> .2, then compress .2
        gzip_file(self.tmp / "access.log.2")
        write_lines(self.log, reqs(9, 10))
        self.poll()
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 10))

    def test_r9_partial_gzip_is_not_final_and_completes_later(self):
        write_lines(self.log, reqs(1, 200, pad=50))
        data = gzip.compress(self.log.read_bytes(), mtime=0)
        os.remove(self.log)
        partial = self.tmp / "access.log.1.gz"
        partial.write_bytes(data[: len(data) // 2])
        self.log.touch()
        self.poll()
        first = stored_inputs(self.out)
        self.assertLess(len(first), 200)
        partial.write_bytes(data)
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 200))

    def test_r9_corrupt_gzip_keeps_lines_before_damage(self):
        write_lines(self.log, reqs(1, 50))
        data = bytearray(gzip.compress(self.log.read_bytes(), mtime=0))
        data[-6] ^= 0xFF   # break the CRC
        os.remove(self.log)
        (self.tmp / "access.log.1.gz").write_bytes(bytes(data))
        self.log.touch()
        _code, _out, err = self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 50))
        self.assertIn("corrupt gzip", err)

    def test_r9_plain_text_named_gz_is_read_as_text(self):
        write_lines(self.tmp / "access.log.1.gz", reqs(1, 3))
        write_lines(self.log, reqs(4, 5))
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 5))

    def test_r10_numeric_order_of_ten_and_more_rotations(self):
        for i in range(12, 0, -1):
            write_lines(self.tmp / f"access.log.{i}", reqs(100 - 5 * i, 100 - 5 * i))
        write_lines(self.log, reqs(100, 100))
        self.poll("--max-rotate", "12")
        docs = self.sessions()
        stamps = [r["input_tokens"] for r in docs["s1"]["rounds"]]
        self.assertEqual(stamps, sorted(stamps))
        self.assertEqual(len(stamps), 13)
        order = [s["path"] for s in self.state()["sources"]]
        self.assertEqual(os.path.basename(order[0]), "access.log.12")

    def test_r11_inode_reuse_after_delete_is_a_new_file(self):
        write_lines(self.log, reqs(1, 5))
        self.poll()
        os.remove(self.log)
        write_lines(self.log, reqs(20, 22))  # ext4 hands the same inode back
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 5) + inputs(20, 22))

    def test_r13_live_log_deleted_while_stopped_is_counted_not_cried_as_loss(self):
        # A live log deleted and re-created between two cron passes looks, from outside,
        # the same whether lines were written in between or not (on ext4 even the inode
        # comes back): so it is counted as replaced, never printed as a certain loss.
        write_lines(self.log, reqs(1, 2))
        self.poll()
        os.remove(self.log)
        write_lines(self.log, reqs(3, 4))
        _code, _out, err = self.poll()
        self.assertNotIn("loss", err)
        self.assertEqual(stored_inputs(self.out), inputs(1, 4))
        self.assertEqual(self.state()["counters"]["file_events"], {"replaced": 1})

    def test_r13_deleted_file_with_unread_bytes_is_reported_with_their_count(self):
        write_lines(self.log, reqs(1, 2))
        self.poll()
        write_lines(self.tmp / "access.log.1", reqs(3, 3))
        self.poll()                                    # .1 read; the next bytes are seen...
        state = self.state()
        src = next(s for s in state["sources"] if s["path"].endswith(".1"))
        src["size"] += 500                             # ...but not read (a stopped catch-up)
        (self.out / ".state.json").write_text(json.dumps(state))
        os.remove(self.tmp / "access.log.1")
        _code, _out, err = self.poll()
        self.assertIn("data loss", err)
        self.assertIn("with 500 unread bytes", err)
        self.assertEqual(self.state()["counters"]["lost_bytes"], {"data_loss": 500})

    def test_t1_truncate_to_zero_then_append(self):
        write_lines(self.log, reqs(1, 3))
        self.poll()
        os.truncate(self.log, 0)
        write_lines(self.log, reqs(4, 5))
        _code, _out, err = self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 5))
        self.assertNotIn("loss", err)       # every line was read: nothing to cry about

    def test_cron_benign_file_actions_print_nothing_about_loss(self):
        def regrow():
            os.truncate(self.log, 0)
            write_lines(self.log, reqs(20, 30))
        def same_head_regrow():             # identical first KiB, then more: T2 / item 7
            data = self.log.read_bytes()
            os.truncate(self.log, 0)
            write_lines(self.log, [data, *reqs(40, 41)])
        def recreate():
            os.remove(self.log)
            write_lines(self.log, reqs(50, 51))
        def compress():
            self.rotate(compress=True)
            write_lines(self.log, reqs(60, 61))
        def swap():
            os.replace(self.log, self.tmp / "old-target.log")
            os.symlink("new-target.log", self.log)
            write_lines(self.log, reqs(70, 71))
        write_lines(self.log, reqs(1, 3))
        self.poll()
        for action in (regrow, same_head_regrow, recreate, compress, swap):
            with self.subTest(action.__name__):
                action()
                _code, _out, err = self.poll()
                self.assertNotIn("loss", err)
        self.assertEqual(stored_inputs(self.out), inputs(1, 3) + inputs(20, 30) + inputs(40, 41)
                         + inputs(50, 51) + inputs(60, 61) + inputs(70, 71))

    def test_t3_partial_last_line_waits_for_its_end(self):
        whole = make_line(2)
        write_lines(self.log, reqs(1, 1) + [whole[:40]])
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 1))
        write_lines(self.log, [whole[40:]])
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 2))
        self.assertNotIn("bad_lines", self.state()["counters"])

    def test_t4_fragment_of_dead_writer_is_not_glued_to_next_file(self):
        write_lines(self.log, reqs(1, 1) + [make_line(2)[:60]])
        self.poll()
        self.rotate()
        write_lines(self.log, reqs(3, 4))
        os.utime(self.tmp / "access.log.1", (1, 1))   # quiet for long: final
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 1) + inputs(3, 4))
        self.assertEqual(self.state()["counters"]["bad_lines"], {"bad_json": 1})

    def test_p2_oversized_line_is_skipped_and_tailing_goes_on(self):
        write_lines(self.log, reqs(1, 1) + [b'{"x":"' + b"a" * 300_000 + b'"}\n'] + reqs(2, 2))
        self.poll("--max-line-bytes", "100000")
        self.assertEqual(stored_inputs(self.out), inputs(1, 2))
        self.assertEqual(self.state()["counters"]["bad_lines"], {"oversized_line": 1})

    def test_p14_same_request_logged_twice_counts_once(self):
        write_lines(self.log, reqs(1, 3) + reqs(2, 2))
        _code, out, _err = self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 3))
        self.assertIn("1 already-stored round skipped", out)

    def test_lines_without_request_id_are_keyed_by_file_and_offset(self):
        write_lines(self.log, reqs(1, 3, request_id=False))
        self.poll()
        write_lines(self.log, reqs(4, 4, request_id=False))
        shutil.copyfile(self.log, self.tmp / "access.log.1")
        os.truncate(self.log, 0)
        os.remove(self.out / ".state.json")           # even with the state lost
        (self.out / ".state.json.bak").unlink(missing_ok=True)   # (one pass: none yet)
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, 4))

    def test_t8_writer_appending_during_polls(self):
        stop = threading.Event()

        def writer():
            n = 1
            with open(self.log, "ab", buffering=0) as f:
                while not stop.is_set() and n <= 3000:
                    f.write(make_line(n, session=f"s{n % 7}"))
                    n += 1
            writer.last = n - 1

        self.log.touch()
        t = threading.Thread(target=writer)
        t.start()
        for _ in range(5):
            self.poll()
        stop.set()
        t.join()
        self.poll()
        self.assertEqual(stored_inputs(self.out), inputs(1, writer.last))


def gzip_file(path) -> None:
    data = path.read_bytes()
    with gzip.open(str(path) + ".gz", "wb") as f:
        f.write(data)
    os.remove(path)


class FollowModeKeepsFilesOpen(TempDirTest):
    """With --follow the monitor holds its files open, so bytes written to a file after
    it was renamed away and deleted (compress without delaycompress) are still read."""

    def test_late_writes_to_deleted_file_are_drained_through_the_open_descriptor(self):
        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        log = self.tmp / "access.log"
        writer = open(log, "ab", buffering=0)
        writer.write(make_line(1))
        config = MonitorConfig(log_paths=[str(log)], output_dir=self.out, follow=True,
                               rotate_wait=0.2)
        with Monitor(config, progress=False) as monitor:
            monitor.poll_once()
            os.replace(log, self.tmp / "access.log.1")
            log.touch()
            gzip_file(self.tmp / "access.log.1")          # .1 is gone, .1.gz is a copy
            writer.write(make_line(2))                     # into the deleted inode
            write_lines(log, [make_line(3)])
            monitor.poll_once()
            writer.write(make_line(4))
            monitor.poll_once()
            writer.close()
        self.assertEqual(stored_inputs(self.out), inputs(1, 4))


class FollowModeOneMonitor(TempDirTest):
    """One long-lived monitor (--follow) across every file action: it must survive each,
    count every round once, and say nothing about loss where nothing was lost. Each
    scenario runs twice: with renamed-away files released as soon as they are drained
    (--rotate-wait 0) and held for longer than the test (so late writes are read)."""

    WAITS = (0.0, 3600.0)

    def each_wait(self, scenario) -> None:
        for wait in self.WAITS:
            with self.subTest(rotate_wait=wait):
                self.dir = self.tmp / f"wait-{wait:g}"
                self.dir.mkdir()
                self.log, self.out, self.n = self.dir / "access.log", self.dir / "sessions", 0
                self.wait = wait
                scenario()

    def write(self, count: int, path=None) -> None:
        write_lines(path or self.log, reqs(self.n + 1, self.n + count))
        self.n += count

    def follow(self, *steps) -> str:
        """Run ``steps`` (callables) with a poll of one monitor after each; returns
        everything it said on stderr."""
        import io

        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        err = io.StringIO()
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out, follow=True,
                               rotate_wait=self.wait)
        with Monitor(config, err=err, progress=False) as monitor:
            for step in steps:
                step()
                monitor.poll_once()
            monitor.poll_once()
        self.assertEqual(stored_inputs(self.out), inputs(1, self.n), err.getvalue())
        self.assertNotIn("loss", err.getvalue())
        return err.getvalue()

    def copytruncate(self) -> None:
        shutil.copyfile(self.log, self.dir / "access.log.1")
        os.truncate(self.log, 0)

    def test_follow_survives_copytruncate_and_counts_every_round_once(self):
        self.each_wait(lambda: self.follow(
            lambda: self.write(3), lambda: self.write(2), self.copytruncate,
            lambda: self.write(2), self.copytruncate, lambda: self.write(4)))

    def test_follow_survives_copytruncate_with_lines_between_poll_and_copy(self):
        def rotate():
            self.write(3)                 # unread when the copy is made: the copy has them
            self.copytruncate()
            self.write(1)
        self.each_wait(lambda: self.follow(lambda: self.write(3), rotate, rotate,
                                           lambda: self.write(2)))

    def test_follow_survives_truncate_to_zero_polled_while_empty(self):
        self.each_wait(lambda: self.follow(
            lambda: self.write(3), lambda: os.truncate(self.log, 0), lambda: self.write(2),
            lambda: os.truncate(self.log, 0), lambda: self.write(1)))

    def test_follow_truncate_then_regrow_counts_once_without_loss_warning(self):
        def regrow():
            os.truncate(self.log, 0)
            self.write(8)                 # past the old offset before the next poll
        self.each_wait(lambda: self.follow(lambda: self.write(3), regrow, regrow,
                                           lambda: self.write(1)))

    def test_follow_compress_rotation_without_loss_warning(self):
        def rotate():
            os.replace(self.log, self.dir / "access.log.1")
            gzip_file(self.dir / "access.log.1")
            self.write(2)
        self.each_wait(lambda: self.follow(lambda: self.write(3), rotate,
                                           lambda: self.write(1), rotate))

    def test_follow_symlink_swap_without_loss_warning(self):
        def swap(target):
            def do():
                tmp_link = self.dir / "link.tmp"
                os.symlink(target, tmp_link)
                os.replace(tmp_link, self.log)
                self.write(2)
            return do

        def scenario():
            os.symlink("a.log", self.log)
            steps = [lambda: self.write(3), swap("b.log")]
            if self.wait:   # the old target is still held: a late line to it is read
                steps.append(lambda: self.write(2, self.dir / "a.log"))
            self.follow(*steps, swap("c.log"), lambda: self.write(1))
        self.each_wait(scenario)

    def test_follow_delete_and_recreate_without_loss_warning(self):
        def recreate():
            os.remove(self.log)
            self.write(2)
        self.each_wait(lambda: self.follow(lambda: self.write(3), recreate, recreate,
                                           lambda: self.write(1)))

    def test_follow_truncated_regrown_then_deleted_file_is_read_through_its_descriptor(self):
        def regrow_and_delete():
            os.truncate(self.log, 0)
            self.write(4)                 # the held inode now shows another file...
            os.remove(self.log)           # ...that no path leads to: read it, from 0
            self.write(2)
        self.each_wait(lambda: self.follow(lambda: self.write(3), regrow_and_delete,
                                           lambda: self.write(1)))

    def test_follow_real_loss_is_reported_in_both_modes(self):
        # The direction that must warn: a live log rotated out of reach with unread lines
        # while no monitor ran, then a follow-mode monitor (or a cron pass) starts.
        import io

        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        for follow in (False, True):
            with self.subTest(follow=follow):
                d = self.tmp / f"loss-{follow}"
                d.mkdir()
                log = d / "access.log"
                write_lines(log, reqs(1, 2))
                config = MonitorConfig(log_paths=[str(log)], output_dir=d / "out",
                                       follow=follow, rotate_wait=0.0)
                with Monitor(config, err=io.StringIO(), progress=False) as monitor:
                    monitor.poll_once()
                write_lines(log, reqs(3, 4))            # never read
                for k in range(7):
                    for i in range(6, 0, -1):
                        if (d / f"access.log.{i}").exists():
                            os.replace(d / f"access.log.{i}", d / f"access.log.{i + 1}")
                    os.replace(log, d / "access.log.1")
                    write_lines(log, reqs(10 + 2 * k, 11 + 2 * k))
                err = io.StringIO()
                with Monitor(config, err=err, progress=False) as monitor:
                    monitor.poll_once()
                self.assertIn("data loss", err.getvalue())
                self.assertIn("rotated past --max-rotate 5", err.getvalue())

    def test_follow_poll_between_copy_and_truncate_counts_every_round_once(self):
        # logrotate's copytruncate at the worst moment: the monitor polls after the copy
        # and before the truncate, reading lines the copy does not hold.
        def copy_poll_truncate():
            self.write(2)
            shutil.copyfile(self.log, self.dir / "access.log.1")
            self.write(3)                 # after the copy: only the live file has them
        def truncate():
            os.truncate(self.log, 0)
            self.write(2)
        self.each_wait(lambda: self.follow(lambda: self.write(3), copy_poll_truncate,
                                           truncate, lambda: self.write(1)))

    def test_follow_releases_quiet_rotations_but_keeps_the_live_log(self):
        import io

        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        self.dir, self.log, self.n = self.tmp, self.tmp / "access.log", 0
        for i in range(5, 0, -1):
            self.write(2, self.tmp / f"access.log.{i}")
            os.utime(self.tmp / f"access.log.{i}", (1, 1))    # rotated long ago
        self.write(2)
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out, follow=True,
                               rotate_wait=30)
        with Monitor(config, err=io.StringIO(), progress=False) as monitor:
            monitor.poll_once()
            monitor.poll_once()
            held = [(dev, ino) for _f, dev, ino in monitor.tailer._held.values()]
        st = os.stat(self.log)
        self.assertEqual(held, [(st.st_dev, st.st_ino)])
        self.assertEqual(stored_inputs(self.out), inputs(1, self.n))

    def test_follow_copytruncate_between_stat_and_read_counts_every_round_once(self):
        # The worst moment of all: logrotate copies and truncates (and the writer writes
        # again) after the monitor sized the file and before it read the new bytes.
        import io

        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        for regrow in (0, 6):
            with self.subTest(regrow=regrow):
                self.dir = self.tmp / f"regrow-{regrow}"
                self.dir.mkdir()
                self.log, self.out, self.n = self.dir / "access.log", self.dir / "out", 0
                err = io.StringIO()
                config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out,
                                       follow=True, rotate_wait=3600)
                with Monitor(config, err=err, progress=False) as monitor:
                    self.write(3)
                    monitor.poll_once()
                    self.write(40)                       # sized, then rotated under us
                    poll_files = monitor.tailer.poll_files

                    def racing():
                        pairs = poll_files()
                        self.copytruncate()
                        self.write(regrow)
                        return pairs
                    monitor.tailer.poll_files = racing
                    monitor.poll_once()
                    monitor.tailer.poll_files = poll_files
                    self.write(2)
                    monitor.poll_once()
                self.assertEqual(stored_inputs(self.out), inputs(1, self.n), err.getvalue())
                self.assertNotIn("loss", err.getvalue())

    def test_follow_wall_clock_step_does_not_finish_a_half_written_rotated_line(self):
        # A rotated file whose writer is mid-line: an NTP step of an hour must not make
        # it look quiet, which would cut the line in two bad halves (a paid round lost).
        import io
        from unittest import mock

        from agent_session_monitor.ingest import read_lines
        from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

        self.dir, self.log, self.n = self.tmp, self.tmp / "access.log", 0
        writer = open(self.log, "ab", buffering=0)
        self.addCleanup(writer.close)
        writer.write(make_line(1))
        line = make_line(2)
        config = MonitorConfig(log_paths=[str(self.log)], output_dir=self.out, follow=True,
                               rotate_wait=30)
        err = io.StringIO()
        with Monitor(config, err=err, progress=False) as monitor:
            monitor.poll_once()
            os.replace(self.log, self.tmp / "access.log.1")   # the writer has not reopened
            write_lines(self.log, reqs(3, 3))
            writer.write(line[:50])
            monitor.poll_once()
            stepped = read_lines.time.time() + 3600
            with mock.patch.object(read_lines.time, "time", return_value=stepped):
                monitor.poll_once()
            writer.write(line[50:])
            monitor.poll_once()
        self.assertEqual(stored_inputs(self.out), inputs(1, 3), err.getvalue())
        self.assertNotIn("bad_json", err.getvalue())
