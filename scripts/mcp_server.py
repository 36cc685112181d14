#!/usr/bin/env python3
"""An MCP server (stdio) answering agents' questions about the session store: one
session's cost and link, the top sessions, usage by model / agent / channel / day.

    python3 scripts/mcp_server.py --data-dir ./sessions

An MCP client starts it as a subprocess and talks JSON-RPC on its stdin/stdout. Works
from a checkout with nothing installed; the logic is in agent_session_monitor/mcp_server.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent_session_monitor.mcp_server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
