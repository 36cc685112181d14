"""Realistic Higress access-log generator with its own ground truth.

Lines are written the way the real producers write them (see ../shared/spec/input-format.md
and ../shared/fixtures): Envoy's TEXT access-log format shaped as JSON with every outer
value a string, and ``ai_log`` a JSON document (Go ``json.Marshal``: sorted keys, ``<>&``
escaped) encoded as a string inside it. Agent sessions re-log their whole history on
every request, run tool loops, switch models, and interleave in time.

Everything is drawn from seeded ``random.Random`` instances, so a seed always gives the
same bytes. Sessions use one generator and the injected extras (bad lines, non-AI lines,
unsessioned requests, duplicates) another, so turning noise on or off never changes the
sessions themselves.

The expected cost of each request is computed here, independently of the package, from a
small hard-coded price list and pricing.md's exclusive-bucket formula applied literally
to the ai_log as written.

Standard library only; Python 3.10+.
"""

from __future__ import annotations

import calendar
import heapq
import json
import random
import string
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

__all__ = ["Event", "Generated", "generate", "iter_records", "iter_lines",
           "totals_by_session", "round_cost", "cost_of_ai_log", "PRICES", "UNPRICED_MODEL",
           "BAD_KINDS"]


# ---------------------------------------------------------------------------------------
# Public records

@dataclass(frozen=True)
class Event:
    """One valid AI request carried by the log (the ground truth for that line).

    Token fields hold the counts as the provider reported them, by meaning:
    ``cached_tokens`` is the cache read (OpenAI ``cached_tokens``, Anthropic
    ``cache_read_input_tokens``); ``reasoning_tokens`` is OpenAI ``reasoning_tokens`` or
    Gemini ``thoughts_token_count`` (Gemini's ``output_token`` excludes it, OpenAI's
    includes it); ``cache_write_tokens`` is Anthropic ``cache_creation_input_tokens``.
    ``new_messages`` is what a linear store must keep for this round: the messages
    appended since the previous request of the session, or the whole list when the
    agent compacted its history (then the previous list is not a prefix of this one)."""
    request_id: str | None
    session_id: str | None
    model: str
    start_time: str
    input_token: int
    output_token: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    consumer: str | None
    cost_usd: float | None
    new_messages: int
    # The normalised columns (storage.md "Token columns"), by meaning: every prompt token
    # (uncached + cache read + cache write) and every generated one (text + reasoning).
    input_total: int = 0
    output_total: int = 0


@dataclass
class Generated:
    lines: list[bytes]
    events: list[Event]
    bad_lines: dict[str, int] = field(default_factory=dict)
    non_ai: int = 0


BAD_KINDS = ("bad_json", "bad_utf8", "not_object", "bad_ai_log", "bad_tokens", "blank")


# ---------------------------------------------------------------------------------------
# Prices and the cost of one round (independent of the package on purpose)

# USD per 1M tokens, copied from ../shared/data/model-prices.json. None of these models
# has size tiers, so tier selection never applies to generated lines.
PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-2024-08-06": {"input": 2.5, "output": 10.0, "cache_read": 1.25},
    "gpt-4o-mini-2024-07-18": {"input": 0.15, "output": 0.6, "cache_read": 0.075},
    "o1-2024-12-17": {"input": 15.0, "output": 60.0, "cache_read": 7.5},
    "o3-mini-2025-01-31": {"input": 1.1, "output": 4.4, "cache_read": 0.55},
    "claude-sonnet-4-20250514": {"input": 3.0, "output": 15.0, "cache_read": 0.3,
                                 "cache_write": 3.75},
    "claude-3-5-haiku-20241022": {"input": 0.8, "output": 4.0, "cache_read": 0.08,
                                  "cache_write": 1.0},
    # The table only has these under a provider prefix (gemini/..., dashscope/...);
    # Higress logs the bare name, which the lookup must find without the prefix.
    "gemini-2.5-flash": {"input": 0.3, "output": 2.5, "cache_read": 0.03, "reasoning": 2.5},
    "qwen-max": {"input": 1.6, "output": 6.4},
    "deepseek-chat": {"input": 0.28, "output": 0.42, "cache_read": 0.028},
}
UNPRICED_MODEL = "my-private-model"   # in no price list: its rounds cost None, never $0


def _count(value: Any) -> int | None:
    """A token count as logged (int or numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _details(value: Any) -> dict:
    """``*_token_details`` arrive as a JSON string or as an object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _first(*values: int | None) -> tuple[int, int]:
    """(first value present, its position); (0, len) when none is."""
    for i, v in enumerate(values):
        if v is not None:
            return v, i
    return 0, len(values)


def round_cost(ai: dict, price: dict[str, float]) -> float:
    """pricing.md's exclusive-bucket formula, literally, on one decoded ai_log."""
    input_token = _count(ai.get("input_token")) or 0
    output_token = _count(ai.get("output_token")) or 0
    ind = _details(ai.get("input_token_details"))
    outd = _details(ai.get("output_token_details"))
    cache_read, _ = _first(_count(ai.get("cached_tokens")), _count(ind.get("cached_tokens")),
                           _count(ind.get("cache_read_input_tokens")))
    cache_write = _count(ind.get("cache_creation_input_tokens")) or 0
    anthropic = "cache_read_input_tokens" in ind or "cache_creation_input_tokens" in ind
    if anthropic or cache_read > input_token:
        uncached_input = input_token
    else:
        uncached_input = max(0, input_token - cache_read - cache_write)
    reasoning, source = _first(_count(ai.get("reasoning_tokens")),
                               _count(outd.get("reasoning_tokens")),
                               _count(outd.get("thoughts_token_count")))
    if source == 2 or reasoning > output_token:
        text_output = output_token
    else:
        text_output = output_token - reasoning
    p_in, p_out = price["input"], price["output"]
    return (uncached_input * p_in
            + cache_read * price.get("cache_read", p_in)
            + cache_write * price.get("cache_write", p_in)
            + text_output * p_out
            + reasoning * price.get("reasoning", p_out)) / 1e6


def cost_of_ai_log(ai: dict) -> float | None:
    """Cost of a round with that round's own model; None when the model is unpriced."""
    price = PRICES.get(ai.get("model"))
    return None if price is None else round_cost(ai, price)


# ---------------------------------------------------------------------------------------
# Encoding: Go's json.Marshal inside Envoy's TEXT access log

_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
               ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def go_json(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact, map keys sorted, raw UTF-8, and
    ``<``, ``>``, ``&``, U+2028/9 escaped (HTML-safe by default in Go)."""
    if value is None:       # fast paths: most ai_log values are scalars
        return "null"
    if type(value) is int:
        return str(value)
    text = _ENCODER.encode(value)
    for raw, escaped in _GO_ESCAPES:
        if raw in text:
            text = text.replace(raw, escaped)
    return text


def _ai_log_text(ai: dict, messages_json: str | None) -> str:
    """The ai_log document; ``messages_json`` is spliced in pre-encoded because the
    history is the bulk of every line and each message is encoded only once."""
    keys = sorted([*ai, "messages"] if messages_json is not None else ai)
    parts = [f'"{k}":{messages_json if k == "messages" else go_json(ai[k])}' for k in keys]
    return "{" + ",".join(parts) + "}"


# Envoy writes the keys in the order of the Helm chart's format string.
_OUTER_KEYS = ("authority", "bytes_received", "bytes_sent", "downstream_local_address",
               "downstream_remote_address", "duration", "istio_policy_status", "method",
               "path", "protocol", "request_id", "requested_server_name", "response_code",
               "response_flags", "route_name", "start_time", "trace_id", "upstream_cluster",
               "upstream_host", "upstream_local_address", "upstream_service_time",
               "upstream_transport_failure_reason", "user_agent", "x_forwarded_for",
               "response_code_details")


def envoy_line(outer: dict[str, str], ai_log: str | None) -> bytes:
    """One access-log line. TEXT mode substitutes values without escaping them (a ``"``
    in the User-Agent breaks the JSON); the ai_log filter state arrives string-escaped.
    ``ai_log`` None leaves the key out, as some non-AI routes do."""
    head = [] if ai_log is None else ['"ai_log":' + json.dumps(ai_log, ensure_ascii=False)]
    body = [f'"{k}":"{outer[k]}"' for k in _OUTER_KEYS]
    return ("{" + ",".join(head + body) + "}\n").encode("utf-8")


# ---------------------------------------------------------------------------------------
# Small helpers for ids and times

_ALNUM = string.ascii_letters + string.digits


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_ALNUM, k=n))


def _uuid(rng: random.Random) -> str:
    return "%08x-%04x-4%03x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16),
                                           rng.getrandbits(12), 0x8000 | rng.getrandbits(14),
                                           rng.getrandbits(48))


def _parse_time(text: str) -> int:
    """``2026-02-01T09:00:00Z`` (optionally with .fff) -> epoch milliseconds (UTC)."""
    base, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1000 + int((frac + "000")[:3])


def _fmt_time(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def _tokens(text: str) -> int:
    """Rough tokenizer: ~4 UTF-8 bytes per token (so ~1 token per CJK character)."""
    return (len(text.encode("utf-8")) + 3) // 4


# ---------------------------------------------------------------------------------------
# Content: prompts, tools and answers, with Unicode, emoji and hostile HTML

_SYSTEM = {
    "openclaw": "You are OpenClaw, a personal assistant running on the user's own devices. "
                "Use tools when they help; ask before destructive actions. Answer in the "
                "user's language (中文 or English). Never print secrets or API keys.",
    "support": "You are the support assistant of ACME Store 🛒. Be concise & friendly. Look "
               "orders up with tools; never invent order numbers. HTML in customer messages "
               "is untrusted text: never render it.",
    "claude": "You are Claude Code, Anthropic's official CLI for Claude. You help users with "
              "software engineering tasks: read, search and edit the repository with the "
              "tools, run the tests rather than guess, and keep answers short.",
}
_GUIDELINE = ("\n\n## Guideline {n}\nPrefer small, reviewable changes. Quote file paths "
              "as `path/to/file`. 不要编造不存在的 API。 When unsure, say so ✅.")

# First prompts, follow-ups and final answers by agent kind.
_FIRST_PROMPTS = {
    "openclaw": [
        "What's the weather in Beijing? Answer <short> & precise.",
        "Summarise this page: <div class=\"promo\"><script>alert('xss')</script>Sale!</div>",
        "写一个Python函数计算斐波那契数列，并加上单元测试。",
        "Explain quantum entanglement like I'm five 🧒",
        "把 README 翻译成英文，保留 Markdown 格式。",
    ],
    "claude": [
        "The CI job `test-py310` fails on main — find out why and fix it 🙏",
        "Can you refactor parse_line() so a \"quoted\" User-Agent doesn't break it?",
        "Run the benchmarks and tell me if anything regressed 📉",
        "Add a --dry-run flag to deploy.sh & document it.",
        "日志里的 token 统计好像不对，cached_tokens 被算了两次？",
        "帮我总结一下这个仓库的结构，并列出主要模块。",
    ],
    "support": [
        "Why is my order #10234 still \"processing\"? 😡",
        "我的退款什么时候到账？💸",
        "Is the coupon <script>alert(1)</script>SAVE10 still valid?",
        "Can I change the delivery address of order #20817 to Zürich?",
    ],
}
_FOLLOW_UPS = [
    "Thanks! Now also handle the gzip case.", "继续", "Looks good, go ahead.",
    "Can you make it faster? ⚡", "No, I meant the other one.",
    "<b>bold</b> isn't rendered, is that expected?", "再解释一下第二点？",
    "Great 👍 and what about Windows paths like C:\\Users\\me?", "Please add tests & docs.",
]
_ANSWERS = {
    "openclaw": [
        "北京：15°C，晴。\n出门记得带水 💧",
        "Here's the function:\n```python\ndef fib(n: int) -> int:\n    a, b = 0, 1\n"
        "    for _ in range(n):\n        a, b = b, a + b\n    return a\n```",
        "The page has a <script> tag, which I ignored; the visible text is \"Sale!\".",
        "Imagine two magic dice that always land on the same number, however far apart 🎲.",
    ],
    "claude": [
        "Done. The failing test assumed local time; I pinned UTC and the suite passes ✅.",
        "I've added `--dry-run` & updated the docs in README.md.",
        "Benchmarks: parse 412 MB/s (was 398), store 95 MB/s (unchanged). No regression 🎉.",
        "仓库结构：`agent_session_monitor/`（核心）、`scripts/`（CLI 与 Web）、`tests/`。",
        "cached_tokens was added to input_token a second time in report.py:88; fixed.",
    ],
    "support": [
        "订单 #10234 已发货，预计明天送达 📦。",
        "Your refund was issued today; banks take 3-5 days 💳.",
        "That coupon expired on 2026-01-31, sorry! Here's SAVE5 instead 🎁.",
    ],
}
_PREFACES = ["I'll look at the code first.", "Let me run the tests.", "先搜索一下相关代码。",
             "Checking the file 🔍"]
_CODE = [
    "def parse_line(raw: bytes) -> dict:\n    \"\"\"Parse one access-log line.\"\"\"\n"
    "    return json.loads(raw)\n",
    "<!doctype html>\n<html><head><script src=\"/app.js\"></script></head>\n"
    "<body><h1>Sale & more</h1><script>track('view')</script></body></html>\n",
    "export function total(items) {\n  return items.reduce((s, i) => s + i.price * i.qty, 0);\n}\n",
    "# 项目说明\n\n本项目统计 Higress 网关的 token 用量与费用 💰。\n",
]
_SHELL = [
    "$ pytest -q\n....F.\nFAILED tests/test_time.py::test_utc - AssertionError: "
    "'09:30' != '17:30'\n1 failed, 5 passed in 0.42s\n",
    "$ git status\nOn branch main\nnothing to commit, working tree clean\n",
    "$ ls\nREADME.md  main.py  scripts  tests\n",
    "$ python3 bench.py\nparse: 412.3 MB/s\nstore: 95.1 MB/s\n",
]
_FILES = ["agent_session_monitor/parse.py", "main.py", "web/index.html", "README.md",
          "deploy.sh", "docs/中文说明.md"]
_CITIES = ["Beijing", "上海", "Zürich", "São Paulo", "東京"]


# Coherent conversations (``coherent=True``, the bundled example): one topic per first
# prompt above, in the same order, with the tools it calls, its answer, and follow-ups
# with their own answers, so that each question on the page gets its answer. The random
# draws are the same as without it (each pick is mapped onto the topic), so sessions,
# rounds and times do not change; only the text (and so the token counts) do.
@dataclass(frozen=True)
class _Topic:
    tools: tuple[tuple[str, dict, str], ...]      # (tool name, arguments, result text)
    answer: str
    follow_ups: tuple[tuple[str, str], ...]       # (user message, the answer to it)
    summary: str


_TOPICS = {
    "openclaw": [
        _Topic((("get_weather", {"city": "Beijing"}, '{"sky":"clear","temp_c":15,"wind":"3 m/s"}'),),
               "Beijing now: 15°C, clear, light wind (3 m/s). No umbrella needed ☀️.",
               (("And tomorrow?", "Tomorrow in Beijing: 12-18°C, cloudy in the afternoon."),
                ("继续", "明天北京 12-18°C，下午多云，早晚偏凉，记得带件外套。"),
                ("Thanks! What about Shanghai?", "Shanghai now: 19°C, light rain 🌧.")),
               "the user asked about the weather in Beijing"),
        _Topic((("web_fetch", {"url": "https://shop.example.com/promo"},
                 '<div class="promo"><h1>Winter Sale</h1><p>30% off all jackets until Feb 10.</p>'
                 "<script>track('view')</script></div>"),),
               "The page announces a Winter Sale: 30% off all jackets until Feb 10. It also "
               "contains a tracking <script>, which I ignored.",
               (("Is the sale valid online too?", "Yes: the page says the discount applies in "
                 "stores and online, at checkout."),
                ("继续", "页面只有这一条促销：2 月 10 日前所有夹克 7 折。"),
                ("Summarise it in one line.", "Winter Sale: jackets 30% off until Feb 10.")),
               "the user asked for a summary of a promotion page"),
        _Topic((("run_shell", {"command": "python3 -m pytest -q test_fib.py"},
                 "$ python3 -m pytest -q test_fib.py\n..\n2 passed in 0.01s\n"),),
               "Here's the function and its tests (2 passed):\n```python\ndef fib(n: int) -> int:\n"
               "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
               "def test_fib():\n    assert [fib(i) for i in range(7)] == [0, 1, 1, 2, 3, 5, 8]\n```",
               (("Can you make it faster? ⚡", "For large n use fast doubling: O(log n) "
                 "multiplications instead of n additions; I added fib_fast() with the same tests."),
                ("继续", "已加入负数检查：n < 0 时抛出 ValueError，并补了对应的测试。"),
                ("Please add docs.", "Added a docstring with the definition and an example: "
                 "fib(10) == 55.")),
               "the user asked for a Fibonacci function with tests"),
        _Topic((("web_fetch", {"url": "https://en.wikipedia.org/wiki/Quantum_entanglement"},
                 "Quantum entanglement is the phenomenon that occurs when a group of particles "
                 "is generated or interacts in such a way that the quantum state of each cannot "
                 "be described independently."),),
               "Imagine two magic dice: however far apart they are, when you roll them they "
               "always show the same number 🎲. Nobody knows the number before the roll, but "
               "once you see one die, you know the other.",
               (("Can it send messages faster than light?", "No: each die alone looks random, so "
                 "you cannot choose what the other person sees; no message travels."),
                ("继续", "简单说：两个粒子像一对魔法骰子，看到一个就知道另一个，但不能用来传信息。"),
                ("Thanks! Who discovered it?", "Einstein, Podolsky and Rosen described it in 1935; "
                 "experiments by Aspect (1982) confirmed it.")),
               "the user asked for a simple explanation of quantum entanglement"),
        _Topic((("read_file", {"path": "README.md"}, "# 项目说明\n\n本项目统计 Higress 网关的 "
                 "token 用量与费用 💰。\n\n## 安装\n\n无需安装，Python 3.10+ 即可。\n"),),
               "# Project\n\nThis project tracks the token usage and cost of the Higress gateway 💰.\n\n"
               "## Installation\n\nNothing to install: Python 3.10+ is enough.",
               (("Keep the emoji?", "Yes, I kept 💰 as in the original."),
                ("继续", "已翻译完全部两节，Markdown 标题和格式保持不变。"),
                ("Please also translate the title.", "Done: the title is now \"Project\".")),
               "the user asked to translate the README into English"),
    ],
    "claude": [
        _Topic((("Bash", {"command": "pytest -q tests/test_time.py"},
                 "$ pytest -q tests/test_time.py\nF\nFAILED tests/test_time.py::test_utc - "
                 "AssertionError: '09:30' != '17:30'\n1 failed in 0.12s\n"),
                ("Read", {"file_path": "tests/test_time.py"},
                 "def test_utc():\n    assert fmt(ts) == '09:30'   # runs in the CI's local time\n"),
                ("Edit", {"file_path": "tests/test_time.py", "old_string": "fmt(ts)",
                          "new_string": "fmt(ts, tz=timezone.utc)"}, "The file has been updated.")),
               "Fixed: `test_utc` formatted the time in the CI runner's local zone (UTC+8). I "
               "pinned UTC in the test; `pytest -q` passes ✅.",
               (("Could this break anywhere else?", "I grepped for fmt( without tz=: two other "
                 "calls, both in tests, both fixed the same way."),
                ("继续", "已检查其它测试：没有其它依赖本地时区的断言。"),
                ("Please add a note to the changelog.", "Added under Unreleased: \"Tests no longer "
                 "depend on the local time zone.\"")),
               "the CI job test-py310 failed on a local-time assertion; fixed"),
        _Topic((("Grep", {"pattern": "def parse_line"}, "agent_session_monitor/parse.py:42:def "
                 "parse_line(raw: bytes) -> dict:\n"),
                ("Read", {"file_path": "agent_session_monitor/parse.py"},
                 "def parse_line(raw: bytes) -> dict:\n    \"\"\"Parse one access-log line.\"\"\"\n"
                 "    return json.loads(raw)\n"),
                ("Edit", {"file_path": "agent_session_monitor/parse.py",
                          "old_string": "return json.loads(raw)",
                          "new_string": "return salvage_ai_log(raw) if bad else json.loads(raw)"},
                 "The file has been updated.")),
               "parse_line() now falls back to salvaging the ai_log field when a \"quoted\" "
               "User-Agent makes the line invalid JSON; added a test with such a line.",
               (("What if the ai_log itself has a quote?", "It is JSON-escaped inside the string "
                 "(\\\"), so the salvage finds the closing quote correctly; covered by a test."),
                ("继续", "已补充测试：User-Agent 中含引号的行现在可以正确解析。"),
                ("Please add docs.", "Documented the salvage in LOG_FORMAT.md with an example "
                 "line.")),
               "parse_line() now salvages the ai_log of a line with a quoted User-Agent"),
        _Topic((("Bash", {"command": "python3 bench.py"}, "$ python3 bench.py\nparse: 412.3 MB/s "
                 "(baseline 398.0)\nstore: 95.1 MB/s (baseline 95.4)\n"),),
               "Benchmarks: parse 412 MB/s (baseline 398), store 95 MB/s (baseline 95). No "
               "regression 🎉.",
               (("Run it three times to be sure.", "Three runs: parse 409-414 MB/s, store 94-96 "
                 "MB/s. Within noise."),
                ("继续", "内存占用也没有变化：峰值 38 MB。"),
                ("What about the gzip case?", "gzip input: 88 MB/s, same as last week.")),
               "benchmarks ran without regression"),
        _Topic((("Read", {"file_path": "deploy.sh"}, "#!/bin/sh\nset -e\nrsync -a build/ "
                 "prod:/srv/app/\nssh prod systemctl restart app\n"),
                ("Edit", {"file_path": "deploy.sh", "old_string": "set -e",
                          "new_string": "set -e\n[ \"$1\" = --dry-run ] && DRY=echo"},
                 "The file has been updated.")),
               "Added `--dry-run` to deploy.sh (prints the rsync and ssh commands instead of "
               "running them) and documented it in README.md.",
               (("Does it skip the restart too?", "Yes: every remote command goes through $DRY, "
                 "so --dry-run only prints them."),
                ("继续", "README 中已加入 --dry-run 的用法示例。"),
                ("Please add tests & docs.", "Added tests/test_deploy.sh that runs --dry-run and "
                 "checks nothing was copied.")),
               "deploy.sh has a --dry-run flag"),
        _Topic((("Grep", {"pattern": "cached_tokens"}, "report.py:88:    total += u.input_token "
                 "+ u.cached_tokens\n"),
                ("Read", {"file_path": "report.py"}, "    total += u.input_token + u.cached_tokens"
                 "   # cached is already inside input_token\n")),
               "对，cached_tokens 被算了两次：report.py:88 把它加到了已经包含缓存部分的 input_token "
               "上。已修复并补了测试。",
               (("继续", "已检查其它报表：只有这一处重复计算。"),
                ("Please add tests & docs.", "Added a test with an OpenAI round whose input "
                 "includes 1,024 cached tokens: counted once."),
                ("Which reports were wrong?", "stats-model and the daily totals: both went "
                 "through report.py:88.")),
               "cached tokens were counted twice in report.py; fixed"),
        _Topic((("Bash", {"command": "ls"}, "$ ls\nREADME.md  main.py  scripts  tests  "
                 "agent_session_monitor\n"),),
               "仓库结构：`agent_session_monitor/`（核心逻辑）、`scripts/`（CLI 与 Web 入口）、"
               "`tests/`（测试）、`main.py`（监控进程）。",
               (("继续", "主要模块：parse.py（解析日志）、store.py（存储）、report.py（报表）。"),
                ("Which module should I read first?", "parse.py: everything starts from one "
                 "log line."),
                ("Please add docs.", "Added this overview to README.md under \"Layout\".")),
               "the user asked for the layout of the repository"),
    ],
    "support": [
        _Topic((("lookup_order", {"order_id": "#10234"},
                 '{"eta":"2026-02-03","note":"paid","status":"shipped"}'),),
               "Good news: order #10234 shipped this morning and should arrive on Feb 3 📦.",
               (("Can I get the tracking number?", "Sure: tracking number 1Z 999 AA1 0123 "
                 "4567 84 (UPS)."),
                ("继续", "订单 #10234 已发货，预计 2 月 3 日送达。"),
                ("Thanks!", "You're welcome! 😊")),
               "order #10234 has shipped"),
        _Topic((("lookup_order", {"order_id": "#30512"},
                 '{"refund":"issued 2026-02-01","status":"refunded"}'),),
               "您的退款已于今天（2 月 1 日）发出，通常 3-5 个工作日到账 💸。",
               (("继续", "如果 5 个工作日后仍未到账，请回复本消息，我们会联系银行。"),
                ("Which card will it go to?", "To the card you paid with, ending in 4242."),
                ("Thanks!", "不客气！😊")),
               "the refund of order #30512 was issued"),
        _Topic((("web_fetch", {"url": "https://shop.example.com/coupons/SAVE10"},
                 '{"code":"SAVE10","expires":"2026-01-31","valid":false}'),),
               "The coupon SAVE10 expired on Jan 31, sorry! Here's SAVE5 instead 🎁.",
               (("Can SAVE5 be combined with the sale?", "No, one discount per order; the sale "
                 "price is already lower than SAVE5."),
                ("继续", "SAVE5 有效期到 2 月 28 日。"),
                ("Thanks!", "Happy shopping! 🛒")),
               "coupon SAVE10 expired; offered SAVE5"),
        _Topic((("lookup_order", {"order_id": "#20817"},
                 '{"address":"Bern","eta":"2026-02-04","status":"processing"}'),),
               "Done: order #20817 (not shipped yet) will now go to Zürich; delivery is still "
               "expected on Feb 4.",
               (("Will that cost extra?", "No, the address change is free before shipping."),
                ("继续", "地址已改为苏黎世，订单尚未发货。"),
                ("Thanks!", "You're welcome! 😊")),
               "the delivery address of order #20817 was changed to Zürich"),
    ],
}


def _snippets(rng: random.Random, pool: list[str], scale: int) -> str:
    """A few pieces of ``pool``; ``scale`` multiplies the size (benchmarks use it)."""
    n = rng.randint(1, 3) * scale
    return "".join(f"{i + 1:>4}| {rng.choice(pool)}" if i % 2 else rng.choice(pool)
                   for i in range(n))


# tool name -> (arguments builder, result builder); the result is the tool message text.
def _tool_args(rng: random.Random, name: str) -> dict:
    if name in ("get_weather",):
        return {"city": rng.choice(_CITIES)}
    if name in ("read_file", "Read"):
        return {"file_path" if name == "Read" else "path": rng.choice(_FILES)}
    if name in ("run_shell", "Bash"):
        return {"command": rng.choice(["pytest -q", "git status", "ls", "python3 bench.py"])}
    if name == "Grep":
        return {"pattern": rng.choice(["cached_tokens", "def parse_line", "<script>"])}
    if name == "Edit":
        return {"file_path": rng.choice(_FILES), "old_string": "return json.loads(raw)",
                "new_string": "return json.loads(raw.decode('utf-8'))"}
    if name in ("web_fetch", "WebFetch"):
        return {"url": f"https://example.com/p/{rng.randint(1, 999)}?a=1&b=<x>"}
    return {"order_id": f"#{rng.randint(10000, 99999)}"}


def _tool_result(rng: random.Random, name: str, scale: int) -> str:
    if name == "get_weather":
        return go_json({"temp_c": rng.randint(-5, 35), "sky": rng.choice(["clear", "多云", "rain 🌧"])})
    if name in ("run_shell", "Bash"):
        return _snippets(rng, _SHELL, scale)
    if name == "lookup_order":
        return go_json({"status": rng.choice(["shipped", "processing"]), "eta": "2026-02-03",
                        "note": "<i>fragile</i> & heavy"})
    if name == "Edit":
        return "The file has been updated."
    return _snippets(rng, _CODE, scale)


# ---------------------------------------------------------------------------------------
# Models, agents and how each provider reports usage

@dataclass(frozen=True)
class _Model:
    name: str
    shape: str          # "openai" | "anthropic" | "gemini": how usage is reported
    route: str          # Higress route / upstream suffix
    cache_unit: int     # prompt-cache granularity in tokens (0 = no prompt cache)
    cache_min: int      # smallest prompt that is cached
    reasoning: bool


_MODELS = {m.name: m for m in [
    _Model("gpt-4o-2024-08-06", "openai", "openai", 128, 1024, False),
    _Model("gpt-4o-mini-2024-07-18", "openai", "openai", 128, 1024, False),
    _Model("o3-mini-2025-01-31", "openai", "openai", 128, 1024, True),
    _Model("o1-2024-12-17", "openai", "openai", 128, 1024, True),
    _Model("deepseek-chat", "openai", "deepseek", 64, 64, False),
    _Model("qwen-max", "openai", "qwen", 256, 1024, False),
    _Model("gemini-2.5-flash", "gemini", "gemini", 256, 1024, True),
    _Model(UNPRICED_MODEL, "openai", "private", 0, 0, False),
    _Model("claude-sonnet-4-20250514", "anthropic", "claude", 1, 1024, False),
    _Model("claude-3-5-haiku-20241022", "anthropic", "claude", 1, 2048, False),
]}
_OPENAI_POOL = (["gpt-4o-2024-08-06"] * 30 + ["gpt-4o-mini-2024-07-18"] * 18
                + ["o3-mini-2025-01-31"] * 10 + ["o1-2024-12-17"] * 4 + ["deepseek-chat"] * 10
                + ["qwen-max"] * 10 + ["gemini-2.5-flash"] * 8 + [UNPRICED_MODEL] * 5)
_ANTHROPIC_POOL = ["claude-sonnet-4-20250514"] * 85 + ["claude-3-5-haiku-20241022"] * 15


@dataclass(frozen=True)
class _Agent:
    kind: str
    anthropic: bool         # speaks /v1/messages (content blocks, top-level system)
    tools: tuple[str, ...]
    mean_tool_steps: float  # tool calls per user turn
    user_agents: tuple[str, ...]


_AGENTS = [
    _Agent("openclaw", False, ("get_weather", "web_fetch", "run_shell", "read_file"), 1.5,
           ("openclaw/2026.1.30",)),
    _Agent("claude", True, ("Read", "Bash", "Grep", "Edit"), 3.0,
           ("claude-cli/1.0.58 (external, cli)",)),
    _Agent("support", False, ("lookup_order", "web_fetch"), 0.8,
           ("OpenAI/Python 1.59.7", "OpenAI/JS 4.77.0")),
]
_AGENT_WEIGHTS = [40, 35, 25]
_CONSUMERS = ["clawdbot", "team-search", "ci-bot", "alice"]
_AUTHORITIES = ["llm.example.com", "ai-gw.internal.example.com"]


def _session_id(rng: random.Random, kind: str) -> str:
    """Ids shaped like the headers real agents send (x-openclaw-session-key, ...)."""
    if kind == "openclaw":
        # OpenClaw's shapes (session_keys.py): <channel>:<peer kind>:<peer id>; its docs wrote
        # "dm" for "direct" until openclaw#26506, and "thread" is a suffix, not a kind.
        channel = rng.choice(["discord:channel", "telegram:direct", "slack:channel"])
        return f"agent:main:{channel}:{rng.randint(10 ** 18, 10 ** 19 - 1)}"
    if kind == "claude":
        return _uuid(rng)
    # Web apps sometimes put a path-like value in x-agent-session: storage must cope.
    sep = "/" if rng.random() < 0.1 else ":"
    return f"support{sep}web{sep}{_alnum(rng, 12)}"


def _outer(rng: random.Random, *, authority: str, path: str, request_id: str, route: str,
           start_ms: int, duration: int, service: int | None, user_agent: str,
           bytes_in: int, bytes_out: int, method: str = "POST", code: str = "200") -> dict:
    """The Envoy fields around an ai_log (all strings, as Envoy writes them)."""
    upstream = {"private": ("outbound|8000||vllm.ml.svc.cluster.local", "10.0.3.21:8000")}.get(
        route, (f"outbound|443||llm-{route}.internal.dns", "104.18.6.192:443"))
    return {
        "authority": authority, "bytes_received": str(bytes_in), "bytes_sent": str(bytes_out),
        "downstream_local_address": "10.0.0.12:8080",
        "downstream_remote_address": f"172.17.0.{rng.randint(1, 254)}:{rng.randint(30000, 60000)}",
        "duration": str(duration), "istio_policy_status": "-", "method": method, "path": path,
        "protocol": "HTTP/1.1", "request_id": request_id, "requested_server_name": "-",
        "response_code": code, "response_flags": "-",
        "route_name": f"ai-route-{route}.internal" if route else "default-route",
        "start_time": _fmt_time(start_ms), "trace_id": "-",
        "upstream_cluster": upstream[0], "upstream_host": upstream[1],
        "upstream_local_address": f"10.0.0.12:{rng.randint(30000, 60000)}",
        "upstream_service_time": "-" if service is None else str(service),
        "upstream_transport_failure_reason": "-", "user_agent": user_agent,
        "x_forwarded_for": "-", "response_code_details": "via_upstream",
    }


@dataclass
class _Usage:
    input_token: int
    output_token: int
    cached: int = 0          # cache read
    cache_write: int = 0     # Anthropic cache creation
    reasoning: int = 0       # inside output (OpenAI) or beside it (Gemini thoughts)


def _usage_fields(rng: random.Random, shape: str, u: _Usage, legacy: bool) -> dict:
    """The token keys of an ai_log as each provider's usage comes through Higress.
    ``legacy`` gateways write numbers as strings and lack the top-level cache/reasoning
    keys (only the details carry them)."""
    num = str if legacy else int
    if shape == "anthropic":
        ind = {"cache_creation_input_tokens": u.cache_write, "cache_read_input_tokens": u.cached}
        outd: dict = {}
        total = u.input_token + u.output_token + u.cached + u.cache_write
        top: dict = {}
    elif shape == "gemini":
        ind = {"cached_tokens": u.cached}
        outd = {"thoughts_token_count": u.reasoning}
        total = u.input_token + u.output_token + u.reasoning
        top = {} if legacy else {"cached_tokens": u.cached}
    else:
        full = rng.random() < 0.5
        ind = {"audio_tokens": 0, "cached_tokens": u.cached} if full else {"cached_tokens": u.cached}
        outd = ({"accepted_prediction_tokens": 0, "audio_tokens": 0,
                 "reasoning_tokens": u.reasoning, "rejected_prediction_tokens": 0}
                if full else {"reasoning_tokens": u.reasoning})
        total = u.input_token + u.output_token
        top = {} if legacy else {"cached_tokens": u.cached, "reasoning_tokens": u.reasoning}
    as_string = rng.random() < 0.7   # both encodings occur in the wild
    fields = {"input_token": num(u.input_token), "output_token": num(u.output_token),
              "total_token": num(total),
              "input_token_details": go_json(ind) if as_string else ind,
              "output_token_details": go_json(outd) if as_string else outd}
    fields.update({k: num(v) for k, v in top.items()})
    return fields


def _event_tokens(shape: str, u: _Usage) -> dict:
    if shape == "anthropic":    # input_token excludes cache reads and writes
        input_total = u.input_token + u.cached + u.cache_write
    else:                       # OpenAI and Gemini: input_token includes the cache
        input_total = u.input_token
    if shape == "gemini" or u.reasoning > u.output_token:   # output excludes thinking
        output_total = u.output_token + u.reasoning
    else:
        output_total = u.output_token
    return {"input_token": u.input_token, "output_token": u.output_token,
            "cached_tokens": u.cached, "reasoning_tokens": u.reasoning,
            "cache_write_tokens": u.cache_write if shape == "anthropic" else 0,
            "input_total": input_total, "output_total": output_total}


# ---------------------------------------------------------------------------------------
# One agent session

@dataclass
class _Pending:
    """The next line of a session, rendered, waiting for its turn in the log."""
    end_ms: int
    line: bytes
    event: Event


class _Session:
    """An agent conversation: history grows append-only (each message encoded once),
    every request re-logs all of it, tool results come back as the last message."""

    TOOL_OVERHEAD = (900, 3500)   # tool schemas: sent every time, never logged

    def __init__(self, rng: random.Random, start_ms: int, n_requests: int, scale: int,
                 coherent: bool = False) -> None:
        self.rng = rng
        self.scale = scale
        self.coherent = coherent
        self.topic: _Topic | None = None
        self.reply: str | None = None    # coherent: the answer the current user turn gets
        self.agent = rng.choices(_AGENTS, _AGENT_WEIGHTS)[0]
        self.session_id = _session_id(rng, self.agent.kind)
        self.consumer = rng.choice(_CONSUMERS) if rng.random() < 0.75 else None
        self.user_agent = rng.choice(self.agent.user_agents)
        self.authority = rng.choice(_AUTHORITIES)
        self.legacy = rng.random() < 0.2
        self.stream = rng.random() < 0.7
        self.remaining = n_requests
        self.next_start = start_ms
        self.overhead = rng.randint(*self.TOOL_OVERHEAD)
        self.pool = _ANTHROPIC_POOL if self.agent.anthropic else _OPENAI_POOL
        self.model = _MODELS[rng.choice(self.pool)]
        self.system = _SYSTEM[self.agent.kind] + "".join(
            _GUIDELINE.format(n=i + 1) for i in range(rng.randint(0, 2) * scale))
        self.history: list[Any] = []     # message objects
        self.encoded: list[str] = []     # go_json of each message
        self.hist_tokens = 0
        self.chat_round = 0              # user messages in the request (tool loops share one)
        self.steps_left = 0              # tool calls still to make in this user turn
        self.prev_len = 0                # messages in the previous request
        self.chain_broken = True         # first request, or history was compacted
        self.cache_prefix = 0            # prompt tokens a provider cache can still serve
        self.cache_model = ""            # provider caches are per model
        self.last_gap_ms = 0
        self.tool_step = 0               # coherent: the next of the topic's tools
        if not self.agent.anthropic:
            self._append({"content": self.system, "role": "system"})
        self._new_user_turn(first=True)

    # history -------------------------------------------------------------------------
    def _append(self, message: dict) -> None:
        self.history.append(message)
        text = go_json(message)
        self.encoded.append(text)
        self.hist_tokens += 4 + (len(text.encode("utf-8")) + 3) // 4

    def _user_message(self, text: str) -> dict:
        if self.agent.anthropic or self.rng.random() < 0.15:   # content parts occur in OpenAI too
            return {"content": [{"text": text, "type": "text"}], "role": "user"}
        return {"content": text, "role": "user"}

    def _new_user_turn(self, first: bool = False) -> None:
        rng = self.rng
        if not first and self.hist_tokens > 3000 * self.scale and rng.random() < 0.3:
            self._compact()
        text = rng.choice(_FIRST_PROMPTS[self.agent.kind] if first else _FOLLOW_UPS)
        if self.coherent:   # the same draws, mapped onto the session's topic
            if first:
                self.topic = _TOPICS[self.agent.kind][_FIRST_PROMPTS[self.agent.kind].index(text)]
                self.reply = self.topic.answer
            else:
                text, self.reply = self.topic.follow_ups[_FOLLOW_UPS.index(text)
                                                         % len(self.topic.follow_ups)]
        if first and rng.random() < 0.3:
            pasted = _snippets(rng, _CODE, self.scale)   # pasted context
            if not self.coherent:
                text += "\n\n" + pasted
        self._append(self._user_message(text))
        self.chat_round += 1
        self.steps_left = min(int(rng.expovariate(1 / self.agent.mean_tool_steps)), 8)
        if not first and rng.random() < 0.15:   # the user or a router picks another model
            self.model = _MODELS[rng.choice(self.pool)]

    def _compact(self) -> None:
        """Agents summarise a long history into one message (a new storage chain)."""
        summary = ("Summary of the conversation so far: " + self.topic.summary + "."
                   if self.coherent else
                   "Summary of the conversation so far: 用户在调试日志统计 🧾; tests pass.")
        self.history, self.encoded, self.hist_tokens = [], [], 0
        if not self.agent.anthropic:
            self._append({"content": self.system, "role": "system"})
        self._append(self._user_message(summary))
        self.chain_broken = True
        self.chat_round = 1                  # the summary is now the only user message
        self.cache_prefix = self.overhead + _tokens(self.system)

    # one request ---------------------------------------------------------------------
    def next_request(self) -> _Pending:
        """Render the next request of the session and advance its history."""
        rng, model = self.rng, self.model
        start = self.next_start
        n = len(self.history)
        new_messages = n if self.chain_broken else n - self.prev_len
        self.prev_len, self.chain_broken = n, False
        prompt = self.overhead + self.hist_tokens + (0 if not self.agent.anthropic
                                                     else _tokens(self.system))
        usage = self._usage(model, prompt)
        tool_calls, answer, assistant = self._respond(model)
        usage.output_token += sum(_tokens(c["function"]["arguments"]) + 12 for c in tool_calls or ())
        usage.output_token += _tokens(answer or "")
        if model.shape == "openai":    # OpenAI's output includes the reasoning
            usage.output_token += usage.reasoning
        first_token = rng.randint(200, 1500) + usage.reasoning * 3
        service = first_token + usage.output_token * rng.randint(8, 25)
        duration = service + rng.randint(1, 5)

        request_id = _uuid(rng)
        ai = self._ai_log(model, usage, tool_calls, answer, first_token, service)
        messages_json = "[" + ",".join(self.encoded[:n]) + "]"
        outer = _outer(rng, authority=self.authority, request_id=request_id, route=model.route,
                       path="/v1/messages" if self.agent.anthropic else "/v1/chat/completions",
                       start_ms=start, duration=duration,
                       service=None if self.stream and rng.random() < 0.5 else first_token,
                       user_agent=self.user_agent, bytes_in=len(messages_json) + 180,
                       bytes_out=300 + 4 * usage.output_token * (3 if self.stream else 1))
        line = envoy_line(outer, _ai_log_text(ai, messages_json))
        event = Event(request_id=request_id, session_id=self.session_id, model=model.name,
                      start_time=outer["start_time"], consumer=self.consumer,
                      cost_usd=cost_of_ai_log(ai), new_messages=new_messages,
                      **_event_tokens(model.shape, usage))

        # The provider now caches this prompt (a compaction below may shrink that).
        self.cache_prefix, self.cache_model = prompt, model.name
        self._after_response(assistant, tool_calls)
        self.remaining -= 1
        gap = rng.randint(150, 2500) if tool_calls else int(rng.uniform(5, 240) * 1000)
        self.next_start = start + duration + gap
        self.last_gap_ms = gap
        return _Pending(start + duration, line, event)

    def _usage(self, model: _Model, prompt: int) -> _Usage:
        """Token counts, with prompt caching as each provider does it: a cached prefix
        of the previous request, only for the same model and within the cache TTL."""
        rng = self.rng
        warm = (self.cache_model == model.name and self.last_gap_ms < 300_000
                and rng.random() < 0.9)
        hit = min(self.cache_prefix, prompt) if warm else 0
        reasoning = 0
        if model.reasoning and (model.shape != "gemini" or rng.random() < 0.7):
            reasoning = rng.randint(1, 24) * 64 * self.scale
        if model.shape == "anthropic":
            if not warm and self.chat_round == 1 and rng.random() < 0.6:
                hit = self.overhead + _tokens(self.system)   # shared agent prompt cache
            uncached = min(rng.randint(3, 40), prompt - hit)
            return _Usage(uncached, 0, hit, prompt - hit - uncached)
        if not model.cache_unit or hit < model.cache_min:
            hit = 0
        cached = hit - hit % model.cache_unit if model.cache_unit else 0
        if model.name == "qwen-max" and rng.random() < 0.5:
            cached = 0      # implicit cache is best-effort
        return _Usage(prompt, 0, cached, 0, reasoning)

    def _respond(self, model: _Model) -> tuple[list | None, str | None, dict]:
        """(tool_calls as logged, answer, assistant message for the history)."""
        rng = self.rng
        if self.steps_left > 0 and self.remaining > 1:
            names = [rng.choice(self.agent.tools) for _ in range(2 if rng.random() < 0.2 else 1)]
            prefix = "toolu_01" if self.agent.anthropic else "call_"
            calls = [{"function": {"arguments": go_json(_tool_args(rng, name)), "name": name},
                      "id": prefix + _alnum(rng, 22), "index": i, "type": "function"}
                     for i, name in enumerate(names)]
            if self.coherent:   # the topic's tools, in order, for the same draws
                for c in calls:
                    tool = self.topic.tools[self.tool_step % len(self.topic.tools)]
                    self.tool_step += 1
                    c["function"] = {"arguments": go_json(tool[1]), "name": tool[0]}
            if self.agent.anthropic:
                blocks = [{"text": rng.choice(_PREFACES), "type": "text"}] + [
                    {"id": c["id"], "input": json.loads(c["function"]["arguments"]),
                     "name": c["function"]["name"], "type": "tool_use"} for c in calls]
                return calls, None, {"content": blocks, "role": "assistant"}
            logged = [{k: v for k, v in c.items() if k != "index"} for c in calls]
            return calls, None, {"content": None, "role": "assistant", "tool_calls": logged}
        answer = rng.choice(_ANSWERS[self.agent.kind])
        if self.coherent:
            answer = self.reply
        if self.scale > 1:
            answer += "\n" + _snippets(rng, _CODE, self.scale)
        if self.agent.anthropic:
            return None, answer, {"content": [{"text": answer, "type": "text"}], "role": "assistant"}
        return None, answer, {"content": answer, "role": "assistant"}

    def _after_response(self, assistant: dict, tool_calls: list | None) -> None:
        """The answer joins the history, then the tool results or the next user turn."""
        self._append(assistant)
        if tool_calls:
            results = [(c["id"], _tool_result(self.rng, c["function"]["name"], self.scale))
                       for c in tool_calls]
            if self.coherent:
                by_name = {t[0]: t[2] for t in self.topic.tools}
                results = [(cid, by_name[c["function"]["name"]])
                           for (cid, _), c in zip(results, tool_calls)]
            if self.agent.anthropic:
                self._append({"content": [{"content": text, "tool_use_id": cid,
                                           "type": "tool_result"} for cid, text in results],
                              "role": "user"})
            else:
                for cid, text in results:
                    self._append({"content": text, "role": "tool", "tool_call_id": cid})
            self.steps_left -= 1
        elif self.remaining > 1:
            self._new_user_turn()

    def _ai_log(self, model: _Model, usage: _Usage, tool_calls: list | None,
                answer: str | None, first_token: int, service: int) -> dict:
        rng = self.rng
        num = str if self.legacy else int
        ai = {"answer": answer, "api": "-", "chat_round": self.chat_round,
              "chat_id": ("msg_01" + _alnum(rng, 22)) if self.agent.anthropic
              else "chatcmpl-" + _alnum(rng, 29),
              "llm_service_duration": num(service), "model": model.name,
              "question": self.history[-1]["content"],
              "reasoning": ("Let me think step by step… 先检查输入。" if usage.reasoning
                            and rng.random() < 0.3 else None),
              "response_type": "stream" if self.stream else "normal",
              "session_id": self.session_id, "tool_calls": tool_calls,
              "system": self.system if self.agent.anthropic else None}
        if self.stream:
            ai["llm_first_token_duration"] = num(first_token)
        if self.consumer:
            ai["consumer"] = self.consumer
        if rng.random() < 0.05:   # other plugins add their own keys to the same object
            ai["cache_status"] = "MISS"
        ai.update(_usage_fields(rng, model.shape, usage, self.legacy))
        return ai


# ---------------------------------------------------------------------------------------
# Extras: non-AI lines, unsessioned requests, bad lines

def _non_ai_line(rng: random.Random, start_ms: int) -> bytes:
    method, path, code, ua = rng.choice([
        ("GET", "/healthz", "200", "kube-probe/1.29"), ("GET", "/v1/models", "200", "OpenAI/JS 4.77.0"),
        ("GET", "/favicon.ico", "404", "Mozilla/5.0"), ("POST", "/api/login", "302", "Mozilla/5.0")])
    outer = _outer(rng, authority=rng.choice(_AUTHORITIES), path=path, request_id=_uuid(rng),
                   route="", start_ms=start_ms, duration=rng.randint(1, 9), service=1,
                   user_agent=ua, bytes_in=0, bytes_out=rng.randint(2, 900), method=method,
                   code=code)
    outer["upstream_cluster"] = "outbound|80||backend.default.svc.cluster.local"
    outer["upstream_host"] = "10.0.1.7:80"
    # Routes without the ai-statistics plugin log no ai_log at all.
    return envoy_line(outer, "-" if rng.random() < 0.75 else None)


def _one_shot(rng: random.Random, start_ms: int, session_id: str | None = None,
              bad_tokens: bool = False) -> tuple[bytes, Event | None]:
    """A single request outside any agent (a script, curl): OpenAI-shaped, sometimes
    with the plugin's empty config (no messages / question / answer at all)."""
    model = _MODELS[rng.choice(["gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06",
                                "deepseek-chat", "qwen-max"])]
    kind = rng.choice(["openclaw", "support"])
    prompt = rng.choice(_FIRST_PROMPTS[kind])
    messages = [{"content": "You are a helpful assistant.", "role": "system"},
                {"content": prompt, "role": "user"}]
    answer = rng.choice(_ANSWERS[kind])
    usage = _Usage(sum(_tokens(m["content"]) + 4 for m in messages), _tokens(answer))
    ai = {"api": "-", "chat_id": "chatcmpl-" + _alnum(rng, 29), "chat_round": 1,
          "llm_service_duration": rng.randint(300, 3000), "model": model.name,
          "response_type": "normal"}
    ai.update(_usage_fields(rng, model.shape, usage, legacy=False))
    full = rng.random() < 0.7
    if full:
        ai.update({"question": prompt, "answer": answer, "reasoning": None, "tool_calls": None})
    if session_id is not None:
        ai["session_id"] = session_id
    if bad_tokens:
        key = rng.choice(["input_token", "output_token"])
        ai[key] = rng.choice([-5, "abc", True, "NaN", -1])
    request_id = _uuid(rng)
    outer = _outer(rng, authority=rng.choice(_AUTHORITIES), path="/v1/chat/completions",
                   request_id=request_id, route=model.route, start_ms=start_ms,
                   duration=ai["llm_service_duration"] + 3, service=ai["llm_service_duration"],
                   user_agent=rng.choice(["curl/8.5.0", "python-requests/2.32.3"]),
                   bytes_in=200, bytes_out=600)
    line = envoy_line(outer, _ai_log_text(ai, go_json(messages) if full else None))
    if bad_tokens:
        return line, None
    return line, Event(request_id=request_id, session_id=None, model=model.name,
                       start_time=outer["start_time"], consumer=None,
                       cost_usd=cost_of_ai_log(ai), new_messages=len(messages) if full else 0,
                       **_event_tokens(model.shape, usage))


def _bad_line(rng: random.Random, kind: str, last: bytes, last_event: Event,
              start_ms: int) -> bytes:
    """A line the monitor must count as ``kind`` and skip. Lines derived from a real one
    get a fresh request_id, so wrongly accepting them changes the totals."""
    fresh = last.replace(last_event.request_id.encode(), _uuid(rng).encode())
    if kind == "bad_json":
        if rng.random() < 0.5:   # cut inside the ai_log string: nothing to salvage
            end = fresh.index(b'","authority":"')
            return fresh[:rng.randint(12, max(13, end - 1))] + b"\n"
        return b"upstream connect error or disconnect/reset before headers. reset reason: overflow\n"
    if kind == "bad_utf8":
        # Inside the ai_log: invalid bytes in a header (a User-Agent) leave the paid round
        # readable, so such a line is a round, not a bad line.
        return fresh.replace(b'"ai_log":"{', b'"ai_log":"{\xff\xfe\xc3(', 1)
    if kind == "not_object":
        return rng.choice([b"[]", b'["ai_log","-"]', b"42", b'"hello"', b"null", b"true"]) + b"\n"
    if kind == "bad_ai_log":
        text = rng.choice(['{"model":"gpt-4o","input_token":12,"sess', "not json at all",
                           "<html><body>502 Bad Gateway</body></html>"])
        outer = _outer(rng, authority=_AUTHORITIES[0], path="/v1/chat/completions",
                       request_id=_uuid(rng), route="openai", start_ms=start_ms, duration=5,
                       service=4, user_agent="OpenAI/JS 4.77.0", bytes_in=10, bytes_out=10)
        return envoy_line(outer, text)
    if kind == "bad_tokens":
        return _one_shot(rng, start_ms, last_event.session_id, bad_tokens=True)[0]
    return rng.choice([b"\n", b"   \n", b"\r\n"])   # blank


# ---------------------------------------------------------------------------------------
# The scheduler: sessions interleave; lines come out in completion order

def _every(i: int, n: int) -> bool:
    return n > 0 and i % n == 0


def iter_records(seed: int = 0, sessions: int | None = 50, max_requests: int = 40,
                 bad_every: int = 0, non_ai_every: int = 0, unsessioned_every: int = 0,
                 duplicate_every: int = 0, start: str = "2026-02-01T09:00:00Z",
                 content_scale: int = 1, quoted_ua_every: int = 0,
                 session_gap_s: float = 45.0,
                 coherent: bool = False) -> Iterator[tuple[bytes, Event | None, str]]:
    """Yield ``(line, event or None, kind)``; kind is ``ai``, ``duplicate``, ``non_ai`` or a
    bad kind. ``sessions`` None runs forever (stop consuming when you have enough).

    Envoy writes a line when the request completes but logs its start time, so lines
    are in completion order and start times jitter across concurrent sessions; within a
    session a request starts after the previous one ended, so its lines stay ordered."""
    rng, xrng = random.Random(seed), random.Random(f"extras-{seed}")
    max_requests = max(1, max_requests)
    scale = max(1, content_scale)
    heap: list[tuple[int, int, _Session, _Pending]] = []
    spawned, seq, i = 0, 0, 0
    next_spawn = _parse_time(start)
    recent: list[bytes] = []     # lines a duplicate may repeat
    bad_cycle = 0

    while True:
        # Start every session due before the earliest pending line can be written.
        while (sessions is None or spawned < sessions) and (not heap or next_spawn <= heap[0][0]):
            n = min(max_requests, 1 + int(rng.random() ** 1.3 * max_requests))
            session = _Session(rng, next_spawn, n, scale, coherent)
            pending = session.next_request()
            heapq.heappush(heap, (pending.end_ms, seq, session, pending))
            spawned, seq = spawned + 1, seq + 1
            next_spawn += int(rng.expovariate(1 / session_gap_s) * 1000) + 1
        if not heap:
            return
        end_ms, _, session, pending = heapq.heappop(heap)
        if session.remaining > 0:
            nxt = session.next_request()
            heapq.heappush(heap, (nxt.end_ms, seq, session, nxt))
            seq += 1

        i += 1
        line = pending.line
        if _every(i, quoted_ua_every):
            # TEXT mode does not escape: the line is invalid JSON, its ai_log intact.
            line = line.replace(b'"user_agent":"', b'"user_agent":"Mozilla/5.0 "evil" agent ', 1)
        else:
            recent = (recent + [line])[-32:]
        yield line, pending.event, "ai"

        t = end_ms + xrng.randint(0, 2000)
        if _every(i, unsessioned_every):
            extra, event = _one_shot(xrng, t)
            yield extra, event, "ai"
        if _every(i, non_ai_every):
            yield _non_ai_line(xrng, t), None, "non_ai"
        if _every(i, duplicate_every) and recent:
            yield xrng.choice(recent), None, "duplicate"
        if _every(i, bad_every):
            kind = BAD_KINDS[bad_cycle % len(BAD_KINDS)]
            bad_cycle += 1
            yield _bad_line(xrng, kind, pending.line, pending.event, t), None, kind


def generate(seed: int = 0, sessions: int = 50, max_requests: int = 40, bad_every: int = 0,
             non_ai_every: int = 0, unsessioned_every: int = 0, duplicate_every: int = 0,
             start: str = "2026-02-01T09:00:00Z", content_scale: int = 1,
             quoted_ua_every: int = 0, coherent: bool = False) -> Generated:
    """A whole log in memory with its ground truth (see ``iter_records``)."""
    out = Generated(lines=[], events=[])
    for line, event, kind in iter_records(seed, sessions, max_requests, bad_every,
                                          non_ai_every, unsessioned_every, duplicate_every,
                                          start, content_scale, quoted_ua_every,
                                          coherent=coherent):
        out.lines.append(line)
        if event is not None:
            out.events.append(event)
        elif kind == "non_ai":
            out.non_ai += 1
        elif kind in BAD_KINDS:
            out.bad_lines[kind] = out.bad_lines.get(kind, 0) + 1
    return out


def iter_lines(seed: int, target_bytes: int, **options: Any) -> Iterator[bytes]:
    """Stream lines until at least ``target_bytes`` were produced, in constant memory.
    ``options`` are those of ``iter_records`` (``sessions`` defaults to unlimited)."""
    options.setdefault("sessions", None)
    produced = 0
    for line, _, _ in iter_records(seed, **options):
        yield line
        produced += len(line)
        if produced >= target_bytes:
            return


def totals_by_session(events: Iterable[Event]) -> dict[str | None, dict]:
    """Per session id (None = unsessioned): token sums, rounds, cost of the priced rounds,
    unpriced rounds, models used, new messages; each request_id counted once."""
    totals: dict[str | None, dict] = {}
    seen: set[str] = set()
    for e in events:
        if e.request_id is not None:
            if e.request_id in seen:
                continue
            seen.add(e.request_id)
        t = totals.setdefault(e.session_id, {
            "input": 0, "output": 0, "reasoning": 0, "cached": 0, "cache_write": 0,
            "input_total": 0, "output_total": 0,
            "rounds": 0, "cost": 0.0, "unpriced_rounds": 0, "models": set(), "messages": 0})
        t["input"] += e.input_token
        t["output"] += e.output_token
        t["input_total"] += e.input_total
        t["output_total"] += e.output_total
        t["reasoning"] += e.reasoning_tokens
        t["cached"] += e.cached_tokens
        t["cache_write"] += e.cache_write_tokens
        t["rounds"] += 1
        t["messages"] += e.new_messages
        t["models"].add(e.model)
        if e.cost_usd is None:
            t["unpriced_rounds"] += 1
        else:
            t["cost"] += e.cost_usd
    return totals
