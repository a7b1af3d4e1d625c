/*
 * Example plugin: the small tasks for benchmarks and demonstrations. `noop` does nothing,
 * `sleep` ({"ms": N}) waits N milliseconds (watch draining, orphan recovery and cancel: it
 * stops early when pgc_cancelled says so), `fail` always fails (watch retries and backoff),
 * `discard` gives its job up for good (failed at once, never retried), `snooze` ({"s": N})
 * puts its job off N seconds once, then succeeds.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "pgcorral.h"

static int noop(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    return 0;
}

/* How long sleep naps between two looks at pgc_cancelled. */
#define SLEEP_SLICE_MS 50

/* {"ms": N}: sleeps N ms, 0..3600000; stops early when the job is cancelled. */
static int sleep_task(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    long long ms = 0, slept = 0;
    int rc = pgc_job_arg_int(job, "ms", &ms);
    /* Retrying cannot mend a payload: discard the job rather than retry it 25 times. */
    if (rc == PGC_EINVAL || ms < 0 || ms > 3600000)
        return pgc_discard(ctx, "sleep: \"ms\" must be an integer from 0 to 3600000");
    while (slept < ms) {
        long long nap = ms - slept < SLEEP_SLICE_MS ? ms - slept : SLEEP_SLICE_MS;
        struct timespec ts = {0, (long)nap * 1000000};
        while (nanosleep(&ts, &ts) != 0) {
        }
        slept += nap;
        if (slept < ms && pgc_cancelled(ctx))
            return pgc_fail(ctx, "sleep: cancelled after %lld of %lld ms", slept, ms);
    }
    return 0;
}

static int fail(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    return pgc_fail(ctx, "fail: always fails (attempt %d of %d)", pgc_job_attempt(job),
                    pgc_job_max_attempts(job));
}

static int discard(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    return pgc_discard(ctx, "discard: never succeeds, so it is not retried");
}

/* Creates example.snoozed, the jobs that snoozed once, under an advisory lock (workers
 * may get there together). */
static int create_snoozed(struct pgc_ctx *ctx, void *arg)
{
    static const char *const stmts[] = {
        "SELECT pg_advisory_xact_lock(7045631834937901421)",
        "CREATE SCHEMA IF NOT EXISTS example",
        "CREATE TABLE IF NOT EXISTS example.snoozed (job_id bigint PRIMARY KEY)",
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        int rc = pgc_exec(ctx, stmts[i], NULL);
        if (rc)
            return rc;
    }
    return 0;
}

/* {"s": N}: the first run snoozes N s (0..PGC_SNOOZE_MAX_S), the next one succeeds. The
 * job's attempt number cannot tell them apart (a snooze does not count one), so the first
 * run leaves a row in example.snoozed, which the second one removes. */
static int snooze(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    static const char mark_sql[] = "INSERT INTO example.snoozed VALUES ($1) ON CONFLICT DO NOTHING";
    struct pgc_result *res = NULL;
    long long s = 0;
    char id[24];
    const char *values[1] = {id};
    int rc;

    if (pgc_job_arg_int(job, "s", &s) != 0 || s < 0 || s > PGC_SNOOZE_MAX_S)
        return pgc_discard(ctx, "snooze: \"s\" must be an integer from 0 to %d", PGC_SNOOZE_MAX_S);
    snprintf(id, sizeof id, "%lld", (long long)pgc_job_id(job));
    rc = pgc_exec_params(ctx, mark_sql, 1, values, &res);
    if (rc == PGC_ESQL && strcmp(pgc_error_sqlstate(ctx), "42P01") == 0) {
        rc = pgc_tx(ctx, create_snoozed, NULL);
        if (rc == 0)
            rc = pgc_exec_params(ctx, mark_sql, 1, values, &res);
    }
    if (rc)
        return rc;
    long long marked = pgc_affected(res);
    pgc_result_free(res);
    if (marked == 1)
        return pgc_snooze(ctx, (int)s);
    return pgc_exec_params(ctx, "DELETE FROM example.snoozed WHERE job_id = $1", 1, values, NULL);
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    if (pgc_register_task(reg, "noop", noop, 0) < 0 ||
        pgc_register_task(reg, "sleep", sleep_task, 0) < 0 ||
        pgc_register_task(reg, "fail", fail, 0) < 0 ||
        pgc_register_task(reg, "discard", discard, 0) < 0 ||
        pgc_register_task(reg, "snooze", snooze, 0) < 0)
        return -1;
    return 0;
}
