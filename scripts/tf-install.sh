#!/usr/bin/env bash
# Installs terraform $TF_VERSION (default 1.5.7) at $TERRAFORM (default
# ./bin/tools/terraform) with `go install`, unless that exact version is there.
# Only the Go module proxy is needed; no HashiCorp release download.
set -euo pipefail
TF_VERSION=${TF_VERSION:-1.5.7}
TERRAFORM=${TERRAFORM:-$PWD/bin/tools/terraform}
GO=${GO:-go}
case "$TERRAFORM" in /*) ;; *) TERRAFORM=$PWD/$TERRAFORM ;; esac

if [ -x "$TERRAFORM" ]; then
  have=$(CHECKPOINT_DISABLE=1 "$TERRAFORM" version 2>/dev/null || true)
  case "$have" in "Terraform v$TF_VERSION"*) exit 0 ;; esac
fi
dir=$(dirname "$TERRAFORM")
mkdir -p "$dir"
echo "tf-install: building terraform v$TF_VERSION into $dir (takes a few minutes)" >&2
GOBIN=$dir CGO_ENABLED=0 "$GO" install "github.com/hashicorp/terraform@v$TF_VERSION"
if [ "$(basename "$TERRAFORM")" != terraform ]; then mv "$dir/terraform" "$TERRAFORM"; fi
CHECKPOINT_DISABLE=1 "$TERRAFORM" version 2>/dev/null | sed -n 1p
