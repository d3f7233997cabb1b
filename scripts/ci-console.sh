#!/usr/bin/env bash
# ci-console.sh (make test-console): the operator console in a real
# Chromium (Debian's package, driven by playwright-core) against a real
# origin (embedded NATS, SQLite in a temporary data dir), the mock upstream
# and one edge on free loopback ports. Installs chromium when missing and
# root (as CI is), test/console's locked dependencies with `npm ci`, and
# runs `node --test` there. Screenshots of each page go to
# $CONSOLE_SCREENSHOTS (default test/console/screenshots, not committed).
# Every process it starts is stopped on exit; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/bin}
GO=${GO:-go}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "ci-console: $tool is required (Node.js >= 20)" >&2; exit 1; }
done
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ci-console: installing Debian's chromium package (apt-get)" >&2
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "ci-console: $CHROMIUM not found: install Debian's chromium package (apt-get install chromium)" >&2
    exit 1
  fi
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/keymesh-console-XXXXXX")
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    for log in "$TMP"/*.log; do
      [ -f "$log" ] || continue
      echo "--- $(basename "$log") (last lines)" >&2
      tail -n 15 "$log" >&2
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT INT TERM

echo "ci-console: building $BIN/"
mkdir -p "$BIN"
timeout 600 "$GO" build -o "$BIN/" ./cmd/origin ./cmd/edge ./cmd/bench

wait_http() { # wait_http NAME URL: at most 15s
  for _ in $(seq 1 150); do
    if "$BIN/bench" probe "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "ci-console: $1 did not answer $2 within 15s" >&2
  return 1
}

mapfile -t ports < <("$BIN/bench" freeport -n 7)
ORIGIN=127.0.0.1:${ports[0]}
NATS=127.0.0.1:${ports[1]}
UPSTREAM=127.0.0.1:${ports[2]}
EDGE=127.0.0.1:${ports[3]}
EDGE_ADMIN=127.0.0.1:${ports[4]}
GOSSIP=127.0.0.1:${ports[5]}
OTHER_SITE_PORT=${ports[6]} # the "attacker" page of the CSRF case, on localhost

# A throwaway password for a throwaway origin.
export ORIGIN_ADMIN_PASSWORD="ci-console-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

"$BIN/origin" --data-dir "$TMP/origin" --listen "$ORIGIN" --nats-listen "$NATS" >"$TMP/origin.log" 2>&1 &
pids+=($!)
wait_http origin "http://$ORIGIN/health"

"$BIN/bench" upstream --listen "$UPSTREAM" >"$TMP/upstream.log" 2>&1 &
pids+=($!)
wait_http "mock upstream" "http://$UPSTREAM/health"

"$BIN/origin" nats-creds --role edge --id console-edge --data-dir "$TMP/origin" --out "$TMP/edge.creds" >/dev/null
"$BIN/edge" --listen "$EDGE" --admin-listen "$EDGE_ADMIN" --nats-url "nats://$NATS" --nats-creds "$TMP/edge.creds" \
  --origin-public-key "@$TMP/origin/signing.pub" --data-dir "$TMP/edge" --gossip-listen "$GOSSIP" >"$TMP/edge.log" 2>&1 &
pids+=($!)
wait_http edge "http://$EDGE/health"

echo "ci-console: installing test/console dependencies (npm ci)"
(cd test/console && timeout 300 npm ci --no-audit --no-fund --loglevel=error)

echo "ci-console: node --test, Chromium against the console at http://$ORIGIN/"
(cd test/console && KEYMESH_ORIGIN_URL="http://$ORIGIN" KEYMESH_EDGE_URL="http://$EDGE" \
  KEYMESH_UPSTREAM_URL="http://$UPSTREAM" KEYMESH_ADMIN_PASSWORD="$ORIGIN_ADMIN_PASSWORD" \
  KEYMESH_OTHER_SITE_PORT="$OTHER_SITE_PORT" CHROMIUM="$CHROMIUM" \
  CONSOLE_SCREENSHOTS="${CONSOLE_SCREENSHOTS:-$ROOT/test/console/screenshots}" \
  timeout 150 node --test --test-timeout=140000)
