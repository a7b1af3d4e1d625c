/*
 * The blocking API for plugin handler threads: the loop checks a connection out for a
 * uv_queue_work job (its socket unwatched, libpq in blocking mode), the thread runs
 * blocking statements and transactions with retry on it, and the after-work callback on
 * the loop takes it back.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "pool_int.h"
#include "rt_log.h"

/* ---- checkout for a thread (loop side) ----------------------------------------------- */

static void blocking_work(uv_work_t *w)
{
    struct rt_blocking *req = w->data;
    req->fn(req, req->conn);
}

int rt_conn_lend(struct rt_conn *c)
{
    if (c->state != RT_CONN_IN_USE || c->op != RT_OP_NONE)
        return RT_EPROTO;
    /* The thread owns the socket now: the loop must not read from it meanwhile. */
    rt_pgconn_unwatch(&c->pc);
    c->state = RT_CONN_THREAD;
    if (PQsetnonblocking(c->pc.pg, 0) != 0) {
        c->state = RT_CONN_IN_USE;
        c->broken = true;
        return RT_ECONN_LOST;
    }
    return 0;
}

/* Takes c back from a thread: non-blocking again, watched again (a reset may have
 * changed the socket: rt_pgconn_watch makes a new watch then), released. */
void rt_conn_return(struct rt_conn *c)
{
    if (PQstatus(c->pc.pg) != CONNECTION_OK || PQsetnonblocking(c->pc.pg, 1) != 0 ||
        rt_pgconn_watch(&c->pc, UV_READABLE) < 0)
        c->broken = true;
    else
        rt_pgconn_ref(&c->pc, false);
    rt_pool_release(c);
}

static void blocking_after(uv_work_t *w, int status)
{
    struct rt_blocking *req = w->data;
    struct rt_conn *c = req->conn;

    req->conn = NULL;
    rt_conn_return(c);
    req->done(req, NULL);
}

static void blocking_acquired(struct rt_acquire *acq, struct rt_conn *c, const struct rt_error *err)
{
    struct rt_blocking *req = acq->data;
    struct rt_error e;
    int rc;

    if (!c) {
        req->done(req, err);
        return;
    }
    req->conn = c;
    req->work.data = req;
    if (rt_conn_lend(c) != 0) {
        rt_error_set(&e, RT_ECONN_LOST, "08006", "connection lost");
    } else {
        rc = uv_queue_work(c->pool->loop, &req->work, blocking_work, blocking_after);
        if (rc == 0)
            return;
        rt_error_set(&e, rc, NULL, "cannot queue work: %s", uv_strerror(rc));
    }
    req->conn = NULL;
    if (c->state == RT_CONN_THREAD)
        rt_conn_return(c);
    else
        rt_pool_release(c);
    req->done(req, &e);
}

bool rt_pool_pipelines(const struct rt_pool *p, const char *sql)
{
    return rt__pipe_eligible(p, sql);
}

int rt_pool_run_blocking(struct rt_pool *pool, struct rt_blocking *req, const char *label,
                         rt_blocking_fn fn, rt_blocking_done done)
{
    req->fn = fn;
    req->done = done;
    req->conn = NULL;
    req->acq.data = req;
    return rt_pool_acquire(pool, &req->acq, label, blocking_acquired);
}

/* ---- blocking statements (handler thread) -------------------------------------------- */

/* Whether r is a success; fills err from r otherwise. Does not free r. */
static bool sync_ok(const PGresult *r, PGconn *pg, struct rt_error *err)
{
    switch (r ? PQresultStatus(r) : PGRES_FATAL_ERROR) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        return true;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
        rt_error_set(err, RT_EPROTO, NULL, "COPY is not supported on this path");
        return false;
    default:
        rt__error_from_result(err, r, pg);
        return false;
    }
}

/* Runs sql through the statement cache. Returns the result (NULL when libpq had none). */
static PGresult *sync_run(struct rt_conn *c, const char *sql, int n, const char *const *values)
{
    PGconn *pg = c->pc.pg;
    char name[24], evicted[24], dealloc[48];
    PGresult *r;

    for (int again = 0;; again++) {
        switch (rt__stmt_lookup(&c->stmts, sql, name, evicted)) {
        case RT_STMT_HIT:
            r = PQexecPrepared(pg, name, n, values, NULL, NULL, 0);
            /* The server lost it (DISCARD ALL): prepare it again, once, outside a
             * transaction (inside one, the error already aborted it). */
            if (!again && r && PQresultStatus(r) == PGRES_FATAL_ERROR &&
                PQtransactionStatus(pg) == PQTRANS_IDLE) {
                const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
                if (st && strcmp(st, "26000") == 0) {
                    PQclear(r);
                    rt__stmt_forget(&c->stmts, sql);
                    continue;
                }
            }
            return r;
        case RT_STMT_MISS:
            if (evicted[0]) {
                snprintf(dealloc, sizeof dealloc, "DEALLOCATE %s", evicted);
                PQclear(PQexec(pg, dealloc));
            }
            r = PQprepare(pg, name, sql, n, NULL);
            if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
                const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
                if (!st || strcmp(st, "42P05") != 0) {
                    rt__stmt_forget(&c->stmts, sql);
                    return r;
                }
            }
            PQclear(r);
            return PQexecPrepared(pg, name, n, values, NULL, NULL, 0);
        default:
            return PQexecParams(pg, sql, n, NULL, values, NULL, NULL, 0);
        }
    }
}

int rt_conn_exec_params(struct rt_conn *c, const char *sql, int nparams, const char *const *values,
                        PGresult **res, struct rt_error *err)
{
    uint64_t t0 = uv_hrtime();
    PGresult *r = sync_run(c, sql, nparams, values);
    bool ok = sync_ok(r, c->pc.pg, err);

    rt__pool_note_query(c, sql, nparams, values, uv_hrtime() - t0, ok ? NULL : err, NULL);
    if (!ok) {
        PQclear(r);
        return err->code;
    }
    if (res)
        *res = r;
    else
        PQclear(r);
    return 0;
}

/* A statement of rt_tx's own (BEGIN, COMMIT, ROLLBACK): simple protocol, not cached. */
static int sync_simple(struct rt_conn *c, const char *sql, PGresult **res, struct rt_error *err)
{
    uint64_t t0 = uv_hrtime();
    PGresult *r = PQexec(c->pc.pg, sql);
    bool ok = sync_ok(r, c->pc.pg, err);

    rt__pool_note_query(c, sql, 0, NULL, uv_hrtime() - t0, ok ? NULL : err, NULL);
    if (!ok || !res)
        PQclear(r);
    else
        *res = r;
    return ok ? 0 : err->code;
}

/* ---- transactions with retry --------------------------------------------------------- */

/* Makes sure c can start a transaction: reconnects a lost connection (same budget slot),
 * rolls back one left open. While the pool's reconnect loop finds the database
 * unreachable, a lost connection fails at once, as an acquire would, without dialing. */
static int tx_ready(struct rt_conn *c, struct rt_error *err)
{
    struct rt_pool *p = c->pool;

    if (PQstatus(c->pc.pg) != CONNECTION_OK) {
        /* Relaxed: a hint written by the loop; a stale value costs one dial or one retry. */
        if (atomic_load_explicit(&p->down_flag, memory_order_relaxed))
            return rt_error_set(err, RT_EDB_UNAVAILABLE, "08006",
                                "database unavailable (pool %s, reconnecting): the connection "
                                "was lost",
                                p->name);
        PQreset(c->pc.pg);
        rt__stmt_clear(&c->stmts); /* a new session knows none of them */
        if (PQstatus(c->pc.pg) != CONNECTION_OK) {
            rt__connect_error(err, c->pc.pg);
            shm_count(&p->stats->counters.connect_errors, 1);
            err->code = RT_ECONN_LOST;
            err->transient = true;
            return err->code;
        }
        shm_count(&p->stats->counters.connects, 1);
    }
    if (PQtransactionStatus(c->pc.pg) != PQTRANS_IDLE)
        PQclear(PQexec(c->pc.pg, "ROLLBACK"));
    return 0;
}

static int tx_once(struct rt_conn *c, const char *begin_sql, rt_tx_fn fn, void *arg,
                   struct rt_error *err)
{
    PGresult *r = NULL;
    int rc;

    err->code = 0;
    err->sqlstate[0] = 0;
    err->transient = false;
    rc = tx_ready(c, err);
    if (rc < 0)
        return rc;
    rc = sync_simple(c, begin_sql ? begin_sql : "BEGIN", NULL, err);
    if (rc < 0)
        return rc;
    rc = fn(c, arg, err);
    if (rc != 0) {
        if (err->code == 0)
            rt_error_set(err, rc < 0 ? rc : -EIO, NULL, "the transaction function failed (%d)", rc);
        if (PQstatus(c->pc.pg) == CONNECTION_OK)
            PQclear(PQexec(c->pc.pg, "ROLLBACK"));
        return err->code;
    }
    rc = sync_simple(c, "COMMIT", &r, err);
    if (rc < 0)
        return rc;
    /* COMMIT of a failed transaction answers ROLLBACK without an error: fn swallowed one. */
    if (strcmp(PQcmdStatus(r), "ROLLBACK") == 0)
        rc = rt_error_set(err, RT_ESQL, "25P02",
                          "transaction rolled back: a statement in it failed");
    PQclear(r);
    return rc;
}

int rt_tx(struct rt_conn *c, const char *begin_sql, rt_tx_fn fn, void *arg,
          const struct rt_retry_policy *policy, struct rt_error *err)
{
    struct rt_retry_policy p = policy ? *policy : RT_RETRY_DEFAULT;

    for (int attempt = 0;; attempt++) {
        int rc = tx_once(c, begin_sql, fn, arg, err);
        if (rc == 0 || !err->transient || attempt >= p.max_retries)
            return rc;
        int ms = rt_retry_delay_ms(&p, attempt);
        shm_count(&c->pool->stats->counters.retries, 1);
        rt_log(RT_LOG_INFO, "Retrying transaction",
               json_pack("{s:s,s:s,s:s,s:i,s:i}", "pool", c->pool->name, "sqlstate", err->sqlstate,
                         "error", err->message, "attempt", attempt + 1, "delay_ms", ms));
        rt__retry_sleep_ms(ms);
    }
}
