/*
 * Recurring jobs on the supervisor's job connection: at each tick of a --cron schedule the
 * supervisor sends pgcorral.cron_fire for it, which enqueues the tick's job only if no
 * supervisor sharing the database has (migration 9). A schedule fires its latest tick at
 * or before now, so after downtime only the last missed tick runs, once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coordinator/jobs_int.h"

/* $1 schedule id, $2 spec, $3 task, $4 payload, $5 tick (Unix seconds). */
static const char fire_sql[] =
    "SELECT pgcorral.cron_fire($1, $2, $3, $4::jsonb, to_timestamp($5::bigint))";

/* The longest wait between two looks at the schedules, so that a wall clock set forward
 * or back is noticed within a minute. */
#define LOOK_MAX_MS 60000

/* The wall clock in ms. */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t sup_cron_due(struct sup_jobq *j)
{
    const struct sup_jobq_node *n = sup_jobq_node(j);
    int64_t now_ms = wall_ms(), now = now_ms / 1000;
    int64_t wait_ms = LOOK_MAX_MS;

    for (int i = 0; i < n->ncron; i++) {
        struct sup_cron_state *st = &n->cron_state[i];
        int64_t prev = sup_cron_prev(&n->cron[i], now), next = sup_cron_next(&n->cron[i], now);
        if (prev > st->fired && !st->queued) {
            struct sup_jobq_op *op = calloc(1, sizeof *op);
            if (op) {
                op->kind = SUP_JOBQ_OP_CRON;
                op->schedule = i;
                st->queued = true;
                sup_jobq_enqueue_op(j, op);
            }
        }
        if (next > 0 && next * 1000 - now_ms < wait_ms)
            wait_ms = next * 1000 - now_ms;
    }
    /* A little after the tick, so that the wall clock has passed it when we look. */
    return (uint64_t)(wait_ms > 0 ? wait_ms : 0) + 5;
}

int sup_cron_sql(const struct sup_jobq *j, struct sup_jobq_op *op, const char **sql,
                 const char *values[SUP_JOBQ_OP_PARAMS], char *buf, size_t buflen)
{
    const struct sup_jobq_node *n = sup_jobq_node(j);
    const struct sup_cron *c = &n->cron[op->schedule];

    /* The latest tick when the statement goes out: an op that waited for the connection
     * sends the last missed tick, not the one it was queued for. */
    op->tick = sup_cron_prev(c, wall_ms() / 1000);
    snprintf(buf, buflen, "%lld", (long long)op->tick);
    *sql = fire_sql;
    values[0] = c->id;
    values[1] = c->spec;
    values[2] = c->task;
    values[3] = c->payload;
    values[4] = buf;
    return 5;
}

void sup_cron_result(struct sup_jobq *j, const struct sup_jobq_op *op, PGresult *res,
                     const char *err)
{
    const struct sup_jobq_node *n = sup_jobq_node(j);
    const struct sup_cron *c = &n->cron[op->schedule];
    struct sup_cron_state *st = &n->cron_state[op->schedule];

    st->queued = false;
    if (err || !res || PQntuples(res) != 1) {
        /* Tried again at the next look; one line per run of failures. */
        if (!st->failing)
            rt_log(RT_LOG_WARN, "recurring job not enqueued; retrying",
                   json_pack("{s:s,s:s,s:s,s:s}", "schedule", c->id, "spec", c->spec, "task",
                             c->task, "error", err ? err : "no result"));
        st->failing = true;
        return;
    }
    st->failing = false;
    st->fired = op->tick;
    if (!PQgetisnull(res, 0, 0))
        rt_log(RT_LOG_INFO, "recurring job enqueued",
               json_pack("{s:s,s:s,s:s,s:I,s:s}", "schedule", c->id, "spec", c->spec, "task",
                         c->task, "tick", (json_int_t)op->tick, "job", PQgetvalue(res, 0, 0)));
}
