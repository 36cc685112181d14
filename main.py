#!/usr/bin/env python3
"""Monitor Higress access logs and keep per-session token and cost records.

    python3 main.py --log-path /var/log/proxy/access.log --output-dir ./sessions

Works from a checkout with nothing installed; the logic is in agent_session_monitor/.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agent_session_monitor.monitor_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
