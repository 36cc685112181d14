"""The web UI: HTTP server, routes, access rules and signed links, the store cache that
serves them, page data, HTML from escaped parts, charts, Prometheus metrics and static
files. Takes the store; gives pages and JSON."""
