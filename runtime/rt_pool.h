/*
 * The per-worker connection pool: async libpq connections on the worker's libuv loop,
 * inside the global budget of the shm segment; the async query path (bound parameters,
 * prepared-statement cache, pipelined batches); the blocking API that plugin handler
 * threads run on a connection the loop checked out for them; error classification and
 * retry with backoff; the slow-query log.
 *
 * Threads: every rt_pool_* and async rt_conn_* function runs on the loop thread only.
 * The blocking rt_conn_exec* / rt_tx functions run on the thread that holds the connection
 * inside rt_pool_run_blocking(). rt_retry*, rt_error* and rt_sqlstate_* are any-thread.
 */
#ifndef PGCORRAL_RT_POOL_H
#define PGCORRAL_RT_POOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "rt_dburl.h"

struct shm_segment;
struct shm_worker;

/* Error codes of the pool and the query path (negative, beside -errno; rt_dburl.h). */
#define RT_EPOOL_TIMEOUT (-1101)    /* no connection within pool_timeout; transient */
#define RT_ECONNECT_TIMEOUT (-1102) /* connect did not finish within connect_timeout; transient */
#define RT_ECONNECT (-1103)         /* could not connect; sqlstate when the server said why */
#define RT_ECONN_LOST (-1104)   /* connection lost mid-query (sqlstate 08006 or 57P0x); transient */
#define RT_ESQL (-1105)         /* the server answered with an error: see sqlstate */
#define RT_EPOOL_CLOSED (-1106) /* the pool is closing */
#define RT_EPROTO (-1107)       /* unexpected result (COPY, ...) or misuse */
/* The database is unreachable (an outage began): refused at once, without a connection
 * attempt, until the pool's reconnect loop succeeds; transient. sqlstate: the failed
 * attempt's, when it had one. */
#define RT_EDB_UNAVAILABLE (-1108)
#define RT_ECANCELED (-1109) /* the caller gave up on it (rt_query_cancel); not transient */

#define RT_ERROR_MSG_LEN 512

/* An error of the pool or the query path. */
struct rt_error {
    int code;                       /* 0 = none; RT_E* or -errno */
    char sqlstate[6];               /* SQLSTATE ("40001"), "" when there is none */
    bool transient;                 /* retrying later may succeed (DESIGN "Pool": Retry) */
    char message[RT_ERROR_MSG_LEN]; /* for people; never holds a password */
};

/* ---- pool ---------------------------------------------------------------------------- */

struct rt_pool; /* opaque */
struct rt_conn; /* a pooled connection; opaque */

struct rt_pool_opts {
    uv_loop_t *loop;            /* required; the pool lives on it */
    const struct rt_dburl *url; /* required; borrowed, must outlive the pool */
    const char *name;           /* "primary" / "replica" (copied); default "primary" */
    /*
     * Global budget: seg, the worker's entry index and its budget token
     * shm_token(index, generation). seg NULL = no global budget (only the limit). Only one
     * pool per worker process may use seg's budget (it owns the worker's wake_fd).
     */
    struct shm_segment *seg;
    int worker_index;
    uint32_t token;
    /* Stats block (gauges, counters, histograms, holders); NULL = &seg->workers[index]
     * with seg, else a private block (see rt_pool_stats_block). */
    struct shm_worker *stats;
    int leak_threshold_ms;  /* warn when a connection is held longer; 0 = never. 60000 */
    int slow_query_ms;      /* slow-query log threshold (SLOW_QUERY_THRESHOLD); <0 = off. 500 */
    int slow_query_max_len; /* query text in the slow log truncated to this. 1000 */
    bool redact_params;     /* slow log writes "***" for every parameter. false */
    int validate_after_ms;  /* idle longer than this: checked before reuse. 5000 */
    /* Overrides of the URL's settings in milliseconds, 0 = take the URL's (tests). */
    int pool_timeout_ms, connect_timeout_ms, max_idle_ms, max_lifetime_ms;
    /* Auto-pipelining's stall bound (rt_pool_query); 0 = RT_PIPELINE_STALL_MS. */
    int pipeline_stall_ms;
};

/*
 * The stall bound of auto-pipelining: a statement is queued behind the statement a busy
 * connection is running only while that one has been running for less than this; later
 * statements go to other connections or wait (see rt_pool_query).
 */
#define RT_PIPELINE_STALL_MS 20

/* Fills opts with the defaults above (loop and url still to set). */
void rt_pool_opts_init(struct rt_pool_opts *opts);

/*
 * Creates a pool; no connection is opened yet. Returns 0 and writes *out, or -EINVAL
 * (missing loop/url, bad index) or -ENOMEM / a libuv error. Close with rt_pool_close().
 */
__attribute__((warn_unused_result)) int rt_pool_create(struct rt_pool **out,
                                                       const struct rt_pool_opts *opts);

/*
 * Starts closing: waiters fail with RT_EPOOL_CLOSED, idle and connecting connections are
 * closed, connections in use are closed when they are released. When the last is closed
 * and every handle is gone, cb(arg) runs on the loop and the pool is freed. NULL pool:
 * cb is not called, nothing happens. cb may be NULL.
 */
void rt_pool_close(struct rt_pool *pool, void (*cb)(void *arg), void *arg);

struct rt_pool_link {
    struct rt_pool_link *prev, *next;
};

struct rt_acquire;
/*
 * conn is checked out to the caller (release it with rt_pool_release), or NULL with err
 * set (RT_EPOOL_TIMEOUT, RT_ECONNECT*, RT_EPOOL_CLOSED). err is borrowed for the call.
 */
typedef void (*rt_acquire_cb)(struct rt_acquire *req, struct rt_conn *conn,
                              const struct rt_error *err);

/* An acquire request, owned by the caller (no allocation in the pool). */
struct rt_acquire {
    void *data; /* public: for the caller */
    /* private */
    struct rt_pool_link link;
    struct rt_pool *pool;
    rt_acquire_cb cb;
    const char *label;
    uint64_t start_ms, deadline_ms;
    bool pipe; /* an auto-pipelined statement (struct rt_query) waits, not a holder */
};

/*
 * Fast path: an idle connection, if one is ready: returns 0 and writes *out, else -EAGAIN
 * (nothing else happens). label (route, "job 42") is copied (up to 47 bytes). No
 * allocation, no system call (except one recv(MSG_PEEK) to check a connection that was
 * idle longer than validate_after_ms).
 */
__attribute__((warn_unused_result)) int rt_pool_try_acquire(struct rt_pool *pool, const char *label,
                                                            struct rt_conn **out);

/*
 * Gets a connection: an idle one, else a new one inside the limit and the budget, else
 * waits (FIFO) up to pool_timeout. While the database is unreachable (an attempt failed
 * with a transient error other than 53300), only idle connections are handed out: anything
 * else fails at once with RT_EDB_UNAVAILABLE, and one reconnect loop per pool (one attempt
 * at a time, backoff with jitter from 50 ms to 5 s, at most 500 ms after the last attempt
 * while requests are being refused) finds out when it is back; one log line when the
 * outage begins, one summary every 10 s, one when it ends. cb runs exactly once: before
 * rt_pool_acquire returns when an idle connection was ready, or the acquire was refused
 * (or a new connection could not even be started), else later on the loop. req and label
 * are borrowed until cb. Returns 0, or RT_EPOOL_CLOSED (cb is not called then).
 */
__attribute__((warn_unused_result)) int
rt_pool_acquire(struct rt_pool *pool, struct rt_acquire *req, const char *label, rt_acquire_cb cb);

/*
 * Withdraws a waiting request; its cb is not called. Returns 0, or -ENOENT when it is
 * not waiting (already served or failed).
 */
int rt_pool_acquire_cancel(struct rt_acquire *req);

/*
 * Gives a connection back: idle again when it is idle outside a transaction; rolled back
 * first when in a transaction; closed (budget slot freed) when broken, past its lifetime,
 * still busy with a query, or the pool is closing. Hands it to the first waiter. May run
 * a waiter's callback before it returns.
 */
void rt_pool_release(struct rt_conn *conn);

/* A snapshot of the pool (loop thread). */
struct rt_pool_state {
    int limit, open, connecting, in_use, idle, waiting;
};
void rt_pool_state(const struct rt_pool *pool, struct rt_pool_state *out);

/* The stats block the pool writes (counters, histograms, holders). Borrowed. */
struct shm_worker *rt_pool_stats_block(const struct rt_pool *pool);

/* The pool's name ("primary"). Borrowed. */
const char *rt_pool_name(const struct rt_pool *pool);

/* ---- connections --------------------------------------------------------------------- */

/* The libpq connection (borrowed): for what the API does not cover. Leave it idle (no
 * query in flight, no pipeline) and outside session state in pgbouncer mode. */
PGconn *rt_conn_pg(const struct rt_conn *conn);
struct rt_pool *rt_conn_pool(const struct rt_conn *conn);

/*
 * Names the HTTP request the holder of conn serves (X-Request-Id), for the slow-query log
 * lines of the statements it runs on conn; NULL forgets it. request_id is borrowed until
 * conn is released (a checkout starts without one). Only by the holder.
 */
void rt_conn_set_request_id(struct rt_conn *conn, const char *request_id);

/* ---- async queries (loop thread) ----------------------------------------------------- */

struct rt_query;
/*
 * res: the statement's result (caller frees with PQclear), or NULL with err set. err is
 * borrowed for the call.
 */
typedef void (*rt_query_cb)(struct rt_query *q, PGresult *res, const struct rt_error *err);

/* A query request, owned by the caller. */
struct rt_query {
    void *data;             /* public */
    const char *request_id; /* public, optional: the HTTP request this query serves, named
                               in its slow-query log line; borrowed until cb */
    /* private */
    struct rt_acquire acq;
    struct rt_conn *conn;
    rt_query_cb cb;
    const char *sql;
    int nparams;
    const char *const *values;
    bool own_conn; /* the query acquired conn itself (rt_pool_query) */
    bool pipe;     /* auto-pipelined: conn is shared, the query is one of its slots */
    int attempts;  /* auto-pipelined: retries used (40001, 40P01, connection lost) */
    bool shared;   /* auto-pipelined: other statements were in flight on conn with it */
    bool reprepared;
    int step;
    uint64_t t0_ns;
    PGresult *res;
    struct rt_error err;
    char stmt[24];    /* prepared statement name, "" = unnamed */
    char dealloc[24]; /* evicted statement to deallocate first */
};

/*
 * Runs sql with bound text parameters (values[i] NULL = SQL NULL) on conn, which must be
 * held by the caller and idle. Cached as a named prepared statement unless pgbouncer mode
 * or statement_cache_size 0. sql, values and q are borrowed until cb, which runs on the
 * loop, never before this returns. Returns 0, or RT_EPROTO (busy) / RT_ECONN_LOST (cb is
 * not called then).
 */
__attribute__((warn_unused_result)) int rt_conn_query(struct rt_conn *conn, struct rt_query *q,
                                                      const char *sql, int nparams,
                                                      const char *const *values, rt_query_cb cb);

/*
 * Acquires a connection (label as in rt_pool_acquire), runs the query, releases the
 * connection, then calls cb (acquire errors reach cb too). sql, values and q are borrowed
 * until cb. Returns 0 or RT_EPOOL_CLOSED (cb is not called then).
 *
 * Auto-pipelining (pipeline_depth > 0, DESIGN "Pool": Pipelining): a statement that starts
 * with SELECT, INSERT, UPDATE, DELETE, WITH, VALUES, TABLE or MERGE runs in libpq pipeline
 * mode on a connection that the pool keeps for itself, with its own Sync, so an error stays
 * with its caller and results come back in order. When the pool has no idle connection and
 * is at its limit (or waits for budget), it is queued on a busy pipelining connection with
 * fewer than pipeline_depth statements, whose current statement has run for less than the
 * stall bound (RT_PIPELINE_STALL_MS), whose lifetime is not over, and only when nobody waits
 * ahead of it; else it waits (FIFO, pool_timeout) like an acquire. Statements queued in one
 * loop iteration are sent together at its end. A statement that shared its connection with
 * others and fails with 40001 or 40P01, or whose connection was lost before its result
 * arrived, is run again on its own (up to 3 times, at once, on whichever connection the pool
 * picks): its caller could not have known whose failure it was. Other errors, and transient
 * errors of a statement that ran alone, reach cb (err->transient) for the caller to retry,
 * as without pipelining. Everything else (transaction control, SET, LISTEN, COPY, DDL, ...) and
 * every statement on a held connection (rt_conn_query, threads) is never pipelined.
 */
__attribute__((warn_unused_result)) int rt_pool_query(struct rt_pool *pool, struct rt_query *q,
                                                      const char *label, const char *sql,
                                                      int nparams, const char *const *values,
                                                      rt_query_cb cb);

/*
 * Gives up on q (a deadline of the caller's): when it waits for a connection, it is
 * withdrawn; when it runs, its connection is closed instead of being reused (the server
 * may still be working on it; the budget slot is freed once the server has hung up, as
 * for every closed connection), and a connection it acquired itself goes back. Either way
 * cb runs before this returns, with RT_ECANCELED and why as the message. An auto-pipelined
 * q leaves its queue when not yet sent; when sent, its result is read and dropped so that
 * its neighbours are not disturbed, and its connection is closed only when no neighbour
 * is left waiting on it. Returns 0, or -ENOENT when q is not in flight (cb already ran, or
 * is not called). Loop thread.
 */
int rt_query_cancel(struct rt_query *q, const char *why);

/* One statement of a pipelined batch; res / err are written by the batch. */
struct rt_batch_item {
    const char *sql;
    int nparams;
    const char *const *values;
    PGresult *res;       /* out: result (caller frees with PQclear) or NULL */
    struct rt_error err; /* out: when res is NULL */
};

struct rt_batch;
/* failed: how many items have an error (0 = all went through). */
typedef void (*rt_batch_cb)(struct rt_batch *b, int failed);

#define RT_BATCH_INDEPENDENT 1u /* a sync after every item: one failure does not abort the rest */

struct rt_batch {
    void *data; /* public */
    /* private */
    struct rt_conn *conn;
    struct rt_batch_item *items;
    int n, next, syncs_expected, syncs_seen, failed;
    unsigned flags;
    rt_batch_cb cb;
    uint64_t t0_ns;
};

/*
 * Sends every item in libpq pipeline mode (one round trip), unnamed statements, in one
 * implicit transaction unless RT_BATCH_INDEPENDENT; then cb on the loop. Items, their sql
 * and values and b are borrowed until cb. Returns 0 or RT_EPROTO / RT_ECONN_LOST (cb is
 * not called then).
 */
__attribute__((warn_unused_result)) int rt_conn_batch(struct rt_conn *conn, struct rt_batch *b,
                                                      struct rt_batch_item *items, int n,
                                                      unsigned flags, rt_batch_cb cb);

/* ---- blocking API for handler threads ------------------------------------------------ */

/* Whether sql's first word (after comments and '(') is one an autocommit statement that
 * leaves no session state starts with: SELECT, INSERT, UPDATE, DELETE, WITH, VALUES,
 * TABLE, MERGE. Such a statement may run on any connection of a pool. Any thread. */
bool rt_sql_sessionless(const char *sql);

/* Whether rt_pool_query would auto-pipeline sql on pool (pipeline_depth > 0 and an eligible
 * first word). Reads settings only: any thread. */
bool rt_pool_pipelines(const struct rt_pool *pool, const char *sql);

/*
 * Lends conn (checked out to the caller, no query in flight) to another thread: the loop
 * stops watching its socket and libpq goes to blocking mode; only that thread may use it,
 * with the rt_conn_exec* / rt_tx calls, until rt_conn_return. Returns 0, or RT_EPROTO (conn
 * is busy or not checked out) / RT_ECONN_LOST (conn is still checked out: release it).
 * Loop thread.
 */
__attribute__((warn_unused_result)) int rt_conn_lend(struct rt_conn *conn);
/* Takes a lent connection back (non-blocking, watched again) and releases it. Loop thread,
 * after the borrowing thread is done with it. */
void rt_conn_return(struct rt_conn *conn);

struct rt_blocking;
/* Runs on a threadpool thread with conn checked out to it; use the rt_conn_exec* calls. */
typedef void (*rt_blocking_fn)(struct rt_blocking *req, struct rt_conn *conn);
/* Runs on the loop after conn went back to the pool; err is the acquire error (fn did not
 * run) or NULL. */
typedef void (*rt_blocking_done)(struct rt_blocking *req, const struct rt_error *err);

struct rt_blocking {
    void *data; /* public */
    /* private */
    struct rt_acquire acq;
    uv_work_t work;
    struct rt_conn *conn;
    rt_blocking_fn fn;
    rt_blocking_done done;
};

/*
 * Checks out a connection (label as in rt_pool_acquire), runs fn(req, conn) on a
 * uv_queue_work thread, releases the connection on the loop, then calls done. req is
 * borrowed until done. Returns 0 or RT_EPOOL_CLOSED (done is not called then).
 */
__attribute__((warn_unused_result)) int rt_pool_run_blocking(struct rt_pool *pool,
                                                             struct rt_blocking *req,
                                                             const char *label, rt_blocking_fn fn,
                                                             rt_blocking_done done);

/*
 * Blocking: runs sql with bound parameters (prepared-statement cache as rt_conn_query),
 * slow-logged, counted, classified. Returns 0 and writes *res (caller PQclears; may be
 * NULL when not wanted), or RT_ESQL / RT_ECONN_LOST / RT_EPROTO with *err filled. Only on
 * the thread that holds conn.
 */
__attribute__((warn_unused_result)) int rt_conn_exec_params(struct rt_conn *conn, const char *sql,
                                                            int nparams, const char *const *values,
                                                            PGresult **res, struct rt_error *err);

/* ---- retry --------------------------------------------------------------------------- */

struct rt_retry_policy {
    int max_retries; /* retries after the first attempt; 3 */
    int base_ms;     /* first delay; 1000 */
    double factor;   /* delay n = base_ms * factor^n; 2 */
    double jitter;   /* 0..1: each delay is shortened by up to this fraction, at random; 0 */
};
#define RT_RETRY_DEFAULT ((struct rt_retry_policy){3, 1000, 2.0, 0.0})

/* Whether a SQLSTATE is transient (DESIGN "Pool"): class 08, 40001, 40P01, 53300,
 * 57P01, 57P02, 57P03, 25006. NULL or "" is not. */
bool rt_sqlstate_is_transient(const char *sqlstate);

/* Sets every field of *err (message printf-style, truncated); transient from code and
 * sqlstate. Returns code. */
int rt_error_set(struct rt_error *err, int code, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The delay before retry number attempt (0-based), in ms, per policy. Any thread. */
int rt_retry_delay_ms(const struct rt_retry_policy *p, int attempt);

/*
 * Blocking: calls fn(arg, err) until it returns 0, or fails with an error that is not
 * transient, or max_retries retries are used; sleeps rt_retry_delay_ms between tries.
 * Returns fn's last result (err as fn left it). NULL policy = RT_RETRY_DEFAULT. Threads.
 */
int rt_retry(const struct rt_retry_policy *p, int (*fn)(void *arg, struct rt_error *err), void *arg,
             struct rt_error *err);

/*
 * Blocking transaction: begin_sql (NULL = "BEGIN"; e.g. "BEGIN ISOLATION LEVEL
 * SERIALIZABLE"), fn(conn, arg, err), COMMIT; the whole unit is retried on a transient
 * error (ROLLBACK first; a lost connection is reset) with policy's backoff. fn returns 0
 * or an error with *err filled (rt_conn_exec_params does that). Returns 0, or the last
 * error with *err. NULL policy = RT_RETRY_DEFAULT. Only on the thread that holds conn.
 */
typedef int (*rt_tx_fn)(struct rt_conn *conn, void *arg, struct rt_error *err);
__attribute__((warn_unused_result)) int rt_tx(struct rt_conn *conn, const char *begin_sql,
                                              rt_tx_fn fn, void *arg,
                                              const struct rt_retry_policy *policy,
                                              struct rt_error *err);

#endif
