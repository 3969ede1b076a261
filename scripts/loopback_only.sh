#!/usr/bin/env bash
# Run a command in a loopback-only network namespace, so tests can reach nothing but 127.0.0.1.
# Needs root (or user namespaces); without them it runs the command as is, with ICE still
# restricted to 127.0.0.1 by ICE_HOST_ADDRESSES.
set -euo pipefail
export ICE_HOST_ADDRESSES=127.0.0.1
if [ "${IN_LOOPBACK_NS:-}" != 1 ] && unshare -n true 2>/dev/null; then
  exec unshare -n env IN_LOOPBACK_NS=1 bash -c 'ip link set lo up && exec "$@"' bash "$@"
fi
[ "${IN_LOOPBACK_NS:-}" = 1 ] || echo "warning: no network namespace available; running on the host network" >&2
exec "$@"
