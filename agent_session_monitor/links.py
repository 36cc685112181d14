"""Per-session links: an HMAC of the session id (and an optional expiry) that opens that
one session's page and JSON, and nothing else, on a server reachable beyond loopback."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

DEFAULT_BASE_URL = "http://127.0.0.1:8888"


def sign(session_id: str, secret: str, expires: int | None = None) -> str:
    """Signature over the exact id and expiry: changing either invalidates it."""
    message = f"v1\n{session_id}\n{expires if expires is not None else ''}"
    mac = hmac.new(secret.encode("utf-8"), message.encode("utf-8", "surrogatepass"),
                   hashlib.sha256)
    return mac.hexdigest()[:32]


def verify(session_id: str, signature: str, expires: str | int | None, secret: str,
           now: float | None = None) -> bool:
    """True if ``signature`` was made by :func:`sign` for this id and has not expired."""
    if not secret or not signature:
        return False
    exp: int | None
    if expires in (None, ""):
        exp = None
    else:
        try:
            exp = int(expires)
        except (TypeError, ValueError):
            return False
        if exp < (time.time() if now is None else now):
            return False
    return hmac.compare_digest(sign(session_id, secret, exp), signature)


def session_url(session_id: str, base_url: str | None = None, secret: str | None = None,
                ttl_seconds: int | None = None, now: float | None = None) -> str:
    """The web UI link for a session (what Clawdbot pastes), the id URL-encoded; signed
    when a link secret is configured, expiring after ``ttl_seconds`` if given."""
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    params = {"id": session_id}
    if secret:
        expires = None
        if ttl_seconds is not None:
            expires = int((time.time() if now is None else now) + ttl_seconds)
            params["exp"] = str(expires)
        params["sig"] = sign(session_id, secret, expires)
    # ":" stays readable (agent:main:discord:...): legal in a query, and chat apps keep it.
    query = urlencode(params, safe=":", quote_via=quote, encoding="utf-8", errors="surrogatepass")
    return f"{base}/session?{query}"
