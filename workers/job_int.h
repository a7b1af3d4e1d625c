/*
 * What the files of the job role share: its state (struct job_state) and the calls between
 * the run loop (job.c) and the batched acks (job_ack.c). Loop thread only, except where a
 * field says otherwise.
 */
#ifndef PGCORRAL_JOB_INT_H
#define PGCORRAL_JOB_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/rt_util.h"
#include "workers/job.h"
#include "workers/plugin.h"

#define JOB_ACK_BUFS 7 /* array parameters of an ack */

/* What an ack does with a job: end it (done), reschedule it or fail it when its attempts
 * are used up (failed), fail it for good at once (discarded: pgc_discard), or unlock it
 * with its attempt given back, as it was (given back unstarted) or to run after a delay
 * (snoozed: pgc_snooze). */
enum ack_kind { ACK_DONE, ACK_FAILED, ACK_DISCARDED, ACK_GIVEBACK, ACK_SNOOZED };

/* One job's outcome waiting for the next ack statement. */
struct ack_item {
    int64_t id;
    enum ack_kind kind;
    int delay_ms;
    int64_t run_ms; /* ACK_DONE: the handler's run time */
    bool limited;   /* its queue has a concurrency limit: the ack frees a slot */
    char *error;    /* ACK_FAILED, ACK_DISCARDED: owned */
};

/* A growable array of acks. */
struct ack_list {
    struct ack_item *items;
    int n, cap;
};

/* The job role's state, in worker_ctx.role_state. */
struct job_state {
    struct worker_ctx *w;
    const struct job_options *opt; /* cfg->jobs, or default_opt when it is NULL */
    struct job_options default_opt;
    const struct pgc_registry *reg;
    struct rt_pool *pool, *replica; /* borrowed: the worker's (replica NULL when none) */
    struct plugin_env *env;
    char locked_by[96];
    int concurrency;

    /* claim */
    char *queues_param;  /* text[] literal of opt->queues, or NULL */
    char *limited_param; /* text[] literal of the limited queues this worker serves, or NULL */
    char *limits_param;  /* int[] literal of their limits */
    const char *claim_values[9];
    char limit_buf[16];
    /* Numbering of the claimed jobs (claim_seq). A claim with limit n numbers its jobs
     * seq_next + 1 .. seq_next + n and moves seq_next on by n, so claims never overlap, also
     * when one fails after the server committed it. */
    int64_t seq_next;   /* loop: base of the next claim */
    int64_t claim_base; /* loop: base of the claim in flight */
    char seq_buf[24];   /* its text */
    int64_t seq_fresh;  /* mu: first number of the claims whose answer was not taken in */
    int64_t seq_last;   /* loop: number of the last job put on the local queue */
    bool seq_broken;    /* written under mu by the loop: a claim came back unnumbered or
                           out of order: publish 0, every held job counts as started */
    /* The last job of the last full batch (priority, run_at, id), where the next claim's
     * scan starts while a backlog lasts (see pgcorral.claim_jobs); after a wake-up, a poll
     * tick or a batch that was not full, the scan starts at the front again. */
    bool have_after;
    char after_priority[16], after_run_at[64], after_id[24];
    struct rt_query claim_q;
    bool claim_inflight;
    bool wanted; /* a wake-up or poll tick came since the last claim was sent */
    bool more;   /* the last claim filled its batch: more jobs are likely due */
    int last_limit;
    uint64_t claim_pause_until; /* uv_now: no claims before (after a database error) */
    int claim_failures;         /* claims failed in a row */
    uint64_t claim_logged_at;   /* uv_now of the last "job claim failed" line */
    bool idle;                  /* no task registered: claim nothing */

    /* runs: the queue, the done list and the counts under mu are shared with threads */
    pthread_mutex_t mu;
    struct job_run *queue_head, *queue_tail; /* mu: claimed, not started (FIFO) */
    int queued;                              /* mu */
    int in_flight;               /* mu: taken by a thread, not yet handled by the loop */
    struct job_run *done;        /* mu: finished by threads, waiting for the loop */
    uv_async_t done_async;       /* a thread finished a job */
    struct runner *runners;      /* concurrency of them */
    int runners_active;          /* loop */
    int timed_out;               /* loop: jobs whose timeout fired (their threads are stuck) */
    _Atomic int yield;           /* loop: a claim or ack waits for a connection of a runner */
    uint64_t runner_pause_until; /* uv_now: no new runner before (no connection to be had) */
    double ewma_us;              /* recent handler run time */

    /* acks */
    struct ack_list pending, inflight;
    struct rt_query ack_q;
    bool ack_inflight;
    struct rt_buf ack_bufs[JOB_ACK_BUFS]; /* $2..$7 and $9 of JOB_ACK_SQL, for the statement
                                             in flight */
    const char *ack_values[9];
    int ack_backoff_ms;
    bool ack_gave_up;         /* replacing, and an ack failed: exit without it */
    int ack_singles;          /* jobs of a refused batch still to be acked one by one (job_ack.c) */
    bool ack_single_inflight; /* the ack in flight is one of those */

    /* jobs of tasks this worker does not know (struct unknown_job) */
    int unknown_checks;       /* questions in flight */
    struct unknown_job *held; /* held before they are given back, oldest first */
    struct unknown_job *held_tail;
    uv_timer_t putback_timer; /* gives the held jobs back when their hold is over */

    uv_poll_t wake;
    bool wake_started;
    uv_timer_t poll_timer, watchdog, ack_timer;
    uv_timer_t due_timer;       /* fires when the earliest retry this worker scheduled is due */
    uint64_t due_at;            /* uv_now of that, 0 when not armed */
    uv_check_t flush_check;     /* flushes acks once per loop iteration */
    _Atomic bool stop_starting; /* read by handler threads: give back instead of running */
    bool draining;              /* SIGTERM */
    bool replacing;             /* a task overran its timeout: finish, then exit for a new worker */
    bool closing;
    int handles_open;
};

/* ---- job.c, for the acks ------------------------------------------------------------- */

/* When draining or replacing and nothing is left in flight: stops the worker. */
void job_check_done(struct job_state *js);
/* Sends a claim when one is wanted and allowed. */
void job_maybe_claim(struct job_state *js);
/* A claim or ack is about to wait for a connection: asks a runner to hand its own back
 * when every one is out. */
void job_need_connection(struct job_state *js);

/* ---- job_ack.c ----------------------------------------------------------------------- */

/* Readies js's acks (the retry backoff); js's ack_timer and flush_check are initialised by
 * the caller with data = js. */
void job_ack_init(struct job_state *js);

/*
 * Records the outcome of job id (limited: its queue has a concurrency limit) of kind kind:
 * delay_ms before it runs again (ACK_FAILED, ACK_SNOOZED), run_ms (ACK_DONE), error (its
 * last_error for ACK_FAILED and ACK_DISCARDED, copied and cut; NULL otherwise). The ack goes
 * out at the end of this loop iteration, batched with the others.
 */
void job_ack_add(struct job_state *js, int64_t id, bool limited, enum ack_kind kind, int delay_ms,
                 int64_t run_ms, const char *error);

/* Frees the acks not sent (the worker is closing: its jobs stay locked for the supervisor). */
void job_ack_discard(struct job_state *js);

#endif
