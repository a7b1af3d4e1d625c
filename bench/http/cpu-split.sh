#!/bin/sh
# bench/http/cpu-split.sh: where the CPU of one request goes. Under wrk -t2 -c64 against
# `pgcorral run --web 2` (connection_limit=$BENCH_LIMIT, 8), for ping, health, accounts on
# the loop (examples/accounts.so) and on a thread (bench/http/accounts_thread.c), and for
# the raw client (pgbench -M prepared SELECT 1 on 2 x BENCH_LIMIT connections): CPU
# microseconds per request of the web workers, of the server's backends and of the load
# generator, from /proc over a window of BENCH_SECONDS (6). Requests are counted by the
# workers' own totals (ctl stats), transactions by pgbench.
#
# It explains bench-http's ratios: health cannot beat the raw client on a machine where
# wrk and one HTTP request already cost about what pgbench and one SELECT 1 cost.
# Run after `make bench-deps` (wrk); uses scripts/with-test-pg.sh like the others.
set -eu

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/../lib.sh"
LIMIT=${BENCH_LIMIT:-8}
SECONDS_=${BENCH_SECONDS:-6}
command -v wrk >/dev/null 2>&1 || { echo "cpu-split: wrk is missing: run 'make bench-deps'" >&2; exit 1; }

. "$root/scripts/pg-common.sh"
pg_user=$(pg_superuser)
tmp=$(mktemp -d /tmp/pgcorral-cpu-split.XXXXXX)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$tmp"

pgbench_() { "$(pg_bindir)/pgbench" -h "$PGC_TEST_PGDIR" -p "$PGC_TEST_PGPORT" -U "$pg_user" "$@"; }
pgbench_ -i -q -s 1 postgres >"$tmp/init.log" 2>&1 || { cat "$tmp/init.log" >&2; exit 1; }
echo 'SELECT 1;' >"$tmp/select1.sql"
chmod 644 "$tmp/select1.sql"
bench_accounts_setup "$tmp"

# ticks PID...: user + system clock ticks of those processes (fields 14 and 15 of stat,
# counted after the command name, which may hold spaces); one awk for all of them
ticks() {
    files=""
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && files="$files /proc/$p/stat"
    done
    # shellcheck disable=SC2086 # files is a list of paths without spaces
    [ -n "$files" ] && awk '{ sub(/.*\) /, ""); split($0, f, " "); s += f[12] + f[13] }
                            END { print s + 0 }' $files 2>/dev/null || echo 0
}
backends() { pgrep -f 'postgres: .* postgres ' | tr '\n' ' '; }
hz=$(getconf CLK_TCK)
port=$((19000 + $$ % 900))
sep='?'
case $PGC_TEST_DATABASE_URL in *\?*) sep='&' ;; esac

DATABASE_URL="$PGC_TEST_DATABASE_URL${sep}connection_limit=$LIMIT" "$BUILD/pgcorral" run --web 2 --jobs 0 \
    --plugin "$BUILD/examples/accounts.so" --plugin "$tmp/accounts_thread.so" \
    --listen "127.0.0.1:$port" --control "$tmp/ctl.sock" >"$tmp/pgcorral.log" 2>&1 &
server_pid=$!
i=0
until curl -sf -o /dev/null "http://127.0.0.1:$port/api/v1/ping"; do
    i=$((i + 1))
    [ $i -lt 150 ] || { cat "$tmp/pgcorral.log" >&2; exit 1; }
    sleep 0.1
done
web=$(for p in $(pgrep -P "$server_pid"); do grep -q '^pgcorral: web' "/proc/$p/comm" && echo "$p"; done | tr '\n' ' ')
# requests: HTTP requests the workers answered so far (the totals come first)
requests() { "$BUILD/pgcorral" ctl --control "$tmp/ctl.sock" stats --json |
    grep -o '"http_requests":[0-9]*' | head -1 | cut -d: -f2; }

printf '%-22s %9s %14s %14s %14s\n' "load" "req/s" "web us/req" "server us/req" "client us/req"
# split NAME URL [wrk -s SCRIPT]
split() {
    name=$1 url=$2
    shift 2
    wrk -t2 -c64 -d2s "$@" "$url" >/dev/null 2>&1 || true # warm-up: pools, pipelines
    wrk -t2 -c64 -d$((SECONDS_ + 30))s "$@" "$url" >"$tmp/wrk.out" 2>&1 &
    wpid=$!
    sleep 1
    pgs=$(backends)
    # shellcheck disable=SC2086 # pid lists
    w0=$(ticks $web) p0=$(ticks $pgs) k0=$(ticks $wpid) r0=$(requests) t0=$(date +%s.%N)
    sleep "$SECONDS_"
    # shellcheck disable=SC2086
    w1=$(ticks $web) p1=$(ticks $pgs) k1=$(ticks $wpid) r1=$(requests) t1=$(date +%s.%N)
    kill $wpid 2>/dev/null || true # the window is measured: the rest of wrk's run is not needed
    { wait $wpid; } 2>/dev/null || true
    awk -v n=$((r1 - r0)) -v w=$((w1 - w0)) -v p=$((p1 - p0)) -v k=$((k1 - k0)) -v hz="$hz" \
        -v t0="$t0" -v t1="$t1" -v name="$name" 'BEGIN {
            us = 1e6 / hz
            printf "%-22s %9.0f %14.1f %14.1f %14.1f\n", name, n / (t1 - t0), w * us / n, p * us / n, k * us / n
        }'
}
split ping "http://127.0.0.1:$port/api/v1/ping"
split health "http://127.0.0.1:$port/api/v1/health"
split accounts "http://127.0.0.1:$port/api/v1/accounts/1" -s "$tmp/accounts.lua"
split accounts-thread "http://127.0.0.1:$port/bench/accounts-thread/1" -s "$tmp/accounts-thread.lua"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""

# The raw client on as many connections as the pools hold.
"$(pg_bindir)/pgbench" -h "$PGC_TEST_PGDIR" -p "$PGC_TEST_PGPORT" -U "$pg_user" -n -M prepared \
    -f "$tmp/select1.sql" -c $((2 * LIMIT)) -j 2 -T $((SECONDS_ + 4)) postgres >"$tmp/pgbench.out" 2>&1 &
bpid=$!
sleep 1
pgs=$(backends)
# shellcheck disable=SC2086 # a pid list
p0=$(ticks $pgs) k0=$(ticks $bpid) t0=$(date +%s.%N)
sleep "$SECONDS_"
# shellcheck disable=SC2086
p1=$(ticks $pgs) k1=$(ticks $bpid) t1=$(date +%s.%N)
wait $bpid || true
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$tmp/pgbench.out" | head -1)
awk -v tps="${tps:-0}" -v p=$((p1 - p0)) -v k=$((k1 - k0)) -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {
    n = tps * (t1 - t0); us = 1e6 / hz
    printf "%-22s %9.0f %14s %14.1f %14.1f\n", "pgbench select1", tps, "-", p * us / n, k * us / n
}'
echo "machine: $(nproc) cores, Linux $(uname -r); connection_limit $LIMIT per web worker, pgbench -c $((2 * LIMIT))"
