# Sourced by the benchmarks that run against the throwaway PostgreSQL (bench/http/run.sh,
# bench/http/cpu-split.sh, bench/cluster/run.sh): sets here (the benchmark's folder), root
# (the checkout) and BUILD (absolute; default build/), and re-runs the benchmark under
# scripts/with-test-pg.sh unless PGC_TEST_DATABASE_URL names a database already.
# shellcheck shell=sh
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$root/$BUILD ;; esac
if [ -z "${PGC_TEST_DATABASE_URL:-}" ]; then
    exec "$root/scripts/with-test-pg.sh" "$0" "$@"
fi

# bench_accounts_setup DIR: what the accounts rows of bench-http and cpu-split need:
# DIR/accounts_thread.so (bench/http/accounts_thread.c, the example's handler on a thread)
# and the wrk scripts DIR/accounts.lua and DIR/accounts-thread.lua (a random account id of
# pgbench's 100000 per request).
bench_accounts_setup() {
    cc -std=c11 -D_GNU_SOURCE -O2 -fPIC -shared -I"$root" -I"$root/runtime" \
        -o "$1/accounts_thread.so" "$root/bench/http/accounts_thread.c"
    for route in /api/v1/accounts /bench/accounts-thread; do
        cat >"$1/$(basename "$route").lua" <<LUA
request = function()
    return wrk.format("GET", "$route/" .. math.random(1, 100000))
end
LUA
    done
}
