"""The OTLP export's options: a flag, else the standard ``OTEL_*`` variable, else the default
(the same order as config.resolve). See outbox.py for what they drive."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..argtypes import (
    non_negative_float as _non_negative_float, positive_float as _positive_float,
    positive_int as _positive_int,
)
from ..errors import EXIT_USAGE, MonitorError

DEFAULT_SERVICE_NAME = "agent-session-monitor"
TRACES_PATH = "/v1/traces"


@dataclass
class ExportConfig:
    endpoint: str                              # the full traces URL
    headers: dict = field(default_factory=dict)
    resource: dict = field(default_factory=dict)
    timeout: float = 10.0
    gzip: bool = False
    content: bool = True                       # export content (when the store keeps it)
    trace_per_session: bool = False
    batch_spans: int = 512
    max_spans: int = 200_000
    max_bytes: int = 2**30                     # a content span can be 300 KB: bound bytes too
    flush_seconds: float = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "OpenTelemetry export",
        "Every stored round becomes one span, sent as OTLP/HTTP protobuf (GenAI and "
        "OpenInference attributes: Phoenix, Langfuse, Jaeger, Tempo, any OTel collector). "
        "Spans wait in OUTPUT_DIR/.otlp-outbox.sqlite while the endpoint is down; ingestion "
        "never waits for it.")
    g.add_argument("--otlp-endpoint", metavar="URL",
                   help="collector base URL, e.g. http://127.0.0.1:6006 (/v1/traces is added "
                        "unless the URL ends with it); default $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "
                        "(as is) or $OTEL_EXPORTER_OTLP_ENDPOINT; no export without one")
    g.add_argument("--otlp-header", action="append", metavar="KEY=VALUE", type=_header,
                   help="HTTP header for the backend's authentication; repeatable (added to "
                        "$OTEL_EXPORTER_OTLP_HEADERS, k=v,k2=v2)")
    g.add_argument("--otlp-service-name", metavar="NAME",
                   help=f"resource service.name (default $OTEL_SERVICE_NAME or "
                        f"{DEFAULT_SERVICE_NAME}); more resource attributes from "
                        "$OTEL_RESOURCE_ATTRIBUTES, e.g. openinference.project.name=agents")
    g.add_argument("--otlp-timeout", type=_positive_float, metavar="SECONDS",
                   help="per request (default $OTEL_EXPORTER_OTLP_TIMEOUT ms, or 10 s)")
    g.add_argument("--otlp-compression", choices=("gzip", "none"),
                   help="request body compression (default $OTEL_EXPORTER_OTLP_COMPRESSION "
                        "or none)")
    g.add_argument("--otlp-no-content", action="store_true",
                   help="send tokens, costs and ids only, even when the store keeps the "
                        "conversation (--no-content implies it)")
    g.add_argument("--otlp-trace-per", choices=("round", "session"), default="round",
                   help="one trace per round, grouped by session.id (default), or one "
                        "trace per session (grows without end: some backends cap trace size)")
    g.add_argument("--otlp-max-backlog", type=_positive_int, default=200_000, metavar="SPANS",
                   help="spans kept while the endpoint is down (also at most 1 GiB); the "
                        "oldest beyond are dropped and reported (default 200000)")
    g.add_argument("--otlp-flush-seconds", type=_non_negative_float, default=10.0,
                   metavar="SECONDS",
                   help="at exit, keep sending for up to this long; the rest is sent by the "
                        "next run (default 10)")


def config_from_args(args: argparse.Namespace, environ: dict | None = None) -> ExportConfig | None:
    """The export's configuration, or None when no endpoint is configured."""
    env = os.environ if environ is None else environ
    flag = getattr(args, "otlp_endpoint", None)
    if flag:
        endpoint = _traces_url(flag, "--otlp-endpoint")
    elif env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = _check_url(env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
                              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = _traces_url(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "OTEL_EXPORTER_OTLP_ENDPOINT")
    else:
        return None
    headers = {}
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        headers.update(_pairs(env.get(name, ""), name))
    for key, value in getattr(args, "otlp_header", None) or []:
        headers[key] = value
    extra = _pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES")
    service = (getattr(args, "otlp_service_name", None) or env.get("OTEL_SERVICE_NAME")
               or extra.get("service.name") or DEFAULT_SERVICE_NAME)
    timeout = getattr(args, "otlp_timeout", None)
    if timeout is None:
        timeout = _env_ms(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    compression = (getattr(args, "otlp_compression", None)
                   or env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                   or env.get("OTEL_EXPORTER_OTLP_COMPRESSION") or "none").strip().lower()
    if compression not in ("gzip", "none"):
        raise MonitorError(f"OTLP compression {compression!r} is not supported: use gzip or "
                           "none", EXIT_USAGE)
    from .spans import resource_attributes   # only when exporting: main.py starts faster

    return ExportConfig(
        endpoint=endpoint, headers=headers, resource=resource_attributes(service, extra),
        timeout=timeout or 10.0, gzip=compression == "gzip",
        content=not getattr(args, "otlp_no_content", False),
        trace_per_session=getattr(args, "otlp_trace_per", "round") == "session",
        max_spans=getattr(args, "otlp_max_backlog", None) or 200_000,
        flush_seconds=_or(getattr(args, "otlp_flush_seconds", None), 10.0))


def _or(value, default):
    return default if value is None else value


def _traces_url(base: str, source: str) -> str:
    url = _check_url(base, source).rstrip("/")
    return url if url.endswith(TRACES_PATH) else url + TRACES_PATH


def _check_url(url: str, source: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        raise MonitorError(f"{source}: {url!r} is not a URL ({e})", EXIT_USAGE) from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MonitorError(f"{source}: {url!r} is not an http:// or https:// URL (e.g. "
                           "http://127.0.0.1:4318)", EXIT_USAGE)
    return url


def _pairs(text: str, source: str) -> dict:
    """``k=v,k2=v2`` with percent-encoded values (the OTEL_* list format)."""
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MonitorError(f"{source}: {item.strip()!r} is not KEY=VALUE", EXIT_USAGE)
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _env_ms(env, *names: str) -> float | None:
    for name in names:
        if env.get(name):
            try:
                value = float(env[name]) / 1000.0
            except ValueError:
                raise MonitorError(f"{name}={env[name]!r} is not a number of milliseconds",
                                   EXIT_USAGE) from None
            if value > 0:
                return value
    return None


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("must be KEY=VALUE")
    return key.strip(), value.strip()



