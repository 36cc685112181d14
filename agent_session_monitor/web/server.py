"""``scripts/webserver.py``: the web UI over HTTP (spec: interfaces.md).

    python3 scripts/webserver.py --data-dir ./sessions --port 8888 [--host 127.0.0.1]

This module is the transport: a ThreadingHTTPServer with per-connection timeouts, a
bound on connections, small request limits, only GET and HEAD, and the security
headers on every response. What is answered is routes.py's; who may see it, auth.py's.
"""

from __future__ import annotations

import argparse
import io
import re
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TextIO

from .. import __version__
from ..argtypes import Parser, non_negative_float, parse, port as port_number, prog_name
from ..config import ENV_LINK_SECRET, ENV_TOKEN, data_dir as resolve_data_dir, resolve
from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, MonitorError
from .routes import TEXT, Response, WebApp

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8888
MAX_REQUEST_LINE = 8192
MAX_HEADER_BYTES = 32 * 1024
MAX_CONNECTIONS = 64
# How long a new connection may wait for a slot before its 503. A burst that ends (a
# load test, a dashboard's tabs reconnecting) leaves handler threads finishing their
# last responses for a fraction of a second; a client arriving then is served, not
# refused. Clients that hold every slot (slowloris) still get their 503, just later.
ADMIT_WAIT = 2.0

# No inline script or style at all: the pages are markup plus /static files, and data
# reaches the script through fetch or escaped data-* attributes.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    # A signed session link in a Referer would hand that session to another site.
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
)


# -- HTTP ------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    server_version = f"agent-session-monitor/{__version__}"
    # Headers and body are two writes: with Nagle's algorithm the body would wait for
    # the client's delayed ACK (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    sys_version = ""
    protocol_version = "HTTP/1.1"
    server: "WebServer"

    def setup(self) -> None:
        # Per-connection timeout: a client that stalls loses its thread.
        self.timeout = self.server.app_timeout
        super().setup()
        # The socket timeout bounds each recv, not the request: a client sending a byte
        # a second (slowloris) would never time out. Read through a deadline instead.
        self.rfile.close()   # makefile()'s reader: unclosed, it would keep the socket open
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        """CPython's, with a smaller request-line limit, a deadline for the request line
        and headers, no HTTP/0.9, no request body, and only GET / HEAD."""
        try:
            # The wait for the request (keep-alive idle time included), its line and
            # its headers all end by one deadline; the response is written without it.
            self._reader.deadline = time.monotonic() + self.timeout
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._reader.deadline = None
            self.connection.settimeout(self.timeout)
            if self.request_version == "HTTP/0.9":
                # A request line without a version: CPython would answer it with a bare
                # body, no status line and none of the security headers.
                self.send_error(400, "HTTP/0.9 is not served")
                return
            if sum(len(k) + len(v) + 4 for k, v in self.headers.items()) > MAX_HEADER_BYTES:
                self.send_error(431)
                return
            if self.command not in ("GET", "HEAD"):
                self.close_connection = True
                self._send(Response(405, b"Only GET and HEAD are served.\n", TEXT,
                                    [("Allow", "GET, HEAD")]))
                return
            if self.headers.get("Transfer-Encoding") is not None or any(
                    value.strip() != "0" for value in self.headers.get_all("Content-Length", [])):
                # GET and HEAD bodies are never read: on a kept-alive connection they
                # would be parsed as the next request (smuggling behind a proxy).
                self.send_error(400, "A request body is not accepted")
                return
            self._send(self.server.app.handle(self.command, self.path, self.headers))
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by the request parser, with the same headers as every response."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # Still the parser's default (no valid version read yet): send_response would
            # then write neither status line nor headers.
            self.request_version = "HTTP/1.1"
        text = f"{code} {message or self.responses.get(code, ('Error',))[0]}\n"
        self._send(Response(code, text.encode("utf-8", "replace"), TEXT))

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", response.cache)
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and response.status not in (204, 304):
            self.wfile.write(response.body)

    def log_request(self, code: object = "-", size: object = "-") -> None:
        # Tokens and link signatures never reach the log.
        target = re.sub(r"((?:^|[?&])(?:token|sig)=)[^&]*", r"\1[redacted]",
                        getattr(self, "path", "") or "")
        target = target.encode("ascii", "backslashreplace").decode("ascii")
        target = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", target)
        self.log_message('"%s %s" %s', self.command or "-", target[:300], code)

    def log_message(self, format: str, *args: object) -> None:
        self.server.app.log_line(f"{self.address_string()} - [{self.log_date_time_string()}] "
                             f"{format % args}")


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each with the socket timeout lowered to what is left
    until ``deadline`` (when set): past it, TimeoutError, however steadily bytes come."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request not received in time")
            self._sock.settimeout(min(self._timeout, left))
        return self._sock.recv_into(buffer)


class WebServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    app: WebApp
    app_timeout: float
    admit_wait: float = ADMIT_WAIT

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # Serve exactly what was asked for: "::1" must not also mean 127.0.0.1.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        # Bounded threads: beyond max_connections a client waits briefly for a slot (the
        # kernel's backlog queues the ones behind it), then gets a 503, never a thread.
        if not self._slots.acquire(timeout=self.admit_wait):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\nRetry-After: 5\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        self.app.log_line(f"error: {client_address[0]}: " + traceback.format_exc().rstrip())


class _WebServer6(WebServer):
    address_family = socket.AF_INET6


def make_server(data_dir: Path | str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                token: str | None = None, link_secret: str | None = None,
                allowed_hosts: tuple[str, ...] | list[str] = (), *, tz: str | None = None,
                timeout: float = 15.0, log: TextIO | None = None,
                max_connections: int = MAX_CONNECTIONS, max_lag: float = 5.0,
                pricing: str | None = None, admit_wait: float = ADMIT_WAIT) -> WebServer:
    """A bound, not yet serving, server (``port=0`` picks a free port: see
    ``server.server_address``). Call ``serve_forever()``; ``shutdown()`` to stop."""
    bind = host.strip("[]")
    # Refuses, before binding, a server reachable from beyond this machine without a
    # token (webauth.Gate).
    app = WebApp(Path(data_dir), token=token, link_secret=link_secret,
                 allowed_hosts=tuple(allowed_hosts), tz_name=tz, bind_host=bind, log=log,
                 max_lag=max_lag, pricing=pricing)
    cls = _WebServer6 if ":" in bind else WebServer
    server = cls((bind, port), Handler)
    server.app = app
    server.app_timeout = timeout
    server._slots = threading.BoundedSemaphore(max_connections)
    server.admit_wait = admit_wait
    app.gate.port = server.server_address[1]
    return server


# -- command line ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("webserver.py"), description="Web UI for the agent-session-monitor session store.")
    parser.add_argument("--data-dir", help="session store written by main.py "
                        "(default ./sessions, or $AGENT_SESSION_MONITOR_DATA_DIR)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help="port (default 8888; 0 picks a free one)")
    parser.add_argument("--token", help=f"access token (or ${ENV_TOKEN}; prefer the "
                        "environment: a flag is visible in ps)")
    parser.add_argument("--link-secret", help=f"secret that signs per-session links made by "
                        f"cli.py url (or ${ENV_LINK_SECRET})")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                        help="extra Host header to answer for (a reverse proxy's name); "
                        "repeatable")
    parser.add_argument("--tz", help="time zone for times and days (default UTC)")
    parser.add_argument("--max-lag", type=non_negative_float, default=5.0, metavar="SECONDS",
                        help="how old the overview's totals may be while newer ones are "
                        "computed after the monitor wrote (default 5; 0 = always exact)")
    parser.add_argument("--pricing", metavar="FILE", help="price overrides, as for main.py "
                        "(used for the cheaper-model suggestions; costs are stored)")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve the web UI until interrupted."""
    args = parse(build_parser(), argv, sys.stderr)
    if isinstance(args, int):
        return args
    token = resolve(args.token, ENV_TOKEN)
    secret = resolve(args.link_secret, ENV_LINK_SECRET)
    directory = resolve_data_dir(args.data_dir)
    try:
        server = make_server(directory, args.host, args.port, token, secret, args.allowed_host,
                             tz=args.tz, log=None if args.quiet else sys.stderr,
                             max_lag=args.max_lag, pricing=args.pricing)
    except MonitorError as e:
        print(f"webserver.py: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"webserver.py: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}",
              file=sys.stderr)
        return EXIT_USAGE if isinstance(e, PermissionError) else 1
    if not directory.is_dir():
        print(f"webserver.py: warning: no session store at {directory} yet (run main.py "
              "--output-dir there); serving anyway", file=sys.stderr)
    if token and len(str(token)) < 16:
        print("webserver.py: warning: the access token is short; use 16+ random characters "
              "(python3 -c 'import secrets; print(secrets.token_urlsafe())')", file=sys.stderr)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving {directory} on http://{shown}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        server.server_close()
    return EXIT_OK
