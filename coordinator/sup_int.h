/*
 * Shared between the files of the coordinator: the supervisor's state, which the control
 * socket's commands read and act on. Everything here lives on the supervisor's loop thread.
 */
#ifndef PGCORRAL_SUP_INT_H
#define PGCORRAL_SUP_INT_H

#include <jansson.h>
#include <sys/types.h>
#include <uv.h>

#include "coordinator/coordinator.h"
#include "shm/shm.h"
#include "workers/workers.h"

enum sup_phase {
    SUP_RUNNING,  /* serving; dead workers are respawned */
    SUP_DRAINING, /* SIGTERM/INT: workers finish their work, nothing respawns */
    SUP_FAST,     /* second TERM/INT or QUIT: workers are told to stop at once */
};

/* The supervisor's view of one worker-table entry (shm holds what workers write). */
struct sup_worker {
    bool used;             /* entry configured (a worker should run here) */
    enum shm_role role;
    int role_index;
    pid_t pid;             /* 0 while not running */
    uint32_t generation;   /* incarnation now or last running */
    int restarts;          /* respawns of this entry since start */
    uint64_t started_us;   /* when the current incarnation was forked */
    double backoff_ms;     /* next respawn delay */
    bool fatal;            /* exited with WORKER_EXIT_CONFIG: not respawned */
    bool retiring;         /* draining for good (scale down, replaced by reload): the entry
                              is freed when it exits, not respawned */
    uint32_t epoch;        /* reload epoch it was forked in; older ones are replaced */
    uint64_t abort_sent_us; /* when the hung-worker check sent SIGABRT; 0 = not sent */
    bool timer_ready;      /* respawn_timer initialised (entries are reused) */
    uv_timer_t respawn_timer;
};

struct sup {
    struct sup_config *cfg;
    int argc; /* the `run` command line, parsed again on reload */
    char **argv;
    struct worker_config wcfg;
    struct shm_segment *seg;
    struct sup_preflight preflight;
    int budget;
    bool budget_shared; /* B was started smaller than every pool in full: workers share */
    uv_loop_t loop;
    int signal_fd;
    uv_poll_t signal_poll;
    uv_timer_t deadline;
    enum sup_phase phase;
    uint32_t next_generation;
    uint64_t started_us;
    struct sup_worker workers[SHM_MAX_WORKERS];
    int listen_fds[SHM_MAX_WORKERS];
    int job_wake_fds[SHM_MAX_WORKERS]; /* eventfds, one per worker entry, kept in children */
    int n_listen_fds;
    int listen_port;
    int admin_fds[SHM_MAX_WORKERS]; /* --admin-listen: one per web worker index, like listen_fds */
    int n_admin_fds;
    int admin_port;
    int control_fd; /* the control socket's listening fd, closed in children */
    uv_pipe_t control;
    int exit_status;
    struct sup_jobs *jobs; /* LISTEN connection, orphan unlocks, queue depth */
    bool finishing;        /* the last worker is gone; the job connection is closing */
    uint32_t epoch;      /* bumped by each reload */
    int reload_new;      /* entry started by the reload step, not ready yet; -1 = none */
    int reload_old;      /* the entry it replaces */
    bool reloading;
    uv_timer_t tick;     /* housekeeping: hung workers, reload steps, monitoring */
    uint64_t budget_hot_since_us; /* budget utilisation above 80 % since; 0 = not */
    bool budget_warned;
    uint64_t pool_hot_since_us[SHM_MAX_WORKERS];
    bool pool_warned[SHM_MAX_WORKERS];
    uint64_t last_stats_log_us;
};

/* Forks (or re-forks) the worker of entry index. */
void sup_worker_spawn(struct sup *s, int index);

/*
 * Puts a new worker of role/role_index into a free table entry and forks it. Returns the
 * entry index, or -ENOSPC when the table is full.
 */
int sup_worker_add(struct sup *s, enum shm_role role, int role_index);

/* Drains the worker of entry index for good: SIGTERM now, entry freed when it exits. */
void sup_worker_retire(struct sup *s, int index, const char *why);

/* Live (forked and not yet reaped) workers, or those of one role that are not retiring. */
int sup_live_workers(const struct sup *s);
int sup_role_count(const struct sup *s, enum shm_role role);

/*
 * Sets the number of workers of role to n: forks the missing ones, drains the surplus.
 * Returns 0, or -1 with the reason in err (a budget that would not hold them, with the
 * numbers; a count out of range).
 */
int sup_scale(struct sup *s, enum shm_role role, int n, char *err, size_t errlen);

/*
 * Reload: reads the configuration again (flags, --config file, environment) and applies
 * it, then restarts every worker, rolling: each new worker is ready before the old one
 * drains. Returns 0, or -1 with the reason in err (a stop is under way, the new
 * configuration is invalid or does not fit the budget); the old configuration then stays.
 */
int sup_reload(struct sup *s, char *err, size_t errlen);

/* One reload step; called by the housekeeping tick and after each change. */
void sup_reload_step(struct sup *s);

/* Starts the housekeeping tick (hung workers, utilisation warnings, stats log lines). */
void sup_housekeeping_start(struct sup *s);

/* Starts the control socket at s->cfg->control_path. Returns 0 or -errno (err says why). */
int sup_control_start(struct sup *s, char *err, size_t errlen);

/* Stops accepting control connections and removes the socket file. */
void sup_control_stop(struct sup *s);

/*
 * Runs one control command line (without its newline) and returns the answer, a new
 * JSON reference: the command's document, or {"error": "..."}.
 */
json_t *sup_control_dispatch(struct sup *s, const char *line);

/* Begins a graceful (fast = false) or fast stop, as TERM or QUIT do. */
void sup_shutdown(struct sup *s, bool fast);

#endif
