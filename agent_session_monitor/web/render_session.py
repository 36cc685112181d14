"""The session page, server-rendered from :mod:`session_view` dicts through
:func:`html_parts.h`, so every value from a log is escaped where it is placed: the
summary, sub-agents, insights and every round card. The page frame and the parts it
shares with the overview are :mod:`render_html`'s.

Class names and ``data-*`` hooks here are shared with static/app.js, which builds the
same round cards from the JSON API.
"""

from __future__ import annotations

from . import charts
from .html_parts import Markup, h, join, url
from .render_html import PageContext, cards, page, panel, table


# -- one session ----------------------------------------------------------------------

def session_page(ctx: PageContext, view: dict, *, context: dict | None = None) -> str:
    sid = view["session_id"]
    api = url("/api/session", id=sid, **ctx.link_params)
    download = url("/api/session", id=sid, download=1, **ctx.link_params)
    back = None
    if ctx.full_access:   # a signed-link reader cannot open the overview
        back = h("p", {"class": "crumbs"}, h("a", {"href": "/"}, "← Overview"))
    head = h("div", {"class": "page-head"}, back,
             h("h1", {"class": "sid-title"}, h("span", {"class": "kicker"}, "Session"),
               h("code", {"id": "session-id"}, sid)),
             h("div", {"class": "actions"},
               h("button", {"type": "button", "class": "btn", "id": "copy-link", "hidden": True},
                 "Copy link"),
               h("a", {"class": "btn", "href": download, "download": True}, "Download JSON")),
             h("dl", {"class": "facts", "id": "facts"},
               *(join([h("dt", None, k), h("dd", None, v)]) for k, v in view["facts"])))
    rounds = [round_card(r, sid, ctx, context if context and context["n"] == r["n"] else None)
              for r in view["rounds"]]
    body = join([
        head,
        cards(view["cards"]),
        h("p", {"class": "legend", "id": "token-legend"}, view["token_legend"]),
        subagents_panel(view, ctx),
        panel("Tokens and cost per round", charts.render(view["chart"], "chart-rounds"),
              panel_id="p-rounds"),
        insights_panel(view["insights"]),
        h("section", {"id": "rounds", "class": "rounds", "aria-label": "Rounds"},
          *rounds if rounds else h("p", {"class": "empty"}, "No rounds.")),
    ])
    return page(ctx, f"Session {sid} · Agent Session Monitor", body, page_name="session",
                data={"api": api, "rounds": len(view["rounds"]),
                      "version": url("/api/version", id=sid, **ctx.link_params)})


def subagents_panel(view: dict, ctx: PageContext) -> Markup | None:
    """The sessions this one spawned (sessions_spawn) with their cost, and its parent.
    Links to them only with full access: a signed link opens this one session."""
    children, parent = view.get("children") or [], view.get("parent")
    if not children and not parent:
        return None

    def ref(item: dict) -> Markup:
        code = h("code", None, item["id"])
        return h("a", {"href": item["href"]}, code) if ctx.full_access else code

    parts = []
    if parent:
        parts.append(h("p", {"class": "hint"}, "Spawned by ", ref(parent), "."))
    if children:
        parts.append(h("div", {"class": "table-scroll"}, h(
            "table", {"id": "t-children", "class": "data"},
            h("caption", None, "Sub-agents spawned by this session"),
            h("thead", None, h("tr", None, h("th", None, "Sub-agent session"),
                               h("th", {"class": "num"}, "Rounds"),
                               h("th", {"class": "num"}, "Own cost"),
                               h("th", {"class": "num"}, "With its sub-agents"))),
            h("tbody", None, *(h("tr", None, h("td", None, ref(c)),
                                 h("td", {"class": "num"}, c["rounds"]),
                                 h("td", {"class": "num"}, c["cost"]),
                                 h("td", {"class": "num"}, c["with"])) for c in children)))))
        parts.append(h("p", {"class": "hint"}, "Their rounds are in their own sessions: every "
                       "total counts them once."))
    return panel("Sub-agents", *parts, panel_id="p-subagents")


def insights_panel(ins: dict | None) -> Markup:
    """Anomalies and cheaper models; present but hidden when there is nothing to say,
    so that an in-place refresh can fill it."""
    body = []
    if ins and ins["anomalies"]:
        body.append(h("ul", {"class": "anomalies"}, *(
            h("li", None, h("span", {"class": f"tag warn sev-{a['severity']}"}, a["badge"]), " ",
              h("a", {"href": f"#{a['anchor']}"}, f"round {a['round']}"), " ", a["text"])
            for a in ins["anomalies"])))
    if ins and ins["suggestions"]["rows"]:
        body.append(h("h3", None, f"Same tokens on cheaper models (actual: {ins['actual']})"))
        body.append(table(ins["suggestions"], "t-suggest", "Cheaper models"))
        body.append(h("p", {"class": "hint"}, ins["note"]))
    return h("section", {"class": "panel", "id": "p-insights",
                         "hidden": not ins or ins["empty"]},
             h("h2", None, "Insights"), h("div", {"id": "insights-body"}, *body))


def _pre(text: str, cls: str = "text") -> Markup:
    return h("pre", {"class": cls}, text)


def _field(label: str, text: str | None, cls: str) -> Markup | None:
    if text is None:
        return None
    return h("section", {"class": f"field {cls}"}, h("h3", None, label), _pre(text))


def round_card(r: dict, sid: str, ctx: PageContext, context: dict | None) -> Markup:
    tags = [h("span", {"class": "tag"}, t) for t in r["tags"]]
    if r["unpriced"]:
        tags.append(h("span", {"class": "tag warn"}, "unpriced"))
    tags += [h("span", {"class": "tag warn"}, b) for b in r.get("badges", [])]
    header = h("header", {"class": "round-head"},
               h("h2", None, h("a", {"href": f"#{r['anchor']}"}, f"Round {r['n']}")),
               h("span", {"class": "time"}, r["time"]),
               h("span", {"class": "model"}, r["model"]), *tags)
    stats = h("dl", {"class": "stats"},
              *(h("div", None, h("dt", None, k), h("dd", None, v)) for k, v in r["stats"]))
    warnings = h("ul", {"class": "warnings"}, *(h("li", None, w) for w in r["warnings"])) \
        if r["warnings"] else None
    tools = None
    if r["tool_calls"]:
        tools = h("section", {"class": "field tools"},
                  h("h3", None, f"Tool calls ({len(r['tool_calls'])})"),
                  *(tool_call(c) for c in r["tool_calls"]))
    elif r["has_tool_calls"]:
        tools = h("section", {"class": "field tools"}, h("h3", None, "Tool calls"),
                  h("p", None, "(not stored)"))
    reasoning = None
    if r["reasoning"] is not None:   # short reasoning open, a long one folded
        reasoning = h("details", {"class": "field reasoning", "open": r.get("reasoning_open", False)},
                      h("summary", None, "Reasoning"), _pre(r["reasoning"]))
    system = None
    if r["system"] is not None:
        system = h("details", {"class": "field system"}, h("summary", None, "System prompt"),
                   _pre(r["system"]))
    return h("article", {"class": "round", "id": r["anchor"], "data-key": r["key"],
                         "data-round": r["n"]},
             header, stats, warnings, system,
             _field(r["question_label"], r["question"], "question"),
             tools, reasoning, _field("Answer", r["answer"], "answer"),
             messages_block(r), context_block(r, sid, ctx, context))


def tool_call(c: dict) -> Markup:
    result = (h("div", {"class": "result"},
                h("div", {"class": "sub"}, f"Result (sent in round {c['result_round']})"),
                _pre(c["result"], "code")) if c["result"] is not None
              else h("div", {"class": "result none"}, c.get("no_result") or "No result yet"))
    return h("div", {"class": "tool"},
             h("div", {"class": "tool-name"}, h("code", None, c["name"]),
               h("span", {"class": "sub"}, c["id"]) if c["id"] else None),
             h("div", {"class": "sub"}, "Arguments"), _pre(c["arguments"], "code"), result)


def message(m: dict) -> Markup:
    calls = [h("div", {"class": "call"}, h("code", None, f"→ {c['name']}"),
               _pre(c["arguments"], "code")) for c in m["calls"]]
    role = m["role"] if m["role"] in ("user", "assistant", "system", "tool") else "other"
    cls = f"msg role-{role}"
    if m.get("new"):
        cls += " new"
    return h("div", {"class": cls}, h("div", {"class": "who"}, m["label"]),
             _pre(m["text"]) if m["text"] else None, *calls)


def messages_block(r: dict) -> Markup | None:
    if r["truncated_messages"] is not None:
        return h("details", {"class": "field msgs"},
                 h("summary", None, r["messages_label"]),
                 _pre(r["truncated_messages"]))
    if not r["messages"]:
        return None
    return h("details", {"class": "field msgs"},
             h("summary", None, f"Messages new in this round ({len(r['messages'])}, "
                                f"from #{r['new_from']})"),
             h("div", {"class": "msg-list"}, *(message(m) for m in r["messages"])))


def context_block(r: dict, sid: str, ctx: PageContext, context: dict | None) -> Markup | None:
    if r["context_count"] <= len(r["messages"]) or r["context_count"] == 0:
        return None
    link = url("/session", id=sid, context=r["n"], **ctx.link_params) + f"#{r['anchor']}"
    if context is not None:
        inner = h("div", {"class": "msg-list"}, *(message(m) for m in context["messages"]))
    else:
        inner = h("a", {"href": link, "class": "load-context"}, "Load the full context")
    return h("details", {"class": "field ctx", "data-round": r["n"], "open": context is not None,
                         "id": f"{r['anchor']}-context"},
             h("summary", None, f"Full context ({r['context_count']} messages)"),
             h("div", {"class": "ctx-body"}, inner))
