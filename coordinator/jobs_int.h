/*
 * The supervisor's side of the job queue, shared between the coordinator's files: schema
 * migrations (migrate.c), the job-queue connection (jobq_conn.c: LISTEN and the fan-out of
 * job wake-ups to job workers, one statement at a time for orphans.c's unlocks, sweeps and
 * scans, nodes.c's heartbeat and cron.c's ticks; jobq_depths.c: the queue depths its
 * sweeps read), the node registry and recurring jobs (--cron), and the `pgcorral enqueue` /
 * `pgcorral migrate` / `pgcorral jobs` commands.
 */
#ifndef PGCORRAL_JOBS_INT_H
#define PGCORRAL_JOBS_INT_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "runtime/rt.h"
#include "runtime/rt_input.h"
#include "shm/shm.h"

/* The schema version this build migrates to (coordinator/migrate.c). */
#define SUP_SCHEMA_VERSION 10
/* The advisory lock under which leases of the cluster budget are granted (migration 10). */
#define SUP_LEASE_LOCK_KEY "8131470119"

/* The migration that gave jobs their outcome ("job states"); tests of the upgrade stop
 * just before it. */
#define SUP_SCHEMA_JOB_STATES 6

/* The migration that limits queues' concurrency in the claim (--queue-concurrency). */
#define SUP_SCHEMA_QUEUE_LIMITS 8

/* The migration of the node registry and recurring jobs. */
#define SUP_SCHEMA_NODES 9

/*
 * Creates or upgrades the `pgcorral` schema to SUP_SCHEMA_VERSION: every migration not yet
 * recorded in pgcorral.migrations runs, in order, in one transaction that first takes an
 * advisory transaction lock, so two supervisors starting at once serialise and the second
 * finds nothing to do. Idempotent. Returns 0 (and the version the database was at before
 * in *from when from is not NULL), or -1 with the reason in err (URL redacted, never a
 * password). Blocking: start-up only, before fork.
 */
__attribute__((warn_unused_result)) int sup_migrate(const struct rt_dburl *db, int *from, char *err,
                                                    size_t errlen);

/* sup_migrate up to version `to` only (tests of an upgrade from an older schema). */
__attribute__((warn_unused_result)) int sup_migrate_upto(const struct rt_dburl *db, int to,
                                                         int *from, char *err, size_t errlen);

/* `pgcorral migrate`: runs sup_migrate against DATABASE_URL. Returns the exit status. */
int sup_migrate_main(int argc, char **argv);

/*
 * `pgcorral enqueue TASK JSON [--queue Q] [--run-at T] [--priority P] [--key K]
 * [--max-attempts N] [--force]`: adds one job through pgcorral.add_known_job and prints its
 * id. Returns the exit status (0; 1 on a database error; 2 on a usage error, and for a
 * task no live node registers without --force).
 */
int sup_enqueue_main(int argc, char **argv);

/*
 * `pgcorral jobs list|show|retry|cancel|delete ...` (jobs_cmd.c): job management against
 * DATABASE_URL, with or without a running supervisor. Returns the exit status (0; 1 when
 * the database refused or failed; 2 on a usage error).
 */
int sup_jobs_main(int argc, char **argv);

/* ---- recurring jobs: schedules (cron_spec.c) ------------------------------------------ */

/*
 * One `--cron 'SPEC TASK [JSON]'` schedule. SPEC: an optional CRON_TZ=Zone prefix (the
 * zone of the 5 fields; default UTC) and either 5 crontab fields (minute hour day-of-month
 * month day-of-week: *, N, N-M, lists, /STEP, month and day names, 7 = Sunday; when both
 * day fields are restricted either may match), @hourly, @daily, or @every DURATION (ticks
 * at the multiples of the duration since 1970 UTC, so that every node agrees on them).
 */
struct sup_cron {
    char spec[256];          /* SPEC, its words joined by one space */
    char tz[65];             /* CRON_TZ zone; "" = UTC */
    long long every_s;       /* @every: the period; 0 = the fields */
    uint64_t bits[5];        /* allowed values per field, bit v = value v (day-of-week 0-6) */
    bool dom_star, dow_star; /* the day field started with '*' (cron's day rule) */
    char task[RT_JOB_TASK_MAX + 1];
    char *payload; /* compact JSON text; owned (sup_cron_free) */
    char id[17];   /* the schedule's name: hash of spec, task and payload, 16 hex digits */
};

/*
 * Parses the SPEC at the start of text into c (task and payload left empty) and points
 * *rest behind it. Returns 0, or -1 with the reason in err, e.g. "minute field '61' is out
 * of range 0-59" (the caller prefixes the setting's name). Start-up and CLI only: it may
 * change TZ for a moment (see sup_cron_next).
 */
int sup_cron_parse_spec(struct sup_cron *c, const char *text, const char **rest, char *err,
                        size_t errlen);

/* Parses a whole 'SPEC TASK [JSON]' line (JSON defaults to {}; limits of rt_input.h).
 * Returns 0 (free with sup_cron_free) or -1 with the reason in err (nothing to free). */
int sup_cron_parse(struct sup_cron *c, const char *line, char *err, size_t errlen);
void sup_cron_free(struct sup_cron *c);

/*
 * The first tick of c after `after` (Unix seconds), or -1 when none within 5 years; the
 * last tick at or before `at`, or -1. The fields are read on the wall clock of c->tz:
 * the process's TZ is set to it during the call and restored, so call them from one
 * thread only (the supervisor's loop, the CLI).
 */
int64_t sup_cron_next(const struct sup_cron *c, int64_t after);
int64_t sup_cron_prev(const struct sup_cron *c, int64_t at);

/*
 * `pgcorral jobs cron [--json]`: the schedules of pgcorral.cron_schedules with their last
 * and next tick and the live nodes that run them. argv is what follows "cron". Returns the
 * exit status: 0, 1 (database error), 2 (usage).
 */
int sup_jobs_cron_main(int argc, char **argv);

/* ---- the node registry (nodes.c) ------------------------------------------------------ */

/* A renewal of the node's lease (lease.c): what the server granted, and when (monotonic
 * ms, uv_hrtime) the renewal was sent. */
struct sup_lease_grant {
    int granted; /* slots this node may hold, its own job-queue connection included */
    int budget;  /* the cluster budget C */
    int target;  /* what it should shrink to (below granted while others wait) */
    int nodes;   /* nodes whose lease runs, this one included */
    uint64_t sent_ms;
};

/* What a node asks of the cluster budget at start-up (sup_node_register). */
struct sup_lease_ask {
    int want;           /* its budget B */
    int in_use;         /* slots it holds already (a binary upgrade's old generation) */
    int ttl_s;          /* --lease-ttl */
    int default_budget; /* C for a cluster that has none recorded yet */
};

/*
 * Start-up, before fork: records this supervisor in pgcorral.nodes as node (host, pid,
 * version, tasks: a JSON array of task names), so that jobs of its tasks can be enqueued
 * as soon as it serves, and takes its first lease of the cluster budget (into *grant).
 * Refuses a node name that a live supervisor other than this one holds (another host, or
 * a process of this host that exists), unless takeover (a binary upgrade takes over its
 * old supervisor's name). A node counts as live for 10 s after its last heartbeat, by the
 * server's clock (pgcorral.live_nodes, migration 9). Returns 0, or -1 with the reason in
 * err (URL redacted). Blocking.
 */
__attribute__((warn_unused_result)) int
sup_node_register(const struct rt_dburl *db, const char *node, const char *tasks, bool takeover,
                  const struct sup_lease_ask *ask, struct sup_lease_grant *grant, char *err,
                  size_t errlen);

/* The default node name, "host:pid", into buf. Returns buf. */
char *sup_node_default_name(char *buf, size_t size);

/* ---- the supervisor's job-queue connection (jobq_conn.c, jobq_depths.c, orphans.c) ---- */

struct sup_jobq; /* lives on the supervisor's loop; defined below */

struct sup_jobq_opts {
    uv_loop_t *loop;           /* required: the supervisor's loop */
    const struct rt_dburl *db; /* required; borrowed, outlives the struct */
    struct shm_segment *seg;   /* required: budget slot, worker roles and states */
    const int *job_wake_fds;   /* required: one eventfd per worker-table entry */
    int lease_s;  /* lease of a claimed job: refreshed by the sweep for live workers of this
                     host, freed by any host's sweep when older (a host that vanished); 120 */
    int sweep_ms; /* how often the sweep runs (leases, queue depth); 5000, at most lease/4 */
    int reconnect_max_ms;    /* reconnect backoff cap (doubling from 250 ms); 10000 */
    uint32_t token;          /* budget token of the connection; shm_token(SHM_SUPERVISOR_INDEX,
                                1) by default. A binary upgrade's new supervisor takes the next
                                generation, so that both supervisors' tokens differ. */
    int keep_completed_s;    /* completed jobs older than this are pruned by the sweep; 0 (none
                                are kept: only leftovers); SUP_KEEP_FOREVER = never pruned */
    int keep_failed_s;       /* the same for failed and cancelled jobs; SUP_KEEP_FOREVER */
    int prune_batch;         /* rows one prune statement deletes at most; SUP_PRUNE_BATCH */
    const char *node;        /* required: this supervisor's node name (copied) */
    const char *tasks;       /* JSON array of the tasks its plugins register (copied); NULL = [] */
    const char *const *cron; /* --cron lines, NULL-terminated, already validated (parsed
                                again and kept); NULL = none */
    int lease_ttl_s;         /* --lease-ttl; 10 */
    int lease_heartbeat_s;   /* --lease-heartbeat; 2 (also the node heartbeat's period) */
    struct sup_lease_grant first_lease; /* what sup_node_register() was granted; zeroes:
                                           uncapped until the first renewal */
};

/* A retention that never prunes (--keep-failed's default). */
#define SUP_KEEP_FOREVER (-1)
/* Finished jobs deleted per statement: a long prune never holds many row locks or one long
 * transaction; batches follow each other until one comes back short. */
#define SUP_PRUNE_BATCH 1000

/* Fills opts with the defaults above (the required fields still to set). */
void sup_jobq_opts_init(struct sup_jobq_opts *opts);

/*
 * Starts the supervisor's single job connection on the loop: it reserves a budget slot
 * (opts->token) before it connects, LISTENs on pgcorral_jobs and
 * writes to the job workers' eventfds on every notification (and once after each
 * (re)connect, in case one was missed). It reconnects with backoff when the server goes
 * away. Returns 0 and writes *out, or -EINVAL / -ENOMEM. Loop thread.
 */
__attribute__((warn_unused_result)) int sup_jobq_start(struct sup_jobq **out,
                                                       const struct sup_jobq_opts *opts);

/*
 * Closes the connection, frees its budget slot and every handle; cb(arg) runs on the loop
 * once all is gone (cb may be NULL). Pending orphan unlocks are dropped (a later start's
 * sweep frees them by lease). sup_jobq_stop(NULL, ...) does nothing.
 */
void sup_jobq_stop(struct sup_jobq *j, void (*cb)(void *arg), void *arg);

/* A binary upgrade handed over to the new supervisor: from now on this one neither renews
 * the node's row and lease nor removes the row when it stops. NULL does nothing. */
void sup_jobq_hand_off(struct sup_jobq *j);

/* Queues a lease renewal now (ahead of other statements) unless one is queued or in
 * flight, or the connection is not up (the heartbeat renews once it is). */
void sup_jobq_renew_lease(struct sup_jobq *j);

/* The tasks the node registers changed (a reload loaded other plugins): tasks is a JSON
 * array (copied), sent with the next heartbeat. Loop thread. */
void sup_jobq_set_tasks(struct sup_jobq *j, const char *tasks);

/* Writes 1 to the eventfd of every job worker that is starting or ready. Loop thread. */
void sup_jobq_wake_all(struct sup_jobq *j);

/*
 * A job worker incarnation died (after waitpid): unlocks every job it had claimed at once,
 * so that they run again without waiting for a lease, then wakes the job workers. Jobs
 * numbered (claim_seq) from unstarted_from on never started: they get back the attempt
 * their claim counted. The others are charged, and kept as failed when their attempts
 * are used up. unstarted_from is what the worker left in its shm block
 * (jobs_unstarted_from; read it before shm_worker_retire()), 0 = not known: every job is
 * charged. pid and generation name the incarnation (they make its locked_by, see
 * rt_job_locked_by()). Safe when the connection is down: the unlock is queued until it is
 * back. Loop thread.
 */
void sup_jobq_worker_died(struct sup_jobq *j, pid_t pid, uint32_t generation,
                          uint64_t unstarted_from);

/*
 * Queue depth by queue and state, as last read (every sweep_ms, not per call):
 * {"queues":{"default":{"ready":n,"scheduled":n,"running":n,"failed":n}},"age_ms":n,
 * "dead_rows":n} or {"queues":{},"age_ms":null} before the first read. New reference;
 * NULL on ENOMEM.
 */
json_t *sup_jobq_json(const struct sup_jobq *j);

/* `ctl cluster`: this node's lease (node, cluster_budget, slots_leased, slots_target,
 * slots_in_use, budget, fenced, trusted_for_ms, lease_ttl_s, lease_heartbeat_s) and the
 * nodes whose lease runs as the last renewal saw them. New reference; NULL on ENOMEM. */
json_t *sup_jobq_cluster_json(const struct sup_jobq *j);

/* The lease as the last renewal left it; NULL for j NULL. */
const struct sup_lease *sup_jobq_lease(const struct sup_jobq *j);

/* ---- between jobq_conn.c, jobq_depths.c and orphans.c --------------------------------- */

/* What a statement queued on the job-queue connection does. */
enum sup_jobq_op_kind {
    SUP_JOBQ_OP_UNLOCK = 1,      /* unlock the jobs of one dead incarnation */
    SUP_JOBQ_OP_SWEEP,           /* free expired leases; read queue depth */
    SUP_JOBQ_OP_SCAN_LOCAL,      /* find jobs locked by dead processes of this host */
    SUP_JOBQ_OP_VACUUM,          /* VACUUM the jobs table (dead rows piled up) */
    SUP_JOBQ_OP_PRUNE_COMPLETED, /* delete a batch of completed jobs past retention */
    SUP_JOBQ_OP_PRUNE_FAILED,    /* the same for failed and cancelled jobs */
    SUP_JOBQ_OP_BEAT,            /* the node's heartbeat (nodes.c) */
    SUP_JOBQ_OP_LEAVE,           /* delete the node's row on a clean stop (nodes.c) */
    SUP_JOBQ_OP_CRON,            /* enqueue one tick of a schedule (cron.c) */
    SUP_JOBQ_OP_LEASE,           /* renew the node's lease (lease.c); jumps the queue */
};

/* One statement queued on the job connection; runs when the connection is up and idle. */
struct sup_jobq_op {
    struct sup_jobq_op *next;
    enum sup_jobq_op_kind kind;
    char locked_by[96];      /* UNLOCK: the dead incarnation */
    char reason[160];        /* UNLOCK: the last_error written to its jobs that had started */
    uint64_t unstarted_from; /* UNLOCK: its jobs_unstarted_from; 0 = not known */
    int schedule;            /* CRON: the index of the schedule */
    int64_t tick;            /* CRON: the tick to enqueue (Unix seconds) */
    uint64_t queued_us;      /* when it was first queued (shm_now_us), for the log */
    int tries;               /* failed runs so far */
    long long pruned;        /* PRUNE_*: jobs the earlier batches of this round deleted */
    int batches;             /* PRUNE_*: those batches */
};

/*
 * The claim_seq from which the jobs of a dead incarnation never started, remembered for
 * its last SUP_JOBQ_DEAD_MAX deaths: sup_jobq_worker_died() records it (0 = not known),
 * and the scan's unlocks of that incarnation use it. Returns 0 for an incarnation not
 * remembered. Loop thread.
 */
#define SUP_JOBQ_DEAD_MAX 128
void sup_jobq_remember_dead(struct sup_jobq *j, const char *locked_by, uint64_t unstarted_from);
uint64_t sup_jobq_dead_unstarted_from(const struct sup_jobq *j, const char *locked_by);

/* Where the job-queue connection is in its life. */
enum sup_jobq_state {
    SUP_JOBQ_DOWN,       /* no connection; the timer reconnects */
    SUP_JOBQ_CONNECTING, /* PQconnectPoll in progress */
    SUP_JOBQ_LISTENING,  /* LISTEN sent */
    SUP_JOBQ_READY,      /* idle, or running current */
};

/* What this supervisor did with one schedule (cron.c; loop thread). */
struct sup_cron_state {
    int64_t fired; /* the last tick cron_fire was run for (0 = none yet) */
    bool queued;   /* a CRON op of the schedule is queued or in flight */
    bool failing;  /* the last cron_fire failed (logged once) */
};

/* What nodes.c and cron.c read of the connection: the node's name, host, pid (text), the
 * tasks and schedule ids (JSON arrays), and the schedules with their state. */
struct sup_jobq_node {
    char *name;
    char host[256];
    char pid[16];
    char *tasks;
    char *schedules;
    struct sup_cron *cron;
    struct sup_cron_state *cron_state;
    int ncron;
};
/* The lease as this node knows it (lease.c). Loop thread only. */
struct sup_lease {
    int ttl_ms, heartbeat_ms, margin_ms; /* margin: trusted until sent + ttl - margin */
    uint64_t sent_ms;                    /* monotonic: the last renewal was sent */
    uint64_t trusted_until_ms;           /* monotonic: no new connection after this */
    uint64_t busy_ms;                    /* monotonic: a worker last waited for a slot */
    int granted, budget, target, nodes;  /* the last renewal's answer */
    bool fenced, failing;
    json_t *view; /* the nodes whose lease runs, as the last renewal returned them */
    uv_timer_t fence_timer;
    uv_timer_t demand_timer; /* renews at once when workers wait for slots */
};

/*
 * The job-queue connection's state: written by jobq_conn.c (connection, statement queue,
 * stop), orphans.c (dead[], dead_next) and jobq_depths.c (depth, dead_rows,
 * depth_at_us). Loop thread only.
 */
struct sup_jobq {
    struct sup_jobq_opts o;
    struct rt_pgconn pc; /* the connection, its budget slot (the supervisor's token) */
    enum sup_jobq_state state;
    uv_timer_t timer;          /* reconnect backoff, or the stop's deadline */
    uv_timer_t sweep_timer;    /* queues a sweep every sweep_ms */
    uv_timer_t beat_timer;     /* queues the lease renewal and the node's heartbeat */
    uv_timer_t cron_timer;     /* looks at the schedules at their next tick */
    struct sup_jobq_node node; /* owned copies: the configuration may be reloaded */
    struct sup_lease lease;
    int backoff_ms;
    struct sup_jobq_op *head, *tail; /* waiting ops */
    struct sup_jobq_op *current;     /* op in flight */
    PGresult *current_res;           /* its first result */
    char current_err[512];
    /* The last SUP_JOBQ_DEAD_MAX incarnations that died, with the claim_seq from which
     * their jobs never started: a claim in flight at the death commits after the unlock,
     * and the scan that frees it later must give those jobs their attempt back too. A
     * ring; dead_next is where the next one goes. */
    struct {
        char locked_by[96];
        uint64_t unstarted_from;
    } dead[SUP_JOBQ_DEAD_MAX];
    unsigned dead_next;
    json_t *depth;       /* {"queue": {"ready":..}} from the last sweep, or NULL */
    long long dead_rows; /* of pgcorral.jobs, from the statistics at the last sweep */
    uint64_t depth_at_us;
    bool stopping;
    bool handed_off;  /* a binary upgrade's new supervisor renews the node's row and lease */
    bool stop_soft;   /* stopping once the queued unlocks are sent (bounded by the timer) */
    int handles_open; /* ours and the driver's: the struct is freed after the last closes */
    void (*stop_cb)(void *);
    void *stop_arg;
};

/* Appends op (takes ownership) and sends it when the connection is idle. */
void sup_jobq_enqueue_op(struct sup_jobq *j, struct sup_jobq_op *op);

/* The parameters an op's statement may take. */
#define SUP_JOBQ_OP_PARAMS 9

/* nodes.c, cron.c: the statement of a BEAT, LEAVE or CRON op and its parameters (as
 * sup_orphans_sql), and the handling of its result (as sup_orphans_result). */
int sup_nodes_sql(const struct sup_jobq *j, const struct sup_jobq_op *op, const char **sql,
                  const char *values[SUP_JOBQ_OP_PARAMS]);
void sup_nodes_result(struct sup_jobq *j, const struct sup_jobq_op *op, PGresult *res,
                      const char *err);
int sup_cron_sql(const struct sup_jobq *j, struct sup_jobq_op *op, const char **sql,
                 const char *values[SUP_JOBQ_OP_PARAMS], char *buf, size_t buflen);

/* lease.c: starts trusting opts.first_lease, the fence and demand timers (two more
 * handles: close them with sup_lease_close); the statement of a LEASE op; its result. */
void sup_lease_start(struct sup_jobq *j);
void sup_lease_close(struct sup_jobq *j, uv_close_cb cb);
/* A binary upgrade handed over: the new supervisor renews the lease and applies it to the
 * shared segment; this one stops fencing it. */
void sup_lease_hand_off(struct sup_jobq *j);
int sup_lease_sql(struct sup_jobq *j, const char **sql, const char *values[SUP_JOBQ_OP_PARAMS]);
void sup_lease_result(struct sup_jobq *j, PGresult *res, const char *err);

/* The live job-worker incarnations of this supervisor (their locked_by names) as a text[]
 * literal, into buf ("{}" when none, or when they do not fit). */
void sup_jobq_live_workers(const struct shm_segment *seg, char *buf, size_t size);

/* cron.c: queues a CRON op for every schedule whose latest tick has not been enqueued by
 * us (and has none queued). Returns the ms until the next tick of any schedule (at most a
 * minute). Loop thread. */
uint64_t sup_cron_due(struct sup_jobq *j);
void sup_cron_result(struct sup_jobq *j, const struct sup_jobq_op *op, PGresult *res,
                     const char *err);

const struct sup_jobq_node *sup_jobq_node(const struct sup_jobq *j);

/* The lease timeout in seconds (for the sweep), and the segment (worker table). */
int sup_jobq_lease_s(const struct sup_jobq *j);
/* The options the connection was started with. */
const struct sup_jobq_opts *sup_jobq_opts_of(const struct sup_jobq *j);
const struct shm_segment *sup_jobq_seg(const struct sup_jobq *j);

/* jobq_depths.c: stores the queue depth document read by a sweep (takes the reference) and
 * the dead rows of the jobs table, and publishes the depths to the segment for /metrics. */
void sup_jobq_set_depth(struct sup_jobq *j, json_t *queues, long long dead_rows);

/*
 * orphans.c: the statement of op: its SQL, and its text parameters in values (pointing
 * into op or into buf). Returns the number of parameters.
 */
int sup_orphans_sql(const struct sup_jobq *j, const struct sup_jobq_op *op, const char **sql,
                    const char *values[SUP_JOBQ_OP_PARAMS], char *buf, size_t buflen);

/*
 * orphans.c: handles op's result (res is NULL when the statement failed, err says why).
 * Returns true when jobs became runnable (the caller wakes the job workers). May queue
 * more ops.
 */
bool sup_orphans_result(struct sup_jobq *j, const struct sup_jobq_op *op, PGresult *res,
                        const char *err);

#endif
