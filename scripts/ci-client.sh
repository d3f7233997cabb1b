#!/usr/bin/env bash
# ci-client.sh (make test-client): the official `openai` npm client against a
# real keymesh edge. Builds bin/, starts an origin (embedded NATS, temporary
# data dir), the mock upstream and one edge on free loopback ports, creates a
# deployment and a key with the origin CLI, installs test/client's locked
# dependencies with `npm ci`, and runs `node --test` there. The test gets the
# origin's URL and the admin token too: its refusal cases create keys of
# their own (allow-lists, rate limits, caps) over the REST API. Every process
# it starts is stopped on exit; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/bin}
GO=${GO:-go}

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "ci-client: $tool is required (Node.js >= 20)" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/keymesh-client-XXXXXX")
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

echo "ci-client: building $BIN/"
mkdir -p "$BIN"
timeout 600 "$GO" build -o "$BIN/" ./cmd/origin ./cmd/edge ./cmd/bench

wait_http() { # wait_http NAME URL LOG: at most 15s
  for _ in $(seq 1 150); do
    if "$BIN/bench" probe "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "ci-client: $1 did not answer $2 within 15s" >&2
  return 1
}

mapfile -t ports < <("$BIN/bench" freeport -n 6)
ORIGIN=127.0.0.1:${ports[0]}
NATS=127.0.0.1:${ports[1]}
UPSTREAM=127.0.0.1:${ports[2]}
EDGE=127.0.0.1:${ports[3]}
EDGE_ADMIN=127.0.0.1:${ports[4]}
GOSSIP=127.0.0.1:${ports[5]}

# A throwaway password for a throwaway origin.
export ORIGIN_ADMIN_PASSWORD="ci-client-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

"$BIN/origin" --data-dir "$TMP/origin" --listen "$ORIGIN" --nats-listen "$NATS" >"$TMP/origin.log" 2>&1 &
pids+=($!)
wait_http origin "http://$ORIGIN/health" "$TMP/origin.log"

"$BIN/bench" upstream --listen "$UPSTREAM" --chunk-interval 5ms >"$TMP/upstream.log" 2>&1 &
pids+=($!)
wait_http "mock upstream" "http://$UPSTREAM/health" "$TMP/upstream.log"

export ORIGIN_SERVER="http://$ORIGIN" ORIGIN_TOKEN_FILE="$TMP/token"
ORIGIN_PASSWORD=$ORIGIN_ADMIN_PASSWORD timeout 30 "$BIN/origin" login >/dev/null
timeout 30 "$BIN/origin" deployments create client --upstream "http://$UPSTREAM" >/dev/null
KEY_JSON=$(timeout 30 "$BIN/origin" keys create client-test --deployments client --json)
KEYMESH_KEY=$(printf '%s' "$KEY_JSON" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).key))')
[ -n "$KEYMESH_KEY" ] || { echo "ci-client: creating the key returned no secret" >&2; exit 1; }

edge_args=(--listen "$EDGE" --admin-listen "$EDGE_ADMIN" --nats-url "nats://$NATS"
  --origin-public-key "@$TMP/origin/signing.pub" --data-dir "$TMP/edge")
edge_help=$("$BIN/edge" --help 2>&1 || true)
# The origin's NATS requires credentials (origin nats-creds).
if grep -q -- '--nats-creds' <<<"$edge_help"; then
  "$BIN/origin" nats-creds --role edge --id ci-client-edge --data-dir "$TMP/origin" --out "$TMP/edge.creds" >/dev/null
  edge_args+=(--nats-creds "$TMP/edge.creds")
fi
# Edges that gossip get their own port (gossip stays off without a key).
if grep -q -- '--gossip-listen' <<<"$edge_help"; then edge_args+=(--gossip-listen "$GOSSIP"); fi
"$BIN/edge" "${edge_args[@]}" >"$TMP/edge.log" 2>&1 &
pids+=($!)
wait_http edge "http://$EDGE/health" "$TMP/edge.log"

echo "ci-client: installing test/client dependencies (npm ci)"
(cd test/client && timeout 300 npm ci --no-audit --no-fund --loglevel=error)

echo "ci-client: node --test against the edge at http://$EDGE"
ORIGIN_JWT=$(cat "$ORIGIN_TOKEN_FILE")
(cd test/client && KEYMESH_EDGE_URL="http://$EDGE" KEYMESH_KEY="$KEYMESH_KEY" \
  KEYMESH_ORIGIN_URL="http://$ORIGIN" KEYMESH_ORIGIN_TOKEN="$ORIGIN_JWT" KEYMESH_DEPLOYMENT=client \
  timeout 120 node --test)
