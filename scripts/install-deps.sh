#!/bin/sh
# Installs the Debian packages pgcorral needs to build and test, only those that are
# missing, and says what it installs. Run by every make target, so it must be quick and
# silent when nothing is missing. Extra package names on the command line are added
# (make fuzz: clang libclang-rt-14-dev).
set -eu

PACKAGES="gcc make perl pkg-config libpq-dev libuv1-dev liburing-dev libjansson-dev \
node-llhttp postgresql procps prometheus $*"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
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
