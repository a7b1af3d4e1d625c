/*
 * Changing the worker table while running: adding and retiring workers, `scale` (and
 * TTIN/TTOU), and the rolling restart of `reload` (and HUP), in which each new worker is
 * ready before the one it replaces starts to drain. The budget slots in shm keep the open
 * connections at or under B throughout, whatever overlaps.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "coordinator/sup_int.h"

#define RESPAWN_BACKOFF_START_MS 100.0

int sup_role_count(const struct sup *s, enum shm_role role)
{
    int n = 0;
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct sup_worker *w = &s->workers[i];
        n += w->used && !w->retiring && w->role == role;
    }
    return n;
}

/* Whether some entry other than skip serves role/role_index and is not retiring. */
static bool role_index_taken(const struct sup *s, enum shm_role role, int role_index, int skip)
{
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct sup_worker *w = &s->workers[i];
        if (i != skip && w->used && !w->retiring && w->role == role && w->role_index == role_index)
            return true;
    }
    return false;
}

/* Opens sockets on addr (the setting flag) until fds[role_index] exists: the first one
 * decides the port (the supervisor may have started with --web 0), the others share it.
 * With inherited_fd >= 0 (socket activation), each is a dup of that socket instead. */
static int ensure_fd(const char *flag, const char *addr, int inherited_fd, int *fds, int *n,
                     int *port, int role_index)
{
    char err[256];
    while (*n <= role_index) {
        /* Socket activation: every web worker accepts on the one socket systemd passed. */
        if (inherited_fd >= 0) {
            int fd = fcntl(inherited_fd, F_DUPFD_CLOEXEC, 0);
            if (fd < 0) {
                int e = errno;
                rt_log(RT_LOG_ERROR, "cannot dup the passed listening socket for a new web worker",
                       json_pack("{s:s}", "error", strerror(e)));
                return -e;
            }
            fds[(*n)++] = fd;
            continue;
        }
        int rc = *n == 0 ? sup_listen_open_as(flag, addr, 1, fds, port, err, sizeof err)
                         : sup_listen_add(fds[0], &fds[*n], err, sizeof err);
        if (rc < 0) {
            rt_log(RT_LOG_ERROR, "cannot open a listening socket for a new web worker",
                   json_pack("{s:s}", "error", err));
            return rc;
        }
        (*n)++;
    }
    return 0;
}

/* A web worker serves listen_fds[role_index] (and admin_fds[role_index] with
 * --admin-listen): open one more socket on the same port. */
static int ensure_listen_fd(struct sup *s, int role_index)
{
    int rc;

    if (role_index >= SHM_MAX_WORKERS)
        return -ENOSPC;
    rc = ensure_fd("--listen", s->cfg->listen_addr, s->inherited_listen_fd, s->listen_fds,
                   &s->n_listen_fds, &s->listen_port, role_index);
    if (rc == 0 && s->cfg->admin_listen)
        rc = ensure_fd("--admin-listen", s->cfg->admin_listen, -1, s->admin_fds, &s->n_admin_fds,
                       &s->admin_port, role_index);
    return rc;
}

int sup_worker_add(struct sup *s, enum shm_role role, int role_index)
{
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        struct sup_worker *w = &s->workers[i];
        if (!sup_entry_free(s, i))
            continue;
        if (role == SHM_ROLE_WEB && ensure_listen_fd(s, role_index) < 0)
            return -EMFILE;
        w->used = true;
        w->retiring = false;
        w->role = role;
        w->role_index = role_index;
        w->restarts = 0;
        w->generation = 0;
        w->backoff_ms = RESPAWN_BACKOFF_START_MS;
        sup_worker_spawn(s, i);
        return i;
    }
    return -ENOSPC;
}

void sup_worker_retire(struct sup *s, int index, const char *why)
{
    struct sup_worker *w = &s->workers[index];

    if (!w->used || w->retiring)
        return;
    w->retiring = true;
    if (w->timer_ready)
        uv_timer_stop(&w->respawn_timer);
    rt_log(RT_LOG_INFO, "worker draining",
           json_pack("{s:s,s:i,s:i,s:s}", "worker_role", rt_role_name(w->role), "worker_index",
                     w->role_index, "worker_pid", (int)w->pid, "reason", why));
    if (w->pid > 0) {
        kill(w->pid, SIGTERM);
    } else {
        /* Waiting for a respawn: nothing runs, free the entry now. */
        w->used = false;
        w->retiring = false;
        /* Release: as every state the supervisor writes (sup_int.h, worker states). */
        atomic_store_explicit(&s->seg->workers[index].state, SHM_STATE_EMPTY, memory_order_release);
    }
}

/*
 * The budget B must hold every pool in full, unless the user started with a B smaller
 * than that (--max-db-connections) and so chose to have workers share it. Without
 * --max-db-connections, B grows online up to the cluster budget C (and the segment, sized
 * for C at start): the node's lease then asks the cluster for the difference. B never
 * shrinks while running.
 */
static int fit_budget(struct sup *s, int web, int jobs, int limit, char *err, size_t errlen)
{
    int need = (web + jobs) * limit + 1;
    const struct sup_lease *l = sup_jobq_lease(s->jobs);
    int cluster = l && l->budget > 0 ? l->budget : s->budget;
    int most = cluster < (int)s->seg->nslots ? cluster : (int)s->seg->nslots;

    if (need <= s->budget || s->budget_shared)
        return 0;
    if (s->cfg->max_db_connections > 0) {
        snprintf(err, errlen,
                 "(workers x connection_limit) + 1 = (%d x %d) + 1 = %d exceeds the budget of %d "
                 "connections set by --max-db-connections; restart with a larger one (it must "
                 "fit the server's max_connections %d), or lower connection_limit",
                 web + jobs, limit, need, s->budget, s->preflight.max_connections);
        return -1;
    }
    if (need <= most) {
        rt_log(RT_LOG_INFO, "budget grows within the cluster budget",
               json_pack("{s:i,s:i,s:i}", "budget", need, "was", s->budget, "cluster_budget",
                         cluster));
        s->budget = need;
        return shm_budget_resize(s->seg, (uint32_t)need) < 0 ? -1 : 0;
    }
    if (most < cluster) {
        snprintf(err, errlen,
                 "(workers x connection_limit) + 1 = (%d x %d) + 1 = %d exceeds the %d slots "
                 "this run's shared segment was sized for at start-up; restart to grow beyond",
                 web + jobs, limit, need, most);
        return -1;
    }
    snprintf(err, errlen,
             "(workers x connection_limit) + 1 = (%d x %d) + 1 = %d exceeds the cluster budget "
             "of %d connections (this node leases %d; %d nodes share it); raise it with "
             "pgcorral cluster set-budget N (it must fit the server's max_connections %d), or "
             "lower connection_limit",
             web + jobs, limit, need, cluster, l ? l->granted : s->budget, l ? l->nodes : 1,
             s->preflight.max_connections);
    return -1;
}

int sup_scale(struct sup *s, enum shm_role role, int n, char *err, size_t errlen)
{
    int web = sup_role_count(s, SHM_ROLE_WEB), jobs = sup_role_count(s, SHM_ROLE_JOB);
    int have = role == SHM_ROLE_WEB ? web : jobs;

    if (s->phase != SUP_RUNNING) {
        snprintf(err, errlen, "the supervisor is stopping");
        return -1;
    }
    if (sup_upgrade_busy(s)) {
        snprintf(err, errlen, "a binary upgrade is under way; try again after it");
        return -1;
    }
    if (n < 0 || n > SUP_MAX_ROLE_WORKERS) {
        snprintf(err, errlen, "the worker count must be 0..%d, got %d", SUP_MAX_ROLE_WORKERS, n);
        return -1;
    }
    if ((role == SHM_ROLE_WEB ? n + jobs : web + n) == 0) {
        snprintf(err, errlen, "that would leave no worker at all");
        return -1;
    }
    if (n > have && fit_budget(s, role == SHM_ROLE_WEB ? n : web, role == SHM_ROLE_JOB ? n : jobs,
                               s->cfg->db->connection_limit, err, errlen) < 0)
        return -1;
    if (n > have && web + jobs + (n - have) > SHM_MAX_WORKERS / 2) {
        snprintf(err, errlen, "at most %d workers in all", SHM_MAX_WORKERS / 2);
        return -1;
    }

    /* Grow: fill the lowest free role indexes. Shrink: retire the highest ones. */
    for (int idx = 0; have < n; idx++) {
        if (role_index_taken(s, role, idx, -1))
            continue;
        if (sup_worker_add(s, role, idx) < 0) {
            snprintf(err, errlen, "cannot start another worker (table full or no socket)");
            return -1;
        }
        have++;
    }
    while (have > n) {
        int victim = -1;
        for (int i = 0; i < SHM_MAX_WORKERS; i++) {
            const struct sup_worker *w = &s->workers[i];
            if (w->used && !w->retiring && w->role == role &&
                (victim < 0 || w->role_index > s->workers[victim].role_index))
                victim = i;
        }
        if (victim == s->reload_new || victim == s->reload_old) {
            s->reload_new = -1;
            s->reload_old = -1;
        }
        sup_worker_retire(s, victim, "scaled down");
        have--;
    }
    rt_log(RT_LOG_INFO, "scaled",
           json_pack("{s:s,s:i}", "worker_role", rt_role_name(role), "workers", n));
    return 0;
}

/*
 * Takes the settings that can change while running from next into the live
 * configuration. What cannot change without a restart (control socket, listen address,
 * the budget B) must be equal, and the new worker counts and connection_limit must fit
 * the budget. Returns 0 (next is consumed) or -1 with the reason (next is untouched).
 */
static int apply_config(struct sup *s, struct sup_config *next, char *err, size_t errlen)
{
    struct sup_config *cur = s->cfg;

    if (strcmp(next->control_path, cur->control_path) != 0 ||
        strcmp(next->listen_addr, cur->listen_addr) != 0 ||
        (next->admin_listen == NULL) != (cur->admin_listen == NULL) ||
        (next->admin_listen && strcmp(next->admin_listen, cur->admin_listen) != 0)) {
        snprintf(err, errlen,
                 "--control, --listen and --admin-listen cannot change on reload (restart for "
                 "that)");
        return -1;
    }
    if (next->access_log && strcmp(next->access_log, "-") != 0) {
        /* New workers open it after fork: refuse the reload rather than fork ones that
         * cannot start. */
        int fd = open(next->access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(err, errlen, "--access-log %s: %s", next->access_log, strerror(errno));
            return -1;
        }
        close(fd);
    }
    bool same_cron = next->ncron == cur->ncron;
    for (int i = 0; same_cron && i < cur->ncron; i++)
        same_cron = strcmp(next->cron[i], cur->cron[i]) == 0;
    if ((next->node_name == NULL) != (cur->node_name == NULL) ||
        (next->node_name && strcmp(next->node_name, cur->node_name) != 0) || !same_cron) {
        snprintf(err, errlen, "--node-name and --cron cannot change on reload (restart for that)");
        return -1;
    }
    if (next->max_db_connections != cur->max_db_connections ||
        next->cluster_budget != cur->cluster_budget ||
        next->lease_heartbeat_s != cur->lease_heartbeat_s ||
        next->lease_ttl_s != cur->lease_ttl_s) {
        snprintf(err, errlen,
                 "--max-db-connections, --cluster-budget, --lease-heartbeat and --lease-ttl "
                 "cannot change on reload (restart for that; the cluster budget changes with "
                 "pgcorral cluster set-budget)");
        return -1;
    }
    if (fit_budget(s, next->web_workers, next->job_workers, next->db->connection_limit, err,
                   errlen) < 0)
        return -1;
    sup_config_free(cur);
    *cur = *next;
    memset(next, 0, sizeof *next);
    return 0;
}

int sup_reload(struct sup *s, char *err, size_t errlen)
{
    struct sup_config next;
    char *tasks = NULL;

    if (s->phase != SUP_RUNNING) {
        snprintf(err, errlen, "the supervisor is stopping");
        return -1;
    }
    if (sup_upgrade_busy(s)) {
        snprintf(err, errlen, "a binary upgrade is under way; try again after it");
        return -1;
    }
    /* systemd counts the reload from here; READY=1 again once every worker is ready, also
     * when the new configuration is refused and the old one stays. */
    sup_notify_reloading(s);
    /* A broken new plugin build must not replace working workers: check it first. */
    if (sup_config_parse(&next, s->argc, s->argv, err, errlen) < 0 ||
        plugin_check((const char *const *)next.plugins, &tasks, err, errlen) < 0 ||
        apply_config(s, &next, err, errlen) < 0) {
        sup_config_free(&next);
        free(tasks);
        return -1;
    }
    /* The node registers the new build's tasks from its next heartbeat on. */
    sup_jobq_set_tasks(s->jobs, tasks);
    free(tasks);
    rt_log_set_format(strcmp(s->cfg->log_format, "text") == 0 ? RT_LOG_TEXT : RT_LOG_JSON);
    if (rt_log_set_file(s->cfg->log_file) < 0)
        rt_log(RT_LOG_ERROR, "cannot open the log file; logging where it did",
               json_pack("{s:s}", "log_file", s->cfg->log_file));
    /* Workers forked from here on are of the new epoch; the older ones get replaced. */
    s->epoch++;
    s->reloading = true;
    if (sup_scale(s, SHM_ROLE_WEB, s->cfg->web_workers, err, errlen) < 0 ||
        sup_scale(s, SHM_ROLE_JOB, s->cfg->job_workers, err, errlen) < 0)
        return -1;
    /* Entries that failed on their configuration get another chance with the new build. */
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        struct sup_worker *w = &s->workers[i];
        if (w->used && w->fatal && w->pid == 0)
            sup_worker_spawn(s, i);
    }
    rt_log(RT_LOG_INFO, "rolling restart begins",
           json_pack("{s:i,s:i}", "epoch", (int)s->epoch, "workers", sup_live_workers(s)));
    sup_reload_step(s);
    return 0;
}

void sup_reload_step(struct sup *s)
{
    if (!s->reloading || s->phase != SUP_RUNNING)
        return;
    if (s->reload_new >= 0) {
        struct sup_worker *nw = &s->workers[s->reload_new];
        /* Acquire: pairs with the worker's release of READY, after its start-up. */
        unsigned state =
            atomic_load_explicit(&s->seg->workers[s->reload_new].state, memory_order_acquire);
        if (nw->used && state != SHM_STATE_READY)
            return; /* the new one is not ready yet */
        if (s->workers[s->reload_old].used)
            sup_worker_retire(s, s->reload_old, "replaced by a rolling restart");
        s->reload_new = -1;
        s->reload_old = -1;
    }
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        struct sup_worker *w = &s->workers[i];
        if (!w->used || w->retiring || w->pid <= 0 || w->epoch >= s->epoch)
            continue;
        int fresh = sup_worker_add(s, w->role, w->role_index);
        if (fresh < 0) {
            rt_logf(RT_LOG_ERROR, "rolling restart stopped: no free worker entry");
            s->reloading = false;
            return;
        }
        s->reload_new = fresh;
        s->reload_old = i;
        return;
    }
    s->reloading = false;
    rt_log(RT_LOG_INFO, "rolling restart complete", json_pack("{s:i}", "epoch", (int)s->epoch));
}
