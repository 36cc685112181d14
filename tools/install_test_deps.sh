#!/usr/bin/env bash
# Test-only Python packages, kept out of the interpreter the monitor runs on (the monitor
# is standard library only, and tests/run.py runs on the plain python3 too):
#   .venv-test/proto-site   opentelemetry-proto (+ protobuf), which tests/test_otlp.py puts
#                           on sys.path to decode what agent_session_monitor.otel.spans encodes
#   .venv-test/phoenix      a virtual environment with arize-phoenix, whose python
#                           tests/test_phoenix.py runs `phoenix serve` with
#   .venv-test/mcp          a virtual environment with the official MCP Python SDK, whose
#                           python tests/test_mcp.py runs as a client of scripts/mcp_server.py
# Phoenix pins many packages (sqlalchemy, grpcio, pandas...): a venv of its own keeps them
# away from the suite. Idempotent: a finished install is kept (a marker names the
# versions), so a second run takes a second. About 1 minute and 0.9 GB from PyPI.
#   usage: tools/install_test_deps.sh [--no-phoenix]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEST=${ASM_TEST_VENV:-.venv-test}
# Versions the tests passed with; bump them together with a green tests/test_phoenix.py.
PROTO_REQ=${ASM_PROTO_REQ:-"opentelemetry-proto==1.45.2"}
PHOENIX_REQ=${ASM_PHOENIX_REQ:-"arize-phoenix==20.26.1"}
MCP_REQ=${ASM_MCP_REQ:-"mcp==2.3.0"}
mkdir -p "$DEST"
LOG="$DEST/install.log"
: > "$LOG"

pip_quiet() {   # pip's output only when it fails (it is long, and says nothing useful)
  if ! "$@" >>"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "install_test_deps.sh: failed: $* (full output in $LOG)" >&2
    exit 1
  fi
}

pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
stamp="$pyver $PROTO_REQ"
if [ "$(cat "$DEST/proto-site.ok" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$DEST/proto-site" "$DEST/proto-site.ok"
  pip_quiet "$PY" -m pip install --disable-pip-version-check --no-warn-script-location \
    --target "$DEST/proto-site" "$PROTO_REQ"
  echo "$stamp" > "$DEST/proto-site.ok"
fi

venv_with() {   # venv_with NAME REQUIREMENT: .venv-test/NAME, a venv holding REQUIREMENT
  local stamp="$pyver $2"
  if [ "$(cat "$DEST/$1.ok" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "${DEST:?}/$1" "$DEST/$1.ok"
    pip_quiet "$PY" -m venv "$DEST/$1"
    pip_quiet "$DEST/$1/bin/python" -m pip install --disable-pip-version-check "$2"
    echo "$stamp" > "$DEST/$1.ok"
  fi
}

venv_with mcp "$MCP_REQ"
if [ "${1:-}" != "--no-phoenix" ]; then
  venv_with phoenix "$PHOENIX_REQ"
fi
echo "test dependencies in $DEST: $(du -sh "$DEST/." | cut -f1)"
