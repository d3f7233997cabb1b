#!/usr/bin/env bash
# Makes sure promtool is there for `make check-monitoring` (deploy/monitoring:
# `promtool check config`, `check rules`, `test rules`) and for the
# deploy/monitoring Go test that parses the dashboard's PromQL with it
# (`make test-deps` calls this, as .ci/run does).
# It installs Debian's "prometheus" package, which ships /usr/bin/promtool,
# when promtool is missing and we are root (as in CI) or have password-less
# sudo, without letting the package start its system service: nothing here
# uses it. Silent and fast when promtool is there. Prints the promtool path
# on stdout.
set -euo pipefail

find_promtool() { command -v promtool 2>/dev/null || { [ -x /usr/bin/promtool ] && echo /usr/bin/promtool; }; }
if p=$(find_promtool); then echo "$p"; exit 0; fi

if [ "$(id -u)" -eq 0 ]; then
	SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	SUDO=(sudo -n)
else
	echo "promtool: not found and not root: install the Debian prometheus package (apt-get install prometheus)" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "promtool: not found and no apt-get: install promtool (on PATH or at /usr/bin/promtool)" >&2
	exit 1
fi

# A policy-rc.d that refuses every start keeps the package's postinst from
# starting the system Prometheus (invoke-rc.d asks it); one already there
# (as in many container images) is left alone.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	"${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
	trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi

echo "promtool: installing the prometheus package (apt-get)" >&2
"${SUDO[@]}" timeout 300 apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Where no policy-rc.d was honoured (systemd started it anyway), stop it and
# keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	"${SUDO[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
	"${SUDO[@]}" service prometheus stop >/dev/null 2>&1 || true
fi
p=$(find_promtool) || { echo "promtool: prometheus installed but no promtool on PATH or at /usr/bin/promtool" >&2; exit 1; }
echo "promtool: installed $("$p" --version 2>&1 | head -1)" >&2
echo "$p"
