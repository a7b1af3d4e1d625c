#!/bin/sh
# Runs inside scripts/with-test-pg.sh (bench/jobs/run.sh): each run gets a fresh database.
# Throughput: ROUNDS rounds (default 3) of every peer, one after the other; each row of the
# table is the round with the peer's median jobs/s, and the ratios are of medians.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$BENCH_TOP
out=$BENCH_OUT
N=${BENCH_JOBS:-200000}
M=${BENCH_LATENCY_JOBS:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
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

# The peers of the throughput table: name|command.
peers="pgcorral|run_pgcorral throughput $N
pgcorral --keep-completed 1h|run_pgcorral throughput-keep $N
graphile-worker 0.17.3 batched|run_graphile throughput $N batched
graphile-worker 0.17.3 unbatched|run_graphile throughput $N unbatched"

echo "jobs benchmark: $N no-op jobs, 2 processes x 10 concurrent jobs, $ROUNDS rounds;" \
    "latency over $M jobs"
rm -f "$out"/jobs-round-*
round=1
while [ "$round" -le "$ROUNDS" ]; do
    i=0
    echo "$peers" | while IFS='|' read -r name cmd; do
        i=$((i + 1))
        r=$($cmd </dev/null)
        echo "round $round, $name:"; echo "$r" | sed 's/^/  /'
        echo "$r" >"$out/jobs-round-$i-$round"
    done
    round=$((round + 1))
done

# median PEER_INDEX: the output of the round with the median jobs/s.
median() {
    for f in "$out/jobs-round-$1-"*; do
        echo "$(awk '$1 == "jobs_per_s" { print $2 }' "$f") $f"
    done | sort -n | awk '{ f[NR] = $2 } END { print f[int((NR + 1) / 2)] }' | xargs cat
}
p_t=$(median 1); pk_t=$(median 2); gb_t=$(median 3); gu_t=$(median 4)

p_l=$(run_pgcorral latency "$M"); echo "$p_l" | sed 's/^/  pgcorral /'
gb_l=$(run_graphile latency "$M" batched); echo "$gb_l" | sed 's/^/  graphile batched /'
gu_l=$(run_graphile latency "$M" unbatched); echo "$gu_l" | sed 's/^/  graphile unbatched /'

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
pj=$(get "$p_t" jobs_per_s); pkj=$(get "$pk_t" jobs_per_s)
gbj=$(get "$gb_t" jobs_per_s); guj=$(get "$gu_t" jobs_per_s)
r_b=$(ratio "$pj" "$gbj"); r_u=$(ratio "$pj" "$guj")
rk_b=$(ratio "$pkj" "$gbj"); rk_u=$(ratio "$pkj" "$guj"); rk_p=$(ratio "$pkj" "$pj")
echo "ratios (medians): pgcorral / graphile batched = ${r_b}x (goal >= 2)," \
    "/ unbatched = ${r_u}x (goal >= 10)"
echo "with --keep-completed 1h: ${pkj} jobs/s = ${rk_p}x of retention off;" \
    "${rk_b}x graphile batched, ${rk_u}x unbatched"

results="$top/bench/RESULTS.md"
{
    echo "## jobs ($(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $("$psql_" -tAq "$base" -c 'SHOW server_version'), fsync=off)"
    echo
    echo "$N no-op jobs added in bulk in one transaction, drained by 2 processes x 10 concurrent"
    echo "jobs (timed from the commit until the table is empty; with --keep-completed, until all"
    echo "are completed); each row is the median of $ROUNDS rounds by jobs/s. Latency: $M jobs"
    echo "added one at a time, enqueue -> handler start. Dead rows by pgstattuple."
    echo
    echo "| peer | jobs/s | drain s | enqueue s | p50 ms | p99 ms | dead rows at end | after 15 s |"
    echo "|---|---|---|---|---|---|---|---|"
    for peer in "pgcorral|$p_t|$p_l" "pgcorral --keep-completed 1h|$pk_t|" \
        "graphile-worker 0.17.3 batched|$gb_t|$gb_l" \
        "graphile-worker 0.17.3 unbatched|$gu_t|$gu_l"; do
        name=${peer%%|*}; rest=${peer#*|}; t=${rest%%|*}; l=${rest#*|}
        echo "| $name | $(get "$t" jobs_per_s) | $(get "$t" drain_s) | $(get "$t" enqueue_s) |" \
            "$(get "$l" latency_p50_ms) | $(get "$l" latency_p99_ms) |" \
            "$(get "$t" dead_rows_at_end) | $(get "$t" dead_rows_after_15s) |"
    done
    echo
    echo "Ratios of medians (jobs/s): pgcorral / graphile batched = ${r_b}x (goal >= 2x);"
    echo "pgcorral / graphile unbatched = ${r_u}x (goal >= 10x). With --keep-completed 1h:"
    echo "${rk_p}x of retention off, ${rk_b}x graphile batched, ${rk_u}x unbatched."
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
