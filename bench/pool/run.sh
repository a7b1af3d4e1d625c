#!/bin/sh
# bench/pool: pgcorral's async pool against its peers, side by side in one run, on a
# throwaway PostgreSQL that this script starts and always stops:
#   pool     2 workers x connection_limit 8, closed loop of pgbench's select-only query
#            through rt_pool_query() (bench/pool/pool_bench.c)
#   direct   pgbench -S -M prepared, 16 connections straight to the server (the limit)
#   bouncer  the same pgbench through PgBouncer in transaction mode, 16 server connections
# Each runs RUNS times (interleaved); the medians go into bench/RESULTS.md, section "pool".
# Also: callgrind's instruction count of one fast-path acquire + release; and the pool with
# PIPE_CLIENTS (32) queries in flight per worker, with pipeline_depth=8 and =0 (issue 14:
# auto-pipelining; with only LIMIT in flight a pool never pipelines).
# Knobs (environment): DURATION (s, 10), RUNS (3), SCALE (pgbench scale, 10), BUILD.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/pg-common.sh"

BUILD=${BUILD:-build}
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
SCALE=${SCALE:-10}
WORKERS=2
LIMIT=8
CONNS=$((WORKERS * LIMIT))
ITERATIONS=100000

port=$((55300 + $$ % 300))
bport=$((port + 300))
work=$(mktemp -d /tmp/pgcorral-bench-pool.XXXXXX)
chmod 755 "$work"
pgdir=$work/pg
bdir=$work/bouncer

# Stops the PgBouncer daemon this script started (its pidfile), waiting until it is gone.
bouncer_stop() {
    [ -f "$bdir/pgbouncer.pid" ] || return 0
    bpid=$(cat "$bdir/pgbouncer.pid")
    kill "$bpid" 2>/dev/null || return 0
    i=0
    while kill -0 "$bpid" 2>/dev/null && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
}

cleanup() {
    bouncer_stop
    pg_stop "$pgdir"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "bench/pool: $*" >&2; }

# ---- build the driver against the library ---------------------------------------------
if [ ! -f "$root/$BUILD/libpgc_runtime.a" ]; then
    say "building $BUILD/libpgc_runtime.a"
    make -C "$root" BUILD="$BUILD" "$BUILD/libpgc_runtime.a" "$BUILD/libpgc_shm.a" >/dev/null
fi
# shellcheck disable=SC2046 # pkg-config's flags are words
cc -I"$root" -I"$root/runtime" $(pkg-config --cflags libpq libuv liburing jansson) \
    -O2 -g -std=c11 -D_GNU_SOURCE \
    -Wall -Wextra -Werror -Wno-unused-parameter -pthread \
    -o "$work/pool_bench" "$here/pool_bench.c" "$root/$BUILD/libpgc_runtime.a" "$root/$BUILD/libpgc_shm.a" \
    $(pkg-config --libs libpq libuv liburing jansson) -ldl -lm -pthread

# ---- the server ------------------------------------------------------------------------
bindir=$(pg_bindir)
user=$(pg_superuser)
say "starting PostgreSQL on port $port (scale $SCALE)"
pg_init "$pgdir" "$port"
pg_start "$pgdir" "$port" "-c max_connections=100 -c fsync=off -c synchronous_commit=off -c shared_buffers=256MB"
"$bindir/createdb" -h "$pgdir" -p "$port" -U "$user" bench
"$bindir/pgbench" -h "$pgdir" -p "$port" -U "$user" -i -q -s "$SCALE" bench >"$work/init.log" 2>&1 ||
    { cat "$work/init.log" >&2; exit 1; }

# ---- PgBouncer, transaction mode, as the postgres user when we are root ------------------
mkdir -p "$bdir"
printf '"%s" ""\n' "$user" >"$bdir/userlist.txt"
bver=$(pgbouncer --version 2>/dev/null | sed -n 's/^PgBouncer \([0-9.]*\).*/\1/p')
# Prepared statements through transaction pooling need PgBouncer 1.21 (max_prepared_statements).
bmode=prepared
extra=
case "$bver" in
1.1[0-9]* | 1.[0-9] | 1.[0-9].* | 1.20*) bmode=extended ;;
*) extra="max_prepared_statements = 200" ;;
esac
cat >"$bdir/pgbouncer.ini" <<EOF
[databases]
bench = host=$pgdir port=$port dbname=bench
[pgbouncer]
listen_addr =
listen_port = $bport
unix_socket_dir = $bdir
auth_type = trust
auth_file = $bdir/userlist.txt
pool_mode = transaction
default_pool_size = $CONNS
max_db_connections = $CONNS
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = $bdir/pgbouncer.log
pidfile = $bdir/pgbouncer.pid
$extra
EOF
if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$bdir"; fi
# PgBouncer refuses to run as root; -d: it daemonizes and writes its pidfile.
as_pg_user pgbouncer -d "$bdir/pgbouncer.ini" >"$work/bouncer.out" 2>&1 ||
    { cat "$work/bouncer.out" "$bdir/pgbouncer.log" >&2; exit 1; }
i=0
until [ -S "$bdir/.s.PGSQL.$bport" ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && { say "PgBouncer did not start"; cat "$bdir/pgbouncer.log" >&2; exit 1; }
    sleep 0.1
done

# ---- the runs -------------------------------------------------------------------------
pool_url="postgresql://$user@/bench?host=$pgdir&port=$port&connection_limit=$LIMIT"

# Client CPU per query (us): user + system time of the client process(es) over every
# query they finished, from /usr/bin/time's "%U %S" in $work/cpu. Noise-proof where tps
# is not: it does not depend on what else the machine's cores are doing.
cpu_per_query() { # queries
    awk -v n="$1" '{ printf "%.2f\n", ($1 + $2) * 1e6 / n }' "$work/cpu"
}

# Prints "TPS CPU_US_PER_QUERY". $1: URL (default pool_url), $2: clients per worker.
run_pool() {
    POOL_BENCH_CLIENTS=${2:-} /usr/bin/time -f "%U %S" -o "$work/cpu" \
        "$work/pool_bench" run "${1:-$pool_url}" "$WORKERS" "$DURATION" "$SCALE" >"$work/out" 2>&1 ||
        { cat "$work/out" >&2; exit 1; }
    echo "$(sed -n 's/^tps=\([0-9.]*\).*/\1/p' "$work/out")" \
        "$(cpu_per_query "$(sed -n 's/.* all_queries=\([0-9]*\).*/\1/p' "$work/out")")"
}

run_pgbench() { # host port mode; prints "TPS CPU_US_PER_QUERY" (pgbench's own CPU)
    /usr/bin/time -f "%U %S" -o "$work/cpu" "$bindir/pgbench" -h "$1" -p "$2" -U "$user" -n -S \
        -M "$3" -c "$CONNS" -j 2 -T "$DURATION" bench >"$work/out" 2>&1 ||
        { cat "$work/out" >&2; exit 1; }
    if grep -q "aborted" "$work/out"; then
        cat "$work/out" >&2
        exit 1
    fi
    echo "$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$work/out" |
        awk '{ printf "%.1f", $1 }')" \
        "$(cpu_per_query "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/out")")"
}

pool_tps='' direct_tps='' bouncer_tps='' pair_direct='' pair_bouncer=
pool_cpu='' direct_cpu='' bouncer_cpu=
PIPE_CLIENTS=${PIPE_CLIENTS:-32}
pipe_on_tps='' pipe_off_tps='' pair_pipe='' pair_pipe_direct='' pipe_on_cpu='' pipe_off_cpu=
r=1
while [ $r -le "$RUNS" ]; do
    # Each prints "TPS CPU"; a failure exits the script (set -e sees the assignment fail).
    pr=$(run_pool)
    dr=$(run_pgbench "$pgdir" "$port" prepared)
    br=$(run_pgbench "$bdir" "$bport" "$bmode")
    p=${pr% *} d=${dr% *} b=${br% *}
    pool_cpu="$pool_cpu ${pr#* }"
    direct_cpu="$direct_cpu ${dr#* }"
    bouncer_cpu="$bouncer_cpu ${br#* }"
    say "run $r/$RUNS: pool $p tps (${pr#* } us CPU/query), direct $d tps (${dr#* } us)," \
        "pgbouncer $b tps"
    pool_tps="$pool_tps $p"
    direct_tps="$direct_tps $d"
    bouncer_tps="$bouncer_tps $b"
    # Each run's ratios: its three measurements ran back to back, under the same load.
    pair_direct="$pair_direct $(awk -v a="$p" -v b="$d" 'BEGIN { printf "%.3f", a / b }')"
    pair_bouncer="$pair_bouncer $(awk -v a="$p" -v b="$b" 'BEGIN { printf "%.3f", a / b }')"
    # Auto-pipelining: more callers than connections, pipeline_depth 8 vs 0.
    on=$(run_pool "$pool_url&pipeline_depth=8" "$PIPE_CLIENTS")
    off=$(run_pool "$pool_url&pipeline_depth=0" "$PIPE_CLIENTS")
    pipe_on_tps="$pipe_on_tps ${on% *}"
    pipe_off_tps="$pipe_off_tps ${off% *}"
    pipe_on_cpu="$pipe_on_cpu ${on#* }"
    pipe_off_cpu="$pipe_off_cpu ${off#* }"
    pair_pipe="$pair_pipe $(awk -v a="${on% *}" -v b="${off% *}" 'BEGIN { printf "%.3f", a / b }')"
    pair_pipe_direct="$pair_pipe_direct $(awk -v a="${on% *}" -v b="$d" 'BEGIN { printf "%.3f", a / b }')"
    say "run $r/$RUNS: $PIPE_CLIENTS in flight per worker: pipeline_depth=8 ${on% *} tps," \
        "pipeline_depth=0 ${off% *} tps"
    r=$((r + 1))
done

# median "V1 V2 ...": the middle value (the mean of the two middle ones for an even count).
median() {
    echo "$1" | tr -s ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
pc=$(median "$pool_cpu")
dc=$(median "$direct_cpu")
bc=$(median "$bouncer_cpu")
pm=$(median "$pool_tps")
dm=$(median "$direct_tps")
bm=$(median "$bouncer_tps")
# The goals are judged on the median of the per-run ratios, which cancels the load that
# other work puts on a shared machine; the ratio of the medians is shown beside it.
ratio_direct=$(awk -v a="$(median "$pair_direct")" 'BEGIN { printf "%.2f", a }')
ratio_bouncer=$(awk -v a="$(median "$pair_bouncer")" 'BEGIN { printf "%.2f", a }')
mratio_direct=$(awk -v a="$pm" -v b="$dm" 'BEGIN { printf "%.2f", a / b }')
mratio_bouncer=$(awk -v a="$pm" -v b="$bm" 'BEGIN { printf "%.2f", a / b }')
list() { # "V1 V2 ...": two decimals, comma-separated
    echo "$1" | tr -s ' ' '\n' | grep . | awk '{ printf "%s%.2f", (NR > 1 ? ", " : ""), $1 } END { print "" }'
}

# ---- instructions of one acquire + release --------------------------------------------
say "callgrind: $ITERATIONS x acquire + release"
valgrind --tool=callgrind --toggle-collect=bench_acqrel --callgrind-out-file="$work/cg.out" \
    "$work/pool_bench" acqrel "$pool_url" "$ITERATIONS" >"$work/cg.log" 2>&1 ||
    { cat "$work/cg.log" >&2; exit 1; }
total_ir=$(sed -n 's/^summary: \([0-9]*\).*/\1/p; s/^totals: \([0-9]*\).*/\1/p' "$work/cg.out" | head -n 1)
# bench_acqrel's own instructions are the loop around the calls, not the pool.
self_ir=$(callgrind_annotate --inclusive=no "$work/cg.out" 2>/dev/null |
    awk '/bench_acqrel/ { gsub(",", "", $1); print $1; exit }')
self_ir=${self_ir:-0}
per_op=$(awk -v t="$total_ir" -v n="$ITERATIONS" 'BEGIN { printf "%.0f", t / n }')
per_op_pool=$(awk -v t="$total_ir" -v s="$self_ir" -v n="$ITERATIONS" 'BEGIN { printf "%.0f", (t - s) / n }')

# ---- report ---------------------------------------------------------------------------
verdict() { # value op goal
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN { ok = (op == ">=") ? v >= g : v <= g; print ok ? "met" : "missed" }'
}
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
pgver=$("$bindir/postgres" --version | sed 's/.*) //')
machine="$cpu, $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
section=$work/section.md
cat >"$section" <<EOF
<!-- pool:begin (written by bench/pool/run.sh; do not edit by hand) -->
## pool

$(date -u '+%Y-%m-%d %H:%M UTC'); \`make bench-pool\` (\`bench/pool/run.sh\`: DURATION=$DURATION RUNS=$RUNS SCALE=$SCALE).
Machine: $machine (shared with other work). PostgreSQL $pgver, PgBouncer $bver; all
connections over unix sockets.
Workload: pgbench's select-only query \`SELECT abalance FROM pgbench_accounts WHERE aid = \$1\`,
random aid, scale $SCALE, $CONNS server connections for everyone, $DURATION s per run, medians of $RUNS
interleaved runs.

| path | command | tps (median) | runs | client CPU per query |
|---|---|---:|---|---:|
| pgcorral pool | \`pool_bench run URL $WORKERS $DURATION $SCALE\`: $WORKERS workers x connection_limit $LIMIT, closed loop of $LIMIT queries per worker, \`rt_pool_query\` | $pm | $(echo "$pool_tps" | sed 's/^ //; s/ /, /g') | $pc us |
| direct (the limit) | \`pgbench -S -M prepared -c $CONNS -j 2 -T $DURATION\` | $dm | $(echo "$direct_tps" | sed 's/^ //; s/ /, /g') | $dc us |
| PgBouncer, transaction mode | \`pgbench -S -M $bmode -c $CONNS -j 2 -T $DURATION\` via PgBouncer, default_pool_size $CONNS | $bm | $(echo "$bouncer_tps" | sed 's/^ //; s/ /, /g') | $bc us (pgbench only) |
| pgcorral pool, pipelining | \`POOL_BENCH_CLIENTS=$PIPE_CLIENTS pool_bench run 'URL&pipeline_depth=8' $WORKERS $DURATION $SCALE\` | $(median "$pipe_on_tps") | $(echo "$pipe_on_tps" | sed 's/^ //; s/ /, /g') | $(median "$pipe_on_cpu") us |
| pgcorral pool, no pipelining | \`POOL_BENCH_CLIENTS=$PIPE_CLIENTS pool_bench run 'URL&pipeline_depth=0' $WORKERS $DURATION $SCALE\` | $(median "$pipe_off_tps") | $(echo "$pipe_off_tps" | sed 's/^ //; s/ /, /g') | $(median "$pipe_off_cpu") us |

| goal | median of per-run ratios | per run | ratio of the medians | |
|---|---:|---|---:|---|
| pool / direct >= 0.9 | $ratio_direct | $(list "$pair_direct") | $mratio_direct | $(verdict "$ratio_direct" ">=" 0.9) |
| pool / PgBouncer >= 1.5 | $ratio_bouncer | $(list "$pair_bouncer") | $mratio_bouncer | $(verdict "$ratio_bouncer" ">=" 1.5) |
| pool, $PIPE_CLIENTS in flight per worker: pipeline_depth=8 / pipeline_depth=0 (report) | $(awk -v a="$(median "$pair_pipe")" 'BEGIN { printf "%.2f", a }') | $(list "$pair_pipe") | | |
| pool, $PIPE_CLIENTS in flight, pipeline_depth=8 / direct (report) | $(awk -v a="$(median "$pair_pipe_direct")" 'BEGIN { printf "%.2f", a }') | $(list "$pair_pipe_direct") | | |
| instructions per fast-path acquire + release <= 300 | $per_op_pool | | | $(verdict "$per_op_pool" "<=" 300) |

Client CPU per query: user + system time of the benchmark's client processes (both pool
workers, warm-up included; pgbench) divided by the queries they finished, medians; it depends far less than tps on
what else runs on the machine.
Instructions: \`valgrind --tool=callgrind --toggle-collect=bench_acqrel\` over $ITERATIONS x
(\`rt_pool_try_acquire\` + \`rt_pool_release\`) on an idle connection: $per_op per pair in all,
$per_op_pool without the benchmark's own loop.
EOF
if [ "$bmode" = extended ]; then
    cat >>"$section" <<EOF
PgBouncer $bver cannot carry named prepared statements in transaction mode (that came in 1.21),
so its pgbench uses \`-M extended\` (unnamed statements: what transaction-mode users run).
EOF
fi
echo "<!-- pool:end -->" >>"$section"

"$root/bench/results-section.sh" pool "$section"
say "pool $pm tps, direct $dm tps (x$ratio_direct), pgbouncer $bm tps (x$ratio_bouncer), $per_op_pool instructions per acquire + release"
say "written to bench/RESULTS.md (section pool)"
