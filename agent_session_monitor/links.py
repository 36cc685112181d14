"""Per-session links: an HMAC of the session id (and an optional expiry) that opens that
one session's page and JSON, and nothing else, on a server reachable beyond loopback."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from urllib.parse import quote, urlencode

DEFAULT_BASE_URL = "http://127.0.0.1:8888"

# A signed link is a credential for one conversation, and it is pasted into chats that
# keep their history for years: unless asked otherwise it stops working after this long.
DEFAULT_LINK_TTL = 30 * 86400
# Its expiry must stay a date (datetime's years end at 9999).
MAX_LINK_TTL = 36500 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_ttl(text: str) -> int | None:
    """Seconds a signed link stays valid: ``3600``, ``90m``, ``24h``, ``7d``, ``2w``, or
    ``never`` (None). ValueError, with a message to show, for anything else."""
    if text.strip().lower() == "never":
        return None
    m = re.fullmatch(r"\s*(\d{1,15})\s*([smhdw]?)\s*", text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError("use a duration such as 3600, 90m, 24h or 7d, or never")
    seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds > MAX_LINK_TTL:
        raise ValueError(f"at most {MAX_LINK_TTL // 86400}d")
    return seconds


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
