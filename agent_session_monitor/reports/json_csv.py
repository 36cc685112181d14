"""Machine output of the query CLI: JSON (one record per line for long lists) and CSV
safe to open in a spreadsheet. Each writer takes the output stream."""

from __future__ import annotations

import csv
import json
from typing import Iterable, TextIO


def write_json(out: TextIO, data: object, rows: bool = False) -> None:
    """Indented JSON; with ``rows``, lists of records print one record per line, which
    keeps a 100,000-session report readable, greppable and quick to write (the indenting
    encoder is pure Python, the compact one is C)."""
    if rows and isinstance(data, (list, dict)):
        out.write(_rows_json(data) + "\n")
    else:
        out.write(_json(data, indent=2) + "\n")


def _json(data: object, indent: int | None = None) -> str:
    # ensure_ascii: control characters and lone surrogates from logs leave as \u escapes.
    return json.dumps(data, indent=indent, ensure_ascii=True, allow_nan=False)


def _rows_json(data: list | dict) -> str:
    if isinstance(data, list):
        if not data:
            return "[]"
        return "[\n" + ",\n".join(f"  {_json(item)}" for item in data) + "\n]"
    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value_text = "[\n" + ",\n".join(f"    {_json(item)}" for item in value) + "\n  ]"
        else:
            value_text = _json(value)
        parts.append(f"  {_json(key)}: {value_text}")
    return "{\n" + ",\n".join(parts) + "\n}"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    """Spreadsheets run cells that start like a formula: ids and model names come from
    whoever sent the request, so such text is prefixed with a quote (OWASP CSV injection).
    Lists become ``a;b``."""
    if isinstance(value, (list, tuple)):
        value = ";".join(str(v) for v in value)
    if isinstance(value, float):
        # Plain decimals: spreadsheets misread 2.72e-05 and show float noise.
        return f"{value:.12f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(out: TextIO, fields: list[str], rows: Iterable[dict]) -> None:
    """A header line even when there are no rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_csv_cell(row.get(f)) for f in fields])
