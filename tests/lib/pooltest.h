/*
 * Helpers shared by the pool tests (t21x): URLs for the test cluster with extra settings,
 * and running the loop until an acquire or a query finished, with a bounded wait.
 */
#ifndef PGCORRAL_POOLTEST_H
#define PGCORRAL_POOLTEST_H

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "runtime/rt.h"
#include "shm/shm.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

/* The test cluster's URL with extra query parameters ("connection_limit=2"); parsed.
 * Bails out when it does not parse. Caller frees with rt_dburl_destroy. */
struct rt_dburl *t_url(const char *extra);

/* Creates a pool with a few test-friendly defaults; bails out on failure. */
struct rt_pool *t_pool(uv_loop_t *loop, const struct rt_dburl *u, const struct rt_pool_opts *base);

void t_timer_flag(uv_timer_t *t);

/* Runs loop until *flag or timeout_ms. Returns *flag. */
bool t_run_until(uv_loop_t *loop, const bool *flag, int timeout_ms);

/* Runs loop for ms milliseconds. */
void t_run_for(uv_loop_t *loop, int ms);

/* ---- acquire ---- */

struct t_acq {
    struct rt_acquire req;
    bool done;
    int order; /* sequence number of the callback (t_acq_seq) */
    struct rt_conn *conn;
    struct rt_error err;
    uint64_t t_ms;
};

void t_acq_cb(struct rt_acquire *req, struct rt_conn *conn, const struct rt_error *err);

/* Starts an acquire into a (not waiting for it). */
void t_acquire_start(struct rt_pool *p, struct t_acq *a, const char *label);

/* Acquires and waits (bounded); returns the connection or NULL (a->err). */
struct rt_conn *t_acquire(uv_loop_t *loop, struct rt_pool *p, struct t_acq *a, const char *label,
                          int timeout_ms);

/* ---- queries ---- */

struct t_q {
    struct rt_query q;
    bool done;
    PGresult *res;
    struct rt_error err;
};

void t_q_cb(struct rt_query *q, PGresult *res, const struct rt_error *err);

/* Runs sql on a held connection and waits. Returns the result (caller PQclears) or NULL. */
PGresult *t_conn_query(uv_loop_t *loop, struct rt_conn *c, struct t_q *t, const char *sql, int n,
                       const char *const *vals);

/* Runs sql through rt_pool_query (acquire, query, release) and waits. */
PGresult *t_pool_query(uv_loop_t *loop, struct rt_pool *p, struct t_q *t, const char *label,
                       const char *sql, int n, const char *const *vals);

/* The first column of the first row as a number; -1 for no result. Frees res. */
long long t_ll(PGresult *res);

/* rt_pool_close callback: sets the bool at arg. */
void t_closed_cb(void *arg);

/* Closes the pool and waits for it. Returns whether it closed. */
bool t_pool_close(uv_loop_t *loop, struct rt_pool *p);

long long t_counter(struct rt_pool *p, size_t offset);

#define T_COUNTER(p, field) t_counter(p, offsetof(struct shm_counters, field))

/* ---- log capture ---- */

/* Sends stderr into a pipe until capture_end(). */
void t_capture_begin(void);

/* Restores stderr; returns the JSON lines whose msg is msg, or every line when msg is
 * NULL (array, caller decrefs). */
json_t *t_capture_end(const char *msg);

#endif
