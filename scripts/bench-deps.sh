#!/usr/bin/env bash
# bench-deps: what `bench compare` needs besides Go — nginx and wrk from
# Debian's packages, installed by scripts/nginxtest.sh and scripts/wrk.sh
# (when root and missing; quiet when already there). Unlike the tests, the
# benchmark cannot do without nginx; without wrk it falls back to its own
# load generator and says so.
set -euo pipefail
"$(dirname "$0")/nginxtest.sh"
"$(dirname "$0")/wrk.sh"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "bench-deps: nginx is missing; install the Debian package nginx (needs root)" >&2
  exit 1
fi
