#!/usr/bin/env bash
# tf-e2e (make tf-e2e): the terraform modules applied for real, over SSH, to
# a throwaway sshd on 127.0.0.1, with process_manager = "none".
#
#   site           modules/site installs one edge in front of a local origin
#                  (embedded NATS) and mock upstream: /health and a keyed
#                  request through it; a gossip key rotation step re-applied
#                  (a restart); the cloud-init rendering holds the files that
#                  were installed; a second plan is empty; destroy leaves no
#                  process and no directory.
#   control-plane  modules/control-plane installs two regions of three NATS
#                  servers joined by gateways (JetStream, stream replicas 3)
#                  and two origin replicas in eu on a throwaway PostgreSQL
#                  sharing keys from `origin keygen`; modules/site puts an
#                  edge in us: a token from one replica works on the other, a
#                  key created in eu is answered by the us edge across the
#                  gateway; destroy leaves nothing.
#
# NATS authentication (when $BIN/origin has `nats-creds`): each edge gets
# only its own credential from `origin nats-creds`, the control plane's NATS
# trusts `origin nats-config`; an attacker probe (deploy/terraform/test/
# natsprobe) checks that NATS refuses a client without credentials and an
# edge's credential publishing on keymesh.events.>.
#
# In both, no secret given to terraform (gossip keys, edge secret, admin
# password, PostgreSQL URL, origin keys) may appear in terraform's output or
# its state. TF_E2E_PHASES picks phases (default "site control-plane").
#
# Needs: terraform ($TERRAFORM), $BIN/origin and $BIN/bench, $DIST/linux_<arch>/
# {edge,origin,nats-server} (make dist-local), node (HTTP and JSON), sshd and
# ssh-keygen (Debian's openssh-server, installed with apt-get when root and
# missing), and for control-plane PostgreSQL's initdb (scripts/pgtest.sh).
# Every process started here is stopped on exit; every wait is bounded.
# KEEP=1 keeps the temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
abs() { case "$1" in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
TERRAFORM=$(abs "${TERRAFORM:-bin/tools/terraform}")
BIN=$(abs "${BIN:-bin}")
DIST=$(abs "${DIST:-dist}")
GO=${GO:-go}
ARCH=$("$GO" env GOARCH)
PHASES=${TF_E2E_PHASES:-site control-plane}
TF_TIMEOUT=${TF_TIMEOUT:-300}

log() { echo "tf-e2e: $*"; }
fail() { echo "tf-e2e: FAIL: $*" >&2; exit 1; }

for f in "$TERRAFORM" "$BIN/origin" "$BIN/bench" "$DIST/linux_$ARCH/edge" "$DIST/linux_$ARCH/origin" "$DIST/linux_$ARCH/nats-server"; do
  [ -x "$f" ] || fail "$f missing (make tf-tools dist-local; go build -o bin/ ./cmd/origin ./cmd/bench)"
done
command -v node >/dev/null || fail "node is needed (HTTP requests and JSON)"
# NATS auth is tested when the origin issues credentials (origin nats-creds).
NATS_AUTH=false
if "$BIN/origin" nats-creds --help >/dev/null 2>&1; then NATS_AUTH=true; fi

# ---- openssh-server: Debian's, installed without starting a system sshd ------
SSHD=/usr/sbin/sshd
if [ ! -x "$SSHD" ] || ! command -v ssh-keygen >/dev/null || ! command -v scp >/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || fail "sshd, ssh-keygen and scp are needed (apt-get install openssh-server)"
  log "installing openssh-server (apt-get); its system service is not started"
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
  fi
  rc=0
  (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends openssh-server) >/dev/null || rc=$?
  [ "$made_policy" = 0 ] || rm -f "$policy"
  [ "$rc" = 0 ] || fail "apt-get install openssh-server failed ($rc)"
  # On a machine booted with systemd, keep the unit from starting at boot.
  if [ -d /run/systemd/system ]; then systemctl disable --quiet ssh.service ssh.socket 2>/dev/null || true; fi
  [ -x "$SSHD" ] || fail "openssh-server installed, but no $SSHD"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keymesh-tf-e2e.XXXXXX")
chmod 0755 "$WORK"
mkdir -p "$WORK/logs"
PIDS=()
TF_ROOTS=() # applied roots, destroyed on a failed exit
PGDATA=""

# processes_in DIR: pids of processes whose command line mentions DIR.
processes_in() {
  local p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" != $$ ] || continue
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$1"; then echo "${p#/proc/}"; fi
  done
}

stop_pids() { # stop_pids PID...: SIGTERM, at most 5s, then SIGKILL
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for dir in "${TF_ROOTS[@]}"; do
    log "cleanup: terraform destroy in $dir"
    timeout "$TF_TIMEOUT" "$TERRAFORM" -chdir="$dir" destroy -auto-approve -input=false -no-color >"$dir/destroy-cleanup.log" 2>&1 ||
      tail -n 20 "$dir/destroy-cleanup.log" >&2
  done
  # Whatever a failed apply or destroy left under the fake hosts' root.
  mapfile -t left < <(processes_in "$WORK/host/")
  [ "${#left[@]}" = 0 ] || stop_pids "${left[@]}"
  [ "${#PIDS[@]}" = 0 ] || stop_pids "${PIDS[@]}"
  if [ -n "$PGDATA" ]; then pg_as_owner pg_ctl -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null 2>&1; fi
  if [ "$rc" != 0 ]; then
    for f in "$WORK"/logs/*.log $(find "$WORK/host" -name '*.log' 2>/dev/null); do
      [ -f "$f" ] && { echo "---- $f (last 25 lines)" >&2; tail -n 25 "$f" >&2; }
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  if [ "$rc" = 0 ]; then log "PASS ($PHASES)"; else echo "tf-e2e: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ------------------------------------------------------------------
"$GO" build -o "$WORK/natsprobe" ./deploy/terraform/test/natsprobe || fail "go build natsprobe"

# nats_attacks NAME URL CREDS: NATS at URL refuses a client without
# credentials, and CREDS (an edge's) publishing a forged event.
nats_attacks() {
  timeout 30 "$WORK/natsprobe" no-creds "$2" >"$WORK/logs/$1-probe.log" 2>&1 || { cat "$WORK/logs/$1-probe.log" >&2; fail "$1: NATS at $2 let a client in without credentials"; }
  timeout 30 "$WORK/natsprobe" publish "$2" "$3" keymesh.events.forged >>"$WORK/logs/$1-probe.log" 2>&1 || { cat "$WORK/logs/$1-probe.log" >&2; fail "$1: an edge's credential published on keymesh.events.forged"; }
  log "$1: NATS refused a client without credentials and an edge's credential publishing on keymesh.events.>"
}
# creds_seed FILE: the secret line of a .creds file, to search for.
creds_seed() { grep -A1 -- '-----BEGIN USER NKEY SEED-----' "$1" | sed -n 2p; }

mapfile -t PORTS < <("$BIN/bench" freeport -n 40)
[ "${#PORTS[@]}" = 40 ] || fail "bench freeport gave ${#PORTS[@]} ports"
next_port() { NEXT_PORT=${PORTS[0]}; PORTS=("${PORTS[@]:1}"); }

wait_http() { # wait_http SECONDS URL: until URL answers 2xx
  local deadline=$((SECONDS + $1))
  until "$BIN/bench" probe "$2" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$2 did not answer within $1s"
    sleep 0.1
  done
}

wait_tcp() { # wait_tcp SECONDS PORT: until 127.0.0.1:PORT accepts
  local deadline=$((SECONDS + $1))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "nothing listens on 127.0.0.1:$2 after $1s"
    sleep 0.1
  done
}

port_closed() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http METHOD URL OUT [BODY] [HEADER:VALUE...]: prints the status, body to OUT.
cat >"$WORK/http.js" <<'JS'
const [method, url, out, body, ...headers] = process.argv.slice(2);
const h = {};
for (const kv of headers) { const i = kv.indexOf(':'); h[kv.slice(0, i)] = kv.slice(i + 1); }
if (body) h['Content-Type'] = 'application/json';
fetch(url, { method, headers: h, body: body || undefined, signal: AbortSignal.timeout(10000) })
  .then(async (r) => { require('fs').writeFileSync(out, await r.text()); console.log(r.status); })
  .catch((e) => { require('fs').writeFileSync(out, String(e)); console.log(0); });
JS
http() { node "$WORK/http.js" "$@"; }
# json FILE EXPR: prints EXPR evaluated on the JSON in FILE (as j).
json() { node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); const v=eval(process.argv[2]); console.log(typeof v==="string"?v:JSON.stringify(v))' "$1" "$2"; }
# json_raw FILE EXPR: the string EXPR evaluates to, byte for byte.
json_raw() { node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); process.stdout.write(eval(process.argv[2]))' "$1" "$2"; }

rand_b64() { head -c "$1" /dev/urandom | base64 -w0; }

# tf ROOT ARGS...: terraform in ROOT, bounded, offline, logs by the caller.
tf() {
  local dir=$1; shift
  timeout "$TF_TIMEOUT" "$TERRAFORM" -chdir="$dir" "$@" -no-color
}
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
# An empty provider mirror: a configuration needing a plugin fails at init.
mkdir -p "$WORK/mirror"
printf 'provider_installation {\n  filesystem_mirror {\n    path    = "%s"\n    include = ["*/*/*"]\n  }\n}\n' "$WORK/mirror" >"$WORK/terraformrc"
export TF_CLI_CONFIG_FILE=$WORK/terraformrc

# modpath ROOT MODULE: the module's source address as seen from ROOT. It must
# be relative: terraform takes an absolute path for a package of its own,
# from which the modules' "../service" would escape.
modpath() { realpath --relative-to="$1" "$ROOT/deploy/terraform/modules/$2"; }

# tf_up ROOT NAME: init and apply ROOT, log in logs/NAME-*.log.
tf_up() {
  tf "$1" init -input=false >"$WORK/logs/$2-init.log" 2>&1 || { cat "$WORK/logs/$2-init.log" >&2; fail "$2: terraform init"; }
  [ ! -e "$1/.terraform.lock.hcl" ] || fail "$2: init locked a provider plugin; only the builtin provider is allowed"
  TF_ROOTS+=("$1")
  local t0=$SECONDS
  tf "$1" apply -auto-approve -input=false >"$WORK/logs/$2-apply.log" 2>&1 || { tail -n 60 "$WORK/logs/$2-apply.log" >&2; fail "$2: terraform apply"; }
  log "$2: applied in $((SECONDS - t0))s, $(grep -c 'Creation complete' "$WORK/logs/$2-apply.log") resources created"
}

# tf_down ROOT NAME: destroy ROOT; the state must be empty after.
tf_down() {
  local t0=$SECONDS
  tf "$1" destroy -auto-approve -input=false >"$WORK/logs/$2-destroy.log" 2>&1 || { tail -n 60 "$WORK/logs/$2-destroy.log" >&2; fail "$2: terraform destroy"; }
  local i
  for i in "${!TF_ROOTS[@]}"; do [ "${TF_ROOTS[$i]}" != "$1" ] || unset 'TF_ROOTS[i]'; done
  [ -z "$(tf "$1" state list)" ] || fail "$2: state not empty after destroy"
  log "$2: destroyed in $((SECONDS - t0))s"
}

# tf_plan_empty ROOT NAME: a plan right after apply has nothing to do.
tf_plan_empty() {
  local rc=0
  tf "$1" plan -detailed-exitcode -input=false >"$WORK/logs/$2-plan.log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || { tail -n 40 "$WORK/logs/$2-plan.log" >&2; fail "$2: a second plan is not empty (exit $rc)"; }
}

# no_secrets NAME ROOT SECRET...: none of the secrets is in terraform's
# output (every log of NAME) nor in ROOT's state.
no_secrets() {
  local name=$1 dir=$2 s f; shift 2
  for s in "$@"; do
    [ "${#s}" -ge 8 ] || fail "no_secrets: secret too short to search for"
    for f in "$WORK/logs/$name"-*.log "$dir/terraform.tfstate"; do
      [ -f "$f" ] || continue
      if grep -qF -- "$s" "$f"; then fail "$name: a secret given to terraform appears in $(basename "$f")"; fi
    done
  done
  log "$name: none of $# secrets in terraform's output or state"
}

# gone NAME DIR...: no process runs from the directories, and they are
# removed (a DIR ending in / only has no process running from it).
gone() {
  local name=$1 d; shift
  for d in "$@"; do
    local deadline=$((SECONDS + 10))
    while [ -n "$(processes_in "$d")" ]; do
      [ "$SECONDS" -lt "$deadline" ] || fail "$name: processes still run from $d: $(processes_in "$d" | tr '\n' ' ')"
      sleep 0.1
    done
    [ "${d%/}" != "$d" ] || [ ! -e "$d" ] || fail "$name: $d left after destroy"
  done
}

# ---- a throwaway sshd on 127.0.0.1 ---------------------------------------------
next_port; SSH_PORT=$NEXT_PORT
USER_NAME=$(id -un)
mkdir -p "$WORK/ssh"
ssh-keygen -q -t ed25519 -N '' -C keymesh-tf-e2e-host -f "$WORK/ssh/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C keymesh-tf-e2e-user -f "$WORK/ssh/user_ed25519"
cp "$WORK/ssh/user_ed25519.pub" "$WORK/ssh/authorized_keys"
chmod 0600 "$WORK/ssh/authorized_keys"
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd # privilege separation directory
cat >"$WORK/ssh/sshd_config" <<CFG
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $WORK/ssh/host_ed25519
PidFile $WORK/ssh/sshd.pid
AuthorizedKeysFile $WORK/ssh/authorized_keys
AllowUsers $USER_NAME
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
CFG
"$SSHD" -t -f "$WORK/ssh/sshd_config" || fail "sshd rejected its config"
"$SSHD" -D -e -f "$WORK/ssh/sshd_config" >"$WORK/logs/sshd.log" 2>&1 &
PIDS+=($!)
wait_tcp 15 "$SSH_PORT"
HOST_KEY=$(cut -d' ' -f1,2 "$WORK/ssh/host_ed25519.pub")
timeout 20 ssh -n -p "$SSH_PORT" -i "$WORK/ssh/user_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes \
  -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o ConnectTimeout=5 -o LogLevel=ERROR \
  "$USER_NAME@127.0.0.1" true 2>"$WORK/logs/ssh-check.log" || { cat "$WORK/logs/ssh-check.log" >&2; fail "ssh login to the throwaway sshd"; }
log "sshd on 127.0.0.1:$SSH_PORT (user $USER_NAME, throwaway host and user keys)"

SSH_HCL="ssh_private_key_file = \"$WORK/ssh/user_ed25519\"
  ssh_host_keys        = { \"127.0.0.1\" = \"$HOST_KEY\" }
  process_manager      = \"none\"
  purge_on_destroy     = true
  dist_dir             = \"$DIST\"
  stop_timeout_seconds = 15"

# Every edge, NATS server and origin runs on this host, over the sshd.
ON_HOST="host = \"127.0.0.1\", ssh_port = $SSH_PORT, ssh_user = \"$USER_NAME\", arch = \"$ARCH\""

# edges_hcl LISTEN ADMIN GOSSIP: a site's edges, one on this host.
edges_hcl() {
  echo "[{ $ON_HOST, listen = \"127.0.0.1:$1\", admin_listen = \"127.0.0.1:$2\", gossip_listen = \"127.0.0.1:$3\" }]"
}

# keyed_ok EDGE KEY: a chat completion through EDGE answers 200 within 20s.
keyed_ok() {
  local body='{"model":"mock-model","messages":[{"role":"user","content":"hello from terraform"}]}'
  local deadline=$((SECONDS + 20)) code
  until code=$(http POST "$1/v1/chat/completions" "$WORK/resp.json" "$body" "X-API-Key:$2") && [ "$code" = 200 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "a keyed request through $1 answered $code: $(head -c 300 "$WORK/resp.json")"
    sleep 0.25
  done
  grep -q '"choices"' "$WORK/resp.json" || fail "the keyed response is not a completion: $(head -c 300 "$WORK/resp.json")"
}

# origin_cli ARGS...: the operator CLI, bounded.
origin_cli() { timeout 30 "$BIN/origin" "$@"; }

# ---- phase: site ----------------------------------------------------------------
phase_site() {
  local R=$WORK/site HOST=$WORK/host/site
  mkdir -p "$R" "$WORK/origin"
  next_port; local ORIGIN_PORT=$NEXT_PORT; next_port; local NATS_PORT=$NEXT_PORT; next_port; local UP_PORT=$NEXT_PORT
  next_port; local EDGE_PORT=$NEXT_PORT; next_port; local ADMIN_PORT=$NEXT_PORT; next_port; local GOSSIP_PORT=$NEXT_PORT

  local ADMIN_PW GK1 GK2 SECRET
  ADMIN_PW=pw-$(rand_b64 18 | tr -d '/+=')
  GK1=$(rand_b64 32); GK2=$(rand_b64 32); SECRET=upstream-$(rand_b64 18 | tr -d '/+=')
  printf '%s\n' "$ADMIN_PW" >"$WORK/admin-pw"; chmod 0600 "$WORK/admin-pw"
  local ORIGIN=http://127.0.0.1:$ORIGIN_PORT
  ORIGIN_ADMIN_PASSWORD=$ADMIN_PW "$BIN/origin" --data-dir "$WORK/origin" --listen "127.0.0.1:$ORIGIN_PORT" \
    --nats-listen "127.0.0.1:$NATS_PORT" >"$WORK/logs/origin.log" 2>&1 &
  PIDS+=($!)
  "$BIN/bench" upstream --listen "127.0.0.1:$UP_PORT" >"$WORK/logs/upstream.log" 2>&1 &
  PIDS+=($!)
  wait_http 30 "$ORIGIN/health"
  wait_http 30 "http://127.0.0.1:$UP_PORT/health"
  log "site: origin on $ORIGIN (embedded NATS on $NATS_PORT), mock upstream on $UP_PORT"

  local CREDS_HCL="" SEEDS=()
  if [ "$NATS_AUTH" = true ]; then
    mkdir -p "$WORK/site-creds"
    origin_cli nats-creds --data-dir "$WORK/origin" --role edge --id e2e-edge-0 --out "$WORK/site-creds/e2e-edge-0.creds" >/dev/null || fail "site: origin nats-creds"
    CREDS_HCL="nats_creds_dir = \"$WORK/site-creds\""
    SEEDS=("$(creds_seed "$WORK/site-creds/e2e-edge-0.creds")")
  fi

  site_tf() { # site_tf GOSSIP_KEYS_HCL
    cat >"$R/main.tf" <<TF
module "site" {
  source = "$(modpath "$R" site)"

  site_name = "e2e"
  edges     = $(edges_hcl "$EDGE_PORT" "$ADMIN_PORT" "$GOSSIP_PORT")
  upstream_urls          = ["http://127.0.0.1:$UP_PORT"]
  nats_urls              = ["nats://127.0.0.1:$NATS_PORT"]
  origin_public_key      = file("$WORK/origin/signing.pub")
  gossip_keys            = $1
  secrets                = { "default/upstream_token" = "$SECRET" }
  extra_env              = { EDGE_DRAIN_TIMEOUT = "5s" }
  install_dir            = "$HOST/opt/keymesh"
  data_dir               = "$HOST/var/lib/keymesh"
  health_timeout_seconds = 30
  $CREDS_HCL
  $SSH_HCL
}

output "edge_endpoints" { value = module.site.edge_endpoints }
output "upstream_flags" { value = module.site.upstream_flags }
output "edges" { value = module.site.edges }
TF
  }
  site_tf "[\"$GK1\"]"
  tf_up "$R" site

  local EDGE DIR=$HOST/opt/keymesh/e2e-edge-0
  tf "$R" output -json edge_endpoints >"$WORK/endpoints.json"
  EDGE=$(json "$WORK/endpoints.json" 'j[0]')
  [ "$EDGE" = "http://127.0.0.1:$EDGE_PORT" ] || fail "site: edge_endpoints output is $EDGE"
  local PID
  PID=$(cat "$DIR/edge.pid") || fail "site: no supervisor pid file"
  kill -0 "$PID" 2>/dev/null || fail "site: supervisor pid $PID not running"
  [ -n "$(processes_in "$DIR/bin/edge")" ] || fail "site: no edge process runs from $DIR/bin/edge"
  [ "$(stat -c %a "$DIR/edge.env")" = 600 ] || fail "site: edge.env is not mode 0600"
  grep -q "^EDGE_SECRET_DEFAULT__UPSTREAM_TOKEN=" "$DIR/edge.env" || fail "site: the edge secret is not in edge.env"
  if [ "$NATS_AUTH" = true ]; then
    [ "$(stat -c %a "$DIR/nats.creds")" = 600 ] || fail "site: nats.creds is not mode 0600"
    cmp -s "$DIR/nats.creds" "$WORK/site-creds/e2e-edge-0.creds" || fail "site: the installed nats.creds is not the edge's"
    grep -qF "EDGE_NATS_CREDS='$DIR/nats.creds'" "$DIR/edge.env" || fail "site: edge.env does not point --nats-creds at nats.creds"
  fi
  [ "$(http GET "$EDGE/health" "$WORK/resp.json")" = 200 ] || fail "site: GET $EDGE/health"
  log "site: edge running (supervisor pid $PID) at $EDGE, GET /health -> 200"

  # The deployment's upstreams come from the module's output.
  local OF=(--server "$ORIGIN" --token-file "$WORK/token")
  origin_cli login "${OF[@]}" --password-file "$WORK/admin-pw" >/dev/null || fail "site: origin login"
  local UPFLAGS
  mapfile -t UPFLAGS < <(tf "$R" output -json upstream_flags | node -e 'for (const f of JSON.parse(require("fs").readFileSync(0,"utf8"))) console.log(f)')
  origin_cli deployments create tfe2e "${OF[@]}" "${UPFLAGS[@]}" --wait 5s >/dev/null || fail "site: deployments create ${UPFLAGS[*]}"
  origin_cli keys create tfe2e-key "${OF[@]}" --deployments tfe2e --wait 5s --json >"$WORK/key.json" || fail "site: keys create"
  local KEY
  KEY=$(json "$WORK/key.json" 'j.key')
  keyed_ok "$EDGE" "$KEY"
  local body='{"model":"m","messages":[{"role":"user","content":"x"}]}'
  [ "$(http POST "$EDGE/v1/chat/completions" "$WORK/resp.json" "$body")" = 401 ] || fail "site: no key did not get 401"
  [ "$(http POST "$EDGE/v1/chat/completions" "$WORK/resp.json" "$body" "X-API-Key:${KEY}x")" = 401 ] || fail "site: a wrong key did not get 401"
  log "site: keyed POST /v1/chat/completions -> 200 (${UPFLAGS[*]}); no key -> 401, wrong key -> 401"
  if [ "$NATS_AUTH" = true ]; then nats_attacks site "nats://127.0.0.1:$NATS_PORT" "$DIR/nats.creds"; else log "site: origin has no nats-creds: NATS auth not tested"; fi

  # cloud-init writes what the SSH install wrote (the env file; the scripts
  # differ, cloud-init's are systemd's). Asked of terraform console: a root
  # output would keep it in the state.
  echo 'nonsensitive(jsonencode({ for f in yamldecode(module.site.cloud_init["e2e-edge-0"]).write_files : f.path => f.content }))' |
    tf "$R" console 2>"$WORK/logs/console.err" | json_raw /dev/stdin 'j' >"$WORK/cloud-init-files.json" || { cat "$WORK/logs/console.err" >&2; fail "site: terraform console"; }
  json_raw "$WORK/cloud-init-files.json" "j[\"$DIR/edge.env\"] || ''" >"$WORK/ci-file"
  cmp -s "$WORK/ci-file" "$DIR/edge.env" || fail "site: cloud-init's edge.env differs from the installed one"
  json "$WORK/cloud-init-files.json" "Object.keys(j).some(p => p.endsWith('.service'))" | grep -q true || fail "site: cloud-init writes no systemd unit"
  rm -f "$WORK/cloud-init-files.json" "$WORK/ci-file"
  log "site: the cloud-init rendering writes the installed edge.env and a systemd unit"

  tf_plan_empty "$R" site

  # Gossip key rotation, step 1 (README runbook): the new key second. A
  # config change replaces the config resource: the edge restarts.
  site_tf "[\"$GK1\", \"$GK2\"]"
  local t0=$SECONDS
  tf "$R" apply -auto-approve -input=false >"$WORK/logs/site-rotate.log" 2>&1 || { tail -n 40 "$WORK/logs/site-rotate.log" >&2; fail "site: apply of the added gossip key"; }
  grep -q 'Plan: 1 to add, 0 to change, 1 to destroy' "$WORK/logs/site-rotate.log" || fail "site: adding a gossip key should replace only the config resource"
  local PID2
  PID2=$(cat "$DIR/edge.pid")
  [ "$PID2" != "$PID" ] || fail "site: the edge was not restarted by a config change"
  ! kill -0 "$PID" 2>/dev/null || fail "site: the old supervisor $PID still runs"
  grep -qF "EDGE_GOSSIP_KEY='$GK1,$GK2'" "$DIR/edge.env" || fail "site: edge.env does not hold both gossip keys in order"
  keyed_ok "$EDGE" "$KEY"
  log "site: a second gossip key applied in $((SECONDS - t0))s: edge restarted (supervisor $PID -> $PID2), keyed request -> 200"

  no_secrets site "$R" "$GK1" "$GK2" "$SECRET" "$ADMIN_PW" ${SEEDS[@]+"${SEEDS[@]}"}

  tf_down "$R" site
  ! kill -0 "$PID2" 2>/dev/null || fail "site: supervisor $PID2 still running after destroy"
  port_closed "$EDGE_PORT" || fail "site: edge port $EDGE_PORT still open after destroy"
  port_closed "$ADMIN_PORT" || fail "site: edge admin port $ADMIN_PORT still open after destroy"
  gone site "$HOST/opt/keymesh/e2e-edge-0" "$HOST/var/lib/keymesh/e2e-edge-0"
  no_secrets site "$R" "$GK1" "$GK2" "$SECRET" "$ADMIN_PW" ${SEEDS[@]+"${SEEDS[@]}"}
  log "site: destroyed: no edge process, ports closed, install and data directories removed"
}

# ---- phase: control plane -----------------------------------------------------------
pg_as_owner() { # runs a PostgreSQL binary as the cluster's owner
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$bin" ] || bin=$(dirname "$(command -v initdb)")
  local cmd=$1; shift
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$bin/$cmd" "$@"; else "$bin/$cmd" "$@"; fi
}

phase_control_plane() {
  local R=$WORK/cp HOST=$WORK/host/cp
  mkdir -p "$R"
  ./scripts/pgtest.sh
  # A throwaway PostgreSQL (trust authentication: the password in the URL
  # is only there to be searched for in terraform's output).
  next_port; local PG_PORT=$NEXT_PORT
  local PGDIR=$WORK/pg
  mkdir -p "$PGDIR"
  [ "$(id -u)" != 0 ] || chown postgres "$PGDIR"
  pg_as_owner initdb -D "$PGDIR/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$WORK/logs/initdb.log" 2>&1 || { cat "$WORK/logs/initdb.log" >&2; fail "initdb"; }
  PGDATA=$PGDIR/data
  pg_as_owner pg_ctl -D "$PGDATA" -l "$PGDIR/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off" start >"$WORK/logs/pg_ctl.log" 2>&1 || { cat "$WORK/logs/pg_ctl.log" "$PGDIR/server.log" >&2; fail "pg_ctl start"; }
  local PG_SECRET PG_URL ADMIN_PW GK
  PG_SECRET=pg-$(rand_b64 18 | tr -d '/+=')
  PG_URL="postgres://postgres:$PG_SECRET@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
  ADMIN_PW=pw-$(rand_b64 18 | tr -d '/+=')
  GK=$(rand_b64 32)
  origin_cli keygen --out "$WORK/keys" >"$WORK/logs/keygen.log" || fail "origin keygen"
  local SEEDS=()
  if [ "$NATS_AUTH" = true ]; then
    origin_cli nats-config --data-dir "$WORK/keys" >"$WORK/keys/nats-config.conf" || fail "origin nats-config"
    origin_cli nats-creds --data-dir "$WORK/keys" --role origin --out "$WORK/keys/origin.creds" >/dev/null || fail "origin nats-creds --role origin"
    mkdir -p "$WORK/keys/nats-creds"
    origin_cli nats-creds --data-dir "$WORK/keys" --role edge --id us-edge-0 --out "$WORK/keys/nats-creds/us-edge-0.creds" >/dev/null || fail "origin nats-creds --role edge"
    SEEDS=("$(creds_seed "$WORK/keys/origin.creds")" "$(creds_seed "$WORK/keys/nats-creds/us-edge-0.creds")")
  fi
  log "control-plane: PostgreSQL on 127.0.0.1:$PG_PORT, keys from origin keygen"

  # Two regions of three NATS servers (4 ports each), two origins in eu,
  # one edge in us.
  local region i nats_hcl="" mon_eu="" mon_us=""
  for region in eu us; do
    nats_hcl+="    $region = {
      nats = ["
    for i in 0 1 2; do
      next_port; local c=$NEXT_PORT; next_port; local r=$NEXT_PORT; next_port; local g=$NEXT_PORT; next_port; local m=$NEXT_PORT
      nats_hcl+="
        { $ON_HOST, listen_host = \"127.0.0.1\", client_port = $c, cluster_port = $r, gateway_port = $g, monitor_port = $m },"
      if [ "$region" = eu ]; then mon_eu+=" $m"; else mon_us+=" $m"; fi
    done
    nats_hcl+="
      ]"
    if [ "$region" = eu ]; then
      next_port; local o1=$NEXT_PORT; next_port; local o2=$NEXT_PORT
      local ORIGIN_A=http://127.0.0.1:$o1 ORIGIN_B=http://127.0.0.1:$o2
      nats_hcl+="
      origins = [
        { $ON_HOST, listen = \"127.0.0.1:$o1\" },
        { $ON_HOST, listen = \"127.0.0.1:$o2\" },
      ]"
    fi
    nats_hcl+="
    }
"
  done
  next_port; local UP_PORT=$NEXT_PORT; next_port; local EDGE_PORT=$NEXT_PORT; next_port; local ADMIN_PORT=$NEXT_PORT; next_port; local GOSSIP_PORT=$NEXT_PORT
  "$BIN/bench" upstream --listen "127.0.0.1:$UP_PORT" >"$WORK/logs/upstream-us.log" 2>&1 &
  PIDS+=($!)
  wait_http 30 "http://127.0.0.1:$UP_PORT/health"

  cat >"$R/main.tf" <<TF
variable "postgres_url" {
  type      = string
  sensitive = true
}
variable "admin_password" {
  type      = string
  sensitive = true
}
variable "gossip_key" {
  type      = string
  sensitive = true
}

module "control_plane" {
  source = "$(modpath "$R" control-plane)"

  regions = {
$nats_hcl  }
  postgres_url           = var.postgres_url
  admin_password         = var.admin_password
  origin_keys_dir        = "$WORK/keys"
  install_dir            = "$HOST/opt/keymesh"
  data_dir               = "$HOST/var/lib/keymesh"
  health_timeout_seconds = 60
  nats_auth              = $NATS_AUTH
  $SSH_HCL
}

module "site_us" {
  source = "$(modpath "$R" site)"

  site_name = "us"
  edges     = $(edges_hcl "$EDGE_PORT" "$ADMIN_PORT" "$GOSSIP_PORT")
  upstream_urls          = ["http://127.0.0.1:$UP_PORT"]
  nats_urls              = module.control_plane.nats_client_urls["us"]
  origin_public_key      = module.control_plane.origin_public_key
  nats_creds_dir         = module.control_plane.edge_nats_creds_dir
  gossip_keys            = [var.gossip_key]
  install_dir            = "$HOST/opt/keymesh"
  data_dir               = "$HOST/var/lib/keymesh"
  health_timeout_seconds = 30
  $SSH_HCL
}

output "origin_endpoints" { value = module.control_plane.origin_endpoints }
output "nats_client_urls" { value = module.control_plane.nats_client_urls }
output "edge_endpoints" { value = module.site_us.edge_endpoints }
output "upstream_flags" { value = module.site_us.upstream_flags }
TF
  export TF_VAR_postgres_url=$PG_URL TF_VAR_admin_password=$ADMIN_PW TF_VAR_gossip_key=$GK
  tf_up "$R" control-plane

  # NATS: each region a cluster of 3, gateways to the other region, and
  # the event stream (once the origin has published) with 3 replicas.
  local m
  for m in $mon_eu $mon_us; do
    [ "$(http GET "http://127.0.0.1:$m/routez" "$WORK/routez.json")" = 200 ] || fail "control-plane: /routez on monitor port $m"
    [ "$(json "$WORK/routez.json" 'j.num_routes >= 2')" = true ] || fail "control-plane: NATS on monitor port $m has $(json "$WORK/routez.json" j.num_routes) routes, want its 2 peers"
    [ "$(http GET "http://127.0.0.1:$m/gatewayz" "$WORK/gatewayz.json")" = 200 ] || fail "control-plane: /gatewayz on monitor port $m"
    local other
    other=$(json "$WORK/gatewayz.json" 'j.name === "eu" ? "us" : "eu"')
    [ "$(json "$WORK/gatewayz.json" "!!(j.outbound_gateways && j.outbound_gateways['$other'])")" = true ] || fail "control-plane: NATS on monitor port $m has no gateway to $other"
  done
  log "control-plane: 6 NATS servers, each routed to its 2 peers and with a gateway to the other region"

  local OA=(--server "$ORIGIN_A" --token-file "$WORK/token-cp")
  printf '%s\n' "$ADMIN_PW" >"$WORK/admin-pw-cp"; chmod 0600 "$WORK/admin-pw-cp"
  origin_cli login "${OA[@]}" --password-file "$WORK/admin-pw-cp" >/dev/null || fail "control-plane: login to origin A"
  local UPFLAGS
  mapfile -t UPFLAGS < <(tf "$R" output -json upstream_flags | node -e 'for (const f of JSON.parse(require("fs").readFileSync(0,"utf8"))) console.log(f)')
  origin_cli deployments create cp "${OA[@]}" "${UPFLAGS[@]}" --wait 10s >/dev/null || fail "control-plane: deployments create on origin A"
  # A token from replica A on replica B: they share jwt.key.
  local OB=(--server "$ORIGIN_B" --token-file "$WORK/token-cp")
  origin_cli keys create cp-key "${OB[@]}" --deployments cp --wait 10s --json >"$WORK/key-cp.json" || fail "control-plane: origin B refused origin A's token"
  local KEY
  KEY=$(json "$WORK/key-cp.json" 'j.key')
  log "control-plane: token of origin A accepted by origin B; deployment and key created"

  local EDGE
  tf "$R" output -json edge_endpoints >"$WORK/endpoints.json"
  EDGE=$(json "$WORK/endpoints.json" 'j[0]')
  keyed_ok "$EDGE" "$KEY"
  log "control-plane: keyed request through the us edge -> 200 (key from origins in eu, across the gateway)"
  if [ "$NATS_AUTH" = true ]; then
    local US_NATS
    US_NATS=$(tf "$R" output -json nats_client_urls | json_raw /dev/stdin 'j.us[0]')
    nats_attacks control-plane "$US_NATS" "$HOST/opt/keymesh/us-edge-0/nats.creds"
  else
    log "control-plane: origin has no nats-creds: NATS auth not tested"
  fi

  local found=0 replicas=""
  for m in $mon_eu $mon_us; do
    http GET "http://127.0.0.1:$m/jsz?streams=true&config=true" "$WORK/jsz.json" >/dev/null
    replicas=$(json "$WORK/jsz.json" '((j.account_details||[]).flatMap(a => a.stream_detail||[]).find(s => s.name === "KEYMESH_EVENTS")||{config:{}}).config.num_replicas || ""')
    if [ -n "$replicas" ]; then found=1; break; fi
  done
  [ "$found" = 1 ] || fail "control-plane: no NATS server reports the event stream"
  [ "$replicas" = 3 ] || fail "control-plane: the event stream has $replicas replicas, want 3"
  log "control-plane: the event stream has 3 replicas"

  tf_plan_empty "$R" control-plane
  no_secrets control-plane "$R" "$PG_SECRET" "$ADMIN_PW" "$GK" "$(head -c 40 "$WORK/keys/signing.key")" "$(head -c 40 "$WORK/keys/jwt.key")" ${SEEDS[@]+"${SEEDS[@]}"}

  tf_down "$R" control-plane
  local left
  left=$(find "$HOST/opt/keymesh" "$HOST/var/lib/keymesh" -mindepth 1 -maxdepth 1 2>/dev/null)
  [ -z "$left" ] || fail "control-plane: left after destroy: $(echo $left)"
  gone control-plane "$HOST/opt/keymesh/"
  port_closed "$EDGE_PORT" || fail "control-plane: edge port still open after destroy"
  for m in $mon_eu $mon_us; do port_closed "$m" || fail "control-plane: a NATS monitor port ($m) still open after destroy"; done
  no_secrets control-plane "$R" "$PG_SECRET" "$ADMIN_PW" "$GK"
  log "control-plane: destroyed: no NATS, origin or edge process, directories removed"
}

for phase in $PHASES; do
  case "$phase" in
    site) phase_site ;;
    control-plane) phase_control_plane ;;
    *) fail "unknown phase $phase (site, control-plane)" ;;
  esac
done
