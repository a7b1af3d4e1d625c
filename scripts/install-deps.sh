#!/bin/sh
# pgcorral's Debian packages, by what needs them. Installs only those that are missing and
# says which; quick and silent when nothing is missing.
#
#   install-deps.sh --check        the build libraries only: print the one apt-get line
#                                  that installs what is missing and exit 1 (plain `make`)
#   install-deps.sh GROUP...       install what the groups need (root); groups:
#       build  compiler and libraries          run    + PostgreSQL for `make run`
#       test   + PostgreSQL, wrk, promtool,    bench  + pgbench, PgBouncer, nginx, wrk,
#              man (t408 renders the man page),         valgrind, Node.js (npm comes with it)
#              PgBouncer (t222 pipelines through it)
#       fuzz   + clang and libFuzzer           format clang-format (make format, format-check)
set -eu

BUILD_PKGS="gcc make pkg-config libpq-dev libuv1-dev liburing-dev libjansson-dev node-llhttp"

packages() {
    case $1 in
    build) echo "$BUILD_PKGS" ;;
    run) echo "$BUILD_PKGS postgresql procps curl" ;;
    test) echo "$BUILD_PKGS postgresql procps perl wrk prometheus curl man-db pgbouncer" ;;
    bench) echo "$BUILD_PKGS postgresql procps wrk curl pgbouncer nginx-light valgrind nodejs" ;;
    fuzz) echo "$BUILD_PKGS clang libclang-rt-14-dev" ;;
    format) echo "clang-format" ;;
    *)
        echo "install-deps.sh: unknown group '$1' (build, run, test, bench, fuzz, format)" >&2
        exit 2
        ;;
    esac
}

missing_of() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            printf ' %s' "$p"
    done
}

if [ "${1:-}" = "--check" ]; then
    # shellcheck disable=SC2086
    missing=$(missing_of $BUILD_PKGS)
    [ -z "$missing" ] && exit 0
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo "
    echo "pgcorral: the build needs Debian packages that are missing; install them with:" >&2
    echo "  ${sudo}apt-get update && ${sudo}apt-get install -y$missing" >&2
    echo "(or run 'make deps', 'make test' or 'make run', which install what they need)" >&2
    exit 1
fi

all=""
for g in "${@:-build}"; do
    all="$all $(packages "$g")"
done
# shellcheck disable=SC2086
missing=$(missing_of $(printf '%s\n' $all | sort -u))
[ -z "$missing" ] && exit 0

echo "pgcorral: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "pgcorral: not root; run: sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing >&2
