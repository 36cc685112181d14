#!/usr/bin/env python3
"""Monitor Higress access logs and keep per-session token and cost records.

    python3 main.py --log-path /var/log/proxy/access.log --output-dir ./sessions

Works from a checkout with nothing installed; the logic is in agent_session_monitor/.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agent_session_monitor.errors import Terminated, leave, stop_status  # noqa: E402 (tiny)


def _stop_during_start_up(signum, frame):
    raise Terminated


if __name__ == "__main__":
    # A SIGTERM while the package loads (~0.1 s, seconds on a loaded machine: a
    # `systemctl stop` right after a start) ends the run as any other stop does, not by
    # the signal's default action; main() installs its own handler next.
    signal.signal(signal.SIGTERM, _stop_during_start_up)
    try:
        from agent_session_monitor.monitor_cli import main
    except KeyboardInterrupt as stop:
        print("stopped; state saved.", file=sys.stderr)   # nothing was read yet
        sys.exit(stop_status(stop))
    sys.exit(leave(main()))
