/*
 * Internals shared by the pool's files (pool.c, pool_connect.c, query.c, query_sync.c,
 * stmt_cache.c, retry.c, slowlog.c). Not part of the runtime's API. Names are rt__ (two
 * underscores): internal to runtime/.
 *
 *   struct rt_pool
 *     all:        every connection (connecting, idle, in use, rolling back, on a thread)
 *     idle:       idle connections, newest first (LIFO; reaping walks from the tail)
 *     connecting: connections being opened, oldest first (each with its own deadline)
 *     waiters:    struct rt_acquire, oldest first (one timer: the head's deadline)
 *
 * A connection is an rt_pgconn (rt_pgconn.h): it owns one budget slot (seg) from before
 * PQconnectStartParams until the server has hung up after PQfinish, and a watch on its
 * socket (closed before the socket is, re-created when libpq changes sockets).
 *
 * Outage (p->down): an attempt failed because the server cannot be reached. Waiters fail,
 * later acquires that no idle connection serves fail at once, and only reconnect_timer
 * opens connections: one probe at a time, with backoff. The probe that connects ends the
 * outage. Verification (p->verify): after an outage or a connection the server dropped
 * (a restart, perhaps with other limits), the next connection reads the server's
 * connection limits before it is used (state CONNECTING, c->checking) and fits the global
 * budget to them; until then the pool opens one connection at a time.
 */
#ifndef PGCORRAL_POOL_INT_H
#define PGCORRAL_POOL_INT_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rt_pgconn.h"
#include "rt_pool.h"
#include "rt_util.h"
#include "shm/shm.h"

#define RT__POOL_NAME_LEN 16

/* ---- intrusive lists (entries found with rt_container_of) ------------------------------ */

static inline void rt__list_init(struct rt_pool_link *l)
{
    l->prev = l->next = l;
}

static inline bool rt__list_empty(const struct rt_pool_link *l)
{
    return l->next == l;
}

static inline void rt__list_insert_head(struct rt_pool_link *l, struct rt_pool_link *n)
{
    n->next = l->next;
    n->prev = l;
    l->next->prev = n;
    l->next = n;
}

static inline void rt__list_insert_tail(struct rt_pool_link *l, struct rt_pool_link *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}

/* Unlinks n and leaves it pointing to itself (so a second remove is harmless). */
static inline void rt__list_remove(struct rt_pool_link *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* ---- statement cache ----------------------------------------------------------------- */

/* One prepared statement of a connection; the server knows it by name. */
struct rt_stmt_entry {
    uint64_t hash;
    char *sql; /* owned copy */
    char name[24];
    int lru_prev, lru_next; /* -1 ends */
    int hnext;              /* hash chain, -1 ends */
    bool used;
};

/*
 * Per-connection LRU of prepared statements: at most cap entries, a chained hash on the
 * SQL's 64-bit FNV-1a hash, most recently used at lru_head.
 */
struct rt_stmt_cache {
    int cap, n;
    struct rt_stmt_entry *e; /* cap entries, allocated on first use */
    int *buckets;            /* nbuckets heads, -1 = empty */
    int nbuckets;
    int lru_head, lru_tail;
};

/* Outcome of rt__stmt_lookup(). */
enum rt_stmt_lookup {
    RT_STMT_UNNAMED = 0, /* do not cache (disabled, hash clash): run as an unnamed statement */
    RT_STMT_HIT,         /* prepared already: execute name */
    RT_STMT_MISS,        /* inserted: prepare name first (after deallocating evicted, if set) */
};

void rt__stmt_init(struct rt_stmt_cache *sc, int cap);
void rt__stmt_free(struct rt_stmt_cache *sc);
/* Empties the cache (the server forgot the statements: reconnect, DISCARD). */
void rt__stmt_clear(struct rt_stmt_cache *sc);
/*
 * Looks sql up. On a hit or miss writes the statement name to name (24 bytes); on a miss
 * that evicted an entry also writes its name to evicted (24 bytes), else evicted[0] = 0.
 */
enum rt_stmt_lookup rt__stmt_lookup(struct rt_stmt_cache *sc, const char *sql, char *name,
                                    char *evicted);
/* Forgets sql (its PREPARE failed, or the server lost it). */
void rt__stmt_forget(struct rt_stmt_cache *sc, const char *sql);

/* ---- slow-query log ------------------------------------------------------------------ */

struct rt_slowlog {
    int threshold_ms; /* < 0: off */
    int max_len;
    bool redact;
    struct shm_segment *seg;  /* ring, or NULL */
    struct shm_worker *stats; /* slow_queries counter, role for the ring */
    char pool_name[RT__POOL_NAME_LEN];
};

/* Logs sql if duration_us is at or over the threshold, with who ran it (caller: the
 * holder's label; request_id: the HTTP request it served, or NULL). Any thread. */
void rt__slowlog_note(const struct rt_slowlog *s, const char *sql, int nparams,
                      const char *const *values, uint64_t duration_us, const char *caller,
                      const char *request_id);

/* ---- connections and the pool -------------------------------------------------------- */

enum rt_conn_state {
    RT_CONN_CONNECTING = 0,
    RT_CONN_IDLE,
    RT_CONN_IN_USE,
    RT_CONN_ROLLBACK, /* released inside a transaction: ROLLBACK in flight */
    RT_CONN_THREAD,   /* checked out to a threadpool thread; the loop does not touch it */
};

/* What the connection's socket callback drives. */
enum rt_conn_op {
    RT_OP_NONE = 0,
    RT_OP_QUERY,    /* c->query */
    RT_OP_BATCH,    /* c->batch */
    RT_OP_ROLLBACK, /* the pool's own ROLLBACK */
    RT_OP_PIPE,     /* auto-pipelined statements: c->pipe (pipeline.c) */
};

/* One auto-pipelined statement of a connection. q NULL: its caller gave up (the result
 * is read and dropped). */
struct rt__pipe_slot {
    struct rt_query *q;
    int syncs_left; /* Syncs still to read; > 1 while a DEALLOCATE of its own goes first */
    bool prep;      /* the next result is its PREPARE's */
};

struct rt_conn {
    struct rt_pool *pool;
    struct rt_pgconn pc;            /* the libpq connection, its socket watch, its slot */
    struct rt_pool_link all_link;   /* pool->all */
    struct rt_pool_link state_link; /* pool->idle or pool->connecting */
    enum rt_conn_state state;
    enum rt_conn_op op;
    struct rt_query *query;
    struct rt_batch *batch;
    int holder;             /* index in stats->holders, -1 = untracked */
    char *label;            /* stats->holders[holder].label, or own_label */
    const char *request_id; /* the holder's request (rt_conn_set_request_id), or NULL */
    bool broken;            /* the socket callback saw it fail while in use */
    bool leak_warned;
    bool probe;    /* opened by the outage's reconnect loop */
    bool verify;   /* reads the server's limits once connected, before it is used */
    bool checking; /* that query is in flight (still CONNECTING) */
    uint64_t created_ms, expires_ms, idle_since_ms, checkout_ms;
    /*
     * Auto-pipelining (op RT_OP_PIPE): a ring of pipe_cap slots from pipe_head; the first
     * pipe_sent were sent, the rest pipe_n - pipe_sent wait for the end of the loop
     * iteration (pool->dirty). pipe_head_ns: since when the first slot is the one the
     * server works on (the stall bound is measured from there).
     */
    struct rt__pipe_slot *pipe;
    int pipe_cap, pipe_head, pipe_n, pipe_sent;
    bool pipe_driving; /* rt__pipe_drive runs callbacks: teardown is left to it */
    uint64_t pipe_head_ns;
    struct rt_pool_link pipe_link;  /* pool->pipes while op is RT_OP_PIPE */
    struct rt_pool_link dirty_link; /* pool->dirty while slots wait to be sent */
    struct rt_stmt_cache stmts;
    char own_label[SHM_LABEL_LEN];
};

struct rt_pool {
    uv_loop_t *loop;
    const struct rt_dburl *url;
    char name[RT__POOL_NAME_LEN];
    struct shm_segment *seg;
    int worker_index;
    uint32_t token;
    struct shm_worker *stats;
    struct shm_worker *own_stats; /* allocated when no block was given */

    int limit;
    uint64_t pool_timeout_ms; /* 0 = forever */
    uint64_t connect_timeout_ms, max_idle_ms, max_lifetime_ms, leak_ms, validate_ms;
    int stmt_cache_size;
    bool pgbouncer;
    struct rt_slowlog slow;

    struct rt_pool_link all, idle, connecting, waiters;
    int nopen; /* connections in all, connecting included */
    int nconnecting, nidle, nwaiting;

    uv_timer_t wait_timer; /* head waiter's deadline */
    uv_timer_t reaper;     /* idle reaping, lifetime, leaks, budget shedding */
    uv_poll_t wake_poll;   /* seg->workers[index].wake_fd while waiting for budget */
    bool budget_waiting;
    bool wake_poll_inited;

    int handles; /* open libuv handles (pool's and connections' polls) */
    bool closing;
    bool handles_closing; /* the pool's own handles are closing: the last one frees it */
    void (*close_cb)(void *arg);
    void *close_arg;

    /* Outage (see the top). down_flag mirrors down for handler threads (relaxed). */
    bool down;
    _Atomic bool down_flag;
    bool probing; /* the probe connection is being opened */
    bool verify;  /* the next connection reads the server's limits first */
    uint64_t down_since_ms, down_summary_ms; /* outage start, last summary line */
    uint64_t last_attempt_ms, next_attempt_ms;
    uint64_t down_refused, down_attempts; /* in this outage */
    uint64_t backoff_ms;                  /* the next delay before jitter */
    struct rt_error down_err;             /* the last failed attempt's */
    uv_timer_t reconnect_timer;

    /* Auto-pipelining (pipeline.c): pipes = connections in pipeline mode, dirty = those
     * with slots to send; flush_check sends them at the end of the loop iteration and
     * flush_prepare before the loop would block, whichever comes first. */
    int pipe_depth; /* 0 = off */
    uint64_t pipe_stall_ns;
    int npipes, npipe_slots;
    struct rt_pool_link pipes, dirty;
    uv_check_t flush_check;
    uv_prepare_t flush_prepare;
    bool flush_armed;

    uint64_t rng;            /* xorshift64 state: lifetime and backoff jitter */
    uint64_t real_offset_us; /* CLOCK_REALTIME us = uv_now() * 1000 + this */
};

/* pool.c */
/* rt_pool_acquire; pipe: req is an eligible statement's (rt_query.acq), which pipelines
 * with room may take from the wait queue (pipeline.c). */
int rt__pool_acquire(struct rt_pool *p, struct rt_acquire *req, const char *label, rt_acquire_cb cb,
                     bool pipe);
/* A handle of the pool or of one of its connections finished closing. */
void rt__pool_handle_closed(struct rt_pool *p);
void rt__pool_gauges(struct rt_pool *p);
/* A connection finished connecting (c->state CONNECTING, ok) or failed (err set). */
void rt__pool_conn_ready(struct rt_conn *c);
void rt__pool_conn_failed(struct rt_conn *c, const struct rt_error *err);
/* Starts new connections for waiters as limit and budget allow. */
void rt__pool_pump(struct rt_pool *p);
/* The ROLLBACK of a released connection ended. */
void rt__pool_rollback_done(struct rt_conn *c, bool ok);
/* The socket callback saw an idle or held connection break. */
void rt__pool_conn_broke(struct rt_conn *c);
/* Writes "primary: limit 10, in use 10, idle 0, waiting 3; holders: ..." into buf. */
void rt__pool_describe(const struct rt_pool *p, char *buf, size_t size);
/* A verifying connection read the server's limits: fits the budget, logs a change once. */
void rt__pool_server_limits(struct rt_pool *p, int max_connections, int superuser_reserved,
                            int reserved);

/* pool_connect.c */
/* Reserves a budget slot and starts a connection (*out, when out is not NULL). Returns 0,
 * -EAGAIN (no budget slot), or an error with *err filled. */
int rt__conn_open(struct rt_pool *p, struct rt_error *err, struct rt_conn **out);
/* Closes the connection (rt_pgconn_close: its slot is freed once the server has hung up)
 * and frees c. Unlinks nothing. */
void rt__conn_destroy(struct rt_conn *c);
/* Fills err from a failed connection attempt (SQLSTATE parsed from verbose messages). */
void rt__connect_error(struct rt_error *err, PGconn *pg);

/* query.c: the socket callback of a connection that is not connecting. */
void rt__query_on_socket(struct rt_conn *c, int status, int events);
/* Starts the ROLLBACK of a released connection. Returns 0 or RT_ECONN_LOST. */
int rt__query_start_rollback(struct rt_conn *c);

/* pipeline.c */
/* Initialises the pool's pipelining state and its two handles (counted in p->handles). */
void rt__pipe_init(struct rt_pool *p);
/* Closes those handles (pool closing, no connection left). */
void rt__pipe_close(struct rt_pool *p, uv_close_cb cb);
/* Whether sql may be auto-pipelined (rt_pool_query's list of first words). */
bool rt__pipe_eligible(const struct rt_pool *p, const char *sql);
/* rt_pool_query of an eligible statement. Returns 0 or RT_EPOOL_CLOSED. */
int rt__pipe_submit(struct rt_pool *p, struct rt_query *q);
/* An acquire of an eligible statement got c (checked out): c starts pipelining. */
void rt__pipe_start(struct rt_conn *c, struct rt_query *q);
/* The socket callback for op RT_OP_PIPE. */
void rt__pipe_drive(struct rt_conn *c);
/* rt_query_cancel of a pipelined statement. Returns 0 or -ENOENT. */
int rt__pipe_cancel(struct rt_query *q, const char *why);
/* Frees c's slot ring (connection destroyed). */
void rt__pipe_conn_free(struct rt_conn *c);

/* retry.c */
/* Sleeps ms milliseconds (handler threads). */
void rt__retry_sleep_ms(int ms);
/* Fills err from a failed result (NULL res: from the connection's error message). */
void rt__error_from_result(struct rt_error *err, const PGresult *res, PGconn *pg);
/* slowlog.c: query stats (counters, histogram, slow log) for one finished statement, or
 * one batch, run on c (its label and request id name the caller in the slow log; request_id
 * NULL = c's). err NULL = it succeeded. Any thread (the one that holds c). */
void rt__pool_note_query(const struct rt_conn *c, const char *sql, int nparams,
                         const char *const *values, uint64_t duration_ns,
                         const struct rt_error *err, const char *request_id);
/* The same for a statement that ran on a connection shared with others (auto-pipelined):
 * caller names it in the slow log. Any thread. */
void rt__pool_note_stmt(struct rt_pool *p, const char *caller, const char *sql, int nparams,
                        const char *const *values, uint64_t duration_ns, const struct rt_error *err,
                        const char *request_id);

#endif
