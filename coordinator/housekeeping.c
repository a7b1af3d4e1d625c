/*
 * The supervisor's periodic checks: hung workers (heartbeat older than --worker-timeout,
 * or a web worker that accepted nothing for --worker-timeout while connections waited on
 * its socket: SIGABRT, then SIGKILL; the reaper replaces them), rolling-restart steps, the
 * sustained utilisation warning the guide asks for, and the periodic stats log line.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "coordinator/sup_int.h"

#define TICK_MS 200
#define ABORT_GRACE_US (3ULL * 1000000)
#define UTILIZATION_WARN 0.8

/* SIGABRT first: a core dump shows where it hung. A stopped process keeps it pending,
 * hence the SIGKILL after a grace period (check_hung). */
static void abort_worker(struct sup_worker *w, uint64_t now)
{
    kill(w->pid, SIGABRT);
    w->abort_sent_us = now;
}

static void check_hung(struct sup *s, uint64_t now)
{
    uint64_t timeout = (uint64_t)s->cfg->worker_timeout_s * 1000000;

    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        struct sup_worker *w = &s->workers[i];
        uint64_t hb = atomic_load_explicit(&s->seg->workers[i].heartbeat_us, memory_order_relaxed);
        if (w->pid <= 0)
            continue;
        if (w->abort_sent_us != 0) {
            /* Aborted here or by check_accepting, and still not reaped. */
            if (now - w->abort_sent_us > ABORT_GRACE_US)
                kill(w->pid, SIGKILL);
            continue;
        }
        if (now < hb || now - hb <= timeout)
            continue;
        rt_log(RT_LOG_ERROR, "worker unresponsive; aborting it",
               json_pack("{s:s,s:i,s:i,s:f,s:i}", "worker_role", rt_role_name(w->role),
                         "worker_index", w->role_index, "worker_pid", (int)w->pid, "silent_s",
                         (double)(now - hb) / 1e6, "worker_timeout_s", s->cfg->worker_timeout_s));
        abort_worker(w, now);
    }
}

/* Connections waiting in the accept queue of listening socket fd: -1 when none (or the
 * socket cannot be polled), else their number (TCP_INFO; 0 when the kernel does not say). */
static int accept_queue(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
        return -1;
    /* On a listening socket, tcpi_unacked is the length of the accept queue. */
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return 0;
    return (int)ti.tcpi_unacked;
}

/*
 * A web worker whose loop turns (its heartbeat is fresh) but that has stopped accepting is
 * as hung for its clients as a silent one. Each web worker accepts on its own listening
 * socket (SO_REUSEPORT, kept here), so connections that wait on that socket are its
 * own: when they have waited, without the ready workers of that socket accepting any
 * connection (their http_accepted counters), for --worker-timeout, those workers are
 * aborted and replaced like silent ones. An idle worker with nothing waiting is never
 * touched, nor one that accepts, however slowly.
 */
static void check_accepting(struct sup *s, uint64_t now)
{
    uint64_t timeout = (uint64_t)s->cfg->worker_timeout_s * 1000000;

    for (int k = 0; k < s->n_listen_fds; k++) {
        uint64_t sum = 0;
        int ready = 0, queued;

        for (int i = 0; i < SHM_MAX_WORKERS; i++) {
            const struct sup_worker *w = &s->workers[i];
            const struct shm_worker *sw = &s->seg->workers[i];
            /* Relaxed: a snapshot; only a change matters. */
            if (w->pid <= 0 || w->role != SHM_ROLE_WEB || w->role_index != k ||
                atomic_load_explicit(&sw->state, memory_order_relaxed) != SHM_STATE_READY)
                continue;
            sum += atomic_load_explicit(&sw->counters.http_accepted, memory_order_relaxed);
            ready++;
        }
        queued = ready > 0 ? accept_queue(s->listen_fds[k]) : -1;
        if (queued < 0 || sum != s->accept_seen[k]) {
            s->accept_seen[k] = sum;
            s->accept_stalled_since_us[k] = queued < 0 ? 0 : now;
            continue;
        }
        if (s->accept_stalled_since_us[k] == 0)
            s->accept_stalled_since_us[k] = now;
        if (now - s->accept_stalled_since_us[k] <= timeout)
            continue;
        for (int i = 0; i < SHM_MAX_WORKERS; i++) {
            struct sup_worker *w = &s->workers[i];
            const struct shm_worker *sw = &s->seg->workers[i];
            if (w->pid <= 0 || w->role != SHM_ROLE_WEB || w->role_index != k ||
                w->abort_sent_us != 0 ||
                atomic_load_explicit(&sw->state, memory_order_relaxed) != SHM_STATE_READY)
                continue;
            rt_log(RT_LOG_ERROR, "web worker stopped accepting; aborting it",
                   json_pack("{s:s,s:i,s:i,s:i,s:f,s:I,s:i}", "worker_role", rt_role_name(w->role),
                             "worker_index", w->role_index, "worker_pid", (int)w->pid, "queued",
                             queued, "stalled_s",
                             (double)(now - s->accept_stalled_since_us[k]) / 1e6, "accepted",
                             (json_int_t)atomic_load_explicit(&sw->counters.http_accepted,
                                                              memory_order_relaxed),
                             "worker_timeout_s", s->cfg->worker_timeout_s));
            abort_worker(w, now);
        }
        s->accept_stalled_since_us[k] = 0;
    }
}

/* Warns once per episode when utilisation stays above 80 % for --utilization-warn-after. */
static void check_hot(struct sup *s, double ratio, uint64_t now, uint64_t *since, bool *warned,
                      const char *what, json_t *fields)
{
    uint64_t window = (uint64_t)s->cfg->utilization_warn_s * 1000000;

    if (ratio <= UTILIZATION_WARN) {
        if (*warned)
            rt_log(RT_LOG_INFO, "utilisation back under 80 %",
                   json_pack("{s:s,s:f}", "what", what, "utilization", ratio));
        *since = 0;
        *warned = false;
        json_decref(fields);
        return;
    }
    if (*since == 0)
        *since = now;
    if (!*warned && now - *since >= window) {
        *warned = true;
        json_object_set_new(fields, "what", json_string(what));
        json_object_set_new(fields, "utilization", json_real(ratio));
        json_object_set_new(fields, "sustained_s", json_real((double)(now - *since) / 1e6));
        rt_log(RT_LOG_WARN, "connection utilisation above 80 %", fields);
        return;
    }
    json_decref(fields);
}

static void check_utilization(struct sup *s, uint64_t now)
{
    uint32_t in_use = shm_budget_in_use(s->seg);

    check_hot(s, (double)in_use / (double)s->budget, now, &s->budget_hot_since_us,
              &s->budget_warned, "budget",
              json_pack("{s:i,s:i}", "in_use", (int)in_use, "slots", s->budget));
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct shm_worker *sw = &s->seg->workers[i];
        unsigned limit = atomic_load_explicit(&sw->pool_limit, memory_order_relaxed);
        unsigned used = atomic_load_explicit(&sw->pool_in_use, memory_order_relaxed);
        if (s->workers[i].pid <= 0 || limit == 0)
            continue;
        check_hot(s, (double)used / limit, now, &s->pool_hot_since_us[i], &s->pool_warned[i],
                  "pool",
                  json_pack("{s:s,s:i,s:i,s:i}", "worker_role", rt_role_name(s->workers[i].role),
                            "worker_index", s->workers[i].role_index, "in_use", (int)used, "limit",
                            (int)limit));
    }
}

static void log_stats(struct sup *s, uint64_t now)
{
    if (s->cfg->stats_interval_s == 0)
        return;
    if (s->last_stats_log_us == 0)
        s->last_stats_log_us = now;
    if (now - s->last_stats_log_us < (uint64_t)s->cfg->stats_interval_s * 1000000)
        return;
    s->last_stats_log_us = now;
    json_t *pools = rt_pools_json(s->seg);
    json_t *total = json_incref(json_object_get(pools, "total"));
    json_decref(pools);
    rt_log(RT_LOG_INFO, "stats",
           json_pack("{s:i,s:{s:i,s:i},s:o}", "workers", sup_live_workers(s), "budget", "slots",
                     s->budget, "in_use", (int)shm_budget_in_use(s->seg), "pools",
                     total ? total : json_null()));
}

static void on_tick(uv_timer_t *t)
{
    struct sup *s = t->data;
    uint64_t now = shm_now_us();

    if (s->phase == SUP_RUNNING) {
        check_hung(s, now);
        check_accepting(s, now);
        sup_reload_step(s);
        check_utilization(s, now);
        log_stats(s, now);
    } else {
        /* Draining workers may hang too; the shutdown deadline covers them. */
        check_hung(s, now);
    }
    sup_upgrade_tick(s);
}

void sup_housekeeping_start(struct sup *s)
{
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
}
