/*
 * Read routing: read-only work (read-only routes, pgc_exec_read, built-in reads) runs on
 * the worker's read pool on DATABASE_REPLICA_URL; while the replica is unreachable it runs
 * on the primary pool instead, with one warning per outage, not one per query.
 *
 * Outage detection: a read on the replica whose acquire failed to connect (RT_ECONNECT,
 * RT_ECONNECT_TIMEOUT, or RT_EPOOL_TIMEOUT while the replica pool holds no established
 * connection) marks the replica down and is run again on the primary. While down, reads go
 * straight to the primary, except one read at a time after a probe wait (1 s, doubling up
 * to 30 s), which tries the replica again; its success ends the outage (an info line).
 *
 * Acquires, queries and blocking work all take one routing path (read_pool.c), which
 * differs only in what it starts on the chosen pool; a query whose replica connection was
 * lost is also repeated once on the primary.
 *
 * Threads: everything here runs on the loop thread of the two pools.
 */
#ifndef PGCORRAL_RT_READ_POOL_H
#define PGCORRAL_RT_READ_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "rt_pool.h"

struct rt_read_router; /* opaque */

struct rt_read_opts {
    int probe_min_ms; /* wait before the first read tries a down replica again; 1000 */
    int probe_max_ms; /* the wait doubles after each failed probe, up to this; 30000 */
};

/* Fills opts with the defaults above. */
void rt_read_opts_init(struct rt_read_opts *opts);

/*
 * Creates a router over primary and replica (both borrowed; they must outlive the
 * router). replica NULL or equal to primary: every read runs on the primary, no fallback
 * logic. opts NULL = defaults. Returns 0 and writes *out, or -EINVAL (primary NULL, a
 * negative or inverted probe wait) / -ENOMEM.
 */
__attribute__((warn_unused_result)) int rt_read_router_create(struct rt_read_router **out,
                                                              struct rt_pool *primary,
                                                              struct rt_pool *replica,
                                                              const struct rt_read_opts *opts);

/* Frees the router. Call it once no request started through it is pending (after the
 * pools closed). NULL does nothing. */
void rt_read_router_destroy(struct rt_read_router *r);

/* What the router did so far (loop thread). */
struct rt_read_stats {
    bool replica_down;      /* the replica is in an outage now */
    uint64_t outages;       /* outages seen (each logged once) */
    uint64_t fallbacks;     /* reads that ran on the primary because of an outage */
    uint64_t replica_reads; /* reads that got a replica connection */
};
void rt_read_router_stats(const struct rt_read_router *r, struct rt_read_stats *out);

/* ---- acquire ------------------------------------------------------------------------- */

struct rt_read_acquire;
/*
 * conn: a connection of the replica pool, or of the primary when the replica is down;
 * give it back with rt_pool_release() (it knows its pool). Or NULL with err (borrowed for
 * the call): the primary's acquire error, or a replica error that is not an outage
 * (RT_EPOOL_TIMEOUT with replica connections open, RT_EPOOL_CLOSED).
 */
typedef void (*rt_read_acquire_cb)(struct rt_read_acquire *req, struct rt_conn *conn,
                                   const struct rt_error *err);

/* Private: one read's routing, the same for every kind of read (read_pool.c). */
struct rt_read_kind;
struct rt_read_route {
    struct rt_read_router *router;
    const struct rt_read_kind *kind; /* what is run: an acquire, a query, blocking work */
    const char *label;
    bool on_replica; /* started on the replica pool */
    bool probe;      /* the outage's probe */
    bool retried;    /* already repeated on the primary */
};

/* A read acquire request, owned by the caller (no allocation). */
struct rt_read_acquire {
    void *data; /* public: for the caller */
    /* private */
    struct rt_read_route route;
    struct rt_acquire acq;
    rt_read_acquire_cb cb;
};

/*
 * rt_pool_acquire() for read-only work, with the routing above. cb runs exactly once,
 * possibly before this returns. req and label are borrowed until cb. Returns 0, or
 * RT_EPOOL_CLOSED when the pool it would use is closing (cb is not called then).
 */
__attribute__((warn_unused_result)) int rt_read_acquire(struct rt_read_router *r,
                                                        struct rt_read_acquire *req,
                                                        const char *label, rt_read_acquire_cb cb);

/* Withdraws a waiting request (cb is not called). Returns 0, or -ENOENT when it is not
 * waiting. */
int rt_read_acquire_cancel(struct rt_read_acquire *req);

/* ---- queries ------------------------------------------------------------------------- */

struct rt_read_query;
/* As rt_query_cb: res (caller PQclears) or NULL with err (borrowed for the call). */
typedef void (*rt_read_query_cb)(struct rt_read_query *rq, PGresult *res,
                                 const struct rt_error *err);

/* A read query request, owned by the caller. */
struct rt_read_query {
    void *data; /* public */
    /* private */
    struct rt_read_route route;
    struct rt_query q;
    rt_read_query_cb cb;
    const char *sql;
    int nparams;
    const char *const *values;
};

/*
 * rt_pool_query() of a read-only statement, with the routing above. Besides outages, a
 * statement whose replica connection was lost mid-query (RT_ECONN_LOST) runs once more on
 * the primary: sql must therefore be read-only. sql, values, label and rq are borrowed
 * until cb, which runs on the loop. Returns 0, or RT_EPOOL_CLOSED (cb is not called).
 */
__attribute__((warn_unused_result)) int
rt_read_query(struct rt_read_router *r, struct rt_read_query *rq, const char *label,
              const char *sql, int nparams, const char *const *values, rt_read_query_cb cb);

/* ---- blocking work on a thread ------------------------------------------------------- */

struct rt_read_blocking;
/* Runs on a threadpool thread with conn checked out (rt_conn_exec* calls). */
typedef void (*rt_read_blocking_fn)(struct rt_read_blocking *req, struct rt_conn *conn);
/* Runs on the loop after conn went back; err: the acquire error (fn did not run) or NULL. */
typedef void (*rt_read_blocking_done)(struct rt_read_blocking *req, const struct rt_error *err);

/* A read-only blocking request (a read-only route), owned by the caller. */
struct rt_read_blocking {
    void *data; /* public */
    /* private */
    struct rt_read_route route;
    struct rt_blocking blk;
    rt_read_blocking_fn fn;
    rt_read_blocking_done done;
};

/*
 * rt_pool_run_blocking() for read-only work, with the routing above: fn runs once, on a
 * replica connection, or on a primary one when the replica is down or could not be
 * reached for this request. req and label are borrowed until done. Returns 0, or
 * RT_EPOOL_CLOSED (done is not called then).
 */
__attribute__((warn_unused_result)) int
rt_read_run_blocking(struct rt_read_router *r, struct rt_read_blocking *req, const char *label,
                     rt_read_blocking_fn fn, rt_read_blocking_done done);

#endif
