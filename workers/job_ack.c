/*
 * The acks of the job role: the outcomes of finished jobs wait in js->pending and go out
 * together as one pgcorral.ack_jobs statement (JOB_ACK_SQL) at the end of a loop iteration;
 * while one is in flight, newer outcomes wait for it, which is what batches them. An ack
 * that fails for a transient reason (the connection, a serialization failure, ...) is sent
 * again after a backoff; one the server refuses for a reason that will not change is never
 * sent again (see on_acked). Loop thread only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_log.h"
#include "workers/job_int.h"

#define ACK_RETRY_MIN_MS 100 /* first delay before an ack that failed is sent again */
#define ACK_RETRY_MAX_MS 5000
#define ERROR_MAX 1000 /* last_error is cut to this many bytes */

static void ack_send(struct job_state *js);

void job_ack_init(struct job_state *js)
{
    js->ack_backoff_ms = ACK_RETRY_MIN_MS;
}

static int ack_push(struct ack_list *l, const struct ack_item *it)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        struct ack_item *p = realloc(l->items, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        l->items = p;
        l->cap = cap;
    }
    l->items[l->n++] = *it;
    return 0;
}

static void ack_list_clear(struct ack_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->items[i].error);
    l->n = 0;
}

void job_ack_discard(struct job_state *js)
{
    ack_list_clear(&js->pending);
    ack_list_clear(&js->inflight);
    free(js->pending.items);
    free(js->inflight.items);
    js->pending = js->inflight = (struct ack_list){0};
}

static void ack_bufs_free(struct job_state *js)
{
    for (int i = 0; i < JOB_ACK_BUFS; i++)
        rt_buf_free(&js->ack_bufs[i]);
}

/* Builds the parameters of JOB_ACK_SQL from js->inflight. Returns 0 or -ENOMEM. */
static int ack_build(struct job_state *js)
{
    struct rt_buf *done = &js->ack_bufs[0], *ids = &js->ack_bufs[1], *delays = &js->ack_bufs[3];
    struct rt_buf *giveback = &js->ack_bufs[4], *final = &js->ack_bufs[5];
    struct rt_buf *run_ms = &js->ack_bufs[6];
    const char **errors = calloc((size_t)js->inflight.n + 1, sizeof *errors);
    size_t n_errors = 0;
    bool first_done = true;

    if (!errors)
        return -ENOMEM;
    rt_buf_puts(done, "{");
    rt_buf_puts(run_ms, "{");
    rt_buf_puts(ids, "{");
    rt_buf_puts(delays, "{");
    rt_buf_puts(giveback, "{");
    rt_buf_puts(final, "{");
    for (int i = 0; i < js->inflight.n; i++) {
        const struct ack_item *it = &js->inflight.items[i];
        if (it->kind == ACK_DONE) {
            const char *sep = first_done ? "" : ",";
            rt_buf_printf(done, "%s%lld", sep, (long long)it->id);
            rt_buf_printf(run_ms, "%s%lld", sep, (long long)it->run_ms);
            first_done = false;
            continue;
        }
        const char *sep = n_errors ? "," : "";
        rt_buf_printf(ids, "%s%lld", sep, (long long)it->id);
        rt_buf_printf(delays, "%s%d", sep, it->delay_ms);
        rt_buf_printf(giveback, "%s%s", sep,
                      it->kind == ACK_GIVEBACK || it->kind == ACK_SNOOZED ? "1" : "0");
        rt_buf_printf(final, "%s%s", sep, it->kind == ACK_DISCARDED ? "t" : "f");
        errors[n_errors++] = it->kind == ACK_FAILED || it->kind == ACK_DISCARDED ? it->error : NULL;
    }
    rt_buf_puts(done, "}");
    rt_buf_puts(run_ms, "}");
    rt_buf_puts(ids, "}");
    rt_buf_puts(delays, "}");
    rt_buf_puts(giveback, "}");
    rt_buf_puts(final, "}");
    rt_buf_text_array(&js->ack_bufs[2], errors, n_errors);
    free(errors);
    for (int i = 0; i < JOB_ACK_BUFS; i++) {
        if (!rt_buf_str(&js->ack_bufs[i])) {
            ack_bufs_free(js);
            return -ENOMEM;
        }
    }
    js->ack_values[0] = js->locked_by;
    for (int i = 0; i < 6; i++)
        js->ack_values[i + 1] = rt_buf_str(&js->ack_bufs[i]);
    /* Run times are only kept with the completed jobs. */
    js->ack_values[7] = js->opt->keep_completed ? "t" : "f";
    js->ack_values[8] = js->opt->keep_completed ? rt_buf_str(&js->ack_bufs[6]) : NULL;
    return 0;
}

static void on_ack_timer(uv_timer_t *t)
{
    ack_send(t->data);
}

/* Puts the batch in flight back in front of the newer acks, in order. */
static void ack_requeue(struct job_state *js)
{
    struct ack_list tmp;
    if (js->ack_single_inflight)
        js->ack_singles++;
    js->ack_single_inflight = false;
    for (int i = 0; i < js->pending.n; i++)
        if (ack_push(&js->inflight, &js->pending.items[i]) < 0)
            free(js->pending.items[i].error);
    js->pending.n = 0;
    tmp = js->pending;
    js->pending = js->inflight;
    js->inflight = tmp;
}

/*
 * The server refused the ack for a reason that will not change (a value it rejects, a
 * function that does not exist: not rt_error.transient): sent again, it would fail again
 * and keep every later ack behind it forever. A batch of several jobs is split and its
 * jobs are acked one by one, so that the good ones still complete; a single job whose ack
 * is refused is given up: it stays locked by this worker, and when the worker exits the
 * supervisor's orphan path unlocks it (its handler may then run again: jobs run at least
 * once). Each refusal is logged once, with the server's error.
 */
static void ack_refused(struct job_state *js, const struct rt_error *err)
{
    if (js->inflight.n > 1) {
        rt_log(RT_LOG_ERROR, "job ack refused; acking its jobs one by one",
               json_pack("{s:s,s:s,s:i}", "error", err->message, "sqlstate", err->sqlstate, "jobs",
                         js->inflight.n));
        js->ack_singles = js->inflight.n;
        ack_requeue(js);
        return;
    }
    rt_log(RT_LOG_ERROR, "job ack refused; the job stays locked until this worker exits",
           json_pack("{s:s,s:s,s:I}", "error", err->message, "sqlstate", err->sqlstate, "job",
                     (json_int_t)js->inflight.items[0].id));
    ack_list_clear(&js->inflight);
}

static void on_acked(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct job_state *js = q->data;

    js->ack_inflight = false;
    /* Relaxed: a request count, it publishes no data. */
    atomic_store_explicit(&js->yield, 0, memory_order_relaxed);
    ack_bufs_free(js);
    if (!res && err->transient) {
        /* Keep the batch (in front of newer acks) and send it again after a pause. Jobs
         * stay locked meanwhile; if this worker dies first, the supervisor unlocks them. */
        rt_log(RT_LOG_WARN, "job ack failed; retrying",
               json_pack("{s:s,s:i,s:i}", "error", err->message, "jobs", js->inflight.n,
                         "retry_in_ms", js->ack_backoff_ms));
        ack_requeue(js);
        if (js->replacing) {
            /* Connections may all be held by stuck handlers: leave the rest to the
             * supervisor's orphan recovery. */
            js->ack_gave_up = true;
            job_check_done(js);
            return;
        }
        uv_timer_start(&js->ack_timer, on_ack_timer, (uint64_t)js->ack_backoff_ms, 0);
        js->ack_backoff_ms =
            js->ack_backoff_ms * 2 > ACK_RETRY_MAX_MS ? ACK_RETRY_MAX_MS : js->ack_backoff_ms * 2;
        return;
    }
    js->ack_single_inflight = false;
    if (!res) {
        ack_refused(js, err);
    } else {
        PQclear(res);
        js->ack_backoff_ms = ACK_RETRY_MIN_MS;
        /* A job of a limited queue left it: a slot is free now that the ack committed, and
         * no wake-up says so. Claim (from the front) rather than wait for the poll. */
        for (int i = 0; i < js->inflight.n; i++)
            if (js->inflight.items[i].limited)
                js->wanted = true;
        ack_list_clear(&js->inflight);
    }
    if (js->pending.n > 0)
        ack_send(js);
    if (js->wanted)
        job_maybe_claim(js);
    job_check_done(js);
}

/* Moves what the next statement carries from pending to inflight (empty): everything, or
 * the first job alone while a refused batch is acked one by one. */
static void ack_take_pending(struct job_state *js)
{
    struct ack_list tmp;
    if (js->ack_singles > 0 && ack_push(&js->inflight, &js->pending.items[0]) == 0) {
        js->ack_singles--;
        js->ack_single_inflight = true;
        memmove(js->pending.items, js->pending.items + 1,
                (size_t)(--js->pending.n) * sizeof *js->pending.items);
        return;
    }
    tmp = js->inflight;
    js->inflight = js->pending;
    js->pending = tmp;
}

/* Sends the pending acks as one statement, unless one is in flight (then they wait for
 * it: that is what batches them). */
static void ack_send(struct job_state *js)
{
    int rc;

    if (js->ack_inflight || js->pending.n == 0 || uv_is_active((uv_handle_t *)&js->ack_timer))
        return;
    ack_take_pending(js);
    if (ack_build(js) < 0) {
        rt_logf(RT_LOG_ERROR, "out of memory building a job ack; retrying");
        goto retry;
    }
    js->ack_q.data = js;
    job_need_connection(js);
    /* In flight before the call: an acquire that fails at once (the server is down)
     * runs on_acked inside rt_pool_query, which must find the flag set to clear it. */
    js->ack_inflight = true;
    rc = rt_pool_query(js->pool, &js->ack_q, "job ack", JOB_ACK_SQL, 9, js->ack_values, on_acked);
    if (rc < 0) {
        js->ack_inflight = false;
        ack_bufs_free(js);
        goto retry;
    }
    return;

retry:
    ack_requeue(js);
    if (!js->closing)
        uv_timer_start(&js->ack_timer, on_ack_timer, ACK_RETRY_MAX_MS, 0);
}

static void on_flush_check(uv_check_t *c)
{
    struct job_state *js = c->data;
    uv_check_stop(c);
    ack_send(js);
}

void job_ack_add(struct job_state *js, int64_t id, bool limited, enum ack_kind kind, int delay_ms,
                 int64_t run_ms, const char *error)
{
    struct ack_item it = {id, kind, delay_ms, run_ms, limited, NULL};
    if (error) {
        it.error = strndup(error, ERROR_MAX);
        if (!it.error)
            it.error = strdup("(out of memory)");
    }
    if (ack_push(&js->pending, &it) < 0) {
        /* The job stays locked by us: the supervisor unlocks it when we are gone. */
        rt_log(RT_LOG_ERROR, "out of memory recording a job's outcome",
               json_pack("{s:I}", "job", (json_int_t)id));
        free(it.error);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&js->flush_check) && !js->closing)
        uv_check_start(&js->flush_check, on_flush_check);
}
