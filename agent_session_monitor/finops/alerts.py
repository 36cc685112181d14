"""Alerts and where they go: stderr, Slack, Discord, Telegram or any JSON webhook.

An :class:`Alert` is plain text plus a few labelled fields; each service gets it in its
own documented payload shape, with the user-supplied parts (session ids, models,
consumers: whatever the logged requests carried) escaped for that service's markup, so a
session id cannot ping @everyone, inject a Slack link or break Telegram's HTML.

``--alert-webhook`` values (the kind is taken from the host, or given as a prefix):

- ``https://hooks.slack.com/services/...``                  Slack incoming webhook
- ``https://discord.com/api/webhooks/ID/TOKEN``              Discord webhook
- ``https://api.telegram.org/botTOKEN/sendMessage?chat_id=ID`` Telegram bot
- ``telegram://TOKEN@CHAT_ID`` (CHAT_ID numeric or ``@channel``)  the same, shorter
- any other ``http(s)://`` URL                                 generic JSON
- ``slack:URL``, ``discord:URL``, ``telegram:URL?chat_id=ID``, ``json:URL``: the kind
  given explicitly (a Slack-compatible Mattermost, a proxy, a test server).

Delivery (threads, retries, the outbox) is in delivery.py.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ..fmt import safe_text

KINDS = ("slack", "discord", "telegram", "json")
SEVERITY_ICON = {"info": "ℹ️", "warning": "⚠️", "critical": "🚨"}
DISCORD_COLOR = {"info": 0x3498DB, "warning": 0xF1C40F, "critical": 0xE74C3C}
_TELEGRAM_TOKEN = re.compile(r"\d+:[A-Za-z0-9_-]+")
_TELEGRAM_CHAT = re.compile(r"-?\d+|@[A-Za-z][A-Za-z0-9_]{3,}")


@dataclass(frozen=True)
class Alert:
    """One thing to tell people. ``key`` is its identity: the same key is never sent
    twice (budgets.py and monitor_hooks.py remember the keys sent)."""

    key: str
    kind: str                 # "budget", "anomaly", "test"
    severity: str             # "info", "warning", "critical"
    title: str                # one line, plain text
    text: str                 # a sentence or two, plain text
    fields: tuple = ()        # ((label, value), ...), plain text
    session_id: str | None = None
    url: str | None = None    # the session's page, when a base URL is configured
    created_at: str = ""      # UTC, when it was raised
    data: dict = field(default_factory=dict, compare=False)   # machine-readable details

    @property
    def id(self) -> str:
        return hashlib.sha256(self.key.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "severity": self.severity,
                "title": self.title, "text": self.text, "fields": [list(f) for f in self.fields],
                "session_id": self.session_id, "url": self.url, "created_at": self.created_at,
                "data": self.data}

    @classmethod
    def from_dict(cls, d: dict) -> "Alert":
        return cls(key=d["key"], kind=d.get("kind", "budget"),
                   severity=d.get("severity", "warning"), title=d.get("title", ""),
                   text=d.get("text", ""), fields=tuple(tuple(f) for f in d.get("fields") or ()),
                   session_id=d.get("session_id"), url=d.get("url"),
                   created_at=d.get("created_at", ""), data=d.get("data") or {})


@dataclass(frozen=True)
class Sink:
    """A webhook: its kind, the URL to POST to, and for Telegram the chat."""

    kind: str
    url: str
    chat_id: str | None = None

    @property
    def id(self) -> str:
        """Stable and secret-free (state.json names sinks by it, not by URL)."""
        text = f"{self.kind}\n{self.url}\n{self.chat_id or ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """For messages: the kind and host only; the path holds the webhook's secret."""
        return f"{self.kind} webhook at {urlsplit(self.url).hostname or '?'}"


def parse_sink(text: str) -> Sink:
    """A ``--alert-webhook`` value; ValueError with the reason and the accepted forms."""
    raw = text.strip()
    kind = None
    m = re.match(r"(slack|discord|telegram|json|generic):(?=https?://)", raw, re.IGNORECASE)
    if m:
        kind, raw = m.group(1).lower().replace("generic", "json"), raw[m.end():]
    if raw.startswith("telegram://"):
        token, _, chat = raw[len("telegram://"):].partition("@")
        if not _TELEGRAM_TOKEN.fullmatch(token) or not _TELEGRAM_CHAT.fullmatch(chat):
            raise ValueError("telegram://BOT_TOKEN@CHAT_ID needs a bot token (123456:ABC...) "
                             "and a numeric chat id or @channelname")
        return Sink("telegram", f"https://api.telegram.org/bot{token}/sendMessage", chat)
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {_redacted(raw)} (use https://..., "
                         "telegram://TOKEN@CHAT_ID, or a kind prefix such as slack:https://...)")
    host = parts.hostname.lower()
    if kind is None:
        if host == "hooks.slack.com":
            kind = "slack"
        elif (host in ("discord.com", "discordapp.com") or host.endswith(".discord.com")) \
                and parts.path.startswith("/api/webhooks/"):
            kind = "discord"
        elif host == "api.telegram.org":
            kind = "telegram"
        else:
            kind = "json"
    if kind == "telegram":
        chat = (parse_qs(parts.query).get("chat_id") or [""])[0]
        if not _TELEGRAM_CHAT.fullmatch(chat):
            raise ValueError("a Telegram URL needs ?chat_id=ID (numeric, or @channelname): "
                             "https://api.telegram.org/botTOKEN/sendMessage?chat_id=ID")
        return Sink("telegram", urlunsplit(parts._replace(query="", fragment="")), chat)
    return Sink(kind, raw)


def _redacted(url: str) -> str:
    return safe_text(url.split("?", 1)[0][:40] + ("..." if len(url) > 40 else ""))


# -- payloads -------------------------------------------------------------------------

def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fit(raw: str, escape, limit: int) -> str:
    """``escape(raw)`` within ``limit`` characters, cutting ``raw`` before escaping: a
    cut escaped text can end in half an entity (``&am``), which Telegram refuses."""
    text = escape(raw)
    size = len(raw)
    while len(text) > limit and size > 0:
        size = min(size - 1, size * limit // len(text))
        text = escape(raw[:size] + "…")
    return text


def slack_escape(text: str) -> str:
    """Slack's three control characters (``<`` starts links and mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Alert) -> dict:
    """Incoming webhook: ``text`` (notifications, old clients) and Block Kit ``blocks``.
    The session link is a button: its URL is a JSON string, needing no mrkdwn escape."""
    icon = SEVERITY_ICON.get(alert.severity, "")
    title = f"{icon} {alert.title}".strip()
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150), "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": _fit(alert.text, slack_escape, 3000)}},
    ]
    if alert.fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{_fit(k, slack_escape, 100)}*\n"
                                       f"{_fit(v, slack_escape, 1800)}"}
            for k, v in alert.fields[:10]]})
    if alert.url:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open session"},
             "url": alert.url}]})
    return {"text": _fit(f"{title}: {alert.text}", slack_escape, 3000), "blocks": blocks}


# Markdown and mention syntax; Discord shows a backslash-escaped punctuation mark as is.
_DISCORD_MARKUP = re.compile(r"([\\*_~`|>#\[\]()<@])")


def discord_escape(text: str) -> str:
    """Backslash before every markdown character (a literal in Discord)."""
    return _DISCORD_MARKUP.sub(r"\\\1", text)


def discord_payload(alert: Alert) -> dict:
    """Execute-webhook body: ``content`` plus one embed. ``allowed_mentions`` with no
    parse types: nothing in the text can ping anyone, escaped or not."""
    icon = SEVERITY_ICON.get(alert.severity, "")
    title = f"{icon} {alert.title}".strip()
    embed: dict = {"title": _cut(title, 256),
                   "description": _fit(alert.text, discord_escape, 4096),
                   "color": DISCORD_COLOR.get(alert.severity, 0x95A5A6)}
    if alert.url:
        embed["url"] = alert.url
    if alert.fields:
        embed["fields"] = [{"name": _cut(k, 256), "value": _fit(v or "-", discord_escape, 1024),
                            "inline": True} for k, v in alert.fields[:25]]
    if alert.created_at:
        embed["timestamp"] = alert.created_at
    embed["footer"] = {"text": "agent-session-monitor"}
    return {"content": _fit(title, discord_escape, 2000), "embeds": [embed],
            "allowed_mentions": {"parse": []}}


def telegram_payload(alert: Alert, chat_id: str) -> dict:
    """Bot API ``sendMessage`` with ``parse_mode: HTML``: only ``& < >`` (and quotes in
    the link's attribute) need escaping there, and nothing else is markup. Texts are cut
    before escaping, so that the message stays within 4,096 characters and valid."""
    esc = lambda s: html.escape(s, quote=False)  # noqa: E731
    icon = SEVERITY_ICON.get(alert.severity, "")
    lines = [f"{icon} <b>{_fit(alert.title, esc, 200)}</b>".strip(), _fit(alert.text, esc, 2500)]
    lines += [f"<b>{_fit(k, esc, 50)}:</b> {_fit(v, esc, 120)}" for k, v in alert.fields[:8]]
    if alert.url and len(alert.url) < 400:
        lines.append(f'<a href="{html.escape(alert.url, quote=True)}">Open session</a>')
    return {"chat_id": chat_id, "text": "\n".join(lines), "parse_mode": "HTML",
            "disable_web_page_preview": True}


def generic_payload(alert: Alert) -> dict:
    """Everything, as data: for scripts, PagerDuty-style relays, n8n."""
    return {"source": "agent-session-monitor", "id": alert.id, **alert.to_dict()}


def payload_for(sink: Sink, alert: Alert) -> dict:
    if sink.kind == "slack":
        return slack_payload(alert)
    if sink.kind == "discord":
        return discord_payload(alert)
    if sink.kind == "telegram":
        return telegram_payload(alert, sink.chat_id or "")
    return generic_payload(alert)


def stderr_line(alert: Alert) -> str:
    """One terminal line (control characters escaped)."""
    extra = "; ".join(f"{k}: {v}" for k, v in alert.fields)
    link = f" {alert.url}" if alert.url else ""
    return safe_text(f"alert [{alert.severity}] {alert.title}: {alert.text}"
                     + (f" ({extra})" if extra else "") + link)
