#!/usr/bin/env bash
# Makes sure the PostgreSQL half of the origin store tests can run: they use
# $KEYMESH_TEST_POSTGRES_URL, or start a throwaway cluster with the initdb and
# pg_ctl of the Debian "postgresql" package. This installs that package when
# it is missing and we are root (as in CI) or have password-less sudo.
# Silent and fast when there is nothing to do. `make test` and .ci/run call it.
set -euo pipefail

[ -n "${KEYMESH_TEST_POSTGRES_URL:-}" ] && exit 0

have_initdb() {
	command -v initdb >/dev/null 2>&1 && return 0
	compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_initdb && exit 0

if [ "$(id -u)" -eq 0 ]; then
	SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	SUDO=(sudo -n)
else
	echo "pgtest: initdb not found and not root: install the postgresql package (apt-get install postgresql) or set KEYMESH_TEST_POSTGRES_URL; the PostgreSQL store tests skip (fail when CI is set)" >&2
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "pgtest: initdb not found and no apt-get: install PostgreSQL's server binaries or set KEYMESH_TEST_POSTGRES_URL" >&2
	exit 0
fi

echo "pgtest: installing the postgresql package (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_initdb || { echo "pgtest: postgresql installed but initdb still not found" >&2; exit 1; }
echo "pgtest: installed $(ls -d /usr/lib/postgresql/*/bin | tail -n1)" >&2
