#!/usr/bin/env bash
# Installs terraform (TF_IMPL=terraform, the default) or OpenTofu
# (TF_IMPL=tofu) version $TF_VERSION (default 1.5.7) at $TERRAFORM (default
# ./bin/tools/terraform), built from source with the Go toolchain, unless
# that exact version is there. Only the Go module proxy is needed; no
# HashiCorp or OpenTofu release download.
#
# `go install MODULE@VERSION` refuses a module whose go.mod has replace
# directives, which every terraform since 1.6 and OpenTofu have. So the
# module's source is fetched with `go mod download` and built as the main
# module in a scratch copy, where its replaces apply. Terraform's replaces
# point at nested modules (the remote-state backends azurerm, consul, cos,
# gcs, kubernetes, oci, oss, pg, s3, and internal/legacy) that the module
# proxy's zip does not hold: those are dropped from go.mod and from
# internal/backend/init, so the binary has the local, http, inmem, remote
# and cloud backends only. keymesh's modules use the local backend; nothing
# else of terraform changes.
set -euo pipefail
TF_IMPL=${TF_IMPL:-terraform}
TF_VERSION=${TF_VERSION:-1.5.7}
TERRAFORM=${TERRAFORM:-$PWD/bin/tools/terraform}
GO=${GO:-go}
case "$TERRAFORM" in /*) ;; *) TERRAFORM=$PWD/$TERRAFORM ;; esac
case "$TF_IMPL" in
  terraform) module=github.com/hashicorp/terraform pkg=. banner=Terraform
    ldflags="-s -w -X github.com/hashicorp/terraform/version.dev=no" ;;
  tofu) module=github.com/opentofu/opentofu pkg=./cmd/tofu banner=OpenTofu
    ldflags="-s -w -X github.com/opentofu/opentofu/version.dev=no" ;;
  *) echo "tf-install: TF_IMPL must be terraform or tofu, not $TF_IMPL" >&2; exit 2 ;;
esac

if [ -x "$TERRAFORM" ]; then
  have=$(CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE=/dev/null "$TERRAFORM" version 2>/dev/null | sed -n 1p || true)
  [ "$have" != "$banner v$TF_VERSION" ] || exit 0
fi
dir=$(dirname "$TERRAFORM")
mkdir -p "$dir"
echo "tf-install: building $TF_IMPL v$TF_VERSION into $TERRAFORM (takes a few minutes)" >&2
t0=$SECONDS
src=$("$GO" mod download -json "$module@v$TF_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$src" ] && [ -d "$src" ] || { echo "tf-install: go mod download $module@v$TF_VERSION gave no source" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/keymesh-tf-install.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
# Local replaces whose directory the module zip left out (nested modules).
missing=$(sed -n -E 's#^(replace)?[[:space:]]*([^[:space:]]+)( v[^[:space:]]+)?[[:space:]]+=>[[:space:]]+(\.\.?/[^[:space:]]+)[[:space:]]*$#\2 \4#p' go.mod |
  while read -r p d; do [ -e "$d/go.mod" ] || echo "$p"; done)
init=internal/backend/init/init.go
for p in $missing; do
  "$GO" mod edit -dropreplace="$p" -droprequire="$p"
  [ -f "$init" ] || continue
  alias=$(sed -n -E "s#^[[:space:]]*([A-Za-z0-9_]+) \"$p\"\$#\1#p" "$init")
  [ -n "$alias" ] || continue
  sed -i -E "\#\"$p\"#d; /\b$alias\./d" "$init"
  echo "tf-install: without ${p#"$module"/} (its source is not in the module zip)" >&2
done
CGO_ENABLED=0 GOFLAGS=-mod=mod "$GO" build -trimpath -ldflags "$ldflags" -o "$TERRAFORM.new" "$pkg"
mv -f "$TERRAFORM.new" "$TERRAFORM"
got=$(CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE=/dev/null "$TERRAFORM" version 2>/dev/null | sed -n 1p)
[ "$got" = "$banner v$TF_VERSION" ] || { echo "tf-install: built $TERRAFORM says \"$got\", want \"$banner v$TF_VERSION\"" >&2; exit 1; }
echo "tf-install: $got built in $((SECONDS - t0))s" >&2
