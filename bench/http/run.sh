#!/bin/sh
# HTTP benchmark (make bench-http): wrk -t2 -c64 -d10s on loopback, every target in the
# same run, one after the other:
#   GET /api/v1/ping    pgcorral as users run it (no --io flag: the default, the headline
#                       row), then --io uring and --io epoll (2 web workers each), then the
#                       default with --access-log FILE (pgcorral-accesslog)
#                       nginx `return 200` (2 workers): the limit
#                       Node.js cluster(2) + Express (bench/peers): what users run today
#   GET /api/v1/health  pgcorral (one pool query per request) vs the same Node app (pg)
#                       and the raw client: pgbench -n -M prepared -f select1.sql with as
#                       many connections as the web workers' pools hold (2 x BENCH_LIMIT);
#                       again with connection_limit=2 per worker (auto-pipelining)
#   GET /api/v1/accounts/:id  examples/accounts.so (a plugin route on the loop,
#                       PGC_ROUTE_ON_LOOP: one uncached point read of pgbench_accounts, random
#                       id) vs the same route in the Node app; and the same handler on a
#                       thread (bench/http/accounts_thread.c, GET /bench/accounts-thread/:id)
# Reports req/s, p99, RSS per worker and the ratios against the goals as markdown: printed,
# kept in bench/http/last-run.md, and put into the http section of bench/RESULTS.md.
# Absolute numbers on a shared machine are noise; the ratios of one run are the result.
#
# Needs wrk, nginx (nginx-light), node and npm, which `make bench-http` installs;
# bench/peers gets `npm install`. Runs under scripts/with-test-pg.sh (a throwaway
# PostgreSQL) unless PGC_TEST_DATABASE_URL is set. Our server is build/pgcorral; when it
# does not answer HTTP (or BENCH_SERVER=harness) the harness bench/http/serve.c (the web
# worker module in 2 forked processes, without the supervisor) stands in for it.
#
# Knobs: BENCH_DURATION (5s), BENCH_WARMUP (2s of load before each measured run, for the
# JIT and the pools), BENCH_CONNS (64), BENCH_THREADS (2), BENCH_RUNS (3: rounds over every
# target; medians are reported), BENCH_SERVER (pgcorral or harness).
set -eu

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/../lib.sh"

DURATION=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-2s}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
RUNS=${BENCH_RUNS:-3}
BENCH_SERVER=${BENCH_SERVER:-pgcorral}
LIMIT=${BENCH_LIMIT:-8} # connection_limit per web worker (ours)

tmp=$(mktemp -d /tmp/pgcorral-bench-http.XXXXXX)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- dependencies --------------------------------------------------------------------
# `make bench-http` installs them (scripts/install-deps.sh bench); run alone, say what lacks.
PATH=$PATH:/usr/sbin
for cmd in wrk curl nginx; do
    command -v "$cmd" >/dev/null 2>&1 ||
        { echo "bench-http: $cmd is missing: run 'make bench-http' (it installs it)" >&2; exit 1; }
done
command -v node >/dev/null 2>&1 || { echo "bench-http: node is required" >&2; exit 1; }
if [ ! -d "$root/bench/peers/node_modules/express" ] || [ ! -d "$root/bench/peers/node_modules/pg" ]; then
    (cd "$root/bench/peers" && npm install --no-audit --no-fund >/dev/null)
fi

. "$root/scripts/pg-common.sh"
pg_user=$(pg_superuser)
sep='?'
case $PGC_TEST_DATABASE_URL in *\?*) sep='&' ;; esac
# pgbench_accounts for the accounts route (scale 1: 100000 accounts), and the raw client's
# script.
"$(pg_bindir)/pgbench" -h "$PGC_TEST_PGDIR" -p "$PGC_TEST_PGPORT" -U "$pg_user" -i -q -s 1 \
    postgres >"$tmp/pgbench-init.log" 2>&1 || { cat "$tmp/pgbench-init.log" >&2; exit 1; }
echo 'SELECT 1;' >"$tmp/select1.sql"
chmod 644 "$tmp/select1.sql"
chmod 755 "$tmp"
bench_accounts_setup "$tmp"

base=$((18000 + $$ % 900 * 10))
port_ours=$((base + 1))
port_nginx=$((base + 2))
port_node=$((base + 3))

# ---- helpers -------------------------------------------------------------------------
wait_http() { # wait_http URL: up to 15 s for a 200
    i=0
    while [ $i -lt 150 ]; do
        [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" 2>/dev/null)" = 200 ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

rss_mb() { # rss_mb PID...: the largest VmRSS among them, in MB
    for p in "$@"; do
        awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null
    done | sort -n | tail -1 | awk '{printf "%.1f", $1 / 1024}'
}

children() { # children PID: its child processes
    pgrep -P "$1" | tr '\n' ' '
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

results=$tmp/results
: >"$results"
# bench NAME ROUTE URL PIDS...: one wrk run; appends
# "run name route rps p99ms non2xx errors rss" to $results
bench() {
    name=$1 route=$2 url=$3
    shift 3
    out=$tmp/wrk.out
    script=""
    [ "$route" = accounts ] && script="-s $tmp/accounts.lua"
    [ "$route" = accounts-thread ] && script="-s $tmp/accounts-thread.lua"
    # shellcheck disable=SC2086 # script is zero or two words
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" $script "$url" >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency $script "$url" >"$out" 2>&1 || true
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p99=$(awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                             if (u == "us") v /= 1000; else if (u == "s") v *= 1000;
                             printf "%.2f", v }' "$out")
    non2xx=$(awk -F: '/Non-2xx/ {gsub(/ /, "", $2); print $2}' "$out")
    errors=$(awk '/Socket errors/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    echo "$run $name $route ${rps:-0} ${p99:-0} ${non2xx:-0} ${errors:-0} $(rss_mb "$@")" >>"$results"
    echo "bench-http: $name $route: ${rps:-0} req/s, p99 ${p99:-?} ms" >&2
}

# ---- our server ----------------------------------------------------------------------
accounts_thread=$tmp/accounts_thread.so # bench_accounts_setup made it
serve_harness=$tmp/serve
build_harness() {
    [ -x "$serve_harness" ] && return 0
    cc -std=c11 -D_GNU_SOURCE -O2 -I"$root" -I"$root/runtime" -I/usr/share/include/llhttp \
        $(pkg-config --cflags libpq libuv liburing jansson) -o "$serve_harness" \
        "$root/bench/http/serve.c" "$BUILD/libpgc_workers.a" "$BUILD/libpgc_runtime.a" "$BUILD/libpgc_shm.a" \
        $(pkg-config --libs libpq libuv liburing jansson) -ldl -lm -pthread
}

ours_kind=""
# start_ours IO [FLAG...] (IO default: no --io flag; FLAGs go to `pgcorral run`; the pools'
# connection_limit is $ours_limit, else LIMIT): sets server_pid and web_pids
start_ours() {
    io=$1
    shift
    db_url="$PGC_TEST_DATABASE_URL${sep}connection_limit=${ours_limit:-$LIMIT}"
    io_flag="--io $io"
    [ "$io" = default ] && io_flag=""
    if [ "$BENCH_SERVER" = pgcorral ] && [ -x "$BUILD/pgcorral" ]; then
        # shellcheck disable=SC2086 # io_flag is zero or two words
        DATABASE_URL=$db_url "$BUILD/pgcorral" run --web 2 --jobs 0 $io_flag \
            --plugin "$BUILD/examples/accounts.so" --plugin "$accounts_thread" \
            --listen "127.0.0.1:$port_ours" --control "$tmp/ctl.sock" "$@" \
            >"$tmp/pgcorral-$io${1:+-flags}.log" 2>&1 &
        server_pid=$!
        if wait_http "http://127.0.0.1:$port_ours/api/v1/ping"; then
            ours_kind="build/pgcorral (supervisor + 2 web workers)"
            [ "$io" = default ] && default_choice=$(grep -m1 '"msg":"web: I/O backend"' \
                "$tmp/pgcorral-$io${1:+-flags}.log" | sed 's/.*"worker":[0-9]*,//; s/}$//')
            web_pids=$(for p in $(children "$server_pid"); do
                grep -q '^pgcorral: web' "/proc/$p/comm" 2>/dev/null && echo "$p"; done | tr '\n' ' ')
            [ -n "$web_pids" ] || web_pids=$(children "$server_pid")
            return 0
        fi
        echo "bench-http: build/pgcorral does not answer HTTP; using the harness" >&2
        stop_server
        BENCH_SERVER=harness
    fi
    build_harness
    [ "$io" = default ] && io=auto
    DATABASE_URL=$db_url "$serve_harness" --web 2 --io "$io" --port "$port_ours" \
        >"$tmp/serve-$io.log" 2>&1 &
    server_pid=$!
    wait_http "http://127.0.0.1:$port_ours/api/v1/ping" ||
        { cat "$tmp/serve-$io.log" >&2; exit 1; }
    ours_kind="bench/http/serve.c harness (2 web worker processes, no supervisor)"
    web_pids=$(children "$server_pid")
}

run_ours() {
    # (start_ours sets io: the loop has its own variable)
    for target in default uring epoll accesslog; do
        if [ "$target" = accesslog ]; then
            # The default configuration with the access log on (the harness has none).
            [ "$BENCH_SERVER" = pgcorral ] || continue
            start_ours default --access-log "$tmp/access.log"
        else
            start_ours "$target"
        fi
        bench "pgcorral-$target" ping "http://127.0.0.1:$port_ours/api/v1/ping" $web_pids
        bench "pgcorral-$target" health "http://127.0.0.1:$port_ours/api/v1/health" $web_pids
        if [ "$target" = default ] && [ "$BENCH_SERVER" = pgcorral ]; then
            bench "pgcorral-$target" accounts "http://127.0.0.1:$port_ours/api/v1/accounts/1" $web_pids
            bench "pgcorral-$target" accounts-thread \
                "http://127.0.0.1:$port_ours/bench/accounts-thread/1" $web_pids
        fi
        if [ "$target" = accesslog ]; then
            access_dropped=$(curl -s "http://127.0.0.1:$port_ours/metrics" |
                awk '/^pgcorral_access_log_dropped_total / {print $2}')
        fi
        stop_server
        if [ "$target" = accesslog ]; then
            access_lines=$(wc -l <"$tmp/access.log")
            rm -f "$tmp/access.log"
        fi
    done
    # Fewer connections, same load: auto-pipelining carries it.
    ours_limit=2
    start_ours default
    bench pgcorral-limit2 health "http://127.0.0.1:$port_ours/api/v1/health" $web_pids
    stop_server
    ours_limit=""
}

# ---- the raw client: pgbench on as many connections as our web workers' pools ----------
run_pgbench() {
    out=$tmp/pgbench.out
    secs=${DURATION%s}
    "$(pg_bindir)/pgbench" -h "$PGC_TEST_PGDIR" -p "$PGC_TEST_PGPORT" -U "$pg_user" -n \
        -M prepared -f "$tmp/select1.sql" -c $((2 * LIMIT)) -j 2 -T "$secs" postgres \
        >"$out" 2>&1 || true
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -1)
    echo "$run pgbench select1 ${tps:-0} 0 0 0 0" >>"$results"
    echo "bench-http: pgbench select1 -c $((2 * LIMIT)): ${tps:-0} tps" >&2
}

# ---- nginx ---------------------------------------------------------------------------
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx;
    proxy_temp_path $tmp/nginx;
    fastcgi_temp_path $tmp/nginx;
    uwsgi_temp_path $tmp/nginx;
    scgi_temp_path $tmp/nginx;
    keepalive_requests 1000;
    server {
        listen 127.0.0.1:$port_nginx reuseport;
        location / {
            default_type application/json;
            return 200 '{"status":"ok"}';
        }
    }
}
NGINX

run_nginx() {
    nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
    server_pid=$!
    wait_http "http://127.0.0.1:$port_nginx/api/v1/ping" ||
        { cat "$tmp/nginx/error.log" >&2; exit 1; }
    bench nginx ping "http://127.0.0.1:$port_nginx/api/v1/ping" $(children "$server_pid")
    stop_server
}

# ---- Node.js cluster + Express + pg ---------------------------------------------------
# node-postgres reads the same URL (a unix socket directory as host=).
run_node() {
    PORT=$port_node WORKERS=2 DATABASE_URL=$PGC_TEST_DATABASE_URL \
        node "$root/bench/peers/express-pg.js" >"$tmp/node.log" 2>&1 &
    server_pid=$!
    wait_http "http://127.0.0.1:$port_node/api/v1/ping" || { cat "$tmp/node.log" >&2; exit 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port_node/api/v1/health")
    if [ "$code" != 200 ]; then
        echo "bench-http: the Node app cannot reach the database" >&2
        cat "$tmp/node.log" >&2
        exit 1
    fi
    bench node-express ping "http://127.0.0.1:$port_node/api/v1/ping" $(children "$server_pid")
    bench node-express health "http://127.0.0.1:$port_node/api/v1/health" $(children "$server_pid")
    bench node-express accounts "http://127.0.0.1:$port_node/api/v1/accounts/1" $(children "$server_pid")
    stop_server
}

run=1
while [ "$run" -le "$RUNS" ]; do
    # Rounds interleave the targets, so that a busy moment of the machine hits all of them.
    run_ours
    run_pgbench
    run_nginx
    run_node
    run=$((run + 1))
done

# ---- report --------------------------------------------------------------------------
# Per target: medians over the runs of req/s and p99, errors summed, the largest RSS.
summary=$tmp/summary
awk '
    function median(a, k, c,    i, j, t, v) {
        for (i = 1; i <= c; i++) v[i] = a[k, i] + 0
        for (i = 1; i <= c; i++)
            for (j = i + 1; j <= c; j++)
                if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return c % 2 ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2
    }
    {
        k = $2 " " $3
        if (!(k in n)) order[++m] = k
        n[k]++; rps[k, n[k]] = $4; p99[k, n[k]] = $5; bad[k] += $6; err[k] += $7
        if ($8 + 0 > rss[k] + 0) rss[k] = $8
    }
    END {
        for (i = 1; i <= m; i++) {
            k = order[i]
            printf "%s %.0f %.2f %d %d %s\n", k, median(rps, k, n[k]), median(p99, k, n[k]),
                bad[k], err[k], rss[k]
        }
    }' "$results" >"$summary"

pkg_version() { # pkg_version NAME: version of bench/peers/node_modules/NAME
    sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$root/bench/peers/node_modules/$1/package.json" | head -1
}

report=$here/last-run.md
{
    echo "<!-- http:begin (written by bench/http/run.sh; do not edit by hand) -->"
    echo "## http"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); \`make bench-http\` (\`bench/http/run.sh\`):"
    echo "wrk -t$THREADS -c$CONNS -d$DURATION on loopback after $WARMUP of warm-up, $RUNS round(s) over every"
    echo "target, medians."
    echo "Machine: $(nproc) cores, Linux $(uname -r) (shared with other work; wrk runs on the same cores)."
    echo "Ours: $ours_kind, connection_limit $LIMIT per worker (pipeline_depth 8, the default),"
    echo "plugins build/examples/accounts.so (on the loop) and bench/http/accounts_thread.c (the same"
    echo "handler on a thread). Raw client: \`pgbench -n -M prepared -f select1.sql"
    echo "-c $((2 * LIMIT)) -j 2 -T ${DURATION%s}\` (as many connections as our pools hold) in the same rounds."
    echo "Peers: nginx $(nginx -v 2>&1 | sed 's|.*/||') \`return 200\` with 2 workers; Node.js $(node --version)"
    echo "cluster of 2 workers with Express $(pkg_version express) and pg $(pkg_version pg) (pool max 10 per worker)."
    echo
    echo "| target | route | req/s | p99 ms | non-2xx | socket errors | max RSS per worker MB |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    awk '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}' "$summary"
    echo
    echo "Default (no --io flag) chose: ${default_choice:-see the log}."
    echo
    echo "| goal | default | --io uring | --io epoll |"
    echo "|---|---:|---:|---:|"
    # Ratios are taken within each round (same moment of the machine), then their median.
    awk '
        { rps[$1, $2 " " $3] = $4; if ($1 > runs) runs = $1; if ($8 + 0 > rss[$2] + 0) rss[$2] = $8 }
        function ratio(a, b,    r, i, j, t, v, c) {
            c = 0
            for (r = 1; r <= runs; r++)
                if (rps[r, b] > 0) v[++c] = rps[r, a] / rps[r, b]
            if (c == 0) return 0
            for (i = 1; i <= c; i++)
                for (j = i + 1; j <= c; j++)
                    if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            return c % 2 ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2
        }
        function cell(v, goal) { return v == 0 ? "n/a" : sprintf("%.2fx %s", v, v >= goal ? "met" : "NOT met") }
        function row(label, route, peer, goal) {
            printf "| %s | %s | %s | %s |\n", label,
                cell(ratio("pgcorral-default " route, peer), goal),
                cell(ratio("pgcorral-uring " route, peer), goal),
                cell(ratio("pgcorral-epoll " route, peer), goal)
        }
        function mem(k) { return sprintf("%s MB %s", rss[k], rss[k] + 0 <= 10 ? "met" : "NOT met") }
        END {
            row("ping / --io epoll ping >= 0.9x", "ping", "pgcorral-epoll ping", 0.9)
            row("ping / nginx ping >= 0.8x", "ping", "nginx ping", 0.8)
            row("ping / Node ping >= 5x", "ping", "node-express ping", 5)
            row("health / Node health >= 3x", "health", "node-express health", 3)
            row("health / pgbench select1 >= 1.0x", "health", "pgbench select1", 1.0)
            row("accounts / Node accounts >= 4x", "accounts", "node-express accounts", 4)
            row("accounts / own health >= 0.8x", "accounts", "pgcorral-default health", 0.8)
            printf "| reported: accounts on a thread / on the loop | %.2fx | | |\n",
                ratio("pgcorral-default accounts-thread", "pgcorral-default accounts")
            printf "| reported: ping (no database) / pgbench select1, the ceiling of health | %.2fx | %.2fx | %.2fx |\n",
                ratio("pgcorral-default ping", "pgbench select1"),
                ratio("pgcorral-uring ping", "pgbench select1"),
                ratio("pgcorral-epoll ping", "pgbench select1")
            printf "| health, connection_limit 2 / 8 >= 1.0x | %s | | |\n",
                cell(ratio("pgcorral-limit2 health", "pgcorral-default health"), 1.0)
            printf "| RSS per web worker <= 10 MB | %s | %s | %s |\n", mem("pgcorral-default"),
                mem("pgcorral-uring"), mem("pgcorral-epoll")
            if (ratio("pgcorral-accesslog ping", "pgcorral-default ping") > 0) {
                printf "\n| goal (default configuration) | --access-log FILE / without |\n"
                printf "|---|---:|\n"
                printf "| ping with the access log >= 0.85x | %s |\n",
                    cell(ratio("pgcorral-accesslog ping", "pgcorral-default ping"), 0.85)
                printf "| health with the access log >= 0.85x | %s |\n",
                    cell(ratio("pgcorral-accesslog health", "pgcorral-default health"), 0.85)
            }
        }' "$results"
    echo
    [ -n "${access_lines:-}" ] &&
        echo "Access log: $access_lines lines written in the last round (one per request)," \
            "${access_dropped:-?} dropped because the file did not keep up." && echo
    echo "Goal ratios: the median over the rounds of each round's ratio."
    echo "RSS: VmRSS after the runs of each worker process (ours: the web workers, not the"
    echo "supervisor; nginx and Node: their workers, not the master process)."
    echo "<!-- http:end -->"
} >"$report"
cat "$report"

"$root/bench/results-section.sh" http "$report"
