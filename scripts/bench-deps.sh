#!/usr/bin/env bash
# bench-deps: what `bench compare` needs besides Go — nginx from Debian's
# packages (installed when root and missing; quiet when already there).
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench-deps: nginx is missing; install the Debian package nginx (needs root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
timeout 300 apt-get update -qq
timeout 300 apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 \
  || timeout 300 apt-get install -y -qq --no-install-recommends nginx >/dev/null
# The package starts a system nginx on :80; bench runs its own, so stop that one.
if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
