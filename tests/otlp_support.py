"""Test support for the OTLP export: the official proto classes (test-only dependency), a
fake OTLP/HTTP collector on 127.0.0.1 whose answers a test scripts, and a protobuf walker
independent of agent_session_monitor.otel.wire (so the fake does not trust the code it tests)."""

from __future__ import annotations

import gzip
import importlib
import os
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers import ROOT

# Where tools/install_test_deps.sh puts opentelemetry-proto (+ protobuf).
PROTO_SITE = Path(os.environ.get("ASM_OTLP_PROTO_PATH") or ROOT / ".venv-test" / "proto-site")


def load_proto():
    """The ``trace_service_pb2`` module of opentelemetry-proto, or None."""
    name = "opentelemetry.proto.collector.trace.v1.trace_service_pb2"
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    if not PROTO_SITE.is_dir():
        return None
    sys.path.append(str(PROTO_SITE))
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# -- a minimal protobuf reader -------------------------------------------------------------

def fields(data: bytes):
    """(field number, wire type, value) of one message; value is int or bytes."""
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        wire = tag & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield tag >> 3, wire, value


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def spans_of(request: bytes) -> list[dict]:
    """Each span of an ExportTraceServiceRequest as {span_id: hex, attrs: {key: str/int}}."""
    out = []
    for n, _, rs in fields(request):
        if n != 1:
            continue
        for n2, _, ss in fields(rs):
            if n2 != 2:
                continue
            for n3, _, span in fields(ss):
                if n3 != 2:
                    continue
                item = {"attrs": {}}
                for n4, _, value in fields(span):
                    if n4 == 2:
                        item["span_id"] = value.hex()
                    elif n4 == 9:
                        key, val = None, None
                        for n5, _, v in fields(value):
                            if n5 == 1:
                                key = v.decode()
                            elif n5 == 2:
                                for n6, w6, any_v in fields(v):
                                    val = any_v.decode() if w6 == 2 and n6 == 1 else any_v
                        item["attrs"][key] = val
                out.append(item)
    return out


# -- the fake collector --------------------------------------------------------------------

class FakeCollector(ThreadingHTTPServer):
    """Answers POST /v1/traces as ``script`` says, one entry per request, then ``default``:
    an int status, ``"hang"`` (answer nothing for ``hang_seconds`` or until ``release``
    is set, then drop the connection) or ``"close"`` (drop the connection at once). ``reject`` (a function of
    the decoded spans) can turn a would-be 200 into a 400. Only 200s count as received."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, script=(), default=200, hang_seconds: float = 3.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.default = default
        self.hang_seconds = hang_seconds
        self.reject = None
        self.release = threading.Event()       # set: hanging requests end at once
        self.received: Counter = Counter()     # span id -> times accepted
        self.attrs: dict[str, dict] = {}
        self.requests: list[dict] = []         # headers and outcome of every request
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    def next_action(self):
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def wait_for(self, n: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= n:
                return True
            time.sleep(0.02)
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        server: FakeCollector = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        action = server.next_action()
        record = {"path": self.path, "headers": dict(self.headers), "action": action}
        server.requests.append(record)
        if action == "hang":
            server.release.wait(server.hang_seconds)
            self.close_connection = True
            return
        if action == "close":
            self.close_connection = True
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        spans = spans_of(body)
        record["spans"] = len(spans)
        if action == 200 and server.reject is not None and server.reject(spans):
            action = record["action"] = 400
        if action == 200:
            with server.lock:
                for span in spans:
                    server.received[span["span_id"]] += 1
                    server.attrs[span["span_id"]] = span["attrs"]
        payload = b"" if action == 200 else b"scripted failure"
        self.send_response(action)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
