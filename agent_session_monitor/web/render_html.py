"""The web pages, server-rendered from :mod:`views` dicts through :func:`html_parts.h`,
so every value from a log is escaped where it is placed: the page frame, the parts every
page shares, the overview and the error, waiting and sign-in pages (the session page is
:mod:`render_session`'s). The pages are complete without JavaScript; app.js only
refreshes them in place and adds conveniences.

Class names and ``data-*`` hooks here are shared with static/app.js, which builds the
same structures (round cards, table rows, chart shapes) from the JSON API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import charts
from .html_parts import Markup, h, join, url
from .views import PAGE_SIZES, SessionQuery

SORT_LABELS = (("updated", "Last updated"), ("created", "Created"), ("cost", "Cost"),
               ("cost-with-subagents", "Cost with sub-agents"),
               ("tokens", "Tokens"), ("rounds", "Rounds"), ("id", "Session id"))
REFRESH_SECONDS = 30
LIVE_POLL_SECONDS = 1       # app.js asks /api/version this often; a change loads the news
WAITING_RELOAD_SECONDS = 5  # a waiting page without JavaScript reloads itself


@dataclass(frozen=True)
class PageContext:
    """What a page needs besides its data: asset URLs, whether the reader may see the
    overview (a signed link opens one session only), and the signature to carry."""

    css: str = "/static/app.css"
    js: str = "/static/app.js"
    full_access: bool = True
    link_params: dict = field(default_factory=dict)


def page(ctx: PageContext, title: str, body: Markup, *, page_name: str,
         data: dict | None = None, refresh_to: str | None = None,
         reload_seconds: int | None = None) -> str:
    """A whole document. The only inline content is markup: no inline script or style
    (the CSP forbids both), data reaches app.js through escaped ``data-*`` attributes."""
    attrs = {"data-page": page_name, "data-refresh": str(REFRESH_SECONDS),
             "data-poll": str(LIVE_POLL_SECONDS)}
    for k, v in (data or {}).items():
        attrs[f"data-{k}"] = v
    nav = h("a", {"class": "brand", "href": "/"}, "Agent Session Monitor") if ctx.full_access \
        else h("span", {"class": "brand"}, "Agent Session Monitor")
    head = join([
        Markup('<meta charset="utf-8">'),
        h("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}),
        h("meta", {"name": "color-scheme", "content": "light dark"}),
        h("meta", {"name": "referrer", "content": "no-referrer"}),
        h("meta", {"http-equiv": "refresh", "content": f"0;url={refresh_to}"})
        if refresh_to else None,
        # Without JavaScript only (app.js removes it and polls instead).
        h("noscript", None, h("meta", {"http-equiv": "refresh", "content": str(reload_seconds)}))
        if reload_seconds else None,
        h("title", None, title),
        h("link", {"rel": "stylesheet", "href": ctx.css}),
        h("script", {"src": ctx.js, "defer": True}),
    ])
    top = h("header", {"class": "top"}, h("div", {"class": "wrap top-in"}, nav,
            h("span", {"class": "status", "id": "status", "aria-live": "polite"},
              f"Auto-refresh every {REFRESH_SECONDS} s (with JavaScript)")))
    doc = join([Markup("<!doctype html>\n"),
                h("html", {"lang": "en"}, h("head", None, head),
                  h("body", attrs, top, h("main", {"class": "wrap"}, body)))])
    return doc + "\n"


# -- shared parts ---------------------------------------------------------------------

def cards(items: list[dict], section_id: str = "cards", label: str = "Totals") -> Markup:
    return h("section", {"class": f"cards n{len(items)}", "id": section_id, "aria-label": label},
             *(h("div", {"class": "card", "data-card": c["id"], "data-tone": c.get("tone") or None},
                 h("div", {"class": "label"}, c["label"]),
                 h("div", {"class": "value"}, c["value"]),
                 h("div", {"class": "note"}, c["note"])) for c in items))


def table(spec: dict, table_id: str, caption: str) -> Markup:
    """A usage table (``views._usage_table``): first column text, the others numbers."""
    def row(cells: list[str], tag: str = "td") -> Markup:
        return h("tr", None, *(h(tag, {"class": "num"} if i else None, c)
                               for i, c in enumerate(cells)))

    return h("div", {"class": "table-scroll"}, h(
        "table", {"id": table_id, "class": "data"}, h("caption", None, caption),
        h("thead", None, row(spec["head"], "th")),
        h("tbody", None, *(row(r) for r in spec["rows"]) if spec["rows"] else
          h("tr", None, h("td", {"colspan": len(spec["head"]), "class": "empty"}, "(none)"))),
        h("tfoot", None, row(spec["foot"]) if spec["foot"] else None)))


def panel(title: str, *content: Markup, panel_id: str | None = None) -> Markup:
    return h("section", {"class": "panel", "id": panel_id}, h("h2", None, title), *content)


# -- overview -------------------------------------------------------------------------

def overview_page(ctx: PageContext, view: dict, query: SessionQuery) -> str:
    days = view["days"]
    body = join([
        h("div", {"class": "page-head"}, h("h1", None, "Overview"),
          h("p", {"class": "sub"}, "Totals as of ", h("span", {"id": "generated"},
                                                    view["generated_at"]), f" ({view['tz']})")),
        cards(view["cards"]),
        h("p", {"class": "legend", "id": "token-legend"}, view["token_legend"]),
        burn_panel(view["burn"]) if view.get("burn") else None,
        h("div", {"class": "grid2"},
          panel(view["days_title"],
                charts.render(view["charts"]["cost_per_day"], "chart-cost"),
                h("p", {"class": "hint", "id": "days-note"}, view["days_note"])
                if view["days_note"] else None, panel_id="p-cost"),
          panel("Tokens by model", charts.render(view["charts"]["tokens_by_model"], "chart-models"),
                panel_id="p-models")),
        panel("By model", table(view["models"], "t-models", "Usage per model"),
              h("p", {"class": "hint"}, "Each round counts under its own model; TOTAL counts "
                "each session once. * some rounds unpriced (not counted as $0)."),
              panel_id="p-by-model"),
        panel("By consumer", table(view["consumers"], "t-consumers", "Usage per consumer"),
              panel_id="p-by-consumer"),
        panel("By agent", table(view["agents"], "t-agents", "Usage per OpenClaw agent"),
              h("p", {"class": "hint"}, "From each session's key (agent:<id>:...). Sub-agents: "
                "the part of the cost spent in sub-agent sessions."),
              panel_id="p-by-agent") if view.get("agents") else None,
        panel("By channel", table(view["channels"], "t-channels", "Usage per channel"),
              h("p", {"class": "hint"}, "Spawned: what sub-agents started from the "
                "channel's sessions spent in sessions of another row (counted there too); "
                "with sub-agents = cost + spawned."),
              panel_id="p-by-channel") if view.get("channels") else None,
        panel("Sessions", session_filters(view["filters"], query),
              sessions_table(view["sessions"]), panel_id="p-sessions"),
    ])
    return page(ctx, "Agent Session Monitor", body, page_name="overview",
                data={"stats": url("/api/stats", view=1, days=days),
                      "version": url("/api/version")})


def burn_panel(burn: dict) -> Markup:
    items = [h("li", None, h("a", {"href": a["href"]}, a["id"]), " ",
               h("span", {"class": "sub"}, a["text"])) for a in burn["active"]]
    return panel("Burn rate", h("p", {"class": "hint"}, burn["note"]) if burn.get("note") else None,
                 cards(burn["cards"], "burn-cards", "Burn rate"),
                 h("ul", {"class": "active-list", "id": "burn-active"}, *items),
                 panel_id="p-burn")


def session_filters(filters: dict, query: SessionQuery) -> Markup:
    def select(name: str, label: str, options: list[tuple[str, str]], current: str) -> Markup:
        return h("label", None, h("span", None, label), h(
            "select", {"name": name},
            *(h("option", {"value": v, "selected": v == current}, text) for v, text in options)))

    models = [("", "All models")] + [(m, m) for m in filters["models"]]
    if query.model and query.model not in filters["models"]:
        models.append((query.model, query.model))
    consumers = [("", "All consumers")] + [(c, c) for c in filters["consumers"]]
    if query.consumer and query.consumer not in filters["consumers"]:
        consumers.append((query.consumer, query.consumer))
    return h("form", {"class": "filters", "id": "filters", "method": "get", "action": "/",
                      "role": "search"},
             h("label", {"class": "grow"}, h("span", None, "Search"),
               h("input", {"type": "search", "name": "q", "value": query.q, "id": "q",
                           "placeholder": "id, model or words said", "autocomplete": "off",
                           "maxlength": "200"})),
             select("sort", "Sort", list(SORT_LABELS), query.sort),
             select("model", "Model", models, query.model),
             select("consumer", "Consumer", consumers, query.consumer),
             select("per_page", "Per page", [(str(n), str(n)) for n in PAGE_SIZES],
                    str(query.per_page)),
             h("button", {"type": "submit", "class": "apply"}, "Apply"))


def sessions_table(view: dict) -> Markup:
    head = h("tr", None, *(h("th", {"class": "num"} if 1 < i < 7 else None, c)
                           for i, c in enumerate(view["head"])))
    if view["rows"]:
        rows = [h("tr", None, h("td", {"class": "sid"}, h("a", {"href": r["href"]}, r["cells"][0])),
                  *(h("td", {"class": "num"} if 1 < i < 7 else None, c)
                    for i, c in enumerate(r["cells"]) if i))
                for r in view["rows"]]
    else:
        rows = [h("tr", None, h("td", {"colspan": len(view["head"]), "class": "empty"},
                                view["summary"]))]
    pager = h("nav", {"class": "pager", "id": "pager", "aria-label": "Pages"},
              h("a", {"href": view["prev"], "rel": "prev", "data-page": view["page"] - 1,
                      "hidden": not view["prev"]}, "← Newer"),
              h("span", {"id": "page-summary"},
                f"{view['summary']} · page {view['page']} of {view['pages']}"),
              h("a", {"href": view["next"], "rel": "next", "data-page": view["page"] + 1,
                      "hidden": not view["next"]}, "Older →"))
    return join([h("div", {"class": "table-scroll"}, h(
        "table", {"id": "t-sessions", "class": "data sessions"},
        h("caption", None, "Sessions"), h("thead", None, head), h("tbody", None, *rows))), pager])


# -- errors ---------------------------------------------------------------------------

def error_page(ctx: PageContext, status: int, title: str, message: str,
               extra: Markup | None = None) -> str:
    body = h("section", {"class": "error"}, h("h1", None, f"{status} · {title}"),
             h("p", None, message), extra,
             h("p", None, h("a", {"href": "/"}, "Overview")) if ctx.full_access else None)
    return page(ctx, f"{title} · Agent Session Monitor", body, page_name="error")


def unknown_session_page(ctx: PageContext, session_id: str, matches: list[str]) -> str:
    """A session the store has not seen (yet): the agent usually asks for its link
    before the monitor's next pass. The page waits for the first round (app.js polls
    /api/version and loads the session when it appears; without JavaScript the page
    reloads itself every few seconds)."""
    extra = None
    if matches:
        extra = join([h("p", None, "Or did you mean one of these?"), h("ul", None, *(
            h("li", None, h("a", {"href": url("/session", id=m)}, m)) for m in matches))])
    body = h("section", {"class": "error waiting"},
             h("h1", None, "Unknown session · waiting for its first round"),
             h("p", None, f"No round of session “{session_id}” is in this store yet. If the "
               "agent has just started it, the monitor writes it on its next pass; this "
               "page shows it as soon as it does."),
             h("p", {"class": "sub", "id": "waiting-status"}, "Checking every 2 s…"), extra,
             h("p", None, h("a", {"href": "/"}, "Overview")) if ctx.full_access else None)
    return page(ctx, "Waiting for session · Agent Session Monitor", body, page_name="waiting",
                data={"version": url("/api/version", id=session_id, **ctx.link_params)},
                reload_seconds=WAITING_RELOAD_SECONDS)


def signed_in_page(ctx: PageContext, location: str) -> str:
    """After ``?token=``: the cookie is set with this page, which then moves on to the
    URL without the token. Not an HTTP redirect: following a link from a chat app is a
    cross-site navigation, whose redirects do not carry a SameSite=Strict cookie, while
    this page's own navigation does."""
    if not location.startswith("/") or location.startswith("//"):
        raise ValueError(f"not a site path: {location!r}")
    body = h("section", {"class": "error"}, h("h1", None, "Signed in"),
             h("p", None, h("a", {"href": location}, "Continue")))
    return page(ctx, "Signed in · Agent Session Monitor", body, page_name="signed-in",
                refresh_to=location)


def login_page(ctx: PageContext, path: str = "/", params: dict | None = None) -> str:
    """401: the access token, asked for with a plain form that returns to the page
    asked for (as ``?token=``, which the server swaps for a cookie and removes)."""
    hidden = [h("input", {"type": "hidden", "name": k, "value": v})
              for k, v in (params or {}).items() if k != "token"]
    form = h("form", {"method": "get", "action": path, "class": "login"}, *hidden,
             h("label", None, h("span", None, "Access token"),
               h("input", {"type": "password", "name": "token", "autocomplete": "current-password",
                           "required": True})),
             h("button", {"type": "submit", "class": "btn"}, "Open"))
    return error_page(ctx, 401, "Access token needed",
                      "This monitor was started with an access token (webserver.py --token, "
                      "or the environment): enter it to open its pages. A shared session "
                      "link opens only its own session.", form)
