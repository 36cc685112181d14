"""Who can read a conversation through the web UI (issue 13, item 5).

The attacker is a colleague who wants to read someone else's conversation. Whenever the
server can be reached from beyond this machine (a non-loopback bind, or a --allowed-host
that is not a local name: a reverse proxy's), every route but /healthz, the static files
and a valid signed session link needs the token, and a server configured so without a
token refuses to start. The matrix: bind x allowed host x token x link secret x every
route (read from the route table, so a route added later is covered) x credential
(none, bearer, cookie, wrong) x link (valid, unsigned, tampered, for another session,
expired, replayed on another route).

Requests go straight to ``WebApp.handle`` (no sockets): thousands of them in seconds.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from pathlib import Path
from unittest import mock
from urllib.parse import quote

from tests.helpers import TempDirTest, ingest, make_line, write_lines

from agent_session_monitor import links
from agent_session_monitor.web import server as web, routes as webapp, auth as webauth
from agent_session_monitor.errors import MonitorError

TOKEN = "exposure-token-0123456789abcdef"
SECRET = "exposure-link-secret-0123456789"
VICTIM, OTHER = "victim-session", "colleague-session"
PORT = 8888
BINDS = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "192.0.2.10")
ALLOWED = ((), ("localhost",), ("127.0.0.1:8888",), ("monitor.example.com",),
           ("10.0.0.5:443",), ("monitor.example.com", "localhost"), ("[::1]",))
# For the per-route matrix: one of each kind (none, local, a proxy's name, an address),
# to keep it to seconds; the start-up test above takes every one.
ALLOWED_ROUTES = ((), ("localhost",), ("monitor.example.com",), ("10.0.0.5:443",))


def exposed(bind: str, allowed: tuple[str, ...]) -> bool:
    local = {"localhost", "127.0.0.1", "::1", "[::1]"}
    return bind not in ("127.0.0.1", "::1", "localhost") or any(
        h.rsplit(":", 1)[0] not in local and h not in local for h in allowed)


def headers(host: str, credential: str | None, app: webapp.WebApp) -> dict:
    h = {"Host": host}
    if credential == "bearer":
        h["Authorization"] = f"Bearer {TOKEN}"
    elif credential == "wrong":
        h["Authorization"] = f"Bearer {TOKEN[:-1]}x"
    elif credential == "cookie":
        h["Cookie"] = f"{webauth.COOKIE}={app.gate.cookie_value}"
    return h


def link_path(route: str, session_id: str, kind: str) -> str:
    """A session route with a link of ``kind``: valid, unsigned, tampered, other (signed
    for another session, id swapped in), expired."""
    if kind == "unsigned":
        return f"{route}?id={quote(session_id, safe='')}"
    ttl = -3600 if kind == "expired" else 3600
    signed_for = OTHER if kind == "other" else session_id
    url = links.session_url(signed_for, "http://x", SECRET, ttl)
    path = url[len("http://x"):].replace("/session?", route + "?", 1)
    if kind == "other":
        path = path.replace(quote(OTHER, safe=""), quote(session_id, safe=""))
    if kind == "tampered":
        path = path[:-1] + ("0" if path[-1] != "0" else "1")
    return path


class Exposure(TempDirTest):
    def setUp(self) -> None:
        super().setUp()
        log = self.tmp / "access.log"
        write_lines(log, [make_line(1, session=VICTIM), make_line(2, session=OTHER)], "wb")
        ingest(self.out, log)
        pause = mock.patch.object(webauth, "pause", lambda: None)  # refusals sleep 50 ms
        pause.start()
        self.addCleanup(pause.stop)

    def app(self, bind: str, allowed: tuple, token: str | None, secret: str | None):
        app = webapp.WebApp(self.out, token=token, link_secret=secret, allowed_hosts=allowed,
                            bind_host=bind.strip("[]"), log=io.StringIO())
        app.gate.port = PORT
        return app

    def host_for(self, bind: str, allowed: tuple) -> str:
        names = [h for h in allowed if not h.startswith(("localhost", "127.", "["))]
        if names:
            return names[0] if ":" in names[0] else names[0] + ":443"
        if bind in ("0.0.0.0", "::", "127.0.0.1", "localhost"):
            return f"127.0.0.1:{PORT}"
        return f"[{bind}]:{PORT}" if ":" in bind else f"{bind}:{PORT}"

    def test_exposed_without_a_token_refuses_to_start_whatever_the_secret(self) -> None:
        refused = started = 0
        for bind, allowed, secret in itertools.product(BINDS, ALLOWED, (None, SECRET)):
            with self.subTest(bind=bind, allowed=allowed, secret=secret):
                if exposed(bind, allowed):
                    with self.assertRaises(MonitorError) as caught:
                        web.make_server(self.out, bind, 0, None, secret, allowed)
                    self.assertEqual(caught.exception.exit_code, 2)
                    self.assertIn("token", str(caught.exception))
                    refused += 1
                else:
                    server = web.make_server(self.out, bind, 0, None, secret, allowed, log=None)
                    server.server_close()
                    started += 1
        self.assertGreater(refused, 40)
        self.assertGreater(started, 5)

    def test_webserver_py_behind_a_proxy_with_only_a_link_secret_refuses_to_start(self) -> None:
        err = io.StringIO()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SESSION_MONITOR")}
        env["AGENT_SESSION_MONITOR_LINK_SECRET"] = SECRET
        with mock.patch.dict(os.environ, env, clear=True), \
                mock.patch.object(web.WebServer, "serve_forever", lambda self, *a: None), \
                mock.patch("sys.stderr", err), mock.patch("sys.stdout", io.StringIO()):
            code = web.main(["--data-dir", str(self.out), "--port", "0",
                             "--allowed-host", "monitor.example.com"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.getvalue().strip().splitlines()), 1, err.getvalue())
        self.assertIn("--allowed-host monitor.example.com", err.getvalue())
        self.assertIn("AGENT_SESSION_MONITOR_TOKEN", err.getvalue())

    def test_every_route_under_every_configuration_and_credential(self) -> None:
        checked = 0
        session_routes = sorted(webauth.SIGNED_OK)
        plain_routes = sorted(set(webapp.ROUTES) - set(webauth.SIGNED_OK))
        started = time.monotonic()
        for bind, allowed, token, secret in itertools.product(
                BINDS, ALLOWED_ROUTES, (None, TOKEN), (None, SECRET)):
            if exposed(bind, allowed) and token is None:
                continue    # refuses to start (test above)
            app = self.app(bind, allowed, token, secret)
            host = self.host_for(bind, allowed)
            requests = [(r, "plain") for r in plain_routes]
            requests += [(link_path(r, VICTIM, k), k) for r in session_routes
                         for k in ("valid", "unsigned", "tampered", "other", "expired")]
            # A valid link replayed on routes it was not made for.
            valid = link_path("/session", VICTIM, "valid").split("?", 1)[1]
            requests += [(f"{r}?{valid}", "replayed") for r in plain_routes]
            for (path, kind), credential in itertools.product(
                    requests, (None, "bearer", "cookie", "wrong")):
                with self.subTest(bind=bind, allowed=allowed, token=bool(token),
                                  secret=bool(secret), path=path, credential=credential):
                    status = app.handle("GET", path, headers(host, credential, app)).status
                    route = path.split("?", 1)[0]
                    public = route in webapp.PUBLIC
                    has_token = token is not None and credential in ("bearer", "cookie")
                    if public or token is None or has_token:
                        self.assertNotIn(status, (401, 403), "must be served")
                    elif kind == "valid" and secret is not None:
                        self.assertEqual(status, 200, "a valid link opens its session")
                    else:
                        self.assertIn(status, (401, 403), "must need the token")
                    checked += 1
        self.assertGreater(checked, 4000)
        # The whole matrix stays cheap (no sockets, no refusal delay).
        self.assertLess(time.monotonic() - started, 60)

    def test_a_refused_page_shows_nothing_of_the_conversation(self) -> None:
        app = self.app("0.0.0.0", ("monitor.example.com",), TOKEN, SECRET)
        for route in sorted(set(webapp.ROUTES) - set(webapp.PUBLIC)):
            for path in (f"{route}?id={VICTIM}", link_path(route, VICTIM, "tampered")):
                response = app.handle("GET", path, {"Host": "monitor.example.com"})
                self.assertIn(response.status, (401, 403), path)
                # (The login page keeps the id the user asked for: that they already know.)
                for secret in (OTHER.encode(), b"message 0 of", b"answer 1", b"gpt-4o",
                               b"1,001"):
                    self.assertNotIn(secret, response.body, path)

    def test_a_proxy_in_front_of_a_loopback_server_without_token_is_refused(self) -> None:
        """A reverse proxy that passes Host as 127.0.0.1 makes a loopback server public;
        the forwarding headers it adds give it away."""
        app = self.app("127.0.0.1", (), None, SECRET)
        host = f"127.0.0.1:{PORT}"
        self.assertEqual(app.handle("GET", "/", {"Host": host}).status, 200)
        for name, value in (("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=203.0.113.9"),
                            ("X-Real-IP", "203.0.113.9"), ("X-Forwarded-Host", "mon.example")):
            for route in ("/", "/api/sessions", f"/session?id={VICTIM}", "/metrics"):
                with self.subTest(header=name, route=route):
                    response = app.handle("GET", route, {"Host": host, name: value})
                    self.assertEqual(response.status, 403)
                    self.assertIn(b"token", response.body)
            self.assertEqual(app.handle("GET", "/healthz", {"Host": host, name: value}).status, 200)
            signed = link_path("/session", VICTIM, "valid")
            self.assertEqual(app.handle("GET", signed, {"Host": host, name: value}).status, 403)
        # With a token, a proxied request is fine: the token decides.
        app = self.app("127.0.0.1", (), TOKEN, SECRET)
        h = {"Host": host, "X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {TOKEN}"}
        self.assertEqual(app.handle("GET", "/", h).status, 200)

    def test_the_login_cookie_is_secure_behind_an_https_proxy(self) -> None:
        app = self.app("127.0.0.1", ("monitor.example.com",), TOKEN, SECRET)
        for extra, secure in (({}, False), ({"X-Forwarded-Proto": "https"}, True),
                              ({"X-Forwarded-Proto": "http"}, False),
                              ({"Forwarded": "for=203.0.113.9; proto=https"}, True)):
            with self.subTest(extra=extra):
                response = app.handle("GET", f"/?token={TOKEN}",
                                      {"Host": "monitor.example.com", **extra})
                cookie = dict(response.headers)["Set-Cookie"]
                self.assertEqual("; Secure" in cookie, secure, cookie)
                self.assertIn("HttpOnly", cookie)
                self.assertNotIn(TOKEN, cookie)
