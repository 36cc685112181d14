"""Budgets and alerts in ``main.py``: the flags, the commit hook, the live-view lines.

    config = finops.config_from_args(args)     # usage errors before the store is opened
    handle = monitor_hooks.attach(monitor, config)     # registers the hooks, starts the senders
    ...  monitor.poll_once(); handle.tick()      # tick: retries and clean-up, follow mode
    handle.live_text()                          # budget and burn lines for render_live
    handle.close()                              # at exit, inside ``with Monitor``

Once per commit (after session files and index are written, before ``.state.json``) the
hook works out which budget thresholds the new rounds crossed and, with
``--alert-on-anomaly``, which anomalies they revealed. Crash windows, and what was chosen:

- the fired keys and the alerts still to deliver (the *outbox*) are written to
  ``state.alerts`` and the state is saved by the hook itself **before** anything is
  sent: a crash after that cannot fire a threshold twice, and what was not yet
  delivered is sent by the next run (at least once; a crash between a delivery and the
  next save can repeat that one alert, and the JSON payload's ``id`` lets a receiver
  drop it);
- a crash after the session files are written but before the hook ran loses nothing
  either: the thresholds are levels (used >= limit x pct), not edges, so the next commit
  of that session or day fires them;
- losing ``.state.json`` and its backup loses that memory: a re-read then finds no new
  round and stays quiet, but the next new round of a session or day already over a
  threshold alerts it again.

Anomalies are alerted when a new round reveals them (one alert per anomaly, keyed by
the round it is anchored to), never for history already stored when the watch began.
"""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from ..argtypes import positive_float as _positive_float, positive_int as _positive_int
from ..config import ENV_BASE_URL, ENV_LINK_SECRET, resolve
from ..errors import EXIT_USAGE, MonitorError
from ..fmt import safe_text

__all__ = ["FinOps", "FinOpsConfig", "Idle", "add_arguments", "attach", "attach_for_pass",
           "config_from_args", "given"]

# The watch itself (budget_watch.py: anomaly statistics, burn rates, delivery) is
# imported when it is attached, and only where it has work: a cron pass without budget
# or alert flags does without (~10 ms of a cron pass's start-up).
ANOMALY_ALIASES = {"loop": "tool_loop", "context": "runaway_context", "cost": "cost_outlier",
                   "burst": "idle_burst"}


def __getattr__(name: str):
    if name == "FinOps":
        from .budget_watch import FinOps
        return FinOps
    if name in ("Budget", "FinOpsConfig"):
        from . import budgets
        return getattr(budgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# dest -> default of every flag add_arguments gave the parser (for given()).
_DEFAULTS: dict = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every budget and alert flag of ``main.py`` (``--tz`` and ``--base-url`` unless the
    parser has them already)."""
    g = parser.add_argument_group("budgets and alerts")
    g.add_argument("--budget", type=_positive_int, metavar="TOKENS",
                   help="token budget of the whole store: shown in the live view as "
                        "'Budget: used / N (x%%)', alerts at each threshold")
    g.add_argument("--session-budget-usd", type=_positive_float, metavar="USD",
                   help="per session: alerts as each session's cost passes the thresholds")
    g.add_argument("--session-budget-tokens", type=_positive_int, metavar="TOKENS",
                   help="per session, in tokens (prompt, cache, output and reasoning)")
    g.add_argument("--daily-budget-usd", type=_positive_float, metavar="USD",
                   help="per day of event time in --tz, all sessions together")
    g.add_argument("--daily-budget-tokens", type=_positive_int, metavar="TOKENS",
                   help="per day, in tokens")
    g.add_argument("--consumer-daily-budget-usd", action="append", metavar="[CONSUMER=]USD",
                   help="per consumer and day: USD for every consumer, CONSUMER=USD for one; "
                        "repeatable")
    g.add_argument("--consumer-daily-budget-tokens", action="append",
                   metavar="[CONSUMER=]TOKENS")
    g.add_argument("--budget-thresholds", default="50,80,100", metavar="PCT,PCT,...",
                   help="alert once at each of these percentages of a budget (default 50,80,100)")
    g.add_argument("--alert-webhook", action="append", metavar="URL",
                   help="send alerts here too (Slack, Discord, Telegram "
                        "telegram://TOKEN@CHAT_ID, or any URL for generic JSON; "
                        "prefix slack:, discord:, telegram:, json: to force the kind); repeatable")
    g.add_argument("--alert-on-anomaly", nargs="?", const="all", metavar="KINDS",
                   help="also alert on agent anomalies: all, or some of loop,context,cost,burst")
    g.add_argument("--alert-max-age", default="24h", metavar="DURATION",
                   help="only alert about data at most this old (event time; default 24h, 0 = "
                        "any age): a catch-up of old logs records its crossings quietly")
    g.add_argument("--alert-timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="per webhook request (default 5); 3 retries with backoff")
    _maybe_add(g, "--tz", metavar="ZONE",
               help="time zone of the daily budgets' days: UTC (default), an IANA name, +08:00")
    _maybe_add(g, "--base-url", metavar="URL",
               help=f"web UI address for session links in alerts (default ${ENV_BASE_URL}); "
                    f"links are signed when ${ENV_LINK_SECRET} is set")
    _DEFAULTS.update((action.dest, action.default) for action in g._group_actions)


def given(args: argparse.Namespace) -> bool:
    """Whether any budget or alert flag was given. Without one, a one-pass run has no
    flag to check and no watch to attach (Idle), and imports none of the watch's modules
    (budgets, alerts, their report windows): start-up every cron pass pays."""
    return any(getattr(args, dest, default) != default for dest, default in _DEFAULTS.items())


def _maybe_add(group, flag: str, **kwargs) -> None:
    try:
        group.add_argument(flag, **kwargs)
    except argparse.ArgumentError:   # the parser already has it: share it
        pass




def config_from_args(args: argparse.Namespace) -> "FinOpsConfig":
    """The flags checked and resolved; MonitorError (exit 2) naming the bad one."""
    from .alerts import parse_sink
    from .budgets import Budget, FinOpsConfig, parse_consumer_budget, parse_thresholds
    from ..reports.timerange import parse_tz

    budgets = []
    g = lambda name: getattr(args, name, None)  # noqa: E731
    for scope, unit, value in (("total", "tokens", g("budget")),
                               ("session", "usd", g("session_budget_usd")),
                               ("session", "tokens", g("session_budget_tokens")),
                               ("day", "usd", g("daily_budget_usd")),
                               ("day", "tokens", g("daily_budget_tokens"))):
        if value is not None:
            budgets.append(Budget(scope, unit, value))
    for unit, values in (("usd", g("consumer_daily_budget_usd")),
                         ("tokens", g("consumer_daily_budget_tokens"))):
        for text in values or []:
            try:
                budgets.append(parse_consumer_budget(text, unit))
            except ValueError:
                raise MonitorError(f"--consumer-daily-budget-{unit} {safe_text(text)!r}: use "
                                   "an amount, or CONSUMER=AMOUNT", EXIT_USAGE) from None
    try:
        thresholds = parse_thresholds(g("budget_thresholds") or "50,80,100")
    except ValueError as e:
        raise MonitorError(f"--budget-thresholds: {e}", EXIT_USAGE) from None
    sinks = []
    for text in g("alert_webhook") or []:
        try:
            sinks.append(parse_sink(text))
        except ValueError as e:
            raise MonitorError(f"--alert-webhook: {e}", EXIT_USAGE) from None
    kinds = frozenset()
    if g("alert_on_anomaly"):
        from . import anomalies
        known = {**ANOMALY_ALIASES, **{k: k for k in anomalies.KINDS}}
        names = [n.strip().lower() for n in g("alert_on_anomaly").split(",") if n.strip()]
        unknown = [n for n in names if n != "all" and n not in known]
        if unknown:
            raise MonitorError(f"--alert-on-anomaly: unknown kind {safe_text(unknown[0])!r} "
                               "(all, loop, context, cost, burst)", EXIT_USAGE)
        kinds = frozenset(anomalies.KINDS if "all" in names else (known[n] for n in names))
    base = resolve(g("base_url"), ENV_BASE_URL)
    return FinOpsConfig(budgets=budgets, thresholds=thresholds, tz=parse_tz(g("tz")),
                        sinks=sinks, anomaly_kinds=kinds,
                        max_age=_duration(g("alert_max_age") or "24h"),
                        timeout=g("alert_timeout") or 5.0,
                        base_url=str(base).rstrip("/") if base else None,
                        link_secret=resolve(None, ENV_LINK_SECRET))


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise MonitorError(f"--alert-max-age {safe_text(text)!r}: use 0, 90m, 24h or 7d",
                           EXIT_USAGE) from None


def attach(monitor, config: "FinOpsConfig | argparse.Namespace", err: TextIO | None = None,
           clock=time.time) -> "FinOps":
    """Register the hooks on ``monitor`` (an open :class:`Monitor`) and start the senders.
    Returns the handle whose ``close()`` must run before the monitor is closed."""
    if isinstance(config, argparse.Namespace):
        config = config_from_args(config)
    from .budget_watch import FinOps
    return FinOps(monitor, config, err or monitor.err, clock)


class Idle:
    """The handle of a one-pass run without budgets, webhooks or anomaly alerts: such a
    watch registers no hook, sends nothing and is not shown (that needs --follow), so
    there is nothing to import or start."""

    def close(self, wait: float | None = None) -> None:
        pass


def attach_for_pass(monitor, config: "FinOpsConfig | None", follow: bool) -> "FinOps | Idle":
    """:func:`attach`, or :class:`Idle` when the watch has no work in this run (None: no
    flag was given, see :func:`given`)."""
    if not follow and (config is None or not config.active):
        return Idle()
    return attach(monitor, config)
