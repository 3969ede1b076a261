#!/usr/bin/env bash
# Start the server as a user would (ICE_HOST_ADDRESSES=127.0.0.1 make run) and measure the bars
# against it from the same loopback-only namespace. Extra arguments go to bench/e2e_bars.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${IN_LOOPBACK_NS:-}" != 1 ]; then exec scripts/loopback_only.sh bash "$0" "$@"; fi
log=$(mktemp)
# Its own process group, so that stopping it reaches `serve run` under make.
ICE_HOST_ADDRESSES=127.0.0.1 setsid make run >"$log" 2>&1 &
server=$!
stop_server() {
  kill -TERM -- "-$server" 2>/dev/null || true  # background jobs ignore SIGINT
  for _ in $(seq 30); do kill -0 "$server" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$server" 2>/dev/null || true
  .venv/bin/ray stop --force >/dev/null 2>&1 || true
}
trap stop_server EXIT
for _ in $(seq 240); do
  curl -sf http://127.0.0.1:8010/health >/dev/null && break
  sleep 1
done
curl -sf http://127.0.0.1:8010/health >/dev/null || { tail -50 "$log"; exit 1; }
PYTHONPATH=. .venv/bin/python bench/e2e_bars.py "$@"
