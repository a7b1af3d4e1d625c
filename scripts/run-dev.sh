#!/bin/sh
# `make run`: a private PostgreSQL (created on first use), then the supervisor in the
# foreground with the example plugins. Ctrl-C stops both. The control socket is
# ./.pgcorral/control.sock. The database lives in ./.pgcorral/db, except as root: the server
# then runs as the postgres user, who may not be able to enter the checkout (root's home
# is 0700), so it lives in postgres's home, /var/lib/postgresql/pgcorral-dev/ID, one per
# checkout (ID: a checksum of the checkout's path).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/pg-common.sh"
top=$(cd "$here/.." && pwd)
BUILD=${BUILD:-build}
run_dir="$top/.pgcorral"
mkdir -p "$run_dir"
if [ "$(id -u)" -eq 0 ]; then
    dir="$(getent passwd postgres | cut -d: -f6)/pgcorral-dev/$(printf '%s' "$top" | cksum | cut -d' ' -f1)"
    mkdir -p "$(dirname "$dir")"
    chown postgres: "$(dirname "$dir")"
else
    dir="$run_dir/db"
fi
port=${PGCORRAL_DEV_PORT:-54329}

pg_init "$dir" "$port"
pg_start "$dir" "$port"
trap 'pg_stop "$dir"' EXIT
trap 'exit 130' INT TERM

: "${DATABASE_URL:=postgresql://$(pg_superuser)@/postgres?host=$dir&port=$port}"
export DATABASE_URL

plugins=""
for so in "$top/$BUILD"/examples/*.so; do
    [ -f "$so" ] && plugins="$plugins --plugin $so"
done

echo "pgcorral: dev database at $dir (port $port); control socket $run_dir/control.sock" >&2
echo "pgcorral: try '$BUILD/pgcorral ctl --control $run_dir/control.sock workers'" >&2
echo "pgcorral: for enqueue, migrate, check, ctl db: export DATABASE_URL='$DATABASE_URL'" >&2
# Not exec: the trap must stop PostgreSQL once the supervisor has exited.
# shellcheck disable=SC2086
"$top/$BUILD/pgcorral" run --control "$run_dir/control.sock" $plugins "$@" || status=$?
exit "${status:-0}"
