/*
 * `pgcorral jobs list|show|retry|cancel|delete`: job management straight against the
 * database named by DATABASE_URL (no supervisor needed), through the SQL functions of
 * migration 7 (pgcorral.list_jobs, get_job, retry_job, retry_failed, cancel_job,
 * delete_job), so that the CLI, the HTTP routes and SQL agree on every rule and message.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "coordinator/cmds_int.h"
#include "coordinator/jobs_int.h"
#include "runtime/rt_util.h"

/* IDs one command takes: a bound on the work (and the output) of one invocation. */
#define JOBS_IDS_MAX 1000

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pgcorral jobs list [--state S] [--task T] [--queue Q] [--limit N] [--json]\n"
            "       pgcorral jobs show ID\n"
            "       pgcorral jobs retry ID...|--failed [--task T]\n"
            "       pgcorral jobs cancel ID...\n"
            "       pgcorral jobs delete ID...\n"
            "       pgcorral jobs cron [--json]\n"
            "  list     newest first; S is queued, scheduled, running, failed, completed or\n"
            "           cancelled; N from 1 to 10000 (default 100); --json prints a JSON array\n"
            "  show     one job as JSON\n"
            "  retry    a failed, cancelled or scheduled job runs now with fresh attempts;\n"
            "           --failed retries every failed job (of task T)\n"
            "  cancel   a queued or scheduled job ends cancelled; a running one is asked to\n"
            "           stop (pgc_cancelled) and ends cancelled when its handler returns\n"
            "  delete   removes jobs that are not running\n"
            "  cron     the recurring jobs (--cron) with their next run and the live nodes\n"
            "IDs are positive integers, at most %d per command. Works with or without a\n"
            "running supervisor: DATABASE_URL comes from the environment. Exit status: 0,\n"
            "1 when the database refused (no such job, a job in the wrong state), 2 for a\n"
            "usage error.\n",
            JOBS_IDS_MAX);
}

/* sup_cli_connect for `pgcorral jobs CMD`. */
static PGconn *connect_db(const char *cmd, struct rt_dburl **db, int *status)
{
    char command[64];
    snprintf(command, sizeof command, "jobs %s", cmd);
    return sup_cli_connect(command, db, status);
}

/* Prints why res failed, in the words of the database function (without "ERROR:"). */
static void print_error(const char *cmd, const struct rt_dburl *db, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    if (state && (strcmp(state, "3F000") == 0 || strcmp(state, "42883") == 0))
        fprintf(stderr,
                "pgcorral jobs %s: the pgcorral schema in %s is missing or older than this "
                "pgcorral: run 'pgcorral migrate' (or start 'pgcorral run' once)\n",
                cmd, db->redacted);
    else
        fprintf(stderr, "pgcorral jobs %s: %s\n", cmd, msg ? msg : PQresultErrorMessage(res));
}

/* Parses the IDs in argv (a flag among them is a usage error). Returns how many, or -1. */
static int parse_ids(const char *cmd, int argc, char **argv, long long *ids)
{
    if (argc == 0) {
        fprintf(stderr, "pgcorral jobs %s: which job? give one or more IDs\n", cmd);
        return -1;
    }
    if (argc > JOBS_IDS_MAX) {
        fprintf(stderr, "pgcorral jobs %s: %d IDs; at most %d per command\n", cmd, argc,
                JOBS_IDS_MAX);
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1] != '\0' && (argv[i][1] < '0' || argv[i][1] > '9')) {
            fprintf(stderr, "pgcorral jobs %s: unknown flag '%s'\n", cmd, argv[i]);
            return -1;
        }
        if (rt_parse_ll(argv[i], 1, LLONG_MAX, &ids[i]) < 0) {
            fprintf(stderr,
                    "pgcorral jobs %s: the job ID must be a positive integer, got '%.64s'\n", cmd,
                    argv[i]);
            return -1;
        }
    }
    return argc;
}

/* The value of a flag at argv[*i] ("--x V" or "--x=V"), advancing *i; NULL after a message. */
static const char *flag_value(const char *cmd, int argc, char **argv, int *i, const char *flag)
{
    size_t n = strlen(flag);
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (*i + 1 >= argc) {
        fprintf(stderr, "pgcorral jobs %s: %s needs a value\n", cmd, flag);
        return NULL;
    }
    return argv[++*i];
}

/* Whether argv[i] is flag, alone or as "flag=value". */
static bool is_flag(const char *arg, const char *flag)
{
    size_t n = strlen(flag);
    return strncmp(arg, flag, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* One line of `jobs list`: id, state, task, queue, attempts, the time that matters. */
static void print_row(json_t *job)
{
    const char *state = json_string_value(json_object_get(job, "state"));
    const char *when = json_string_value(json_object_get(
        job, json_is_null(json_object_get(job, "finished_at")) ? "run_at" : "finished_at"));
    const char *err = json_string_value(json_object_get(job, "last_error"));

    printf("%-10lld %-10s %-24.24s %-12.12s %3lld/%-4lld %-26.26s %.60s\n",
           (long long)json_integer_value(json_object_get(job, "id")), state ? state : "?",
           json_string_value(json_object_get(job, "task")),
           json_string_value(json_object_get(job, "queue")),
           (long long)json_integer_value(json_object_get(job, "attempts")),
           (long long)json_integer_value(json_object_get(job, "max_attempts")), when ? when : "",
           err ? err : "");
}

static int cmd_list(int argc, char **argv)
{
    /* The flags in the order of list_jobs's parameters. */
    static const char *const flags[4] = {"--state", "--task", "--queue", "--limit"};
    const char *values[4] = {NULL, NULL, NULL, "100"};
    struct rt_dburl *db = NULL;
    bool as_json = false;
    long long limit;
    PGconn *conn;
    PGresult *res;
    int status, slot;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            as_json = true;
            continue;
        }
        for (slot = 0; slot < 4 && !is_flag(a, flags[slot]); slot++)
            ;
        if (slot == 4) {
            fprintf(stderr, "pgcorral jobs list: %s '%.64s' (see pgcorral jobs --help)\n",
                    a[0] == '-' ? "unknown flag" : "unexpected argument", a);
            return 2;
        }
        if (!(values[slot] = flag_value("list", argc, argv, &i, flags[slot])))
            return 2;
    }
    if (values[0] && strcmp(values[0], "queued") && strcmp(values[0], "scheduled") &&
        strcmp(values[0], "running") && strcmp(values[0], "failed") &&
        strcmp(values[0], "completed") && strcmp(values[0], "cancelled")) {
        fprintf(stderr,
                "pgcorral jobs list: --state must be queued, scheduled, running, failed, "
                "completed or cancelled, got '%.64s'\n",
                values[0]);
        return 2;
    }
    if (rt_parse_ll(values[3], 1, 10000, &limit) < 0) {
        fprintf(stderr,
                "pgcorral jobs list: --limit must be an integer from 1 to 10000, got "
                "'%.64s'\n",
                values[3]);
        return 2;
    }
    if (!(conn = connect_db("list", &db, &status)))
        goto out;
    res = PQexecParams(conn, "SELECT * FROM pgcorral.list_jobs($1, $2, $3, $4::int)", 4, NULL,
                       values, NULL, NULL, 0);
    PQfinish(conn);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        print_error("list", db, res);
        PQclear(res);
        goto out;
    }
    json_t *all = json_array();
    for (int r = 0; r < PQntuples(res); r++)
        json_array_append_new(all, json_loads(PQgetvalue(res, r, 0), 0, NULL));
    PQclear(res);
    if (as_json) {
        char *text = json_dumps(all, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", text ? text : "[]");
        free(text);
    } else {
        size_t k;
        json_t *job;
        printf("%-10s %-10s %-24s %-12s %-8s %-26s %s\n", "ID", "STATE", "TASK", "QUEUE",
               "ATTEMPTS", "RUN_AT/FINISHED_AT", "LAST_ERROR");
        json_array_foreach(all, k, job) print_row(job);
        printf("(%zu job%s)\n", json_array_size(all), json_array_size(all) == 1 ? "" : "s");
    }
    json_decref(all);
    status = 0;
out:
    rt_dburl_destroy(db);
    return status;
}

/* The text of one job document, pretty. Caller frees. */
static char *pretty(const char *doc)
{
    json_t *j = json_loads(doc, 0, NULL);
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : strdup(doc);
    json_decref(j);
    return text;
}

/* What a job operation did, for its line of output. */
static void print_done(const char *cmd, long long id, const char *doc)
{
    json_t *j = json_loads(doc, 0, NULL);
    const char *state = json_string_value(json_object_get(j, "state"));

    if (strcmp(cmd, "cancel") == 0 && state && strcmp(state, "running") == 0)
        printf("job %lld: cancel requested; it is running and ends cancelled when its handler "
               "returns\n",
               id);
    else if (strcmp(cmd, "delete") == 0)
        printf("job %lld: deleted (it was %s)\n", id, state ? state : "?");
    else
        printf("job %lld: %s\n", id, state ? state : "?");
    json_decref(j);
}

/* show, retry, cancel, delete of the IDs in argv: one statement each. */
static int cmd_each(const char *cmd, int argc, char **argv)
{
    struct rt_dburl *db = NULL;
    PGconn *conn;
    static long long ids[JOBS_IDS_MAX];
    const char *sql = strcmp(cmd, "show") == 0     ? "SELECT pgcorral.get_job($1::bigint)"
                      : strcmp(cmd, "retry") == 0  ? "SELECT pgcorral.retry_job($1::bigint)"
                      : strcmp(cmd, "cancel") == 0 ? "SELECT pgcorral.cancel_job($1::bigint)"
                                                   : "SELECT pgcorral.delete_job($1::bigint)";
    int n = parse_ids(cmd, argc, argv, ids), status = 0;

    if (n < 0)
        return 2;
    if (strcmp(cmd, "show") == 0 && n > 1) {
        fprintf(stderr, "pgcorral jobs show: one ID at a time\n");
        return 2;
    }
    if (!(conn = connect_db(cmd, &db, &status))) {
        rt_dburl_destroy(db);
        return status;
    }
    status = 0;
    for (int i = 0; i < n && PQstatus(conn) == CONNECTION_OK; i++) {
        char idbuf[24];
        const char *values[1] = {idbuf};
        snprintf(idbuf, sizeof idbuf, "%lld", ids[i]);
        PGresult *res = PQexecParams(conn, sql, 1, NULL, values, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            print_error(cmd, db, res);
            status = 1;
        } else if (strcmp(cmd, "show") == 0) {
            char *text = pretty(PQgetvalue(res, 0, 0));
            printf("%s\n", text ? text : PQgetvalue(res, 0, 0));
            free(text);
        } else {
            print_done(cmd, ids[i], PQgetvalue(res, 0, 0));
        }
        PQclear(res);
    }
    PQfinish(conn);
    rt_dburl_destroy(db);
    return status;
}

/* retry --failed [--task T]. */
static int cmd_retry_failed(int argc, char **argv)
{
    const char *values[1] = {NULL};
    struct rt_dburl *db = NULL;
    PGconn *conn;
    PGresult *res;
    int status;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--failed") == 0)
            continue;
        if (!is_flag(argv[i], "--task")) {
            fprintf(stderr,
                    "pgcorral jobs retry: with --failed, only --task T may follow, got "
                    "'%.64s'\n",
                    argv[i]);
            return 2;
        }
        if (!(values[0] = flag_value("retry", argc, argv, &i, "--task")))
            return 2;
    }
    if (!(conn = connect_db("retry", &db, &status))) {
        rt_dburl_destroy(db);
        return status;
    }
    res = PQexecParams(conn, "SELECT * FROM pgcorral.retry_failed($1)", 1, NULL, values, NULL, NULL,
                       0);
    PQfinish(conn);
    status = 1;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        print_error("retry", db, res);
        goto out;
    }
    printf("retried %s failed job%s%s%s", PQgetvalue(res, 0, 0),
           strcmp(PQgetvalue(res, 0, 0), "1") == 0 ? "" : "s", values[0] ? " of task " : "",
           values[0] ? values[0] : "");
    if (strcmp(PQgetvalue(res, 0, 1), "0") != 0)
        printf("; %s skipped: a live job holds their key", PQgetvalue(res, 0, 1));
    printf("\n");
    status = 0;
out:
    PQclear(res);
    rt_dburl_destroy(db);
    return status;
}

int sup_jobs_main(int argc, char **argv)
{
    static const char *const cmds[] = {"list", "show", "retry", "cancel", "delete"};
    const char *cmd = argc > 0 ? argv[0] : NULL;
    bool known = false, failed_flag = false;

    if (cmd && strcmp(cmd, "cron") == 0)
        return sup_jobs_cron_main(argc - 1, argv + 1);
    if (sup_wants_help(argc, argv) || (cmd && strcmp(cmd, "help") == 0)) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; cmd && i < sizeof cmds / sizeof cmds[0]; i++)
        known |= strcmp(cmd, cmds[i]) == 0;
    if (!known) {
        if (cmd)
            fprintf(stderr, "pgcorral jobs: unknown command '%.64s'\n", cmd);
        usage(stderr);
        return 2;
    }
    for (int i = 1; i < argc; i++)
        failed_flag |= strcmp(argv[i], "--failed") == 0;
    if (failed_flag && strcmp(cmd, "retry") != 0) {
        fprintf(stderr, "pgcorral jobs %s: --failed is a flag of retry\n", cmd);
        return 2;
    }
    if (strcmp(cmd, "list") == 0)
        return cmd_list(argc - 1, argv + 1);
    if (failed_flag)
        return cmd_retry_failed(argc - 1, argv + 1);
    return cmd_each(cmd, argc - 1, argv + 1);
}
