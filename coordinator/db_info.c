/*
 * `pgcorral ctl db`: the database's side of the picture (its size, the largest tables,
 * and pg_stat_activity counts by state for pgcorral's connections), read by the ctl
 * process itself over DATABASE_URL, since the supervisor's loop must not wait on queries.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "coordinator/cmds_int.h"
#include "runtime/rt_util.h"
#include "coordinator/coordinator.h"

#define DB_TABLES_DEFAULT 10
#define DB_TABLES_MAX 1000

/* The database and the server's connection totals, in one row. */
static const char db_sql[] =
    "SELECT current_database(), pg_database_size(current_database()),"
    "       pg_size_pretty(pg_database_size(current_database())),"
    "       current_setting('server_version'), current_setting('max_connections')::int,"
    "       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    "          AND pid <> pg_backend_pid())";

/* The largest tables (with their indexes and TOAST) of the current database. */
static const char tables_sql[] =
    "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid),"
    "       pg_indexes_size(c.oid), greatest(c.reltuples, 0)::bigint,"
    "       pg_size_pretty(pg_total_relation_size(c.oid))"
    "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p', 'm')"
    "   AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    "   AND n.nspname NOT LIKE 'pg_toast%'"
    " ORDER BY pg_total_relation_size(c.oid) DESC, n.nspname, c.relname"
    " LIMIT $1";

/* pgcorral's connections (application_name "pgcorral ..."; not this one) by state. */
static const char activity_sql[] =
    "SELECT application_name, coalesce(state, 'unknown'), count(*),"
    "       coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8"
    "  FROM pg_stat_activity"
    " WHERE application_name LIKE 'pgcorral%' AND pid <> pg_backend_pid()"
    "   AND backend_type = 'client backend'"
    " GROUP BY 1, 2 ORDER BY 1, 2";

/* `ctl db --help`, or after a usage error (to stderr). */
static void db_usage(FILE *f)
{
    fprintf(f,
            "usage: pgcorral ctl [--json] db [N]\n"
            "The database's view: its size, the N largest tables (default %d), and\n"
            "pg_stat_activity counts by state for pgcorral's connections (application_name\n"
            "'pgcorral ...'). Unlike the other ctl commands it does not ask the supervisor:\n"
            "it connects to the database itself with DATABASE_URL from the environment.\n",
            DB_TABLES_DEFAULT);
}

/* Runs sql with params; returns the result when it has rows, else NULL with err set. */
static PGresult *db_query(PGconn *conn, const char *sql, int n, const char *const *values,
                          char *err, size_t errlen)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    snprintf(err, errlen, "%s", PQresultErrorMessage(res));
    err[strcspn(err, "\n")] = 0;
    PQclear(res);
    return NULL;
}

/* The three results as one document: {"database", "tables", "connections"}. */
static json_t *db_document(PGresult *db, PGresult *tables, PGresult *act)
{
    json_t *doc, *tarr = json_array(), *apps = json_array(), *states = json_object();
    long long total = 0;

    for (int i = 0; i < PQntuples(tables); i++)
        json_array_append_new(
            tarr, json_pack("{s:s,s:s,s:I,s:I,s:I,s:I}", "schema", PQgetvalue(tables, i, 0), "name",
                            PQgetvalue(tables, i, 1), "total_bytes",
                            (json_int_t)atoll(PQgetvalue(tables, i, 2)), "table_bytes",
                            (json_int_t)atoll(PQgetvalue(tables, i, 3)), "index_bytes",
                            (json_int_t)atoll(PQgetvalue(tables, i, 4)), "rows_estimate",
                            (json_int_t)atoll(PQgetvalue(tables, i, 5))));
    for (int i = 0; i < PQntuples(act); i++) {
        const char *state = PQgetvalue(act, i, 1);
        long long n = atoll(PQgetvalue(act, i, 2));
        json_t *prev = json_object_get(states, state);
        json_object_set_new(states, state,
                            json_integer((prev ? json_integer_value(prev) : 0) + (json_int_t)n));
        total += n;
        json_array_append_new(apps, json_pack("{s:s,s:s,s:I,s:f}", "application_name",
                                              PQgetvalue(act, i, 0), "state", state, "count",
                                              (json_int_t)n, "oldest_xact_s",
                                              atof(PQgetvalue(act, i, 3))));
    }
    doc = json_pack("{s:{s:s,s:I,s:s,s:s,s:i,s:I},s:o,s:{s:I,s:o,s:o}}", "database", "name",
                    PQgetvalue(db, 0, 0), "size_bytes", (json_int_t)atoll(PQgetvalue(db, 0, 1)),
                    "size", PQgetvalue(db, 0, 2), "server_version", PQgetvalue(db, 0, 3),
                    "max_connections", atoi(PQgetvalue(db, 0, 4)), "client_connections",
                    (json_int_t)atoll(PQgetvalue(db, 0, 5)), "tables", tarr, "connections", "total",
                    (json_int_t)total, "by_state", states, "by_application", apps);
    return doc;
}

/* The same for people: a few lines and two tables. */
static void db_print(PGresult *db, PGresult *tables, PGresult *act)
{
    long long ours = 0;

    for (int i = 0; i < PQntuples(act); i++)
        ours += atoll(PQgetvalue(act, i, 2));
    printf("database %s: %s (PostgreSQL %s)\n", PQgetvalue(db, 0, 0), PQgetvalue(db, 0, 2),
           PQgetvalue(db, 0, 3));
    printf("connections: %s client connections of max_connections %s; %lld are pgcorral's\n\n",
           PQgetvalue(db, 0, 5), PQgetvalue(db, 0, 4), ours);

    printf("%-20s %-32s %10s %14s %14s %14s\n", "SCHEMA", "TABLE", "TOTAL", "TABLE_BYTES",
           "INDEX_BYTES", "ROWS_ESTIMATE");
    for (int i = 0; i < PQntuples(tables); i++)
        printf("%-20s %-32s %10s %14s %14s %14s\n", PQgetvalue(tables, i, 0),
               PQgetvalue(tables, i, 1), PQgetvalue(tables, i, 6), PQgetvalue(tables, i, 3),
               PQgetvalue(tables, i, 4), PQgetvalue(tables, i, 5));
    if (PQntuples(tables) == 0)
        printf("(no tables)\n");

    printf("\n%-32s %-30s %6s %14s\n", "APPLICATION", "STATE", "COUNT", "OLDEST_XACT_S");
    for (int i = 0; i < PQntuples(act); i++)
        printf("%-32s %-30s %6s %14.1f\n", PQgetvalue(act, i, 0), PQgetvalue(act, i, 1),
               PQgetvalue(act, i, 2), atof(PQgetvalue(act, i, 3)));
    if (PQntuples(act) == 0)
        printf("(no pgcorral connections)\n");
}

int ctl_db_main(bool json, int argc, char **argv)
{
    const char *url = getenv("DATABASE_URL"), *ntext = NULL;
    char err[1024], nbuf[16];
    struct rt_dburl *db = NULL;
    PGconn *conn = NULL;
    PGresult *dbres = NULL, *tables = NULL, *act = NULL;
    const char *errpos = NULL;
    int n = DB_TABLES_DEFAULT;
    int status = 1;

    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            db_usage(stdout);
            return 0;
        } else if (!ntext) {
            ntext = argv[i];
        } else {
            fprintf(stderr, "pgcorral ctl db: unexpected argument '%s'\n", argv[i]);
            db_usage(stderr);
            return 2;
        }
    }
    if (ntext) {
        if (rt_parse_int(ntext, 1, DB_TABLES_MAX, &n) != 0) {
            fprintf(stderr, "pgcorral ctl db: N (tables to list) must be from 1 to %d, got '%s'\n",
                    DB_TABLES_MAX, ntext);
            return 2;
        }
    }
    if (!url || !*url) {
        fprintf(stderr, "pgcorral ctl db: DATABASE_URL is not set (ctl db connects to the "
                        "database itself, not through the supervisor)\n");
        return 2;
    }
    if (rt_dburl_parse(url, &db, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral ctl db: %s\n", err);
        return 2;
    }
    if (rt_dburl_set(db, "application_name", "pgcorral ctl") < 0) {
        errpos = "set up the connection";
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    conn = PQconnectdbParams(db->keywords, db->values, 0);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        errpos = "connect to";
        snprintf(err, sizeof err, "%s", conn ? PQerrorMessage(conn) : "out of memory");
        err[strcspn(err, "\n")] = 0;
        goto fail;
    }
    /* A stuck catalog lock must not hang an operator's command. */
    PQclear(PQexec(conn, "SET statement_timeout = '10s'"));
    snprintf(nbuf, sizeof nbuf, "%d", n);
    const char *params[] = {nbuf};
    errpos = "query";
    if (!(dbres = db_query(conn, db_sql, 0, NULL, err, sizeof err)) ||
        !(tables = db_query(conn, tables_sql, 1, params, err, sizeof err)) ||
        !(act = db_query(conn, activity_sql, 0, NULL, err, sizeof err)))
        goto fail;

    if (json) {
        json_t *doc = db_document(dbres, tables, act);
        char *text = rt_json_dumps(doc, JSON_COMPACT);
        if (!text) {
            snprintf(err, sizeof err, "out of memory");
            json_decref(doc);
            goto fail;
        }
        printf("%s\n", text);
        free(text);
        json_decref(doc);
    } else {
        db_print(dbres, tables, act);
    }
    status = 0;
    goto out;

fail:
    fprintf(stderr, "pgcorral ctl db: cannot %s the database %s: %s\n", errpos, db->redacted, err);
out:
    PQclear(act);
    PQclear(tables);
    PQclear(dbres);
    PQfinish(conn);
    rt_dburl_destroy(db);
    return status;
}
