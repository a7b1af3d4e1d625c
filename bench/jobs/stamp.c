/*
 * Benchmark plugin: task `bench.stamp` records when its handler started next to the
 * enqueue time its payload carries ({"t0": microseconds since the epoch}), for the
 * enqueue -> start latency run.
 */
#include <stdio.h>
#include <time.h>

#include "pgcorral.h"

static int stamp(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    struct timespec ts;
    long long t0 = 0;
    char a[32], b[32];

    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(b, sizeof b, "%lld", (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
    if (pgc_job_arg_int(job, "t0", &t0) != 0)
        return pgc_fail(ctx, "bench.stamp: payload needs \"t0\"");
    snprintf(a, sizeof a, "%lld", t0);
    const char *values[2] = {a, b};
    return pgc_exec_params(ctx, "INSERT INTO bench_lat (t0_us, start_us) VALUES ($1, $2)", 2,
                           values, NULL);
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    return pgc_register_task(reg, "bench.stamp", stamp, 0);
}
