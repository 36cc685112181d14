// agent-session-monitor web UI: in-place refresh and conveniences over server-rendered
// pages (which are complete without this script).
//
// Data only ever enters the DOM as text (createTextNode / textContent) or as attributes
// set one by one from an allow-list; never through innerHTML or markup strings. The
// server sends the same view dicts it renders the page from (?view=1), so the structure
// built here mirrors render_html.py and render_session.py.
"use strict";

(function () {
  const doc = document;
  const body = doc.body;
  if (!body) return;
  doc.documentElement.setAttribute("data-js", "ready");

  const page = body.getAttribute("data-page");
  const refreshMs = (parseInt(body.getAttribute("data-refresh"), 10) || 30) * 1000;
  const statusEl = doc.getElementById("status");
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SVG_TAGS = new Set(["rect", "line", "polyline", "text", "circle"]);
  const SVG_ATTRS = new Set(["x", "y", "width", "height", "x1", "y1", "x2", "y2", "points",
    "cx", "cy", "r", "class", "text-anchor"]);

  // -- DOM helpers ---------------------------------------------------------------------

  // As html_parts.text: bidi overrides and controls in log data are shown as escapes.
  const INVISIBLE = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]/g;
  function shown(text) {
    return String(text).replace(INVISIBLE, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  }

  function safeHref(value) {
    // Only links this site builds: a path, a query or a fragment.
    return typeof value === "string" && /^(\/(?!\/)|\?|#)/.test(value);
  }

  function el(tag, attrs) {
    const node = doc.createElement(tag);
    if (attrs) {
      for (const name of Object.keys(attrs)) {
        const value = attrs[name];
        if (value === null || value === undefined || value === false) continue;
        if (name === "href" && !safeHref(value)) continue;
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (let i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }

  function add(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) {
      for (const c of child) add(node, c);
    } else if (child instanceof Node) {
      node.appendChild(child);
    } else {
      node.appendChild(doc.createTextNode(shown(child)));
    }
  }

  function setText(node, text) {
    text = shown(text);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function setStatus(text, bad) {
    if (!statusEl) return;
    statusEl.textContent = text;
    statusEl.classList.toggle("bad", !!bad);
  }

  function clock() {
    const d = new Date();
    const pad = (n) => String(n).padStart(2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  async function getJSON(url) {
    const response = await fetch(url, {
      credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" },
    });
    if (!response.ok) {
      const error = new Error("HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  // -- shared parts (mirror render_html.py) --------------------------------------------

  function fillCards(sectionId, cards) {
    const section = doc.getElementById(sectionId);
    if (!section || !cards) return;
    for (const card of cards) {
      let node = null;
      for (const c of section.querySelectorAll(".card")) {
        if (c.getAttribute("data-card") === card.id) node = c;
      }
      if (!node) {
        node = el("div", { "class": "card", "data-card": card.id },
          el("div", { "class": "label" }, card.label), el("div", { "class": "value" }),
          el("div", { "class": "note" }));
        section.appendChild(node);
      }
      if (card.tone) node.setAttribute("data-tone", card.tone);
      else node.removeAttribute("data-tone");
      setText(node.querySelector(".label"), card.label);
      setText(node.querySelector(".value"), card.value);
      setText(node.querySelector(".note"), card.note);
    }
  }

  function drawChart(id, chart) {
    const svg = doc.getElementById(id);
    if (!svg || !chart) return;
    svg.setAttribute("viewBox", "0 0 " + Number(chart.view[0]) + " " + Number(chart.view[1]));
    svg.setAttribute("aria-label", chart.label);
    const frag = doc.createDocumentFragment();
    for (const shape of chart.shapes) {
      if (!SVG_TAGS.has(shape.el)) continue;
      const node = doc.createElementNS(SVG_NS, shape.el);
      const attrs = shape.a || {};
      for (const name of Object.keys(attrs)) {
        if (SVG_ATTRS.has(name)) node.setAttribute(name, String(attrs[name]));
      }
      if (shape.tip) {
        const title = doc.createElementNS(SVG_NS, "title");
        title.textContent = shown(shape.tip);
        node.appendChild(title);
      }
      if (shape.text !== undefined) node.appendChild(doc.createTextNode(shown(shape.text)));
      frag.appendChild(node);
    }
    svg.replaceChildren(frag);
    scrollToLatest(svg.parentNode);
    const empty = doc.getElementById(id + "-empty");
    if (empty) {
      setText(empty, chart.empty || "");
      empty.hidden = !chart.empty;
    }
    const legend = doc.getElementById(id + "-legend");
    if (legend) {
      legend.replaceChildren(...chart.legend.map((item) =>
        el("li", null, el("span", { "class": "sw " + item.cls }), item.text)));
    }
  }

  function fillUsageTable(id, spec) {
    const table = doc.getElementById(id);
    if (!table || !spec) return;
    const row = (cells) => el("tr", null, cells.map((c, i) => el("td", i ? { "class": "num" } : null, c)));
    const tbody = table.tBodies[0];
    if (spec.rows.length) {
      tbody.replaceChildren(...spec.rows.map(row));
    } else {
      tbody.replaceChildren(el("tr", null, el("td", { colspan: spec.head.length, "class": "empty" }, "(none)")));
    }
    if (table.tFoot) table.tFoot.replaceChildren(...(spec.foot ? [row(spec.foot)] : []));
  }

  function scrollToLatest(box) {
    // On a narrow screen a chart scrolls sideways: show its latest days / rounds.
    if (box && box.scrollWidth > box.clientWidth) box.scrollLeft = box.scrollWidth;
  }

  for (const box of doc.querySelectorAll(".chart-scroll")) scrollToLatest(box);

  // -- overview ------------------------------------------------------------------------

  function overview() {
    const form = doc.getElementById("filters");
    const table = doc.getElementById("t-sessions");
    if (!form || !table) return;
    const apply = form.querySelector("button.apply");
    if (apply) apply.hidden = true;
    const defaults = { q: "", sort: "updated", model: "", consumer: "", per_page: "25", page: "1" };
    let currentPage = String(new URLSearchParams(location.search).get("page") || "1");
    let listSeq = 0;
    let typing = null;

    function queryString() {
      const params = new URLSearchParams();
      for (const name of ["q", "sort", "model", "consumer", "per_page"]) {
        const field = form.elements.namedItem(name);
        const value = field ? field.value : "";
        if (value !== defaults[name]) params.set(name, value);
      }
      if (currentPage !== "1") params.set("page", currentPage);
      return params.toString();
    }

    function fillSessions(view) {
      const tbody = table.tBodies[0];
      const numeric = (i) => i > 1 && i < 7;
      if (view.rows.length) {
        tbody.replaceChildren(...view.rows.map((r) => el("tr", null,
          el("td", { "class": "sid" }, el("a", { href: r.href }, r.cells[0])),
          r.cells.slice(1).map((c, j) => el("td", numeric(j + 1) ? { "class": "num" } : null, c)))));
      } else {
        tbody.replaceChildren(el("tr", null,
          el("td", { colspan: view.head.length, "class": "empty" }, view.summary)));
      }
      currentPage = String(view.page);
      const prev = doc.querySelector("#pager a[rel=prev]");
      const next = doc.querySelector("#pager a[rel=next]");
      if (prev) {
        prev.hidden = !view.prev;
        if (view.prev && safeHref(view.prev)) prev.setAttribute("href", view.prev);
        prev.setAttribute("data-page", String(view.page - 1));
      }
      if (next) {
        next.hidden = !view.next;
        if (view.next && safeHref(view.next)) next.setAttribute("href", view.next);
        next.setAttribute("data-page", String(view.page + 1));
      }
      setText(doc.getElementById("page-summary"),
        view.summary + " · page " + view.page + " of " + view.pages);
    }

    function fillSelect(name, values, allLabel) {
      const select = form.elements.namedItem(name);
      if (!select || doc.activeElement === select) return;
      const current = select.value;
      const wanted = [""].concat(values);
      if (current && wanted.indexOf(current) < 0) wanted.push(current);
      const have = Array.from(select.options).map((o) => o.value);
      if (have.join("\n") === wanted.join("\n")) return;
      select.replaceChildren(...wanted.map((v) =>
        el("option", { value: v, selected: v === current }, v || allLabel)));
    }

    async function loadSessions() {
      const seq = ++listSeq;
      const qs = queryString();
      try {
        const data = await getJSON("/api/sessions?view=1" + (qs ? "&" + qs : ""));
        if (seq !== listSeq) return;
        fillSessions(data.view);
        history.replaceState(null, "", qs ? "/?" + qs : "/");
      } catch (e) {
        setStatus("Could not load sessions (" + e.message + ")", true);
      }
    }

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      currentPage = "1";
      loadSessions();
    });
    form.addEventListener("change", (event) => {
      if (event.target && event.target.name === "q") return;
      currentPage = "1";
      loadSessions();
    });
    form.addEventListener("input", (event) => {
      if (!event.target || event.target.name !== "q") return;
      clearTimeout(typing);
      typing = setTimeout(() => { currentPage = "1"; loadSessions(); }, 250);
    });
    const pager = doc.getElementById("pager");
    if (pager) {
      pager.addEventListener("click", (event) => {
        const link = event.target.closest && event.target.closest("a[data-page]");
        if (!link) return;
        event.preventDefault();
        currentPage = link.getAttribute("data-page") || "1";
        loadSessions();
      });
    }

    return async function refresh() {
      const seq = ++listSeq;
      const qs = queryString();
      const data = await getJSON(body.getAttribute("data-stats") + (qs ? "&" + qs : ""));
      const view = data.view;
      fillCards("cards", view.cards);
      if (view.burn) {
        fillCards("burn-cards", view.burn.cards);
        const active = doc.getElementById("burn-active");
        if (active) {
          active.replaceChildren(...view.burn.active.map((a) => el("li", null,
            el("a", { href: a.href }, a.id), " ", el("span", { "class": "sub" }, a.text))));
        }
      }
      setText(doc.getElementById("generated"), view.generated_at);
      drawChart("chart-cost", view.charts.cost_per_day);
      drawChart("chart-models", view.charts.tokens_by_model);
      fillUsageTable("t-models", view.models);
      fillUsageTable("t-consumers", view.consumers);
      fillUsageTable("t-agents", view.agents);
      fillUsageTable("t-channels", view.channels);
      fillSelect("model", view.filters.models, "All models");
      fillSelect("consumer", view.filters.consumers, "All consumers");
      // A search typed while this was in flight wins over the refresh's older list.
      if (seq === listSeq) fillSessions(view.sessions);
      return data.version;
    };
  }

  // -- one session ---------------------------------------------------------------------

  function preBlock(text, cls) {
    return el("pre", { "class": cls || "text" }, text);
  }

  function field(label, text, cls) {
    if (text === null || text === undefined) return null;
    return el("section", { "class": "field " + cls }, el("h3", null, label), preBlock(text));
  }

  function message(m) {
    const roles = ["user", "assistant", "system", "tool"];
    let cls = "msg role-" + (roles.indexOf(m.role) >= 0 ? m.role : "other");
    if (m.new) cls += " new";
    return el("div", { "class": cls }, el("div", { "class": "who" }, m.label),
      m.text ? preBlock(m.text) : null,
      m.calls.map((c) => el("div", { "class": "call" }, el("code", null, "→ " + c.name),
        preBlock(c.arguments, "code"))));
  }

  function toolCall(c) {
    const result = c.result !== null
      ? el("div", { "class": "result" },
        el("div", { "class": "sub" }, "Result (sent in round " + c.result_round + ")"),
        preBlock(c.result, "code"))
      : el("div", { "class": "result none" }, c.no_result || "No result yet");
    return el("div", { "class": "tool" },
      el("div", { "class": "tool-name" }, el("code", null, c.name),
        c.id ? el("span", { "class": "sub" }, c.id) : null),
      el("div", { "class": "sub" }, "Arguments"), preBlock(c.arguments, "code"), result);
  }

  function contextLink(n) {
    const u = new URL(location.href);
    u.searchParams.set("context", String(n));
    u.hash = "r" + n;
    return u.pathname + u.search + u.hash;
  }

  function roundCard(r) {
    const tags = r.tags.map((t) => el("span", { "class": "tag" }, t));
    if (r.unpriced) tags.push(el("span", { "class": "tag warn" }, "unpriced"));
    for (const b of r.badges || []) tags.push(el("span", { "class": "tag warn" }, b));
    let tools = null;
    if (r.tool_calls.length) {
      tools = el("section", { "class": "field tools" },
        el("h3", null, "Tool calls (" + r.tool_calls.length + ")"), r.tool_calls.map(toolCall));
    } else if (r.has_tool_calls) {
      tools = el("section", { "class": "field tools" }, el("h3", null, "Tool calls"),
        el("p", null, "(not stored)"));
    }
    let messages = null;
    if (r.truncated_messages !== null) {
      messages = el("details", { "class": "field msgs" },
        el("summary", null, r.messages_label || "Messages (logged truncated by the gateway)"),
        preBlock(r.truncated_messages));
    } else if (r.messages.length) {
      messages = el("details", { "class": "field msgs" },
        el("summary", null, "Messages new in this round (" + r.messages.length + ", from #" +
          r.new_from + ")"),
        el("div", { "class": "msg-list" }, r.messages.map(message)));
    }
    let context = null;
    if (r.context_count > r.messages.length && r.context_count > 0) {
      context = el("details", { "class": "field ctx", "data-round": r.n, id: r.anchor + "-context" },
        el("summary", null, "Full context (" + r.context_count + " messages)"),
        el("div", { "class": "ctx-body" },
          el("a", { href: contextLink(r.n), "class": "load-context" }, "Load the full context")));
    }
    return el("article", { "class": "round", id: r.anchor, "data-key": r.key, "data-round": r.n },
      el("header", { "class": "round-head" },
        el("h2", null, el("a", { href: "#" + r.anchor }, "Round " + r.n)),
        el("span", { "class": "time" }, r.time), el("span", { "class": "model" }, r.model), tags),
      el("dl", { "class": "stats" }, r.stats.map((s) => el("div", null, el("dt", null, s[0]), el("dd", null, s[1])))),
      r.warnings.length ? el("ul", { "class": "warnings" }, r.warnings.map((w) => el("li", null, w))) : null,
      r.system !== null ? el("details", { "class": "field system" }, el("summary", null, "System prompt"), preBlock(r.system)) : null,
      field(r.question_label, r.question, "question"),
      tools,
      r.reasoning !== null ? el("details", { "class": "field reasoning", open: !!r.reasoning_open },
        el("summary", null, "Reasoning"), preBlock(r.reasoning)) : null,
      field("Answer", r.answer, "answer"),
      messages, context);
  }

  function fillInsights(ins) {
    const panel = doc.getElementById("p-insights");
    const target = doc.getElementById("insights-body");
    if (!panel || !target) return;
    panel.hidden = !ins || ins.empty;
    if (!ins || ins.empty) return;
    const parts = [];
    if (ins.anomalies.length) {
      parts.push(el("ul", { "class": "anomalies" }, ins.anomalies.map((a) => el("li", null,
        el("span", { "class": "tag warn sev-" + a.severity }, a.badge), " ",
        el("a", { href: "#" + a.anchor }, "round " + a.round), " ", a.text))));
    }
    if (ins.suggestions.rows.length) {
      parts.push(el("h3", null, "Same tokens on cheaper models (actual: " + ins.actual + ")"));
      const head = el("tr", null, ins.suggestions.head.map((c, i) => el("th", i ? { "class": "num" } : null, c)));
      const rows = ins.suggestions.rows.map((r) => el("tr", null, r.map((c, i) => el("td", i ? { "class": "num" } : null, c))));
      parts.push(el("div", { "class": "table-scroll" }, el("table", { id: "t-suggest", "class": "data" },
        el("caption", null, "Cheaper models"), el("thead", null, head), el("tbody", null, rows), el("tfoot"))));
      parts.push(el("p", { "class": "hint" }, ins.note));
    }
    target.replaceChildren(...parts);
  }

  async function loadContext(details) {
    if (details.getAttribute("data-loaded") || details.querySelector(".msg-list")) return;
    details.setAttribute("data-loaded", "loading");
    const target = details.querySelector(".ctx-body");
    try {
      const data = await getJSON(body.getAttribute("data-api") + "&context=" +
        encodeURIComponent(details.getAttribute("data-round")));
      target.replaceChildren(el("div", { "class": "msg-list" }, data.context.messages.map(message)));
      details.setAttribute("data-loaded", "1");
    } catch (e) {
      details.removeAttribute("data-loaded");
      target.prepend(el("p", { "class": "empty" }, "Could not load the context (" + e.message + ")."));
    }
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain http on a LAN address is not a secure context: the old way still works there.
    const area = el("textarea", { readonly: true, "class": "offscreen" }, text);
    body.appendChild(area);
    area.select();
    const ok = doc.execCommand && doc.execCommand("copy");
    area.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function sessionPage() {
    const rounds = doc.getElementById("rounds");
    doc.addEventListener("toggle", (event) => {
      const t = event.target;
      if (t && t.matches && t.matches("details.ctx") && t.open) loadContext(t);
    }, true);
    doc.addEventListener("click", (event) => {
      const link = event.target.closest && event.target.closest("a.load-context");
      if (!link) return;
      event.preventDefault();
      const details = link.closest("details.ctx");
      if (details) loadContext(details);
    });
    const copy = doc.getElementById("copy-link");
    if (copy) {
      copy.hidden = false;
      copy.addEventListener("click", () => {
        const u = new URL(location.href);
        u.searchParams.delete("context");
        u.hash = "";
        copyText(u.toString()).then(() => setText(copy, "Copied"), () => setText(copy, "Copy failed"))
          .then(() => setTimeout(() => setText(copy, "Copy link"), 2000));
      });
    }
    const m = /^#(r\d+)-context$/.exec(location.hash);
    if (m) {
      const details = doc.getElementById(m[1] + "-context");
      if (details) {
        details.open = true;
        loadContext(details);
        details.scrollIntoView();
      }
    }

    return async function refresh() {
      const shown = Array.from(rounds.querySelectorAll(":scope > article.round"));
      const keys = shown.map((a) => a.getAttribute("data-key"));
      let data;
      try {
        data = await getJSON(body.getAttribute("data-api") + "&view=1&after=" + shown.length);
      } catch (e) {
        if (e.status === 404) throw new Error("the session is no longer in the store");
        throw e;
      }
      const view = data.view;
      for (let i = 0; i < keys.length; i++) {
        if (view.keys[i] !== keys[i]) {
          // A late log line was inserted before rounds on screen: renumbered, so reload.
          location.reload();
          return;
        }
      }
      fillCards("cards", view.cards);
      const facts = doc.getElementById("facts");
      if (facts) {
        facts.replaceChildren(...view.facts.flatMap((f) => [el("dt", null, f[0]), el("dd", null, f[1])]));
      }
      drawChart("chart-rounds", view.chart);
      fillInsights(view.insights);
      if (view.rounds.length) {
        const placeholder = rounds.querySelector(":scope > p.empty");
        if (placeholder) placeholder.remove();
        for (const r of view.rounds) rounds.appendChild(roundCard(r));
      }
    };
  }

  // -- waiting for a session's first round ----------------------------------------------

  function waitingPage() {
    const status = doc.getElementById("waiting-status");
    return async function refresh(version) {
      if (version !== "none") {
        location.reload();   // the session exists now: the server renders it
        return;
      }
      setText(status, "Still waiting · checked at " + clock());
    };
  }

  // -- live updates and auto-refresh ---------------------------------------------------
  // Every second the page asks /api/version (a few bytes: the index's change stamp, or
  // the session file's identity); when it changed, the page loads what is new in place.
  // A full refresh still runs every refreshMs (burn rates move with the clock).

  const refresh = page === "overview" ? overview() : page === "session" ? sessionPage()
    : page === "waiting" ? waitingPage() : null;
  if (!refresh) return;
  const pollMs = (parseInt(body.getAttribute("data-poll"), 10) || 1) * 1000;
  const versionUrl = body.getAttribute("data-version");
  let busy = false;
  let last = Date.now();
  let count = 0;
  let seen = null;     // the store version the page shows
  const every = Math.round(refreshMs / 1000);
  const liveNote = versionUrl ? "live" : "refreshes every " + every + " s";
  setStatus(page === "waiting" ? "Waiting for the first round" : "Live · " + liveNote);

  async function tick(version) {
    if (busy) return;
    busy = true;
    try {
      const shown = await refresh(version);
      count += 1;
      body.setAttribute("data-refreshed", String(count));
      // The overview says which version its figures include: one still older than the
      // store's (served while newer ones are computed) is asked for again next poll.
      if (version !== undefined) seen = shown === undefined ? version : shown;
      if (page !== "waiting") setStatus("Updated " + clock() + " · " + liveNote);
    } catch (e) {
      setStatus("Refresh failed (" + e.message + ") · retrying", true);
    } finally {
      busy = false;
      last = Date.now();
    }
  }

  async function poll() {
    if (busy || doc.hidden || !versionUrl) return;
    let version;
    try {
      version = (await getJSON(versionUrl)).version;
    } catch (e) {
      return;   // the server restarting, a network blip: the next poll tries again
    }
    if (page === "waiting" || version !== seen) await tick(version);
  }

  if (versionUrl) setInterval(poll, pollMs);
  setInterval(() => { if (!doc.hidden && Date.now() - last >= refreshMs) tick(); }, refreshMs);
  doc.addEventListener("visibilitychange", () => {
    if (!doc.hidden && Date.now() - last >= refreshMs) tick();
  });
})();
