/*
 * Test plugin of the job tests: tasks that record their runs in table t_runs, fail, fail
 * once, hang past their timeout, crash, enqueue in a transaction, discard and snooze.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pgcorral.h"

/* Inserts a row into t_runs for this run: job id, attempt, task, phase. */
static int record(struct pgc_ctx *ctx, const struct pgc_job *job, const char *phase)
{
    char id[32], attempt[16];
    snprintf(id, sizeof id, "%lld", (long long)pgc_job_id(job));
    snprintf(attempt, sizeof attempt, "%d", pgc_job_attempt(job));
    const char *values[4] = {id, attempt, pgc_job_task(job), phase};
    return pgc_exec_params(
        ctx, "INSERT INTO t_runs (job_id, attempt, task, phase) VALUES ($1, $2, $3, $4)", 4, values,
        NULL);
}

static void sleep_ms(long long ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0) {
    }
}

/* {"ms": N}: sleeps N ms (start and end recorded when N > 0), else records one run. */
static int t_record(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    long long ms = 0;
    if (pgc_job_arg_int(job, "ms", &ms) == 0 && ms > 0) {
        int rc = record(ctx, job, "start");
        if (rc)
            return rc;
        sleep_ms(ms);
    }
    return record(ctx, job, "done");
}

/* Fails until attempt "ok_at" (default 2). */
static int t_flaky(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    long long ok_at = 2;
    pgc_job_arg_int(job, "ok_at", &ok_at);
    if (pgc_job_attempt(job) < ok_at)
        return pgc_fail(ctx, "flaky: attempt %d fails", pgc_job_attempt(job));
    return record(ctx, job, "done");
}

static int t_fail(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    return pgc_fail(ctx, "boom on attempt %d", pgc_job_attempt(job));
}

/* Fails with {"text": T} repeated {"n": N} times: a message longer than the error field. */
static int t_fail_text(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    static char msg[8192];
    const char *text = pgc_job_arg_str(job, "text");
    long long n = 0;
    size_t len = 0;
    pgc_job_arg_int(job, "n", &n);
    for (long long i = 0; text && i < n && len + strlen(text) < sizeof msg; i++, len += strlen(text))
        memcpy(msg + len, text, strlen(text));
    msg[len] = '\0';
    return pgc_fail(ctx, "%s", msg);
}

/* Records its start, then never returns (registered with a 300 ms timeout). */
static int t_hang(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    record(ctx, job, "start");
    for (;;)
        sleep_ms(100000);
    return 0;
}

static int t_crash(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    record(ctx, job, "start");
    raise(SIGSEGV);
    return 0;
}

/* The transaction of t.tx: a row, and a follow-up job; {"fail":1} rolls both back. */
static int tx_body(struct pgc_ctx *ctx, void *arg)
{
    const struct pgc_job *job = arg;
    struct pgc_enqueue_opts opts = {.queue = "followups"};
    long long fail = 0;
    int64_t id = 0;
    int rc = record(ctx, job, "tx");
    if (rc)
        return rc;
    rc = pgc_enqueue(ctx, "t.record", "{\"from\":\"tx\"}", &opts, &id);
    if (rc)
        return rc;
    if (pgc_job_arg_int(job, "fail", &fail) == 0 && fail)
        return pgc_fail(ctx, "rolled back on purpose after enqueuing job %lld", (long long)id);
    return 0;
}

static int t_tx(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    return pgc_tx(ctx, tx_body, (void *)job);
}

/* Records its run, then gives the job up for good ({"msg": M} as the reason). */
static int t_discard(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    const char *msg = pgc_job_arg_str(job, "msg");
    int rc = record(ctx, job, "done");
    if (rc)
        return rc;
    return pgc_discard(ctx, "%s", msg ? msg : "discarded");
}

/* The transaction of t.discard_tx: a row, then a discard, which rolls the row back. */
static int discard_tx_body(struct pgc_ctx *ctx, void *arg)
{
    int rc = record(ctx, arg, "tx");
    if (rc)
        return rc;
    return pgc_discard(ctx, "discarded inside pgc_tx");
}

static int t_discard_tx(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    return pgc_tx(ctx, discard_tx_body, (void *)job);
}

/* {"s": N}: records each run; the first snoozes N s, the second succeeds. */
static int t_snooze(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    long long s = 0;
    char id[32];
    const char *values[1] = {id};
    struct pgc_result *res = NULL;
    int rc = record(ctx, job, "done");
    if (rc)
        return rc;
    pgc_job_arg_int(job, "s", &s);
    snprintf(id, sizeof id, "%lld", (long long)pgc_job_id(job));
    rc = pgc_exec_params(ctx, "SELECT count(*) FROM t_runs WHERE job_id = $1", 1, values, &res);
    if (rc)
        return rc;
    long long runs = atoll(pgc_value(res, 0, 0));
    pgc_result_free(res);
    return runs == 1 ? pgc_snooze(ctx, (int)s) : 0;
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    int rc = 0;
    rc |= pgc_register_task(reg, "t.record", t_record, 0);
    rc |= pgc_register_task(reg, "t.flaky", t_flaky, 0);
    rc |= pgc_register_task(reg, "t.fail", t_fail, 0);
    rc |= pgc_register_task(reg, "t.fail_text", t_fail_text, 0);
    rc |= pgc_register_task(reg, "t.hang", t_hang, 300);
    rc |= pgc_register_task(reg, "t.crash", t_crash, 0);
    rc |= pgc_register_task(reg, "t.tx", t_tx, 0);
    rc |= pgc_register_task(reg, "t.discard", t_discard, 0);
    rc |= pgc_register_task(reg, "t.discard_tx", t_discard_tx, 0);
    rc |= pgc_register_task(reg, "t.snooze", t_snooze, 0);
    return rc;
}
