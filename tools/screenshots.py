#!/usr/bin/env python3
"""Screenshots of the web UI, so anyone can look at it without running it.

    python3 tools/screenshots.py [--out screenshots] [--data-dir STORE] [--dark]

Serves a store (by default a demo one: the shared fixture, the tests' hostile requests
and 40 generated agent sessions of the last two weeks) on 127.0.0.1 and has headless
Chromium capture the overview and the busiest session page at desktop (1280x900) and
phone (390x844) widths, plus full-height captures of both, into ``screenshots/``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_session_monitor.web import server as web  # noqa: E402
from agent_session_monitor.reports.reader import StoreReader  # noqa: E402

SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
FULL_HEIGHT = 3200
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def busiest_session(store: Path) -> str:
    """The session with the most rounds: the richest page to look at."""
    reader = StoreReader.open(store, progress=False)
    try:
        rows = reader.sessions(sort="rounds", limit=1)
    finally:
        reader.close()
    if not rows:
        raise SystemExit(f"screenshots.py: no sessions in {store}")
    return rows[0]["session_id"]


def capture(chromium: str, url: str, path: Path, size: tuple[int, int], profile: Path,
            dark: bool) -> None:
    args = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=3000", f"--screenshot={path}", url]
    if dark:
        args.insert(1, "--force-dark-mode")
        args.insert(1, "--blink-settings=preferredColorScheme=0")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not path.exists():
        raise SystemExit(f"screenshots.py: chromium failed for {url}: {proc.stderr[-1000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="screenshots.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "screenshots"), help="output directory")
    parser.add_argument("--data-dir", help="an existing session store (default: a demo store)")
    parser.add_argument("--dark", action="store_true", help="also capture the dark theme")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"screenshots.py: chromium not found at {args.chromium} (apt-get install chromium)",
              file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="asm-shots-") as tmp:
        work = Path(tmp)
        if args.data_dir:
            store = Path(args.data_dir)
        else:
            from tests.test_web import build_store

            store = work / "sessions"
            build_store(store, work / "logs", demo_sessions=40)
        server = web.make_server(store, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            pages = {"overview": f"{base}/",
                     "session": f"{base}/session?id={quote(busiest_session(store), safe='')}"}
            themes = [False, True] if args.dark else [False]
            for name, url in pages.items():
                for label, size in SIZES.items():
                    for dark in themes:
                        suffix = "-dark" if dark else ""
                        for full in (False, True):
                            shot = out / f"{name}-{label}{'-full' if full else ''}{suffix}.png"
                            height = FULL_HEIGHT if full else size[1]
                            capture(args.chromium, url, shot, (size[0], height),
                                    work / "profile", dark)
                            print(shot)
        finally:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
