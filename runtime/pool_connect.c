/*
 * Opening and closing pooled connections: a budget slot first, then PQconnectStartParams
 * and PQconnectPoll driven by a uv_poll on the socket, bounded by connect_timeout with the
 * pool's connect timer (which also bounds the server-limits query of a verifying
 * connection); the socket poll's lifetime; PQfinish and the slot's release.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool_int.h"
#include "rt_log.h"

static void conn_poll_cb(uv_poll_t *h, int status, int events);

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

/* Server notices (and the goodbye of a terminated backend) go to the debug log, never to
 * stderr where they would break the JSON log lines. Any thread. */
static void conn_notice(void *arg, const PGresult *res)
{
    const struct rt_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    rt_log(RT_LOG_DEBUG, "Server notice",
           json_pack("{s:s,s:s,s:s}", "pool", c->pool->name, "severity", sev ? sev : "", "notice",
                     msg ? msg : ""));
}

static void conn_poll_closed(uv_handle_t *h)
{
    struct rt_conn_poll *w = h->data;
    struct rt_pool *p = w->pool;
    free(w);
    rt__pool_handle_closed(p);
}

void rt__conn_unwatch(struct rt_conn *c)
{
    if (!c->poll)
        return;
    c->poll->conn = NULL;
    uv_close((uv_handle_t *)&c->poll->handle, conn_poll_closed);
    c->poll = NULL;
    c->poll_fd = -1;
    c->poll_events = 0;
}

int rt__conn_watch(struct rt_conn *c, int events)
{
    int fd = PQsocket(c->pg);
    int rc;

    if (fd < 0)
        return UV_EBADF;
    if (c->poll && c->poll_fd != fd)
        rt__conn_unwatch(c);
    if (!c->poll) {
        struct rt_conn_poll *w = malloc(sizeof *w);
        if (!w)
            return UV_ENOMEM;
        rc = uv_poll_init(c->pool->loop, &w->handle, fd);
        if (rc < 0) {
            free(w);
            return rc;
        }
        w->handle.data = w;
        w->conn = c;
        w->pool = c->pool;
        c->pool->handles++;
        c->poll = w;
        c->poll_fd = fd;
        c->poll_events = 0;
    }
    if (events != c->poll_events) {
        rc = uv_poll_start(&c->poll->handle, events, conn_poll_cb);
        if (rc < 0)
            return rc;
        c->poll_events = events;
    }
    return 0;
}

/*
 * A closed connection's budget slot, kept until the server has hung up. PQfinish sends
 * Terminate and closes the socket at once, but the server process lives on a little
 * while it exits, and it still counts against max_connections. Freeing the slot then would
 * let another worker open connection B+1 while backend B is still there (measured: one
 * over B in pg_stat_activity under churn). So we keep a duplicate of the socket and free
 * the slot on the server's EOF, or after LINGER_MAX_MS.
 */
#define LINGER_MAX_MS 2000

struct conn_linger {
    uv_poll_t poll;
    uv_timer_t timer;
    struct rt_pool *pool;
    int fd;
    int slot;
    int handles_open;
    bool ended;
};

static void linger_handle_closed(uv_handle_t *h)
{
    struct conn_linger *l = h->data;
    struct rt_pool *p = l->pool;
    if (--l->handles_open == 0)
        free(l);
    rt__pool_handle_closed(p); /* may free the pool: last */
}

static void linger_end(struct conn_linger *l)
{
    struct rt_pool *p = l->pool;
    if (l->ended)
        return;
    l->ended = true;
    uv_close((uv_handle_t *)&l->poll, linger_handle_closed); /* stops watching l->fd now */
    close(l->fd);
    if (shm_budget_release(p->seg, l->slot, p->token) < 0)
        rt_logf(RT_LOG_WARN, "pool %s: budget slot %d was no longer ours", p->name, l->slot);
    uv_close((uv_handle_t *)&l->timer, linger_handle_closed);
}

static void linger_poll_cb(uv_poll_t *h, int status, int events)
{
    struct conn_linger *l = h->data;
    char buf[256];
    ssize_t n;

    while ((n = read(l->fd, buf, sizeof buf)) > 0)
        ; /* nothing more is expected after Terminate; discard it */
    if (status < 0 || n == 0 || (errno != EAGAIN && errno != EINTR))
        linger_end(l);
}

static void linger_timer_cb(uv_timer_t *t)
{
    linger_end(t->data);
}

/* Takes ownership of fd; frees slot when the server closes fd. Returns 0 or a libuv error
 * (then the caller still owns fd and the slot). */
static int linger_start(struct rt_pool *p, int fd, int slot)
{
    struct conn_linger *l = calloc(1, sizeof *l);
    if (!l)
        return UV_ENOMEM;
    if (uv_poll_init(p->loop, &l->poll, fd) < 0) {
        free(l);
        return UV_EBADF;
    }
    l->pool = p;
    l->fd = fd;
    l->slot = slot;
    l->poll.data = l;
    uv_timer_init(p->loop, &l->timer);
    l->timer.data = l;
    l->handles_open = 2;
    p->handles += 2;
    uv_poll_start(&l->poll, UV_READABLE | UV_DISCONNECT, linger_poll_cb);
    uv_timer_start(&l->timer, linger_timer_cb, LINGER_MAX_MS, 0);
    return 0;
}

void rt__conn_destroy(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;
    int keep = -1;

    /* The poll goes first: libuv must stop watching the socket before PQfinish closes it. */
    rt__conn_unwatch(c);
    if (c->pg && c->slot >= 0 && PQstatus(c->pg) == CONNECTION_OK && PQsocket(c->pg) >= 0)
        keep = fcntl(PQsocket(c->pg), F_DUPFD_CLOEXEC, 0);
    if (c->pg)
        PQfinish(c->pg);
    if (c->slot >= 0 && (keep < 0 || linger_start(p, keep, c->slot) < 0)) {
        if (keep >= 0)
            close(keep);
        if (shm_budget_release(p->seg, c->slot, p->token) < 0)
            rt_logf(RT_LOG_WARN, "pool %s: budget slot %d was no longer ours", p->name, c->slot);
    }
    if (c->holder >= 0)
        atomic_store_explicit(&p->stats->holders[c->holder].since_us, 0, memory_order_relaxed);
    conn_holder_put(c->holder);
    rt__stmt_free(&c->stmts);
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
    struct rt_conn *c = NULL;
    int slot = -1;

    if (p->seg) {
        slot = shm_budget_reserve(p->seg, p->token);
        if (slot < 0)
            return -EAGAIN;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        if (slot >= 0)
            (void)shm_budget_release(p->seg, slot, p->token);
        return rt_error_set(err, -ENOMEM, NULL, "out of memory opening a connection");
    }
    c->pool = p;
    c->slot = slot;
    c->verify = p->seg && p->verify;
    c->poll_fd = -1;
    c->holder = conn_holder_take();
    c->label = c->holder >= 0 ? p->stats->holders[c->holder].label : c->own_label;
    rt__list_init(&c->state_link);
    rt__stmt_init(&c->stmts, p->stmt_cache_size);

    c->pg = PQconnectStartParams(p->url->keywords, p->url->values, 0);
    if (!c->pg) {
        rt_error_set(err, -ENOMEM, NULL, "out of memory opening a connection");
        goto fail;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        rt__connect_error(err, c->pg);
        goto fail;
    }
    PQsetErrorVerbosity(c->pg, PQERRORS_VERBOSE); /* the SQLSTATE of a refusal */
    PQsetNoticeReceiver(c->pg, conn_notice, c);
    /* As if PQconnectPoll had said PGRES_POLLING_WRITING (libpq's documentation). */
    int rc = rt__conn_watch(c, UV_WRITABLE);
    if (rc < 0) {
        rt_error_set(err, RT_ECONNECT, "08001", "cannot watch the connection's socket: %s",
                     uv_strerror(rc));
        goto fail;
    }

    /* The loop's clock is the start of this iteration; a slow iteration before us would
     * otherwise cut connect_timeout short (seen: 956 ms of a 1 s timeout under load). */
    uv_update_time(p->loop);
    uint64_t now = uv_now(p->loop);
    c->state = RT_CONN_CONNECTING;
    c->created_ms = now;
    c->connect_deadline_ms = now + p->connect_timeout_ms;
    rt__list_insert_tail(&p->all, &c->all_link);
    rt__list_insert_tail(&p->connecting, &c->state_link);
    p->nopen++;
    p->nconnecting++;
    /* Same timeout for all: the head of connecting has the earliest deadline. */
    if (p->nconnecting == 1 && p->connect_timeout_ms)
        uv_timer_start(&p->connect_timer, rt__connect_timer_cb, p->connect_timeout_ms, 0);
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
    int rc = rt__conn_watch(c, UV_READABLE);

    if (rc < 0) {
        rt_error_set(&err, RT_ECONNECT, "08001", "cannot watch the connection's socket: %s",
                     uv_strerror(rc));
        rt__pool_conn_failed(c, &err);
        return;
    }
    uv_unref((uv_handle_t *)&c->poll->handle); /* idle or held without a query */
    rt__pool_conn_ready(c);
}

/* The connection is up: normal error messages, non-blocking sends; the server's limits
 * first when it verifies them, else ready. */
static void conn_connected(struct rt_conn *c)
{
    struct rt_error err;
    int rc;

    PQsetErrorVerbosity(c->pg, PQERRORS_DEFAULT);
    if (PQsetnonblocking(c->pg, 1) != 0) {
        rt_error_set(&err, RT_ECONNECT, "08001", "cannot make the connection non-blocking");
        rt__pool_conn_failed(c, &err);
        return;
    }
    if (!c->verify) {
        conn_ready(c);
        return;
    }
    if (!PQsendQuery(c->pg, conn_limits_sql) || (rc = PQflush(c->pg)) < 0) {
        rt__connect_error(&err, c->pg);
        rt__pool_conn_failed(c, &err);
        return;
    }
    c->checking = true;
    rc = rt__conn_watch(c, rc > 0 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
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
        int f = PQflush(c->pg);
        if (f < 0 || (f == 0 && rt__conn_watch(c, UV_READABLE) < 0))
            goto lost;
    }
    if (!PQconsumeInput(c->pg))
        goto lost;
    while (!PQisBusy(c->pg)) {
        r = PQgetResult(c->pg);
        if (!r) {
            c->checking = false;
            c->verify = false;
            if (PQstatus(c->pg) != CONNECTION_OK)
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
    conn_first_line(msg, sizeof msg, PQerrorMessage(c->pg));
    rt_error_set(&err, RT_ECONNECT, "08006", "connection lost after connecting: %s",
                 msg[0] ? msg : "no answer");
    rt__pool_conn_failed(c, &err);
}

/* One step of PQconnectPoll. */
static void conn_connect_step(struct rt_conn *c)
{
    struct rt_error err;
    int rc = 0;

    /*
     * Stop watching before libpq may close the socket (it moves on to the next host or
     * address): libuv must never watch a closed descriptor whose number gets reused.
     */
    uv_poll_stop(&c->poll->handle);
    c->poll_events = 0;
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        rc = rt__conn_watch(c, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        rc = rt__conn_watch(c, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        conn_connected(c);
        return;
    default: /* PGRES_POLLING_FAILED */
        rt__connect_error(&err, c->pg);
        rt__pool_conn_failed(c, &err);
        return;
    }
    if (rc < 0) {
        rt_error_set(&err, RT_ECONNECT, "08001", "cannot watch the connection's socket: %s",
                     uv_strerror(rc));
        rt__pool_conn_failed(c, &err);
    }
}

static void conn_poll_cb(uv_poll_t *h, int status, int events)
{
    struct rt_conn_poll *w = h->data;
    struct rt_conn *c = w->conn;

    if (!c)
        return;
    if (c->state == RT_CONN_CONNECTING && c->checking)
        conn_check_step(c, status, events);
    else if (c->state == RT_CONN_CONNECTING)
        conn_connect_step(c);
    else
        rt__query_on_socket(c, status, events);
}

void rt__connect_timer_cb(uv_timer_t *t)
{
    struct rt_pool *p = t->data;
    uint64_t now = uv_now(p->loop);
    struct rt_error err;

    while (!rt__list_empty(&p->connecting)) {
        struct rt_conn *c = RT__CONTAINER(p->connecting.next, struct rt_conn, state_link);
        if (c->connect_deadline_ms > now) {
            uv_timer_start(&p->connect_timer, rt__connect_timer_cb, c->connect_deadline_ms - now,
                           0);
            return;
        }
        const char *host = PQhost(c->pg), *port = PQport(c->pg);
        rt_error_set(&err, RT_ECONNECT_TIMEOUT, NULL,
                     "connect timeout after %" PRIu64 " ms (%s, host %s, port %s)",
                     p->connect_timeout_ms, p->name, host && *host ? host : "?",
                     port && *port ? port : "?");
        rt__pool_conn_failed(c, &err);
    }
}
