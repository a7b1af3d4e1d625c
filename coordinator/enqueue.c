/*
 * `pgcorral enqueue TASK JSON [--queue Q] [--run-at T] [--priority P] [--key K]
 * [--max-attempts N] [--force]`: adds one job through pgcorral.add_known_job (which refuses
 * a task no live node registers, unless --force) and prints its id.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "coordinator/cmds_int.h"
#include "coordinator/jobs_int.h"
#include "runtime/rt_input.h"
#include "runtime/rt_util.h"
#include "runtime/rt_time.h"
#include "runtime/rt_jobq.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: pgcorral enqueue TASK JSON [--queue Q] [--run-at T] [--priority P]\n"
               "                        [--key K] [--max-attempts N] [--force]\n"
               "  (flags before, between or after TASK and JSON; -- ends the flags)\n"
               "  TASK   the task name a plugin registered (e.g. noop)\n"
               "  JSON   the payload, any JSON value ('{}' for none)\n"
               "  --run-at T   an ISO 8601 timestamp, or +N[s|m|h|d] from now (at most\n"
               "               100 years)\n"
               "  --priority P lower runs first (default 0)\n"
               "  --key K      dedupe key: while a job with key K exists, nothing is added\n"
               "               and its id is printed\n"
               "  --force      add it even when no live supervisor's plugins register TASK\n"
               "               (refused otherwise, exit 2, naming the tasks they do)\n"
               "Limits: TASK and Q 128 bytes, K 512 bytes, JSON 256 KiB (exit 2 beyond).\n"
               "Prints the job's id. DATABASE_URL comes from the environment.\n");
}

/* Parses an integer flag value in [min, max]. */
static int int_arg(const char *flag, const char *v, long min, long max, int *out)
{
    long long n;
    if (rt_parse_ll(v, min, max, &n) < 0) {
        fprintf(stderr, "pgcorral enqueue: %s must be an integer from %ld to %ld, got '%s'\n", flag,
                min, max, v);
        return -1;
    }
    *out = (int)n;
    return 0;
}

/* What a field is called on this command line, for the length-limit message. */
static const char *field_arg(const char *field)
{
    if (strcmp(field, "task") == 0)
        return "TASK";
    if (strcmp(field, "payload") == 0)
        return "JSON (the payload, compacted)";
    return strcmp(field, "queue") == 0 ? "--queue" : "--key";
}

int sup_enqueue_main(int argc, char **argv)
{
    const char *url = getenv("DATABASE_URL");
    struct rt_job_spec spec;
    struct rt_dburl *db = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    const char *values[9];
    char err[1024], when[64];
    const char *pos[2] = {NULL, NULL};
    int npos = 0, status = 2;
    json_error_t jerr;
    json_t *payload;
    const char *field;
    size_t flen, fmax;

    memset(&spec, 0, sizeof spec);
    if (sup_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    bool only_words = false, force = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        char flag[32];
        /* A flag is -x or --x; a JSON payload may start with '-' only as a number. */
        if (!only_words && strcmp(a, "--") == 0) {
            only_words = true;
            continue;
        }
        if (!only_words && strcmp(a, "--force") == 0) {
            force = true;
            continue;
        }
        if (!only_words && a[0] == '-' && a[1] && (a[1] < '0' || a[1] > '9') && a[1] != '.') {
            static const char *const known[] = {"--queue", "--key", "--run-at", "--priority",
                                                "--max-attempts"};
            size_t n = strcspn(a, "="), k = 0;
            while (k < sizeof known / sizeof known[0] &&
                   !(strlen(known[k]) == n && strncmp(a, known[k], n) == 0))
                k++;
            if (k == sizeof known / sizeof known[0]) {
                fprintf(stderr, "pgcorral enqueue: unknown flag '%s' (try --help)\n", a);
                goto out;
            }
            /* --flag=value or --flag value */
            memcpy(flag, a, n);
            flag[n] = '\0';
            if (a[n] == '=') {
                v = a + n + 1;
            } else if (i + 1 < argc) {
                v = argv[++i];
            } else {
                fprintf(stderr, "pgcorral enqueue: %s needs a value\n", a);
                goto out;
            }
            a = flag;
            if (strcmp(a, "--queue") == 0 && *v) {
                free((char *)spec.queue);
                spec.queue = strdup(v);
            } else if (strcmp(a, "--key") == 0 && *v) {
                free((char *)spec.key);
                spec.key = strdup(v);
            } else if (strcmp(a, "--run-at") == 0) {
                if (rt_run_at_parse(v, when, sizeof when) < 0) {
                    fprintf(stderr,
                            "pgcorral enqueue: --run-at must be " RT_RUN_AT_FORMS ", got '%s'\n",
                            v);
                    goto out;
                }
                free((char *)spec.run_at);
                spec.run_at = strdup(when);
            } else if (strcmp(a, "--priority") == 0) {
                if (int_arg(a, v, -2147483647L - 1, 2147483647L, &spec.priority) < 0)
                    goto out;
                spec.has_priority = true;
            } else if (strcmp(a, "--max-attempts") == 0) {
                if (int_arg(a, v, 1, 2147483647L, &spec.max_attempts) < 0)
                    goto out;
                spec.has_max_attempts = true;
            } else {
                fprintf(stderr, "pgcorral enqueue: %s must not be empty\n", a);
                goto out;
            }
            continue;
        }
        if (npos == 2) {
            fprintf(stderr, "pgcorral enqueue: unexpected argument '%s' (try --help)\n", a);
            goto out;
        }
        pos[npos++] = a;
    }
    if (npos < 2 || !*pos[0]) {
        fprintf(stderr, "pgcorral enqueue: %s\n",
                npos == 0  ? "TASK and JSON are missing"
                : !*pos[0] ? "TASK must not be empty"
                           : "JSON (the payload) is missing; '{}' for none");
        usage(stderr);
        goto out;
    }
    payload = json_loads(pos[1], JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!payload) {
        fprintf(stderr, "pgcorral enqueue: the payload is not valid JSON (column %d): %s\n",
                jerr.column, jerr.text);
        goto out;
    }
    spec.payload = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(payload);
    spec.task = strdup(pos[0]);
    if (!spec.task || !spec.payload) {
        fprintf(stderr, "pgcorral enqueue: out of memory\n");
        status = 1;
        goto out;
    }
    field =
        rt_job_field_too_long(spec.task, spec.queue, spec.key, strlen(spec.payload), &flen, &fmax);
    if (field) {
        fprintf(stderr, "pgcorral enqueue: %s is %zu bytes; the limit is %zu bytes\n",
                field_arg(field), flen, fmax);
        goto out;
    }
    if (!url || !*url) {
        fprintf(stderr, "pgcorral enqueue: DATABASE_URL is not set\n");
        goto out;
    }
    if (rt_dburl_parse(url, &db, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral enqueue: DATABASE_URL: %s\n", err);
        goto out;
    }
    status = 1;
    conn = PQconnectdbParams(db->keywords, db->values, 0);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "pgcorral enqueue: cannot connect to %s: %s", db->redacted,
                PQerrorMessage(conn));
        goto out;
    }
    rt_job_spec_params(&spec, values);
    values[7] = NULL;
    values[8] = force ? "true" : "false";
    res = PQexecParams(conn, JOB_ADD_KNOWN_SQL, 9, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, JOB_UNKNOWN_TASK_STATE) == 0) {
            fprintf(stderr, "pgcorral enqueue: %s (--force enqueues it anyway)\n",
                    PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
            status = 2;
        } else if (state && strcmp(state, "3F000") == 0)
            fprintf(stderr,
                    "pgcorral enqueue: the pgcorral schema does not exist in %s: run "
                    "'pgcorral migrate' (or start 'pgcorral run' once)\n",
                    db->redacted);
        else
            fprintf(stderr, "pgcorral enqueue: %s", PQresultErrorMessage(res));
        goto out;
    }
    printf("%s\n", PQgetvalue(res, 0, 0));
    if (strcmp(PQgetvalue(res, 0, 1), "f") == 0)
        fprintf(stderr, "pgcorral enqueue: a job with key '%s' exists: nothing added\n", spec.key);
    status = 0;

out:
    PQclear(res);
    PQfinish(conn);
    rt_dburl_destroy(db);
    rt_job_spec_free(&spec);
    return status;
}
