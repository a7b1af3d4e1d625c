#!/bin/sh
# `make run`: a private PostgreSQL under ./.pgcorral (created on first use), then the
# supervisor in the foreground with the example plugins. Ctrl-C stops both.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/pg-common.sh"
top=$(cd "$here/.." && pwd)
BUILD=${BUILD:-build}
dir="$top/.pgcorral"
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

echo "pgcorral: dev database at $dir (port $port); control socket $dir/control.sock" >&2
echo "pgcorral: try '$BUILD/pgcorral ctl --control $dir/control.sock workers'" >&2
echo "pgcorral: for enqueue, migrate, check, ctl db: export DATABASE_URL='$DATABASE_URL'" >&2
# Not exec: the trap must stop PostgreSQL once the supervisor has exited.
# shellcheck disable=SC2086
"$top/$BUILD/pgcorral" run --control "$dir/control.sock" $plugins "$@" || status=$?
exit "${status:-0}"
