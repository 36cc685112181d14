"""The web server under load and abuse, on loopback, in bounded time (the file: ~40 s,
of which wrk 17 s).

Many concurrent clients (wrk), slowloris clients, oversized and malformed requests, and
path tricks in session ids and static paths. Each test builds a store with the real
monitor (the shared fixture plus a generated log of 300 sessions) and starts its own
server (``web.make_server``, port 0, in a thread), so a test that exhausts connection
slots never affects another.

    ASM_LOAD_REPORT=1 python3 -m unittest tests.test_web_load -v   # also prints wrk figures

``Regressions`` pins server bugs found by these tests and fixed (each docstring says what
the server used to do and where the fix lives).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
import unittest
from urllib.parse import quote

from tests import loggen
from tests.helpers import DATA, TempDirTest, require_tool

from agent_session_monitor.web import server as web, routes as webapp

SESSIONS = 300
SEED = 20260201
WRK_SECONDS = 5
WRK_CONNECTIONS = 64          # = web.MAX_CONNECTIONS: wrk fills every slot, none to spare
WRK_MIN_REQUESTS = 100        # 20 req/s: an order of magnitude below a slow laptop
SLOW_CLIENTS = 50
SLOW_TIMEOUT = 2.0            # make_server(timeout=...): the per-connection timeout, lowered
PAGE_DEADLINE = 1.0           # a normal request while slow clients hang on
README_MARK = b"What each AI agent conversation said, and what it cost."
WEB_PY_MARK = b"class Handler(BaseHTTPRequestHandler)"


# -- helpers ----------------------------------------------------------------------------

class ServerCase(TempDirTest):
    """A store of ~300 sessions (plus the fixture's, among them ``../../tmp/pwned``) and
    servers on it, stopped at cleanup."""

    def setUp(self) -> None:
        super().setUp()
        generated = loggen.generate(SEED, sessions=SESSIONS, max_requests=10)
        log = self.tmp / "generated.log"
        log.write_bytes(b"".join(generated.lines))
        code, _out, err = self.run_monitor(DATA / "higress-realistic.log", log, extra=["--quiet"])
        self.assertEqual(code, 0, err)

    def serve(self, **options) -> tuple[web.WebServer, int, io.StringIO]:
        log = io.StringIO()
        server = web.make_server(self.out, "127.0.0.1", 0, log=log, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(thread.join, 5)
        self.addCleanup(server.shutdown)
        return server, server.server_address[1], log

    def get(self, port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def assert_healthy(self, port: int, after: str) -> None:
        status, body = self.get(port, "/healthz", timeout=5)
        self.assertEqual((status, body), (200, b"ok\n"), f"/healthz after {after}")

    def session_ids(self, port: int, n: int) -> list[str]:
        status, body = self.get(port, "/api/sessions?sort=rounds")
        self.assertEqual(status, 200)
        return [s["session_id"] for s in json.loads(body)["sessions"][:n]]

    def open_slow_clients(self, port: int, n: int) -> list[socket.socket]:
        socks = []
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(sock.close)
            sock.sendall(b"G")
            socks.append(sock)
        return socks

    def trickle(self, socks: list[socket.socket], stop: threading.Event,
                closed: dict[int, float], started: float) -> None:
        """One more byte of a never-ending request on every open socket, each second;
        notes when the server closed one (a send fails, or it answers / sends EOF)."""
        rest = b"ET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
        i = 0
        while not stop.wait(1.0):
            for n, sock in enumerate(socks):
                if n in closed:
                    continue
                readable, _, _ = select.select([sock], [], [], 0)
                try:
                    if readable:   # an answer (a 503, a 408) or EOF: the server gave up
                        raise ConnectionResetError
                    sock.send(rest[i % len(rest):i % len(rest) + 1])
                except OSError:
                    closed[n] = time.monotonic() - started
            i += 1

    def start_trickle(self, socks):
        stop, closed = threading.Event(), {}
        thread = threading.Thread(target=self.trickle,
                                  args=(socks, stop, closed, time.monotonic()), daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(stop.set)
        return stop, closed

    def assert_no_tracebacks(self, log: io.StringIO) -> None:
        """No request made the server (or the app) raise: handle_error and WebApp.handle
        log every exception as ``error: ...Traceback``."""
        text = log.getvalue()
        self.assertFalse("Traceback" in text, text[text.find("Traceback") - 20:][:3000])


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return what the server answers (one response, or all it sends
    before closing). A server that stops reading and closes (the 414 / 431 paths) may
    make our send fail; what it sent before is still read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        return read_response(sock, timeout)


def read_response(sock: socket.socket, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        buf += chunk
        if buf.startswith(b"HTTP/") and b"\r\n\r\n" in buf:
            head, _, body = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            if m and len(body) >= int(m.group(1)):
                break
    return buf


def status_of(raw: bytes) -> int | None:
    """The status of a response: its status line's, or for the bare bodies that
    CPython's parser sends in HTTP/0.9 style (no status line) the code the body names."""
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    if m:
        return int(m.group(1))
    m = re.match(rb"(\d{3}) ", raw) or re.search(rb"<h1>(\d{3}) ", raw[:4096])
    return int(m.group(1)) if m else None


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2] if raw.startswith(b"HTTP/") else raw


# -- wrk --------------------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(text: str) -> dict:
    """The figures of wrk's report (``--latency``)."""
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        if not m:
            raise AssertionError(f"no p{pct} in wrk output:\n{text}")
        return float(m.group(1)) * UNITS_MS[m.group(2)]

    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", text, re.M)
    if not m:
        raise AssertionError(f"no request count in wrk output:\n{text}")
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "requests": int(m.group(1)),
        "seconds": float(m.group(2)) * UNITS_MS[m.group(3)] / 1000,
        "rps": float(rps.group(1)) if rps else 0.0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, errors.groups()))) if errors else
                         {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
    }


class ParseWrk(unittest.TestCase):
    def test_wrk_report_is_parsed_with_units_and_error_lines(self):
        text = ("Running 5s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n"
                "  Latency Distribution\n     50%  376.82ms\n     75%  463.26ms\n"
                "     90%  570.50ms\n     99%    1.60s \n  795 requests in 5.02s, 25.43MB read\n"
                "  Socket errors: connect 0, read 2, write 0, timeout 5\n"
                "  Non-2xx or 3xx responses: 7\nRequests/sec:    158.49\n")
        figures = parse_wrk(text)
        self.assertEqual((figures["requests"], figures["rps"], figures["non_2xx"]),
                         (795, 158.49, 7))
        self.assertEqual(figures["socket_errors"], {"connect": 0, "read": 2, "write": 0,
                                                    "timeout": 5})
        self.assertAlmostEqual(figures["p50_ms"], 376.82)
        self.assertAlmostEqual(figures["p99_ms"], 1600.0)


# -- the tests --------------------------------------------------------------------------

class Load(ServerCase):
    def test_many_concurrent_clients_with_wrk(self):
        require_tool(self, "wrk")
        _server, port, _log = self.serve()
        session = self.session_ids(port, 1)[0]
        targets = ["/", "/api/sessions", "/session?id=" + quote(session, safe="")]
        for path in targets:
            # A fresh server per run: all 64 slots free (the previous run's connections
            # are released asynchronously), so any 503 would be this run's.
            _server, port, _log = self.serve()
            url = f"http://127.0.0.1:{port}{path}"
            # --timeout 10s: with 64 clients on a GIL-bound server a session page can take
            # over wrk's default 2 s at p99.9; slow is reported as latency, not as an error.
            proc = subprocess.run(["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s",
                                   "--latency", "--timeout", "10s", url],
                                  capture_output=True, text=True, timeout=WRK_SECONDS + 30)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            figures = parse_wrk(proc.stdout)
            if os.environ.get("ASM_LOAD_REPORT"):
                errors = figures["socket_errors"]
                print(f"wrk {path}: {figures['requests']} requests in {figures['seconds']:.2f}s, "
                      f"{figures['rps']:.1f} req/s, p50 {figures['p50_ms']:.1f} ms, "
                      f"p99 {figures['p99_ms']:.1f} ms, non-2xx {figures['non_2xx']}, "
                      f"socket errors {errors}", file=sys.__stderr__, flush=True)
            with self.subTest(path=path):
                self.assertEqual(figures["socket_errors"],
                                 {"connect": 0, "read": 0, "write": 0, "timeout": 0},
                                 proc.stdout)
                self.assertEqual(figures["non_2xx"], 0, proc.stdout)
                self.assertGreaterEqual(figures["requests"], WRK_MIN_REQUESTS, proc.stdout)
            self.assert_healthy(port, f"wrk on {path}")


class Slowloris(ServerCase):
    def test_slowloris_clients_do_not_block_others(self):
        _server, port, _log = self.serve(timeout=SLOW_TIMEOUT)
        socks = self.open_slow_clients(port, SLOW_CLIENTS)
        self.start_trickle(socks)
        time.sleep(0.3)
        # Every slow client got a connection slot (no 503, no close): they are all being
        # served, each by a thread blocked on its socket.
        readable, _, _ = select.select(socks, [], [], 0)
        self.assertEqual(readable, [], "the server answered or closed a slow client at once")
        session = self.session_ids(port, 1)[0]
        paths = ["/healthz", "/", "/api/sessions", "/session?id=" + quote(session, safe=""),
                 "/api/stats", "/static/app.js"]
        deadline = time.monotonic() + SLOW_TIMEOUT * 2   # past the timeout of the slow ones
        rounds = 0
        while time.monotonic() < deadline or rounds == 0:
            for path in paths:
                started = time.monotonic()
                status, _ = self.get(port, path, timeout=5)
                took = time.monotonic() - started
                self.assertEqual(status, 200, path)
                self.assertLess(took, PAGE_DEADLINE, f"{path} took {took:.2f}s beside "
                                f"{SLOW_CLIENTS} slow clients")
            rounds += 1
            time.sleep(0.2)
        self.assert_healthy(port, "slow clients")


class Malformed(ServerCase):
    def test_oversized_and_malformed_requests_get_4xx_and_server_survives(self):
        _server, port, log = self.serve(timeout=3)
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        close = b"Connection: close\r\n"
        cases = [
            # name, request bytes, expected status(es)
            ("request line > 8 KiB", b"GET /?q=" + b"a" * (web.MAX_REQUEST_LINE + 100)
             + b" HTTP/1.1\r\n" + host + b"\r\n", {414}),
            ("path > 8 KiB, no query", b"GET /" + b"b" * 20_000 + b" HTTP/1.1\r\n" + host
             + b"\r\n", {414}),
            ("headers > 32 KiB", b"GET /healthz HTTP/1.1\r\n" + host + b"".join(
                b"X-Filler-%d: %s\r\n" % (i, b"b" * 1000) for i in range(40)) + b"\r\n", {431}),
            ("a 1 MB header value", b"GET /healthz HTTP/1.1\r\n" + host + b"X-Big: "
             + b"v" * (1 << 20) + b"\r\n\r\n", {431}),
            ("more than 100 headers", b"GET /healthz HTTP/1.1\r\n" + host + b"".join(
                b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", {431}),
            ("garbage bytes", bytes(range(256)) * 4 + b"\r\n\r\n", {400}),
            ("random binary with newlines", secrets.token_bytes(4096) + b"\r\n\r\n", {400}),
            ("a non-HTTP line", b"HELLO WORLD THIS IS NOT HTTP\r\n\r\n", {400}),
            ("an SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n", {400}),
            # CPython reads headers after a two-word (HTTP/0.9) request line too.
            ("HTTP/0.9-style GET /", b"GET /\r\n\r\n", {400}),
            ("a POST with a body", b"POST /api/sessions HTTP/1.1\r\n" + host
             + b"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\": \"b\"} \r\n",
             {405}),
            ("PUT", b"PUT /healthz HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n\r\n", {405}),
            ("bad percent-encoding in id (API)", b"GET /api/session?id=%E0%A4%A HTTP/1.1\r\n"
             + host + close + b"\r\n", {400, 404}),
            ("bad percent-encoding in id (page)", b"GET /session?id=%FF%FE%zz HTTP/1.1\r\n"
             + host + close + b"\r\n", {400, 404}),
            ("NUL bytes in the path", b"GET /\x00/etc/passwd HTTP/1.1\r\n" + host + close
             + b"\r\n", {400, 404}),
            ("NUL byte in the id", b"GET /session?id=a\x00b HTTP/1.1\r\n" + host + close
             + b"\r\n", {400, 404}),
            ("encoded NUL in the id", b"GET /api/session?id=%00 HTTP/1.1\r\n" + host + close
             + b"\r\n", {400, 404}),
            ("absolute-form target", b"GET http://127.0.0.1/healthz HTTP/1.1\r\n" + host
             + close + b"\r\n", {400}),
            ("no Host header", b"GET /api/stats HTTP/1.1\r\n" + close + b"\r\n", {400}),
            ("a foreign Host header", b"GET /api/stats HTTP/1.1\r\nHost: evil.example\r\n"
             + close + b"\r\n", {400}),
            ("the id twice", b"GET /api/session?id=a&id=b HTTP/1.1\r\n" + host + close
             + b"\r\n", {400}),
            ("too many query fields", b"GET /api/sessions?" + b"&".join(
                b"k%d=1" % i for i in range(60)) + b" HTTP/1.1\r\n" + host + close + b"\r\n",
             {400}),
        ]
        for name, request, expected in cases:
            with self.subTest(name):
                raw = exchange(port, request)
                self.assertIn(status_of(raw), expected, raw[:300])
                self.assertNotIn(b"root:x:0:0", raw)
                self.assert_healthy(port, name)
        self.assert_no_tracebacks(log)


class PathTricks(ServerCase):
    def test_path_tricks_in_id_never_read_outside_the_store(self):
        secret = "CANARY-" + secrets.token_hex(12)
        # Canaries next to the store: a plain file, one shaped like a session document
        # (whose id the tricks below name), and files a sanitiser might map an id to.
        (self.tmp / "canary-secret.txt").write_text(secret + "\n")
        (self.tmp / "passwd").write_text(f"root:x:0:0:{secret}:/root:/bin/sh\n")
        canary_doc = ('{"session_id": "%s", "rounds": [], "secret": "%s"}')
        for rel, sid in (("canary.json", "../canary"), ("canary", "../canary"),
                         ("etc/passwd.json", "../etc/passwd"),
                         ("c__windows.json", "C:\\windows")):
            path = self.tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(canary_doc % (sid.replace("\\", "\\\\"), secret))
        pwned = [n for n in os.listdir(self.out) if n.startswith("tmp_pwned~")]
        self.assertEqual(len(pwned), 1, os.listdir(self.out))   # the fixture's ../../tmp/pwned
        _server, port, log = self.serve()

        ids = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "..%252F..%252Fetc%252Fpasswd",
               "/etc/passwd", "\x00", "%00", "....//....//", "....//....//etc/passwd",
               "C:\\windows", "C:\\windows\\win.ini", "..\\..\\canary", "../canary",
               "../canary.json", "../canary-secret.txt", "../passwd", "../etc/passwd",
               str(self.tmp / "canary-secret.txt"), str(self.tmp / "canary.json"),
               "canary\x00.json", "x" * 300, ".", "..", "./", "~", ".state", ".state.json",
               ".index.sqlite", ".lock", "~unsessioned", pwned[0], pwned[0][:-len(".json")],
               "../sessions/" + pwned[0], "%2e%2e%2fcanary", "\u2025/canary", "..\u2215canary"]
        paths = []
        for sid in ids:
            encoded = quote(sid, safe="")
            paths += [f"/session?id={encoded}", f"/api/session?id={encoded}",
                      f"/api/session?id={encoded}&download=1", f"/api/session?id={encoded}&view=1",
                      f"/session?id={encoded}&context=1"]
        # The same as they would be typed, unencoded where HTTP allows it.
        paths += [f"/session?id={sid}" for sid in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd",
                                                   "/etc/passwd", "%00", "....//....//",
                                                   "../canary", "C:\\windows")]
        canary_rel = os.path.relpath(self.tmp / "canary-secret.txt", webapp.STATIC_DIR)
        statics = ["/static/../../README.md", "/static/..%2F..%2FREADME.md",
                   "/static/%2e%2e/%2e%2e/README.md", "/static/%2E%2E%2F%2E%2E%2FREADME.md",
                   "/static/app.js/../../../README.md", "/static/../web.py", "/static/..%2fweb.py",
                   "/static/..\\web.py", "/static/app.js%00.md", "/static/app.js/",
                   "/static/APP.JS", "/static//etc/passwd", "/static/", "/static",
                   "/static/" + canary_rel, "/static/" + quote(canary_rel, safe=""),
                   "//etc/passwd", "/..%2f..%2fetc/passwd", "/../../README.md",
                   "/api/../../README.md", "/healthz/../../README.md",
                   "/static/app.js/..%2F..%2F..%2FREADME.md"]
        for path in paths + statics:
            with self.subTest(path=path):
                raw = exchange(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                     "Connection: close\r\n\r\n".encode("utf-8", "surrogatepass"))
                status = status_of(raw)
                self.assertIn(status, (400, 404), raw[:300])
                body = body_of(raw)
                self.assertNotIn(secret.encode(), body)
                self.assertNotIn(b"root:x:0:0", body)
                self.assertNotIn(README_MARK, body)
                self.assertNotIn(WEB_PY_MARK, body)
        # The real session behind the hashed file name is there by its id, and only so.
        status, body = self.get(port, "/api/session?id=" + quote("../../tmp/pwned", safe=""))
        self.assertEqual(status, 200)
        self.assertNotIn(secret.encode(), body)
        # The static files themselves still are.
        for name in webapp.STATIC_TYPES:
            self.assertEqual(self.get(port, f"/static/{name}")[0], 200)
        self.assert_healthy(port, "path tricks")
        self.assert_no_tracebacks(log)


class Regressions(ServerCase):
    """Bugs the server had; each test fails if its fix is undone."""

    def test_slowloris_clients_are_closed_within_the_connection_timeout(self):
        """A socket timeout bounds each recv, not the request: a client sending one
        byte a second never timed out, and ``max_connections`` such clients locked
        everyone else out with 503s. web.py now bounds the whole request head."""
        slots = 8
        _server, port, _log = self.serve(timeout=SLOW_TIMEOUT, max_connections=slots)
        socks = self.open_slow_clients(port, slots)
        _stop, closed = self.start_trickle(socks)
        deadline = time.monotonic() + SLOW_TIMEOUT + 3
        while len(closed) < slots and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(len(closed), slots, f"only {len(closed)} of {slots} slow clients "
                         f"were closed {SLOW_TIMEOUT + 3:.0f}s after they connected")
        self.assert_healthy(port, "slow clients that used every slot")

    def test_parser_errors_and_http09_get_a_status_line_and_the_security_headers(self):
        """CPython's parse_request leaves request_version at "HTTP/0.9" until it has read
        a valid version, and send_response then writes neither status line nor headers:
        garbage, a bad version or a two-word request line got a bare body without the
        security headers, and "GET /path" (HTTP/0.9) with a Host header was served,
        headerless. web.py now answers all of them with a status line and headers."""
        _server, port, _log = self.serve(timeout=3)
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        for request in (b"HELLO WORLD THIS IS NOT HTTP\r\n\r\n", bytes(range(1, 256)) + b"\r\n\r\n",
                        b"GET / HTTP/9.9\r\n" + host + b"\r\n", b"GET /\r\n\r\n",
                        b"GET /api/stats\r\n" + host + b"\r\n"):
            with self.subTest(request=request[:40]):
                raw = exchange(port, request)
                self.assertRegex(raw[:20], rb"^HTTP/1\.[01] [45]\d\d ")
                self.assertIn(b"\r\nX-Content-Type-Options: nosniff\r\n", raw)

    def test_a_lone_surrogate_in_a_query_parameter_is_a_4xx_not_a_500(self):
        """The query is decoded with errors="surrogatepass", so %ED%A0%80 becomes a lone
        surrogate, which sqlite3 cannot bind (UnicodeEncodeError): the id lookup and the
        q / model / consumer filters answered 500 with a traceback in the log."""
        _server, port, log = self.serve()
        for path in ("/api/session?id=%ED%A0%80", "/session?id=a%ED%B0%80b",
                     "/api/sessions?q=%ED%A0%80", "/?q=%ED%A0%80", "/api/sessions?model=%ED%A0%80",
                     "/api/sessions?consumer=%ED%A0%80"):
            with self.subTest(path=path):
                self.assertIn(self.get(port, path)[0], (200, 400, 404))
        self.assert_no_tracebacks(log)

    def test_a_get_body_is_not_read_as_a_second_request(self):
        """A GET/HEAD body was neither read nor refused: on a keep-alive connection its
        bytes were parsed as the next request. Behind a reverse proxy that reuses upstream
        connections that is request smuggling (the proxy sees one request, the server
        answers two). web.py handle_one_request now refuses a body with a 400."""
        _server, port, log = self.serve(timeout=1)
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        smuggled = b"GET /api/stats?smuggled=1 HTTP/1.1\r\n" + host + b"\r\n"
        request = (b"GET /healthz HTTP/1.1\r\n" + host
                   + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            everything = b""
            sock.settimeout(4)
            try:
                while chunk := sock.recv(65536):
                    everything += chunk
            except (socket.timeout, ConnectionResetError):
                pass
        self.assertIn(status_of(everything), (200, 400, 413))
        self.assertEqual(everything.count(b"HTTP/1.1 "), 1, everything[:600])
        self.assertNotIn("smuggled", log.getvalue())


if __name__ == "__main__":
    unittest.main()
