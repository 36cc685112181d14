"""Kubernetes node logs: CRI (containerd, CRI-O) and Docker json-file wrapped access logs
give exactly the store the plain log gives: pieces joined byte for byte, across polls,
restarts, the kubelet's rename rotation and compression, with each joined line known by
its first piece's position; forged prefixes, broken wrappers and endless partial runs
are counted, never crash, never grow memory without bound."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import unittest
from pathlib import Path

from tests.helpers import TempDirTest, load_store
from tests import loggen

from agent_session_monitor.ingest import container_logs
from agent_session_monitor.ingest.container_logs import CRI, DOCKER, PLAIN, detect
from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

NOISE = [b"[info] envoy: upstream reset", "[warn] 日志 ünïcode".encode(), b""]


def cri_records(lines: list[bytes], rng: random.Random, piece: int = 300) -> list[bytes]:
    """Each line as CRI records: split at random byte positions (even inside a UTF-8
    sequence) into P pieces ended by an F; stderr noise interleaved, even between the
    pieces of one line."""
    out = []
    for n, line in enumerate(lines):
        body = line.rstrip(b"\n")
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randrange(0, 4))))
        if rng.random() < 0.3:
            cuts = list(range(piece, len(body), piece))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
        for i, part in enumerate(parts):
            tag = b"F" if i == len(parts) - 1 else b"P"
            stamp = f"2026-02-01T10:{n % 60:02d}:{i % 60:02d}.{rng.randrange(10**9):09d}Z".encode()
            out.append(stamp + b" stdout " + tag + b" " + part + b"\n")
            if rng.random() < 0.2:
                out.append(stamp + b" stderr F " + rng.choice(NOISE) + b"\n")
    return out


def docker_records(lines: list[bytes], rng: random.Random) -> list[bytes]:
    """Each line as Docker json-file records, long ones split into pieces whose log has
    no trailing newline (Docker splits at 16 KiB; here smaller, at character bounds)."""
    out = []
    for line in lines:
        text = line.decode("utf-8")
        body = text.rstrip("\n")
        size = rng.choice([50, 200, 16384])
        parts = [body[i:i + size] for i in range(0, len(body), size)] or [""]
        for i, part in enumerate(parts):
            log = part + ("\n" if i == len(parts) - 1 else "")
            out.append(json.dumps({"log": log, "stream": "stdout",
                                   "time": "2026-02-01T10:00:00.000000001Z"}).encode() + b"\n")
            if rng.random() < 0.2:
                out.append(json.dumps({"log": "noise on stderr\n", "stream": "stderr",
                                       "time": "2026-02-01T10:00:00Z"}).encode() + b"\n")
    return out


def noise_count(records: list[bytes]) -> int:
    """Noise lines on stderr that the parser counts as bad (not the blank ones)."""
    return sum(1 for r in records if (b" stderr F " in r and not r.endswith(b" stderr F \n"))
               or b"noise on stderr" in r)


def rounds_of(out: Path) -> list[tuple]:
    """Everything that must not depend on the wrapping: every round's money and identity."""
    found = []
    for sid, doc in load_store(out).items():
        for r in doc["rounds"]:
            found.append((sid or "", r["timestamp"], r.get("model") or "", r["input_tokens"],
                          r["output_tokens"], r["cached_tokens"], r.get("cost_usd") or 0.0,
                          r.get("request_id") or ""))
    return sorted(found)


class ContainerLogs(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        self.gen = loggen.generate(seed=11, sessions=20, max_requests=8, content_scale=3)
        self.lines = self.gen.lines
        self.plain_out = self.tmp / "plain"
        plain = self.tmp / "plain.log"
        plain.write_bytes(b"".join(self.lines))
        self.monitor(self.plain_out, [plain])
        self.expected = rounds_of(self.plain_out)
        self.assertEqual(len(self.expected), len(self.gen.events))

    def monitor(self, out: Path, paths: list, max_line: int = 64 * 2**20):
        with Monitor(MonitorConfig(log_paths=[str(p) for p in paths], output_dir=out,
                                   rotate_wait=0, max_line_bytes=max_line),
                     err=io.StringIO()) as m:
            return m.poll_once()

    def counters(self, out: Path) -> dict:
        return json.loads((out / ".state.json").read_text())["counters"]

    def test_formats_are_detected_from_the_head_of_each_file(self):
        self.assertEqual(detect(b'2026-02-01T10:00:00.123456789Z stdout F {"a":1}'), CRI)
        self.assertEqual(detect(b"2026-02-01T10:00:00+08:00 stderr P x"), CRI)
        self.assertEqual(detect(b'{"log":"{\\"a\\":1}\\n","stream":"stdout"}'), DOCKER)
        self.assertEqual(detect(b'{"start_time":"2026"}'), PLAIN)
        self.assertIsNone(detect(b""))

    def test_cri_and_docker_wrapped_logs_store_exactly_what_the_plain_log_stores(self):
        for kind, wrap in (("cri", cri_records), ("docker", docker_records)):
            for seed in range(3):
                with self.subTest(kind=kind, seed=seed):
                    path = self.tmp / f"{kind}-{seed}" / "0.log"
                    path.parent.mkdir()
                    records = wrap(self.lines, random.Random(seed))
                    path.write_bytes(b"".join(records))
                    out = self.tmp / f"out-{kind}-{seed}"
                    self.monitor(out, [path])
                    self.assertEqual(rounds_of(out), self.expected)
                    bad = self.counters(out).get("bad_lines", {})
                    self.assertEqual(bad, {"bad_json": noise_count(records)})   # noise only

    def test_pieces_arriving_over_many_polls_and_restarts_are_joined_exactly_once(self):
        for kind, wrap in (("cri", cri_records), ("docker", docker_records)):
            with self.subTest(kind=kind):
                rng = random.Random(5)
                data = b"".join(wrap(self.lines, rng))
                path = self.tmp / kind / "0.log"
                path.parent.mkdir()
                out = self.tmp / f"polled-{kind}"
                pos = 0
                while pos < len(data):   # appended in random byte chunks, a pass after each
                    # Mostly big steps, some of a few bytes: lines and pieces cut anywhere.
                    step = rng.choice([rng.randrange(1, 100), rng.randrange(5000, 50000)])
                    with open(path, "ab") as f:
                        f.write(data[pos:pos + step])
                    pos += step
                    self.monitor(out, [path])
                self.assertEqual(rounds_of(out), self.expected)
                for name in (".state.json", ".state.json.bak"):   # and a full re-read
                    (out / name).unlink()
                self.monitor(out, [path])
                self.assertEqual(rounds_of(out), self.expected)

    def test_a_joined_line_is_known_by_its_first_pieces_position(self):
        line = self.lines[0].rstrip(b"\n")
        head = b"2026-02-01T10:00:00.1Z stderr F noise\n"
        pieces = [b"2026-02-01T10:00:00.2Z stdout P " + line[:40] + b"\n",
                  b"2026-02-01T10:00:00.3Z stderr F noise between pieces\n",
                  b"2026-02-01T10:00:00.4Z stdout F " + line[40:] + b"\n"]
        path = self.tmp / "k" / "0.log"
        path.parent.mkdir()
        path.write_bytes(head + b"".join(pieces))
        out = self.tmp / "k-out"
        self.monitor(out, [path])
        (doc,) = [d for d in load_store(out).values()]
        self.assertEqual(doc["rounds"][0]["source"]["offset"], len(head))

    def test_a_line_split_across_the_kubelets_rotation_and_compression_counts_once(self):
        for kind, wrap in (("cri", cri_records), ("docker", docker_records)):
            with self.subTest(kind=kind):
                records = wrap(self.lines, random.Random(8))
                # Rotate inside a split line: after a P piece (CRI) / unterminated log.
                cuts = [i for i, r in enumerate(records[:-1]) if
                        (b" stdout P " in r if kind == "cri" else b'\\n", "stream"' not in r
                         and b'"stdout"' in r)]
                self.assertTrue(cuts)
                cut = cuts[len(cuts) // 2] + 1
                d = self.tmp / f"pods-{kind}"
                d.mkdir()
                live, rotated = d / "0.log", d / "0.log.20260201-100000"
                out = self.tmp / f"rot-{kind}"
                pattern = [str(d / "0.log*")]
                live.write_bytes(b"".join(records[:cut]))
                self.monitor(out, pattern)                # the line is open at the end
                os.rename(live, rotated)                  # the kubelet renames...
                live.write_bytes(b"")                     # ...the runtime reopens
                self.monitor(out, pattern)
                live.write_bytes(b"".join(records[cut:cut + 3]))
                self.monitor(out, pattern)
                with open(live, "ab") as f:
                    f.write(b"".join(records[cut + 3:]))
                self.monitor(out, pattern)
                with open(rotated, "rb") as src, gzip.open(str(rotated) + ".gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)          # the kubelet compresses it
                rotated.unlink()
                self.monitor(out, pattern)
                self.assertEqual(rounds_of(out), self.expected)
                for name in (".state.json", ".state.json.bak"):   # re-read .gz and live
                    (out / name).unlink()
                self.monitor(out, pattern)
                self.assertEqual(rounds_of(out), self.expected)
                # Only the noise is bad: no piece of the split line became a line of its own.
                bad = self.counters(out).get("bad_lines", {})
                self.assertEqual(bad, {"bad_json": noise_count(records)})

    def test_a_forged_cri_prefix_inside_the_payload_is_payload(self):
        # What a container printed, looking like a CRI record itself: unwrapped once.
        line = self.lines[0].rstrip(b"\n")
        forged = b"2026-02-01T10:00:00Z stdout P " + line
        path = self.tmp / "f" / "0.log"
        path.parent.mkdir()
        path.write_bytes(b"2026-02-01T10:00:00.5Z stdout F " + forged + b"\n"
                         + b"2026-02-01T10:00:01.5Z stdout F " + self.lines[1])
        unwrapper = container_logs.Unwrapper(2**20)

        class Src:
            fp, offset = "x", 0

        class Lf:
            live = True

        Lf.head, Lf.path = path.read_bytes()[:1024], str(path)

        from agent_session_monitor.ingest.read_lines import split_lines
        raw = split_lines([path.read_bytes()], 0, 2**20, final=False)
        got = list(unwrapper.lines(Src, Lf, raw))
        self.assertEqual([g[2] for g in got], [forged, self.lines[1].rstrip(b"\n")])
        # The forged "P" did not open a run: both lines are released at once.
        self.assertEqual(got[0][1], len(path.read_bytes().split(b"\n")[0]) + 1)
        # A plain log whose later lines look like CRI stays plain (nothing stripped).
        plain = self.tmp / "p.log"
        plain.write_bytes(self.lines[0] + b"2026-02-01T10:00:00Z stdout P x\n" + self.lines[1])
        Lf.head, Lf.path = plain.read_bytes()[:1024], str(plain)
        Src.fp = "y"
        raw = split_lines([plain.read_bytes()], 0, 2**20, final=False)
        got = list(unwrapper.lines(Src, Lf, raw))
        self.assertEqual(got[1][2], b"2026-02-01T10:00:00Z stdout P x")
        self.assertEqual(len(got), 3)

    def test_broken_docker_records_are_counted_not_fatal(self):
        good = [b"".join(docker_records([line], random.Random(1))) for line in self.lines[:3]]
        broken = [b'{"log":"\\x41 invalid escape","stream":"stdout","time":"t"}\n',
                  b'{"log": 5, "stream": "stdout"}\n', b'{"log":"unterminated\n',
                  b'{"log":"\\ud800 lone surrogate\\n","stream":"stdout","time":"t"}\n',
                  b"\xff\xfe not utf-8\n"]
        path = self.tmp / "b" / "0.log"
        path.parent.mkdir()
        path.write_bytes(good[0] + b"".join(broken) + b"".join(good[1:]))
        stats = self.monitor(self.tmp / "b-out", [path])
        self.assertEqual(stats.rounds, 3)
        self.assertEqual(stats.bad["bad_docker_line"], 4)
        # The lone surrogate is a record of its own, bad for the parser (not JSON, not UTF-8).
        noise = noise_count(b"".join(good).splitlines(keepends=True))
        self.assertEqual(sum(stats.bad.values()), 5 + noise)

    def test_a_giant_partial_run_is_bounded_and_counted_and_other_lines_go_on(self):
        # Over --max-line-bytes: its data is not kept, it is counted once it ends.
        path = self.tmp / "g" / "0.log"
        path.parent.mkdir()
        giant = [b"2026-02-01T10:00:00Z stdout P " + b"x" * 1000 + b"\n"] * 50
        path.write_bytes(b"".join(giant) + b"2026-02-01T10:00:00Z stdout F end\n"
                         + b"2026-02-01T10:00:01Z stdout F " + self.lines[0])
        stats = self.monitor(self.tmp / "g-out", [path], max_line=8192)
        self.assertEqual(stats.bad["oversized_line"], 1)
        self.assertEqual(stats.rounds, 1)
        # One that never ends while the other stream keeps writing: given up past the
        # hold limit (counted), and the lines behind it are stored.
        old = container_logs.HOLD_LIMIT
        container_logs.HOLD_LIMIT = 64 * 1024
        self.addCleanup(setattr, container_logs, "HOLD_LIMIT", old)
        path = self.tmp / "g2" / "0.log"
        path.parent.mkdir()
        records = [b"2026-02-01T10:00:00Z stderr P never ends\n"]
        records += [b"2026-02-01T10:00:01Z stdout F " + line for line in self.lines]
        path.write_bytes(b"".join(records))
        out = self.tmp / "g2-out"
        stats = self.monitor(out, [path])
        self.assertEqual(stats.bad["partial_abandoned"], 1)
        self.assertEqual(rounds_of(out), self.expected)


class DaemonSetExample(unittest.TestCase):
    def test_the_readme_daemonset_reads_var_log_read_only_keeps_the_store_and_has_a_service(self):
        import re
        from tests.helpers import ROOT
        try:
            import yaml   # PyYAML: Debian's python3-yaml; not a dependency of the package
        except ImportError:
            self.skipTest("PyYAML is not installed (python3-yaml)")
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        docs = [d for block in re.findall(r"```yaml\n(.*?)```", text, re.S)
                for d in yaml.safe_load_all(block) if isinstance(d, dict) and "kind" in d]
        kinds = {d["kind"]: d for d in docs}
        self.assertLessEqual({"DaemonSet", "Service", "Secret"}, set(kinds))
        pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["varlog"]["hostPath"]["path"], "/var/log")
        monitor = next(c for c in pod["containers"] if c["name"] == "monitor")
        mounts = {m["name"]: m for m in monitor["volumeMounts"]}
        self.assertTrue(mounts["varlog"]["readOnly"])
        self.assertIn("store", mounts)
        self.assertIn("--follow", monitor["args"])
        web = next(c for c in pod["containers"] if c["name"] == "web")
        self.assertIn("0.0.0.0", web["args"])   # reachable beyond the pod: so a token
        self.assertEqual(web["env"][0]["name"], "AGENT_SESSION_MONITOR_TOKEN")
        self.assertEqual(kinds["Service"]["spec"]["selector"],
                         kinds["DaemonSet"]["spec"]["selector"]["matchLabels"])


if __name__ == "__main__":
    unittest.main()
