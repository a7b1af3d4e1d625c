/*
 * A small stand-in for the supervisor, for the job tests (t31x): the shared segment and
 * eventfds, the LISTEN connection (sup_jobq) on a loop the test pumps, job workers forked
 * from the test running the real job role, and reaping that unlocks a dead worker's jobs.
 * Header-only (static inline) so that only the tests that include it link the job worker.
 */
#ifndef PGCORRAL_JOBHARNESS_H
#define PGCORRAL_JOBHARNESS_H

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"
#include "workers/job.h"

struct jh {
    struct shm_segment *seg;
    int wake_fds[SHM_MAX_WORKERS];
    struct rt_dburl *db;
    const char *plugins[8];
    struct worker_config cfg;
    uv_loop_t loop;
    struct sup_jobq *jobs; /* NULL until jh_listen */
    uint32_t next_gen;
    pid_t pid[SHM_MAX_WORKERS];
    int status[SHM_MAX_WORKERS]; /* waitpid status of the last exit */
    int exits;                   /* exits reaped so far */
    int keep_completed_s;        /* jh_listen's retention of completed jobs (0: none kept) */
};

/* Sets up the segment (budget slots), eventfds and configuration for url and plugins. */
static inline void jh_init(struct jh *h, const char *url, const char *const *plugins, int budget)
{
    char err[512];
    memset(h, 0, sizeof *h);
    if (rt_dburl_parse(url, &h->db, err, sizeof err) < 0)
        bail("rt_dburl_parse: %s", err);
    if (shm_create(&h->seg, (uint32_t)budget) < 0)
        bail("shm_create failed");
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        h->wake_fds[i] = i < 8 ? eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) : -1;
    for (int i = 0; plugins && plugins[i] && i < 7; i++)
        h->plugins[i] = plugins[i];
    h->cfg.db = h->db;
    h->cfg.slow_query_ms = 5000;
    h->cfg.shutdown_timeout_s = 20;
    h->cfg.heartbeat_ms = 1000;
    h->cfg.plugins = h->plugins;
    h->cfg.job_wake_fds = h->wake_fds;
    if (uv_loop_init(&h->loop) != 0)
        bail("uv_loop_init");
}

/* SIGTERM in a harness worker: the role drains. */
static inline void jh__on_term(uv_signal_t *s, int signum)
{
    struct worker_ctx *w = s->data;
    uv_close((uv_handle_t *)s, NULL);
    if (!w->draining) {
        w->draining = true;
        job_role_ops.drain(w);
    }
}

/* The body of a forked job worker: what worker_main does for the job role. */
static inline void jh__worker(struct jh *h, int index, const struct job_options *opt)
{
    struct worker_ctx w;
    uv_signal_t term;
    sigset_t none;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(0);
    memset(&w, 0, sizeof w);
    rt_log_set_identity("job", index);
    if (uv_loop_init(&w.loop) != 0)
        _exit(70);
    h->cfg.jobs = opt; /* this fork's copy of the harness */
    w.cfg = &h->cfg;
    w.seg = h->seg;
    w.index = index;
    w.self = &h->seg->workers[index];
    w.role = SHM_ROLE_JOB;
    w.role_index = index;
    w.generation = atomic_load(&w.self->generation);
    w.token = shm_token((uint32_t)index, w.generation);
    uv_signal_init(&w.loop, &term);
    term.data = &w;
    uv_signal_start(&term, jh__on_term, SIGTERM);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* The worker's pools, as worker_main creates them (closed by worker_drained). */
    if (worker_pools_create(&w) < 0 || job_role_ops.start(&w) < 0)
        _exit(WORKER_EXIT_CONFIG);
    atomic_store(&w.self->state, SHM_STATE_READY);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    rt_read_router_destroy(w.read_router);
    _exit(0);
}

/* Forks job worker number index (0..7) with options opt (NULL = defaults). */
static inline pid_t jh_spawn(struct jh *h, int index, const struct job_options *opt)
{
    struct shm_worker *sw = &h->seg->workers[index];
    pid_t pid;

    atomic_store(&sw->generation, ++h->next_gen);
    atomic_store(&sw->role, (uint32_t)SHM_ROLE_JOB);
    atomic_store(&sw->role_index, (uint32_t)index);
    atomic_store(&sw->state, SHM_STATE_STARTING);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        bail("fork: %s", strerror(errno));
    if (pid == 0)
        jh__worker(h, index, opt);
    atomic_store(&sw->pid, pid);
    h->pid[index] = pid;
    return pid;
}

/* Starts the LISTEN connection and orphan recovery, as the supervisor does. */
static inline void jh_listen(struct jh *h, int lease_s, int sweep_ms)
{
    struct sup_jobq_opts o;
    sup_jobq_opts_init(&o);
    o.loop = &h->loop;
    o.db = h->db;
    o.seg = h->seg;
    o.job_wake_fds = h->wake_fds;
    o.node = "jobharness";
    if (lease_s > 0)
        o.lease_s = lease_s;
    if (sweep_ms > 0)
        o.sweep_ms = sweep_ms;
    o.keep_completed_s = h->keep_completed_s;
    if (sup_jobq_start(&h->jobs, &o) < 0)
        bail("sup_jobq_start failed");
}

/* Reaps exited workers like the supervisor: retire, then unlock their jobs. */
static inline void jh_reap(struct jh *h)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < SHM_MAX_WORKERS; i++) {
            if (h->pid[i] != pid)
                continue;
            uint32_t gen = atomic_load(&h->seg->workers[i].generation);
            uint64_t from = atomic_load(&h->seg->workers[i].jobs_unstarted_from);
            shm_worker_retire(h->seg, i);
            atomic_store(&h->seg->workers[i].state, SHM_STATE_DEAD);
            h->pid[i] = 0;
            h->status[i] = st;
            h->exits++;
            sup_jobq_worker_died(h->jobs, pid, gen, from);
        }
    }
}

static inline void jh__tick(uv_timer_t *t)
{
}

/* Pumps the loop (and reaps) for ms milliseconds: it blocks in the loop, so notifications
 * are fanned out as soon as they arrive, and returns every 2 ms to reap. */
static inline void jh_pump(struct jh *h, int ms)
{
    long long end = pgt_now_ms() + ms;
    uv_timer_t tick;
    uv_timer_init(&h->loop, &tick);
    uv_timer_start(&tick, jh__tick, 2, 2);
    do {
        jh_reap(h);
        uv_run(&h->loop, UV_RUN_ONCE);
    } while (pgt_now_ms() < end);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&h->loop, UV_RUN_NOWAIT);
}

/* Pumps until cond(arg) or timeout_ms. Returns cond's last value. */
static inline bool jh_wait(struct jh *h, bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    long long end = pgt_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (pgt_now_ms() >= end)
            return cond(arg);
        jh_pump(h, 10);
    }
}

/* pgt_wait_count while pumping the harness's loop (wake-ups, reaping). */
static inline long long jh_wait_count(struct jh *h, PGconn *conn, const char *sql, long long want,
                                      int timeout_ms)
{
    struct pgt_count c = {conn, sql, want, false, -1};
    jh_wait(h, pgt_count_reached, &c, timeout_ms);
    return c.got;
}

/* Whether worker index has exited (reaped). */
static inline bool jh_exited(struct jh *h, int index)
{
    jh_reap(h);
    return h->pid[index] == 0;
}

/* SIGKILLs the remaining workers, stops the LISTEN connection, frees everything. */
static inline void jh_done(struct jh *h)
{
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        if (h->pid[i] > 0)
            kill(h->pid[i], SIGKILL);
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        if (h->pid[i] > 0)
            waitpid(h->pid[i], NULL, 0);
    sup_jobq_stop(h->jobs, NULL, NULL);
    h->jobs = NULL;
    uv_run(&h->loop, UV_RUN_NOWAIT);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    uv_loop_close(&h->loop);
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        if (h->wake_fds[i] >= 0)
            close(h->wake_fds[i]);
    shm_destroy(h->seg);
    rt_dburl_destroy(h->db);
}

#endif
