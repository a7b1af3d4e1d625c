/*
 * The async query path on the loop: one statement with bound parameters (through the
 * connection's prepared-statement cache), pipelined batches, the pool's own ROLLBACK, and
 * the socket callback that drives them and notices connections that break while idle.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "pool_int.h"
#include "rt_log.h"

/* Steps of one statement: [DEALLOCATE evicted] -> [PREPARE] -> EXECUTE. */
enum query_step {
    QUERY_DEALLOC = 1,
    QUERY_PREPARE,
    QUERY_EXEC,          /* unnamed statement */
    QUERY_EXEC_PREPARED, /* cached statement q->stmt */
};

/* Starts watching for writability too when libpq could not send everything at once. */
static int query_flush(struct rt_conn *c)
{
    int f = PQflush(c->pc.pg);
    if (f < 0)
        return RT_ECONN_LOST;
    return rt_pgconn_watch(&c->pc, f > 0 ? UV_READABLE | UV_WRITABLE : UV_READABLE) < 0
               ? RT_ECONN_LOST
               : 0;
}

/* The op starts: the socket keeps the loop alive until it ends. */
static void query_op_begin(struct rt_conn *c, enum rt_conn_op op)
{
    c->op = op;
    rt_pgconn_ref(&c->pc, true);
}

static void query_op_end(struct rt_conn *c)
{
    c->op = RT_OP_NONE;
    c->query = NULL;
    c->batch = NULL;
    if (c->pc.poll) {
        rt_pgconn_ref(&c->pc, false);
        if (c->pc.events != UV_READABLE && rt_pgconn_watch(&c->pc, UV_READABLE) < 0)
            c->broken = true;
    }
}

/* Sends the first step of q. Returns 0 or an error code with q->err filled. */
static int query_send(struct rt_query *q)
{
    struct rt_conn *c = q->conn;
    PGconn *pg = c->pc.pg;
    char evicted[24];
    int ok;

    switch (rt__stmt_lookup(&c->stmts, q->sql, q->stmt, evicted)) {
    case RT_STMT_HIT:
        q->step = QUERY_EXEC_PREPARED;
        ok = PQsendQueryPrepared(pg, q->stmt, q->nparams, q->values, NULL, NULL, 0);
        break;
    case RT_STMT_MISS:
        if (evicted[0]) {
            char sql[48];
            snprintf(sql, sizeof sql, "DEALLOCATE %s", evicted);
            q->step = QUERY_DEALLOC;
            ok = PQsendQuery(pg, sql);
        } else {
            q->step = QUERY_PREPARE;
            ok = PQsendPrepare(pg, q->stmt, q->sql, q->nparams, NULL);
        }
        break;
    default:
        q->stmt[0] = 0;
        q->step = QUERY_EXEC;
        ok = PQsendQueryParams(pg, q->sql, q->nparams, NULL, q->values, NULL, NULL, 0);
        break;
    }
    if (!ok) {
        if (q->step != QUERY_EXEC)
            rt__stmt_forget(&c->stmts, q->sql);
        rt__error_from_result(&q->err, NULL, pg);
        if (q->err.code == RT_ESQL)
            q->err.code = RT_EPROTO;
        return q->err.code;
    }
    if (query_flush(c) < 0)
        return rt_error_set(&q->err, RT_ECONN_LOST, "08006", "connection lost while sending");
    return 0;
}

int rt_conn_query(struct rt_conn *c, struct rt_query *q, const char *sql, int nparams,
                  const char *const *values, rt_query_cb cb)
{
    if (c->op != RT_OP_NONE || c->state != RT_CONN_IN_USE || !c->pc.poll)
        return rt_error_set(&q->err, RT_EPROTO, NULL, "connection busy or not held");
    if (c->broken || PQstatus(c->pc.pg) != CONNECTION_OK)
        return rt_error_set(&q->err, RT_ECONN_LOST, "08006", "connection lost");
    q->conn = c;
    q->cb = cb;
    q->sql = sql;
    q->nparams = nparams;
    q->values = values;
    q->res = NULL;
    q->err.code = 0;
    q->err.sqlstate[0] = 0;
    q->reprepared = false;
    q->t0_ns = uv_hrtime();
    int rc = query_send(q);
    if (rc < 0)
        return rc;
    c->query = q;
    query_op_begin(c, RT_OP_QUERY);
    return 0;
}

/* Ends q: stats, slow log, release (rt_pool_query), then the callback. */
static void query_finish(struct rt_query *q)
{
    struct rt_conn *c = q->conn;
    PGresult *res = q->res;
    bool failed = q->err.code != 0;

    query_op_end(c);
    rt__pool_note_query(c, q->sql, q->nparams, q->values, uv_hrtime() - q->t0_ns,
                        failed ? &q->err : NULL, q->request_id);
    if (failed) {
        PQclear(res);
        res = NULL;
    }
    q->res = NULL;
    if (q->own_conn) {
        q->conn = NULL;
        rt_pool_release(c);
    }
    q->cb(q, res, failed ? &q->err : NULL);
}

/* Keeps the first error, or the last good result, of the current step. */
static void query_take(struct rt_query *q, PGresult *r)
{
    switch (PQresultStatus(r)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE:
        if (q->err.code == 0 && q->step >= QUERY_EXEC) {
            PQclear(q->res);
            q->res = r;
            return;
        }
        break;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
        if (q->err.code == 0)
            rt_error_set(&q->err, RT_EPROTO, NULL, "COPY is not supported on this path");
        q->conn->broken = true;
        break;
    default:
        if (q->err.code == 0)
            rt__error_from_result(&q->err, r, q->conn->pc.pg);
        break;
    }
    PQclear(r);
}

/* The current step ended (PQgetResult said NULL). Returns true when q finished. */
static bool query_step_done(struct rt_query *q)
{
    struct rt_conn *c = q->conn;
    PGconn *pg = c->pc.pg;
    int ok = 1;

    switch (q->step) {
    case QUERY_DEALLOC:
        q->err.code = 0; /* not ours to report; the statement is gone either way */
        q->err.sqlstate[0] = 0;
        q->step = QUERY_PREPARE;
        ok = PQsendPrepare(pg, q->stmt, q->sql, q->nparams, NULL);
        break;
    case QUERY_PREPARE:
        if (q->err.code && strcmp(q->err.sqlstate, "42P05") != 0) {
            rt__stmt_forget(&c->stmts, q->sql);
            return true;
        }
        q->err.code = 0; /* 42P05: the server still has it under that name */
        q->err.sqlstate[0] = 0;
        q->step = QUERY_EXEC_PREPARED;
        ok = PQsendQueryPrepared(pg, q->stmt, q->nparams, q->values, NULL, NULL, 0);
        break;
    case QUERY_EXEC_PREPARED:
        /* The server lost the statement (DISCARD ALL, a pooler): prepare it again, once. */
        if (q->err.code && !q->reprepared && strcmp(q->err.sqlstate, "26000") == 0 &&
            PQtransactionStatus(pg) == PQTRANS_IDLE) {
            rt__stmt_forget(&c->stmts, q->sql);
            q->reprepared = true;
            q->err.code = 0;
            q->err.sqlstate[0] = 0;
            if (query_send(q) == 0)
                return false;
            return true;
        }
        return true;
    default:
        return true;
    }
    if (!ok) {
        rt__error_from_result(&q->err, NULL, pg);
        return true;
    }
    if (query_flush(c) < 0) {
        rt_error_set(&q->err, RT_ECONN_LOST, "08006", "connection lost while sending");
        return true;
    }
    return false;
}

static void query_drive(struct rt_conn *c)
{
    struct rt_query *q = c->query;
    PGconn *pg = c->pc.pg;

    for (;;) {
        if (PQstatus(pg) == CONNECTION_OK && PQisBusy(pg))
            return;
        PGresult *r = PQgetResult(pg);
        if (r) {
            query_take(q, r);
            continue;
        }
        if (PQstatus(pg) != CONNECTION_OK) {
            if (q->err.code == 0 || q->err.code == RT_ESQL)
                rt__error_from_result(&q->err, NULL, pg);
            q->err.code = RT_ECONN_LOST;
            q->err.transient = true;
            query_finish(q);
            return;
        }
        if (query_step_done(q)) {
            query_finish(q);
            return;
        }
        return; /* the next step was sent */
    }
}

/* ---- pool-level query ---------------------------------------------------------------- */

static void query_acquired(struct rt_acquire *req, struct rt_conn *c, const struct rt_error *err)
{
    struct rt_query *q = req->data;

    if (!c) {
        q->cb(q, NULL, err);
        return;
    }
    if (q->pipe) {
        rt__pipe_start(c, q);
        return;
    }
    int rc = rt_conn_query(c, q, q->sql, q->nparams, q->values, q->cb);
    if (rc < 0) {
        struct rt_error e = q->err;
        rt_pool_release(c);
        q->cb(q, NULL, &e);
        return;
    }
    q->own_conn = true;
}

int rt_pool_query(struct rt_pool *pool, struct rt_query *q, const char *label, const char *sql,
                  int nparams, const char *const *values, rt_query_cb cb)
{
    q->acq.data = q;
    q->conn = NULL;
    q->sql = sql;
    q->nparams = nparams;
    q->values = values;
    q->cb = cb;
    q->own_conn = false;
    q->pipe = false;
    q->attempts = 0;
    q->reprepared = false;
    if (rt__pipe_eligible(pool, sql)) {
        q->acq.label = label;
        q->acq.cb = query_acquired;
        return rt__pipe_submit(pool, q);
    }
    return rt_pool_acquire(pool, &q->acq, label, query_acquired);
}

int rt_query_cancel(struct rt_query *q, const char *why)
{
    struct rt_error err;
    struct rt_conn *c = q->conn;

    if (q->pipe && c)
        return rt__pipe_cancel(q, why);
    if (c && c->query == q && c->op == RT_OP_QUERY) {
        /* The statement may still run on the server: the connection cannot be reused. */
        c->broken = true;
        PQclear(q->res);
        q->res = NULL;
        rt_error_set(&q->err, RT_ECANCELED, NULL, "%s", why);
        query_finish(q);
        return 0;
    }
    if (!c && rt_pool_acquire_cancel(&q->acq) == 0) {
        rt_error_set(&err, RT_ECANCELED, NULL, "%s", why);
        q->cb(q, NULL, &err);
        return 0;
    }
    return -ENOENT;
}

/* ---- batches (pipeline mode) --------------------------------------------------------- */

int rt_conn_batch(struct rt_conn *c, struct rt_batch *b, struct rt_batch_item *items, int n,
                  unsigned flags, rt_batch_cb cb)
{
    PGconn *pg = c->pc.pg;

    if (c->op != RT_OP_NONE || c->state != RT_CONN_IN_USE || !c->pc.poll || n < 1)
        return RT_EPROTO;
    if (c->broken || PQstatus(pg) != CONNECTION_OK)
        return RT_ECONN_LOST;
    if (!PQenterPipelineMode(pg))
        return RT_EPROTO;
    b->conn = c;
    b->items = items;
    b->n = n;
    b->next = 0;
    b->flags = flags;
    b->cb = cb;
    b->failed = 0;
    b->syncs_seen = 0;
    b->syncs_expected = (flags & RT_BATCH_INDEPENDENT) ? n : 1;
    b->t0_ns = uv_hrtime();
    for (int i = 0; i < n; i++) {
        items[i].res = NULL;
        items[i].err.code = 0;
        items[i].err.sqlstate[0] = 0;
        if (!PQsendQueryParams(pg, items[i].sql, items[i].nparams, NULL, items[i].values, NULL,
                               NULL, 0))
            goto lost;
        if ((flags & RT_BATCH_INDEPENDENT) && !PQpipelineSync(pg))
            goto lost;
    }
    if (!(flags & RT_BATCH_INDEPENDENT) && !PQpipelineSync(pg))
        goto lost;
    if (query_flush(c) < 0)
        goto lost;
    c->batch = b;
    query_op_begin(c, RT_OP_BATCH);
    return 0;

lost:
    /* Whatever was queued cannot be taken back on a live connection. */
    c->broken = true;
    return RT_ECONN_LOST;
}

static void batch_finish(struct rt_batch *b)
{
    struct rt_conn *c = b->conn;
    struct rt_pool *p = c->pool;

    if (PQstatus(c->pc.pg) == CONNECTION_OK && !PQexitPipelineMode(c->pc.pg))
        c->broken = true;
    query_op_end(c);
    for (int i = 0; i < b->n; i++) {
        if (!b->items[i].res && b->items[i].err.code == 0)
            rt_error_set(&b->items[i].err, RT_ECONN_LOST, "08006", "no result (connection lost)");
        if (b->items[i].err.code)
            b->failed++;
    }
    /* One observation for the round trip; every statement counts as a query. */
    rt__pool_note_query(c, b->items[0].sql, b->items[0].nparams, b->items[0].values,
                        uv_hrtime() - b->t0_ns, b->failed ? &b->items[0].err : NULL, NULL);
    if (b->n > 1)
        shm_count(&p->stats->counters.queries, (uint64_t)b->n - 1);
    b->cb(b, b->failed);
}

static void batch_drive(struct rt_conn *c)
{
    struct rt_batch *b = c->batch;
    PGconn *pg = c->pc.pg;

    for (;;) {
        if (PQstatus(pg) != CONNECTION_OK) {
            for (int i = b->next; i < b->n; i++)
                if (!b->items[i].res && b->items[i].err.code == 0)
                    rt__error_from_result(&b->items[i].err, NULL, pg);
            batch_finish(b);
            return;
        }
        if (PQisBusy(pg))
            return;
        PGresult *r = PQgetResult(pg);
        if (!r) {
            if (b->next < b->n)
                b->next++; /* the end of one statement's results */
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (++b->syncs_seen == b->syncs_expected) {
                batch_finish(b);
                return;
            }
            continue;
        }
        struct rt_batch_item *it = b->next < b->n ? &b->items[b->next] : NULL;
        if (!it) {
            PQclear(r);
            continue;
        }
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY) {
            PQclear(it->res);
            it->res = r;
        } else if (st == PGRES_PIPELINE_ABORTED) {
            rt_error_set(&it->err, RT_ESQL, NULL,
                         "not run: an earlier statement of the batch "
                         "failed");
            PQclear(r);
        } else {
            if (it->err.code == 0)
                rt__error_from_result(&it->err, r, pg);
            PQclear(r);
        }
    }
}

/* ---- rollback of a released connection ----------------------------------------------- */

int rt__query_start_rollback(struct rt_conn *c)
{
    if (!c->pc.poll || PQstatus(c->pc.pg) != CONNECTION_OK || !PQsendQuery(c->pc.pg, "ROLLBACK") ||
        query_flush(c) < 0)
        return RT_ECONN_LOST;
    query_op_begin(c, RT_OP_ROLLBACK);
    return 0;
}

static void rollback_drive(struct rt_conn *c)
{
    PGconn *pg = c->pc.pg;
    bool ok = true;

    for (;;) {
        if (PQstatus(pg) == CONNECTION_OK && PQisBusy(pg))
            return;
        PGresult *r = PQgetResult(pg);
        if (!r)
            break;
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            ok = false;
        PQclear(r);
    }
    query_op_end(c);
    rt__pool_rollback_done(c, ok && PQstatus(pg) == CONNECTION_OK);
}

/* ---- the socket callback ------------------------------------------------------------- */

void rt__query_on_socket(struct rt_conn *c, int status, int events)
{
    PGconn *pg = c->pc.pg;
    PGnotify *n;

    if (status == 0 && (events & UV_WRITABLE)) {
        int f = PQflush(pg);
        if (f == 0 && rt_pgconn_watch(&c->pc, UV_READABLE) < 0)
            c->broken = true;
    }
    /* On error or hang-up, PQconsumeInput finds out and marks the connection bad. */
    if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT)) || events == 0)
        PQconsumeInput(pg);
    if (status < 0) {
        /* libuv stopped the watch on the error (the driver cleared c->pc.events). */
        if (c->op == RT_OP_NONE || PQstatus(pg) != CONNECTION_OK ||
            rt_pgconn_watch(&c->pc, UV_READABLE) < 0)
            c->broken = true;
    }
    switch (c->op) {
    case RT_OP_QUERY:
        query_drive(c);
        return;
    case RT_OP_BATCH:
        batch_drive(c);
        return;
    case RT_OP_ROLLBACK:
        rollback_drive(c);
        return;
    case RT_OP_PIPE:
        rt__pipe_drive(c);
        return;
    default:
        break;
    }
    /* Idle or held without a query: notifications are not ours (no LISTEN in worker pools),
     * a bad status means the server went away. */
    while ((n = PQnotifies(pg)))
        PQfreemem(n);
    if (c->broken || PQstatus(pg) != CONNECTION_OK)
        rt__pool_conn_broke(c);
}
