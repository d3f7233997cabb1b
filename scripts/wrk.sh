#!/usr/bin/env bash
# Makes sure `bench compare` has its load generator: wrk (C, one thread,
# Lua-scripted POSTs), Debian's package "wrk". Installs it when it is
# missing and we are root (as in CI) or have password-less sudo; silent and
# fast when wrk is there. Without it, bench compare falls back to the
# bench's own generator and says so in its report (its test runs either
# way; under CI it wants wrk). `make bench-deps` and `make test-deps` call it.
set -euo pipefail

command -v wrk >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -eq 0 ]; then
	SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	SUDO=(sudo -n)
else
	echo "wrk.sh: wrk not found and not root: install the Debian wrk package (apt-get install wrk); bench compare uses its own, slower generator" >&2
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "wrk.sh: wrk not found and no apt-get: install wrk (on PATH)" >&2
	exit 0
fi
echo "wrk.sh: installing the wrk package (apt-get)" >&2
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1; then
	# A fresh image has no package lists yet.
	"${SUDO[@]}" timeout 300 apt-get update -qq
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
command -v wrk >/dev/null 2>&1 || { echo "wrk.sh: wrk installed but not on PATH" >&2; exit 1; }
echo "wrk.sh: installed $(wrk -v 2>&1 | head -1 || true)" >&2
