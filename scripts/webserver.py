#!/usr/bin/env python3
"""Web UI over the session store written by main.py.

    python3 scripts/webserver.py --data-dir ./sessions --port 8888 [--host 127.0.0.1]

Works from a checkout with nothing installed; the logic is in agent_session_monitor/web/server.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent_session_monitor.web.server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
