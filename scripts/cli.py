#!/usr/bin/env python3
"""Query the session store written by main.py: show, list, stats-model, stats-date,
stats-consumer, stats-agent, stats-channel, export, url.

    python3 scripts/cli.py --data-dir ./sessions list

Works from a checkout with nothing installed; the logic is in agent_session_monitor/cli.py
(arguments) and cli_commands.py (the commands).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent_session_monitor.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
