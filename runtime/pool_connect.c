/*
 * Opening and closing pooled connections on the connection driver (rt_pgconn.h: budget
 * slot, connect polling, connect_timeout, which also bounds the server-limits query of a
 * verifying connection, and the slot held until the server hangs up), and what the pool
 * adds: holder entries and connect errors with their SQLSTATE.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool_int.h"
#include "rt_log.h"

static void conn_on_connect(struct rt_pgconn *pc, int status);
static void conn_on_socket(struct rt_pgconn *pc, int status, int events);

_Static_assert(SHM_MAX_HOLDERS <= 64, "holder bitmap is one uint64_t");

/*
 * Which entries of the stats blocks' holders[] this process's connections use (bit i =
 * holders[i]), so that the pools of one worker (primary, replica) never share one.
 * Atomic because pools may in principle live on several loops of one process.
 */
static _Atomic uint64_t conn_holders_used;

/* Takes a free holders[] entry for a new connection; -1 when all are taken. */
static int conn_holder_take(void)
{
    uint64_t used = atomic_load_explicit(&conn_holders_used, memory_order_relaxed);
    while (~used != 0) {
        int i = __builtin_ctzll(~used);
        if (i >= SHM_MAX_HOLDERS)
            return -1;
        if (atomic_compare_exchange_weak_explicit(&conn_holders_used, &used, used | (1ULL << i),
                                                  memory_order_relaxed, memory_order_relaxed))
            return i;
    }
    return -1;
}

static void conn_holder_put(int i)
{
    if (i >= 0)
        atomic_fetch_and_explicit(&conn_holders_used, ~(1ULL << i), memory_order_relaxed);
}

/* The driver's handles count among the pool's, so that the pool outlives them. */
static void conn_on_handle(void *owner, int delta)
{
    struct rt_pool *p = owner;
    if (delta > 0)
        p->handles++;
    else
        rt__pool_handle_closed(p); /* may free the pool */
}

void rt__conn_destroy(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;

    rt_pgconn_close(&c->pc); /* the slot is freed once the server has hung up */
    if (c->holder >= 0)
        atomic_store_explicit(&p->stats->holders[c->holder].since_us, 0, memory_order_relaxed);
    conn_holder_put(c->holder);
    rt__stmt_free(&c->stmts);
    rt__pipe_conn_free(c);
    free(c);
}

/* Copies the first line of msg into dst (size bytes). */
static void conn_first_line(char *dst, size_t size, const char *msg)
{
    size_t n = strcspn(msg, "\n");
    if (n >= size)
        n = size - 1;
    memcpy(dst, msg, n);
    dst[n] = 0;
}

void rt__connect_error(struct rt_error *err, PGconn *pg)
{
    const char *msg = pg ? PQerrorMessage(pg) : NULL;
    char state[6] = "08001"; /* sqlclient_unable_to_establish_sqlconnection */
    char line[RT_ERROR_MSG_LEN];

    if (!msg || !*msg)
        msg = "could not connect";
    /* Verbose messages carry the server's SQLSTATE: "FATAL:  53300: sorry, too many ..." */
    for (const char *s = strstr(msg, ":  "); s; s = strstr(s + 1, ":  ")) {
        const char *code = s + 3;
        bool ok = strlen(code) > 6 && code[5] == ':';
        for (int i = 0; ok && i < 5; i++)
            ok = (code[i] >= '0' && code[i] <= '9') || (code[i] >= 'A' && code[i] <= 'Z');
        if (ok) {
            memcpy(state, code, 5);
            break;
        }
    }
    conn_first_line(line, sizeof line, msg);
    /* "FATAL:  53300: sorry, ..." reads better without the code, which err keeps. */
    char *code = strstr(line, state);
    if (code && code - line >= 3 && memcmp(code - 3, ":  ", 3) == 0 && code[5] == ':' &&
        code[6] == ' ')
        memmove(code, code + 7, strlen(code + 7) + 1);
    rt_error_set(err, RT_ECONNECT, state, "%s", line);
}

int rt__conn_open(struct rt_pool *p, struct rt_error *err, struct rt_conn **out)
{
    struct rt_conn *c = calloc(1, sizeof *c);
    int rc;

    if (!c)
        return rt_error_set(err, -ENOMEM, NULL, "out of memory opening a connection");
    c->pool = p;
    c->verify = p->seg && p->verify;
    c->holder = conn_holder_take();
    c->label = c->holder >= 0 ? p->stats->holders[c->holder].label : c->own_label;
    rt__list_init(&c->state_link);
    rt__stmt_init(&c->stmts, p->stmt_cache_size);
    rt__list_init(&c->pipe_link);
    rt__list_init(&c->dirty_link);
    rt_pgconn_init(&c->pc);
    c->pc.loop = p->loop;
    c->pc.seg = p->seg;
    c->pc.token = p->token;
    c->pc.name = p->name;
    c->pc.owner = p;
    c->pc.on_connect = conn_on_connect;
    c->pc.on_socket = conn_on_socket;
    c->pc.on_handle = conn_on_handle;

    rc = rt_pgconn_connect(&c->pc, p->url, p->connect_timeout_ms);
    if (rc == -EAGAIN) {
        rt__conn_destroy(c);
        return -EAGAIN; /* no budget slot */
    }
    if (rc == -ENOMEM) {
        rt_error_set(err, -ENOMEM, NULL, "out of memory opening a connection");
        goto fail;
    }
    if (rc == RT_ECONNECT) {
        rt__connect_error(err, c->pc.pg);
        goto fail;
    }
    if (rc < 0) {
        rt_error_set(err, RT_ECONNECT, "08001", "cannot watch the connection's socket: %s",
                     uv_strerror(rc));
        goto fail;
    }
    /* Before the first PQconnectPoll, which runs from the loop. */
    PQsetErrorVerbosity(c->pc.pg, PQERRORS_VERBOSE); /* the SQLSTATE of a refusal */

    uint64_t now = uv_now(p->loop); /* rt_pgconn_connect updated the loop's clock */
    c->state = RT_CONN_CONNECTING;
    c->created_ms = now;
    rt__list_insert_tail(&p->all, &c->all_link);
    rt__list_insert_tail(&p->connecting, &c->state_link);
    p->nopen++;
    p->nconnecting++;
    rt__pool_gauges(p);
    if (out)
        *out = c;
    return 0;

fail:
    rt__conn_destroy(c); /* frees the slot too */
    return err->code;
}

/*
 * The server's connection limits. reserved_connections exists from PostgreSQL 16 on;
 * current_setting(name, true) is NULL before that.
 */
static const char conn_limits_sql[] =
    "SELECT current_setting('max_connections')::int,"
    " current_setting('superuser_reserved_connections')::int,"
    " coalesce(current_setting('reserved_connections', true)::int, 0)";

/* Ready for use: the idle socket watch, then the pool takes it. */
static void conn_ready(struct rt_conn *c)
{
    struct rt_error err;
    int rc = rt_pgconn_watch(&c->pc, UV_READABLE);

    if (rc < 0) {
        rt_error_set(&err, RT_ECONNECT, "08001", "cannot watch the connection's socket: %s",
                     uv_strerror(rc));
        rt__pool_conn_failed(c, &err);
        return;
    }
    rt_pgconn_ref(&c->pc, false); /* idle or held without a query */
    rt_pgconn_ready(&c->pc);      /* the connect deadline is over */
    rt__pool_conn_ready(c);
}

/* The connection is up (non-blocking): normal error messages; the server's limits
 * first when it verifies them, else ready. */
static void conn_connected(struct rt_conn *c)
{
    struct rt_error err;
    int rc;

    PQsetErrorVerbosity(c->pc.pg, PQERRORS_DEFAULT);
    if (!c->verify) {
        conn_ready(c);
        return;
    }
    if (!PQsendQuery(c->pc.pg, conn_limits_sql) || (rc = PQflush(c->pc.pg)) < 0) {
        rt__connect_error(&err, c->pc.pg);
        rt__pool_conn_failed(c, &err);
        return;
    }
    c->checking = true;
    rc = rt_pgconn_watch(&c->pc, rc > 0 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
    if (rc < 0) {
        rt_error_set(&err, RT_ECONNECT, "08001", "cannot watch the connection's socket: %s",
                     uv_strerror(rc));
        rt__pool_conn_failed(c, &err);
    }
}

/* The limits query of a verifying connection: sends the rest, reads the answer, fits the
 * budget, then the connection is ready. A server that answers with an error leaves the
 * budget as it was (logged); one that hangs up fails the connection. */
static void conn_check_step(struct rt_conn *c, int status, int events)
{
    struct rt_error err;
    PGresult *r;

    if (status == 0 && (events & UV_WRITABLE)) {
        int f = PQflush(c->pc.pg);
        if (f < 0 || (f == 0 && rt_pgconn_watch(&c->pc, UV_READABLE) < 0))
            goto lost;
    }
    if (!PQconsumeInput(c->pc.pg))
        goto lost;
    while (!PQisBusy(c->pc.pg)) {
        r = PQgetResult(c->pc.pg);
        if (!r) {
            c->checking = false;
            c->verify = false;
            if (PQstatus(c->pc.pg) != CONNECTION_OK)
                goto lost;
            conn_ready(c);
            return;
        }
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 3)
            rt__pool_server_limits(c->pool, atoi(PQgetvalue(r, 0, 0)), atoi(PQgetvalue(r, 0, 1)),
                                   atoi(PQgetvalue(r, 0, 2)));
        else
            rt_log(RT_LOG_WARN, "Cannot read the server's connection limits; budget unchanged",
                   json_pack("{s:s,s:s}", "pool", c->pool->name, "error", PQresultErrorMessage(r)));
        PQclear(r);
    }
    return;

lost:;
    char msg[RT_ERROR_MSG_LEN];
    conn_first_line(msg, sizeof msg, PQerrorMessage(c->pc.pg));
    rt_error_set(&err, RT_ECONNECT, "08006", "connection lost after connecting: %s",
                 msg[0] ? msg : "no answer");
    rt__pool_conn_failed(c, &err);
}

static void conn_on_connect(struct rt_pgconn *pc, int status)
{
    struct rt_conn *c = rt_container_of(pc, struct rt_conn, pc);
    struct rt_pool *p = c->pool;
    struct rt_error err;

    if (status == 0) {
        conn_connected(c);
        return;
    }
    if (status == RT_ECONNECT_TIMEOUT) {
        const char *host = PQhost(pc->pg), *port = PQport(pc->pg);
        rt_error_set(&err, RT_ECONNECT_TIMEOUT, NULL,
                     "connect timeout after %" PRIu64 " ms (%s, host %s, port %s)",
                     p->connect_timeout_ms, p->name, host && *host ? host : "?",
                     port && *port ? port : "?");
    } else if (status == RT_ECONNECT) {
        rt__connect_error(&err, pc->pg);
    } else {
        rt_error_set(&err, RT_ECONNECT, "08001", "cannot watch the connection's socket: %s",
                     uv_strerror(status));
    }
    rt__pool_conn_failed(c, &err);
}

static void conn_on_socket(struct rt_pgconn *pc, int status, int events)
{
    struct rt_conn *c = rt_container_of(pc, struct rt_conn, pc);

    if (c->state == RT_CONN_CONNECTING && c->checking)
        conn_check_step(c, status, events);
    else
        rt__query_on_socket(c, status, events);
}
