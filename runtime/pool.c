/*
 * The pool's core on the worker's loop: acquire (idle LIFO, then a new connection inside
 * the limit and the global budget, then a FIFO wait bounded by pool_timeout), release,
 * reaping and recycling, leak warnings, waiting for budget slots, outages (fail at once,
 * one reconnect loop with backoff), fitting the budget to the server's limits, and the
 * pool's gauges.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pool_int.h"
#include "rt_log.h"

#define POOL_DEFAULT_LEAK_MS 60000
#define POOL_DEFAULT_VALIDATE_MS 5000
#define POOL_REAPER_MAX_MS 1000
#define POOL_REAPER_MIN_MS 10
/* The outage's reconnect loop (HikariCP and PgBouncer retry the same way): the delay
 * doubles from MIN to MAX, each one shortened by up to half at random so that workers
 * do not dial in step; while requests are being refused, the next attempt comes at most
 * DEMAND after the last one ended, so that recovery under load stays well under a second. */
#define POOL_BACKOFF_MIN_MS 50
#define POOL_BACKOFF_MAX_MS 5000
#define POOL_BACKOFF_DEMAND_MS 500
#define POOL_OUTAGE_SUMMARY_MS 10000 /* at most one "still unavailable" line this often */

void rt_pool_opts_init(struct rt_pool_opts *o)
{
    memset(o, 0, sizeof *o);
    o->name = "primary";
    o->leak_threshold_ms = POOL_DEFAULT_LEAK_MS;
    o->slow_query_ms = 500;
    o->slow_query_max_len = 1000;
    o->validate_after_ms = POOL_DEFAULT_VALIDATE_MS;
}

/* xorshift64: lifetime jitter does not need more. */
static uint64_t pool_rand(struct rt_pool *p)
{
    uint64_t x = p->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p->rng = x;
    return x;
}

void rt__pool_gauges(struct rt_pool *p)
{
    struct shm_worker *s = p->stats;
    int in_use = p->nopen - p->nconnecting - p->nidle;
    atomic_store_explicit(&s->pool_open, (uint32_t)p->nopen, memory_order_relaxed);
    atomic_store_explicit(&s->pool_in_use, (uint32_t)in_use, memory_order_relaxed);
    atomic_store_explicit(&s->pool_idle, (uint32_t)p->nidle, memory_order_relaxed);
    atomic_store_explicit(&s->pool_waiting, (uint32_t)p->nwaiting, memory_order_relaxed);
}

/* ---- create / close ------------------------------------------------------------------ */

static void pool_reaper_cb(uv_timer_t *t);
static void pool_wait_timer_cb(uv_timer_t *t);
static void pool_wake_cb(uv_poll_t *h, int status, int events);
static void pool_budget_wait_stop(struct rt_pool *p);

static uint64_t pool_ms(int override_ms, int url_s)
{
    return override_ms > 0 ? (uint64_t)override_ms : (uint64_t)url_s * 1000;
}

int rt_pool_create(struct rt_pool **out, const struct rt_pool_opts *o)
{
    struct rt_pool *p = NULL;
    int rc;

    if (!o || !o->loop || !o->url || o->url->connection_limit < 1)
        return -EINVAL;
    if (o->seg && (o->worker_index < 0 || o->worker_index >= SHM_MAX_WORKERS || !o->token))
        return -EINVAL;
    p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->loop = o->loop;
    p->url = o->url;
    snprintf(p->name, sizeof p->name, "%s", o->name ? o->name : "primary");
    p->seg = o->seg;
    p->worker_index = o->worker_index;
    p->token = o->token;
    p->stats = o->stats;
    if (!p->stats && o->seg)
        p->stats = &o->seg->workers[o->worker_index];
    if (!p->stats) {
        p->own_stats = aligned_alloc(64, sizeof *p->own_stats);
        if (!p->own_stats) {
            rc = -ENOMEM;
            goto fail;
        }
        memset(p->own_stats, 0, sizeof *p->own_stats);
        p->stats = p->own_stats;
    }

    p->limit = o->url->connection_limit;
    p->pool_timeout_ms = pool_ms(o->pool_timeout_ms, o->url->pool_timeout_s);
    p->connect_timeout_ms = pool_ms(o->connect_timeout_ms, o->url->connect_timeout_s);
    p->max_idle_ms = pool_ms(o->max_idle_ms, o->url->max_idle_time_s);
    p->max_lifetime_ms = pool_ms(o->max_lifetime_ms, o->url->max_lifetime_s);
    p->leak_ms = o->leak_threshold_ms > 0 ? (uint64_t)o->leak_threshold_ms : 0;
    p->validate_ms = o->validate_after_ms > 0 ? (uint64_t)o->validate_after_ms : 0;
    p->pgbouncer = o->url->pgbouncer;
    p->stmt_cache_size = p->pgbouncer ? 0 : o->url->statement_cache_size;

    p->slow.threshold_ms = o->slow_query_ms;
    p->slow.max_len = o->slow_query_max_len > 0 ? o->slow_query_max_len : 1000;
    p->slow.redact = o->redact_params;
    p->slow.seg = o->seg;
    p->slow.stats = p->stats;
    memcpy(p->slow.pool_name, p->name, sizeof p->name);

    rt__list_init(&p->all);
    rt__list_init(&p->idle);
    rt__list_init(&p->connecting);
    rt__list_init(&p->waiters);
    p->pipe_depth = o->url->pipeline_depth;
    p->pipe_stall_ns =
        (uint64_t)(o->pipeline_stall_ms > 0 ? o->pipeline_stall_ms : RT_PIPELINE_STALL_MS) *
        1000000;

    /* The only step that can fail comes before the timers, so failing needs no close. */
    if (p->seg) {
        rc = uv_poll_init(p->loop, &p->wake_poll, p->seg->workers[p->worker_index].wake_fd);
        if (rc < 0)
            goto fail;
        p->wake_poll.data = p;
        p->wake_poll_inited = true;
        p->handles++;
    }
    uv_timer_init(p->loop, &p->wait_timer);
    uv_timer_init(p->loop, &p->reaper);
    uv_timer_init(p->loop, &p->reconnect_timer);
    p->wait_timer.data = p->reaper.data = p->reconnect_timer.data = p;
    p->handles += 3;
    rt__pipe_init(p);
    /* The reconnect loop alone does not keep a loop running (the worker's loop has more). */
    uv_unref((uv_handle_t *)&p->reconnect_timer);

    uint64_t now_ms = uv_now(p->loop);
    p->real_offset_us = shm_now_us() - now_ms * 1000;
    p->rng = (shm_now_us() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)p) | 1;

    /* The reaper looks often enough for the shortest of its deadlines. */
    uint64_t tick = POOL_REAPER_MAX_MS;
    if (p->max_idle_ms && p->max_idle_ms / 2 < tick)
        tick = p->max_idle_ms / 2;
    if (p->max_lifetime_ms && p->max_lifetime_ms / 2 < tick)
        tick = p->max_lifetime_ms / 2;
    if (p->leak_ms && p->leak_ms / 2 < tick)
        tick = p->leak_ms / 2;
    if (tick < POOL_REAPER_MIN_MS)
        tick = POOL_REAPER_MIN_MS;
    uv_timer_start(&p->reaper, pool_reaper_cb, tick, tick);
    uv_unref((uv_handle_t *)&p->reaper);

    atomic_store_explicit(&p->stats->pool_limit, (uint32_t)p->limit, memory_order_relaxed);
    rt__pool_gauges(p);
    *out = p;
    return 0;

fail:
    free(p->own_stats);
    free(p);
    return rc;
}

static void pool_handle_closed(uv_handle_t *h)
{
    rt__pool_handle_closed(h->data);
}

void rt__pool_handle_closed(struct rt_pool *p)
{
    assert(p->handles > 0);
    if (--p->handles > 0 || !p->handles_closing)
        return;
    void (*cb)(void *) = p->close_cb;
    void *arg = p->close_arg;
    rt_log(RT_LOG_DEBUG, "Pool closed", json_pack("{s:s}", "pool", p->name));
    free(p->own_stats);
    free(p);
    if (cb)
        cb(arg);
}

/* Once closing and without connections: closes the pool's own handles; the last close
 * callback frees the pool. */
static void pool_close_check(struct rt_pool *p)
{
    if (!p->closing || p->nopen > 0 || p->handles_closing)
        return;
    p->handles_closing = true;
    if (p->budget_waiting) {
        shm_budget_wait_end(p->seg, p->worker_index);
        p->budget_waiting = false;
    }
    if (p->wake_poll_inited)
        uv_close((uv_handle_t *)&p->wake_poll, pool_handle_closed);
    uv_close((uv_handle_t *)&p->wait_timer, pool_handle_closed);
    uv_close((uv_handle_t *)&p->reaper, pool_handle_closed);
    uv_close((uv_handle_t *)&p->reconnect_timer, pool_handle_closed);
    rt__pipe_close(p, pool_handle_closed);
}

/* Unlinks and closes c (its budget slot is freed). pump: start connections for waiters
 * that can now have one (not while the caller iterates a list). */
static void pool_conn_close(struct rt_conn *c, bool pump)
{
    struct rt_pool *p = c->pool;

    if (c->state == RT_CONN_IDLE) {
        rt__list_remove(&c->state_link);
        p->nidle--;
    } else if (c->state == RT_CONN_CONNECTING) {
        rt__list_remove(&c->state_link);
        p->nconnecting--;
    }
    if (c->holder >= 0)
        atomic_store_explicit(&p->stats->holders[c->holder].since_us, 0, memory_order_relaxed);
    rt__list_remove(&c->all_link);
    p->nopen--;
    rt__conn_destroy(c);
    rt__pool_gauges(p);
    if (p->closing)
        pool_close_check(p);
    else if (pump)
        rt__pool_pump(p);
}

static void pool_fail_waiter(struct rt_acquire *req, const struct rt_error *err)
{
    struct rt_pool *p = req->pool;
    rt__list_remove(&req->link);
    p->nwaiting--;
    rt__pool_gauges(p);
    req->cb(req, NULL, err);
}

void rt_pool_close(struct rt_pool *p, void (*cb)(void *arg), void *arg)
{
    struct rt_error err;

    if (!p || p->closing)
        return;
    p->closing = true;
    p->close_cb = cb;
    p->close_arg = arg;
    uv_timer_stop(&p->reconnect_timer);
    rt_error_set(&err, RT_EPOOL_CLOSED, NULL, "pool %s is closing", p->name);
    while (!rt__list_empty(&p->waiters))
        pool_fail_waiter(rt_container_of(p->waiters.next, struct rt_acquire, link), &err);
    pool_budget_wait_stop(p);
    while (!rt__list_empty(&p->idle))
        pool_conn_close(rt_container_of(p->idle.next, struct rt_conn, state_link), false);
    while (!rt__list_empty(&p->connecting))
        pool_conn_close(rt_container_of(p->connecting.next, struct rt_conn, state_link), false);
    /* Connections in use close when released, rollbacks when they finish. */
    pool_close_check(p);
}

/* ---- acquire ------------------------------------------------------------------------- */

static void pool_unavailable_error(struct rt_pool *p, struct rt_error *err);
static void pool_refused(struct rt_pool *p);
static bool pool_outage_error(const struct rt_error *err);
static void pool_down_begin(struct rt_pool *p, const struct rt_error *err);

/* Checks out c to a holder. */
static inline void pool_checkout(struct rt_pool *p, struct rt_conn *c, const char *label,
                                 uint64_t now)
{
    size_t n = label ? strnlen(label, SHM_LABEL_LEN - 1) : 0;

    c->state = RT_CONN_IN_USE;
    c->checkout_ms = now;
    c->leak_warned = false;
    c->request_id = NULL;
    memcpy(c->label, label ? label : "", n); /* libc's vector versions beat a byte loop */
    c->label[n] = 0;
    if (c->holder >= 0)
        atomic_store_explicit(&p->stats->holders[c->holder].since_us,
                              now * 1000 + p->real_offset_us, memory_order_release);
    shm_count(&p->stats->counters.acquires, 1);
}

/*
 * An idle connection that is old, idle for long, or due for recycling: usable? Checks
 * the socket for EOF without a round trip (a server restart closes idle sockets).
 */
static __attribute__((noinline)) bool pool_idle_usable(struct rt_conn *c, uint64_t now)
{
    char b;

    if (now >= c->expires_ms || PQstatus(c->pc.pg) != CONNECTION_OK)
        return false;
    if (now - c->idle_since_ms < c->pool->validate_ms)
        return true;
    ssize_t n = recv(PQsocket(c->pc.pg), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return false;
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    /* Data while idle: a notice, or the server saying goodbye. */
    return PQconsumeInput(c->pc.pg) && PQstatus(c->pc.pg) == CONNECTION_OK;
}

int rt_pool_try_acquire(struct rt_pool *p, const char *label, struct rt_conn **out)
{
    while (!rt__list_empty(&p->idle)) {
        struct rt_conn *c = rt_container_of(p->idle.next, struct rt_conn, state_link);
        uint64_t now = uv_now(p->loop);
        if ((now - c->idle_since_ms >= p->validate_ms || now >= c->expires_ms) &&
            !pool_idle_usable(c, now)) {
            pool_conn_close(c, false);
            continue;
        }
        rt__list_remove(&c->state_link);
        p->nidle--;
        pool_checkout(p, c, label, now);
        shm_hist_add(&p->stats->hists.acquire_wait, 0);
        rt__pool_gauges(p);
        *out = c;
        return 0;
    }
    return -EAGAIN;
}

int rt_pool_acquire(struct rt_pool *p, struct rt_acquire *req, const char *label, rt_acquire_cb cb)
{
    return rt__pool_acquire(p, req, label, cb, false);
}

int rt__pool_acquire(struct rt_pool *p, struct rt_acquire *req, const char *label, rt_acquire_cb cb,
                     bool pipe)
{
    struct rt_conn *c;

    if (p->closing)
        return RT_EPOOL_CLOSED;
    req->pipe = pipe;
    req->pool = p;
    req->cb = cb;
    req->label = label;
    rt__list_init(&req->link);
    if (rt_pool_try_acquire(p, label, &c) == 0) {
        cb(req, c, NULL);
        return 0;
    }
    if (p->down) {
        struct rt_error err;
        pool_unavailable_error(p, &err);
        pool_refused(p);
        cb(req, NULL, &err);
        return 0;
    }
    uint64_t now = uv_now(p->loop);
    req->start_ms = now;
    req->deadline_ms = p->pool_timeout_ms ? now + p->pool_timeout_ms : UINT64_MAX;
    rt__list_insert_tail(&p->waiters, &req->link);
    p->nwaiting++;
    shm_count(&p->stats->counters.waits, 1);
    /* Everyone waits equally long, so the head always has the earliest deadline. */
    if (p->nwaiting == 1 && p->pool_timeout_ms)
        uv_timer_start(&p->wait_timer, pool_wait_timer_cb, p->pool_timeout_ms, 0);
    rt__pool_gauges(p);
    rt__pool_pump(p);
    return 0;
}

int rt_pool_acquire_cancel(struct rt_acquire *req)
{
    if (req->link.next == &req->link || !req->pool)
        return -ENOENT;
    struct rt_pool *p = req->pool;
    rt__list_remove(&req->link);
    p->nwaiting--;
    rt__pool_gauges(p);
    rt__pool_pump(p);
    return 0;
}

static void pool_wait_timer_cb(uv_timer_t *t)
{
    struct rt_pool *p = t->data;
    uint64_t now = uv_now(p->loop);
    struct rt_error err;
    char state[RT_ERROR_MSG_LEN];

    while (!rt__list_empty(&p->waiters)) {
        struct rt_acquire *req = rt_container_of(p->waiters.next, struct rt_acquire, link);
        if (req->deadline_ms > now) {
            uv_timer_start(&p->wait_timer, pool_wait_timer_cb, req->deadline_ms - now, 0);
            break;
        }
        /* The state as the waiter saw it: it is still counted as waiting. */
        rt__pool_describe(p, state, sizeof state);
        rt_error_set(&err, RT_EPOOL_TIMEOUT, NULL, "pool timeout after %" PRIu64 " ms (%s)",
                     p->pool_timeout_ms, state);
        shm_count(&p->stats->counters.timeouts, 1);
        pool_fail_waiter(req, &err);
    }
    rt__pool_pump(p);
}

/* ---- budget waits -------------------------------------------------------------------- */

static void pool_budget_wait_stop(struct rt_pool *p)
{
    if (!p->budget_waiting)
        return;
    uv_poll_stop(&p->wake_poll);
    shm_budget_wait_end(p->seg, p->worker_index);
    p->budget_waiting = false;
}

static void pool_wake_cb(uv_poll_t *h, int status, int events)
{
    struct rt_pool *p = h->data;

    /* Clear the eventfd; the pump retries whatever the wake-up was for. */
    (void)shm_budget_wake_drain(p->seg, p->worker_index);
    rt__pool_pump(p);
}

void rt__pool_pump(struct rt_pool *p)
{
    struct rt_error err;

    while (!p->closing && !p->down && p->nwaiting > p->nconnecting && p->nopen < p->limit) {
        /* After a restart the server may take fewer connections: one at a time until one
         * has read its limits (rt__pool_server_limits). */
        if (p->verify && p->seg && p->nconnecting > 0)
            break;
        int rc = rt__conn_open(p, &err, NULL);
        if (rc == -EAGAIN) {
            if (p->budget_waiting)
                return; /* the wake-up eventfd calls us again */
            /* Announce the wait first, then try once more: a slot freed in between
             * either shows up now or writes our eventfd. */
            shm_budget_wait_begin(p->seg, p->worker_index);
            p->budget_waiting = true;
            rc = uv_poll_start(&p->wake_poll, UV_READABLE, pool_wake_cb);
            if (rc < 0)
                rt_logf(RT_LOG_ERROR, "pool %s: cannot watch the wake-up eventfd: %s", p->name,
                        uv_strerror(rc));
            continue;
        }
        if (rc < 0) {
            /* Failed before it started (a unix socket that is gone, a bad host name). */
            shm_count(&p->stats->counters.connect_errors, 1);
            if (pool_outage_error(&err)) {
                pool_down_begin(p, &err);
                return;
            }
            pool_fail_waiter(rt_container_of(p->waiters.next, struct rt_acquire, link), &err);
        }
    }
    if (p->budget_waiting && (p->closing || p->down || p->nwaiting <= p->nconnecting))
        pool_budget_wait_stop(p);
}

/* ---- outages ------------------------------------------------------------------------- */

static void pool_reconnect_cb(uv_timer_t *t);

/*
 * Whether a failed attempt means that the server cannot be reached (an outage) rather than
 * that it refused this one connection: transient, except 53300 (the server is up and full,
 * and the connections it has keep working).
 */
static bool pool_outage_error(const struct rt_error *err)
{
    return err->transient && strcmp(err->sqlstate, "53300") != 0;
}

/* The error of an acquire refused during the outage. The same text for every refusal of
 * one outage (no running duration in it): callers that log failures once per distinct
 * text (rt_log_failure) then write one line, not one per request; the outage's length is
 * in the line that ends it. */
static void pool_unavailable_error(struct rt_pool *p, struct rt_error *err)
{
    rt_error_set(err, RT_EDB_UNAVAILABLE, p->down_err.sqlstate,
                 "database unavailable (pool %s, reconnecting): %s", p->name, p->down_err.message);
}

/* Arms the next attempt after the current backoff, shortened at random by up to half,
 * and doubles the backoff up to its maximum. */
static void pool_reconnect_schedule(struct rt_pool *p)
{
    uint64_t d = p->backoff_ms;

    d -= pool_rand(p) % (d / 2 + 1);
    p->next_attempt_ms = uv_now(p->loop) + d;
    uv_timer_start(&p->reconnect_timer, pool_reconnect_cb, d, 0);
    p->backoff_ms *= 2;
    if (p->backoff_ms > POOL_BACKOFF_MAX_MS)
        p->backoff_ms = POOL_BACKOFF_MAX_MS;
}

/* An acquire was refused: counted, and with demand the next attempt comes sooner. */
static void pool_refused(struct rt_pool *p)
{
    uint64_t now, due;

    p->down_refused++;
    shm_count(&p->stats->counters.unavailable, 1);
    if (p->probing || p->next_attempt_ms <= p->last_attempt_ms + POOL_BACKOFF_DEMAND_MS)
        return;
    now = uv_now(p->loop);
    due = p->last_attempt_ms + POOL_BACKOFF_DEMAND_MS;
    if (due < now)
        due = now;
    p->next_attempt_ms = due;
    uv_timer_start(&p->reconnect_timer, pool_reconnect_cb, due - now, 0);
}

/* An attempt failed with an outage error while the pool was up: the outage begins. The
 * waiter the attempt was for hears why; the other waiters are refused. */
static void pool_down_begin(struct rt_pool *p, const struct rt_error *err)
{
    uint64_t now = uv_now(p->loop);
    struct rt_error e;

    p->down = true;
    atomic_store_explicit(&p->down_flag, true, memory_order_relaxed);
    atomic_store_explicit(&p->stats->pool_db_down, 1, memory_order_relaxed);
    p->verify = p->seg != NULL;
    p->probing = false;
    p->down_since_ms = p->down_summary_ms = p->last_attempt_ms = now;
    p->down_refused = 0;
    p->down_attempts = 1;
    p->down_err = *err;
    p->backoff_ms = POOL_BACKOFF_MIN_MS;
    pool_budget_wait_stop(p);
    pool_reconnect_schedule(p);
    rt_log(RT_LOG_WARN, "Database unavailable; requests fail at once until a reconnect succeeds",
           json_pack("{s:s,s:s,s:s,s:I}", "pool", p->name, "error", err->message, "sqlstate",
                     err->sqlstate, "retry_in_ms", (json_int_t)(p->next_attempt_ms - now)));
    if (!rt__list_empty(&p->waiters))
        pool_fail_waiter(rt_container_of(p->waiters.next, struct rt_acquire, link), err);
    while (!rt__list_empty(&p->waiters)) {
        pool_unavailable_error(p, &e);
        pool_refused(p);
        pool_fail_waiter(rt_container_of(p->waiters.next, struct rt_acquire, link), &e);
    }
}

/* The probe failed: still down. A summary line at most every POOL_OUTAGE_SUMMARY_MS. */
static void pool_attempt_failed(struct rt_pool *p, const struct rt_error *err)
{
    uint64_t now = uv_now(p->loop);

    p->probing = false;
    if (err != &p->down_err)
        p->down_err = *err;
    p->last_attempt_ms = now;
    pool_reconnect_schedule(p);
    if (now - p->down_summary_ms < POOL_OUTAGE_SUMMARY_MS)
        return;
    p->down_summary_ms = now;
    rt_log(RT_LOG_WARN, "Database still unavailable",
           json_pack("{s:s,s:I,s:I,s:I,s:s,s:s,s:I}", "pool", p->name, "outage_ms",
                     (json_int_t)(now - p->down_since_ms), "refused", (json_int_t)p->down_refused,
                     "attempts", (json_int_t)p->down_attempts, "error", err->message, "sqlstate",
                     err->sqlstate, "retry_in_ms", (json_int_t)(p->next_attempt_ms - now)));
}

/* The reconnect loop: one probe connection at a time. */
static void pool_reconnect_cb(uv_timer_t *t)
{
    struct rt_pool *p = t->data;
    struct rt_conn *c;
    struct rt_error err;
    int rc;

    if (!p->down || p->closing || p->probing)
        return;
    p->down_attempts++;
    rc = rt__conn_open(p, &err, &c);
    if (rc == 0) {
        c->probe = true;
        p->probing = true;
        return;
    }
    /* -EAGAIN: every usable budget slot is held by others; try again later. */
    if (rc != -EAGAIN)
        shm_count(&p->stats->counters.connect_errors, 1);
    pool_attempt_failed(p, rc == -EAGAIN ? &p->down_err : &err);
}

/* The probe connected: the outage is over. */
static void pool_down_end(struct rt_pool *p)
{
    uint64_t now = uv_now(p->loop);

    p->down = false;
    p->probing = false;
    atomic_store_explicit(&p->down_flag, false, memory_order_relaxed);
    atomic_store_explicit(&p->stats->pool_db_down, 0, memory_order_relaxed);
    uv_timer_stop(&p->reconnect_timer);
    rt_log(RT_LOG_INFO, "Database available again",
           json_pack("{s:s,s:I,s:I,s:I}", "pool", p->name, "outage_ms",
                     (json_int_t)(now - p->down_since_ms), "refused", (json_int_t)p->down_refused,
                     "attempts", (json_int_t)p->down_attempts));
}

void rt__pool_server_limits(struct rt_pool *p, int max_connections, int superuser_reserved,
                            int reserved)
{
    uint32_t before, after;

    p->verify = false;
    if (!p->seg)
        return;
    before = shm_budget_fit(p->seg, max_connections, superuser_reserved + reserved);
    after = shm_budget_usable(p->seg);
    if (after == before)
        return;
    /* Connections on slots at or above the new cap close as they come back (pool_offer). */
    rt_log(after < before ? RT_LOG_WARN : RT_LOG_INFO,
           after < before ? "Connection budget shrunk to fit the server"
                          : "Connection budget grows back to fit the server",
           json_pack("{s:s,s:i,s:i,s:i,s:i,s:i,s:i}", "pool", p->name, "budget",
                     (int)shm_budget_size(p->seg), "usable", (int)after, "was", (int)before,
                     "max_connections", max_connections, "superuser_reserved_connections",
                     superuser_reserved, "reserved_connections", reserved));
}

/* ---- connections coming and going --------------------------------------------------- */

/* c is ready (connected, released, rolled back): to the first waiter, else idle. */
static void pool_offer(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;
    uint64_t now = uv_now(p->loop);

    /* The server takes fewer connections than the budget now, or the node's lease shrank:
     * this one is beyond them. */
    if (p->seg && c->pc.slot >= 0 &&
        ((uint32_t)c->pc.slot >= shm_budget_usable(p->seg) || shm_budget_over_lease(p->seg))) {
        pool_conn_close(c, true);
        return;
    }
    if (!rt__list_empty(&p->waiters)) {
        struct rt_acquire *req = rt_container_of(p->waiters.next, struct rt_acquire, link);
        rt__list_remove(&req->link);
        p->nwaiting--;
        pool_checkout(p, c, req->label, now);
        shm_hist_add(&p->stats->hists.acquire_wait, (now - req->start_ms) * 1000);
        rt__pool_gauges(p);
        if (p->budget_waiting)
            rt__pool_pump(p);
        req->cb(req, c, NULL);
        return;
    }
    /* Another worker waits for a budget slot and we have nobody to serve: give ours back. */
    if (p->seg && atomic_load_explicit(&p->seg->waiters, memory_order_relaxed) > 0 &&
        !p->budget_waiting) {
        pool_conn_close(c, true);
        return;
    }
    c->state = RT_CONN_IDLE;
    c->idle_since_ms = now;
    rt__list_insert_head(&p->idle, &c->state_link);
    p->nidle++;
    rt__pool_gauges(p);
}

void rt__pool_conn_ready(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;
    uint64_t now = uv_now(p->loop);

    rt__list_remove(&c->state_link);
    p->nconnecting--;
    c->state = RT_CONN_IN_USE; /* not idle, not connecting: pool_offer decides */
    c->created_ms = now;
    c->expires_ms = UINT64_MAX;
    if (p->max_lifetime_ms) {
        /* ±10 % jitter, so connections opened together do not all recycle together. */
        uint64_t span = p->max_lifetime_ms / 5;
        uint64_t life = p->max_lifetime_ms - p->max_lifetime_ms / 10;
        if (span)
            life += pool_rand(p) % (span + 1);
        c->expires_ms = now + life;
    }
    shm_count(&p->stats->counters.connects, 1);
    if (c->probe) {
        c->probe = false;
        if (p->down)
            pool_down_end(p);
    }
    if (p->closing) {
        pool_conn_close(c, false);
        return;
    }
    pool_offer(c);
    /* Waiters that the connections opened one at a time (p->verify) did not cover. */
    rt__pool_pump(p);
}

void rt__pool_conn_failed(struct rt_conn *c, const struct rt_error *err)
{
    struct rt_pool *p = c->pool;
    bool probe = c->probe, outage = pool_outage_error(err);

    shm_count(&p->stats->counters.connect_errors, 1);
    /* An outage has its own lines (begin, summary, end), not one per attempt. */
    if (!p->down && !outage && !p->closing)
        rt_log(RT_LOG_WARN, "Connection attempt failed",
               json_pack("{s:s,s:s,s:s}", "pool", p->name, "error", err->message, "sqlstate",
                         err->sqlstate));
    pool_conn_close(c, false);
    if (p->closing)
        return;
    if (p->down) {
        /* Attempts still under way when the outage began end quietly. */
        if (probe)
            pool_attempt_failed(p, err);
        return;
    }
    if (outage) {
        pool_down_begin(p, err);
        return;
    }
    /* One attempt per waiter: the waiter it was for hears why (retrying in a loop
     * against a server that refuses would spin until pool_timeout). */
    if (p->nwaiting > p->nconnecting)
        pool_fail_waiter(rt_container_of(p->waiters.next, struct rt_acquire, link), err);
    rt__pool_pump(p);
}

void rt_pool_release(struct rt_conn *c)
{
    struct rt_pool *p = c->pool;

    assert(c->state == RT_CONN_IN_USE || c->state == RT_CONN_THREAD);
    if (c->holder >= 0)
        atomic_store_explicit(&p->stats->holders[c->holder].since_us, 0, memory_order_relaxed);
    c->state = RT_CONN_IN_USE;
    if (PQstatus(c->pc.pg) != CONNECTION_OK)
        p->verify = p->seg != NULL; /* the server dropped it: perhaps a restart */
    if (c->op != RT_OP_NONE || c->broken || p->closing) {
        if (c->op != RT_OP_NONE)
            rt_log(RT_LOG_ERROR, "Connection released with a query in flight; closed",
                   json_pack("{s:s,s:s}", "pool", p->name, "holder", c->label));
        pool_conn_close(c, true);
        return;
    }
    switch (PQtransactionStatus(c->pc.pg)) {
    case PQTRANS_IDLE:
        if (uv_now(p->loop) >= c->expires_ms)
            pool_conn_close(c, true); /* recycled: the pump opens a fresh one if needed */
        else
            pool_offer(c);
        return;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        c->state = RT_CONN_ROLLBACK;
        if (rt__query_start_rollback(c) == 0)
            return;
        c->state = RT_CONN_IN_USE;
        pool_conn_close(c, true);
        return;
    default: /* PQTRANS_ACTIVE (still busy), PQTRANS_UNKNOWN (broken) */
        pool_conn_close(c, true);
        return;
    }
}

void rt__pool_rollback_done(struct rt_conn *c, bool ok)
{
    struct rt_pool *p = c->pool;

    c->state = RT_CONN_IN_USE;
    if (ok && !p->closing && PQtransactionStatus(c->pc.pg) == PQTRANS_IDLE &&
        uv_now(p->loop) < c->expires_ms)
        pool_offer(c);
    else
        pool_conn_close(c, true);
}

void rt__pool_conn_broke(struct rt_conn *c)
{
    if (PQstatus(c->pc.pg) != CONNECTION_OK)
        c->pool->verify = c->pool->seg != NULL; /* the server dropped it: perhaps a restart */
    if (c->state == RT_CONN_IDLE) {
        rt_log(RT_LOG_INFO, "Idle connection lost",
               json_pack("{s:s,s:s}", "pool", c->pool->name, "error",
                         PQerrorMessage(c->pc.pg) ? PQerrorMessage(c->pc.pg) : ""));
        pool_conn_close(c, true);
    } else {
        c->broken = true; /* closed when its holder releases it */
    }
}

/* ---- reaper -------------------------------------------------------------------------- */

static void pool_reaper_cb(uv_timer_t *t)
{
    struct rt_pool *p = t->data;
    uint64_t now = uv_now(p->loop);
    bool shed = p->seg && !p->budget_waiting &&
                atomic_load_explicit(&p->seg->waiters, memory_order_relaxed) > 0;
    uint32_t usable = p->seg ? shm_budget_usable(p->seg) : UINT32_MAX;
    int closed = 0;

    /* Idle connections, oldest first. */
    struct rt_pool_link *l = p->idle.prev;
    while (l != &p->idle) {
        struct rt_conn *c = rt_container_of(l, struct rt_conn, state_link);
        l = l->prev;
        if (shed || now >= c->expires_ms || (c->pc.slot >= 0 && (uint32_t)c->pc.slot >= usable) ||
            (c->pc.slot >= 0 && shm_budget_over_lease(p->seg)) ||
            (p->max_idle_ms && now - c->idle_since_ms >= p->max_idle_ms)) {
            pool_conn_close(c, false);
            closed++;
        }
    }

    if (p->leak_ms) {
        for (l = p->all.next; l != &p->all; l = l->next) {
            struct rt_conn *c = rt_container_of(l, struct rt_conn, all_link);
            if ((c->state != RT_CONN_IN_USE && c->state != RT_CONN_THREAD) || c->leak_warned ||
                now - c->checkout_ms < p->leak_ms)
                continue;
            c->leak_warned = true;
            rt_log(RT_LOG_WARN, "Connection held longer than leak threshold",
                   json_pack("{s:s,s:s,s:I,s:I}", "pool", p->name, "holder", c->label, "age_ms",
                             (json_int_t)(now - c->checkout_ms), "threshold_ms",
                             (json_int_t)p->leak_ms));
        }
    }
    if (closed)
        rt__pool_pump(p);
}

/* ---- introspection ------------------------------------------------------------------- */

void rt_pool_state(const struct rt_pool *p, struct rt_pool_state *out)
{
    out->limit = p->limit;
    out->open = p->nopen;
    out->connecting = p->nconnecting;
    out->idle = p->nidle;
    out->in_use = p->nopen - p->nconnecting - p->nidle;
    out->waiting = p->nwaiting;
}

struct shm_worker *rt_pool_stats_block(const struct rt_pool *p)
{
    return p->stats;
}

const char *rt_pool_name(const struct rt_pool *p)
{
    return p->name;
}

PGconn *rt_conn_pg(const struct rt_conn *c)
{
    return c->pc.pg;
}

struct rt_pool *rt_conn_pool(const struct rt_conn *c)
{
    return c->pool;
}

void rt_conn_set_request_id(struct rt_conn *c, const char *request_id)
{
    c->request_id = request_id;
}

#define POOL_DESCRIBE_MAX 16

void rt__pool_describe(const struct rt_pool *p, char *buf, size_t size)
{
    const struct rt_conn *held[POOL_DESCRIBE_MAX];
    int nheld = 0, more = 0;
    uint64_t now = uv_now(p->loop);
    size_t off;

    /* The longest-held first: those are the ones to look at. */
    for (const struct rt_pool_link *l = p->all.next; l != &p->all; l = l->next) {
        const struct rt_conn *c = rt_container_of(l, struct rt_conn, all_link);
        if (c->state != RT_CONN_IN_USE && c->state != RT_CONN_THREAD)
            continue;
        int i;
        if (nheld < POOL_DESCRIBE_MAX) {
            i = nheld++;
        } else {
            more++;
            if (held[POOL_DESCRIBE_MAX - 1]->checkout_ms <= c->checkout_ms)
                continue;
            i = POOL_DESCRIBE_MAX - 1; /* replaces the youngest kept */
        }
        while (i > 0 && held[i - 1]->checkout_ms > c->checkout_ms) {
            held[i] = held[i - 1];
            i--;
        }
        held[i] = c;
    }
    snprintf(buf, size, "%s: limit %d, in use %d, idle %d, waiting %d", p->name, p->limit,
             p->nopen - p->nconnecting - p->nidle, p->nidle, p->nwaiting);
    off = strlen(buf);
    for (int i = 0; i < nheld && off + 1 < size; i++) {
        uint64_t age = now - held[i]->checkout_ms;
        int n = snprintf(buf + off, size - off, "%s%s %" PRIu64 ".%" PRIu64 "s",
                         i ? ", " : "; holders: ", held[i]->label[0] ? held[i]->label : "?",
                         age / 1000, age % 1000 / 100);
        if (n < 0 || (size_t)n >= size - off) {
            buf[off] = 0;
            break;
        }
        off += (size_t)n;
    }
    if (more && off + 1 < size)
        snprintf(buf + off, size - off, ", +%d more", more);
}
