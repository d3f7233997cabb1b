#!/usr/bin/env bash
# tf-e2e: applies deploy/terraform/modules/site against a throwaway sshd on
# 127.0.0.1 (process_manager = "none"), checks the edge it installed answers
# /health and proxies a keyed request to a mock upstream through a local
# origin, then destroys it and checks nothing is left running.
#
# Needs: terraform ($TERRAFORM), $BIN/origin and $BIN/bench (go build),
# $DIST/linux_<arch>/edge (make dist-local), sshd (Debian openssh-server;
# installed with apt-get when root and missing), ssh-keygen, curl.
# Every wait is bounded; everything started here is stopped on exit.
# KEEP=1 keeps the temp directory for debugging.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TERRAFORM=${TERRAFORM:-$ROOT/bin/tools/terraform}
BIN=${BIN:-bin}
DIST=${DIST:-dist}
abs() { case "$1" in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
TERRAFORM=$(abs "$TERRAFORM"); BIN=$(abs "$BIN"); DIST=$(abs "$DIST")
ARCH=$(go env GOARCH 2>/dev/null || dpkg --print-architecture)
TF_TIMEOUT=${TF_TIMEOUT:-300}

log() { echo "tf-e2e: $*"; }
fail() { echo "tf-e2e: FAIL: $*" >&2; exit 1; }

for f in "$TERRAFORM" "$BIN/origin" "$BIN/bench" "$DIST/linux_$ARCH/edge"; do
  [ -x "$f" ] || fail "$f missing (make tf-tools dist-local; go build -o bin/ ./cmd/origin ./cmd/bench)"
done
command -v curl >/dev/null || fail "curl is needed"
command -v ssh-keygen >/dev/null || fail "ssh-keygen is needed (openssh-client)"
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
if [ ! -x "$SSHD" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing openssh-server"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server) >/dev/null
  fi
  [ -x "$SSHD" ] || fail "sshd not found (apt-get install openssh-server)"
fi
# scp is what terraform's file provisioner runs on the far side.
command -v scp >/dev/null || fail "scp is needed on the SSH host (openssh-client)"

WORK=$(mktemp -d /tmp/keymesh-tf-e2e.XXXXXX)
chmod 0755 "$WORK"
PIDS=()
APPLIED=0
INSTALL_DIR=$WORK/host/opt/keymesh
DATA_DIR=$WORK/host/var/lib/keymesh
EDGE_NAME=e2e-0

tf() { # terraform with a bounded run time, offline config, state in $WORK
  timeout "$TF_TIMEOUT" "$TERRAFORM" -chdir="$WORK/tf" "$@"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ "$APPLIED" = 1 ]; then
    log "cleanup: terraform destroy"
    tf destroy -auto-approve -input=false -no-color >"$WORK/destroy-cleanup.log" 2>&1 || tail -n 20 "$WORK/destroy-cleanup.log" >&2
  fi
  # an edge left by a failed apply or destroy
  if [ -f "$INSTALL_DIR/$EDGE_NAME/edge.pid" ]; then
    kill -TERM "$(cat "$INSTALL_DIR/$EDGE_NAME/edge.pid")" 2>/dev/null
  fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ "$rc" != 0 ]; then
    for f in "$WORK"/logs/*.log "$INSTALL_DIR/$EDGE_NAME/edge.log"; do
      [ -f "$f" ] && { echo "---- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  [ "$rc" = 0 ] && log "PASS" || echo "tf-e2e: FAILED (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
USED=" "
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    case "$USED" in *" $p "*) continue ;; esac
    if port_free "$p"; then USED="$USED$p "; echo "$p"; return 0; fi
  done
  fail "no free port found"
}
wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  local deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within ${t}s"
    sleep 0.2
  done
}
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

SSH_PORT=$(free_port); ORIGIN_PORT=$(free_port); NATS_PORT=$(free_port)
UP_PORT=$(free_port); EDGE_PORT=$(free_port); EDGE_ADMIN_PORT=$(free_port); GOSSIP_PORT=$(free_port)
mkdir -p "$WORK/ssh" "$WORK/logs" "$WORK/tf" "$WORK/origin" "$WORK/host"

# ---- throwaway sshd on 127.0.0.1 -------------------------------------------
USER_NAME=$(id -un)
ssh-keygen -q -t ed25519 -N '' -C keymesh-tf-e2e-host -f "$WORK/ssh/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C keymesh-tf-e2e-user -f "$WORK/ssh/user_ed25519"
cp "$WORK/ssh/user_ed25519.pub" "$WORK/ssh/authorized_keys"
chmod 0600 "$WORK/ssh/authorized_keys"
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd
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
Subsystem sftp internal-sftp
LogLevel VERBOSE
CFG
"$SSHD" -t -f "$WORK/ssh/sshd_config" || fail "sshd rejected its config"
"$SSHD" -D -e -f "$WORK/ssh/sshd_config" >"$WORK/logs/sshd.log" 2>&1 &
PIDS+=($!)
wait_until 15 "sshd on 127.0.0.1:$SSH_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT"
HOST_KEY=$(cut -d' ' -f1,2 "$WORK/ssh/host_ed25519.pub")
# sanity: the key logs in (bounded)
timeout 20 ssh -n -p "$SSH_PORT" -i "$WORK/ssh/user_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes \
  -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o ConnectTimeout=5 \
  "$USER_NAME@127.0.0.1" true 2>"$WORK/logs/ssh-check.log" || { cat "$WORK/logs/ssh-check.log" >&2; fail "ssh login to the throwaway sshd"; }
log "sshd on 127.0.0.1:$SSH_PORT (user $USER_NAME)"

# ---- origin (embedded NATS) and mock upstream --------------------------------
ADMIN_PW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$ADMIN_PW" >"$WORK/admin-pw"; chmod 0600 "$WORK/admin-pw"
ORIGIN=http://127.0.0.1:$ORIGIN_PORT
ORIGIN_ADMIN_PASSWORD=$ADMIN_PW "$BIN/origin" --data-dir "$WORK/origin" --listen "127.0.0.1:$ORIGIN_PORT" \
  --nats-listen "127.0.0.1:$NATS_PORT" >"$WORK/logs/origin.log" 2>&1 &
PIDS+=($!)
"$BIN/bench" upstream --listen "127.0.0.1:$UP_PORT" >"$WORK/logs/upstream.log" 2>&1 &
PIDS+=($!)
wait_until 30 "origin /health" http_ok "$ORIGIN/health"
wait_until 30 "mock upstream /health" http_ok "http://127.0.0.1:$UP_PORT/health"
wait_until 10 "origin signing.pub" test -s "$WORK/origin/signing.pub"
log "origin on $ORIGIN (NATS 127.0.0.1:$NATS_PORT), mock upstream on 127.0.0.1:$UP_PORT"

# ---- terraform root using modules/site ---------------------------------------
mkdir -p "$WORK/tf/mirror"
cat >"$WORK/tf/terraformrc" <<RC
provider_installation {
  filesystem_mirror {
    path    = "$WORK/tf/mirror"
    include = ["*/*/*"]
  }
}
RC
export TF_CLI_CONFIG_FILE=$WORK/tf/terraformrc TF_DATA_DIR=$WORK/tf/.terraform
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
cat >"$WORK/tf/main.tf" <<TF
module "site" {
  source = "$ROOT/deploy/terraform/modules/site"

  site_name = "e2e"
  edges = [{
    host          = "127.0.0.1"
    ssh_port      = $SSH_PORT
    ssh_user      = "$USER_NAME"
    arch          = "$ARCH"
    name          = "$EDGE_NAME"
    listen        = "127.0.0.1:$EDGE_PORT"
    admin_listen  = "127.0.0.1:$EDGE_ADMIN_PORT"
    gossip_listen = "127.0.0.1:$GOSSIP_PORT"
  }]
  upstream_urls          = ["http://127.0.0.1:$UP_PORT"]
  nats_urls              = ["nats://127.0.0.1:$NATS_PORT"]
  origin_public_key      = file("$WORK/origin/signing.pub")
  process_manager        = "none"
  install_dir            = "$INSTALL_DIR"
  data_dir               = "$DATA_DIR"
  purge_on_destroy       = true
  dist_dir               = "$DIST"
  ssh_private_key_file   = "$WORK/ssh/user_ed25519"
  ssh_host_keys          = { "127.0.0.1" = "$HOST_KEY" }
  health_timeout_seconds = 30
  stop_timeout_seconds   = 15
  extra_env              = { EDGE_DRAIN_TIMEOUT = "5s" }
}

output "edge_endpoints" { value = module.site.edge_endpoints }
output "upstream_flags" { value = module.site.upstream_flags }
TF

log "terraform init + apply (modules/site, process_manager = none)"
tf init -input=false -no-color >"$WORK/logs/tf-init.log" 2>&1 || { cat "$WORK/logs/tf-init.log" >&2; fail "terraform init"; }
[ ! -e "$WORK/tf/.terraform.lock.hcl" ] || fail "terraform init locked a provider plugin; only the builtin provider is allowed"
APPLIED=1
tf apply -auto-approve -input=false -no-color >"$WORK/logs/tf-apply.log" 2>&1 || { tail -n 40 "$WORK/logs/tf-apply.log" >&2; fail "terraform apply"; }
log "applied; $(grep -c 'Creation complete' "$WORK/logs/tf-apply.log") resources created"

EDGE=$(tf output -json edge_endpoints | tr -d '[]" \n')
[ "$EDGE" = "http://127.0.0.1:$EDGE_PORT" ] || fail "edge_endpoints output is '$EDGE'"
PID_FILE=$INSTALL_DIR/$EDGE_NAME/edge.pid
[ -s "$PID_FILE" ] || fail "no pid file $PID_FILE"
EDGE_PID=$(cat "$PID_FILE")
kill -0 "$EDGE_PID" 2>/dev/null || fail "edge pid $EDGE_PID not running"
log "edge running as pid $EDGE_PID at $EDGE"

# ---- checks -----------------------------------------------------------------
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$EDGE/health")
[ "$code" = 200 ] || fail "GET $EDGE/health answered $code"
log "GET /health -> 200"

# secrets must not appear in terraform's output
if grep -q "$ADMIN_PW" "$WORK/logs/tf-apply.log"; then fail "admin password in terraform output"; fi

OCLI=("$BIN/origin")
OFLAGS=(--server "$ORIGIN" --token-file "$WORK/token")
timeout 20 "${OCLI[@]}" login "${OFLAGS[@]}" --password-file "$WORK/admin-pw" >/dev/null || fail "origin login"
# the deployment's upstreams come from the module's output (site e2e only)
mapfile -t UPFLAGS < <(tf output -json upstream_flags | tr -d '[]"' | tr ',' '\n' | sed '/^\s*$/d')
timeout 20 "${OCLI[@]}" deployments create tfe2e "${OFLAGS[@]}" "${UPFLAGS[@]}" --wait 5s >/dev/null || fail "deployments create"
KEY=$(timeout 20 "${OCLI[@]}" keys create tfe2e-key "${OFLAGS[@]}" --deployments tfe2e --wait 5s --json |
  sed -nE 's/.*"key": *"([^"]+)".*/\1/p' | head -n1)
[ -n "$KEY" ] || fail "keys create printed no secret"
log "deployment tfe2e (upstream ${UPFLAGS[*]}) and a linked key created"

BODY='{"model":"mock-model","messages":[{"role":"user","content":"hello from terraform"}]}'
keyed() { curl -s -o "$WORK/resp.json" -w '%{http_code}' --max-time 10 "$EDGE/v1/chat/completions" \
  -H 'Content-Type: application/json' -H "X-API-Key: $KEY" -d "$BODY"; }
deadline=$((SECONDS + 20))
until [ "$(keyed)" = 200 ]; do
  [ "$SECONDS" -lt "$deadline" ] || { cat "$WORK/resp.json" >&2 || true; fail "keyed request through the edge never answered 200"; }
  sleep 0.5
done
grep -q '"choices"' "$WORK/resp.json" || fail "keyed response is not a completion: $(head -c 300 "$WORK/resp.json")"
log "keyed POST /v1/chat/completions -> 200 (proxied to the mock upstream)"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$EDGE/v1/chat/completions" -H 'Content-Type: application/json' -d "$BODY")
[ "$code" = 401 ] || fail "request without a key answered $code, want 401"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$EDGE/v1/chat/completions" -H 'Content-Type: application/json' -H "X-API-Key: ${KEY}x" -d "$BODY")
[ "$code" = 401 ] || fail "request with a wrong key answered $code, want 401"
log "no key -> 401, wrong key -> 401"

# idempotent: a second plan has nothing to do
set +e
tf plan -detailed-exitcode -input=false -no-color >"$WORK/logs/tf-plan.log" 2>&1
prc=$?
set -e
[ "$prc" = 0 ] || { tail -n 30 "$WORK/logs/tf-plan.log" >&2; fail "second plan is not empty (exit $prc)"; }
log "second plan: no changes"

# ---- destroy and check nothing is left ---------------------------------------
tf destroy -auto-approve -input=false -no-color >"$WORK/logs/tf-destroy.log" 2>&1 || { tail -n 40 "$WORK/logs/tf-destroy.log" >&2; fail "terraform destroy"; }
APPLIED=0
for _ in $(seq 1 50); do kill -0 "$EDGE_PID" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$EDGE_PID" 2>/dev/null || fail "edge pid $EDGE_PID still running after destroy"
port_free "$EDGE_PORT" || fail "edge port $EDGE_PORT still open after destroy"
port_free "$EDGE_ADMIN_PORT" || fail "edge admin port $EDGE_ADMIN_PORT still open after destroy"
[ ! -e "$INSTALL_DIR/$EDGE_NAME" ] || fail "$INSTALL_DIR/$EDGE_NAME left after destroy"
[ ! -e "$DATA_DIR/$EDGE_NAME" ] || fail "$DATA_DIR/$EDGE_NAME left after destroy (purge_on_destroy)"
if pgrep -f "$INSTALL_DIR/" >/dev/null; then fail "a process from $INSTALL_DIR is still running"; fi
[ "$(tf state list | wc -l)" = 0 ] || fail "state not empty after destroy"
log "destroyed: pid $EDGE_PID gone, ports $EDGE_PORT/$EDGE_ADMIN_PORT closed, files removed, state empty"
