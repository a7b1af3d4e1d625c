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

/* ---- one routing path for every kind of read ----------------------------------------- */

/* What a kind of read runs. */
struct rt_read_kind {
    /* Starts the read on pool; its callback comes later (or at once). Returns 0, or
     * RT_EPOOL_CLOSED (the callback is not called then). */
    int (*start)(struct rt_read_route *rt, struct rt_pool *pool);
    /* A replica connection lost mid-statement is repeated, once, on the primary: only for
     * work known to be read-only and safe to run twice (a read query). */
    bool repeat_lost;
};

/* Picks the pool and starts the read on it. Returns 0 or RT_EPOOL_CLOSED. */
static int route_start(struct rt_read_router *r, struct rt_read_route *rt,
                       const struct rt_read_kind *kind, const char *label)
{
    struct rt_pool *pool = router_pick(r, &rt->on_replica, &rt->probe);
    bool on_replica = rt->on_replica;
    int rc;

    rt->router = r;
    rt->kind = kind;
    rt->label = label;
    rt->retried = false;
    rc = kind->start(rt, pool);
    if (rc < 0) {
        if (rt->probe)
            r->probing = false;
        return rc;
    }
    if (!on_replica)
        router_fell_back(r);
    return 0;
}

/*
 * The read ended on its pool (reached: the replica answered; else *err says why not).
 * A replica read notes what it found; when the replica could not be reached, or lost the
 * connection of a read that may be repeated, the read starts again on the primary.
 * Returns true when it did (the callback comes from that run), false when the caller hands
 * *err on (the primary's closing error when it could not start there).
 */
static bool route_end(struct rt_read_route *rt, bool reached, const struct rt_error **err,
                      struct rt_error *closed)
{
    struct rt_read_router *r = rt->router;

    if (!rt->on_replica)
        return false;
    enum read_outcome o = reached ? READ_REACHED : router_classify(r, *err);
    router_note(r, rt->probe, o, *err);
    rt->probe = false;
    bool lost = rt->kind->repeat_lost && !reached && (*err)->code == RT_ECONN_LOST;
    if (o != READ_UNREACHABLE && (!lost || rt->retried))
        return false;
    rt->on_replica = false;
    rt->retried = true;
    if (rt->kind->start(rt, r->primary) == 0) {
        router_fell_back(r);
        return true;
    }
    *err = closed_error(closed);
    return false;
}

/* ---- acquire ------------------------------------------------------------------------- */

static void read_acquired(struct rt_acquire *acq, struct rt_conn *conn, const struct rt_error *err)
{
    struct rt_read_acquire *req = acq->data;
    struct rt_error e;

    if (route_end(&req->route, conn != NULL, &err, &e))
        return;
    req->cb(req, conn, conn ? NULL : err);
}

static int acquire_start(struct rt_read_route *rt, struct rt_pool *pool)
{
    struct rt_read_acquire *req = rt_container_of(rt, struct rt_read_acquire, route);
    return rt_pool_acquire(pool, &req->acq, rt->label, read_acquired);
}

static const struct rt_read_kind acquire_kind = {acquire_start, false};

int rt_read_acquire(struct rt_read_router *r, struct rt_read_acquire *req, const char *label,
                    rt_read_acquire_cb cb)
{
    req->cb = cb;
    req->acq.data = req;
    return route_start(r, &req->route, &acquire_kind, label);
}

int rt_read_acquire_cancel(struct rt_read_acquire *req)
{
    int rc = rt_pool_acquire_cancel(&req->acq);
    if (rc == 0 && req->route.probe) {
        req->route.probe = false;
        req->route.router->probing = false;
    }
    return rc;
}

/* ---- queries ------------------------------------------------------------------------- */

/* A read query finished (an error the server answered with: the replica was reached). */
static void read_query_done(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct rt_read_query *rq = q->data;
    struct rt_error e;

    if (route_end(&rq->route, !err || err->code == RT_ESQL, &err, &e))
        return;
    rq->cb(rq, res, err);
}

static int query_start(struct rt_read_route *rt, struct rt_pool *pool)
{
    struct rt_read_query *rq = rt_container_of(rt, struct rt_read_query, route);
    return rt_pool_query(pool, &rq->q, rt->label, rq->sql, rq->nparams, rq->values,
                         read_query_done);
}

static const struct rt_read_kind query_kind = {query_start, true};

int rt_read_query(struct rt_read_router *r, struct rt_read_query *rq, const char *label,
                  const char *sql, int nparams, const char *const *values, rt_read_query_cb cb)
{
    rq->cb = cb;
    rq->sql = sql;
    rq->nparams = nparams;
    rq->values = values;
    rq->q.data = rq;
    return route_start(r, &rq->route, &query_kind, label);
}

/* ---- blocking work on a thread ------------------------------------------------------- */

/* Handler thread: only reads req->fn, which nothing changes while the thread runs. */
static void read_blocking_fn(struct rt_blocking *blk, struct rt_conn *conn)
{
    struct rt_read_blocking *req = blk->data;
    req->fn(req, conn);
}

/* Blocking read-only work finished, or its acquire failed (then fn has not run). */
static void read_blocking_done(struct rt_blocking *blk, const struct rt_error *err)
{
    struct rt_read_blocking *req = blk->data;
    struct rt_error e;

    if (route_end(&req->route, !err, &err, &e))
        return;
    req->done(req, err);
}

static int blocking_start(struct rt_read_route *rt, struct rt_pool *pool)
{
    struct rt_read_blocking *req = rt_container_of(rt, struct rt_read_blocking, route);
    return rt_pool_run_blocking(pool, &req->blk, rt->label, read_blocking_fn, read_blocking_done);
}

static const struct rt_read_kind blocking_kind = {blocking_start, false};

int rt_read_run_blocking(struct rt_read_router *r, struct rt_read_blocking *req, const char *label,
                         rt_read_blocking_fn fn, rt_read_blocking_done done)
{
    req->fn = fn;
    req->done = done;
    req->blk.data = req;
    return route_start(r, &req->route, &blocking_kind, label);
}
