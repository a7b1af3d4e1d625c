/*
 * Test plugin of the systemd test (t409): its pgc_plugin_init takes INIT_MS (default 1000)
 * milliseconds, so that no worker can be ready sooner than that after it was forked.
 */
#include <time.h>

#include "pgcorral.h"

#ifndef INIT_MS
#define INIT_MS 1000
#endif

static int noop(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    return 0;
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    struct timespec ts = {INIT_MS / 1000, (INIT_MS % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0)
        ;
    return pgc_register_task(reg, "slow_init.noop", noop, 0);
}
