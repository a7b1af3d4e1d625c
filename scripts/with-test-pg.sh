#!/bin/sh
# Runs a command (the TAP suite) against a throwaway PostgreSQL cluster on its own port,
# and always stops and removes it afterwards, also when the command fails.
# Exports for the tests:
#   PGC_TEST_DATABASE_URL  superuser URL over the unix socket
#   PGC_TEST_PGDIR         cluster folder (data/ and the socket), for restart tests
#   PGC_TEST_PGBIN         server binaries (pg_ctl), PGC_TEST_PGPORT the port
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/pg-common.sh"

port=${PGC_TEST_PGPORT:-$((54300 + $$ % 500))}
dir=$(mktemp -d /tmp/pgcorral-test.XXXXXX)
chmod 755 "$dir"

cleanup() {
    pg_stop "$dir"
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

pg_init "$dir" "$port"
# max_connections is raised so that several multi-process tests fit at once.
pg_start "$dir" "$port" "-c max_connections=200 -c fsync=off"

PGC_TEST_DATABASE_URL="postgresql://$(pg_superuser)@/postgres?host=$dir&port=$port"
PGC_TEST_PGDIR=$dir
PGC_TEST_PGBIN=$(pg_bindir)
PGC_TEST_PGPORT=$port
export PGC_TEST_DATABASE_URL PGC_TEST_PGDIR PGC_TEST_PGBIN PGC_TEST_PGPORT

status=0
"$@" || status=$?
exit $status
