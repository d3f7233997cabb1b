#!/usr/bin/env bash
# tf-check (make tf-check): offline checks of the terraform configurations
# under $1 (default deploy/terraform), with nothing written to the tree:
#   1. terraform fmt -check -recursive;
#   2. init -backend=false and validate in every module and example; init
#      sees only an empty provider mirror, so a configuration that needs a
#      provider plugin fails here (only the builtin terraform_data is used);
#   3. a plan of every example with made-up inputs (hosts from its defaults,
#      random secrets, a fake dist/ and key files): it must succeed and print
#      none of the secrets;
#   4. validation: plans with one bad input each must fail with the message
#      that names it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TF_DIR=$(cd "${1:-$ROOT/deploy/terraform}" && pwd)
TERRAFORM=${TERRAFORM:-terraform}
case "$TERRAFORM" in */*) case "$TERRAFORM" in /*) ;; *) TERRAFORM=$PWD/$TERRAFORM ;; esac ;; esac
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0

work=$(mktemp -d "${TMPDIR:-/tmp}/keymesh-tf-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/mirror"
printf 'provider_installation {\n  filesystem_mirror {\n    path    = "%s"\n    include = ["*/*/*"]\n  }\n}\n' "$work/mirror" >"$work/terraformrc"
export TF_CLI_CONFIG_FILE=$work/terraformrc

fail=0
tf() { timeout 120 "$TERRAFORM" "$@"; }

# init DIR NAME: init with a data dir of its own outside the tree.
init() {
  export TF_DATA_DIR=$work/data/$2
  local out
  if ! out=$(tf -chdir="$1" init -backend=false -input=false -no-color 2>&1); then
    echo "tf-check: init FAILED in $2" >&2; echo "$out" >&2; return 1
  fi
  if [ -e "$1/.terraform.lock.hcl" ] && ! git -C "$ROOT" ls-files --error-unmatch "$1/.terraform.lock.hcl" >/dev/null 2>&1; then
    rm -f "$1/.terraform.lock.hcl"
    echo "tf-check: $2 needs a provider plugin (a lock file appeared); only the builtin provider is allowed" >&2; return 1
  fi
}

# ---- 1. fmt -------------------------------------------------------------------
echo "tf-check: terraform fmt -check -recursive ${TF_DIR#"$ROOT"/}"
if ! tf fmt -check -recursive -diff "$TF_DIR"; then
  echo "tf-check: the files above need \`terraform fmt -recursive ${TF_DIR#"$ROOT"/}\`" >&2
  exit 1
fi

# ---- 2. init + validate -------------------------------------------------------------
mapfile -t dirs < <(find "$TF_DIR/modules" "$TF_DIR/examples" -name '*.tf' -not -path '*/.terraform/*' -printf '%h\n' 2>/dev/null | sort -u)
[ "${#dirs[@]}" -gt 0 ] || { echo "tf-check: no configurations under $TF_DIR" >&2; exit 1; }
for dir in "${dirs[@]}"; do
  name=${dir#"$TF_DIR"/}
  init "$dir" "$(echo "$name" | tr / _)" || { fail=1; continue; }
  if out=$(tf -chdir="$dir" validate -no-color 2>&1); then
    echo "tf-check: valid     $name"
  else
    echo "tf-check: INVALID   $name" >&2; echo "$out" >&2; fail=1
  fi
done
[ "$fail" = 0 ] || exit 1

# ---- made-up inputs -------------------------------------------------------------
for a in amd64 arm64; do
  mkdir -p "$work/dist/linux_$a"
  for b in edge origin nats-server; do echo "fake $b" >"$work/dist/linux_$a/$b"; done
done
# Key files shaped as `origin keygen` writes them.
mkdir -p "$work/keys"
head -c 64 /dev/urandom | base64 -w0 >"$work/keys/signing.key"; echo >>"$work/keys/signing.key"
head -c 32 /dev/urandom | base64 -w0 >"$work/keys/jwt.key"; echo >>"$work/keys/jwt.key"
head -c 32 /dev/urandom | base64 -w0 >"$work/keys/signing.pub"; echo >>"$work/keys/signing.pub"
PUB=$(cat "$work/keys/signing.pub")
# ... and the NATS files of `origin nats-config` and `origin nats-creds`.
printf 'operator: eyJmake.up.jwt\nresolver: MEMORY\nresolver_preload: {}\n' >"$work/keys/nats-config.conf"
creds() { printf -- '-----BEGIN NATS USER JWT-----\neyJmade.up\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n' "SU$(head -c 40 /dev/urandom | base32 -w0 | tr -d =)"; }
creds >"$work/keys/origin.creds"
mkdir -p "$work/keys/nats-creds" "$work/empty" "$work/keys-no-nats"
cp "$work/keys"/signing.* "$work/keys/jwt.key" "$work/keys-no-nats/"
for e in eu-edge-0 eu-edge-1 us-edge-0 us-edge-1 ap-edge-0; do creds >"$work/keys/nats-creds/$e.creds"; done
secret() { echo "$1-$(head -c 18 /dev/urandom | base64 -w0 | tr -d '/+=')"; }
PG_SECRET=$(secret pg); ADMIN_PW=$(secret admin); GOSSIP=$(head -c 32 /dev/urandom | base64 -w0)
SECRETS=("$PG_SECRET" "$ADMIN_PW" "$GOSSIP" "$(head -c 40 "$work/keys/signing.key")" "$(head -c 40 "$work/keys/jwt.key")"
  "$(sed -n 5p "$work/keys/origin.creds")" "$(sed -n 5p "$work/keys/nats-creds/eu-edge-0.creds")")

# ---- 3. plan every example ------------------------------------------------------------
for dir in "$TF_DIR"/examples/*/; do
  dir=${dir%/}
  name=examples/$(basename "$dir")
  export TF_DATA_DIR=$work/data/$(echo "$name" | tr / _)
  log=$work/plan-$(basename "$dir").log
  if ! tf -chdir="$dir" plan -input=false -lock=false -refresh=false -no-color \
    -var "postgres_url=postgres://keymesh:$PG_SECRET@db.internal:5432/keymesh" \
    -var "admin_password=$ADMIN_PW" -var "gossip_keys=[\"$GOSSIP\"]" \
    -var "origin_keys_dir=$work/keys" -var "dist_dir=$work/dist" >"$log" 2>&1; then
    echo "tf-check: plan FAILED in $name" >&2; tail -n 40 "$log" >&2; fail=1; continue
  fi
  summary=$(grep -E '^Plan: [0-9]+ to add' "$log" || true)
  case "$summary" in "Plan: 0 to add"* | "") echo "tf-check: the plan of $name creates nothing" >&2; fail=1; continue ;; esac
  for s in "${SECRETS[@]}"; do
    if grep -qF -- "$s" "$log"; then echo "tf-check: the plan of $name prints a secret it was given" >&2; fail=1; fi
  done
  echo "tf-check: planned   $name (${summary%.}; no secret printed)"
done
[ "$fail" = 0 ] || exit 1

# ---- 4. validation: one bad input each --------------------------------------------------
# case NAME MODULE EXPECTED KEY=VALUE...: a root calling MODULE with its
# defaults below, KEY=VALUE replacing or adding attributes, must fail to plan
# with EXPECTED in the error. EXPECTED "" means the plan must succeed.
declare -A SITE=(
  [site_name]='"eu"'
  [edges]='[{ host = "10.0.0.1" }, { host = "10.0.0.2", arch = "arm64" }]'
  [nats_urls]='["nats://10.0.0.9:4222"]'
  [origin_public_key]="\"$PUB\""
  [upstream_urls]='["http://10.0.1.1:8000"]'
  [gossip_keys]="[\"$GOSSIP\"]"
  [dist_dir]="\"$work/dist\""
  [nats_creds_dir]="\"$work/keys/nats-creds\""
)
declare -A CP=(
  [regions]='{ eu = { nats = [{ host = "10.0.0.1" }, { host = "10.0.0.2" }, { host = "10.0.0.3" }], origins = [{ host = "10.0.0.4" }] } }'
  [postgres_url]="\"postgres://k:$PG_SECRET@db/k\""
  [origin_keys_dir]="\"$work/keys\""
  [dist_dir]="\"$work/dist\""
)
ncase=0
case_() {
  local name=$1 module=$2 expect=$3; shift 3
  local dir=$work/cases/$name kv k attrs=""
  declare -A a=()
  if [ "$module" = site ]; then for k in "${!SITE[@]}"; do a[$k]=${SITE[$k]}; done; else for k in "${!CP[@]}"; do a[$k]=${CP[$k]}; done; fi
  for kv in "$@"; do a[${kv%%=*}]=${kv#*=}; done
  for k in "${!a[@]}"; do [ "${a[$k]}" = DELETE ] || attrs+="  $k = ${a[$k]}"$'\n'; done
  mkdir -p "$dir"
  printf 'module "m" {\n  source = "%s"\n%s}\n' "$(realpath --relative-to="$dir" "$TF_DIR/modules/$module")" "$attrs" >"$dir/main.tf"
  init "$dir" "case-$name" || { fail=1; return; }
  local out rc=0
  out=$(tf -chdir="$dir" plan -input=false -lock=false -refresh=false -no-color 2>&1) || rc=$?
  out=$(printf '%s' "$out" | tr -s ' \n│' ' ')
  ncase=$((ncase + 1))
  if [ -z "$expect" ]; then
    [ "$rc" = 0 ] || { echo "tf-check: case $name should plan, but: $(printf '%s' "$out" | tail -c 600)" >&2; fail=1; }
  elif [ "$rc" = 0 ]; then
    echo "tf-check: case $name planned; want an error with \"$expect\"" >&2; fail=1
  elif ! grep -qF -- "$expect" <<<"$out"; then
    echo "tf-check: case $name failed without \"$expect\": $(printf '%s' "$out" | tail -c 600)" >&2; fail=1
  fi
}
case_ site-ok site ""
case_ site-name site "site_name must be 1-32 characters" site_name='"EU_1"'
case_ site-no-edges site "A site has between 1 and 64 edges." edges='[]'
case_ site-arch site 'arch must be "amd64" or "arm64"' edges='[{ host = "10.0.0.1", arch = "386" }]'
case_ site-listen site "listen, admin_listen and gossip_listen must be host:port" edges='[{ host = "10.0.0.1", listen = "8080" }]'
case_ site-upstream site "upstream_urls must be http:// or https:// URLs." upstream_urls='["ftp://10.0.1.1"]'
case_ site-nats site "nats_urls needs at least one nats:// or tls:// URL" nats_urls='[]'
case_ site-pubkey site "origin_public_key must be a base64 Ed25519 public key" origin_public_key='"not-a-key"'
case_ site-gossip site "Every gossip key must be base64 of 16, 24 or 32 random bytes" gossip_keys='["c2hvcnQ="]'
case_ site-pm site 'process_manager must be "systemd" or "none".' process_manager='"supervisord"'
case_ site-nats-creds site "nats_creds_dir lacks <edge name>.creds for an edge" nats_creds_dir="\"$work/empty\""
case_ site-nats-tls site "nats_tls.ca_file must be a readable local file" nats_tls="{ ca_file = \"$work/none.pem\" }"
case_ cp-ok control-plane ""
case_ cp-nats-auth control-plane "nats_auth needs origin_keys_dir with nats-config.conf and origin.creds" origin_keys_dir="\"$work/keys-no-nats\""
case_ cp-no-nats-auth control-plane "" origin_keys_dir="\"$work/keys-no-nats\"" nats_auth=false
case_ cp-two-nats control-plane "Every region runs a NATS cluster of 3 (or 5) servers" \
  regions='{ eu = { nats = [{ host = "10.0.0.1" }, { host = "10.0.0.2" }], origins = [{ host = "10.0.0.4" }] } }'
case_ cp-no-origin control-plane "At least one region needs an origin replica." \
  regions='{ eu = { nats = [{ host = "10.0.0.1" }, { host = "10.0.0.2" }, { host = "10.0.0.3" }] } }'
case_ cp-region control-plane "region names are 1-32 lowercase letters" \
  regions='{ "EU" = { nats = [{ host = "10.0.0.1" }, { host = "10.0.0.2" }, { host = "10.0.0.3" }], origins = [{ host = "10.0.0.4" }] } }'
case_ cp-listen control-plane "An origin's listen is host:port" \
  regions='{ eu = { nats = [{ host = "10.0.0.1" }, { host = "10.0.0.2" }, { host = "10.0.0.3" }], origins = [{ host = "10.0.0.4", listen = "7000" }] } }'
case_ cp-postgres control-plane "postgres_url must be a postgres:// or postgresql:// URL" postgres_url='"mysql://k@db/k"'
case_ cp-keys control-plane "Set exactly one of origin_keys_dir" origin_keys_dir=DELETE
case_ cp-replicas control-plane "stream_replicas is larger than a region's NATS cluster" stream_replicas=5
case_ cp-password control-plane "admin_password needs at least 12 characters" admin_password='"short"'
[ "$fail" = 0 ] || exit 1
echo "tf-check: $ncase validation cases answered as expected"
echo "tf-check: ok: ${#dirs[@]} configurations formatted and valid, examples planned, validations hold"
