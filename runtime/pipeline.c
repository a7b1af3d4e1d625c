/*
 * Auto-pipelining (DESIGN "Pool": Pipelining): single autocommit statements of
 * rt_pool_query share busy connections in libpq pipeline mode when the pool is at its
 * limit, each with its own Sync; sends are coalesced per loop iteration; 40001, 40P01 and
 * lost connections are retried per statement.
 *
 *   pool->pipes:  connections with op RT_OP_PIPE
 *   c->pipe:      ring  [head .. head+sent)  sent, results awaited in this order
 *                       [head+sent .. head+n) queued, sent by pipe_flush
 *   pool->dirty:  connections with queued slots; flush_check / flush_prepare send them
 *
 * A pipelining connection is checked out to the pool itself (the first statement's label);
 * when its last slot completes it leaves pipeline mode and is released like any other.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pool_int.h"
#include "rt_log.h"

#define PIPE_MAX_RETRIES 3

#ifndef LIBPQ_HAS_SEND_PIPELINE_SYNC
/* libpq 17 adds a Sync that does not flush; with an older libpq every Sync is a write.
 * Weak: resolved at run time from whichever libpq is loaded. */
extern int PQsendPipelineSync(PGconn *conn) __attribute__((weak));
#endif

/* Appends a Sync without a flush when libpq can (one write per flush), else with one. */
static int pipe_sync(PGconn *pg)
{
    if (PQsendPipelineSync)
        return PQsendPipelineSync(pg);
    return PQpipelineSync(pg);
}

static void pipe_flush_cb(struct rt_pool *p);

static void pipe_check_cb(uv_check_t *h)
{
    pipe_flush_cb(h->data);
}

static void pipe_prepare_cb(uv_prepare_t *h)
{
    pipe_flush_cb(h->data);
}

void rt__pipe_init(struct rt_pool *p)
{
    rt__list_init(&p->pipes);
    rt__list_init(&p->dirty);
    uv_check_init(p->loop, &p->flush_check);
    uv_prepare_init(p->loop, &p->flush_prepare);
    p->flush_check.data = p->flush_prepare.data = p;
    p->handles += 2;
}

void rt__pipe_close(struct rt_pool *p, uv_close_cb cb)
{
    uv_close((uv_handle_t *)&p->flush_check, cb);
    uv_close((uv_handle_t *)&p->flush_prepare, cb);
}

void rt__pipe_conn_free(struct rt_conn *c)
{
    free(c->pipe);
    c->pipe = NULL;
}

/* ---- eligibility --------------------------------------------------------------------- */

/* First words of statements that run as one autocommit statement without session state. */
static const char *const pipe_words[] = {"SELECT", "INSERT", "UPDATE", "DELETE",
                                         "WITH",   "VALUES", "TABLE",  "MERGE"};

bool rt__pipe_eligible(const struct rt_pool *p, const char *sql)
{
    return p->pipe_depth > 0 && rt_sql_sessionless(sql);
}

bool rt_sql_sessionless(const char *sql)
{
    const char *s = sql;
    size_t n;

    if (!sql)
        return false;
    for (;;) {
        while (isspace((unsigned char)*s) || *s == '(')
            s++;
        if (s[0] == '-' && s[1] == '-') {
            s += strcspn(s, "\n");
            continue;
        }
        if (s[0] == '/' && s[1] == '*') {
            const char *e = strstr(s + 2, "*/");
            if (!e)
                return false;
            s = e + 2;
            continue;
        }
        break;
    }
    for (n = 0; isalpha((unsigned char)s[n]); n++)
        ;
    for (size_t i = 0; i < sizeof pipe_words / sizeof pipe_words[0]; i++)
        if (strlen(pipe_words[i]) == n && strncasecmp(s, pipe_words[i], n) == 0)
            return true;
    return false;
}

/* ---- gauges -------------------------------------------------------------------------- */

static void pipe_gauges(struct rt_pool *p)
{
    atomic_store_explicit(&p->stats->pool_pipes, (uint32_t)p->npipes, memory_order_relaxed);
    atomic_store_explicit(&p->stats->pool_pipe_depth, (uint32_t)p->npipe_slots,
                          memory_order_relaxed);
}

/* ---- queueing ------------------------------------------------------------------------ */

static inline struct rt__pipe_slot *pipe_slot(struct rt_conn *c, int i)
{
    return &c->pipe[(c->pipe_head + i) % c->pipe_cap];
}

/* Whether c may take one more statement now. */
static bool pipe_admits(struct rt_conn *c, uint64_t now_ns)
{
    struct rt_pool *p = c->pool;

    if (c->pipe_n >= c->pipe_cap || c->broken || PQstatus(c->pc.pg) != CONNECTION_OK)
        return false;
    if (uv_now(p->loop) >= c->expires_ms)
        return false; /* let it drain and recycle */
    /* Behind a statement that already ran past the bound: not here (DESIGN: a slow
     * statement holds up only what was queued while it was young). */
    return c->pipe_sent == 0 || now_ns - c->pipe_head_ns < p->pipe_stall_ns;
}

static void pipe_arm_flush(struct rt_pool *p)
{
    if (p->flush_armed)
        return;
    p->flush_armed = true;
    uv_check_start(&p->flush_check, pipe_check_cb);
    uv_prepare_start(&p->flush_prepare, pipe_prepare_cb);
}

/* Queues q on c (admitted): sent at the end of this loop iteration. */
static void pipe_add(struct rt_conn *c, struct rt_query *q)
{
    struct rt_pool *p = c->pool;
    struct rt__pipe_slot *s = pipe_slot(c, c->pipe_n);

    s->q = q;
    s->syncs_left = 1;
    s->prep = false;
    q->t0_ns = uv_hrtime(); /* sent: from then on (pipe_send) */
    q->conn = c;
    q->pipe = true;
    q->res = NULL;
    q->err.code = 0;
    q->err.sqlstate[0] = 0;
    q->shared = false;
    c->pipe_n++;
    p->npipe_slots++;
    if (c->pipe_n > 1) {
        shm_count(&p->stats->counters.pipelined, 1);
        for (int i = 0; i < c->pipe_n; i++)
            if (pipe_slot(c, i)->q)
                pipe_slot(c, i)->q->shared = true;
    }
    if (rt__list_empty(&c->dirty_link))
        rt__list_insert_tail(&p->dirty, &c->dirty_link);
    pipe_arm_flush(p);
    pipe_gauges(p);
}

/* Waiters at the head of the queue that are eligible statements go to c while it admits
 * them (FIFO: a holder waiting first stops it, so that pipelines drain for it). */
static void pipe_fill(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;
    uint64_t now_ns = uv_hrtime(), now_ms = uv_now(p->loop);

    while (!rt__list_empty(&p->waiters) && c->op == RT_OP_PIPE && pipe_admits(c, now_ns)) {
        struct rt_acquire *req = rt_container_of(p->waiters.next, struct rt_acquire, link);
        if (!req->pipe)
            break;
        rt__list_remove(&req->link);
        p->nwaiting--;
        shm_count(&p->stats->counters.acquires, 1);
        shm_hist_add(&p->stats->hists.acquire_wait, (now_ms - req->start_ms) * 1000);
        pipe_add(c, req->data);
    }
    rt__pool_gauges(p);
}

void rt__pipe_start(struct rt_conn *c, struct rt_query *q)
{
    struct rt_pool *p = c->pool;

    if (!c->pipe) {
        c->pipe = calloc((size_t)p->pipe_depth, sizeof *c->pipe);
        c->pipe_cap = p->pipe_depth;
    }
    if (!c->pipe || c->broken || PQstatus(c->pc.pg) != CONNECTION_OK || !c->pc.poll ||
        !PQenterPipelineMode(c->pc.pg)) {
        struct rt_error e;
        rt_error_set(&e, c->pipe ? RT_ECONN_LOST : -ENOMEM, c->pipe ? "08006" : NULL,
                     "cannot start a pipeline on the connection");
        c->broken = c->broken || c->pipe != NULL;
        rt_pool_release(c);
        q->conn = NULL;
        q->cb(q, NULL, &e);
        return;
    }
    c->pipe_head = c->pipe_n = c->pipe_sent = 0;
    c->op = RT_OP_PIPE;
    rt_pgconn_ref(&c->pc, true);
    rt__list_insert_tail(&p->pipes, &c->pipe_link);
    p->npipes++;
    pipe_add(c, q);
    pipe_fill(c);
}

int rt__pipe_submit(struct rt_pool *p, struct rt_query *q)
{
    struct rt_conn *c, *best = NULL;

    if (p->closing)
        return RT_EPOOL_CLOSED;
    q->pipe = true;
    q->conn = NULL;
    /* Nobody waits ahead, the pool cannot grow, no idle connection: share a busy one. */
    if (p->nwaiting == 0 && rt__list_empty(&p->idle) && !p->down &&
        (p->nopen >= p->limit || p->budget_waiting)) {
        uint64_t now_ns = uv_hrtime();
        for (struct rt_pool_link *l = p->pipes.next; l != &p->pipes; l = l->next) {
            c = rt_container_of(l, struct rt_conn, pipe_link);
            if (pipe_admits(c, now_ns) && (!best || c->pipe_n < best->pipe_n))
                best = c;
        }
        if (best) {
            shm_count(&p->stats->counters.acquires, 1);
            pipe_add(best, q);
            return 0;
        }
    }
    /* An idle connection (query_acquired starts a pipeline on it), a new one, or the wait
     * queue, where pipe_fill finds it when a pipeline has room. */
    return rt__pool_acquire(p, &q->acq, q->acq.label, q->acq.cb, true);
}

/* ---- sending ------------------------------------------------------------------------- */

static void pipe_lost(struct rt_conn *c, const char *why);

/* Sends one slot's commands and Sync(s). Returns false when libpq refused (connection). */
static bool pipe_send(struct rt_conn *c, struct rt__pipe_slot *s)
{
    struct rt_query *q = s->q;
    PGconn *pg = c->pc.pg;
    char evicted[24], sql[48];

    q->t0_ns = uv_hrtime();
    switch (rt__stmt_lookup(&c->stmts, q->sql, q->stmt, evicted)) {
    case RT_STMT_HIT:
        if (!PQsendQueryPrepared(pg, q->stmt, q->nparams, q->values, NULL, NULL, 0))
            return false;
        break;
    case RT_STMT_MISS:
        if (evicted[0]) {
            /* Its own Sync: whether it fails or not is nobody's business. */
            snprintf(sql, sizeof sql, "DEALLOCATE %s", evicted);
            if (!PQsendQueryParams(pg, sql, 0, NULL, NULL, NULL, NULL, 0) || !pipe_sync(pg))
                return false;
            s->syncs_left++;
        }
        s->prep = true;
        if (!PQsendPrepare(pg, q->stmt, q->sql, q->nparams, NULL) ||
            !PQsendQueryPrepared(pg, q->stmt, q->nparams, q->values, NULL, NULL, 0))
            return false;
        break;
    default:
        q->stmt[0] = 0;
        if (!PQsendQueryParams(pg, q->sql, q->nparams, NULL, q->values, NULL, NULL, 0))
            return false;
        break;
    }
    return pipe_sync(pg) != 0;
}

/* Sends every queued slot of c and flushes once. */
static void pipe_flush_conn(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;

    rt__list_remove(&c->dirty_link);
    if (c->op != RT_OP_PIPE || c->pipe_sent == c->pipe_n)
        return;
    if (c->pipe_sent == 0)
        c->pipe_head_ns = uv_hrtime();
    while (c->pipe_sent < c->pipe_n) {
        struct rt__pipe_slot *s = pipe_slot(c, c->pipe_sent);
        if (!pipe_send(c, s)) {
            pipe_lost(c, "connection lost while sending");
            return;
        }
        c->pipe_sent++;
        shm_hist_add(&p->stats->hists.pipe_depth, (uint64_t)c->pipe_sent);
    }
    int f = PQflush(c->pc.pg);
    if (f < 0 || rt_pgconn_watch(&c->pc, f > 0 ? UV_READABLE | UV_WRITABLE : UV_READABLE) < 0)
        pipe_lost(c, "connection lost while sending");
}

static void pipe_flush_cb(struct rt_pool *p)
{
    while (!rt__list_empty(&p->dirty))
        pipe_flush_conn(rt_container_of(p->dirty.next, struct rt_conn, dirty_link));
    p->flush_armed = false;
    uv_check_stop(&p->flush_check);
    uv_prepare_stop(&p->flush_prepare);
}

/* ---- results ------------------------------------------------------------------------- */

/* Whether a pipelined statement that failed with err is run again on its own. */
static bool pipe_retryable(const struct rt_query *q)
{
    if (!q->shared || q->attempts >= PIPE_MAX_RETRIES)
        return false;
    return q->err.code == RT_ECONN_LOST || strcmp(q->err.sqlstate, "40001") == 0 ||
           strcmp(q->err.sqlstate, "40P01") == 0;
}

/* q is done (result or error): retried, or its caller hears. q left its connection. */
static void pipe_deliver(struct rt_pool *p, struct rt_query *q, bool retry_ok)
{
    bool failed = q->err.code != 0;
    PGresult *res = q->res;

    q->conn = NULL;
    q->res = NULL;
    if (failed && retry_ok && !p->closing && pipe_retryable(q)) {
        PQclear(res);
        q->attempts++;
        shm_count(&p->stats->counters.retries, 1);
        rt_log(RT_LOG_DEBUG, "Retrying pipelined statement",
               json_pack("{s:s,s:s,s:s,s:i}", "pool", p->name, "sqlstate", q->err.sqlstate, "error",
                         q->err.message, "attempt", q->attempts));
        q->acq.data = q;
        if (rt__pipe_submit(p, q) == 0)
            return;
        rt_error_set(&q->err, RT_EPOOL_CLOSED, NULL, "pool %s is closing", p->name);
        res = NULL;
    }
    rt__pool_note_stmt(p, q->acq.label, q->sql, q->nparams, q->values, uv_hrtime() - q->t0_ns,
                       failed ? &q->err : NULL, q->request_id);
    if (failed) {
        PQclear(res);
        res = NULL;
    }
    q->cb(q, res, q->err.code ? &q->err : NULL);
}

/* The last slot is gone: c leaves pipeline mode and goes back to the pool. */
static void pipe_end(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;

    rt__list_remove(&c->pipe_link);
    rt__list_remove(&c->dirty_link);
    p->npipes--;
    if (PQstatus(c->pc.pg) != CONNECTION_OK || !PQexitPipelineMode(c->pc.pg))
        c->broken = true;
    c->op = RT_OP_NONE;
    if (c->pc.poll) {
        rt_pgconn_ref(&c->pc, false);
        if (c->pc.events != UV_READABLE && rt_pgconn_watch(&c->pc, UV_READABLE) < 0)
            c->broken = true;
    }
    pipe_gauges(p);
    rt_pool_release(c);
}

/* The first slot's last Sync arrived. */
static void pipe_complete(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;
    struct rt__pipe_slot *s = pipe_slot(c, 0);
    struct rt_query *q = s->q;

    c->pipe_head = (c->pipe_head + 1) % c->pipe_cap;
    c->pipe_n--;
    c->pipe_sent--;
    p->npipe_slots--;
    c->pipe_head_ns = uv_hrtime();
    c->checkout_ms = uv_now(p->loop); /* busy, not leaked */
    pipe_gauges(p);
    if (q) {
        /* The server lost a cached statement (DISCARD ALL), or had one we did not know
         * about (42P05): sent again, once. */
        bool lost = strcmp(q->err.sqlstate, "26000") == 0;
        if (q->err.code && !q->reprepared && q->stmt[0] &&
            (lost || strcmp(q->err.sqlstate, "42P05") == 0)) {
            if (lost)
                rt__stmt_forget(&c->stmts, q->sql);
            q->reprepared = true;
            q->err.code = 0;
            q->err.sqlstate[0] = 0;
            q->acq.data = q;
            PQclear(q->res);
            q->res = NULL;
            q->conn = NULL;
            if (rt__pipe_submit(p, q) != 0) {
                rt_error_set(&q->err, RT_EPOOL_CLOSED, NULL, "pool %s is closing", p->name);
                q->cb(q, NULL, &q->err);
            }
        } else {
            pipe_deliver(p, q, true);
        }
    }
}

/* Keeps the first error, or the last good result, of the first slot. */
static void pipe_take(struct rt_conn *c, PGresult *r)
{
    struct rt__pipe_slot *s = pipe_slot(c, 0);
    struct rt_query *q = s->q;
    ExecStatusType st = PQresultStatus(r);

    if (!q || s->syncs_left > 1) { /* dropped, or its DEALLOCATE */
        PQclear(r);
        return;
    }
    if (s->prep) {
        /* The PREPARE's result. 42P05: the server has it already (names are hashes of the
         * SQL), the cache entry stays and the statement is sent again. Any other error:
         * the cache must not claim the statement exists. */
        s->prep = false;
        if (st != PGRES_COMMAND_OK && q->err.code == 0) {
            rt__error_from_result(&q->err, r, c->pc.pg);
            if (strcmp(q->err.sqlstate, "42P05") != 0)
                rt__stmt_forget(&c->stmts, q->sql);
        }
        PQclear(r);
        return;
    }
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        if (q->err.code == 0) {
            PQclear(q->res);
            q->res = r;
            return;
        }
        break;
    case PGRES_PIPELINE_ABORTED:
        break; /* behind our own failed PREPARE: that error is the one */
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
        if (q->err.code == 0)
            rt_error_set(&q->err, RT_EPROTO, NULL, "COPY is not supported on this path");
        c->broken = true;
        break;
    default:
        if (q->err.code == 0)
            rt__error_from_result(&q->err, r, c->pc.pg);
        break;
    }
    PQclear(r);
}

/* Reads the results that arrived, completing slots in order. Returns false when c broke
 * (the caller hands it to pipe_lost). Callbacks that would close c only mark it broken
 * while c->pipe_driving (rt__pipe_cancel), so c stays allocated here. */
static bool pipe_drive_results(struct rt_conn *c)
{
    PGconn *pg = c->pc.pg;
    int nulls = 0;

    while (c->op == RT_OP_PIPE && c->pipe_sent > 0) {
        if (PQstatus(pg) != CONNECTION_OK || c->broken)
            return false;
        if (PQisBusy(pg))
            return true;
        PGresult *r = PQgetResult(pg);
        if (!r) {
            /* One command's results ended. Two in a row: libpq has nothing we wait for. */
            if (++nulls > 1) {
                c->broken = true;
                return false;
            }
            continue;
        }
        nulls = 0;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (--pipe_slot(c, 0)->syncs_left == 0)
                pipe_complete(c);
            continue;
        }
        pipe_take(c, r);
    }
    return true;
}

void rt__pipe_drive(struct rt_conn *c)
{
    c->pipe_driving = true;
    bool ok = pipe_drive_results(c);
    c->pipe_driving = false;
    if (c->op != RT_OP_PIPE)
        return;
    if (!ok || (c->broken && c->pipe_sent > 0)) {
        pipe_lost(c, c->broken && PQstatus(c->pc.pg) == CONNECTION_OK ? "pipeline out of step"
                                                                      : "connection lost");
        return;
    }
    pipe_fill(c);
    if (c->pipe_n == 0)
        pipe_end(c);
}

/* c broke: every statement on it (sent or not) fails with the retryable class and is
 * run again elsewhere; c is closed. */
static void pipe_lost(struct rt_conn *c, const char *why)
{
    struct rt_pool *p = c->pool;
    struct rt_query *qs[64];
    int n = 0;
    struct rt_error e;

    rt__error_from_result(&e, NULL, c->pc.pg);
    rt_error_set(&e, RT_ECONN_LOST, e.sqlstate[0] && e.sqlstate[0] != '0' ? e.sqlstate : "08006",
                 "%s: %s", why, e.message[0] ? e.message : "server closed the connection");
    e.transient = true;
    for (int i = 0; i < c->pipe_n && n < (int)(sizeof qs / sizeof qs[0]); i++) {
        struct rt__pipe_slot *s = pipe_slot(c, i);
        if (s->q)
            qs[n++] = s->q;
    }
    p->npipe_slots -= c->pipe_n;
    c->pipe_n = c->pipe_sent = 0;
    c->broken = true;
    /* The server may have lost statements we prepared: the connection is closed anyway. */
    pipe_end(c);
    for (int i = 0; i < n; i++) {
        PQclear(qs[i]->res);
        qs[i]->res = NULL;
        qs[i]->err = e;
        pipe_deliver(p, qs[i], true);
    }
}

int rt__pipe_cancel(struct rt_query *q, const char *why)
{
    struct rt_conn *c = q->conn;

    if (!c || c->op != RT_OP_PIPE)
        return -ENOENT;
    for (int i = 0; i < c->pipe_n; i++) {
        struct rt__pipe_slot *s = pipe_slot(c, i);
        if (s->q != q)
            continue;
        if (i >= c->pipe_sent) {
            /* Not sent yet: it simply leaves the queue. */
            for (int j = i; j + 1 < c->pipe_n; j++)
                *pipe_slot(c, j) = *pipe_slot(c, j + 1);
            c->pipe_n--;
            c->pool->npipe_slots--;
        } else {
            /* Sent: its result is read and dropped; the neighbours are not disturbed. */
            s->q = NULL;
        }
        pipe_gauges(c->pool);
        PQclear(q->res);
        q->res = NULL;
        q->conn = NULL;
        rt_error_set(&q->err, RT_ECANCELED, NULL, "%s", why);
        rt__pool_note_stmt(c->pool, q->acq.label, q->sql, q->nparams, q->values,
                           uv_hrtime() - q->t0_ns, &q->err, q->request_id);
        q->cb(q, NULL, &q->err);
        if (c->op != RT_OP_PIPE)
            return 0;
        /* Nobody waits for what is left on it: as for a held query (rt_query_cancel), the
         * server may be stuck on it, so the connection is closed rather than waited for. */
        bool live = false;
        for (int j = 0; j < c->pipe_n && !live; j++)
            live = pipe_slot(c, j)->q != NULL;
        if (!live && c->pipe_driving) {
            c->broken = true; /* rt__pipe_drive closes it when the callback returns */
        } else if (!live) {
            c->pool->npipe_slots -= c->pipe_n;
            if (c->pipe_sent > 0)
                c->broken = true;
            c->pipe_n = c->pipe_sent = 0;
            pipe_end(c);
        }
        return 0;
    }
    return -ENOENT;
}
