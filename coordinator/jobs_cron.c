/*
 * `pgcorral jobs cron`: the recurring-job schedules every supervisor sharing the database
 * has recorded (pgcorral.cron_schedules), with their next run, last tick and the live
 * nodes that run them. Read by the CLI itself over DATABASE_URL, like `ctl db`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "coordinator/cmds_int.h"
#include "coordinator/jobs_int.h"

/* Columns: schedule, spec, task, payload, last tick (Unix s), last job, live nodes (a
 * comma-separated list, NULL when none). The first 1000 schedules (the table holds those
 * of every node). */
static const char list_sql[] =
    "SELECT c.schedule, c.spec, c.task, c.payload::text,"
    "  extract(epoch FROM c.last_tick)::bigint, c.last_job,"
    "  (SELECT string_agg(n.node, ',' ORDER BY n.node) FROM pgcorral.live_nodes() n"
    "    WHERE c.schedule = ANY (n.schedules))"
    " FROM pgcorral.cron_schedules c ORDER BY c.spec, c.task, c.schedule LIMIT 1000";

static void usage(FILE *f)
{
    fprintf(f, "usage: pgcorral jobs cron [--json]\n"
               "Lists the recurring jobs (--cron) of every supervisor on DATABASE_URL: the\n"
               "schedule, its next run (UTC), the last tick enqueued and the live nodes that\n"
               "run it. Connects to the database itself (DATABASE_URL from the environment).\n");
}

/* Unix seconds as "2026-01-31 12:00:00Z" into buf, or "-" for t < 0. Returns buf. */
static char *utc_text(long long t, char *buf, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t < 0 || !gmtime_r(&tt, &tm))
        snprintf(buf, size, "-");
    else
        strftime(buf, size, "%Y-%m-%d %H:%M:%SZ", &tm);
    return buf;
}

int sup_jobs_cron_main(int argc, char **argv)
{
    const char *url = getenv("DATABASE_URL");
    struct rt_dburl *db = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *list = NULL;
    char err[1024];
    bool json = false;
    int status = 2;

    if (sup_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
            continue;
        }
        fprintf(stderr, "pgcorral jobs cron: %s '%s' (try --help)\n",
                argv[i][0] == '-' ? "unknown flag" : "unexpected argument", argv[i]);
        return 2;
    }
    if (!url || !*url) {
        fprintf(stderr, "pgcorral jobs cron: DATABASE_URL is not set\n");
        return 2;
    }
    if (rt_dburl_parse(url, &db, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral jobs cron: DATABASE_URL: %s\n", err);
        return 2;
    }
    status = 1;
    conn = PQconnectdbParams(db->keywords, db->values, 0);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "pgcorral jobs cron: cannot connect to %s: %s", db->redacted,
                PQerrorMessage(conn));
        goto out;
    }
    res = PQexec(conn, list_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && (strcmp(state, "3F000") == 0 || strcmp(state, "42P01") == 0))
            fprintf(stderr,
                    "pgcorral jobs cron: the pgcorral schema in %s is older than version %d: "
                    "run 'pgcorral migrate' (or start 'pgcorral run' once)\n",
                    db->redacted, SUP_SCHEMA_VERSION);
        else
            fprintf(stderr, "pgcorral jobs cron: %s", PQresultErrorMessage(res));
        goto out;
    }
    list = json_array();
    if (!list)
        goto out;
    for (int i = 0; i < PQntuples(res); i++) {
        struct sup_cron c;
        const char *rest;
        long long next = -1, last = strtoll(PQgetvalue(res, i, 4), NULL, 10);
        char why[256];
        json_t *nodes = json_array(), *payload = json_loads(PQgetvalue(res, i, 3), 0, NULL);

        /* A spec this build cannot read (a newer node's) has no next run here. */
        if (sup_cron_parse_spec(&c, PQgetvalue(res, i, 1), &rest, why, sizeof why) == 0)
            next = sup_cron_next(&c, (int64_t)time(NULL));
        if (!PQgetisnull(res, i, 6)) {
            char *names = strdup(PQgetvalue(res, i, 6)), *save = NULL;
            for (char *n = names ? strtok_r(names, ",", &save) : NULL; n;
                 n = strtok_r(NULL, ",", &save))
                json_array_append_new(nodes, json_string(n));
            free(names);
        }
        json_array_append_new(
            list, json_pack("{s:s,s:s,s:s,s:o,s:o,s:I,s:o,s:o}", "schedule", PQgetvalue(res, i, 0),
                            "spec", PQgetvalue(res, i, 1), "task", PQgetvalue(res, i, 2), "payload",
                            payload ? payload : json_null(), "next_run",
                            next >= 0 ? json_integer(next) : json_null(), "last_tick",
                            (json_int_t)last, "last_job",
                            PQgetisnull(res, i, 5)
                                ? json_null()
                                : json_integer(strtoll(PQgetvalue(res, i, 5), NULL, 10)),
                            "nodes", nodes));
    }
    if (json) {
        json_t *doc = json_pack("{s:O}", "schedules", list);
        char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
        if (text)
            printf("%s\n", text);
        free(text);
        json_decref(doc);
        status = text ? 0 : 1;
        goto out;
    }
    if (json_array_size(list) == 0) {
        printf("no recurring jobs (start a supervisor with --cron 'SPEC TASK [JSON]')\n");
        status = 0;
        goto out;
    }
    size_t i;
    json_t *e;
    int wspec = 4, wtask = 4; /* the widths of SPEC and TASK: their longest value */
    json_array_foreach(list, i, e)
    {
        int ls = (int)strlen(json_string_value(json_object_get(e, "spec")));
        int lt = (int)strlen(json_string_value(json_object_get(e, "task")));
        wspec = ls > wspec ? ls : wspec;
        wtask = lt > wtask ? lt : wtask;
    }
    printf("%-16s  %-*s  %-*s  %-20s  %-20s  %s\n", "SCHEDULE", wspec, "SPEC", wtask, "TASK",
           "NEXT RUN", "LAST TICK", "NODES");
    json_array_foreach(list, i, e)
    {
        char next[32], last[32], nodes[256] = "";
        json_t *n;
        size_t k;
        json_array_foreach(json_object_get(e, "nodes"), k, n)
        {
            size_t len = strlen(nodes);
            snprintf(nodes + len, sizeof nodes - len, "%s%s", k ? "," : "", json_string_value(n));
        }
        json_t *nr = json_object_get(e, "next_run");
        printf("%-16s  %-*s  %-*s  %-20s  %-20s  %s\n",
               json_string_value(json_object_get(e, "schedule")), wspec,
               json_string_value(json_object_get(e, "spec")), wtask,
               json_string_value(json_object_get(e, "task")),
               utc_text(json_is_integer(nr) ? json_integer_value(nr) : -1, next, sizeof next),
               utc_text(json_integer_value(json_object_get(e, "last_tick")), last, sizeof last),
               nodes[0] ? nodes : "(no live node)");
    }
    status = 0;

out:
    json_decref(list);
    PQclear(res);
    PQfinish(conn);
    rt_dburl_destroy(db);
    return status;
}
