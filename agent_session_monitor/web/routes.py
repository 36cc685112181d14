"""The web UI's routes and pages, without sockets: ``WebApp.handle(method, target,
headers)`` returns a :class:`Response` (server.py feeds it requests).

Routes: ``/`` overview, ``/session?id=ID`` one session, ``/api/sessions``,
``/api/session?id=ID``, ``/api/stats``, ``/api/version[?id=ID]`` (JSON), ``/metrics`` (Prometheus), ``/healthz``, ``/static/app.{js,css}``.
The overview answers from the derived index (its aggregates cached until the index
changes: store_cache.py); a session page reads its one file. Access decisions are auth.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qsl, urlsplit

from ..finops import insights
from . import metrics, render_html, render_session, session_view, views
from ..store.names import UNSESSIONED_FILE, UNSESSIONED_ID, file_name_for, is_session_file
from ..pricing.table import load_price_table
from ..store.sessions import UnreadableSession
from ..reports.timerange import parse_tz
from .auth import Access, Gate, Refused
from .store_cache import StoreCache

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: str = "no-store"


class WebApp:
    """Routing, access and rendering, without sockets (the handler feeds it requests)."""

    def __init__(self, data_dir: Path, *, token: str | None = None,
                 link_secret: str | None = None, allowed_hosts: tuple[str, ...] = (),
                 tz_name: str | None = None, bind_host: str = "127.0.0.1",
                 log: TextIO | None = None, max_lag: float = 5.0,
                 pricing: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        # For the session page's cheaper-model suggestions (costs themselves are stored).
        self.table = load_price_table(pricing)
        self.tz = parse_tz(tz_name)
        self.log = log
        self.gate = Gate(token, link_secret, allowed_hosts, bind_host)
        self.static: dict[str, tuple[bytes, str]] = {}
        versions = []
        for name, ctype in STATIC_TYPES.items():
            data = (STATIC_DIR / name).read_bytes()
            self.static[name] = (data, ctype)
            versions.append(hashlib.sha256(data).hexdigest()[:10])
        self.asset = {name: f"/static/{name}?v={v}" for name, v in zip(STATIC_TYPES, versions)}
        self.store = StoreCache(self.data_dir, self.tz, max_lag, self.log_line)

    # -- requests ------------------------------------------------------------------

    def handle(self, method: str, target: str, headers) -> Response:
        """Answer one request; ``headers`` is an ``email.message.Message``-like mapping."""
        api = target.startswith("/api/")
        try:
            return self._route(method, target, headers)
        except Refused as e:
            return self._refusal(e, api, headers, target)
        except Exception:
            self.log_line("error: " + traceback.format_exc().rstrip())
            return self._refusal(Refused(500, "Server error", "Something went wrong while "
                                         "answering; the server log has the details."),
                                 api, headers, target)

    def _route(self, method: str, target: str, headers) -> Response:
        if not self.gate.host_allowed(headers.get("Host")):
            raise Refused(400, "Host not allowed",
                          "This server does not answer for that host name (DNS rebinding "
                          "protection). Start it with --allowed-host NAME to add one.")
        if not target.startswith("/"):
            raise Refused(400, "Bad request", "Only origin-form request targets are served.")
        parts = urlsplit(target)
        path = parts.path
        try:
            # surrogatepass: a session id may hold a lone surrogate (a valid JSON string,
            # set by a client), and links to it encode it so.
            pairs = parse_qsl(parts.query, keep_blank_values=True, max_num_fields=40,
                              encoding="utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            raise Refused(400, "Bad request", "A query parameter is not UTF-8.") from None
        except ValueError:
            raise Refused(400, "Bad request", "Too many query parameters.") from None
        if not all(_is_utf8(key if key == "id" else key + value) for key, value in pairs):
            # Only the id may: anything else (a search, a filter) is not worth a lone
            # surrogate reaching the store's queries.
            raise Refused(400, "Bad request", "A query parameter is not UTF-8.")
        params = dict(pairs)
        if len(params) != len(pairs):
            # Which of two ids would a check and a load each take? Never ambiguous.
            raise Refused(400, "Bad request", "A query parameter is given twice.")
        handler = ROUTES.get(path)
        if handler is None:
            raise Refused(404, "Not found", "There is no page at this address.")
        if path in PUBLIC:
            return handler(self, params, Access(True))
        if "token" in params and self.gate.token:
            location, cookie = self.gate.login(path, pairs, params["token"], headers)
            html = render_html.signed_in_page(self._ctx(Access(True)), location)
            return Response(200, html_bytes(html), HTML, [("Set-Cookie", cookie)])
        return handler(self, params, self.gate.access(path, params, headers))

    def _refusal(self, e: Refused, api: bool, headers, target: str) -> Response:
        if api:
            body = json_bytes({"error": e.title, "message": e.message, "status": e.status})
            return Response(e.status, body, JSON, e.headers)
        ctx = self._ctx(Access(False))
        if e.status == 401 and self.gate.host_allowed(headers.get("Host")):
            parts = urlsplit(target)
            path = parts.path if parts.path in ROUTES else "/"
            try:
                params = dict(parse_qsl(parts.query, keep_blank_values=True,
                                        max_num_fields=40, errors="surrogatepass")
                              ) if path != "/" else {}
            except ValueError:   # not UTF-8, or too many: the login page keeps none
                params = {}
            html = render_html.login_page(ctx, path, params)
        else:
            html = render_html.error_page(ctx, e.status, e.title, e.message)
        return Response(e.status, html_bytes(html), HTML, e.headers)

    def _ctx(self, access: Access) -> render_html.PageContext:
        return render_html.PageContext(css=self.asset["app.css"], js=self.asset["app.js"],
                                       full_access=access.full,
                                       link_params=access.link_params)

    def log_line(self, message: str) -> None:
        if self.log is not None:
            try:
                self.log.write(message + "\n")
                self.log.flush()
            except (OSError, ValueError):
                pass

    # -- pages and API -------------------------------------------------------------

    def page_overview(self, params: dict, access: Access) -> Response:
        query = views.SessionQuery.from_params(params)
        days = views.int_param(params, "days", 30, 1, 366)
        data = self.store.overview_data(days)
        with self.store.reader() as reader:
            listing = views.session_list(reader, query)
            burn = insights.overview_burn(reader, tz=self.tz)
        view = views.overview(data, views.sessions_table(listing, self.tz), self.tz, burn)
        html = render_html.overview_page(self._ctx(access), view, query)
        return Response(200, html_bytes(html), HTML)

    def _load(self, params: dict, access: Access,
              family: bool = False) -> tuple[dict, dict | None]:
        """The session and, with ``family``, its parent and sub-agents with their cost
        (StoreReader.rollup), read with one reader."""
        session_id = params.get("id")
        if not session_id:
            raise Refused(400, "No session id", "Give the session as /session?id=SESSION_ID.")
        with self.store.reader() as reader:
            try:
                doc = reader.load_session(session_id)
            except UnreadableSession as e:
                # Named by its file's name only: the server's paths are not the reader's.
                raise Refused(503, "Session file corrupt",
                              f"The file of this session ({e.path.name}) is corrupt or "
                              f"unreadable: {e.reason}. It is kept as it is for the operator "
                              "(main.py --rebuild-index lists every such file).") from None
            if doc is None:
                # No suggestions for an id with a lone surrogate: SQLite cannot bind it.
                raise _Unknown(session_id, reader.close_matches(session_id)
                               if access.full and _is_utf8(session_id) else [])
            rollup = None
            if (family and not doc.get("unsessioned")
                    and _is_utf8(doc.get("session_id") or "")):
                rollup = reader.rollup(doc["session_id"])
        return doc, rollup

    def page_session(self, params: dict, access: Access) -> Response:
        try:
            doc, family = self._load(params, access, family=True)
        except _Unknown as e:
            html = render_html.unknown_session_page(self._ctx(access), e.session_id, e.matches)
            return Response(404, html_bytes(html), HTML)
        found = insights.session_insights(doc, self.table)
        view = session_view.session_page(doc, self.tz, insights=found, family=family)
        context = None
        if "context" in params:
            n = views.int_param(params, "context", 0, 0, 10**7)
            context = session_view.context_view(doc, n)
        html = render_session.session_page(self._ctx(access), view, context=context)
        return Response(200, html_bytes(html), HTML)

    def api_session(self, params: dict, access: Access) -> Response:
        try:
            doc, family = self._load(params, access,
                                     family=bool(params.get("view")) and "context" not in params)
        except _Unknown as e:
            raise Refused(404, "Unknown session",
                          f"No session with id {e.session_id!r} in this store.") from None
        if "context" in params:
            context = session_view.context_view(doc, views.int_param(params, "context", 0, 0, 10**7))
            if context is None:
                raise Refused(404, "Unknown round", "This session has no such round.")
            return Response(200, json_bytes({"context": context}), JSON)
        if params.get("view"):
            after = views.int_param(params, "after", 0, 0, 10**7)
            found = insights.session_insights(doc, self.table)
            view = session_view.session_page(doc, self.tz, after, found, family)
            return Response(200, json_bytes({"view": view}), JSON)
        headers = []
        if params.get("download"):
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", file_name_for(doc.get("session_id") or "")
                          [:-len(".json")])[:80].strip("._") or "session"
            headers.append(("Content-Disposition", f'attachment; filename="session-{safe}.json"'))
        return Response(200, json_bytes(doc, indent=2 if params.get("download") else None),
                        JSON, headers)

    def api_sessions(self, params: dict, access: Access) -> Response:
        query = views.SessionQuery.from_params(params)
        with self.store.reader() as reader:
            listing = views.session_list(reader, query)
        record = views.sessions_record(listing)
        if params.get("view"):
            record["view"] = views.sessions_table(listing, self.tz)
        return Response(200, json_bytes(record), JSON)

    def api_stats(self, params: dict, access: Access) -> Response:
        days = views.int_param(params, "days", 30, 1, 366)
        data = self.store.overview_data(days)
        listing = None
        with self.store.reader() as reader:
            burn = insights.overview_burn(reader, tz=self.tz)
            if params.get("view"):
                listing = views.session_list(reader, views.SessionQuery.from_params(params))
        record = {**views.stats_record(data, self.tz), "burn": burn,
                  "version": data.get("version")}
        if listing is not None:
            record["view"] = views.overview(data, views.sessions_table(listing, self.tz), self.tz,
                                            burn)
        return Response(200, json_bytes(record), JSON)

    def page_metrics(self, params: dict, access: Access) -> Response:
        """Prometheus exposition: the usage counters (``StoreCache.metrics_usage``, cached
        until the index changes) and the health part, read on every request."""
        body = metrics.render(self.store.metrics_usage(), self.data_dir).encode("utf-8")
        return Response(200, body, metrics.CONTENT_TYPE)

    def api_version(self, params: dict, access: Access) -> Response:
        """What changes when the monitor commits: the index's change stamp, or with
        ``id`` that session file's identity, size and time (the monitor replaces it on
        every new round). Microseconds to answer, so pages poll it every second and
        load the news only when it changed ("none": no such session yet)."""
        session_id = params.get("id")
        if session_id is None:
            version = self.store.store_version(self.store.watch.stamp())
        else:
            version = "none"
            names = [file_name_for(session_id)] + (
                [UNSESSIONED_FILE] if session_id == UNSESSIONED_ID else [])
            for name in names:
                if not is_session_file(name) or name != os.path.basename(name):
                    continue
                try:
                    st = os.stat(self.data_dir / name)
                except OSError:
                    continue
                version = f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"
                break
        return Response(200, json_bytes({"version": version}), JSON)

    def healthz(self, params: dict, access: Access) -> Response:
        if not self.data_dir.is_dir():
            return Response(503, b"no session store\n", TEXT)
        return Response(200, b"ok\n", TEXT)

    def static_file(self, name: str) -> Response:
        data, ctype = self.static[name]
        return Response(200, data, ctype, cache="public, max-age=86400")

    def favicon(self, params: dict, access: Access) -> Response:
        return Response(204, b"", TEXT, cache="public, max-age=86400")


class _Unknown(Exception):
    def __init__(self, session_id: str, matches: list[str]) -> None:
        super().__init__(session_id)
        self.session_id, self.matches = session_id, matches


ROUTES = {
    "/": WebApp.page_overview,
    "/session": WebApp.page_session,
    "/api/sessions": WebApp.api_sessions,
    "/api/session": WebApp.api_session,
    "/api/stats": WebApp.api_stats,
    "/api/version": WebApp.api_version,
    "/metrics": WebApp.page_metrics,
    "/healthz": WebApp.healthz,
    "/favicon.ico": WebApp.favicon,
    **{f"/static/{name}": (lambda n: lambda app, params, access: app.static_file(n))(name)
       for name in STATIC_TYPES},
}
PUBLIC = frozenset(("/healthz", "/favicon.ico", *(f"/static/{n}" for n in STATIC_TYPES)))


def _is_utf8(text: str) -> bool:
    """False for a string with a lone surrogate (from a %ED%A0%80-style escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_bytes(data: object, indent: int | None = None) -> bytes:
    try:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False, indent=indent,
                          separators=None if indent else (",", ":")).encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate from a log: \u-escape it instead
        body = json.dumps(data, ensure_ascii=True, allow_nan=False, indent=indent,
                          separators=None if indent else (",", ":")).encode("ascii")
    # Same JSON for every parser; no browser can take it for markup, even if sniffing.
    return body.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def html_bytes(text: str) -> bytes:
    return text.encode("utf-8", "replace")
