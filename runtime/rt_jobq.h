/*
 * The job queue's SQL contract, shared by everyone who talks to pgcorral.jobs: the job
 * workers (claim, ack), the supervisor (LISTEN, orphans), the enqueuers (POST /api/v1/jobs,
 * `pgcorral enqueue`, pgc_enqueue) and the migrations that define the functions called here.
 * Also the job description parser and the one builder of JOB_ADD_SQL's parameters.
 */
#ifndef PGCORRAL_RT_JOBQ_H
#define PGCORRAL_RT_JOBQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The LISTEN/NOTIFY channel of job wake-ups; the payload is the queue name. */
#define JOB_CHANNEL "pgcorral_jobs"

/*
 * The claim, one round trip: up to $2 due jobs for incarnation $1 (of the queues in $3, a
 * text[] literal, or NULL = any), behind the job ($4 priority, $5 run_at, $6 id; NULL =
 * from the front), numbered $7 + 1, $7 + 2, ... in claim order (claim_seq; NULL = not
 * numbered), with at most $9[i] jobs of queue $8[i] locked at once over every claimer
 * that passes the same limit ($8 a text[], $9 an int[] literal; NULL = no queue limited),
 * by pgcorral.claim_jobs (coordinator/migrate.c says why it is a function, why it can
 * start behind a job, what the numbers are for and how the limits hold). Columns: id,
 * queue, task, payload, priority, attempts, max_attempts, key, wait_s (seconds from
 * enqueue, or run_at, to the claim), run_at, claim_seq.
 */
#define JOB_CLAIM_SQL                                                                              \
    "SELECT * FROM pgcorral.claim_jobs($1, $2::int, $3::text[], $4::int, $5::timestamptz,"         \
    " $6::bigint, $7::bigint, $8::text[], $9::int[])"

/*
 * The ack of a batch, one statement, by pgcorral.ack_jobs: ends the done ids ($2, a
 * bigint[] literal) and unlocks the others ($3 ids, $4 errors (NULL = given back
 * unstarted), $5 retry delays in ms, $6 attempts to give back (1 for jobs that never
 * started), $7 final (true = failed for good at once)); a job whose attempts are used up
 * ends as failed, one whose cancel was requested as cancelled. Done jobs are deleted, or
 * with $8 true kept as completed with $9 (bigint[], in the order of $2) as their run times
 * in ms. Only rows still locked by $1 change. Columns: rows deleted, rows updated.
 */
#define JOB_ACK_SQL                                                                                \
    "SELECT * FROM pgcorral.ack_jobs($1, $2::bigint[], $3::bigint[], $4::text[], $5::int[],"       \
    " $6::int[], $7::boolean[], $8::boolean, $9::bigint[])"

/* Adds one job ($1 task, $2 payload, $3 queue, $4 run_at, $5 priority, $6 max_attempts,
 * $7 key; NULL = default). Columns: id, created (false: a job with that key exists). */
#define JOB_ADD_SQL                                                                                \
    "SELECT id, created FROM pgcorral.add_job_ex($1, $2::jsonb, $3, $4::timestamptz,"              \
    " $5::int, $6::int, $7)"

/* JOB_ADD_SQL for a job enqueued by an HTTP request: $8 is its request id (X-Request-Id),
 * kept in the job's request_id column. */
#define JOB_ADD_REQ_SQL                                                                            \
    "SELECT id, created FROM pgcorral.add_job_req($8, $1, $2::jsonb, $3, $4::timestamptz,"         \
    " $5::int, $6::int, $7)"

/* JOB_ADD_REQ_SQL behind the node registry's check (pgcorral.add_known_job): unless $9 (a
 * boolean: --force, "force":true) is true, a task that no live node registers is refused
 * with SQLSTATE JOB_UNKNOWN_TASK_STATE and a message that names the known tasks. $8 (the
 * request id) may be NULL. */
#define JOB_ADD_KNOWN_SQL                                                                          \
    "SELECT id, created FROM pgcorral.add_known_job($9::boolean, $8, $1, $2::jsonb, $3,"           \
    " $4::timestamptz, $5::int, $6::int, $7)"
#define JOB_UNKNOWN_TASK_STATE "PC422"

/* Job $2 (of task $3), claimed by incarnation $1 of node $4, has a task this worker does
 * not know: true when a live node other than $4 registers it (give it back then), else
 * false and the job is failed at once with error $5 (pgcorral.claimed_unknown_task). */
#define JOB_UNKNOWN_TASK_SQL "SELECT pgcorral.claimed_unknown_task($1, $2::bigint, $3, $4, $5)"

/*
 * The locked_by value of a worker incarnation: "HOST:PID:GENERATION" (host name cut to
 * 63 bytes). Writes buf (always NUL-terminated) and returns it. Any process.
 */
char *rt_job_locked_by(char *buf, size_t size, pid_t pid, uint32_t generation);

/* ---- job descriptions (POST /api/v1/jobs, pgcorral enqueue, pgc_enqueue)
 * --------------------------- */

/* One job to add; NULL = the default. The strings of a spec from rt_job_spec_parse are
 * owned (rt_job_spec_free); a spec filled by hand (pgc_enqueue) borrows them and is not
 * freed. */
struct rt_job_spec {
    const char *task;
    const char *payload; /* JSON text; NULL = {} */
    const char *queue;
    const char *run_at; /* timestamp text (ISO 8601; a relative run_at already converted) */
    const char *key;
    bool has_priority, has_max_attempts;
    bool force; /* add it even when no live node registers its task */
    int priority, max_attempts;
    char num[2][16]; /* text of priority and max_attempts for the parameters */
};

/*
 * Validates a JSON job description: an object with "task" (non-empty string) and optional
 * "payload" (any JSON), "queue" (non-empty string), "run_at" (a string: an ISO 8601
 * timestamp, or "+N[s|m|h|d]" from now, which becomes its timestamp; see rt_time.h),
 * "priority" (integer), "max_attempts" (integer >= 1), "key" (non-empty string), "force"
 * (boolean: add it even when no live node registers the task); null = absent. Returns 0
 * and fills *out (caller frees with rt_job_spec_free), or -EINVAL with a message for a 400
 * answer in err (malformed JSON with its position, an unknown field, a wrong type, a field
 * over its length limit of runtime/rt_input.h, named with the limit), or -ENOMEM. Any
 * thread.
 */
__attribute__((warn_unused_result)) int rt_job_spec_parse(struct rt_job_spec *out, const char *body,
                                                          size_t len, char *err, size_t errlen);

/* Frees the strings of s and zeroes it. Safe on a zeroed spec. */
void rt_job_spec_free(struct rt_job_spec *s);

/* The 7 parameters of JOB_ADD_SQL (and the first 7 of JOB_ADD_REQ_SQL, JOB_ADD_KNOWN_SQL),
 * borrowed from s (valid while s is): the one place that turns a job into them. */
void rt_job_spec_params(struct rt_job_spec *s, const char *values[7]);

#endif
