"""FinOps insights as plain data, for the CLI, the export and the web UI alike.

- :func:`session_insights`: one session's anomalies and model-switch suggestions;
- :func:`overview_burn`: burn rates and today's projection for the overview;
- :func:`export_insights`: what the FinOps export adds per session, from the index only.

Everything returned is JSON-ready (dicts, lists, numbers, strings); renderers escape it.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo

from .anomalies import Settings, detect
from ..reports.burn import burn
from ..pricing.table import PriceTable
from .suggestions import CAVEAT, basis, index_suggestions, suggest

ANOMALIES_NOTE = ("anomalies (tool-call loops, runaway context, costly rounds, idle-then-burst) "
                  "need a session's rounds: cli.py show SESSION_ID or the session page lists them")


def session_insights(doc: dict, table: PriceTable, settings: Settings = Settings()) -> dict:
    """``{"anomalies": [...], "suggestions": [...], "suggestions_basis", "caveat"}``.

    Anomalies: ``kind``, ``badge``, ``round``, ``severity``, ``explanation``,
    ``first_round``, ``last_round``, ``cost_usd``, ``projected_usd``. Suggestions:
    ``model``, ``provider``, ``same_provider``, ``cost_usd``, ``actual_usd``,
    ``saving_usd``, ``saving_pct``, same provider first."""
    rounds = doc.get("rounds") or []
    return {"anomalies": [a.as_dict() for a in detect(doc, table, settings)],
            "suggestions": [s.as_dict() for s in suggest(rounds, table)],
            "suggestions_basis": basis(rounds),
            "caveat": CAVEAT}


def overview_burn(reader, now: datetime | None = None, tz: tzinfo = timezone.utc,
                  limit: int = 10) -> dict:
    """Burn rates for the overview (see burn.burn for the fields); index queries only."""
    return burn(reader.db, now=now, tz=tz, limit=limit, latest_if_idle=now is None)


def export_insights(report: dict, reader, table: PriceTable, by_model: list[dict] | None = None,
                    since: str | None = None, until: str | None = None) -> None:
    """Add to a FinOps report (in place): each session's ``cheaper_model`` (or None) and
    the notes saying what it rests on. One scan of the index, no session file read."""
    found = index_suggestions(reader.db, table, by_model, since=since, until=until)
    for record in report["sessions"]:
        record["cheaper_model"] = found.get(record["session_id"])
    report["cheaper_model_basis"] = (
        "each session's priced tokens at the base price of the cheapest model of its latest "
        "model's provider saving at least 10% (else of another provider); size tiers are per "
        "request and not applied to sums. " + CAVEAT)
    report["anomalies_note"] = ANOMALIES_NOTE
