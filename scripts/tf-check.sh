#!/usr/bin/env bash
# tf-check: `terraform fmt -check -recursive`, then `init -backend=false` and
# `validate` in every module and example under $1 (default deploy/terraform).
# Offline: the configurations use only terraform's builtin provider
# (terraform_data), so init downloads nothing; a plugin download would fail
# here (TF_PLUGIN_CACHE_DIR and the network are not used) and fail the check.
set -euo pipefail
TF_DIR=${1:-deploy/terraform}
TERRAFORM=${TERRAFORM:-terraform}
case "$TERRAFORM" in */*) case "$TERRAFORM" in /*) ;; *) TERRAFORM=$PWD/$TERRAFORM ;; esac ;; esac
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
# Keep .terraform/ and lock files out of the source tree.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# An empty, unreachable provider mirror: any provider other than the
# builtin one makes init fail instead of reaching the registry.
mkdir -p "$work/mirror"
cat >"$work/terraformrc" <<RC
provider_installation {
  filesystem_mirror {
    path    = "$work/mirror"
    include = ["*/*/*"]
  }
}
RC
export TF_CLI_CONFIG_FILE=$work/terraformrc

echo "tf-check: terraform fmt -check -recursive $TF_DIR"
if ! "$TERRAFORM" fmt -check -recursive -diff "$TF_DIR"; then
  echo "tf-check: files above need \`terraform fmt -recursive $TF_DIR\`" >&2
  exit 1
fi

fail=0
n=0
while IFS= read -r dir; do
  n=$((n + 1))
  name=${dir#"$TF_DIR"/}
  export TF_DATA_DIR=$work/data/$(echo "$name" | tr / _)
  if ! out=$("$TERRAFORM" -chdir="$dir" init -backend=false -input=false -no-color 2>&1); then
    echo "tf-check: init FAILED in $name" >&2; echo "$out" >&2; fail=1; continue
  fi
  if [ -e "$dir/.terraform.lock.hcl" ] && ! git ls-files --error-unmatch "$dir/.terraform.lock.hcl" >/dev/null 2>&1; then
    echo "tf-check: $name needs a provider plugin (a lock file appeared); only the builtin provider is allowed" >&2
    rm -f "$dir/.terraform.lock.hcl"; fail=1; continue
  fi
  if out=$("$TERRAFORM" -chdir="$dir" validate -no-color 2>&1); then
    echo "tf-check: ok   $name"
  else
    echo "tf-check: FAIL $name" >&2; echo "$out" >&2; fail=1
  fi
done < <(find "$TF_DIR/modules" "$TF_DIR/examples" -name '*.tf' -not -path '*/.terraform/*' -printf '%h\n' | sort -u)

if [ "$n" -eq 0 ]; then echo "tf-check: no configurations found under $TF_DIR" >&2; exit 1; fi
[ "$fail" -eq 0 ] || exit 1
echo "tf-check: $n configurations formatted and valid"
