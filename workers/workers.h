/*
 * The workers module's public header, the only one the coordinator includes: what the
 * supervisor needs to start a worker process (its configuration, job options, the plugin
 * check before fork), and the context every worker role (web, job) runs in.
 */
#ifndef PGCORRAL_WORKERS_H
#define PGCORRAL_WORKERS_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/rt.h"
#include "runtime/rt_pool.h"
#include "runtime/rt_read_pool.h"
#include "shm/shm.h"

/* Exit status of a worker that cannot work with this configuration: not respawned. */
#define WORKER_EXIT_CONFIG 78

/* How job workers behave; the supervisor fills them before it forks (worker_config.jobs). */
struct job_options {
    const char *const *queues; /* NULL-terminated queue names to serve; NULL = every queue */
    int poll_interval_ms;      /* fallback poll when no wake-up comes; 1000 */
    int retry_base_ms;         /* retry delay after failed attempt n: base * 2^(n-1); 1000 */
    int retry_max_ms;          /* cap of that delay; 3600000 (1 h) */
    int concurrency;           /* handlers at once; 0 = the pool's connection_limit */
    int default_timeout_ms;    /* for tasks registered without one; 0 = none */
    bool keep_completed;       /* done jobs stay as completed (--keep-completed > 0) instead
                                  of being deleted at the ack */
    /* --queue-concurrency: NULL-terminated queues of which at most queue_limits[i] jobs run
     * at once over every worker that passes the same limit (see pgcorral.claim_jobs); NULL =
     * no queue is limited */
    const char *const *limited_queues;
    const int *queue_limits;
    const char *node; /* this supervisor's node name (--node-name); NULL = unknown
                         tasks are failed at once, never put back */
};

/* Fills o with the defaults above. */
void job_options_init(struct job_options *o);

/*
 * The supervisor's fail-fast check before fork: loads the plugins, then unloads them, so
 * that workers load them afresh after fork (a rolling restart picks up a new build).
 * When tasks is not NULL, writes the names of the tasks they register there as a JSON
 * array text (caller frees). Returns 0 or an error as plugin_registry_load (-ENOMEM when
 * the list cannot be made).
 */
__attribute__((warn_unused_result)) int plugin_check(const char *const *paths, char **tasks,
                                                     char *err, size_t errlen);

/* Everything a worker needs, prepared by the supervisor before fork. Read-only in workers. */
struct worker_config {
    const struct rt_dburl *db;      /* primary DATABASE_URL, parsed */
    const struct rt_dburl *replica; /* DATABASE_REPLICA_URL, or NULL */
    int slow_query_ms;              /* SLOW_QUERY_THRESHOLD */
    int health_timeout_ms;          /* --health-timeout: bound of GET /api/v1/health */
    int shutdown_timeout_s;         /* drain deadline (the supervisor SIGKILLs after it) */
    int heartbeat_ms;               /* how often a worker writes heartbeat_us */
    const char *io_mode;            /* "auto", "uring" or "epoll" */
    const int *listen_fds;          /* one listening socket per web worker index */
    int n_listen_fds;
    const char *listen_addr; /* "127.0.0.1:3000", for logs */
    const int *admin_fds;    /* --admin-listen: one socket per web worker index, or NULL */
    int n_admin_fds;
    const char *admin_listen_addr;  /* --admin-listen, for logs; NULL = none */
    const char *api_token;          /* PGCORRAL_API_TOKEN, or NULL; never logged */
    const char *access_log;         /* --access-log PATH or "-"; NULL = off */
    const char *const *plugins;     /* plugin paths, NULL-terminated */
    const char *control_path;       /* control socket, for the stats route */
    const char *log_file;           /* --log-file, reopened on SIGUSR1; NULL = stderr */
    const int *job_wake_fds;        /* eventfd per worker-table entry: job wake-ups that the
                                       supervisor's LISTEN connection fans out */
    const struct job_options *jobs; /* how job workers behave; NULL = job_options_init's */
    const char *node; /* this supervisor's node name: marks the default application_name
                         (" @NODE") so that an expired lease's connections can be found */
};

/* One worker process. Lives on the stack of worker_main(); roles keep their state in it. */
struct worker_ctx {
    uv_loop_t loop;
    const struct worker_config *cfg;
    struct shm_segment *seg;
    struct shm_worker *self; /* &seg->workers[index] */
    int index;               /* worker-table entry */
    enum shm_role role;
    int role_index; /* "web 1" */
    uint32_t generation;
    uint32_t token; /* budget token: shm_token(index, generation) */
    bool draining;
    struct rt_pool *pool;      /* primary pool, inside the global budget; created by
                                  worker_main before the role starts, closed after drain */
    struct rt_pool *read_pool; /* DATABASE_REPLICA_URL pool, or the primary when none */
    void *role_state;          /* owned by the role (web or job) */
    /* Read-only work over pool and read_pool (the primary while the replica is down);
     * created with the pools, freed after they closed. */
    struct rt_read_router *read_router;
};

/*
 * The hooks of one role. start runs on the loop before it turns; it returns 0 or a
 * negative error (the worker exits WORKER_EXIT_CONFIG). drain is called once, on SIGTERM:
 * the role stops taking new work and calls worker_drained() when nothing is in flight.
 */
struct worker_role_ops {
    int (*start)(struct worker_ctx *w);
    void (*drain)(struct worker_ctx *w);
};

/*
 * Body of a forked worker: sets the process title and parent-death signal, builds its own
 * libuv loop, heartbeats into shm, runs the role until drained, then exits the process.
 * Called in the child right after fork(); never returns.
 */
__attribute__((noreturn)) void worker_main(const struct worker_config *cfg, struct shm_segment *seg,
                                           int index);

/*
 * Creates w->pool (primary, inside the global budget), w->read_pool (DATABASE_REPLICA_URL,
 * or the primary when none) and w->read_router over them, for the worker that w describes
 * (cfg, seg, index, token, role and role_index set, loop initialised). worker_main calls it
 * before the role starts; a test that runs a role without worker_main calls it too. The
 * pools close in worker_drained(); free the router with rt_read_router_destroy() after
 * they closed. Returns 0 or a negative error (logged). Loop thread.
 */
__attribute__((warn_unused_result)) int worker_pools_create(struct worker_ctx *w);

/* A role calls this once it has finished its in-flight work after drain. Loop thread. */
void worker_drained(struct worker_ctx *w);

/* Sets the process title seen by ps ("pgcorral: web 0"). Call worker_title_init first. */
void worker_title_init(int argc, char **argv);
void worker_title_set(const char *title);

#endif
