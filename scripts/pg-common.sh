# Shared by the dev-database and test-database scripts: finds PostgreSQL's server
# binaries and runs them as the postgres user when we are root (initdb refuses root).

pg_bindir() {
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    echo "pgcorral: no PostgreSQL server binaries under /usr/lib/postgresql (make deps)" >&2
    return 1
}

# as_pg_user CMD...: runs CMD as the database owner.
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_superuser() {
    if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

# pg_init DIR PORT: initdb into DIR/data (first use only) with the socket in DIR.
pg_init() {
    dir=$1 port=$2
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg_user "$(pg_bindir)/initdb" -D "$dir/data" -U "$(pg_superuser)" --auth=trust \
            --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; return 1; }
    fi
}

# pg_start DIR PORT [extra postgres options]
pg_start() {
    dir=$1 port=$2
    shift 2
    as_pg_user "$(pg_bindir)/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses='' $*" start >/dev/null ||
        { tail -n 20 "$dir/postgres.log" >&2; return 1; }
}

pg_stop() {
    dir=$1
    [ -f "$dir/data/postmaster.pid" ] || return 0
    as_pg_user "$(pg_bindir)/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}
