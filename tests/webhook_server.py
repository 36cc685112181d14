"""A local HTTP server on 127.0.0.1 (port 0) that records the webhook requests it gets,
and answers per path: ``/ok``, ``/discord`` (204), ``/bot<TOKEN>/sendMessage`` (Telegram's
``{"ok": true}``), ``/fail`` (500 always), ``/flaky`` (500 twice, then 200), ``/bad``
(400), ``/switch`` (500 while ``server.down``, else 200), ``/limited`` (429 with
Retry-After once, then 200), ``/moved`` (302), ``/hang`` (no answer until the test ends)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    headers: dict
    body: bytes
    at: float

    @property
    def json(self) -> object:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        server: WebhookServer = self.server  # type: ignore[assignment]
        hits = server.record(Request(self.path, dict(self.headers), body, time.monotonic()))
        route = self.path.split("?")[0]
        if route.startswith("/hang"):
            server.release.wait(60)
            return self._answer(200, b"late")
        if route.startswith("/switch"):
            return self._answer(500 if server.down else 200, b"switch")
        if route.startswith("/fail"):
            return self._answer(500, b"internal error")
        if route.startswith("/flaky"):
            return self._answer(500 if hits <= 2 else 200, b"flaky")
        if route.startswith("/bad"):
            return self._answer(400, b"invalid_payload")
        if route.startswith("/limited"):
            if hits == 1:
                return self._answer(429, b'{"retry_after": 0.3}', {"Retry-After": "0.3"})
            return self._answer(200, b"ok")
        if route.startswith("/moved"):
            return self._answer(302, b"", {"Location": "/ok"})
        if route.startswith("/discord"):
            return self._answer(204, b"")
        if "/sendMessage" in route:
            return self._answer(200, b'{"ok": true, "result": {}}')
        return self._answer(200, b"ok")

    def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:   # the client gave up (its timeout): nothing to answer
            pass

    def log_message(self, *args) -> None:
        pass


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Request] = []
        self.release = threading.Event()
        self.down = False          # /switch answers 500 while True
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, request: Request) -> int:
        """Store the request; returns how many requests this path has had."""
        with self._lock:
            self.requests.append(request)
            return sum(1 for r in self.requests if r.path == request.path)

    def to(self, prefix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def wait_for(self, prefix: str, count: int, timeout: float = 10.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.to(prefix)
            if len(found) >= count:
                return found
            time.sleep(0.01)
        return self.to(prefix)

    def __enter__(self) -> "WebhookServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
