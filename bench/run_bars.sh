#!/usr/bin/env bash
# Start the server as a user would (ICE_HOST_ADDRESSES=127.0.0.1 make run) and measure the bars
# against it from the same loopback-only namespace. Extra arguments go to bench/e2e_bars.py
# (run as `python -m bench.e2e_bars`: no PYTHONPATH needed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${IN_LOOPBACK_NS:-}" != 1 ]; then exec scripts/loopback_only.sh bash "$0" "$@"; fi
log=$(mktemp)
# Its own process group, so that stopping it reaches `serve run` under make.
ICE_HOST_ADDRESSES=127.0.0.1 setsid make run >"$log" 2>&1 &
server=$!
# Live processes of the server's session: make, `serve run` and the Ray instance it started (Ray's
# workers make process groups of their own but stay in the session). Only these are stopped: never
# `ray stop --force`, which would stop every Ray instance on the machine.
session_pids() { ps -eo pid=,sid=,stat= | awk -v s="$server" '$2 == s && $3 !~ /^Z/ {print $1}'; }
stop_server() {
  kill -TERM -- "-$server" 2>/dev/null || true  # background jobs ignore SIGINT
  for _ in $(seq 30); do [ -n "$(session_pids)" ] || break; sleep 1; done
  kill -KILL -- "-$server" 2>/dev/null || true
  session_pids | xargs -r kill -KILL 2>/dev/null || true
}
trap stop_server EXIT
for _ in $(seq 240); do
  curl -sf http://127.0.0.1:8010/health >/dev/null && break
  sleep 1
done
curl -sf http://127.0.0.1:8010/health >/dev/null || { tail -50 "$log"; exit 1; }
.venv/bin/python -m bench.e2e_bars "$@"
