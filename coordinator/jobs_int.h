/*
 * The supervisor's side of the job queue, shared between the coordinator's files: schema
 * migrations, the LISTEN connection that fans job wake-ups out to job workers, orphan
 * recovery when a job worker dies, and the `pgcorral enqueue` / `pgcorral migrate` commands.
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
#include "shm/shm.h"

/* The schema version this build migrates to (coordinator/migrate.c). */
#define SUP_SCHEMA_VERSION 7

/* The migration that gave jobs their outcome ("job states"); tests of the upgrade stop
 * just before it. */
#define SUP_SCHEMA_JOB_STATES 6

/* The migration that limits queues' concurrency in the claim (--queue-concurrency). */
#define SUP_SCHEMA_QUEUE_LIMITS 7

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
 * [--max-attempts N]`: adds one job through pgcorral.add_job and prints its id. Returns the
 * exit status (0; 1 on a database error; 2 on a usage error).
 */
int sup_enqueue_main(int argc, char **argv);

/* ---- the supervisor's job connection (wakeups.c, orphans.c) --------------------------- */

struct sup_jobs; /* opaque; lives on the supervisor's loop */

struct sup_jobs_opts {
    uv_loop_t *loop;           /* required: the supervisor's loop */
    const struct rt_dburl *db; /* required; borrowed, outlives the struct */
    struct shm_segment *seg;   /* required: budget slot, worker roles and states */
    const int *job_wake_fds;   /* required: one eventfd per worker-table entry */
    int lease_s;  /* lease of a claimed job: refreshed by the sweep for live workers of this
                     host, freed by any host's sweep when older (a host that vanished); 120 */
    int sweep_ms; /* how often the sweep runs (leases, queue depth); 5000, at most lease/4 */
    int reconnect_max_ms; /* reconnect backoff cap (doubling from 250 ms); 10000 */
    uint32_t token;       /* budget token of the connection; shm_token(SHM_SUPERVISOR_INDEX,
                             1) by default. A binary upgrade's new supervisor takes the next
                             generation, so that both supervisors' tokens differ. */
};

/* Fills opts with the defaults above (the required fields still to set). */
void sup_jobs_opts_init(struct sup_jobs_opts *opts);

/*
 * Starts the supervisor's single job connection on the loop: it reserves a budget slot
 * (opts->token) before it connects, LISTENs on pgcorral_jobs and
 * writes to the job workers' eventfds on every notification (and once after each
 * (re)connect, in case one was missed). It reconnects with backoff when the server goes
 * away. Returns 0 and writes *out, or -EINVAL / -ENOMEM. Loop thread.
 */
__attribute__((warn_unused_result)) int sup_jobs_start(struct sup_jobs **out,
                                                       const struct sup_jobs_opts *opts);

/*
 * Closes the connection, frees its budget slot and every handle; cb(arg) runs on the loop
 * once all is gone (cb may be NULL). Pending orphan unlocks are dropped (a later start's
 * sweep frees them by lease). sup_jobs_stop(NULL, ...) does nothing.
 */
void sup_jobs_stop(struct sup_jobs *j, void (*cb)(void *arg), void *arg);

/* Writes 1 to the eventfd of every job worker that is starting or ready. Loop thread. */
void sup_jobs_wake_all(struct sup_jobs *j);

/*
 * A job worker incarnation died (after waitpid): unlocks every job it had claimed at once,
 * so that they run again without waiting for a lease, then wakes the job workers. Jobs
 * numbered (claim_seq) from unstarted_from on never started: they get back the attempt
 * their claim counted. The others are charged, and kept as failed when their attempts
 * are used up. unstarted_from is what the worker left in its shm block
 * (jobs_unstarted_from; read it before shm_worker_retire()), 0 = not known: every job is
 * charged. pid and generation name the incarnation (they make its locked_by, see
 * job_locked_by()). Safe when the connection is down: the unlock is queued until it is
 * back. Loop thread.
 */
void sup_jobs_worker_died(struct sup_jobs *j, pid_t pid, uint32_t generation,
                          uint64_t unstarted_from);

/*
 * Queue depth by queue and state, as last read (every sweep_ms, not per call):
 * {"queues":{"default":{"ready":n,"scheduled":n,"running":n,"failed":n}},"age_ms":n,
 * "dead_rows":n} or {"queues":{},"age_ms":null} before the first read. New reference;
 * NULL on ENOMEM.
 */
json_t *sup_jobs_json(const struct sup_jobs *j);

/* ---- between wakeups.c and orphans.c -------------------------------------------------- */

/* One statement queued on the job connection; runs when the connection is up and idle. */
struct sup_jobs_op {
    struct sup_jobs_op *next;
    int kind;                /* SUP_JOBS_OP_* */
    char locked_by[96];      /* UNLOCK: the dead incarnation */
    char reason[160];        /* UNLOCK: the last_error written to its jobs that had started */
    uint64_t unstarted_from; /* UNLOCK: its jobs_unstarted_from; 0 = not known */
    uint64_t queued_us;      /* when it was first queued (shm_now_us), for the log */
    int tries;               /* failed runs so far */
};
#define SUP_JOBS_OP_UNLOCK 1     /* unlock the jobs of one dead incarnation */
#define SUP_JOBS_OP_SWEEP 2      /* free expired leases; read queue depth */
#define SUP_JOBS_OP_SCAN_LOCAL 3 /* find jobs locked by dead processes of this host */
#define SUP_JOBS_OP_VACUUM 4     /* VACUUM the jobs table (dead rows piled up) */

/*
 * The claim_seq from which the jobs of a dead incarnation never started, remembered for
 * its last SUP_JOBS_DEAD_MAX deaths: sup_jobs_worker_died() records it (0 = not known),
 * and the scan's unlocks of that incarnation use it. Returns 0 for an incarnation not
 * remembered. Loop thread.
 */
#define SUP_JOBS_DEAD_MAX 128
void sup_jobs_remember_dead(struct sup_jobs *j, const char *locked_by, uint64_t unstarted_from);
uint64_t sup_jobs_dead_unstarted_from(const struct sup_jobs *j, const char *locked_by);

/* Appends op (takes ownership) and sends it when the connection is idle. */
void sup_jobs_enqueue_op(struct sup_jobs *j, struct sup_jobs_op *op);

/* The lease timeout in seconds (for the sweep), and the segment (worker table). */
int sup_jobs_lease_s(const struct sup_jobs *j);
const struct shm_segment *sup_jobs_seg(const struct sup_jobs *j);

/* Stores the queue depth document read by a sweep (takes the reference) and the dead rows
 * of the jobs table. */
void sup_jobs_set_depth(struct sup_jobs *j, json_t *queues, long long dead_rows);

/*
 * orphans.c: the statement of op: its SQL, and its text parameters in values (pointing
 * into op or into buf). Returns the number of parameters.
 */
int sup_orphans_sql(const struct sup_jobs *j, const struct sup_jobs_op *op, const char **sql,
                    const char *values[4], char *buf, size_t buflen);

/*
 * orphans.c: handles op's result (res is NULL when the statement failed, err says why).
 * Returns true when jobs became runnable (the caller wakes the job workers). May queue
 * more ops.
 */
bool sup_orphans_result(struct sup_jobs *j, const struct sup_jobs_op *op, PGresult *res,
                        const char *err);

#endif
