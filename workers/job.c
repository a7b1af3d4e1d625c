/*
 * The job worker role: claims batches of due jobs with one statement (SKIP LOCKED), runs
 * their plugin handlers on threadpool threads with connections the loop checked out for
 * them, and acks finished jobs in batches (one statement per batch). Wake-ups arrive on an
 * eventfd written by the supervisor's LISTEN connection; a timer polls as a fallback.
 *
 * Handlers run in "runners", one per unit of concurrency: a runner is one connection
 * checked out (rt_pool_run_blocking) for one thread, which takes queued jobs one after
 * another until the queue is empty, its slice of time is up, or a claim or ack needs the
 * connection; then it hands the connection back. So a backlog of short jobs costs no
 * thread hop and no checkout per job.
 *
 *   claim ──> local queue ──> acquiring ──> on a thread ──> ack list ──> one ack statement
 *   (rows      (claimed, not   (waiting for   (handler runs)  (done, failed,   per batch:
 *    locked)    started)        a connection)                  given back)      deleted or
 *                                                                               unlocked
 * The claim counts each job's attempt, provisionally: it numbers the jobs of this
 * incarnation in the order they will start (claim_seq), and the local queue keeps that
 * order, so the jobs whose handler has started are always those numbered below one mark.
 * That mark (the queue's head, or the first number of the next claim when the queue is
 * empty) is in shm, jobs_unstarted_from, written before a handler starts; when this
 * worker dies, the supervisor gives the attempt back to the jobs it held from the mark on.
 *
 * Everything here runs on the loop thread except run_thread (a handler's thread).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/rt_log.h"
#include "workers/job_int.h"

#define WATCHDOG_MS 50          /* resolution of per-task timeouts */
#define PREFETCH_MAX_US 20000   /* claim ahead of free handlers only while jobs are this short */
#define PREFETCH_BATCHES 4      /* ... up to this many times the concurrency */
#define RUNNER_SLICE_US 1000000 /* a runner hands its connection back after this long */
/* A job of a task this worker does not know, which another live node registers, is held
 * (locked, unstarted) this long before it is given back, and given back to run this much
 * later (run_at moves): without both, this worker (or another of this node) would claim
 * it again at once and spin, and, as its claims follow its own acks at once, would win it
 * from the node that knows the task every time. After the delay, the job goes to whichever
 * worker polls first. */
#define PUTBACK_HOLD_MS 1000
#define PUTBACK_DELAY_MS 1000

/* How a handler's run ended (run_one, on its thread). */
enum run_outcome { RUN_DONE, RUN_FAILED, RUN_DISCARDED, RUN_SNOOZED };

/* A claimed job, from its claim to its ack. One allocation with its strings. */
struct job_run {
    struct job_run *next; /* local queue or done list */
    struct pgc_job job;
    const struct plugin_task *task;
    _Atomic uint64_t started_us; /* set by the runner's thread when it takes the job */
    int64_t seq;                 /* claim_seq: its number in this incarnation's claims */
    uint64_t claimed_us;         /* when the claim's answer arrived (shm_now_us) */
    uint64_t waited_us;          /* enqueue (or run_at) to the claim, by the server's clock */
    bool limited;                /* its queue has a --queue-concurrency limit */
    int timeout_ms;              /* 0 = none */
    bool timed_out;              /* loop: failed by the watchdog; its thread is stuck */
    enum run_outcome outcome;
    int snooze_s;                 /* RUN_SNOOZED: run again this many seconds later */
    char error[RT_ERROR_MSG_LEN]; /* RUN_FAILED, RUN_DISCARDED: the job's last_error */
    char label[32];
    char strings[]; /* task, queue, payload, key */
};

/* A handler slot: one connection checked out for one thread that runs queued jobs. */
struct runner {
    struct job_state *js;
    struct rt_blocking blk;
    bool active;             /* loop: checked out, or waiting for a connection */
    struct job_run *current; /* under js->mu: the job its thread runs now */
    char label[24];
};

/* A claimed job of a task this worker does not know: the question whether another live
 * node registers it (which fails it otherwise), then the hold before it is given back. */
struct unknown_job {
    struct unknown_job *next; /* js->held */
    struct job_state *js;
    struct job_run *r; /* owned */
    struct rt_query q;
    const char *values[5];
    char id[24];
    char error[800];
    uint64_t release_at; /* uv_now when it is given back */
};

void job_options_init(struct job_options *o)
{
    memset(o, 0, sizeof *o);
    o->poll_interval_ms = 1000;
    o->retry_base_ms = 1000;
    o->retry_max_ms = 3600 * 1000;
}

int job_retry_delay_ms(const struct job_options *o, int attempt)
{
    double d = o->retry_base_ms;
    for (int i = 1; i < attempt && d < o->retry_max_ms; i++)
        d *= 2;
    return d > o->retry_max_ms ? o->retry_max_ms : (int)d;
}

/* Records the outcome of r's job; the ack goes out at the end of this loop iteration. */
static void ack_add(struct job_state *js, const struct job_run *r, enum ack_kind kind, int delay_ms,
                    int64_t run_ms, const char *error)
{
    job_ack_add(js, r->job.id, r->limited, kind, delay_ms, run_ms, error);
}

/* ---- runs ---------------------------------------------------------------------------- */

/*
 * Publishes the first job number whose handler has not started: the local queue's head,
 * or the first number of the claims not taken in yet. Called with mu held, whenever the
 * head changes, except while draining or after giving jobs back (see give_back_unstarted):
 * the jobs given back stay locked until their ack commits and must count as unstarted
 * until then. The mark only ever grows. Release: the store is visible before the handler
 * of the job taken just before it starts.
 */
static void publish_unstarted(struct job_state *js)
{
    int64_t from = js->queue_head ? js->queue_head->seq : js->seq_fresh;
    if (js->seq_broken)
        from = 0;
    atomic_store_explicit(&js->w->self->jobs_unstarted_from, (uint64_t)from, memory_order_release);
}

/* Gives a claimed job back unstarted (its attempt is not counted) and frees it. */
static void give_back(struct job_state *js, struct job_run *r)
{
    ack_add(js, r, ACK_GIVEBACK, 0, 0, NULL);
    free(r);
}

static void on_due_timer(uv_timer_t *t)
{
    struct job_state *js = t->data;
    js->due_at = 0;
    js->wanted = true;
    job_maybe_claim(js);
}

/* Wakes this worker when a retry it scheduled is due (the ack sets run_at = now + delay,
 * so a little later), instead of waiting for the next poll. */
static void arm_due_timer(struct job_state *js, int delay_ms)
{
    uint64_t at = uv_now(&js->w->loop) + (uint64_t)delay_ms + 20;
    if (js->closing || (js->due_at && js->due_at <= at))
        return;
    js->due_at = at;
    uv_timer_start(&js->due_timer, on_due_timer, (uint64_t)delay_ms + 20, 0);
}

/* A job failed: schedules its retry (or keeps it as failed) and counts it. */
static void run_failed(struct job_state *js, struct job_run *r, const char *error)
{
    bool last = r->job.attempt >= r->job.max_attempts;
    int delay = last ? 0 : job_retry_delay_ms(js->opt, r->job.attempt);

    shm_count(last ? &js->w->self->counters.jobs_failed : &js->w->self->counters.jobs_retried, 1);
    rt_log(last ? RT_LOG_ERROR : RT_LOG_WARN,
           last ? "job failed; attempts used up, kept as failed" : "job failed; will retry",
           json_pack("{s:I,s:s,s:i,s:i,s:s,s:i}", "job", (json_int_t)r->job.id, "task", r->job.task,
                     "attempt", r->job.attempt, "max_attempts", r->job.max_attempts, "error", error,
                     "retry_in_ms", delay));
    ack_add(js, r, ACK_FAILED, delay, 0, error);
    if (!last)
        arm_due_timer(js, delay);
}

/* Runs one job's handler on conn and records how it ended. Runner thread. */
static void run_one(struct job_state *js, struct job_run *r, struct rt_conn *conn)
{
    struct pgc_ctx ctx;
    int rc;

    plugin_ctx_init(&ctx, conn, js->env, r->task->plugin, r->label);
    ctx.job = &r->job;
    rc = r->task->fn(&ctx, &r->job);
    if (rc == 0) {
        r->outcome = RUN_DONE;
    } else if (rc == PGC_ESNOOZE && ctx.snoozed) {
        r->outcome = RUN_SNOOZED;
        r->snooze_s = ctx.snooze_s;
    } else {
        const char *msg = pgc_error_message(&ctx);
        r->outcome = rc == PGC_EDISCARD ? RUN_DISCARDED : RUN_FAILED;
        if (*msg)
            snprintf(r->error, sizeof r->error, "%s", msg);
        else
            snprintf(r->error, sizeof r->error, "task %s returned %d", r->job.task, rc);
    }
    plugin_job_clear(&r->job);
}

/* A runner's thread: queued jobs one after another on the connection checked out for it. */
static void runner_thread(struct rt_blocking *blk, struct rt_conn *conn)
{
    struct runner *rn = blk->data;
    struct job_state *js = rn->js;
    const PGconn *pg = rt_conn_pg(conn);
    uint64_t t0 = shm_now_us();
    int y;

    for (;;) {
        struct job_run *r;

        pthread_mutex_lock(&js->mu);
        r = js->queue_head;
        /* Relaxed: written and read under mu, which orders it. */
        if (!r || atomic_load_explicit(&js->stop_starting, memory_order_relaxed)) {
            pthread_mutex_unlock(&js->mu);
            return;
        }
        js->queue_head = r->next;
        if (!js->queue_head)
            js->queue_tail = NULL;
        js->queued--;
        js->in_flight++;
        r->next = NULL;
        rn->current = r;
        /* Before the handler starts: from now on r counts as run if this worker dies. */
        publish_unstarted(js);
        /* Relaxed: readers on other threads (the loop's watchdog, handle_finished) take
         * mu after this section, which orders it. */
        atomic_store_explicit(&r->started_us, shm_now_us(), memory_order_relaxed);
        pthread_mutex_unlock(&js->mu);
        /* Enqueue to start: the server's part (to the claim) plus ours (claim to here), so
         * that no clock is compared with another machine's. */
        shm_hist_add(&js->w->self->hists.job_wait,
                     r->waited_us + (atomic_load_explicit(&r->started_us, memory_order_relaxed) -
                                     r->claimed_us));

        run_one(js, r, conn);

        pthread_mutex_lock(&js->mu);
        rn->current = NULL;
        r->next = js->done;
        js->done = r;
        pthread_mutex_unlock(&js->mu);
        uv_async_send(&js->done_async);

        /* Hand the connection back when it broke or was left in a transaction (the pool
         * rolls back or replaces it), when a claim or ack waits for one, and after a slice
         * of time (holding on longer would starve others and look like a leak). */
        if (PQstatus(pg) != CONNECTION_OK || PQtransactionStatus(pg) != PQTRANS_IDLE)
            return;
        /* Relaxed: a request count, it publishes no data; the CAS makes each request hand
         * back one connection only. */
        y = atomic_load_explicit(&js->yield, memory_order_relaxed);
        while (y > 0)
            if (atomic_compare_exchange_weak_explicit(&js->yield, &y, y - 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                return;
        if (shm_now_us() - t0 > RUNNER_SLICE_US)
            return;
    }
}

/* A job a thread finished, on the loop: stats and its ack. */
static void handle_finished(struct job_state *js, struct job_run *r)
{
    if (r->timed_out) {
        /* Already failed and acked when its timeout fired. */
        js->timed_out--;
        free(r);
        return;
    }
    /* Relaxed: r came off the done list under mu, after its thread's store. */
    uint64_t us = shm_now_us() - atomic_load_explicit(&r->started_us, memory_order_relaxed);
    shm_hist_add(&js->w->self->hists.job, us);
    js->ewma_us = js->ewma_us * 0.9 + (double)us * 0.1;
    switch (r->outcome) {
    case RUN_DONE:
        shm_count(&js->w->self->counters.jobs_done, 1);
        ack_add(js, r, ACK_DONE, 0, (int64_t)(us / 1000), NULL);
        break;
    case RUN_FAILED:
        run_failed(js, r, r->error);
        break;
    case RUN_DISCARDED:
        shm_count(&js->w->self->counters.jobs_failed, 1);
        rt_log(RT_LOG_ERROR, "job discarded by its handler; failed for good, not retried",
               json_pack("{s:I,s:s,s:i,s:s}", "job", (json_int_t)r->job.id, "task", r->job.task,
                         "attempt", r->job.attempt, "error", r->error));
        ack_add(js, r, ACK_DISCARDED, 0, 0, r->error);
        break;
    case RUN_SNOOZED:
        rt_log(RT_LOG_INFO, "job snoozed by its handler",
               json_pack("{s:I,s:s,s:i}", "job", (json_int_t)r->job.id, "task", r->job.task,
                         "run_in_s", r->snooze_s));
        ack_add(js, r, ACK_SNOOZED, r->snooze_s * 1000, 0, NULL);
        /* Snoozed jobs wake this worker like its retries do (no NOTIFY for them). */
        arm_due_timer(js, r->snooze_s * 1000);
        break;
    }
    free(r);
}

static void on_done_async(uv_async_t *h)
{
    struct job_state *js = h->data;
    struct job_run *list, *r;
    int n = 0;

    pthread_mutex_lock(&js->mu);
    list = js->done;
    js->done = NULL;
    for (r = list; r; r = r->next)
        n++;
    js->in_flight -= n;
    pthread_mutex_unlock(&js->mu);
    while ((r = list) != NULL) {
        list = r->next;
        handle_finished(js, r);
    }
    if (js->wanted || js->more)
        job_maybe_claim(js);
    job_check_done(js);
}

static void ensure_runners(struct job_state *js);

/* Back on the loop with the runner's connection returned (err: there was none to have). */
static void runner_done(struct rt_blocking *blk, const struct rt_error *err)
{
    struct runner *rn = blk->data;
    struct job_state *js = rn->js;

    rn->active = false;
    js->runners_active--;
    if (err) {
        rt_log(RT_LOG_WARN, "no connection for a job handler",
               json_pack("{s:s,s:i}", "error", err->message, "handlers", js->runners_active));
        js->runner_pause_until = uv_now(&js->w->loop) + (uint64_t)js->opt->poll_interval_ms;
        if (js->runners_active == 0) {
            /* Nothing can run the queued jobs now: give them back, pause claiming. The shm
             * mark stays on them until the next head moves it (publish_unstarted). */
            struct job_run *list;
            pthread_mutex_lock(&js->mu);
            list = js->queue_head;
            js->queue_head = js->queue_tail = NULL;
            js->queued = 0;
            pthread_mutex_unlock(&js->mu);
            while (list) {
                struct job_run *r = list;
                list = r->next;
                give_back(js, r);
            }
            js->claim_pause_until = js->runner_pause_until;
        }
    }
    ensure_runners(js);
    if (js->wanted || js->more)
        job_maybe_claim(js);
    job_check_done(js);
}

/* Starts runners while queued jobs outnumber them (up to the concurrency). */
static void ensure_runners(struct job_state *js)
{
    int want;

    if (js->draining || js->replacing || js->closing ||
        uv_now(&js->w->loop) < js->runner_pause_until)
        return;
    pthread_mutex_lock(&js->mu);
    want = js->queued + js->in_flight;
    pthread_mutex_unlock(&js->mu);
    if (want > js->concurrency)
        want = js->concurrency;
    for (int i = 0; i < js->concurrency && js->runners_active < want; i++) {
        struct runner *rn = &js->runners[i];
        if (rn->active)
            continue;
        rn->active = true;
        js->runners_active++;
        rn->blk.data = rn;
        if (rt_pool_run_blocking(js->pool, &rn->blk, rn->label, runner_thread, runner_done) < 0) {
            rn->active = false;
            js->runners_active--;
            return;
        }
    }
}

/* A claim or ack is about to wait for a connection: when every one is out (runners hold
 * them), ask a runner to hand its own back after its current job. */
void job_need_connection(struct job_state *js)
{
    struct rt_pool_state st;
    rt_pool_state(js->pool, &st);
    if (st.idle == 0 && st.open + st.connecting >= st.limit && js->runners_active > 0)
        atomic_fetch_add_explicit(&js->yield, 1, memory_order_relaxed); /* a request count */
}

/* ---- jobs of unknown tasks ----------------------------------------------------------- */

static void release_held_cb(uv_timer_t *t);

/* Gives back the held jobs whose hold is over (all of them when draining or replacing),
 * without charging their attempt, and re-arms the timer for the rest. */
static void release_held(struct job_state *js)
{
    uint64_t now = uv_now(&js->w->loop);
    bool all = js->draining || js->replacing;
    struct unknown_job *u;

    while ((u = js->held) != NULL && (all || u->release_at <= now)) {
        js->held = u->next;
        if (!js->held)
            js->held_tail = NULL;
        ack_add(js, u->r, ACK_GIVEBACK, all ? 0 : PUTBACK_DELAY_MS, 0, NULL);
        free(u->r);
        free(u);
    }
    if (js->held && !js->closing)
        uv_timer_start(&js->putback_timer, release_held_cb, js->held->release_at - now, 0);
}

static void release_held_cb(uv_timer_t *t)
{
    release_held(t->data);
}

/* The error of a job whose task this worker does not know, into buf. */
static void unknown_error(const struct job_state *js, const struct job_run *r, char *buf,
                          size_t size)
{
    char names[512];
    snprintf(buf, size, "unknown task \"%s\": no loaded plugin registers it (tasks here: %s)",
             r->job.task, plugin_task_names(js->reg, names, sizeof names));
}

static void on_task_checked(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct unknown_job *u = q->data;
    struct job_state *js = u->js;
    bool elsewhere = res && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;

    js->unknown_checks--;
    if (res && !elsewhere) {
        /* The statement failed it: no other node can run it, and retrying would only burn
         * its attempts on the same error. */
        shm_count(&js->w->self->counters.jobs_failed, 1);
        rt_log(RT_LOG_ERROR, "job failed; no live node registers its task, kept as failed",
               json_pack("{s:I,s:s,s:s}", "job", (json_int_t)u->r->job.id, "task", u->r->job.task,
                         "error", u->error));
        PQclear(res);
        free(u->r);
        free(u);
        job_check_done(js);
        return;
    }
    PQclear(res);
    /* Known elsewhere, or not known whether (the database did not answer): not charged. */
    json_t *fields = json_pack("{s:I,s:s,s:i}", "job", (json_int_t)u->r->job.id, "task",
                               u->r->job.task, "in_ms", PUTBACK_HOLD_MS);
    if (err && fields)
        json_object_set_new(fields, "error", json_string(err->message));
    rt_log(res ? RT_LOG_INFO : RT_LOG_WARN,
           res ? "job of a task another node registers; putting it back"
               : "cannot ask which nodes register a task; putting its job back",
           fields);
    u->release_at = uv_now(&js->w->loop) + PUTBACK_HOLD_MS;
    u->next = NULL;
    if (js->held_tail)
        js->held_tail->next = u;
    else
        js->held = u;
    js->held_tail = u;
    release_held(js);
    job_check_done(js);
}

/*
 * A claimed job whose task no plugin of this worker registers: when another live node
 * registers it, the job goes back (unstarted, its attempt not counted) for that node to
 * run; otherwise it fails at once with the tasks this worker knows. Without a node name
 * (a worker run without a supervisor) or when the question cannot be sent, it fails like
 * any failed attempt. Takes r.
 */
static void unknown_task(struct job_state *js, struct job_run *r)
{
    struct unknown_job *u = js->opt->node ? calloc(1, sizeof *u) : NULL;
    char error[800];

    if (u) {
        u->js = js;
        u->r = r;
        unknown_error(js, r, u->error, sizeof u->error);
        snprintf(u->id, sizeof u->id, "%lld", (long long)r->job.id);
        u->values[0] = js->locked_by;
        u->values[1] = u->id;
        u->values[2] = r->job.task;
        u->values[3] = js->opt->node;
        u->values[4] = u->error;
        u->q.data = u;
        js->unknown_checks++;
        if (rt_pool_query(js->pool, &u->q, "unknown task check", JOB_UNKNOWN_TASK_SQL, 5, u->values,
                          on_task_checked) == 0)
            return;
        js->unknown_checks--;
        free(u);
    }
    unknown_error(js, r, error, sizeof error);
    run_failed(js, r, error);
    free(r);
}

/* ---- claims -------------------------------------------------------------------------- */

/* Copies the claimed row i into a new run. */
static struct job_run *run_from_row(struct job_state *js, PGresult *res, int i)
{
    const char *task = PQgetvalue(res, i, 2), *queue = PQgetvalue(res, i, 1);
    const char *payload = PQgetvalue(res, i, 3);
    bool has_key = !PQgetisnull(res, i, 7);
    const char *key = has_key ? PQgetvalue(res, i, 7) : "";
    size_t lt = strlen(task) + 1, lq = strlen(queue) + 1, lp = strlen(payload) + 1;
    size_t lk = strlen(key) + 1;
    struct job_run *r = calloc(1, sizeof *r + lt + lq + lp + lk);

    if (!r)
        return NULL;
    r->job.id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
    r->job.task = memcpy(r->strings, task, lt);
    r->job.queue = memcpy(r->strings + lt, queue, lq);
    r->job.payload = memcpy(r->strings + lt + lq, payload, lp);
    r->job.key = has_key ? memcpy(r->strings + lt + lq + lp, key, lk) : NULL;
    r->job.priority = atoi(PQgetvalue(res, i, 4));
    r->job.attempt = atoi(PQgetvalue(res, i, 5));
    r->job.max_attempts = atoi(PQgetvalue(res, i, 6));
    r->waited_us = (uint64_t)(strtod(PQgetvalue(res, i, 8), NULL) * 1e6);
    r->seq = PQgetisnull(res, i, 10) ? -1 : strtoll(PQgetvalue(res, i, 10), NULL, 10);
    for (int k = 0; js->opt->limited_queues && js->opt->limited_queues[k]; k++)
        if (strcmp(js->opt->limited_queues[k], queue) == 0)
            r->limited = true;
    r->claimed_us = shm_now_us();
    snprintf(r->label, sizeof r->label, "job %lld", (long long)r->job.id);
    return r;
}

static void ensure_runners(struct job_state *js);

/* Copies row i's (priority, run_at, id) into js->after_*; false when one does not fit. */
static bool remember_last(struct job_state *js, PGresult *res, int i)
{
    return snprintf(js->after_priority, sizeof js->after_priority, "%s", PQgetvalue(res, i, 4)) <
               (int)sizeof js->after_priority &&
           snprintf(js->after_run_at, sizeof js->after_run_at, "%s", PQgetvalue(res, i, 9)) <
               (int)sizeof js->after_run_at &&
           snprintf(js->after_id, sizeof js->after_id, "%s", PQgetvalue(res, i, 0)) <
               (int)sizeof js->after_id;
}

static void on_claimed(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct job_state *js = q->data;
    struct job_run *head = NULL, *tail = NULL;
    bool broken = false;
    int n, nq = 0;

    js->claim_inflight = false;
    atomic_store_explicit(&js->yield, 0, memory_order_relaxed); /* a request count */
    if (!res) {
        /* One line per outage (and every 30 s while it lasts), not one per poll. */
        uint64_t now = uv_now(&js->w->loop);
        if (js->claim_failures++ == 0 || now - js->claim_logged_at >= 30000) {
            rt_log(RT_LOG_WARN, "job claim failed",
                   json_pack("{s:s,s:s,s:i}", "error", err->message, "sqlstate", err->sqlstate,
                             "failures", js->claim_failures));
            js->claim_logged_at = now;
        }
        js->more = false;
        js->have_after = false;
        js->claim_pause_until = uv_now(&js->w->loop) + (uint64_t)js->opt->poll_interval_ms;
        job_check_done(js);
        return;
    }
    if (js->claim_failures > 0) {
        rt_log(RT_LOG_INFO, "job claims work again",
               json_pack("{s:i}", "failures", js->claim_failures));
        js->claim_failures = 0;
    }
    n = PQntuples(res);
    /* Claims that found nothing (polls, wake-ups for jobs another worker took) are not
     * counted: the histogram says how full the batches that carry jobs are. */
    if (n > 0)
        shm_hist_add(&js->w->self->hists.claim_batch, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        struct job_run *r = run_from_row(js, res, i);
        if (!r) {
            /* Left locked: unlocked when this worker is gone (or its lease ends). */
            rt_logf(RT_LOG_ERROR, "out of memory holding a claimed job");
            continue;
        }
        if (js->draining || js->replacing) {
            give_back(js, r);
            continue;
        }
        r->task = plugin_task_find(js->reg, r->job.task);
        if (!r->task) {
            unknown_task(js, r);
            continue;
        }
        r->timeout_ms = r->task->timeout_ms > 0 ? r->task->timeout_ms : js->opt->default_timeout_ms;
        /* The queue must run in claim_seq order (the claim returns its rows so). */
        if (r->seq <= js->claim_base || r->seq > js->claim_base + js->last_limit ||
            r->seq <= js->seq_last) {
            if (!js->seq_broken && !broken)
                rt_log(RT_LOG_ERROR,
                       "job claim numbers out of order; attempts of unstarted "
                       "jobs will not be given back if this worker dies",
                       json_pack("{s:I,s:I}", "job", (json_int_t)r->job.id, "claim_seq",
                                 (json_int_t)r->seq));
            broken = true;
        }
        js->seq_last = r->seq;
        if (tail)
            tail->next = r;
        else
            head = r;
        tail = r;
        nq++;
    }
    if (!js->draining && !js->replacing) {
        /* One splice, so that a runner never sees part of the batch with the mark of the
         * claims before it (it would take a job and publish a mark below it). */
        pthread_mutex_lock(&js->mu);
        if (head) {
            if (js->queue_tail)
                js->queue_tail->next = head;
            else
                js->queue_head = head;
            js->queue_tail = tail;
            js->queued += nq;
        }
        js->seq_broken |= broken;
        js->seq_fresh = js->claim_base + js->last_limit + 1;
        publish_unstarted(js);
        pthread_mutex_unlock(&js->mu);
    }
    js->more = n > 0 && n >= js->last_limit;
    js->have_after = js->more && remember_last(js, res, n - 1);
    PQclear(res);
    ensure_runners(js);
    if (js->wanted || js->more)
        job_maybe_claim(js);
    job_check_done(js);
}

/* Claims as many jobs as there are free handlers (plus a prefetch while jobs are short and
 * plentiful), unless a claim is in flight already. */
void job_maybe_claim(struct job_state *js)
{
    int limit, rc;

    if (js->draining || js->replacing || js->claim_inflight || js->idle)
        return;
    if (uv_now(&js->w->loop) < js->claim_pause_until)
        return;
    /* While a backlog of short jobs lasts, keep up to one batch waiting locally so that
     * handlers never wait for a claim's round trip. Long jobs are not hoarded. */
    pthread_mutex_lock(&js->mu);
    limit = js->concurrency - js->in_flight - js->queued;
    pthread_mutex_unlock(&js->mu);
    if (js->more && js->ewma_us < PREFETCH_MAX_US)
        limit += PREFETCH_BATCHES * js->concurrency;
    if (limit <= 0)
        return;
    /* A wake-up or a poll tick may mean jobs ahead of the last batch (a higher priority,
     * jobs given back or unlocked): scan from the front then. */
    bool after = js->have_after && !js->wanted;
    js->wanted = false;
    js->last_limit = limit;
    js->claim_base = js->seq_next;
    js->seq_next += limit;
    snprintf(js->limit_buf, sizeof js->limit_buf, "%d", limit);
    snprintf(js->seq_buf, sizeof js->seq_buf, "%lld", (long long)js->claim_base);
    js->claim_values[0] = js->locked_by;
    js->claim_values[1] = js->limit_buf;
    js->claim_values[2] = js->queues_param;
    js->claim_values[3] = after ? js->after_priority : NULL;
    js->claim_values[4] = after ? js->after_run_at : NULL;
    js->claim_values[5] = after ? js->after_id : NULL;
    js->claim_values[6] = js->seq_buf;
    js->claim_values[7] = js->limited_param;
    js->claim_values[8] = js->limits_param;
    js->claim_q.data = js;
    job_need_connection(js);
    /* Set before the call, as for acks: on_claimed may run inside rt_pool_query. */
    js->claim_inflight = true;
    rc = rt_pool_query(js->pool, &js->claim_q, "job claim", JOB_CLAIM_SQL, 9, js->claim_values,
                       on_claimed);
    if (rc < 0)
        js->claim_inflight = false;
}

static void on_wake(uv_poll_t *p, int status, int events)
{
    struct job_state *js = p->data;
    uint64_t v;

    while (read(js->w->cfg->job_wake_fds[js->w->index], &v, sizeof v) == (ssize_t)sizeof v) {
    }
    js->wanted = true;
    job_maybe_claim(js);
}

/* The next poll: the interval ± 20 %, so that workers (of several nodes, say) that started
 * together do not poll in step, one of them always first. */
static uint64_t next_poll_ms(const struct job_state *js)
{
    uint64_t base = (uint64_t)js->opt->poll_interval_ms;
    return base * 4 / 5 + (uint64_t)rand() % (base * 2 / 5 + 1);
}

static void on_poll_timer(uv_timer_t *t)
{
    struct job_state *js = t->data;
    uv_timer_start(&js->poll_timer, on_poll_timer, next_poll_ms(js), 0);
    js->wanted = true;
    ensure_runners(js);
    job_maybe_claim(js);
}

/* ---- timeouts and giving back ------------------------------------------------------- */

/* Gives back every claimed job that has not started (the local queue); runners take no
 * more jobs (stop_starting), finish their current one and hand their connections back.
 * The shm mark (publish_unstarted) stays at the first job given back: until their ack
 * commits those jobs are still locked by us, and unstarted if we die. */
static void give_back_unstarted(struct job_state *js)
{
    struct job_run *list, *r;

    pthread_mutex_lock(&js->mu);
    atomic_store_explicit(&js->stop_starting, true, memory_order_relaxed); /* under mu */
    list = js->queue_head;
    js->queue_head = js->queue_tail = NULL;
    js->queued = 0;
    pthread_mutex_unlock(&js->mu);
    while ((r = list) != NULL) {
        list = r->next;
        give_back(js, r);
    }
    release_held(js);
}

static void on_watchdog(uv_timer_t *t)
{
    struct job_state *js = t->data;
    uint64_t now = shm_now_us();
    char error[256];

    for (int i = 0; i < js->concurrency; i++) {
        struct job_run *r;
        /* A job stays current (so not freed) until its thread puts it on the done list,
         * and only the loop frees it: r is safe to use after the unlock. */
        pthread_mutex_lock(&js->mu);
        r = js->runners[i].current;
        pthread_mutex_unlock(&js->mu);
        if (!r)
            continue;
        /* Relaxed: r was read under mu, after the section that stored it (0: not yet). */
        uint64_t started = atomic_load_explicit(&r->started_us, memory_order_relaxed);
        if (!r->timeout_ms || r->timed_out || !started ||
            now < started + (uint64_t)r->timeout_ms * 1000)
            continue;
        r->timed_out = true;
        js->timed_out++;
        snprintf(error, sizeof error,
                 "timed out after %d ms (task %s); the worker running it was replaced",
                 r->timeout_ms, r->job.task);
        run_failed(js, r, error);
        if (!js->replacing) {
            /* A thread cannot be stopped safely: finish the other jobs, ack, then exit so
             * that the supervisor starts a fresh worker. */
            js->replacing = true;
            atomic_store_explicit(&js->w->self->state, SHM_STATE_DRAINING, memory_order_relaxed);
            rt_log(RT_LOG_ERROR, "a job overran its timeout; replacing this worker",
                   json_pack("{s:I,s:s}", "job", (json_int_t)r->job.id, "task", r->job.task));
            give_back_unstarted(js);
        }
    }
    job_check_done(js);
}

/* ---- start, drain, stop -------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct job_state *js = h->data;
    if (--js->handles_open == 0) {
        job_ack_discard(js);
        free(js->queues_param);
        free(js->limited_param);
        free(js->limits_param);
        free(js->runners);
        pthread_mutex_destroy(&js->mu);
        struct worker_ctx *w = js->w;
        w->role_state = NULL;
        free(js);
        worker_drained(w);
    }
}

/* Closes the role's handles; the last close callback frees js and reports drained. */
static void close_handles(struct job_state *js)
{
    uv_handle_t *hs[] = {
        (uv_handle_t *)&js->poll_timer,    (uv_handle_t *)&js->watchdog,
        (uv_handle_t *)&js->ack_timer,     (uv_handle_t *)&js->due_timer,
        (uv_handle_t *)&js->putback_timer, (uv_handle_t *)&js->flush_check,
        (uv_handle_t *)&js->done_async,    js->wake_started ? (uv_handle_t *)&js->wake : NULL};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
        if (!hs[i] || uv_is_closing(hs[i]))
            continue;
        js->handles_open++;
        uv_close(hs[i], on_handle_closed);
    }
}

/* When draining or replacing and nothing is left in flight: stop. */
void job_check_done(struct job_state *js)
{
    if ((!js->draining && !js->replacing) || js->closing)
        return;
    int queued, in_flight;
    pthread_mutex_lock(&js->mu);
    queued = js->queued;
    in_flight = js->in_flight;
    pthread_mutex_unlock(&js->mu);
    /* Stuck threads (timed out) never give their runner back. */
    if (js->claim_inflight || queued > 0 || in_flight > js->timed_out ||
        js->runners_active > js->timed_out || js->unknown_checks > 0 || js->held)
        return;
    if (js->ack_inflight)
        return;
    /* Acks must be written first, except when replacing and an ack already failed: stuck
     * handlers may hold every connection, and the supervisor unlocks what is left. */
    if (js->pending.n > 0 && !(js->replacing && js->ack_gave_up))
        return;
    if (js->replacing) {
        rt_log(RT_LOG_WARN, "worker exits to be replaced (a job overran its timeout)",
               json_pack("{s:i,s:i}", "stuck_jobs", js->timed_out, "unacked", js->pending.n));
        _exit(JOB_EXIT_REPLACE);
    }
    js->closing = true;
    rt_log(RT_LOG_INFO, "job worker drained", NULL);
    uv_timer_stop(&js->poll_timer);
    plugin_env_close(js->env);
    js->env = NULL;
    /* The pools are the worker's: worker_drained() closes them once the handles are. */
    close_handles(js);
}

static void job_drain(struct worker_ctx *w)
{
    struct job_state *js = w->role_state;
    if (!js) {
        worker_drained(w);
        return;
    }
    js->draining = true;
    uv_timer_stop(&js->poll_timer);
    if (js->wake_started)
        uv_poll_stop(&js->wake);
    give_back_unstarted(js);
    rt_log(RT_LOG_INFO, "job worker draining",
           json_pack("{s:i,s:i}", "handlers", js->runners_active, "acks_pending", js->pending.n));
    job_check_done(js);
}

/* Whether queue is one of queues (NULL-terminated; NULL = every queue). */
static bool queue_served(const char *const *queues, const char *queue)
{
    for (int i = 0; queues && queues[i]; i++)
        if (strcmp(queues[i], queue) == 0)
            return true;
    return !queues;
}

/*
 * The limited queues this worker serves and their limits, as a text[] and an int[] literal
 * ("{slow}", "{2}") for the claim; both NULL when none is limited, so that the claim takes
 * its path without locks. Returns 0 or -ENOMEM.
 */
static int limits_literals(const struct job_options *o, char **names, char **limits)
{
    struct rt_buf b = {0}, l = {0};
    const char **served = NULL;
    size_t n = 0, all = 0;

    *names = *limits = NULL;
    while (o->limited_queues && o->limited_queues[all])
        all++;
    if (all == 0)
        return 0;
    served = calloc(all, sizeof *served);
    if (!served)
        return -ENOMEM;
    rt_buf_puts(&l, "{");
    for (size_t i = 0; i < all; i++) {
        if (!queue_served(o->queues, o->limited_queues[i]))
            continue;
        rt_buf_printf(&l, n ? ",%d" : "%d", o->queue_limits[i]);
        served[n++] = o->limited_queues[i];
    }
    rt_buf_puts(&l, "}");
    rt_buf_text_array(&b, served, n);
    free(served);
    if (n == 0 || b.failed || l.failed) {
        rt_buf_free(&b);
        rt_buf_free(&l);
        return n == 0 ? 0 : -ENOMEM;
    }
    *names = b.data;
    *limits = l.data;
    return 0;
}

/* "{a,b}" for the queues, or NULL for every queue (and when memory ran out). */
static char *queues_literal(const char *const *queues)
{
    struct rt_buf b = {0};
    size_t n = 0;
    if (!queues || !queues[0])
        return NULL;
    while (queues[n])
        n++;
    rt_buf_text_array(&b, queues, n);
    if (b.failed) {
        rt_buf_free(&b);
        return NULL;
    }
    return b.data;
}

static int job_start(struct worker_ctx *w)
{
    const struct worker_config *cfg = w->cfg;
    struct job_state *js;
    char err[1024], num[16];
    int rc;

    js = calloc(1, sizeof *js);
    if (!js)
        return -ENOMEM;
    js->w = w;
    if (cfg->jobs)
        js->opt = cfg->jobs;
    else {
        job_options_init(&js->default_opt);
        js->opt = &js->default_opt;
    }
    job_ack_init(js);
    rt_job_locked_by(js->locked_by, sizeof js->locked_by, getpid(), w->generation);
    js->seq_fresh = 1; /* the first claim numbers its jobs from 1 */

    rc = plugin_load_process(cfg->plugins, err, sizeof err);
    if (rc < 0) {
        rt_log(RT_LOG_ERROR, "cannot load plugins", json_pack("{s:s}", "error", err));
        free(js);
        return -EINVAL;
    }
    js->reg = plugin_process_registry();

    js->concurrency = js->opt->concurrency > 0 ? js->opt->concurrency : cfg->db->connection_limit;
    if (js->concurrency > cfg->db->connection_limit)
        js->concurrency = cfg->db->connection_limit;
    /* Handlers run on libuv's threadpool (4 threads by default): one thread per handler,
     * plus room for other work. Read when the pool first starts, in this process. */
    snprintf(num, sizeof num, "%d", js->concurrency + 2 > 4 ? js->concurrency + 2 : 4);
    setenv("UV_THREADPOOL_SIZE", num, 1);

    js->runners = calloc((size_t)js->concurrency, sizeof *js->runners);
    if (!js->runners) {
        free(js);
        return -ENOMEM;
    }
    for (int i = 0; i < js->concurrency; i++) {
        js->runners[i].js = js;
        snprintf(js->runners[i].label, sizeof js->runners[i].label, "job handler %d", i);
    }
    pthread_mutex_init(&js->mu, NULL);
    js->queues_param = queues_literal(js->opt->queues);
    rc = limits_literals(js->opt, &js->limited_param, &js->limits_param);
    if (rc < 0)
        goto fail;

    /* The worker's pools (worker.c owns and closes them); no replica when they are one. */
    js->pool = w->pool;
    js->replica = w->read_pool != w->pool ? w->read_pool : NULL;
    rc = plugin_env_create(&js->env, &w->loop, js->pool, js->replica, w->read_router);
    if (rc < 0)
        goto fail;
    rc = uv_async_init(&w->loop, &js->done_async, on_done_async);
    if (rc < 0)
        goto fail;
    js->done_async.data = js;

    uv_timer_init(&w->loop, &js->poll_timer);
    uv_timer_init(&w->loop, &js->watchdog);
    uv_timer_init(&w->loop, &js->ack_timer);
    uv_timer_init(&w->loop, &js->due_timer);
    uv_timer_init(&w->loop, &js->putback_timer);
    js->due_timer.data = js->putback_timer.data = js;
    uv_check_init(&w->loop, &js->flush_check);
    js->poll_timer.data = js->watchdog.data = js->ack_timer.data = js;
    js->flush_check.data = js;
    if (cfg->job_wake_fds && cfg->job_wake_fds[w->index] >= 0) {
        rc = uv_poll_init(&w->loop, &js->wake, cfg->job_wake_fds[w->index]);
        if (rc < 0)
            goto fail_handles;
        js->wake.data = js;
        js->wake_started = true;
        uv_poll_start(&js->wake, UV_READABLE, on_wake);
    }
    srand((unsigned)getpid() ^ (unsigned)uv_hrtime());
    uv_timer_start(&js->poll_timer, on_poll_timer, next_poll_ms(js), 0);
    uv_timer_start(&js->watchdog, on_watchdog, WATCHDOG_MS, WATCHDOG_MS);
    w->role_state = js;
    pthread_mutex_lock(&js->mu);
    publish_unstarted(js); /* nothing started: every job this incarnation claims counts */
    pthread_mutex_unlock(&js->mu);
    rt_log(RT_LOG_INFO, "job worker started",
           json_pack("{s:s,s:i,s:i,s:s,s:s*,s:s*}", "locked_by", js->locked_by, "concurrency",
                     js->concurrency, "tasks", js->reg ? js->reg->ntasks : 0, "queues",
                     js->queues_param ? js->queues_param : "*", "limited_queues", js->limited_param,
                     "queue_limits", js->limits_param));
    if (!js->reg || js->reg->ntasks == 0) {
        /* Claiming would only fail other hosts' jobs as unknown tasks. */
        js->idle = true;
        rt_logf(RT_LOG_WARN, "no plugin registers a task (--plugin): this job worker claims "
                             "nothing");
    }
    /* Jobs may be waiting already. */
    js->wanted = true;
    job_maybe_claim(js);
    return 0;

fail_handles:
    uv_close((uv_handle_t *)&js->poll_timer, NULL);
    uv_close((uv_handle_t *)&js->watchdog, NULL);
    uv_close((uv_handle_t *)&js->ack_timer, NULL);
    uv_close((uv_handle_t *)&js->due_timer, NULL);
    uv_close((uv_handle_t *)&js->putback_timer, NULL);
    uv_close((uv_handle_t *)&js->flush_check, NULL);
    uv_close((uv_handle_t *)&js->done_async, NULL);
fail:
    rt_log(RT_LOG_ERROR, "job worker cannot start", json_pack("{s:i}", "error", rc));
    plugin_env_close(js->env);
    free(js->queues_param);
    free(js->limited_param);
    free(js->limits_param);
    free(js->runners);
    pthread_mutex_destroy(&js->mu);
    free(js);
    return rc < 0 ? rc : -EINVAL;
}

const struct worker_role_ops job_role_ops = {job_start, job_drain};
