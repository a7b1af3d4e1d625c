/*
 * Read routing over the primary pool and the replica's read pool: reads go to the replica,
 * fall back to the primary while it is unreachable (one warning per outage), and a probe
 * read now and then finds out when it is back. See rt_read_pool.h.
 *
 *   up ──(a replica read cannot connect: warn once)──> down
 *   down: reads run on the primary; after probe_wait one read tries the replica
 *         probe connects ──(info line)──> up        probe fails ──> probe_wait × 2
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool_int.h"
#include "rt_log.h"
#include "rt_read_pool.h"

#define READ_PROBE_MIN_MS 1000
#define READ_PROBE_MAX_MS 30000

struct rt_read_router {
    struct rt_pool *primary; /* borrowed */
    struct rt_pool *replica; /* borrowed; NULL = reads run on the primary */
    uv_loop_t *loop;
    int probe_min_ms, probe_max_ms;
    bool down;                 /* the replica is in an outage */
    bool probing;              /* a read is trying the replica during the outage */
    int probe_wait_ms;         /* wait before the next probe; doubles per failed probe */
    uint64_t down_since_ms;    /* loop time the outage began */
    uint64_t next_probe_ms;    /* loop time from which a read may probe */
    uint64_t outage_fallbacks; /* fallbacks since the outage began, for the recovery line */
    struct rt_read_stats stats;
};

/* What a read's attempt on the replica tells about the replica. */
enum read_outcome {
    READ_REACHED,     /* it got a connection */
    READ_UNREACHABLE, /* it could not connect: an outage */
    READ_OTHER,       /* neither (pool busy or closing, connection lost): no verdict */
};

void rt_read_opts_init(struct rt_read_opts *opts)
{
    opts->probe_min_ms = READ_PROBE_MIN_MS;
    opts->probe_max_ms = READ_PROBE_MAX_MS;
}

int rt_read_router_create(struct rt_read_router **out, struct rt_pool *primary,
                          struct rt_pool *replica, const struct rt_read_opts *opts)
{
    struct rt_read_opts def;
    struct rt_read_router *r;

    if (!opts) {
        rt_read_opts_init(&def);
        opts = &def;
    }
    if (!primary || opts->probe_min_ms < 0 || opts->probe_max_ms < opts->probe_min_ms)
        return -EINVAL;
    r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->primary = primary;
    r->replica = replica == primary ? NULL : replica;
    r->loop = primary->loop;
    r->probe_min_ms = opts->probe_min_ms;
    r->probe_max_ms = opts->probe_max_ms;
    r->probe_wait_ms = opts->probe_min_ms;
    *out = r;
    return 0;
}

void rt_read_router_destroy(struct rt_read_router *r)
{
    free(r);
}

void rt_read_router_stats(const struct rt_read_router *r, struct rt_read_stats *out)
{
    *out = r->stats;
    out->replica_down = r->down;
}

/* ---- the routing decision ------------------------------------------------------------ */

/* The pool a new read should use; writes whether it is the replica and the outage's probe. */
static struct rt_pool *router_pick(struct rt_read_router *r, bool *on_replica, bool *probe)
{
    *on_replica = false;
    *probe = false;
    if (!r->replica)
        return r->primary;
    if (!r->down) {
        *on_replica = true;
        return r->replica;
    }
    if (!r->probing && uv_now(r->loop) >= r->next_probe_ms) {
        r->probing = true;
        *on_replica = true;
        *probe = true;
        return r->replica;
    }
    return r->primary;
}

/* A read was started on the primary although there is a replica: count it. */
static void router_fell_back(struct rt_read_router *r)
{
    if (!r->replica)
        return;
    r->stats.fallbacks++;
    if (r->down)
        r->outage_fallbacks++;
}

/* Classifies the acquire error of a replica read (NULL = it got a connection). */
static enum read_outcome router_classify(const struct rt_read_router *r, const struct rt_error *err)
{
    struct rt_pool_state st;

    if (!err)
        return READ_REACHED;
    switch (err->code) {
    case RT_ECONNECT:
    case RT_ECONNECT_TIMEOUT:
    case RT_EDB_UNAVAILABLE:
        return READ_UNREACHABLE;
    case RT_EPOOL_TIMEOUT:
        /* Timed out without a single established connection: it is the replica that
         * does not answer (connect_timeout longer than pool_timeout), not a busy pool. */
        rt_pool_state(r->replica, &st);
        return st.open - st.connecting == 0 ? READ_UNREACHABLE : READ_OTHER;
    default:
        return READ_OTHER;
    }
}

/*
 * Records what a replica read found. Only a probe ends an outage: a connection that was
 * open before it began may still work while new ones fail (the replica at its connection
 * limit), and letting such reads flip the state would log on every flip.
 */
static void router_note(struct rt_read_router *r, bool probe, enum read_outcome o,
                        const struct rt_error *err)
{
    uint64_t now = uv_now(r->loop);

    if (probe)
        r->probing = false;
    switch (o) {
    case READ_REACHED:
        r->stats.replica_reads++;
        if (!probe || !r->down)
            return;
        r->down = false;
        r->probe_wait_ms = r->probe_min_ms;
        rt_log(RT_LOG_INFO, "Read replica reachable again; reads go back to it",
               json_pack("{s:s,s:s,s:I,s:I}", "pool", rt_pool_name(r->replica), "replica",
                         r->replica->url->redacted, "outage_ms",
                         (json_int_t)(now - r->down_since_ms), "fallbacks",
                         (json_int_t)r->outage_fallbacks));
        return;
    case READ_UNREACHABLE:
        if (!r->down) {
            r->down = true;
            r->stats.outages++;
            r->down_since_ms = now;
            r->outage_fallbacks = 0;
            r->probe_wait_ms = r->probe_min_ms;
            r->next_probe_ms = now + (uint64_t)r->probe_wait_ms;
            rt_log(RT_LOG_WARN, "Read replica unreachable; reads fall back to the primary",
                   json_pack("{s:s,s:s,s:s,s:s,s:i}", "pool", rt_pool_name(r->replica), "replica",
                             r->replica->url->redacted, "error", err->message, "sqlstate",
                             err->sqlstate, "retry_in_ms", r->probe_wait_ms));
        } else if (probe) {
            /* Still down: wait longer before the next probe, and say nothing. */
            r->probe_wait_ms =
                r->probe_wait_ms * 2 > r->probe_max_ms ? r->probe_max_ms : r->probe_wait_ms * 2;
            r->next_probe_ms = now + (uint64_t)r->probe_wait_ms;
        }
        return;
    case READ_OTHER:
        if (probe)
            r->next_probe_ms = now + (uint64_t)r->probe_wait_ms;
        return;
    }
}

/* An error for a fallback that could not start because the primary is closing. */
static const struct rt_error *closed_error(struct rt_error *e)
{
    rt_error_set(e, RT_EPOOL_CLOSED, NULL, "the primary pool is closing");
    return e;
}

/* ---- acquire ------------------------------------------------------------------------- */

/* A read acquire finished on its pool: notes what the replica did, falls back on an
 * outage, else hands the result to the caller. */
static void read_acquired(struct rt_acquire *acq, struct rt_conn *conn, const struct rt_error *err)
{
    struct rt_read_acquire *req = acq->data;
    struct rt_read_router *r = req->router;
    struct rt_error e;

    if (req->on_replica) {
        enum read_outcome o = router_classify(r, conn ? NULL : err);
        router_note(r, req->probe, o, err);
        req->probe = false;
        if (o == READ_UNREACHABLE) {
            req->on_replica = false;
            if (rt_pool_acquire(r->primary, &req->acq, req->label, read_acquired) == 0) {
                router_fell_back(r);
                return;
            }
            err = closed_error(&e);
        }
    }
    req->cb(req, conn, conn ? NULL : err);
}

int rt_read_acquire(struct rt_read_router *r, struct rt_read_acquire *req, const char *label,
                    rt_read_acquire_cb cb)
{
    struct rt_pool *pool = router_pick(r, &req->on_replica, &req->probe);
    bool on_replica = req->on_replica;
    int rc;

    req->router = r;
    req->cb = cb;
    req->label = label;
    req->acq.data = req;
    rc = rt_pool_acquire(pool, &req->acq, label, read_acquired);
    if (rc < 0) {
        if (req->probe)
            r->probing = false;
        return rc;
    }
    if (!on_replica)
        router_fell_back(r);
    return 0;
}

int rt_read_acquire_cancel(struct rt_read_acquire *req)
{
    int rc = rt_pool_acquire_cancel(&req->acq);
    if (rc == 0 && req->probe) {
        req->probe = false;
        req->router->probing = false;
    }
    return rc;
}

/* ---- queries ------------------------------------------------------------------------- */

/* A read query finished: as read_acquired, and repeats a read whose replica connection
 * was lost. */
static void read_query_done(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct rt_read_query *rq = q->data;
    struct rt_read_router *r = rq->router;
    struct rt_error e;

    if (rq->on_replica) {
        /* The server answered with an error: the replica was reached. */
        enum read_outcome o = err && err->code == RT_ESQL ? READ_REACHED : router_classify(r, err);
        router_note(r, rq->probe, o, err);
        rq->probe = false;
        /* A lost connection: the read is safe to repeat, once, on the primary. */
        if (o == READ_UNREACHABLE || (err && err->code == RT_ECONN_LOST && !rq->retried)) {
            rq->on_replica = false;
            rq->retried = true;
            if (rt_pool_query(r->primary, &rq->q, rq->label, q->sql, q->nparams, q->values,
                              read_query_done) == 0) {
                router_fell_back(r);
                return;
            }
            err = closed_error(&e);
        }
    }
    rq->cb(rq, res, err);
}

int rt_read_query(struct rt_read_router *r, struct rt_read_query *rq, const char *label,
                  const char *sql, int nparams, const char *const *values, rt_read_query_cb cb)
{
    struct rt_pool *pool = router_pick(r, &rq->on_replica, &rq->probe);
    bool on_replica = rq->on_replica;
    int rc;

    rq->router = r;
    rq->cb = cb;
    rq->label = label;
    rq->retried = false;
    rq->q.data = rq;
    rc = rt_pool_query(pool, &rq->q, label, sql, nparams, values, read_query_done);
    if (rc < 0) {
        if (rq->probe)
            r->probing = false;
        return rc;
    }
    if (!on_replica)
        router_fell_back(r);
    return 0;
}

/* ---- blocking work on a thread ------------------------------------------------------- */

/* Handler thread: only reads req->fn, which nothing changes while the thread runs. */
static void read_blocking_fn(struct rt_blocking *blk, struct rt_conn *conn)
{
    struct rt_read_blocking *req = blk->data;
    req->fn(req, conn);
}

/* Blocking read-only work finished (or its acquire failed): as read_acquired. */
static void read_blocking_done(struct rt_blocking *blk, const struct rt_error *err)
{
    struct rt_read_blocking *req = blk->data;
    struct rt_read_router *r = req->router;
    struct rt_error e;

    if (req->on_replica) {
        enum read_outcome o = router_classify(r, err);
        router_note(r, req->probe, o, err);
        req->probe = false;
        if (o == READ_UNREACHABLE) {
            /* fn has not run: the acquire failed. */
            req->on_replica = false;
            if (rt_pool_run_blocking(r->primary, &req->blk, req->label, read_blocking_fn,
                                     read_blocking_done) == 0) {
                router_fell_back(r);
                return;
            }
            err = closed_error(&e);
        }
    }
    req->done(req, err);
}

int rt_read_run_blocking(struct rt_read_router *r, struct rt_read_blocking *req, const char *label,
                         rt_read_blocking_fn fn, rt_read_blocking_done done)
{
    struct rt_pool *pool = router_pick(r, &req->on_replica, &req->probe);
    bool on_replica = req->on_replica;
    int rc;

    req->router = r;
    req->fn = fn;
    req->done = done;
    req->label = label;
    req->blk.data = req;
    rc = rt_pool_run_blocking(pool, &req->blk, label, read_blocking_fn, read_blocking_done);
    if (rc < 0) {
        if (req->probe)
            r->probing = false;
        return rc;
    }
    if (!on_replica)
        router_fell_back(r);
    return 0;
}
