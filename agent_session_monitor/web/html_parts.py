"""HTML built from escaped parts: every value is escaped where it is inserted unless it
is already :class:`Markup` (the output of this module), so forgetting is not possible
without writing ``Markup(...)`` by hand, which only this module and the page skeleton do.

    h("a", {"href": url("/session", id=sid)}, sid)   # sid escaped, href built and escaped

Log content (ids, model names, prompts, tool arguments) is attacker-controlled: it can
hold ``<script>``, ``</script>``, quotes to break out of attributes, or ``javascript:``.
"""

from __future__ import annotations

import html
import re
from typing import Iterable, Union
from urllib.parse import quote, urlencode

__all__ = ["Markup", "escape", "h", "join", "text", "url"]

_VOID = frozenset(("br", "hr", "img", "input", "link", "meta", "source", "wbr"))
# Tag and attribute names are written by this package, never taken from data; the
# patterns make a mistake (a name built from data) fail loudly instead of injecting.
_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9:-]*")
_URL_ATTRS = frozenset(("href", "src", "action", "formaction", "xlink:href"))
_SAFE_URL = re.compile(r"(?:/(?!/)|\?|#|https?://)")
# Shown as \uXXXX in text: bidi overrides and isolates would display an id like
# "invoice\u202etxt.exe" as "invoiceexe.txt"; C0 controls are invisible or break layout.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


class Markup(str):
    """Text already safe to place in HTML as is."""

    __slots__ = ()

    def __html__(self) -> str:
        return self

    def __add__(self, other: object) -> "Markup":
        return Markup(str.__add__(self, escape(other)))

    def __radd__(self, other: object) -> "Markup":
        return Markup(str.__add__(escape(other), self))


Child = Union[str, Markup, int, float, None, Iterable]


def escape(value: object) -> Markup:
    """``value`` as HTML text: Markup is kept, None is empty, anything else is escaped
    (quotes too, so the result is also safe inside a quoted attribute)."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    text = value if isinstance(value, str) else str(value)
    # Lone surrogates (valid in JSON, not in UTF-8) would make the page unencodable.
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return Markup(html.escape(text, quote=True))


def text(value: object) -> Markup:
    """``value`` as element content: escaped, and invisible or direction-changing
    characters shown as escapes (attribute values keep them: they round-trip)."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    raw = value if isinstance(value, str) else str(value)
    if _INVISIBLE.search(raw):
        raw = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", raw)
    return escape(raw)


def _children(children: Iterable) -> str:
    parts = []
    for child in children:
        if child is None or child is False:
            continue
        if isinstance(child, (list, tuple)) or (
                not isinstance(child, (str, bytes)) and hasattr(child, "__iter__")):
            parts.append(_children(child))
        else:
            parts.append(text(child))
    return "".join(parts)


def _attributes(attrs: dict | None) -> str:
    if not attrs:
        return ""
    out = []
    for name, value in attrs.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad attribute name {name!r}")
        if value is None or value is False:
            continue
        if value is True:
            out.append(f" {name}")
            continue
        text = value if isinstance(value, str) else str(value)
        if name in _URL_ATTRS and not _SAFE_URL.match(text):
            # Only links this package builds: never javascript:, data: or //host.
            raise ValueError(f"refusing URL {text[:40]!r} in {name}")
        out.append(f' {name}="{escape(text) if not isinstance(value, Markup) else value}"')
    return "".join(out)


def h(tag: str, attrs: dict | None = None, *children: Child) -> Markup:
    """An element; ``attrs`` values and ``children`` are escaped unless Markup.
    None / False attributes and children are left out; True is a boolean attribute."""
    if not _NAME.fullmatch(tag):
        raise ValueError(f"bad tag name {tag!r}")
    if tag in _VOID:
        return Markup(f"<{tag}{_attributes(attrs)}>")
    return Markup(f"<{tag}{_attributes(attrs)}>{_children(children)}</{tag}>")


def join(parts: Iterable[Child], sep: str = "") -> Markup:
    return Markup(escape(sep).join(_children([p]) for p in parts))


def url(path: str, **params: object) -> str:
    """A same-site URL with its query percent-encoded (ids can hold any character,
    lone surrogates included, which links.session_url signs as such)."""
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"not a site path: {path!r}")
    query = {k: ("" if v is True else str(v)) for k, v in params.items()
             if v is not None and v is not False and v != ""}
    if not query:
        return path
    return path + "?" + urlencode(query, safe=":", quote_via=quote, encoding="utf-8",
                                  errors="surrogatepass")
