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
    uv_timer_t respawn_timer;
};

struct sup {
    struct sup_config *cfg;
    struct worker_config wcfg;
    struct shm_segment *seg;
    struct sup_preflight preflight;
    int budget;
    uv_loop_t loop;
    int signal_fd;
    uv_poll_t signal_poll;
    uv_timer_t deadline;
    enum sup_phase phase;
    uint32_t next_generation;
    uint64_t started_us;
    struct sup_worker workers[SHM_MAX_WORKERS];
    int listen_fds[SHM_MAX_WORKERS];
    int n_listen_fds;
    int listen_port;
    int control_fd; /* the control socket's listening fd, closed in children */
    uv_pipe_t control;
    int exit_status;
};

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
