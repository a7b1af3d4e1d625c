/*
 * The asynchronous libpq connection driver (rt_pgconn.h): connect polling on a uv_poll,
 * the connect deadline on a uv_timer, the owner's socket watch, and the budget slot of a
 * closed connection held until the server has hung up.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rt_log.h"
#include "rt_pgconn.h"
#include "rt_pool.h"

/* A heap-allocated handle outlives the rt_pgconn that opened it (libuv frees nothing until
 * its close callback): pc is NULL once closing, and the close callback tells the owner. */
struct rt_pgconn_poll {
    uv_poll_t handle;
    struct rt_pgconn *pc; /* NULL once closing */
    void (*on_handle)(void *owner, int delta);
    void *owner;
};

struct rt_pgconn_deadline {
    uv_timer_t handle;
    struct rt_pgconn *pc; /* NULL once closing */
    void (*on_handle)(void *owner, int delta);
    void *owner;
};

/* The longest the slot of a closed connection waits for the server's end of the socket. */
#define LINGER_MAX_MS 2000

/* A closed connection's budget slot, freed on the server's EOF on a duplicate of the
 * socket, or after LINGER_MAX_MS. */
struct pgconn_linger {
    uv_poll_t poll;
    uv_timer_t timer;
    struct shm_segment *seg;
    uint32_t token;
    int slot;
    int fd;
    int handles_open;
    bool ended;
    void (*on_handle)(void *owner, int delta);
    void *owner;
    char name[32];
};

void rt_pgconn_init(struct rt_pgconn *pc)
{
    memset(pc, 0, sizeof *pc);
    pc->slot = -1;
    pc->poll_fd = -1;
}

/* ---- budget slot --------------------------------------------------------------------- */

static void slot_release(struct shm_segment *seg, int slot, uint32_t token, const char *name)
{
    if (shm_budget_release(seg, slot, token) < 0)
        rt_logf(RT_LOG_WARN, "%s: budget slot %d was no longer ours", name, slot);
}

static void linger_closed(uv_handle_t *h)
{
    struct pgconn_linger *l = h->data;
    void (*on_handle)(void *, int) = l->on_handle;
    void *owner = l->owner;

    if (--l->handles_open == 0)
        free(l);
    on_handle(owner, -1); /* may free the owner: last */
}

static void linger_end(struct pgconn_linger *l)
{
    if (l->ended)
        return;
    l->ended = true;
    uv_close((uv_handle_t *)&l->poll, linger_closed); /* stops watching l->fd now */
    close(l->fd);
    slot_release(l->seg, l->slot, l->token, l->name);
    uv_close((uv_handle_t *)&l->timer, linger_closed);
}

static void linger_poll_cb(uv_poll_t *h, int status, int events)
{
    struct pgconn_linger *l = h->data;
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

/* Takes ownership of fd and frees the slot when the server closes it. Returns 0, or a
 * libuv error (then the caller still owns fd and the slot). */
static int linger_start(struct rt_pgconn *pc, int fd)
{
    struct pgconn_linger *l = calloc(1, sizeof *l);
    if (!l)
        return UV_ENOMEM;
    if (uv_poll_init(pc->loop, &l->poll, fd) < 0) {
        free(l);
        return UV_EBADF;
    }
    l->seg = pc->seg;
    l->token = pc->token;
    l->slot = pc->slot;
    l->fd = fd;
    l->on_handle = pc->on_handle;
    l->owner = pc->owner;
    snprintf(l->name, sizeof l->name, "%s", pc->name ? pc->name : "connection");
    l->poll.data = l;
    uv_timer_init(pc->loop, &l->timer);
    l->timer.data = l;
    l->handles_open = 2;
    pc->on_handle(pc->owner, +1);
    pc->on_handle(pc->owner, +1);
    uv_poll_start(&l->poll, UV_READABLE | UV_DISCONNECT, linger_poll_cb);
    uv_timer_start(&l->timer, linger_timer_cb, LINGER_MAX_MS, 0);
    return 0;
}

/* ---- the socket watch ---------------------------------------------------------------- */

static void poll_closed(uv_handle_t *h)
{
    struct rt_pgconn_poll *w = h->data;
    void (*on_handle)(void *, int) = w->on_handle;
    void *owner = w->owner;

    free(w);
    on_handle(owner, -1); /* may free the owner: last */
}

void rt_pgconn_unwatch(struct rt_pgconn *pc)
{
    if (!pc->poll)
        return;
    pc->poll->pc = NULL;
    uv_close((uv_handle_t *)&pc->poll->handle, poll_closed);
    pc->poll = NULL;
    pc->poll_fd = -1;
    pc->events = 0;
}

static void connect_step(struct rt_pgconn *pc);

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct rt_pgconn_poll *w = h->data;
    struct rt_pgconn *pc = w->pc;

    if (!pc)
        return;
    if (pc->handshaking) {
        connect_step(pc);
        return;
    }
    if (status < 0)
        pc->events = 0; /* libuv stopped the poll on the error */
    pc->on_socket(pc, status, events);
}

int rt_pgconn_watch(struct rt_pgconn *pc, int events)
{
    int fd = pc->pg ? PQsocket(pc->pg) : -1;
    int rc;

    if (fd < 0)
        return UV_EBADF;
    if (pc->poll && pc->poll_fd != fd)
        rt_pgconn_unwatch(pc);
    if (!pc->poll) {
        struct rt_pgconn_poll *w = malloc(sizeof *w);
        if (!w)
            return UV_ENOMEM;
        rc = uv_poll_init(pc->loop, &w->handle, fd);
        if (rc < 0) {
            free(w);
            return rc;
        }
        w->handle.data = w;
        w->pc = pc;
        w->on_handle = pc->on_handle;
        w->owner = pc->owner;
        pc->on_handle(pc->owner, +1);
        pc->poll = w;
        pc->poll_fd = fd;
        pc->events = 0;
    }
    if (events != pc->events) {
        rc = uv_poll_start(&pc->poll->handle, events, poll_cb);
        if (rc < 0)
            return rc;
        pc->events = events;
    }
    return 0;
}

void rt_pgconn_ref(struct rt_pgconn *pc, bool ref)
{
    if (!pc->poll)
        return;
    if (ref)
        uv_ref((uv_handle_t *)&pc->poll->handle);
    else
        uv_unref((uv_handle_t *)&pc->poll->handle);
}

/* ---- connecting ---------------------------------------------------------------------- */

/* Server notices (and the goodbye of a terminated backend) go to the debug log, never to
 * stderr where they would break the JSON log lines. Any thread (a pool's connection may be
 * on a handler thread); pc->name is read-only. */
static void pgconn_notice(void *arg, const PGresult *res)
{
    const struct rt_pgconn *pc = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    rt_log(RT_LOG_DEBUG, "Server notice",
           json_pack("{s:s,s:s,s:s}", "connection", pc->name ? pc->name : "", "severity",
                     sev ? sev : "", "notice", msg ? msg : ""));
}

static void deadline_closed(uv_handle_t *h)
{
    struct rt_pgconn_deadline *d = h->data;
    void (*on_handle)(void *, int) = d->on_handle;
    void *owner = d->owner;

    free(d);
    on_handle(owner, -1); /* may free the owner: last */
}

void rt_pgconn_ready(struct rt_pgconn *pc)
{
    if (!pc->deadline)
        return;
    pc->deadline->pc = NULL;
    uv_close((uv_handle_t *)&pc->deadline->handle, deadline_closed);
    pc->deadline = NULL;
}

static void deadline_cb(uv_timer_t *t)
{
    struct rt_pgconn_deadline *d = t->data;
    struct rt_pgconn *pc = d->pc;

    if (!pc)
        return;
    rt_pgconn_ready(pc); /* once */
    if (pc->poll)
        uv_poll_stop(&pc->poll->handle);
    pc->events = 0;
    pc->handshaking = false;
    pc->on_connect(pc, RT_ECONNECT_TIMEOUT);
}

/* Handshake over: the owner hears how it went. */
static void connect_done(struct rt_pgconn *pc, int status)
{
    pc->handshaking = false;
    if (status == 0 && PQsetnonblocking(pc->pg, 1) != 0)
        status = RT_ECONNECT;
    pc->on_connect(pc, status);
}

/* One step of PQconnectPoll. */
static void connect_step(struct rt_pgconn *pc)
{
    int rc;

    /*
     * Stop watching before libpq may close the socket (it moves on to the next host or
     * address): libuv must never watch a closed descriptor whose number gets reused.
     */
    uv_poll_stop(&pc->poll->handle);
    pc->events = 0;
    switch (PQconnectPoll(pc->pg)) {
    case PGRES_POLLING_READING:
        rc = rt_pgconn_watch(pc, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        rc = rt_pgconn_watch(pc, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        connect_done(pc, 0);
        return;
    default: /* PGRES_POLLING_FAILED */
        connect_done(pc, RT_ECONNECT);
        return;
    }
    if (rc < 0)
        connect_done(pc, rc);
}

int rt_pgconn_connect(struct rt_pgconn *pc, const struct rt_dburl *url, uint64_t timeout_ms)
{
    int rc;

    if (pc->seg) {
        pc->slot = shm_budget_reserve(pc->seg, pc->token);
        if (pc->slot < 0) {
            pc->slot = -1;
            return -EAGAIN;
        }
    }
    pc->pg = PQconnectStartParams(url->keywords, url->values, 0);
    if (!pc->pg)
        return -ENOMEM;
    if (PQstatus(pc->pg) == CONNECTION_BAD)
        return RT_ECONNECT;
    PQsetNoticeReceiver(pc->pg, pgconn_notice, pc);
    /* As if PQconnectPoll had said PGRES_POLLING_WRITING (libpq's documentation). */
    pc->handshaking = true;
    rc = rt_pgconn_watch(pc, UV_WRITABLE);
    if (rc < 0)
        return rc;
    /* The loop's clock is the start of this iteration; a slow iteration before us would
     * otherwise cut the timeout short (seen: 956 ms of a 1 s timeout under load). */
    uv_update_time(pc->loop);
    if (timeout_ms) {
        struct rt_pgconn_deadline *d = malloc(sizeof *d);
        if (!d)
            return -ENOMEM;
        uv_timer_init(pc->loop, &d->handle);
        d->handle.data = d;
        d->pc = pc;
        d->on_handle = pc->on_handle;
        d->owner = pc->owner;
        pc->on_handle(pc->owner, +1);
        pc->deadline = d;
        uv_timer_start(&d->handle, deadline_cb, timeout_ms, 0);
    }
    return 0;
}

void rt_pgconn_close(struct rt_pgconn *pc)
{
    int keep = -1;

    /* The watch goes first: libuv must stop watching the socket before PQfinish closes it. */
    rt_pgconn_unwatch(pc);
    rt_pgconn_ready(pc);
    pc->handshaking = false;
    if (pc->pg && pc->slot >= 0 && PQstatus(pc->pg) == CONNECTION_OK && PQsocket(pc->pg) >= 0)
        keep = fcntl(PQsocket(pc->pg), F_DUPFD_CLOEXEC, 0);
    if (pc->pg)
        PQfinish(pc->pg);
    pc->pg = NULL;
    if (pc->slot >= 0 && (keep < 0 || linger_start(pc, keep) < 0)) {
        if (keep >= 0)
            close(keep);
        slot_release(pc->seg, pc->slot, pc->token, pc->name ? pc->name : "connection");
    }
    pc->slot = -1;
}
