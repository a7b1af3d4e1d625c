#!/bin/sh
# Runs inside scripts/with-test-pg.sh (bench/jobs/run.sh): each peer gets a fresh database.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$BENCH_TOP
out=$BENCH_OUT
N=${BENCH_JOBS:-200000}
M=${BENCH_LATENCY_JOBS:-1000}
base=$PGC_TEST_DATABASE_URL
psql_=$PGC_TEST_PGBIN/psql

db() { # db NAME: a fresh database, prints its URL
    "$psql_" -q "$base" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null
    echo "$base" | sed "s|/postgres?|/$1?|"
}

run_pgcorral() { # MODE COUNT
    "$out/jobs_driver" "$(db bench_pgcorral)" "$1" "$2" "$top/${BUILD:-build}/examples/basic.so" \
        "$out/stamp.so"
}
run_graphile() { # MODE COUNT batched|unbatched
    node "$out/graphile/gw.js" "$(db bench_graphile)" "$1" "$2" "$3"
}
get() { echo "$1" | awk -v k="$2" '$1 == k { print $2 }'; }

echo "jobs benchmark: $N no-op jobs, 2 processes x 10 concurrent jobs; latency over $M jobs"
p_t=$(run_pgcorral throughput "$N"); echo "pgcorral:"; echo "$p_t" | sed 's/^/  /'
gb_t=$(run_graphile throughput "$N" batched); echo "graphile batched:"; echo "$gb_t" | sed 's/^/  /'
gu_t=$(run_graphile throughput "$N" unbatched); echo "graphile unbatched:"; echo "$gu_t" | sed 's/^/  /'
p_l=$(run_pgcorral latency "$M"); echo "$p_l" | sed 's/^/  pgcorral /'
gb_l=$(run_graphile latency "$M" batched); echo "$gb_l" | sed 's/^/  graphile batched /'
gu_l=$(run_graphile latency "$M" unbatched); echo "$gu_l" | sed 's/^/  graphile unbatched /'

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
pj=$(get "$p_t" jobs_per_s); gbj=$(get "$gb_t" jobs_per_s); guj=$(get "$gu_t" jobs_per_s)
r_b=$(ratio "$pj" "$gbj"); r_u=$(ratio "$pj" "$guj")
echo "ratios: pgcorral / graphile batched = ${r_b}x (goal >= 2), / unbatched = ${r_u}x (goal >= 10)"

results="$top/bench/RESULTS.md"
{
    echo "## jobs ($(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $("$psql_" -tAq "$base" -c 'SHOW server_version'), fsync=off)"
    echo
    echo "$N no-op jobs added in bulk in one transaction, drained by 2 processes x 10 concurrent"
    echo "jobs (timed from the commit until the table is empty); latency: $M jobs added one at a"
    echo "time, enqueue -> handler start. Dead rows by pgstattuple."
    echo
    echo "| peer | jobs/s | drain s | enqueue s | p50 ms | p99 ms | dead rows at end | after 15 s |"
    echo "|---|---|---|---|---|---|---|---|"
    for peer in "pgcorral|$p_t|$p_l" "graphile-worker 0.17.3 batched|$gb_t|$gb_l" \
        "graphile-worker 0.17.3 unbatched|$gu_t|$gu_l"; do
        name=${peer%%|*}; rest=${peer#*|}; t=${rest%%|*}; l=${rest#*|}
        echo "| $name | $(get "$t" jobs_per_s) | $(get "$t" drain_s) | $(get "$t" enqueue_s) |" \
            "$(get "$l" latency_p50_ms) | $(get "$l" latency_p99_ms) |" \
            "$(get "$t" dead_rows_at_end) | $(get "$t" dead_rows_after_15s) |"
    done
    echo
    echo "Ratios (jobs/s): pgcorral / graphile batched = ${r_b}x (goal >= 2x);"
    echo "pgcorral / graphile unbatched = ${r_u}x (goal >= 10x)."
    echo
} >"$out/jobs-results.md"
# Replace the jobs section of bench/RESULTS.md, keep the others.
if [ -f "$results" ]; then
    awk '/^## jobs /{skip=1; next} /^## /{skip=0} !skip' "$results" >"$out/results.tmp"
else
    printf '# Benchmark results\n\n' >"$out/results.tmp"
fi
cat "$out/results.tmp" "$out/jobs-results.md" >"$results"
echo "written to bench/RESULTS.md"
