#!/usr/bin/env python3
"""A user's script written ONLY from the original skill's documented session format
(its README / storage.md example), knowing nothing of this package: it must keep
working on our files. Do not import the package here, and do not teach this script our
additions (messages_refs, buckets, tokens, ...): that is the point.

    python3 tests/original_reader.py SESSIONS_DIR   -> JSON on stdout

Documented format: one ``<session_id>.json`` per session with ``session_id``,
``messages_count``, ``total_input_tokens``, ``total_output_tokens``,
``total_reasoning_tokens``, ``total_cached_tokens``, ``model`` and ``rounds``; each round
has ``round``, ``timestamp``, ``input_tokens``, ``output_tokens``, ``reasoning_tokens``,
``cached_tokens``, ``model``, ``has_tool_calls``, ``response_type``, ``messages``,
``question``, ``answer``, ``reasoning``, ``tool_calls``, ``input_token_details``,
``output_token_details``.
"""

import json
import os
import sys

ROUND_FIELDS = ("round", "timestamp", "input_tokens", "output_tokens", "reasoning_tokens",
                "cached_tokens", "model", "has_tool_calls", "response_type", "question",
                "answer", "reasoning", "tool_calls", "input_token_details",
                "output_token_details")
TOTALS = ("total_input_tokens", "total_output_tokens", "total_reasoning_tokens",
          "total_cached_tokens")


def main(directory):
    sessions = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json") or name.startswith("."):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            session = json.load(f)
        rounds = []
        for r in session["rounds"]:
            rounds.append({k: r[k] for k in ROUND_FIELDS})   # KeyError = a missing field
        sums = {
            "total_input_tokens": sum(r["input_tokens"] for r in session["rounds"]),
            "total_output_tokens": sum(r["output_tokens"] for r in session["rounds"]),
            "total_reasoning_tokens": sum(r["reasoning_tokens"] for r in session["rounds"]),
            "total_cached_tokens": sum(r["cached_tokens"] for r in session["rounds"]),
        }
        sessions[session["session_id"]] = {
            "messages_count": session["messages_count"],
            "model": session["model"],
            "totals": {k: session[k] for k in TOTALS},
            "sums_of_rounds": sums,
            "rounds": rounds,
        }
    json.dump(sessions, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
