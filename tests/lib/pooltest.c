/* The pool tests' helpers (pooltest.h). */
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
#include "tests/lib/pooltest.h"

struct rt_dburl *t_url(const char *extra)
{
    char url[2048], err[256];
    const char *base = pgt_db_url();
    struct rt_dburl *u;

    snprintf(url, sizeof url, "%s%s%s", base,
             extra && *extra ? (strchr(base, '?') ? "&" : "?") : "", extra ? extra : "");
    if (rt_dburl_parse(url, &u, err, sizeof err) != 0)
        bail("cannot parse the test URL with '%s': %s", extra ? extra : "", err);
    return u;
}

struct rt_pool *t_pool(uv_loop_t *loop, const struct rt_dburl *u, const struct rt_pool_opts *base)
{
    struct rt_pool_opts o;
    struct rt_pool *p;
    if (base)
        o = *base;
    else
        rt_pool_opts_init(&o);
    o.loop = loop;
    o.url = u;
    int rc = rt_pool_create(&p, &o);
    if (rc != 0)
        bail("rt_pool_create: %d", rc);
    return p;
}

void t_timer_flag(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

bool t_run_until(uv_loop_t *loop, const bool *flag, int timeout_ms)
{
    uv_timer_t t;
    bool expired = false;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, t_timer_flag, (uint64_t)timeout_ms, 0);
    while (!*flag && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag;
}

void t_run_for(uv_loop_t *loop, int ms)
{
    bool never = false;
    (void)t_run_until(loop, &never, ms);
}

/* Order in which acquire callbacks ran (t_acq.order). */
static int t_acq_seq;

void t_acq_cb(struct rt_acquire *req, struct rt_conn *conn, const struct rt_error *err)
{
    struct t_acq *a = req->data;
    a->done = true;
    a->order = ++t_acq_seq;
    a->conn = conn;
    a->t_ms = (uint64_t)pgt_now_ms();
    if (err)
        a->err = *err;
    else
        memset(&a->err, 0, sizeof a->err);
}

void t_acquire_start(struct rt_pool *p, struct t_acq *a, const char *label)
{
    memset(a, 0, sizeof *a);
    a->req.data = a;
    if (rt_pool_acquire(p, &a->req, label, t_acq_cb) != 0)
        bail("rt_pool_acquire refused");
}

struct rt_conn *t_acquire(uv_loop_t *loop, struct rt_pool *p, struct t_acq *a, const char *label,
                          int timeout_ms)
{
    t_acquire_start(p, a, label);
    if (!t_run_until(loop, &a->done, timeout_ms))
        bail("acquire did not finish within %d ms", timeout_ms);
    return a->conn;
}

void t_q_cb(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct t_q *t = q->data;
    t->done = true;
    t->res = res;
    if (err)
        t->err = *err;
    else
        memset(&t->err, 0, sizeof t->err);
}

PGresult *t_conn_query(uv_loop_t *loop, struct rt_conn *c, struct t_q *t, const char *sql, int n,
                       const char *const *vals)
{
    memset(t, 0, sizeof *t);
    t->q.data = t;
    int rc = rt_conn_query(c, &t->q, sql, n, vals, t_q_cb);
    if (rc != 0) {
        t->err = t->q.err;
        t->err.code = rc;
        return NULL;
    }
    if (!t_run_until(loop, &t->done, 10000))
        bail("query did not finish: %s", sql);
    return t->res;
}

PGresult *t_pool_query(uv_loop_t *loop, struct rt_pool *p, struct t_q *t, const char *label,
                       const char *sql, int n, const char *const *vals)
{
    memset(t, 0, sizeof *t);
    t->q.data = t;
    if (rt_pool_query(p, &t->q, label, sql, n, vals, t_q_cb) != 0)
        bail("rt_pool_query refused");
    if (!t_run_until(loop, &t->done, 15000))
        bail("pool query did not finish: %s", sql);
    return t->res;
}

long long t_ll(PGresult *res)
{
    long long v = -1;
    if (res && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        v = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

void t_closed_cb(void *arg)
{
    *(bool *)arg = true;
}

bool t_pool_close(uv_loop_t *loop, struct rt_pool *p)
{
    bool closed = false;
    rt_pool_close(p, t_closed_cb, &closed);
    return t_run_until(loop, &closed, 10000);
}

long long t_counter(struct rt_pool *p, size_t offset)
{
    const _Atomic uint64_t *c =
        (const _Atomic uint64_t *)((const char *)&rt_pool_stats_block(p)->counters + offset);
    return (long long)atomic_load(c);
}

/* While capturing: the real stderr, and the read end of the pipe that replaced it. */
static int t_saved_stderr = -1, t_cap_fd = -1;

void t_capture_begin(void)
{
    int fds[2];
    if (pipe(fds) < 0)
        bail("pipe");
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);
    t_saved_stderr = dup(2);
    dup2(fds[1], 2);
    close(fds[1]);
    t_cap_fd = fds[0];
}

json_t *t_capture_end(const char *msg)
{
    static char buf[1 << 20];
    size_t len = 0;
    ssize_t n;
    json_t *out = json_array();

    dup2(t_saved_stderr, 2);
    close(t_saved_stderr);
    while (len < sizeof buf - 1 && (n = read(t_cap_fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = 0;
    close(t_cap_fd);
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) {
            diag("not JSON: %s", line);
            continue;
        }
        const char *m = json_string_value(json_object_get(j, "msg"));
        if (!msg || (m && !strcmp(m, msg)))
            json_array_append(out, j);
        json_decref(j);
    }
    return out;
}
