"""Who may see what: the Host check (DNS rebinding), the access token (header, or the
cookie that ``?token=`` sets) and signed per-session links (links.py).

A server reachable from beyond this machine (a non-loopback bind, or an allowed Host
that is not a local name: a reverse proxy's) must have a token, or it refuses to start.
Only a loopback server without any such name answers without one, to this machine only
(a request that came through a proxy, by its forwarding headers, is refused). With a
token a request needs ``Authorization: Bearer TOKEN`` or the cookie. A link signed with
the link secret (``cli.py url``) opens that one session's page and JSON, and nothing
else: not the overview, not the lists, not another session. /healthz and the static
files are public.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from .. import links
from ..config import ENV_TOKEN
from ..errors import EXIT_USAGE, MonitorError

COOKIE = "asm_auth"
LOCAL_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))
# Headers a reverse proxy adds: a request carrying one did not come from this machine
# (or its sender claims not to), whatever its Host says.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")
# Paths a signed link opens (for the session it was signed for).
SIGNED_OK = frozenset(("/session", "/api/session", "/api/version"))


class Refused(Exception):
    """A request answered with an error page (or JSON error, under /api/)."""

    def __init__(self, status: int, title: str, message: str = "",
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message or title)
        self.status, self.title, self.message = status, title, message or title
        self.headers = headers or []


@dataclass
class Access:
    """Who is asking: everything (token, or an open loopback server), or one session
    through a signed link (whose parameters the page carries into its own links)."""

    full: bool
    link_params: dict = field(default_factory=dict)


class Gate:
    """The access decisions of one server (its token, link secret and host names)."""

    def __init__(self, token: str | None, link_secret: str | None,
                 allowed_hosts: tuple[str, ...] | list[str] = (), bind_host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.token = token or None
        self.link_secret = link_secret or None
        self.bind_host = bind_host.strip("[]").lower()
        self.port = port
        self.any_port_hosts: set[str] = set()
        self.exact_hosts: set[tuple[str, int]] = set()
        for value in allowed_hosts:
            name, host_port = split_host(value.strip().lower())
            if name is None:
                raise MonitorError(f"--allowed-host {value!r} is not a host name "
                                   "(example: monitor.example.com or monitor.example.com:443)",
                                   EXIT_USAGE)
            if host_port is None:
                self.any_port_hosts.add(name)
            else:
                self.exact_hosts.add((name, host_port))
        self.exposure = exposure(self.bind_host, allowed_hosts)
        if self.exposure and not self.token:
            raise MonitorError(f"refusing to serve {self.exposure} without an access token: "
                               f"pass --token or set {ENV_TOKEN} (a link secret alone "
                               "leaves the overview, the lists and every unsigned session "
                               "page open)", EXIT_USAGE)
        # The cookie holds a value derived from the token, not the token itself.
        self.cookie_value = (hmac.new(self.token.encode("utf-8", "surrogatepass"),
                                      b"asm-cookie-v1", hashlib.sha256).hexdigest()
                             if self.token else "")

    def host_allowed(self, value: str | None) -> bool:
        """Host header check against DNS rebinding: a page on an attacker's domain that
        resolves to this machine sends that domain as Host, never one allowed here."""
        if not value:
            return False
        name, port = split_host(value.strip().lower())
        if name is None:
            return False
        if name in self.any_port_hosts or (name, port) in self.exact_hosts:
            return True
        port_ok = port == self.port or (port is None and self.port == 80)
        if name in LOCAL_NAMES or name == self.bind_host:
            return port_ok
        # An IP literal is never a rebinding vector (no DNS is involved); a wildcard bind
        # answers on every address of the machine, which it cannot list.
        if self.bind_host in ("0.0.0.0", "::", "") and is_ip(name):
            return port_ok
        return False

    def login(self, path: str, pairs: list[tuple[str, str]], given: str,
              headers=None) -> tuple[str, str]:
        """``?token=``: the URL without it, and the cookie that replaces it. Behind a
        proxy that terminates HTTPS the cookie is ``Secure``: a browser then never sends
        it over plain HTTP to the same name."""
        if not _same(given, self.token or ""):
            pause()
            raise Refused(401, "Access token needed", "That access token is not right.")
        rest = [(k, v) for k, v in pairs if k != "token"]
        location = path + ("?" + urlencode(rest, quote_via=quote, encoding="utf-8",
                                           errors="surrogatepass") if rest else "")
        cookie = (f"{COOKIE}={self.cookie_value}; Path=/; HttpOnly; SameSite=Strict; "
                  f"Max-Age={30 * 86400}")
        if headers is not None and via_https(headers):
            cookie += "; Secure"
        return location, cookie

    def access(self, path: str, params: dict[str, str], headers) -> Access:
        """Everything (the token, or no token configured), one session (a signed link
        to it, on its page and JSON), or a refusal."""
        if self.token is None and any(headers.get(h) for h in FORWARDING_HEADERS):
            pause()
            raise Refused(403, "Access token needed",
                          "This server has no access token, so it serves this machine only, "
                          "and this request came through a proxy. Start it with a token "
                          f"(--token or ${ENV_TOKEN}) to serve through one.")
        full = self.token is None or self.has_token(headers)
        link_params: dict = {}
        if path in SIGNED_OK and "sig" in params:
            if self.link_secret and links.verify(params.get("id", ""), params["sig"],
                                                 params.get("exp"), self.link_secret):
                link_params = {"sig": params["sig"], "exp": params.get("exp")}
            elif not full:
                pause()
                raise Refused(403, "Link not valid", _link_problem(params, self.link_secret))
        if full or link_params:
            return Access(full, link_params)
        pause()
        raise Refused(401, "Access token needed", "This page needs the access token.",
                      [("WWW-Authenticate", 'Bearer realm="agent-session-monitor"')])

    def has_token(self, headers) -> bool:
        auth = headers.get("Authorization") or ""
        if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), self.token or ""):
            return True
        for part in (headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and _same(value, self.cookie_value):
                return True
        return False



def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1), with or without brackets."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure(bind_host: str, allowed_hosts) -> str:
    """Why a server is reachable from beyond this machine ("" if it is not): its bind
    address, or an allowed Host name that is not local (a reverse proxy forwards it)."""
    if not is_loopback(bind_host):
        return f"on {bind_host or 'every address'}"
    for value in allowed_hosts:
        name, _port = split_host(value.strip().lower())
        if name is None or not is_loopback(name):
            return f"--allowed-host {value} (a name other machines reach it by)"
    return ""


def via_https(headers) -> bool:
    """The browser's side of the connection was HTTPS, as the proxy in front says."""
    proto = (headers.get("X-Forwarded-Proto") or "").split(",")[0].strip().lower()
    forwarded = (headers.get("Forwarded") or "").lower().replace(" ", "")
    return proto == "https" or "proto=https" in forwarded


def pause() -> None:
    """A little delay on every refusal: guessing a token or signature over the network
    becomes slower still than it already is."""
    time.sleep(0.05)


def _link_problem(params: dict, secret: str | None) -> str:
    if not secret:
        return "This server has no link secret configured, so it accepts no signed links."
    exp = params.get("exp")
    if exp and exp.isdigit() and int(exp) < time.time():
        return "This session link has expired: ask for a new one (cli.py url)."
    return "This link is not valid for this session (it was changed or signed for another)."


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison (bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host(value: str) -> tuple[str | None, int | None]:
    """``name[:port]`` / ``[v6][:port]`` -> (name, port); (None, None) if malformed."""
    m = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?|([a-z0-9.-]+|[0-9a-f:]+:[0-9a-f:.]*)"
                     r"(?::(\d{1,5}))?", value)
    if not m:
        return None, None
    if m.group(1) is not None:
        return m.group(1), int(m.group(2)) if m.group(2) else None
    name, port = m.group(3), m.group(4)
    if ":" in name:     # a bare IPv6 address has no port
        return (name, None) if port is None and is_ip(name) else (None, None)
    return name.rstrip("."), int(port) if port else None
