#!/usr/bin/env bash
# netns-test.sh (make test-netns, CI): gossip over a real network. Two edges
# run in separate Linux network namespaces, each joined by a veth pair to a
# bridge in the root namespace, where the origin (embedded NATS) and the mock
# upstream listen. Edge A is partitioned from everything with
# `ip link set <veth> down` until both edges have declared each other dead; a
# key is unlinked meanwhile (edge B refuses it at once); then the link comes
# back up. Edge A must rejoin the gossip ring, apply the unlink and refuse the
# key — and never serve it again afterwards.
#
# Needs root (installs iproute2 with apt-get when `ip` is missing). Every
# wait is bounded; the namespaces, links, firewall rule (if one was needed)
# and processes it created are removed on exit, failure or not.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/bin}
GO=${GO:-go}

say() { echo "netns-test: $*"; }
die() { echo "netns-test: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces)"
if ! command -v ip >/dev/null; then
  command -v apt-get >/dev/null || die "ip (iproute2) is required"
  say "installing iproute2"
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq iproute2 >/dev/null
fi

# Names unique to this run (interface names are at most 15 bytes).
RUN=$(( $$ % 100000 ))
NS_A=kmnsA$RUN NS_B=kmnsB$RUN
BR=kmbr$RUN
VA=kmva$RUN VA_IN=kmpa$RUN
VB=kmvb$RUN VB_IN=kmpb$RUN
NET=${KEYMESH_NETNS_NET:-10.231.213}
HOST=$NET.1 IP_A=$NET.11 IP_B=$NET.12
if ip -4 -o addr show | grep -q " $NET\."; then
  die "$NET.0/24 is already in use here; set KEYMESH_NETNS_NET to a free /24 prefix (e.g. 10.99.7)"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/keymesh-netns-XXXXXX")
pids=()
fw_rule=()
cleanup() {
  local rc=$?
  trap - EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for ns in "$NS_A" "$NS_B"; do
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  for link in "$VA" "$VB" "$BR"; do ip link del "$link" 2>/dev/null || true; done
  if [ ${#fw_rule[@]} -gt 0 ]; then iptables -D "${fw_rule[@]}" 2>/dev/null || true; fi
  if [ "$rc" != 0 ]; then
    for log in "$TMP"/*.log; do
      [ -f "$log" ] || continue
      echo "--- $(basename "$log") (last lines)" >&2
      tail -n 25 "$log" >&2
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "building $BIN/"
mkdir -p "$BIN"
timeout 600 "$GO" build -o "$BIN/" ./cmd/origin ./cmd/edge ./cmd/bench

# ---- network: bridge in the root namespace, one veth pair per edge ----
say "network: bridge $BR ($HOST), $NS_A ($IP_A), $NS_B ($IP_B)"
ip link add "$BR" type bridge
ip addr add "$HOST/24" dev "$BR"
ip link set "$BR" up
for x in A B; do
  ns=NS_$x veth=V$x inner=V${x}_IN addr=IP_$x
  ip netns add "${!ns}"
  ip link add "${!veth}" type veth peer name "${!inner}"
  ip link set "${!inner}" netns "${!ns}"
  ip link set "${!veth}" master "$BR" up
  ip -n "${!ns}" addr add "${!addr}/24" dev "${!inner}"
  ip -n "${!ns}" link set "${!inner}" up
  ip -n "${!ns}" link set lo up
done
# Bridged traffic goes through iptables' FORWARD chain when br_netfilter is
# loaded; a DROP policy there (Docker sets one) would cut A from B.
if command -v iptables >/dev/null && iptables -S FORWARD 2>/dev/null | grep -q -- '-P FORWARD DROP'; then
  fw_rule=(FORWARD -i "$BR" -o "$BR" -j ACCEPT)
  iptables -I "${fw_rule[@]}"
fi

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# wait_until DESC SECONDS CMD...: poll CMD every 0.1s, at most SECONDS.
wait_until() {
  local desc=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$desc: not within ${secs}s"
}

mapfile -t ports < <("$BIN/bench" freeport -n 3)
ORIGIN=127.0.0.1:${ports[0]}
NATS=$HOST:${ports[1]}
UPSTREAM=$HOST:${ports[2]}

# A throwaway password for a throwaway origin.
export ORIGIN_ADMIN_PASSWORD="netns-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
"$BIN/origin" --data-dir "$TMP/origin" --listen "$ORIGIN" --nats-listen "$NATS" >"$TMP/origin.log" 2>&1 &
pids+=($!)
wait_until "origin /health" 15 "$BIN/bench" probe "http://$ORIGIN/health"
"$BIN/bench" upstream --listen "$UPSTREAM" >"$TMP/upstream.log" 2>&1 &
pids+=($!)
wait_until "mock upstream /health" 15 "$BIN/bench" probe "http://$UPSTREAM/health"

export ORIGIN_SERVER="http://$ORIGIN" ORIGIN_TOKEN_FILE="$TMP/token"
ORIGIN_PASSWORD=$ORIGIN_ADMIN_PASSWORD timeout 30 "$BIN/origin" login >/dev/null
timeout 30 "$BIN/origin" deployments create netns --upstream "http://$UPSTREAM" >/dev/null
KEY_JSON=$(timeout 30 "$BIN/origin" keys create netns-test --deployments netns --json)
json_field() { grep -o "\"$1\": *\"[^\"]*\"" | head -1 | sed 's/.*"\([^"]*\)"$/\1/'; }
KM_KEY=$(json_field key <<<"$KEY_JSON")
KEY_ID=$(json_field id <<<"$KEY_JSON")
[ -n "$KM_KEY" ] && [ -n "$KEY_ID" ] || die "creating the key returned no secret or id"
export KM_KEY

head -c 32 /dev/urandom | base64 >"$TMP/gossip.key"
start_edge() { # start_edge NAME NS IP PEER_IP
  # The origin's NATS requires credentials: one per edge, naming it.
  "$BIN/origin" nats-creds --role edge --id "netns-edge-$1" --data-dir "$TMP/origin" --out "$TMP/edge-$1.creds" >/dev/null
  in_ns "$2" "$BIN/edge" --listen 0.0.0.0:8080 --admin-listen 127.0.0.1:9090 --nats-url "nats://$NATS" \
    --nats-creds "$TMP/edge-$1.creds" \
    --origin-public-key "@$TMP/origin/signing.pub" --data-dir "$TMP/edge-$1" --site netns \
    --gossip-listen "$3:7946" --join "$4:7946" --gossip-key "@$TMP/gossip.key" --gossip-profile local \
    --node-name "edge-$1" >"$TMP/edge-$1.log" 2>&1 &
  pids+=($!)
}
start_edge a "$NS_A" "$IP_A" "$IP_B"
start_edge b "$NS_B" "$IP_B" "$IP_A"
for ns in "$NS_A" "$NS_B"; do
  wait_until "edge in $ns /health" 20 in_ns "$ns" "$BIN/bench" probe http://127.0.0.1:8080/health
done

status() { in_ns "$1" "$BIN/bench" probe http://127.0.0.1:9090/status --body --timeout 2s 2>/dev/null || true; }
applied() { status "$1" | grep -o '"applied_revision":[0-9]*' | head -1 | cut -d: -f2; }
sees() { status "$1" | grep -q "\"name\":\"$2\""; }          # $1 lists peer $2
blind() { ! sees "$1" "$2"; }
key_status() {
  in_ns "$1" "$BIN/bench" probe http://127.0.0.1:8080/v1/models --key-env KM_KEY --print-status --timeout 3s 2>/dev/null || true
}
answers() { [ "$(key_status "$1")" = "$2" ]; } # answers NS STATUS
caught_up() { local a; a=$(applied "$1"); [ -n "$a" ] && [ "$a" -ge "$2" ]; }

wait_until "edge-a and edge-b gossip" 30 sees "$NS_A" edge-b
wait_until "edge-b sees edge-a" 30 sees "$NS_B" edge-a
for ns in "$NS_A" "$NS_B"; do
  wait_until "the linked key accepted in $ns" 15 answers "$ns" 200
done
say "both edges accept the key and gossip with each other"

say "partition: ip link set $VA down"
ip link set "$VA" down
wait_until "edge-b declares edge-a dead" 30 blind "$NS_B" edge-a
wait_until "edge-a declares edge-b dead" 30 blind "$NS_A" edge-b

UNLINK=$(timeout 30 "$BIN/origin" unlink netns "$KEY_ID")
REV=$(sed -n 's/.*(revision \([0-9]*\)).*/\1/p' <<<"$UNLINK")
[ -n "$REV" ] || die "unlink printed no revision: $UNLINK"
say "unlinked the key during the partition (revision $REV)"
wait_until "edge-b refuses the unlinked key" 10 answers "$NS_B" 401
before=$(applied "$NS_A")
[ -n "$before" ] && [ "$before" -lt "$REV" ] || die "the partitioned edge applied ${before:-?} >= $REV: it was not cut off"
# Outlast memberlist's own gossip to dead nodes (1s with --gossip-profile
# local), so that only the rejoin loop can heal the ring.
sleep 3

say "heal: ip link set $VA up"
ip link set "$VA" up
wait_until "edge-a rejoins edge-b" 30 sees "$NS_A" edge-b
wait_until "edge-b sees edge-a again" 30 sees "$NS_B" edge-a
wait_until "edge-a applies revision $REV" 30 caught_up "$NS_A" "$REV"
rejoins() { status "$1" | grep -o '"rejoins":[0-9]*' | cut -d: -f2; }
ra=$(rejoins "$NS_A") rb=$(rejoins "$NS_B")
[ $(( ${ra:-0} + ${rb:-0} )) -gt 0 ] || die "the ring healed without a rejoin (rejoins: edge-a ${ra:-?}, edge-b ${rb:-?})"
say "ring healed by rejoining (rejoins: edge-a $ra, edge-b $rb); edge-a applied revision $(applied "$NS_A")"

# From now on edge-a must refuse the key, every time.
for i in $(seq 1 50); do
  got=$(key_status "$NS_A")
  [ "$got" = 401 ] || die "after rejoining, edge-a answered ${got:-nothing} (request $i) for a key unlinked during the partition"
  sleep 0.1
done
answers "$NS_B" 401 || die "edge-b no longer refuses the key"
say "PASS: after rejoining, edge-a refused the revoked key on all 50 requests"
