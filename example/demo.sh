#!/usr/bin/env bash
# The whole tour on the bundled example logs (access.log, .1, .2.gz): parse them, list the
# sessions, show one, the statistics, an export, a link, and the web UI.
#
#   bash example/demo.sh                 # the UI stays up until Ctrl-C
#   DEMO_SERVE_SECONDS=3 bash example/demo.sh   # the UI stops by itself (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
store="$work/sessions"
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold= plain=; fi
say() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; }
run() { say "$*"; "$@"; }

run python3 main.py --log-path example/access.log --output-dir "$store"
run python3 scripts/cli.py --data-dir "$store" list
session=$(python3 scripts/cli.py --data-dir "$store" list --sort-by cost --limit 1 --json \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["session_id"])')
run python3 scripts/cli.py --data-dir "$store" show "$session" --max-chars 120
run python3 scripts/cli.py --data-dir "$store" stats-model
run python3 scripts/cli.py --data-dir "$store" stats-date --days 3 --end 2026-02-02 --tz Asia/Shanghai
run python3 scripts/cli.py --data-dir "$store" stats-consumer
run python3 scripts/cli.py --data-dir "$store" export "$work/report.json"
run python3 scripts/cli.py --data-dir "$store" export "$work/report.csv"
head -3 "$work/report.csv"
port=${DEMO_PORT:-8888}
say python3 scripts/webserver.py --data-dir "$store" --port "$port"
python3 scripts/webserver.py --data-dir "$store" --port "$port" --quiet > "$work/server.out" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
base=$(python3 - "$work/server.out" <<'PY'
import re, sys, time, urllib.request
for _ in range(100):
    m = re.search(r"http://[^/\s]+", open(sys.argv[1]).read())
    if m:
        try:
            urllib.request.urlopen(m.group() + "/healthz", timeout=2).read()
            print(m.group())
            break
        except OSError:
            pass
    time.sleep(0.1)
else:
    sys.exit("the web UI did not answer")
PY
)
echo "UI is up: $base/"
run python3 scripts/cli.py --data-dir "$store" url "$session" --base-url "$base"
if [ -n "${DEMO_SERVE_SECONDS:-}" ]; then
  sleep "$DEMO_SERVE_SECONDS"
else
  echo "Open the URL above; Ctrl-C stops the server."
  wait "$server"
fi
