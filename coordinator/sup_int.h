/*
 * Shared between the files of the coordinator: the supervisor's state, which the control
 * socket's commands read and act on. Everything here lives on the supervisor's loop thread.
 */
#ifndef PGCORRAL_SUP_INT_H
#define PGCORRAL_SUP_INT_H

#include <jansson.h>
#include <sys/types.h>
#include <sys/un.h>
#include <uv.h>

#include "coordinator/coordinator.h"
#include "shm/shm.h"
#include "workers/workers.h"

enum sup_phase {
    SUP_RUNNING,  /* serving; dead workers are respawned */
    SUP_DRAINING, /* SIGTERM/INT: workers finish their work, nothing respawns */
    SUP_FAST,     /* second TERM/INT or QUIT: workers are told to stop at once */
};

/* The supervisor's channel to systemd (sd_notify protocol; coordinator/sdnotify.c). */
struct sup_notify {
    int fd;                  /* datagram socket towards NOTIFY_SOCKET; -1 = no service manager */
    struct sockaddr_un addr; /* NOTIFY_SOCKET (sun_path[0] == '\0': an abstract name) */
    socklen_t addrlen;
    uint64_t watchdog_usec; /* WATCHDOG_USEC when it is meant for us; 0 = no watchdog */
    bool ready;             /* READY=1 sent, and no reload begun since */
    bool stopping;          /* STOPPING=1 sent */
    int last_errno;         /* of the last failed send, so that each kind is logged once */
    char status[200];       /* the STATUS= text sent last */
    uv_timer_t check;       /* readiness and STATUS= */
    uv_timer_t watchdog;    /* WATCHDOG=1 every watchdog_usec / 2 */
};

/*
 * A binary upgrade (SIGUSR2; coordinator/upgrade.c), from either side. The old supervisor
 * forks and execs the binary on disk as the new one, which inherits the segment, the
 * listening sockets and the control socket; they talk over a socketpair (`chan`): the new
 * one writes "ready" once its workers serve (or "failed REASON" and exits), the old one
 * answers "go" after it stopped serving the control socket, then drains and exits.
 */
struct sup_upgrade {
    /* Both sides. */
    char exe[4096];          /* the binary path, resolved at start (not /proc/self/exe, which
                                names the replaced file once a package manager renamed over it) */
    char notify_socket[108]; /* NOTIFY_SOCKET as we got it, for the next supervisor */
    int chan;                /* our end of the socketpair; -1 = none */
    uv_poll_t chan_poll;
    bool chan_polled; /* chan_poll initialised (closed with chan) */
    char buf[256];    /* a line from the other side, not yet complete */
    size_t len;
    bool foreign_check;      /* the other supervisor is gone: free the entries it left */
    uint32_t sup_generation; /* the generation in our own budget token (1, 2, ... per upgrade) */
    /* Old side. */
    pid_t child;              /* the new supervisor until it is ready or gone; 0 = none */
    bool handed_off;          /* the new one serves: we drain and exit 0 */
    bool child_failed_logged; /* its failure is logged (by its own word or our deadline) */
    uv_timer_t deadline;      /* the new one must be ready within UPGRADE_READY_TIMEOUT_S */
    bool deadline_ready;
    uint64_t started_us;
    /* New side. */
    bool adopting;      /* we were started by an upgrade */
    bool reported;      /* "ready" written */
    bool serving;       /* "go" received (or the old one is gone): control socket ours */
    pid_t parent;       /* the old supervisor */
    int control_fd;     /* the inherited control listening socket, served after "go" */
    int held_notify_fd; /* our sd_notify socket, unused until "go" */
    uv_timer_t check;   /* looks for our workers' readiness */
};

/* The supervisor's view of one worker-table entry (shm holds what workers write). */
struct sup_worker {
    bool used; /* entry configured (a worker should run here) */
    enum shm_role role;
    int role_index;
    pid_t pid;              /* 0 while not running */
    uint32_t generation;    /* incarnation now or last running */
    int restarts;           /* respawns of this entry since start */
    uint64_t started_us;    /* when the current incarnation was forked */
    double backoff_ms;      /* next respawn delay */
    bool fatal;             /* exited with WORKER_EXIT_CONFIG: not respawned */
    bool retiring;          /* draining for good (scale down, replaced by reload): the entry
                               is freed when it exits, not respawned */
    uint32_t epoch;         /* reload epoch it was forked in; older ones are replaced */
    uint64_t abort_sent_us; /* when the hung-worker check sent SIGABRT; 0 = not sent */
    bool timer_ready;       /* respawn_timer initialised (entries are reused) */
    uv_timer_t respawn_timer;
};

struct sup {
    struct sup_config *cfg;
    int argc; /* the `run` command line, parsed again on reload */
    char **argv;
    struct worker_config wcfg;
    struct job_options job_opts; /* wcfg.jobs points here; filled with wcfg */
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
    struct control_client *control_clients; /* connected clients, a list (control.c) */
    int control_nclients;                   /* its length; at most CONTROL_MAX_CLIENTS */
    uint64_t control_idle_ms;               /* a client silent this long is dropped */
    uint64_t control_refused_log_us;        /* last "too many clients" log line */
    unsigned control_refused;               /* clients refused since that line */
    int exit_status;
    struct sup_jobq *jobs;            /* LISTEN connection, orphan unlocks, queue depth, node
                                         heartbeat, recurring jobs */
    char node[SUP_NODE_NAME_MAX + 1]; /* --node-name, or "host:pid" */
    bool finishing;                   /* the last worker is gone; the job connection is closing */
    uint32_t epoch;                   /* bumped by each reload */
    int reload_new; /* entry started by the reload step, not ready yet; -1 = none */
    int reload_old; /* the entry it replaces */
    bool reloading;
    uv_timer_t tick;              /* housekeeping: hung workers, reload steps, monitoring */
    uint64_t budget_hot_since_us; /* budget utilisation above 80 % since; 0 = not */
    bool budget_warned;
    uint64_t pool_hot_since_us[SHM_MAX_WORKERS];
    bool pool_warned[SHM_MAX_WORKERS];
    uint64_t last_stats_log_us;
    /* The accept check, per listening socket (index = web role_index): the sum of the
     * http_accepted counters of its ready workers when last looked at, and since when
     * connections have waited on it without that sum moving (0 = none waiting). */
    uint64_t accept_seen[SHM_MAX_WORKERS];
    uint64_t accept_stalled_since_us[SHM_MAX_WORKERS];
    struct sup_notify notify;
    int inherited_listen_fd; /* the socket systemd passed (LISTEN_FDS), or -1; every web
                                worker gets a dup of it instead of a socket of its own */
    struct sup_upgrade upgrade;
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

/*
 * Starts the control socket at s->cfg->control_path: for the default path, creates its
 * folder (0700) and refuses one that is not private to us; refuses a socket file of another
 * user or one a live supervisor answers on, removes a stale one of ours. Returns 0 or
 * -errno (err says why, naming the path and, for another user's file, its owner).
 */
int sup_control_start(struct sup *s, char *err, size_t errlen);

/* Stops accepting control connections and removes the socket file. */
void sup_control_stop(struct sup *s);

/*
 * Serves the control socket on fd, a listening socket inherited from the previous
 * supervisor by a binary upgrade (its file stays where it is). Returns 0 or a negative
 * libuv error code; fd is closed on error.
 */
int sup_control_adopt(struct sup *s, int fd);

/* Stops accepting control connections and drops the clients, but leaves the socket file
 * (and the socket, which the new supervisor serves) alone: the old side of an upgrade. */
void sup_control_detach(struct sup *s);

/* ---- binary upgrade (coordinator/upgrade.c) ---- */

/*
 * Start-up: records the binary's path and NOTIFY_SOCKET for a later upgrade, and reads
 * PGCORRAL_UPGRADE (removing it from the environment). Returns 0 for a plain start, 1 when
 * we are the new side of an upgrade (then *fds is filled: the segment's fd, the listening
 * sockets, the control socket), or -EINVAL with the reason in err. Before sup_notify_init.
 */
struct sup_upgrade_fds {
    int seg, control, activated, chan;
    int listen[SHM_MAX_WORKERS];
    int nlisten;
    int admin[SHM_MAX_WORKERS]; /* the --admin-listen sockets */
    int nadmin;
    uint32_t next_generation, sup_generation;
    pid_t parent;
};
int sup_upgrade_init(struct sup *s, struct sup_upgrade_fds *fds, char *err, size_t errlen);

/*
 * The new side, once its loop runs: starts looking for its workers' readiness and
 * listening to the old side. Also reports start-up failure: sup_upgrade_fail() writes
 * "failed REASON" to the old side (before the new one exits).
 */
void sup_upgrade_adopt_start(struct sup *s);
void sup_upgrade_fail(struct sup *s, const char *errpos, const char *err);

/*
 * SIGUSR2: starts a binary upgrade. Returns 0, or -1 with the reason in err (one is under
 * way, a stop or reload is under way, fork or socketpair failed).
 */
int sup_upgrade_begin(struct sup *s, char *err, size_t errlen);

/* A child was reaped: if it is the new supervisor of an upgrade, ends it as failed. Returns
 * true when pid was that child. */
bool sup_upgrade_reaped(struct sup *s, pid_t pid, int status);

/* Whether an upgrade is under way (scale and reload wait for it to end). */
bool sup_upgrade_busy(const struct sup *s);

/* Housekeeping: frees the worker entries a gone supervisor left behind, once their
 * processes are gone. */
void sup_upgrade_tick(struct sup *s);

/* Whether entry index is free for us: not used by us, and not by another supervisor. */
bool sup_entry_free(const struct sup *s, int index);

/* In a forked worker: closes the upgrade's descriptors (not behind a loop handle). */
void sup_upgrade_close_in_child(struct sup *s);

/*
 * Runs one control command line (without its newline) and returns the answer, a new
 * JSON reference: the command's document, or {"error": "..."}.
 */
json_t *sup_control_dispatch(struct sup *s, const char *line);

/* Begins a graceful (fast = false) or fast stop, as TERM or QUIT do. */
void sup_shutdown(struct sup *s, bool fast);

/*
 * Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and opens the datagram socket, then
 * removes the three from the environment so that no forked worker (or anything a plugin
 * runs) speaks for the service. Returns 0 (n->fd is -1 when there is no NOTIFY_SOCKET), or
 * -errno with the reason in err (a malformed NOTIFY_SOCKET); n is usable (silent) then too.
 */
int sup_notify_init(struct sup_notify *n, char *err, size_t errlen);

/*
 * Sends one notification ("READY=1", "STATUS=..."; newline-separated assignments) as one
 * datagram. Returns 0 (also without a NOTIFY_SOCKET), or -errno; failures are logged once
 * per errno. Never blocks.
 */
int sup_notify_send(struct sup_notify *n, const char *msg);

/* Sends STATUS= with the printf-style text (line breaks become spaces, at most 199 bytes).
 * Nothing without a NOTIFY_SOCKET. */
void sup_notify_status(struct sup_notify *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Starts notifying on s->loop: READY=1 once every configured worker is ready (and again
 * after each reload), STATUS= "web 2/2 ready, jobs 2/2 ready, budget 5/41" when it
 * changes, WATCHDOG=1 every WATCHDOG_USEC / 2. Nothing without a NOTIFY_SOCKET.
 */
void sup_notify_start(struct sup *s);

/* RELOADING=1 with MONOTONIC_USEC; READY=1 follows when the rolling restart is done. */
void sup_notify_reloading(struct sup *s);

/* STOPPING=1, once, when a stop begins. */
void sup_notify_stopping(struct sup *s);

/* Closes the socket (in forked workers, and on the way out). */
void sup_notify_close(struct sup_notify *n);

/*
 * The preflight (sup_preflight_run), tried again with backoff (0.5 s doubling to 5 s)
 * while it fails, for at most wait_s seconds (0: one try, the default). Each failed try
 * is logged with its number and reason (URL redacted) and shown in STATUS=. Returns 0, or
 * -1 with the last reason in err. Blocking; start-up only.
 */
__attribute__((warn_unused_result)) int sup_preflight_wait(const struct rt_dburl *db, int wait_s,
                                                           struct sup_notify *notify,
                                                           struct sup_preflight *out, char *err,
                                                           size_t errlen);

#endif
