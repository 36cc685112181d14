"""OpenTelemetry export: a stored round as an OTLP span, the durable outbox that sends them,
and its flags. Takes committed rounds; gives OTLP/HTTP requests."""
