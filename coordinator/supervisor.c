/*
 * The supervisor: preflight, the shared segment, forking web and job workers, reaping and
 * respawning them with backoff, and the TERM/INT/QUIT shutdown sequence. It runs one libuv
 * loop; signals arrive through a signalfd so that forked children inherit no handlers.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "coordinator/sup_int.h"

#define RESPAWN_BACKOFF_START_MS 100.0
#define RESPAWN_BACKOFF_MAX_MS 15000.0
#define RESPAWN_BACKOFF_RESET_US (30ULL * 1000000)
#define FAST_STOP_GRACE_MS 5000
#define HEARTBEAT_MS 1000

/* The signals the supervisor takes through its signalfd; blocked for normal delivery. */
static const int sup_signals[] = {SIGTERM, SIGINT,  SIGQUIT, SIGCHLD, SIGHUP,
                                  SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU};

int sup_live_workers(const struct sup *s)
{
    int n = 0;
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        n += s->workers[i].pid > 0;
    return n;
}

static void signal_all(struct sup *s, int sig)
{
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        if (s->workers[i].pid > 0)
            kill(s->workers[i].pid, sig);
}

static void on_jobs_stopped(void *arg)
{
    struct sup *s = arg;
    uv_stop(&s->loop);
}

/* When the last worker is gone during a stop, the job connection closes and the loop ends. */
static void maybe_finish(struct sup *s)
{
    if (s->phase == SUP_RUNNING || sup_live_workers(s) > 0 || s->finishing)
        return;
    s->finishing = true;
    rt_logf(RT_LOG_INFO, "all workers stopped; supervisor exiting");
    if (s->jobs) {
        sup_jobq_stop(s->jobs, on_jobs_stopped, s);
        s->jobs = NULL;
    } else {
        uv_stop(&s->loop);
    }
}

static void on_deadline(uv_timer_t *t)
{
    struct sup *s = t->data;
    int n = sup_live_workers(s);
    if (n == 0)
        return;
    rt_log(RT_LOG_WARN, "shutdown deadline reached; killing workers that are still running",
           json_pack("{s:i}", "workers", n));
    signal_all(s, SIGKILL);
}

void sup_shutdown(struct sup *s, bool fast)
{
    /* A stop during a binary upgrade stops the new supervisor too (it has not taken over). */
    if (s->upgrade.child > 0 && !s->upgrade.handed_off)
        kill(s->upgrade.child, fast ? SIGQUIT : SIGTERM);
    if (fast && s->phase != SUP_FAST) {
        s->phase = SUP_FAST;
        rt_logf(RT_LOG_INFO, "fast stop: workers stop at once");
        signal_all(s, SIGQUIT);
        uv_timer_start(&s->deadline, on_deadline, FAST_STOP_GRACE_MS, 0);
    } else if (!fast && s->phase == SUP_RUNNING) {
        s->phase = SUP_DRAINING;
        rt_log(RT_LOG_INFO, "graceful stop: draining workers",
               json_pack("{s:i,s:i}", "workers", sup_live_workers(s), "shutdown_timeout_s",
                         s->cfg->shutdown_timeout_s));
        signal_all(s, SIGTERM);
        uv_timer_start(&s->deadline, on_deadline, (uint64_t)s->cfg->shutdown_timeout_s * 1000, 0);
    } else {
        return;
    }
    sup_notify_stopping(s);
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        if (s->workers[i].timer_ready)
            uv_timer_stop(&s->workers[i].respawn_timer);
    maybe_finish(s);
}

static void on_respawn_timer(uv_timer_t *t)
{
    struct sup *s = t->loop->data;
    struct sup_worker *w = t->data;

    if (s->phase == SUP_RUNNING)
        sup_worker_spawn(s, (int)(w - s->workers));
}

/* A worker exited: free what it held, then respawn it after its backoff. */
static void on_worker_exit(struct sup *s, int index, int status)
{
    struct sup_worker *w = &s->workers[index];
    uint64_t now = shm_now_us();
    int freed;
    json_t *fields;

    /* Its claimed jobs run again at once, not after a lease; those that never started get
     * their attempt back (the mark is read before the retire clears it). Acquire: pairs
     * with the worker's release; the worker is gone, so the value is final. */
    if (w->role == SHM_ROLE_JOB && s->jobs)
        sup_jobq_worker_died(s->jobs, w->pid, w->generation,
                             atomic_load_explicit(&s->seg->workers[index].jobs_unstarted_from,
                                                  memory_order_acquire));
    freed = shm_worker_retire(s->seg, index);
    /* Release: a reader that sees DEAD sees the retire's folded counters too. */
    atomic_store_explicit(&s->seg->workers[index].state, SHM_STATE_DEAD, memory_order_release);
    fields = json_pack("{s:s,s:i,s:i,s:i}", "worker_role", rt_role_name(w->role), "worker_index",
                       w->role_index, "worker_pid", (int)w->pid, "slots_reclaimed", freed);
    if (WIFEXITED(status))
        json_object_set_new(fields, "exit_code", json_integer(WEXITSTATUS(status)));
    else if (WIFSIGNALED(status))
        json_object_set_new(fields, "signal", json_string(strsignal(WTERMSIG(status))));
    w->pid = 0;
    w->abort_sent_us = 0;

    if (s->phase != SUP_RUNNING || w->retiring) {
        rt_log(RT_LOG_INFO, "worker stopped", fields);
        if (w->retiring) {
            w->used = false;
            w->retiring = false;
            atomic_store_explicit(&s->seg->workers[index].state, SHM_STATE_EMPTY,
                                  memory_order_release);
        }
        maybe_finish(s);
        sup_reload_step(s);
        return;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_CONFIG) {
        w->fatal = true;
        rt_log(RT_LOG_ERROR, "worker failed on its configuration; not respawning it", fields);
        if (sup_live_workers(s) == 0) {
            s->exit_status = WORKER_EXIT_CONFIG;
            sup_shutdown(s, false);
        }
        return;
    }
    if (now - w->started_us >= RESPAWN_BACKOFF_RESET_US)
        w->backoff_ms = RESPAWN_BACKOFF_START_MS;
    json_object_set_new(fields, "respawn_in_ms", json_integer((json_int_t)w->backoff_ms));
    rt_log(RT_LOG_WARN, "worker died; respawning", fields);
    uv_timer_start(&w->respawn_timer, on_respawn_timer, (uint64_t)w->backoff_ms, 0);
    w->backoff_ms *= 1.5;
    if (w->backoff_ms > RESPAWN_BACKOFF_MAX_MS)
        w->backoff_ms = RESPAWN_BACKOFF_MAX_MS;
}

static void reap_children(struct sup *s)
{
    int status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (sup_upgrade_reaped(s, pid, status))
            continue;
        for (int i = 0; i < SHM_MAX_WORKERS; i++) {
            if (s->workers[i].pid == pid) {
                on_worker_exit(s, i, status);
                break;
            }
        }
    }
}

static void on_signal(uv_poll_t *p, int status, int events)
{
    struct sup *s = p->data;
    struct signalfd_siginfo si;
    char err[1024];

    while (read(s->signal_fd, &si, sizeof si) == (ssize_t)sizeof si) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            reap_children(s);
            break;
        case SIGTERM:
        case SIGINT:
            sup_shutdown(s, s->phase != SUP_RUNNING);
            break;
        case SIGQUIT:
            sup_shutdown(s, true);
            break;
        case SIGHUP:
            rt_logf(RT_LOG_INFO, "SIGHUP: rolling restart");
            if (sup_reload(s, err, sizeof err) < 0)
                rt_log(RT_LOG_ERROR, "reload refused", json_pack("{s:s}", "reason", err));
            break;
        case SIGTTIN:
        case SIGTTOU: {
            int n = sup_role_count(s, SHM_ROLE_JOB) + (si.ssi_signo == SIGTTIN ? 1 : -1);
            if (sup_scale(s, SHM_ROLE_JOB, n, err, sizeof err) < 0)
                rt_log(RT_LOG_WARN, "scaling refused", json_pack("{s:s}", "reason", err));
            break;
        }
        case SIGUSR2:
            rt_logf(RT_LOG_INFO, "SIGUSR2: binary upgrade");
            if (sup_upgrade_begin(s, err, sizeof err) < 0)
                rt_log(RT_LOG_ERROR, "binary upgrade refused", json_pack("{s:s}", "reason", err));
            break;
        case SIGUSR1:
            if (s->cfg->log_file) {
                int rc = rt_log_set_file(s->cfg->log_file);
                if (rc < 0)
                    fprintf(stderr, "pgcorral: cannot reopen log file %s: %s\n", s->cfg->log_file,
                            strerror(-rc));
            }
            rt_logf(RT_LOG_INFO, "SIGUSR1: log file reopened");
            signal_all(s, SIGUSR1);
            break;
        }
    }
}

/* Closes the descriptor behind one of the supervisor's handles (in a child). */
static void close_handle_fd(uv_handle_t *h, void *arg)
{
    uv_os_fd_t fd;
    if (uv_fileno(h, &fd) == 0)
        close(fd);
}

/*
 * In a new child: close what belongs to the supervisor alone (its loop's epoll fd, the
 * signalfd, the control socket and its clients, its database connections: every fd behind
 * a handle of its loop). Not a sweep of all descriptors: libuv re-creates global fds of
 * its own in the child (pthread_atfork) that must stay open.
 */
static void close_supervisor_fds(struct sup *s)
{
    uv_walk(&s->loop, close_handle_fd, NULL);
    close(uv_backend_fd(&s->loop));
    /* Only the supervisor speaks for the service (NotifyAccess=main). */
    sup_notify_close(&s->notify);
    sup_upgrade_close_in_child(s);
}

/* What the next forked worker gets: the current configuration and sockets. */
static void worker_config_update(struct sup *s)
{
    const struct sup_config *cfg = s->cfg;

    s->wcfg.db = cfg->db;
    s->wcfg.replica = cfg->replica;
    s->wcfg.slow_query_ms = cfg->slow_query_ms;
    s->wcfg.health_timeout_ms = cfg->health_timeout_s * 1000;
    s->wcfg.shutdown_timeout_s = cfg->shutdown_timeout_s;
    s->wcfg.heartbeat_ms = HEARTBEAT_MS;
    s->wcfg.io_mode = cfg->io_mode;
    s->wcfg.listen_fds = s->listen_fds;
    s->wcfg.n_listen_fds = s->n_listen_fds;
    s->wcfg.listen_addr = cfg->listen_addr;
    s->wcfg.admin_fds = cfg->admin_listen ? s->admin_fds : NULL;
    s->wcfg.n_admin_fds = s->n_admin_fds;
    s->wcfg.admin_listen_addr = cfg->admin_listen;
    s->wcfg.api_token = cfg->api_token;
    s->wcfg.access_log = cfg->access_log;
    s->wcfg.plugins = (const char *const *)cfg->plugins;
    s->wcfg.control_path = cfg->control_path;
    s->wcfg.job_wake_fds = s->job_wake_fds;
    s->wcfg.log_file = cfg->log_file;
    job_options_init(&s->job_opts);
    s->job_opts.queues = cfg->queues ? (const char *const *)cfg->queue_list : NULL;
    s->job_opts.keep_completed = cfg->keep_completed_s != 0;
    s->job_opts.limited_queues =
        cfg->nlimited > 0 ? (const char *const *)cfg->limited_queues : NULL;
    s->job_opts.queue_limits = cfg->queue_limits;
    s->job_opts.node = s->node;
    s->wcfg.jobs = &s->job_opts;
    s->wcfg.node = s->node;
}

void sup_worker_spawn(struct sup *s, int index)
{
    struct sup_worker *w = &s->workers[index];
    struct shm_worker *sw = &s->seg->workers[index];
    pid_t pid;

    if (!w->timer_ready) {
        uv_timer_init(&s->loop, &w->respawn_timer);
        w->respawn_timer.data = w;
        w->timer_ready = true;
    }
    if (w->generation != 0)
        w->restarts++;
    w->epoch = s->epoch;
    w->fatal = false;
    w->generation = ++s->next_generation;
    w->started_us = shm_now_us();
    /* Relaxed: the release store of STARTING publishes them to readers in other processes
     * (who check the state first), and the child reads them after fork. */
    atomic_store_explicit(&sw->generation, w->generation, memory_order_relaxed);
    atomic_store_explicit(&sw->role, (uint32_t)w->role, memory_order_relaxed);
    atomic_store_explicit(&sw->role_index, (uint32_t)w->role_index, memory_order_relaxed);
    atomic_store_explicit(&sw->started_us, w->started_us, memory_order_relaxed);
    atomic_store_explicit(&sw->heartbeat_us, w->started_us, memory_order_relaxed);
    atomic_store_explicit(&sw->state, SHM_STATE_STARTING, memory_order_release);

    worker_config_update(s);
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        rt_log(RT_LOG_ERROR, "fork failed; retrying",
               json_pack("{s:s,s:i}", "error", strerror(errno), "worker_index", w->role_index));
        atomic_store_explicit(&sw->state, SHM_STATE_DEAD, memory_order_release);
        uv_timer_start(&w->respawn_timer, on_respawn_timer, (uint64_t)w->backoff_ms, 0);
        return;
    }
    if (pid == 0) {
        close_supervisor_fds(s);
        worker_main(&s->wcfg, s->seg, index);
    }
    w->pid = pid;
    atomic_store_explicit(&sw->pid, pid, memory_order_relaxed); /* shown, and compared */
    rt_log(RT_LOG_INFO, "worker started",
           json_pack("{s:s,s:i,s:i,s:i}", "worker_role", rt_role_name(w->role), "worker_index",
                     w->role_index, "worker_pid", (int)pid, "generation", (int)w->generation));
}

/* Blocks the supervisor's signals and opens the signalfd that delivers them to the loop. */
static int signals_open(struct sup *s)
{
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof sup_signals / sizeof sup_signals[0]; i++)
        sigaddset(&set, sup_signals[i]);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        return -errno;
    s->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->signal_fd < 0)
        return -errno;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* The descriptors sup_main opened itself, on its way out. */
static void close_fds(struct sup *s)
{
    if (s->signal_fd >= 0)
        close(s->signal_fd);
    for (int i = 0; i < s->n_listen_fds; i++)
        close(s->listen_fds[i]);
    if (s->inherited_listen_fd >= 0)
        close(s->inherited_listen_fd);
    for (int i = 0; i < s->n_admin_fds; i++)
        close(s->admin_fds[i]);
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        if (s->job_wake_fds[i] >= 0)
            close(s->job_wake_fds[i]);
    sup_notify_close(&s->notify);
    sup_upgrade_close_in_child(s);
    if (s->upgrade.chan >= 0)
        close(s->upgrade.chan);
    s->upgrade.chan = -1;
}

/*
 * The HTTP listening sockets of the first n web workers: one SO_REUSEPORT socket each,
 * bound to --listen. Under socket activation only the socket systemd passed is taken:
 * each web worker gets a dup of it when it is added (ensure_fd in scaling.c), so they
 * share its queue. Returns 0 or -errno with the reason in err.
 */
static int listen_open(struct sup *s, int n, char *err, size_t errlen)
{
    int rc = sup_listen_inherited(&s->inherited_listen_fd, &s->listen_port, err, errlen);

    if (rc != 0 || n == 0)
        return rc < 0 ? rc : 0;
    rc = sup_listen_open(s->cfg->listen_addr, n, s->listen_fds, &s->listen_port, err, errlen);
    if (rc == 0)
        s->n_listen_fds = n;
    return rc;
}

/*
 * The new side of a binary upgrade: the segment the old supervisor made (B and every slot
 * as they are: the old workers keep theirs) and its listening sockets. Returns 0, or -1
 * with the reason in err.
 */
static int adopt_segment(struct sup *s, const struct sup_upgrade_fds *fds, char *err, size_t errlen)
{
    int rc = shm_adopt(&s->seg, fds->seg);

    if (rc == -EPROTO) {
        snprintf(err, errlen,
                 "the running supervisor's shared segment has another layout than this build's "
                 "(version %d): stop and start instead of upgrading in place",
                 SHM_LAYOUT_VERSION);
        close(fds->seg);
        return -1;
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot map the inherited shared segment: %s", strerror(-rc));
        close(fds->seg);
        return -1;
    }
    s->seg->supervisor_pid = (int32_t)getpid(); /* its process_* metrics are ours now */
    if ((uint32_t)s->budget != shm_budget_size(s->seg)) {
        snprintf(err, errlen,
                 "the budget cannot change in a binary upgrade: the running one is %u, the "
                 "configuration now says %d (restart for that)",
                 shm_budget_size(s->seg), s->budget);
        return -1;
    }
    return 0;
}

static int adopt_listen(struct sup *s, const struct sup_upgrade_fds *fds)
{
    int fd, port;

    s->inherited_listen_fd = fds->activated;
    for (int i = 0; i < fds->nlisten; i++) {
        s->listen_fds[i] = fds->listen[i];
        fcntl(fds->listen[i], F_SETFD, FD_CLOEXEC);
    }
    if (s->inherited_listen_fd >= 0)
        fcntl(s->inherited_listen_fd, F_SETFD, FD_CLOEXEC);
    s->n_listen_fds = fds->nlisten;
    for (int i = 0; i < fds->nadmin; i++) {
        s->admin_fds[i] = fds->admin[i];
        fcntl(fds->admin[i], F_SETFD, FD_CLOEXEC);
    }
    s->n_admin_fds = fds->nadmin;
    if (s->n_admin_fds > 0 && (port = sup_listen_port(s->admin_fds[0])) >= 0)
        s->admin_port = port;
    fd = s->inherited_listen_fd >= 0 ? s->inherited_listen_fd
         : s->n_listen_fds > 0       ? s->listen_fds[0]
                                     : -1;
    if (fd >= 0 && (port = sup_listen_port(fd)) >= 0)
        s->listen_port = port;
    return 0;
}

/*
 * The cluster budget C recorded when this node is the first: --cluster-budget, or what the
 * server allows: max_connections - reserved - the connections others hold - a margin
 * (5 %, at least 2) for the superuser's psql and the like; never less than our own B,
 * which the preflight found to fit, so that one node alone behaves as without a cluster.
 */
static int default_cluster_budget(const struct sup_config *cfg, const struct sup_preflight *pf,
                                  int budget)
{
    int margin = pf->max_connections / 20 > 2 ? pf->max_connections / 20 : 2;
    int room = pf->max_connections - pf->superuser_reserved - pf->reserved - pf->other_connections -
               margin;

    if (cfg->cluster_budget > 0)
        return cfg->cluster_budget;
    return room > budget ? room : budget;
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int sup_main(int argc, char **argv)
{
    struct sup_config cfg;
    static struct sup s; /* large; lives for the process */
    char err[1024];
    const char *errpos = NULL;
    struct sup_upgrade_fds ufds;
    int upgrading, capacity;
    char *tasks = NULL;
    struct rt_dburl *jobq_db = NULL; /* the job-queue connection's own URL */
    struct sup_lease_ask ask;
    struct sup_lease_grant lease;

    rt_log_set_identity("supervisor", -1);
    if (sup_config_parse(&cfg, argc, argv, err, sizeof err) < 0) {
        if (strcmp(err, "help") == 0) {
            sup_config_free(&cfg);
            return 0;
        }
        fprintf(stderr, "pgcorral: %s\n", err);
        sup_config_free(&cfg);
        return 2;
    }
    rt_log_set_format(strcmp(cfg.log_format, "text") == 0 ? RT_LOG_TEXT : RT_LOG_JSON);
    if (cfg.log_file) {
        int rc = rt_log_set_file(cfg.log_file);
        if (rc < 0) {
            fprintf(stderr, "pgcorral: --log-file %s: %s\n", cfg.log_file, strerror(-rc));
            sup_config_free(&cfg);
            return 2;
        }
    }
    s.cfg = &cfg;
    s.argc = argc;
    s.argv = argv;
    s.signal_fd = -1;
    s.control_fd = -1;
    s.inherited_listen_fd = -1;
    s.notify.fd = -1;
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        s.job_wake_fds[i] = -1;
    s.started_us = shm_now_us();
    s.budget = sup_config_budget(&cfg);
    s.budget_shared = s.budget < (cfg.web_workers + cfg.job_workers) * cfg.db->connection_limit + 1;
    upgrading = sup_upgrade_init(&s, &ufds, err, sizeof err);
    if (upgrading < 0) {
        errpos = "upgrade";
        goto fail;
    }
    /* A broken NOTIFY_SOCKET does not stop us: systemd's start timeout will say it. */
    if (sup_notify_init(&s.notify, err, sizeof err) < 0)
        rt_log(RT_LOG_WARN, "cannot notify the service manager", json_pack("{s:s}", "error", err));
    if (upgrading) {
        /* Until the old supervisor hands over, it speaks for the service, also when we
         * fail: systemd must not read our "start-up failed" as the service's. */
        s.upgrade.held_notify_fd = s.notify.fd;
        s.notify.fd = -1;
        rt_log(RT_LOG_INFO, "binary upgrade: taking over",
               json_pack("{s:s,s:i}", "version", PGCORRAL_VERSION, "old_pid", (int)ufds.parent));
        if (adopt_segment(&s, &ufds, err, sizeof err) < 0) {
            errpos = "upgrade";
            goto fail;
        }
        adopt_listen(&s, &ufds);
        s.next_generation = ufds.next_generation;
    }

    if (sup_preflight_wait(cfg.db, cfg.wait_for_db_s, &s.notify, &s.preflight, err, sizeof err) <
        0) {
        errpos = "preflight";
        goto fail;
    }
    /* Our own connections (the old generation's, in the segment's slots) are no one
     * else's: they stay inside B whatever overlaps. */
    if (upgrading) {
        s.preflight.other_connections -= (int)shm_budget_in_use(s.seg);
        if (s.preflight.other_connections < 0)
            s.preflight.other_connections = 0;
    }
    if (sup_preflight_check_budget(&cfg, &s.preflight, err, sizeof err) < 0) {
        errpos = "budget";
        goto fail;
    }
    /* Plugins are loaded once here only to fail fast; workers load them after fork. */
    if (plugin_check((const char *const *)cfg.plugins, &tasks, err, sizeof err) < 0) {
        errpos = "plugin";
        goto fail;
    }
    if (sup_migrate(cfg.db, NULL, err, sizeof err) < 0) {
        errpos = "migrate";
        goto fail;
    }
    /* Registered before any worker serves, so that its tasks can be enqueued at once. */
    if (cfg.node_name)
        snprintf(s.node, sizeof s.node, "%s", cfg.node_name);
    else
        sup_node_default_name(s.node, sizeof s.node);
    ask.want = s.budget;
    ask.in_use = upgrading ? (int)shm_budget_in_use(s.seg) : 0;
    ask.ttl_s = cfg.lease_ttl_s;
    ask.default_budget = default_cluster_budget(&cfg, &s.preflight, s.budget);
    if (sup_node_register(cfg.db, s.node, tasks, upgrading, &ask, &lease, err, sizeof err) < 0) {
        errpos = "node";
        goto fail;
    }
    if (cfg.cluster_budget > 0 && cfg.cluster_budget != lease.budget)
        rt_log(
            RT_LOG_WARN,
            "--cluster-budget differs from the budget recorded for the cluster, which "
            "stays; change it with pgcorral cluster set-budget",
            json_pack("{s:i,s:i}", "cluster_budget", cfg.cluster_budget, "recorded", lease.budget));
    if (lease.granted < s.budget)
        rt_log(RT_LOG_WARN,
               "the cluster budget leaves this node less than its budget for now: its "
               "workers wait for slots until other nodes give some back",
               json_pack("{s:i,s:i,s:i,s:i}", "granted", lease.granted, "budget", s.budget,
                         "cluster_budget", lease.budget, "nodes", lease.nodes));
    /* The web workers open the access log after fork: fail here, once, when they cannot. */
    if (cfg.access_log && strcmp(cfg.access_log, "-") != 0) {
        int fd = open(cfg.access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(err, sizeof err, "--access-log %s: %s", cfg.access_log, strerror(errno));
            errpos = "access-log";
            goto fail;
        }
        close(fd);
    }
    if (!upgrading && listen_open(&s, cfg.web_workers, err, sizeof err) < 0) {
        errpos = "listen";
        goto fail;
    }
    if (!upgrading && cfg.web_workers > 0 && cfg.admin_listen &&
        sup_listen_open_as("--admin-listen", cfg.admin_listen, cfg.web_workers, s.admin_fds,
                           &s.admin_port, err, sizeof err) < 0) {
        errpos = "admin-listen";
        goto fail;
    }
    if (!upgrading && cfg.admin_listen)
        s.n_admin_fds = cfg.web_workers;
    /* Room for the largest budget this run may grow to: the cluster's, or ours. */
    capacity = lease.budget > s.budget ? lease.budget : s.budget;
    if (capacity > SHM_MAX_SLOTS)
        capacity = SHM_MAX_SLOTS;
    if (!upgrading && (shm_create(&s.seg, (uint32_t)capacity) < 0 ||
                       shm_budget_resize(s.seg, (uint32_t)s.budget) < 0)) {
        snprintf(err, sizeof err, "cannot create the shared segment for %d slots", capacity);
        errpos = "shm";
        goto fail;
    }
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        s.job_wake_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s.job_wake_fds[i] < 0) {
            snprintf(err, sizeof err, "cannot create eventfds: %s", strerror(errno));
            errpos = "eventfd";
            goto fail;
        }
    }
    if (uv_loop_init(&s.loop) != 0) {
        snprintf(err, sizeof err, "cannot create the event loop");
        errpos = "loop";
        goto fail;
    }
    s.loop.data = &s;
    if (signals_open(&s) < 0) {
        snprintf(err, sizeof err, "cannot set up signal handling: %s", strerror(errno));
        errpos = "signals";
        goto fail;
    }
    /* The new side of an upgrade serves the inherited control socket once it took over. */
    if (!upgrading && sup_control_start(&s, err, sizeof err) < 0) {
        errpos = "control";
        goto fail;
    }
    /* The connection's own copy of the URL: a reload frees the configuration's (and may
     * name another database, which the connection keeps until the next start). */
    if (rt_dburl_parse(cfg.database_url, &jobq_db, err, sizeof err) < 0) {
        errpos = "jobs";
        goto fail;
    }
    /* Marked like the workers' connections (see worker_pools_create). */
    if (strcmp(rt_dburl_get(jobq_db, "application_name"), "pgcorral") == 0) {
        char app[SUP_NODE_NAME_MAX + 32];
        snprintf(app, sizeof app, "pgcorral supervisor @%s", s.node);
        if (rt_dburl_set(jobq_db, "application_name", app) < 0) {
            snprintf(err, sizeof err, "out of memory");
            errpos = "jobs";
            goto fail;
        }
    }
    struct sup_jobq_opts jo;
    sup_jobq_opts_init(&jo);
    jo.loop = &s.loop;
    jo.db = jobq_db;
    jo.seg = s.seg;
    jo.job_wake_fds = s.job_wake_fds;
    jo.token = shm_token(SHM_SUPERVISOR_INDEX, s.upgrade.sup_generation);
    jo.keep_completed_s = cfg.keep_completed_s;
    jo.keep_failed_s = cfg.keep_failed_s;
    jo.node = s.node;
    jo.tasks = tasks;
    jo.cron = (const char *const *)cfg.cron;
    jo.lease_ttl_s = cfg.lease_ttl_s;
    jo.lease_heartbeat_s = cfg.lease_heartbeat_s;
    jo.first_lease = lease;
    if (sup_jobq_start(&s.jobs, &jo) < 0) {
        snprintf(err, sizeof err, "cannot start the job wake-up connection");
        errpos = "jobs";
        goto fail;
    }
    free(tasks); /* the job connection keeps its own copy */
    tasks = NULL;

    uv_poll_init(&s.loop, &s.signal_poll, s.signal_fd);
    s.signal_poll.data = &s;
    uv_poll_start(&s.signal_poll, UV_READABLE, on_signal);
    uv_timer_init(&s.loop, &s.deadline);
    s.deadline.data = &s;
    uv_unref((uv_handle_t *)&s.deadline);

    rt_log(RT_LOG_INFO, "pgcorral starting",
           json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:s,s:s,s:s}", "version", PGCORRAL_VERSION,
                     "git", rt_version_git(), "web", cfg.web_workers, "jobs", cfg.job_workers,
                     "budget", s.budget, "connection_limit", cfg.db->connection_limit,
                     "max_connections", s.preflight.max_connections, "database", cfg.db->redacted,
                     "control", cfg.control_path, "server_version", s.preflight.server_version));
    if (cfg.web_workers > 0 || s.inherited_listen_fd >= 0) {
        char bound[80];
        int fd = s.inherited_listen_fd >= 0 ? s.inherited_listen_fd : s.listen_fds[0];
        rt_log(RT_LOG_INFO, "listening",
               json_pack("{s:s,s:s,s:i,s:b}", "listen", cfg.listen_addr, "address",
                         sup_listen_name(fd, bound, sizeof bound), "port", s.listen_port,
                         "socket_activation", s.inherited_listen_fd >= 0));
        if (s.n_admin_fds > 0)
            rt_log(RT_LOG_INFO, "admin listening",
                   json_pack("{s:s,s:s,s:i,s:b}", "admin_listen", cfg.admin_listen, "address",
                             sup_listen_name(s.admin_fds[0], bound, sizeof bound), "port",
                             s.admin_port, "api_token", cfg.api_token != NULL));
        /* Without an admin listener or a token, stats, metrics and the jobs routes answer
         * whoever reaches the public listener: fine on loopback, not elsewhere. */
        if (!cfg.admin_listen && !cfg.api_token && !sup_listen_is_loopback(fd))
            rt_log(RT_LOG_WARN,
                   "the HTTP listener is not on loopback and /metrics, /api/v1/stats and the "
                   "jobs routes are open to anyone who reaches it; set --admin-listen "
                   "(e.g. 127.0.0.1:9090) or PGCORRAL_API_TOKEN",
                   json_pack("{s:s,s:s}", "listen", cfg.listen_addr, "address",
                             sup_listen_name(fd, bound, sizeof bound)));
    }

    s.reload_new = -1;
    s.reload_old = -1;
    for (int i = 0; i < cfg.web_workers; i++)
        sup_worker_add(&s, SHM_ROLE_WEB, i);
    for (int i = 0; i < cfg.job_workers; i++)
        sup_worker_add(&s, SHM_ROLE_JOB, i);
    sup_housekeeping_start(&s);
    if (upgrading)
        sup_upgrade_adopt_start(&s);
    else
        sup_notify_start(&s);

    uv_run(&s.loop, UV_RUN_DEFAULT);

    sup_control_stop(&s);
    uv_walk(&s.loop, close_walk_cb, NULL);
    uv_run(&s.loop, UV_RUN_DEFAULT);
    uv_loop_close(&s.loop);
    rt_dburl_destroy(jobq_db);
    close_fds(&s);
    shm_destroy(s.seg);
    sup_config_free(&cfg);
    return s.exit_status;

fail:
    /* Start-up errors are for the person at the terminal: plain text, several lines. */
    fprintf(stderr, "pgcorral: %s: %s\n", errpos, err);
    /* The old supervisor logs it and keeps serving; systemd hears from it, not us. */
    if (s.upgrade.adopting)
        sup_upgrade_fail(&s, errpos, err);
    sup_notify_status(&s.notify, "start-up failed: %s: %s", errpos, err);
    free(tasks);
    rt_dburl_destroy(jobq_db);
    close_fds(&s);
    shm_destroy(s.seg);
    sup_config_free(&cfg);
    return 1;
}
