"""Charts as plain shapes (rect, line, polyline, text), so one computation serves both
the server-rendered inline SVG and app.js, which redraws a chart in place from the same
shapes on auto-refresh (with createElementNS, never markup).

A chart is ``{"view": [w, h], "label": str, "shapes": [...], "legend": [...],
"empty": str | None}``; a shape is ``{"el": name, "a": {attribute: value}, "text": str,
"tip": str}``. Colours are CSS classes (``k-input``...): the page's stylesheet gives
them light and dark values, and the CSP allows no inline style.
"""

from __future__ import annotations

import math

from ..pricing import tokens
from ..fmt import fmt_int, fmt_usd, plural
from .html_parts import Markup, h

# Exclusive token buckets (pricing.Buckets), in stacking order.
TOKEN_KINDS = (("input", "input"), ("cache_read", "cached"), ("cache_write", "cache write"),
               ("output", "output"), ("reasoning", "reasoning"))
_FONT = 12


def compact(n: float) -> str:
    """Axis labels: 950, 1.2k, 3.4M."""
    size = abs(n)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            value = n / limit
            return f"{value:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 covering ``top`` (1, 2, 5 times a power of ten)."""
    if top <= 0:
        return [0.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-12 * top:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _usd_tick(x: float) -> str:
    if x == 0:
        return "$0"
    if x >= 1:
        return f"${x:,.2f}".rstrip("0").rstrip(".")
    return f"${x:.6f}".rstrip("0")


def _rect(x: float, y: float, w: float, hgt: float, cls: str, tip: str | None = None) -> dict:
    shape = {"el": "rect", "a": {"x": _r(x), "y": _r(y), "width": _r(max(w, 0)),
                                 "height": _r(max(hgt, 0)), "class": cls}}
    if tip:
        shape["tip"] = tip
    return shape


def _text(x: float, y: float, text: str, cls: str = "ax", anchor: str = "middle") -> dict:
    return {"el": "text", "a": {"x": _r(x), "y": _r(y), "class": cls, "text-anchor": anchor},
            "text": text}


def _line(x1: float, y1: float, x2: float, y2: float, cls: str = "grid") -> dict:
    return {"el": "line", "a": {"x1": _r(x1), "y1": _r(y1), "x2": _r(x2), "y2": _r(y2),
                                "class": cls}}


def _r(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _y_axis(shapes: list, ticks: list[float], left: float, right: float, top: float,
            bottom: float, label, side: str = "left") -> float:
    span = ticks[-1] or 1
    for t in ticks:
        y = bottom - (bottom - top) * t / span
        if side == "left":
            shapes.append(_line(left, y, right, y))
            shapes.append(_text(left - 6, y + 4, label(t), anchor="end"))
        else:
            shapes.append(_text(right + 6, y + 4, label(t), cls="ax ax-cost", anchor="start"))
    return span


def _label_room(labels, char: float = 8.6) -> float:
    """Width (viewBox units) that axis labels need at the phone's larger axis font
    (app.css: 14px, ``char`` units a character), so that none is cut at the edge."""
    return 10 + char * max((len(text) for text in labels), default=0)


def cost_per_day(days: list[dict]) -> dict:
    """Bars of cost per day (``report.day_range`` rows); a day with unpriced rounds is
    marked, and a day whose every round is unpriced has no bar, never a $0 one."""
    w, hgt, right, top, bottom = 480, 210, 464, 10, 182
    shapes: list[dict] = []
    costs = [d["cost"] or 0 for d in days]
    empty = None if any(d["rounds"] for d in days) else f"No rounds in these {len(days)} days"
    ticks = nice_ticks(max(costs, default=0) or 0.01)
    left = max(58, _label_room(_usd_tick(t) for t in ticks))   # "$0.0004" keeps its "$"
    span = _y_axis(shapes, ticks, left, right, top, bottom, _usd_tick)
    slot = (right - left) / max(len(days), 1)
    every = max(1, math.ceil(len(days) / 6))
    for i, d in enumerate(days):
        x = left + i * slot
        cost = d["cost"] or 0
        bar = (bottom - top) * cost / span
        cls = "bar k-cost" + (" partial" if d["unpriced_rounds"] else "")
        tip = (f"{d['key']}: {fmt_usd(d['cost']) if d['rounds'] else '$0.00'}"
               f" · {plural(d['rounds'], 'round')} · {plural(d['sessions'], 'session')}")
        if d["unpriced_rounds"]:
            tip += f" · {plural(d['unpriced_rounds'], 'unpriced round')} (not counted as $0)"
        # A full-height transparent hit area: the tooltip works on days with tiny bars.
        shapes.append(_rect(x, top, slot, bottom - top, "hit", tip))
        shapes.append(_rect(x + slot * 0.15, bottom - bar, slot * 0.7, bar, cls, tip))
        if d["unpriced_rounds"]:
            shapes.append(_text(x + slot / 2, bottom - bar - 3, "*", cls="ax mark"))
        if (len(days) - 1 - i) % every == 0:
            shapes.append(_text(x + slot / 2, bottom + 18, d["key"][5:]))
    shapes.append(_line(left, bottom, right, bottom, "axis"))
    return {"view": [w, hgt], "label": f"Cost per day, last {len(days)} days", "shapes": shapes,
            "legend": [{"cls": "k-cost", "text": "cost (USD)"},
                       {"cls": "mark", "text": "some rounds unpriced"}], "empty": empty}


def tokens_by_model(rows: list[dict], limit: int = 8) -> dict:
    """Horizontal bars per model (``aggregate("model")`` rows), split into the exclusive
    token buckets; the models past ``limit`` are summed as "other"."""
    rows = sorted(rows, key=lambda r: -_tokens(r))
    if len(rows) > limit:
        rest = rows[limit - 1:]
        other = {"key": f"{len(rest)} other models", "rounds": sum(r["rounds"] for r in rest)}
        for kind, _ in TOKEN_KINDS:
            other[f"b_{kind}"] = sum(_bucket(r, kind) for r in rest)
        rows = rows[:limit - 1] + [other]
    row_h, top, left, right = 26, 6, 150, 422
    hgt = top * 2 + row_h * max(len(rows), 1) + 4
    shapes: list[dict] = []
    biggest = max((_tokens(r) for r in rows), default=0) or 1
    for i, r in enumerate(rows):
        y = top + i * row_h
        name = r["key"] if r["key"] is not None else "(no model)"
        shown = name if len(name) <= 19 else name[:18] + "…"
        total = _tokens(r)
        x = left
        shapes.append({**_text(left - 8, y + row_h / 2 + 4, shown, cls="lbl", anchor="end"),
                       "tip": name})
        for kind, label in TOKEN_KINDS:
            n = _bucket(r, kind)
            if not n:
                continue
            width = (right - left) * n / biggest
            shapes.append(_rect(x, y + 5, width, row_h - 10, f"bar k-{kind}",
                                f"{name}: {fmt_int(n)} {label} tokens"))
            x += width
        shapes.append(_text(x + 6, y + row_h / 2 + 4, compact(total), cls="ax", anchor="start"))
    return {"view": [480, hgt], "label": "Tokens by model", "shapes": shapes,
            "legend": [{"cls": f"k-{kind}", "text": label} for kind, label in TOKEN_KINDS],
            "empty": None if rows else "No rounds yet"}


def _bucket(row: dict, kind: str) -> int:
    if kind == "cache_write":
        return (row.get("b_cache_write") or 0) + (row.get("b_cache_write_1h") or 0)
    return row.get(f"b_{kind}") or 0


def _tokens(row: dict) -> int:
    return sum(_bucket(row, kind) for kind, _ in TOKEN_KINDS)


def per_round(rounds: list[dict]) -> dict:
    """A session's rounds: stacked token buckets per round (left axis) and the cost of
    each round as a line (right axis); unpriced rounds are gaps in the line."""
    w, hgt, left, top, bottom = 900, 240, 56, 12, 210
    right = 836
    shapes: list[dict] = []
    totals = []
    for r in rounds:
        b = r.get("buckets") or {}
        row = {f"b_{k}": b.get(k) or 0 for k in ("input", "cache_read", "cache_write",
                                                   "cache_write_1h", "output", "reasoning")}
        totals.append(row)
    biggest = max((_tokens(t) for t in totals), default=0)
    ticks = nice_ticks(biggest or 1)
    costs = [r.get("cost_usd") for r in rounds]
    top_cost = max((c for c in costs if c is not None), default=0)
    cost_ticks = nice_ticks(top_cost) if top_cost else [0.0]
    # On a phone this 900-unit chart is drawn ~340 px wide, its labels at 24 units
    # (app.css) to stay legible: the axes make room for them.
    if top_cost:
        right = min(right, w - _label_room((_usd_tick(t) for t in cost_ticks), 15))
    left = max(left, _label_room((compact(t) for t in ticks), 15))
    span = _y_axis(shapes, ticks, left, right, top, bottom, compact)
    if top_cost:
        _y_axis(shapes, cost_ticks, left, right, top, bottom, _usd_tick, side="right")
    slot = (right - left) / max(len(rounds), 1)
    every = max(1, math.ceil(len(rounds) / 10))
    points: list[str] = []
    for i, (r, t) in enumerate(zip(rounds, totals)):
        x = left + i * slot
        y = bottom
        norm = tokens.of_round(r)
        tip = (f"round {r.get('round')}: {fmt_int(norm['input'])} in, "
               f"{fmt_int(norm['output'])} out, {fmt_usd(r.get('cost_usd'))}")
        shapes.append(_rect(x, top, slot, bottom - top, "hit", tip))
        for kind, _label in TOKEN_KINDS:
            n = _bucket(t, kind)
            if n:
                bar = (bottom - top) * n / span
                y -= bar
                width = min(max(slot * 0.76, 0.6), 48)
                shapes.append(_rect(x + (slot - width) / 2, y, width, bar, f"bar k-{kind}", tip))
        cost = r.get("cost_usd")
        cx = x + slot / 2
        if cost is None:
            if len(points) > 1:
                shapes.append({"el": "polyline", "a": {"points": " ".join(points),
                                                       "class": "cost-line"}})
            points = []
        else:
            cy = bottom - (bottom - top) * cost / (cost_ticks[-1] or 1)
            points.append(f"{_r(cx)},{_r(cy)}")
            if len(rounds) <= 60:
                shapes.append({"el": "circle", "a": {"cx": _r(cx), "cy": _r(cy), "r": "2.5",
                                                     "class": "cost-dot"}, "tip": tip})
        if i % every == 0:
            shapes.append(_text(cx, bottom + 17, str(r.get("round"))))
    if len(points) > 1:
        shapes.append({"el": "polyline", "a": {"points": " ".join(points), "class": "cost-line"}})
    shapes.append(_line(left, bottom, right, bottom, "axis"))
    legend = [{"cls": f"k-{kind}", "text": label} for kind, label in TOKEN_KINDS]
    legend.append({"cls": "k-cost-line", "text": "cost per round (right axis)"})
    # Scrolls sideways on a phone only when the rounds would be too thin to read; a
    # short session fits, axes and round 1 included.
    return {"view": [w, hgt], "label": "Tokens and cost per round", "wide": len(rounds) > 16,
            "shapes": shapes,
            "legend": legend, "empty": None if rounds else "No rounds"}


def render(chart: dict, chart_id: str) -> Markup:
    """The chart as inline SVG (plus its legend), every text escaped by :func:`h`."""
    w, hgt = chart["view"]
    parts = []
    for shape in chart["shapes"]:
        children = []
        if shape.get("tip"):
            children.append(h("title", None, shape["tip"]))
        if "text" in shape:
            children.append(shape["text"])
        parts.append(h(shape["el"], shape["a"], *children))
    svg = h("svg", {"class": "chart wide" if chart.get("wide") else "chart", "id": chart_id,
                    "viewBox": f"0 0 {w} {hgt}",
                    "role": "img", "aria-label": chart["label"],
                    "xmlns": "http://www.w3.org/2000/svg"}, *parts)
    legend = h("ul", {"class": "legend", "id": f"{chart_id}-legend"},
               *(h("li", None, h("span", {"class": f"sw {item['cls']}"}), item["text"])
                 for item in chart["legend"]))
    empty = h("p", {"class": "empty", "id": f"{chart_id}-empty", "hidden": not chart["empty"]},
              chart["empty"] or "")
    return h("div", {"class": "chart-box"}, h("div", {"class": "chart-scroll"}, svg), empty,
             legend)
