#!/bin/sh
# Cluster benchmark (make bench-cluster): the same workers as one node or as three nodes
# leasing one cluster budget C (README "Several hosts"), on one throwaway PostgreSQL:
#   one     pgcorral run --web 3 --jobs 3
#   three   three supervisors, each --web 1 --jobs 1, with their own --node-name,
#           --control and --listen (127.0.0.1:0; the "listening" log line gives the port)
# Both use the default connection_limit and the same DATABASE_URL, and load examples/basic.so
# for the no-op task. In each configuration:
#   health  GET /api/v1/health with wrk: one node: one wrk -t2 -c48; three nodes: three wrk
#           at once, one per node, -t1 -c16 each, their req/s summed
#   jobs    JOBS no-op jobs added in bulk in one transaction, timed from the commit until
#           pgcorral.jobs is empty (bench/cluster/probe.c)
# Meanwhile probe.c counts pgcorral's connections in pg_stat_activity every 100 ms (the peak
# must stay <= C) and every node's /metrics is read each second for the largest
# pgcorral_lease_renewal_age_seconds. At the end of each run, `pgcorral ctl cluster` on every
# control socket gives each node's lease. The configurations alternate within RUNS rounds
# (one/three, three/one, ...) so that a busy moment of the shared machine hits both; the
# goal, three nodes >= 0.9 x one node, is judged on the median of the per-round ratios.
# The section "cluster" of bench/RESULTS.md is rewritten between its markers.
#
# Knobs (environment): RUNS (3), DURATION (s of each measured wrk run, 10), WARMUP (s of
# wrk before each, 2), JOBS (60000), CLUSTER_BUDGET (--cluster-budget for every node; default
# none: the server's allowance, recorded by the first node), BUILD. Runs under
# scripts/with-test-pg.sh unless PGC_TEST_DATABASE_URL is set.
set -eu

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/../lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
JOBS=${JOBS:-60000}
CLUSTER_BUDGET=${CLUSTER_BUDGET:-}
url=$PGC_TEST_DATABASE_URL
psql_=${PGC_TEST_PGBIN:+$PGC_TEST_PGBIN/}psql

say() { printf '%s\n' "bench/cluster: $*" >&2; }

PATH=$PATH:/usr/sbin
for cmd in wrk curl; do
    command -v "$cmd" >/dev/null 2>&1 ||
        { say "$cmd is missing: run 'make bench-cluster' (it installs it)"; exit 1; }
done
for f in "$BUILD/pgcorral" "$BUILD/examples/basic.so"; do
    [ -e "$f" ] || { say "$f is missing: run 'make bench-cluster' (it builds it)"; exit 1; }
done

tmp=$(mktemp -d /tmp/pgcorral-bench-cluster.XXXXXX)
# Every process this script starts in the background, for the cleanup.
started=""
cleanup() {
    for p in $started; do kill "$p" 2>/dev/null || true; done
    for p in $started; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC2046 # pkg-config's flags are words
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
    $(pkg-config --cflags libpq) -o "$tmp/probe" "$here/probe.c" $(pkg-config --libs libpq)

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at start: $load_start"

budget_flag=""
[ -n "$CLUSTER_BUDGET" ] && budget_flag="--cluster-budget $CLUSTER_BUDGET"

# ---- nodes ---------------------------------------------------------------------------
# start_node NAME WEB JOBS: a supervisor in the background; its pid in $tmp/NAME.pid
start_node() {
    # shellcheck disable=SC2086 # budget_flag is zero or two words
    DATABASE_URL=$url "$BUILD/pgcorral" run --web "$2" --jobs "$3" --node-name "$1" \
        --control "$tmp/$1.sock" --listen 127.0.0.1:0 --plugin "$BUILD/examples/basic.so" \
        $budget_flag >"$tmp/$1.log" 2>&1 &
    echo $! >"$tmp/$1.pid"
    started="$started $!"
}

# cluster_field NAME FIELD: FIELD of this node's own lease from `pgcorral ctl cluster`
# (the part before its "nodes" list, which repeats the field names per node).
cluster_field() {
    "$BUILD/pgcorral" ctl cluster --json --control "$tmp/$1.sock" 2>/dev/null |
        sed 's/"nodes":.*//' | sed -n "s/.*\"$2\":\([0-9a-z]*\).*/\1/p"
}

# wait_node NAME: up to 15 s for its port, a healthy /api/v1/health and its whole lease
# (slots_leased reaches slots_target); prints the port.
wait_node() {
    i=0 port=""
    while [ $i -lt 150 ]; do
        [ -n "$port" ] ||
            port=$(sed -n 's/.*"msg":"listening".*"port":\([0-9]*\).*/\1/p' "$tmp/$1.log" | head -1)
        if [ -n "$port" ] &&
            [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' \
                "http://127.0.0.1:$port/api/v1/health" 2>/dev/null)" = 200 ]; then
            leased=$(cluster_field "$1" slots_leased)
            target=$(cluster_field "$1" slots_target)
            if [ -n "$leased" ] && [ "${target:-0}" -gt 0 ] && [ "$leased" -ge "$target" ]; then
                echo "$port"
                return 0
            fi
        fi
        sleep 0.1
        i=$((i + 1))
    done
    say "node $1 did not become ready in 15 s; its log:"
    cat "$tmp/$1.log" >&2
    exit 1
}

stop_node() { # NAME
    pid=$(cat "$tmp/$1.pid")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# scrape_renewal_age PORT...: every second, each node's pgcorral_lease_renewal_age_seconds
# (the time since its lease was last renewed), one value a line, until killed.
scrape_renewal_age() {
    while :; do
        for p in "$@"; do
            curl -s -m 1 "http://127.0.0.1:$p/metrics" 2>/dev/null |
                awk '/^pgcorral_lease_renewal_age_seconds / { print $2 }'
        done
        sleep 1
    done
}

# wrk_rps OUT: Requests/sec and non-2xx responses + socket errors from wrk's output
wrk_rps() {
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$1")
    bad=$(awk -F: '/Non-2xx/ { gsub(/ /, "", $2); n += $2 }
                   /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                   END { print n + 0 }' "$1")
    echo "${rps:-0} $bad"
}

results=$tmp/results
leases=$tmp/leases
: >"$results"
: >"$leases"

# run_config one|three ROUND: starts the configuration, measures, stops it; appends
# "ROUND CONFIG RPS BAD JOBS_PER_S DRAIN_S ENQUEUE_S PEAK SAMPLES C RENEWAL_AGE_MAX" to
# $results and "ROUND CONFIG NODE LEASED_BEFORE_JOBS SLOTS_LEASED SLOTS_IN_USE BUDGET" per
# node to $leases.
run_config() {
    config=$1 round=$2
    if [ "$config" = one ]; then
        nodes="one"
        start_node one 3 3
    else
        nodes="n1 n2 n3"
        for n in $nodes; do start_node "$n" 1 1; done
    fi
    ports=""
    for n in $nodes; do ports="$ports $(wait_node "$n")"; done
    c=$(cluster_field "${nodes%% *}" cluster_budget)

    "$tmp/probe" sample "$url" >"$tmp/sample.out" &
    sampler=$!
    # shellcheck disable=SC2086 # one port a word
    scrape_renewal_age $ports >"$tmp/age.out" &
    scraper=$!
    started="$started $sampler $scraper"

    # health: the same 48 connections in all, spread over the nodes
    wrk_flags="-t1 -c16"
    [ "$config" = one ] && wrk_flags="-t2 -c48"
    for secs in "$WARMUP" "$DURATION"; do
        wrks=""
        for p in $ports; do
            # shellcheck disable=SC2086 # wrk_flags is two words
            wrk $wrk_flags -d"${secs}s" "http://127.0.0.1:$p/api/v1/health" >"$tmp/wrk.$p" 2>&1 &
            wrks="$wrks $!"
        done
        for w in $wrks; do wait "$w" || true; done
    done
    rps=0 bad=0
    for p in $ports; do
        # shellcheck disable=SC2046 # two numbers
        set -- $(wrk_rps "$tmp/wrk.$p")
        rps=$(awk -v a="$rps" -v b="$1" 'BEGIN { printf "%.0f", a + b }')
        bad=$((bad + $2))
    done

    # jobs: after the health run a node of several may have given idle slots back; what
    # each held when the jobs arrived shows how much of the drain waited for a renewal.
    before=""
    for n in $nodes; do before="$before $(cluster_field "$n" slots_leased)"; done
    "$tmp/probe" drain "$url" "$JOBS" >"$tmp/drain.out"
    jps=$(awk '$1 == "jobs_per_s" { print $2 }' "$tmp/drain.out")
    drain_s=$(awk '$1 == "drain_s" { print $2 }' "$tmp/drain.out")
    enqueue_s=$(awk '$1 == "enqueue_s" { print $2 }' "$tmp/drain.out")

    # shellcheck disable=SC2086 # one number a node
    set -- $before
    for n in $nodes; do
        echo "$round $config $n $1 $(cluster_field "$n" slots_leased)" \
            "$(cluster_field "$n" slots_in_use) $(cluster_field "$n" budget)" >>"$leases"
        shift
    done
    kill "$sampler" "$scraper" 2>/dev/null || true
    wait "$sampler" || { say "the pg_stat_activity sampler failed"; exit 1; }
    wait "$scraper" 2>/dev/null || true
    peak=$(awk '$1 == "peak" { print $2 }' "$tmp/sample.out")
    samples=$(awk '$1 == "samples" { print $2 }' "$tmp/sample.out")
    age=$(sort -g "$tmp/age.out" | tail -1)
    for n in $nodes; do stop_node "$n"; done
    # All of this run's processes are gone: the cleanup must not signal their reused pids.
    started=""

    echo "$round $config $rps $bad $jps $drain_s $enqueue_s $peak $samples $c ${age:-0}" >>"$results"
    say "round $round, $config: health $rps req/s ($bad non-2xx/errors), jobs $jps/s" \
        "(drain $drain_s s), peak $peak pgcorral connections (C = $c, $samples samples)," \
        "renewal age max ${age:-?} s"
}

round=1
while [ "$round" -le "$RUNS" ]; do
    if [ $((round % 2)) -eq 1 ]; then
        run_config one "$round"
        run_config three "$round"
    else
        run_config three "$round"
        run_config one "$round"
    fi
    round=$((round + 1))
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at the end: $load_end"

# ---- report --------------------------------------------------------------------------
# median "V1 V2 ...": the middle value (the mean of the two middle ones for an even count)
median() {
    echo "$1" | tr -s ' ' '\n' | grep . | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
col() { # CONFIG FIELD: that field of every round of CONFIG, space-separated
    awk -v c="$1" -v f="$2" '$2 == c { printf "%s ", $f }' "$results"
}
list() { # "V1 V2 ...": comma-separated
    echo "$1" | tr -s ' ' '\n' | grep . | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $1 } END { print "" }'
}
# ratios FIELD: each round's three / one for FIELD (the two ran back to back), in round order
ratios() {
    awk -v f="$1" '{ v[$1, $2] = $f; if ($1 > n) n = $1 }
        END { for (r = 1; r <= n; r++) if (v[r, "one"] > 0) printf "%.3f ", v[r, "three"] / v[r, "one"] }' \
        "$results"
}
fmt2() { awk -v a="$1" 'BEGIN { printf "%.2f", a }'; }
verdict() { awk -v v="$1" 'BEGIN { print (v >= 0.9 ? "met" : "NOT met") }'; }

h1=$(median "$(col one 3)")
h3=$(median "$(col three 3)")
j1=$(median "$(col one 5)")
j3=$(median "$(col three 5)")
hr=$(fmt2 "$(median "$(ratios 3)")")
jr=$(fmt2 "$(median "$(ratios 5)")")
hmr=$(awk -v a="$h3" -v b="$h1" 'BEGIN { printf "%.2f", a / b }')
jmr=$(awk -v a="$j3" -v b="$j1" 'BEGIN { printf "%.2f", a / b }')
bad1=$(col one 4 | awk '{ for (i = 1; i <= NF; i++) n += $i } END { print n + 0 }')
bad3=$(col three 4 | awk '{ for (i = 1; i <= NF; i++) n += $i } END { print n + 0 }')
peak1=$(col one 8 | tr ' ' '\n' | grep . | sort -n | tail -1)
peak3=$(col three 8 | tr ' ' '\n' | grep . | sort -n | tail -1)
samples3=$(col three 9 | awk '{ for (i = 1; i <= NF; i++) n += $i } END { print n + 0 }')
cbudget=$(col three 10 | tr ' ' '\n' | grep . | sort -n | head -1)
age1=$(col one 11 | tr ' ' '\n' | grep . | sort -g | tail -1)
age3=$(col three 11 | tr ' ' '\n' | grep . | sort -g | tail -1)
peak_ok=$(awk -v p="$peak3" -v c="$cbudget" 'BEGIN { print (p <= c ? "met" : "NOT met") }')
# The lease table: the last round of each configuration.
lease_rows=$(awk -v last="$RUNS" '$1 == last {
        printf "| %s | %s | %s | %s | %s | %s |\n", ($2 == "one" ? "one node" : "three nodes"), $3, $4, $5, $6, $7
    }' "$leases")

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
machine="$cpu, $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
pgver=$("$psql_" -tAq "$url" -c 'SHOW server_version' | sed 's/ .*//')
reproduce="RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP JOBS=$JOBS${CLUSTER_BUDGET:+ CLUSTER_BUDGET=$CLUSTER_BUDGET} make bench-cluster"

section=$tmp/section.md
cat >"$section" <<EOF
<!-- cluster:begin (written by bench/cluster/run.sh; do not edit by hand) -->
## cluster

$(date -u '+%Y-%m-%d %H:%M UTC'); \`$reproduce\`.
Machine: $machine (shared with other work; wrk and PostgreSQL run on the same
cores; load average $load_start at the start, $load_end at the end). PostgreSQL $pgver, fsync=off.
One node: \`pgcorral run --web 3 --jobs 3\`; three nodes: three supervisors \`--web 1 --jobs 1\`
with their own --node-name, --control and --listen, leasing one cluster budget
C = $cbudget${CLUSTER_BUDGET:+ (--cluster-budget $CLUSTER_BUDGET)}${CLUSTER_BUDGET:- (the default: what the server allows)}; connection_limit 10 (the default)
everywhere. $RUNS round(s), the configurations alternating; medians.
Health: GET /api/v1/health, one wrk -t2 -c48 against one node, three wrk -t1 -c16 at once
(one per node, req/s summed) against three; ${DURATION} s after ${WARMUP} s of warm-up.
Jobs: $JOBS no-op jobs added in bulk in one transaction, timed from the commit until
pgcorral.jobs is empty.

| measure | one node | three nodes | three / one (median of per-round ratios) | per round | ratio of the medians | goal >= 0.9x |
|---|---:|---:|---:|---|---:|---|
| health req/s | $h1 | $h3 | $hr | $(list "$(ratios 3)") | $hmr | $(verdict "$hr") |
| jobs/s | $j1 | $j3 | $jr | $(list "$(ratios 5)") | $jmr | $(verdict "$jr") |

Health runs per round (req/s), one node: $(list "$(col one 3)"); three nodes: $(list "$(col three 3)").
Non-2xx responses and socket errors, all rounds: one node $bad1, three nodes $bad3.
Jobs runs per round (jobs/s), one node: $(list "$(col one 5)"); three nodes: $(list "$(col three 5)").

| bound | one node | three nodes | |
|---|---:|---:|---|
| peak of pgcorral's connections in pg_stat_activity (every 100 ms, whole runs) <= C = $cbudget | $peak1 | $peak3 ($samples3 samples) | $peak_ok |
| largest pgcorral_lease_renewal_age_seconds (/metrics of every node, each second) | $age1 s | $age3 s | heartbeat 2 s |

Leases in the last round (\`pgcorral ctl cluster\` on each control socket): slots_leased when
the jobs were added (after the health run), then slots_leased and slots_in_use once they
had drained. A node among several that saw no worker wait for a slot for 10 s keeps only
the slots in use; when a burst of jobs then makes its workers wait for slots, it renews
within 100 ms to lease more (and takes the idle connections of its own web worker).

| configuration | node | slots_leased when the jobs came | slots_leased at the end | slots_in_use at the end | budget B |
|---|---|---:|---:|---:|---:|
$lease_rows

Lease traffic: one \`pgcorral.lease_renew\` call per node per heartbeat (2 s), on the
supervisor's job-queue connection, not on a worker's: 0.5 renewals/s for one node, 1.5/s
for three, against thousands of health queries and jobs per second.
<!-- cluster:end -->
EOF
cat "$section"

"$root/bench/results-section.sh" cluster "$section"
say "machine: $machine"
say "to reproduce: $reproduce"
say "written to bench/RESULTS.md (section cluster)"
