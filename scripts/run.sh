#!/usr/bin/env bash
# Starts the whole keymesh stack on embedded defaults (used by `make run`):
# origin with embedded NATS and SQLite under $DATA, a mock OpenAI-compatible
# inference server, a demo deployment pointing at it, and one edge.
# Ctrl-C stops everything.
set -euo pipefail
DATA=${DATA:-./data}
BIN=${BIN:-./bin}
ORIGIN=127.0.0.1:7000
NATS=127.0.0.1:4222
UPSTREAM=127.0.0.1:8000
EDGE=127.0.0.1:8080
EDGE_ADMIN=127.0.0.1:9090
mkdir -p "$DATA/logs"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping keymesh..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit 0
}
trap cleanup INT TERM EXIT

wait_http() { # wait_http NAME URL LOGFILE
  for _ in $(seq 1 100); do
    if "$BIN/bench" probe "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not come up; its log ($3):" >&2
  tail -n 20 "$3" >&2
  exit 1
}

"$BIN/origin" --data-dir "$DATA/origin" --listen "$ORIGIN" --nats-listen "$NATS" >"$DATA/logs/origin.log" 2>&1 &
pids+=($!)
wait_http origin "http://$ORIGIN/health" "$DATA/logs/origin.log"

"$BIN/bench" upstream --listen "$UPSTREAM" >"$DATA/logs/upstream.log" 2>&1 &
pids+=($!)
wait_http "mock upstream" "http://$UPSTREAM/health" "$DATA/logs/upstream.log"

PASSWORD_FILE="$DATA/origin/admin-password"
"$BIN/bench" demo --origin "http://$ORIGIN" --password-file "$PASSWORD_FILE" \
  --deployment demo --upstream "http://$UPSTREAM"

# The origin's NATS requires credentials: the edge gets its own, naming it
# (kept across runs, like its data dir).
EDGE_CREDS="$DATA/edge.creds"
if [ ! -s "$EDGE_CREDS" ]; then
  rm -f "$EDGE_CREDS"
  "$BIN/origin" nats-creds --role edge --id local-edge --data-dir "$DATA/origin" --out "$EDGE_CREDS" >/dev/null
fi
"$BIN/edge" --listen "$EDGE" --admin-listen "$EDGE_ADMIN" --nats-url "nats://$NATS" --nats-creds "$EDGE_CREDS" \
  --origin-public-key "@$DATA/origin/signing.pub" --data-dir "$DATA/edge" >"$DATA/logs/edge.log" 2>&1 &
pids+=($!)
wait_http edge "http://$EDGE/health" "$DATA/logs/edge.log"

if [ -n "${ORIGIN_ADMIN_PASSWORD:-}" ]; then PW='$ORIGIN_ADMIN_PASSWORD'; else PW="\$(cat $PASSWORD_FILE)"; fi
cat <<MSG

keymesh is running:
  origin (admin API)   http://$ORIGIN      logs: $DATA/logs/origin.log
  edge (inference)     http://$EDGE      logs: $DATA/logs/edge.log
  mock inference       http://$UPSTREAM      deployment "demo" sends requests here

Next, in another terminal:

  # 1. log in as admin
  TOKEN=\$(curl -s http://$ORIGIN/v1/auth/login -d "{\"username\":\"admin\",\"password\":\"$PW\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')

  # 2. create a key linked to the demo deployment (the secret is shown only now)
  KEY=\$(curl -s http://$ORIGIN/v1/projects/default/keys -H "Authorization: Bearer \$TOKEN" -d '{"name":"my-first-key","deployments":["demo"]}' | sed -E 's/.*"key":"([^"]+)".*/\1/')

  # 3. call the model through the edge
  curl http://$EDGE/v1/chat/completions -H "Content-Type: application/json" -H "X-API-Key: \$KEY" -d '{"model": "mock-model", "messages": [{"role": "user", "content": "Hello!"}]}'

Ctrl-C stops everything.
MSG

wait -n "${pids[@]}" || true
echo "a keymesh process exited; see $DATA/logs" >&2
