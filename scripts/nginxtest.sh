#!/usr/bin/env bash
# Makes sure the nginx half of the bench tests can run (bench.TestNginxStaticMap
# starts its own nginx on a random port; `bench compare` does the same). This
# installs Debian's "nginx" package when it is missing and we are root (as in
# CI) or have password-less sudo, without letting the package start its system
# service on port 80: nothing here uses it. Silent and fast when nginx is
# there. `make test-deps` (so `make test` and .ci/run) and `make bench-deps`
# call it.
set -euo pipefail

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
have_nginx && exit 0

if [ "$(id -u)" -eq 0 ]; then
	SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	SUDO=(sudo -n)
else
	echo "nginxtest: nginx not found and not root: install the Debian nginx package (apt-get install nginx); the nginx bench test skips (fails when CI is set)" >&2
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "nginxtest: nginx not found and no apt-get: install nginx (the binary on PATH or at /usr/sbin/nginx)" >&2
	exit 0
fi

# A policy-rc.d that refuses every start keeps the package's postinst from
# starting the system nginx (invoke-rc.d asks it); one already there (as in
# many container images) is left alone.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	"${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
	trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi

echo "nginxtest: installing the nginx package (apt-get)" >&2
"${SUDO[@]}" timeout 300 apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends nginx >/dev/null
# Where no policy-rc.d was honoured (systemd started it anyway), stop it and
# keep it from starting at boot: the tests run their own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	"${SUDO[@]}" systemctl disable --now nginx >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
	"${SUDO[@]}" service nginx stop >/dev/null 2>&1 || true
fi
have_nginx || { echo "nginxtest: nginx installed but not found on PATH or at /usr/sbin/nginx" >&2; exit 1; }
echo "nginxtest: installed $(/usr/sbin/nginx -v 2>&1 || true)" >&2
