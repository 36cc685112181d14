"""agent-session-monitor: sessions, tokens and cost of AI agents behind Higress.

The pipeline reads in module order: tail (log files) -> parse (lines to requests)
-> store (session files, state, index) -> pricing -> report / render.
"""

__version__ = "0.1.0"
