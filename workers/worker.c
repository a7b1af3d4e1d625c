/*
 * The body of every forked worker process: its own libuv loop, a heartbeat into its shm
 * block, SIGTERM drain and SIGQUIT fast exit, and the role (web or job) run on that loop.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "workers/job.h"
#include "workers/web.h"
#include "workers/workers.h"

/* The roles' hooks, by enum shm_role. */
static const struct worker_role_ops *role_ops(enum shm_role role)
{
    static const struct worker_role_ops none = {NULL, NULL};
    switch (role) {
    case SHM_ROLE_WEB:
        return &web_role_ops;
    case SHM_ROLE_JOB:
        return &job_role_ops;
    default:
        return &none;
    }
}

/* The heartbeat timer, the signal watchers and the drain deadline of this process. */
static uv_timer_t heartbeat_timer;
static uv_signal_t term_signal, int_signal, usr1_signal;
static uv_timer_t drain_deadline;

static void on_heartbeat(uv_timer_t *t)
{
    struct worker_ctx *w = t->data;
    atomic_store_explicit(&w->self->heartbeat_us, shm_now_us(), memory_order_relaxed);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Pools still closing after drain; the last one to finish ends the loop. */
static int pools_closing;

static void on_pool_closed(void *arg)
{
    struct worker_ctx *w = arg;
    /* Closing every handle lets uv_run() return; worker_main() then exits. */
    if (--pools_closing == 0)
        uv_walk(&w->loop, close_walk_cb, NULL);
}

void worker_drained(struct worker_ctx *w)
{
    if (pools_closing > 0 || w->pool == NULL)
        return;
    pools_closing = w->read_pool != w->pool ? 2 : 1;
    if (w->read_pool != w->pool)
        rt_pool_close(w->read_pool, on_pool_closed, w);
    rt_pool_close(w->pool, on_pool_closed, w);
}

static void on_drain_deadline(uv_timer_t *t)
{
    struct worker_ctx *w = t->data;
    rt_log(RT_LOG_WARN, "drain deadline reached with work in flight; exiting",
           json_pack("{s:i}", "shutdown_timeout_s", w->cfg->shutdown_timeout_s));
    /* What is still in flight is abandoned: its connections close with the process and
     * the server rolls their transactions back. */
    _exit(0);
}

static void on_term(uv_signal_t *s, int signum)
{
    struct worker_ctx *w = s->data;
    const struct worker_role_ops *ops = role_ops(w->role);

    if (w->draining)
        return;
    w->draining = true;
    atomic_store_explicit(&w->self->state, SHM_STATE_DRAINING, memory_order_relaxed);
    rt_log(RT_LOG_INFO, "draining", json_pack("{s:s}", "signal", strsignal(signum)));
    /* The supervisor SIGKILLs at its deadline; stop a little earlier on our own. */
    uv_timer_start(&drain_deadline, on_drain_deadline, (uint64_t)w->cfg->shutdown_timeout_s * 1000,
                   0);
    uv_unref((uv_handle_t *)&drain_deadline);
    if (ops->drain)
        ops->drain(w);
    else
        worker_drained(w);
}

/* SIGUSR1 (forwarded by the supervisor): reopen the log file after rotation. */
static void on_usr1(uv_signal_t *s, int signum)
{
    struct worker_ctx *w = s->data;
    if (w->cfg->log_file && rt_log_set_file(w->cfg->log_file) < 0)
        rt_logf(RT_LOG_ERROR, "cannot reopen the log file");
}

/* SIGQUIT: fast stop. Connections die with the process; the server rolls back. */
static void on_quit(int signum)
{
    _exit(0);
}

/* Restores what the supervisor changed for itself: signal mask and dispositions. */
static void reset_signals(void)
{
    static const int sigs[] = {SIGTERM, SIGINT,  SIGHUP,  SIGUSR1, SIGUSR2,
                               SIGTTIN, SIGTTOU, SIGCHLD, SIGPIPE};
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_quit;
    sigaction(SIGQUIT, &sa, NULL);
}

/* The supervisor blocks its signals (it reads them from a signalfd); the child inherits
 * that mask and unblocks once its own watchers are in place, so an early SIGTERM is
 * drained like any other instead of killing a half-started worker. */
static void unblock_signals(void)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Whether the URL left application_name to us (rt_dburl sets "pgcorral" then). */
static bool app_name_is_default(const struct rt_dburl *u)
{
    const char *name = rt_dburl_get(u, "application_name");
    return name && strcmp(name, "pgcorral") == 0;
}

/* The read router over the worker's pools (no fallback logic without a replica). */
static int create_router(struct worker_ctx *w)
{
    int rc = rt_read_router_create(&w->read_router, w->pool,
                                   w->read_pool != w->pool ? w->read_pool : NULL, NULL);
    if (rc < 0)
        rt_log(RT_LOG_ERROR, "cannot create the read router", json_pack("{s:i}", "error", rc));
    return rc;
}

/*
 * The worker's pools: the primary inside the global budget, and a read pool on
 * DATABASE_REPLICA_URL (its own limit, not the primary's budget) or the primary itself.
 * application_name carries role, index and node ("pgcorral web 0 @NODE") so that
 * pg_stat_activity shows who is who, and the node that finds this node's lease expired
 * can terminate its connections (migration 10).
 */
int worker_pools_create(struct worker_ctx *w)
{
    const struct worker_config *cfg = w->cfg;
    struct rt_pool_opts o;
    char app[64];
    int rc;

    snprintf(app, sizeof app, "pgcorral %s %d @%s", w->role == SHM_ROLE_WEB ? "web" : "job",
             w->role_index, cfg->node ? cfg->node : "");
    /* The URL structs are this process's own copies after fork. */
    if (app_name_is_default(cfg->db) &&
        rt_dburl_set((struct rt_dburl *)cfg->db, "application_name", app) < 0)
        return -ENOMEM;
    rt_pool_opts_init(&o);
    o.loop = &w->loop;
    o.url = cfg->db;
    o.name = "primary";
    o.seg = w->seg;
    o.worker_index = w->index;
    o.token = w->token;
    o.slow_query_ms = cfg->slow_query_ms;
    rc = rt_pool_create(&w->pool, &o);
    if (rc < 0) {
        rt_log(RT_LOG_ERROR, "cannot create the connection pool", json_pack("{s:i}", "error", rc));
        return rc;
    }
    w->read_pool = w->pool;
    if (!cfg->replica)
        return create_router(w);
    if (app_name_is_default(cfg->replica) &&
        rt_dburl_set((struct rt_dburl *)cfg->replica, "application_name", app) < 0)
        return -ENOMEM;
    o.url = cfg->replica;
    o.name = "replica";
    o.seg = NULL; /* the replica has its own server, so its own limit, not our budget */
    o.stats = NULL;
    rc = rt_pool_create(&w->read_pool, &o);
    if (rc < 0) {
        rt_log(RT_LOG_ERROR, "cannot create the replica pool", json_pack("{s:i}", "error", rc));
        return rc;
    }
    return create_router(w);
}

void worker_main(const struct worker_config *cfg, struct shm_segment *seg, int index)
{
    struct worker_ctx w;
    pid_t parent = getppid();
    char title[64];
    const char *role_name;
    int rc;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* The supervisor may have died between fork() and prctl(). */
    if (getppid() != parent)
        _exit(1);
    reset_signals();

    memset(&w, 0, sizeof w);
    w.cfg = cfg;
    w.seg = seg;
    w.index = index;
    w.self = &seg->workers[index];
    /* Relaxed: the supervisor wrote them before it forked us. */
    w.role = atomic_load_explicit(&w.self->role, memory_order_relaxed);
    w.role_index = (int)atomic_load_explicit(&w.self->role_index, memory_order_relaxed);
    w.generation = atomic_load_explicit(&w.self->generation, memory_order_relaxed);
    w.token = shm_token((uint32_t)index, w.generation);

    role_name = w.role == SHM_ROLE_WEB ? "web" : "job";
    snprintf(title, sizeof title, "pgcorral: %s %d", role_name, w.role_index);
    worker_title_set(title);
    rt_log_set_identity(role_name, w.role_index);

    if (uv_loop_init(&w.loop) != 0) {
        rt_logf(RT_LOG_ERROR, "cannot create the event loop");
        _exit(1);
    }
    uv_timer_init(&w.loop, &heartbeat_timer);
    heartbeat_timer.data = &w;
    uv_timer_init(&w.loop, &drain_deadline);
    drain_deadline.data = &w;
    uv_signal_init(&w.loop, &term_signal);
    term_signal.data = &w;
    uv_signal_init(&w.loop, &int_signal);
    int_signal.data = &w;
    uv_signal_start(&term_signal, on_term, SIGTERM);
    /* Ctrl-C in a terminal reaches the whole process group: the supervisor decides. */
    uv_signal_start(&int_signal, on_term, SIGINT);
    uv_signal_init(&w.loop, &usr1_signal);
    usr1_signal.data = &w;
    uv_signal_start(&usr1_signal, on_usr1, SIGUSR1);
    unblock_signals();

    on_heartbeat(&heartbeat_timer);
    uv_timer_start(&heartbeat_timer, on_heartbeat, (uint64_t)cfg->heartbeat_ms,
                   (uint64_t)cfg->heartbeat_ms);

    if (worker_pools_create(&w) < 0)
        _exit(WORKER_EXIT_CONFIG);
    if (role_ops(w.role)->start) {
        rc = role_ops(w.role)->start(&w);
        if (rc < 0) {
            rt_log(RT_LOG_ERROR, "worker cannot start",
                   json_pack("{s:s}", "error", rc > -4096 ? strerror(-rc) : "config"));
            _exit(WORKER_EXIT_CONFIG);
        }
    }
    atomic_store_explicit(&w.self->state, SHM_STATE_READY, memory_order_release);

    uv_run(&w.loop, UV_RUN_DEFAULT);
    /* Handles closed by worker_drained(): run once more for their close callbacks. */
    uv_run(&w.loop, UV_RUN_DEFAULT);
    /* The pools are closed: nothing started through the router is pending. */
    rt_read_router_destroy(w.read_router);
    uv_loop_close(&w.loop);
    rt_logf(RT_LOG_INFO, "worker exited cleanly");
    _exit(0);
}
