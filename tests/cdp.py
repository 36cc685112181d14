"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (standard
library only: no WebSocket needed). It keeps one headless Chromium page open in real
time, so a test can change the store while the page runs and watch what the page does
(the ``--dump-dom`` runs in test_browser.py see one moment only).

Messages are JSON, NUL-terminated, on the child's fds 3 (commands) and 4 (answers).
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-pipe")


class Browser:
    """One page of a headless Chromium; close() (or ``with``) ends the browser."""

    def __init__(self, chromium: str, profile: Path, width: int = 1280, height: int = 900) -> None:
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()

        def wire() -> None:   # in the child, before exec: the pipe ends on fds 3 and 4
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self.proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     preexec_fn=wire, pass_fds=(3, 4),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buffer = b""
        self._next = 0
        self.console: list[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        self.resize(width, height)

    def call(self, method: str, session: bool = False, timeout: float = 20, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for answer in self._messages(deadline):
                if answer.get("id") == self._next:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})

    def _messages(self, deadline: float):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer")
            ready, _, _ = select.select([self._from_r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._from_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium exited")
                self._buffer += chunk
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            message = json.loads(raw)
            if message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"].get("args") or []
                self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                             for a in args))
            elif message.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(message["params"]["exceptionDetails"].get("text")))
            yield message

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=width < 600)

    def open(self, url: str, wait_for: str = "document.readyState === 'complete'") -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait(wait_for)

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 15) -> float:
        """Seconds until ``expression`` is true in the page (TimeoutError past timeout)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                if self.eval(expression):
                    return time.monotonic() - started
            except RuntimeError:
                pass   # the page is between documents
            time.sleep(0.05)
        raise TimeoutError(f"not true after {timeout} s: {expression}")

    def screenshot(self, path: Path, full_page: bool = False, selector: str | None = None) -> None:
        """The viewport, the whole page, or one element (``selector``) as a PNG."""
        params: dict = {"format": "png"}
        if full_page or selector:
            params["captureBeyondViewport"] = True
        if selector:
            box = self.eval(f"(() => {{ const r = document.querySelector({selector!r})"
                            ".getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, "
                            "r.width, r.height]; })()")
            params["clip"] = {"x": box[0], "y": box[1], "width": box[2], "height": box[3],
                              "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            os.close(self._to_w)
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()
        os.close(self._from_r)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
