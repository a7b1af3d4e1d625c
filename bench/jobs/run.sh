#!/bin/sh
# `make bench-jobs` (and `make bench`): pgcorral's job workers against Graphile Worker
# 0.17.3 on the same throwaway PostgreSQL, same shape (2 processes x 10 concurrent jobs):
# N no-op jobs (default 200,000) added in bulk then drained, and a latency run (jobs added
# one at a time, enqueue -> handler start). Prints the numbers and the ratios, and writes
# them to bench/RESULTS.md (section "jobs").
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
BUILD=${BUILD:-build}
out="$top/$BUILD/bench"
mkdir -p "$out"

command -v node >/dev/null || { echo "bench/jobs: needs node (20) and npm for the peer" >&2; exit 1; }
# The peer is installed under the build folder, not in the source tree.
mkdir -p "$out/graphile"
cp "$here/graphile/package.json" "$here/graphile/gw.js" "$out/graphile/"
if [ ! -d "$out/graphile/node_modules/graphile-worker" ]; then
    (cd "$out/graphile" && npm install --no-audit --no-fund --silent)
fi
# shellcheck disable=SC2046
cc -std=c11 -D_GNU_SOURCE -O2 -pthread -I"$top" -I"$top/runtime" \
    $(pkg-config --cflags libpq libuv jansson) -o "$out/jobs_driver" "$here/driver.c" \
    "$top/tests/lib/pgtest.c" "$top/$BUILD/libpgc_coordinator.a" "$top/$BUILD/libpgc_workers.a" "$top/$BUILD/libpgc_runtime.a" "$top/$BUILD/libpgc_shm.a" \
    $(pkg-config --libs libpq libuv liburing jansson) -ldl -lm -rdynamic
cc -std=c11 -D_GNU_SOURCE -O2 -fPIC -shared -I"$top/runtime" -o "$out/stamp.so" "$here/stamp.c"

BENCH_OUT=$out BENCH_TOP=$top exec "$top/scripts/with-test-pg.sh" "$here/bench.sh"
