"""The web UI: server, routes, access rules, the store cache, page data, escaped HTML,
charts, /metrics and static files. Takes the store; gives pages and JSON."""
