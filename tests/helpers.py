"""Shared test helpers: run the monitor into a temporary store and read it back."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))

from agent_session_monitor.store.names import is_session_file  # noqa: E402


class TempDirTest(unittest.TestCase):
    """A test with a fresh directory on the real disk (not tmpfs: inode reuse and
    fsync behave as on a gateway)."""

    def setUp(self) -> None:
        base = os.environ.get("ASM_TEST_TMP") or str(ROOT / ".test-tmp")
        os.makedirs(base, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="t-", dir=base))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.out = self.tmp / "sessions"

    def run_monitor(self, *log_paths: Path | str, extra: list[str] | None = None,
                    out: Path | None = None) -> tuple[int, str, str]:
        argv = []
        for p in log_paths:
            argv += ["--log-path", str(p)]
        argv += ["--output-dir", str(out or self.out), "--allow-log-dir", str(self.tmp),
                 "--allow-log-dir", str(DATA)]
        argv += extra or []
        from agent_session_monitor.monitor_cli import main as monitor_main

        stdout, stderr = io.StringIO(), io.StringIO()
        code = monitor_main(argv, out=stdout, err=stderr)
        return code, stdout.getvalue(), stderr.getvalue()

    def sessions(self, out: Path | None = None) -> dict[str, dict]:
        return load_store(out or self.out)


def ingest(out: Path, *log_paths: Path) -> None:
    """One pass of the monitor, in process, over ``log_paths`` into the store ``out``."""
    from agent_session_monitor.ingest.monitor import Monitor, MonitorConfig

    with Monitor(MonitorConfig(log_paths=[str(p) for p in log_paths], output_dir=out),
                 err=io.StringIO()) as monitor:
        monitor.poll_once()


def load_store(out: Path) -> dict[str, dict]:
    """session_id -> document (as readers see it: store.read_document), for every
    session file in ``out``."""
    from agent_session_monitor.store.sessions import read_document

    docs = {}
    for name in sorted(os.listdir(out)):
        if is_session_file(name):
            doc = read_document(out / name)
            key = doc["session_id"] if not doc.get("unsessioned") else None
            docs[key] = doc
    return docs


def write_lines(path: Path, lines, mode: str = "ab") -> None:
    with open(path, mode) as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else line.encode())


def make_line(n: int, session: str | None = "s1", model: str = "gpt-4o", input_token: int = 100,
              output_token: int = 10, request_id: bool = True, history: int = 1,
              pad: int = 0) -> bytes:
    """One Higress line for request ``n`` whose tokens identify it (input = 1000 + n),
    re-logging a history of ``history`` messages as agents do."""
    messages = [{"role": "system", "content": "You are a test agent."}]
    for i in range(history):
        messages.append({"role": "user" if i % 2 == 0 else "assistant",
                         "content": f"message {i} of {session}" + "x" * pad})
    ai = {"model": model, "input_token": input_token + n, "output_token": output_token,
          "messages": messages, "question": messages[-1]["content"], "answer": f"answer {n}"}
    if session is not None:
        ai["session_id"] = session
    outer = {"ai_log": json.dumps(ai, ensure_ascii=False),
             "start_time": f"2026-02-01T{9 + n // 3600 % 12:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"}
    if request_id:
        outer["request_id"] = f"req-{n:08d}"
    return json.dumps(outer, ensure_ascii=False).encode() + b"\n"


def stored_inputs(out: Path) -> list[int]:
    """Every stored round's input_tokens, sorted: with make_line, the request numbers."""
    return sorted(r["input_tokens"] for doc in load_store(out).values() for r in doc["rounds"])


def wait_until_catching_sigterm(pid: int, timeout: float = 60.0) -> bool:
    """Wait until process ``pid`` handles SIGTERM itself (Linux: SigCgt in
    /proc/PID/status); False if it ended or the timeout passed first. Before that
    moment (the interpreter starting, ~20 ms idle) a SIGTERM takes the kernel's default
    action, a kill like SIGKILL, which the kill tests cover; main.py catches it from its
    first lines on."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        if int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
                            return True
                        break
        except OSError:
            return False
        time.sleep(0.001)
    return False


def venv_python(env_name: str, venv: str, module: str) -> str | None:
    """The python of a test-only venv (tools/install_test_deps.sh puts them in
    .venv-test/), or the one ``$env_name`` names, if it can import ``module``."""
    import subprocess

    candidate = os.environ.get(env_name) or str(ROOT / ".venv-test" / venv / "bin" / "python")
    if not os.access(candidate, os.X_OK):
        return None
    probe = subprocess.run([candidate, "-c", f"import {module}"], capture_output=True)
    return candidate if probe.returncode == 0 else None


def require_tool(test: unittest.TestCase, name: str, found: bool | None = None) -> None:
    """Skip (with the reason) when a tool the test needs is missing; in CI, where
    .ci/run installs every tool, a missing one is a failure instead of a silent skip."""
    if found is None:
        found = shutil.which(name) is not None
    if found:
        return
    if os.environ.get("ASM_REQUIRE_ALL_TOOLS"):
        test.fail(f"{name} is required in CI (.ci/run installs it) but is missing")
    test.skipTest(f"{name} is not installed")


def record_commit_process_starts() -> list:
    """Patch CommitProcess.start (in a test's own interpreter) to note each catch-up's
    fork: the child's pid, or None when it fell back to the commit thread."""
    from agent_session_monitor.ingest.commit_process import CommitProcess

    started: list = []
    real = CommitProcess.start.__func__

    def start(cls, *args):
        proc = real(cls, *args)
        started.append(proc.pid if proc else None)
        return proc

    CommitProcess.start = classmethod(start)
    return started


def assert_store_files_known(test: unittest.TestCase, directory: Path) -> None:
    """Every file the store keeps for itself (a leading dot, not a temp) is one that
    check_store_dir refuses as a symlink: it checks them by name, so a new one must be
    added to STORE_FILES or a planted symlink of that name goes unnoticed."""
    from agent_session_monitor.store.durable import STORE_FILES, TMP_PREFIX

    own = {name for name in os.listdir(directory)
           if name.startswith(".") and not name.startswith(TMP_PREFIX)}
    test.assertTrue(own, f"no store file in {directory}")
    test.assertEqual(own - set(STORE_FILES), set(), "add them to durable.STORE_FILES")


def parse_outcome(raw: bytes, read_time: str) -> tuple:
    """What parse_line makes of a line, comparable across code paths: the bad line's kind
    and detail, every field of the request, or what it skipped."""
    from agent_session_monitor.ingest.parse import parse_line
    from agent_session_monitor.ingest.request import BadLine, Request

    try:
        req = parse_line(raw, read_time)
    except BadLine as e:
        return ("bad", e.kind, e.detail)
    if isinstance(req, Request):
        return ("request", [getattr(req, k) for k in req.__slots__])
    return ("skipped", req)


def parse_with_peak(raw: bytes, read_time: str):
    """parse_line's result and the peak of the memory Python allocated meanwhile
    (tracemalloc): what one hostile line can make the monitor hold."""
    import tracemalloc

    from agent_session_monitor.ingest.parse import parse_line

    tracemalloc.start()
    try:
        req = parse_line(raw, read_time)
        return req, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class SignalPoints:
    """The opcode events at which a real signal's handler can run in the traced code.

    Tests that send a SIGTERM "at bytecode N" run the handler from a trace function, so
    its exception is raised at that instruction. CPython 3.11+ runs handlers only where
    the interpreter checks for them: at a function's RESUME, at backward jumps, and after
    a call returns (a C call also runs them when a blocking wait is interrupted). Raising
    anywhere else makes states no signal can: between a ``with lock:`` body and the
    ``__exit__`` call (outside the exception table), which leaves the lock held for
    good: threading's own ``_active_limbo_lock`` left so hung a later thread's exit and
    the whole suite (CI, killed at 5400 s). So a point here is a RESUME, a backward jump,
    or the instruction after a call when an exception there goes to the same handler as
    one raised by the call. (On 3.10, which checks before most instructions and has no
    exception table, every instruction after a call counts.)"""

    CALLS = {"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW", "CALL_FUNCTION_EX",
             "CALL_KW"}
    CHECKS = {"RESUME", "JUMP_BACKWARD", "JUMP_ABSOLUTE", "POP_JUMP_BACKWARD_IF_FALSE",
              "POP_JUMP_BACKWARD_IF_TRUE", "POP_JUMP_BACKWARD_IF_NONE",
              "POP_JUMP_BACKWARD_IF_NOT_NONE"}

    def __init__(self) -> None:
        self._last: dict[int, tuple[object, int]] = {}   # id(frame) -> (code, offset)
        self._handlers: dict[object, list] = {}

    def is_point(self, frame, event: str) -> bool:
        """Call from the trace function for every event of a traced frame."""
        import dis

        key = id(frame)
        if event == "return":
            self._last.pop(key, None)
            return False
        if event != "opcode":
            return False
        code, offset = frame.f_code, frame.f_lasti
        name = dis.opname[code.co_code[offset]]
        before = self._last.get(key)
        self._last[key] = (code, offset)
        if name in self.CHECKS:
            return True
        if before is None or before[0] is not code:
            return False
        previous = dis.opname[code.co_code[before[1]]]
        # 3.11's PRECALL makes the call itself only when specialised for a builtin (then
        # CALL is skipped); a CALL after it has not called yet: not a point.
        if previous not in self.CALLS and not (previous == "PRECALL" and name != "CALL"):
            return False
        return self._handler(code, before[1]) == self._handler(code, offset)

    def _handler(self, code, offset: int):
        import dis

        table = self._handlers.get(code)
        if table is None:
            parse = getattr(dis, "_parse_exception_table", None)   # 3.11+
            table = self._handlers[code] = [(e.start, e.end, e.target)
                                            for e in (parse(code) if parse else ())]
        for start, end, target in table:
            if start <= offset < end:
                return target
        return None
