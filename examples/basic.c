/*
 * Example plugin: the small tasks for benchmarks and demonstrations. `noop` does nothing,
 * `sleep` ({"ms": N}) waits N milliseconds (watch draining, orphan recovery and cancel: it
 * stops early when pgc_cancelled says so), `fail` always fails (watch retries and backoff).
 */
#include <stdio.h>
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
    if (rc == PGC_EINVAL || ms < 0 || ms > 3600000)
        return pgc_fail(ctx, "sleep: \"ms\" must be an integer from 0 to 3600000");
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

int pgc_plugin_init(struct pgc_registry *reg)
{
    if (pgc_register_task(reg, "noop", noop, 0) < 0 ||
        pgc_register_task(reg, "sleep", sleep_task, 0) < 0 ||
        pgc_register_task(reg, "fail", fail, 0) < 0)
        return -1;
    return 0;
}
