"""The web UI: HTTP server, routes, access rules and signed links, page data, HTML from
escaped parts, charts, Prometheus metrics and static files. Takes the store; gives pages and JSON."""
