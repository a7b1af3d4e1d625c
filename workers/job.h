/*
 * Job workers: the job role's hooks (claim batches of jobs from pgcorral.jobs, run their
 * plugin handlers on threads with a borrowed connection, ack in batches, drain on SIGTERM),
 * the validation of job descriptions shared by POST /api/v1/jobs and `pgcorral enqueue`,
 * and the HTTP helpers of the jobs routes.
 */
#ifndef PGCORRAL_JOB_H
#define PGCORRAL_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "runtime/rt_input.h"
#include "runtime/rt_pool.h"
#include "workers/workers.h"

/* Exit status of a job worker that replaced itself after a handler overran its timeout
 * (a thread cannot be cancelled safely): the supervisor respawns it like any death. */
#define JOB_EXIT_REPLACE 75

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

/* ---- options ------------------------------------------------------------------------- */

/* How job workers behave; the supervisor sets them before it forks (job_configure). */
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

/* Sets the options every job worker of this process (and its forks) uses; o and what it
 * points to are borrowed and must outlive the workers. NULL = defaults. Start-up only. */
void job_configure(const struct job_options *o);

/* The options in effect. Borrowed. */
const struct job_options *job_options_get(void);

/* The job role: start claims and runs jobs, drain finishes them (DESIGN "Job workers"). */
extern const struct worker_role_ops job_role_ops;

/*
 * The retry delay after failed attempt number attempt (1-based), in ms:
 * min(retry_base_ms * 2^(attempt-1), retry_max_ms). Any thread.
 */
int job_retry_delay_ms(const struct job_options *o, int attempt);

/*
 * The locked_by value of a worker incarnation: "HOST:PID:GENERATION" (host name cut to
 * 63 bytes). Writes buf (always NUL-terminated) and returns it. Any process.
 */
char *job_locked_by(char *buf, size_t size, pid_t pid, uint32_t generation);

/* ---- job descriptions (POST /api/v1/jobs, pgcorral enqueue) --------------------------- */

/* One job to add; strings are owned (job_spec_free). NULL = the default. */
struct job_spec {
    char *task;
    char *payload; /* JSON text; NULL = {} */
    char *queue;
    char *run_at; /* timestamp text (ISO 8601; a relative run_at already converted) */
    char *key;
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
 * and fills *out (caller frees with job_spec_free), or -EINVAL with a message for a 400
 * answer in err (malformed JSON with its position, an unknown field, a wrong type, a field
 * over its length limit of runtime/rt_input.h, named with the limit), or -ENOMEM. Any
 * thread.
 */
__attribute__((warn_unused_result)) int job_spec_parse(struct job_spec *out, const char *body,
                                                       size_t len, char *err, size_t errlen);

/* Frees the strings of s and zeroes it. Safe on a zeroed spec. */
void job_spec_free(struct job_spec *s);

/* The 7 parameters of JOB_ADD_SQL, borrowed from s (valid while s is). */
void job_spec_params(struct job_spec *s, const char *values[7]);

/* ---- HTTP helpers of the web worker: POST /api/v1/jobs, GET /api/v1/jobs/:id ---------- */

struct job_http;
/* req->status and req->body are set. Loop thread. */
typedef void (*job_http_cb)(struct job_http *req);

/* One jobs-route call, owned by the caller. */
struct job_http {
    void *data; /* public: for the caller */
    int status; /* read-only: 201, 200, 400, 404, 409, 422, 503, 500 */
    char *body; /* read-only: the JSON answer, NUL-terminated; freed by job_http_clear */
    /* read-only, for 5xx: what the client may be told (no database text; static), and the
     * full reason and SQLSTATE for the log ("" when none) */
    const char *error;
    char detail[RT_ERROR_MSG_LEN];
    char sqlstate[6];
    /* private */
    struct rt_query q;
    struct job_spec spec;
    const char *values[9];
    char idbuf[24];
    char list_buf[4][RT_JOB_QUEUE_MAX + 1]; /* job_http_list: state, task, queue, limit */
    job_http_cb cb;
};

/*
 * POST /api/v1/jobs with its body: validates it (job_spec_parse) and adds the job through
 * pool. Returns 0 when cb will run later on the loop with 201 {"id":N} for a new job, 200
 * {"id":N,"duplicate":true} when a job with that key exists (nothing added), 422
 * {"error":...} naming the known tasks when no live node registers the task (and the body
 * has no "force":true), 400 {"error":...} when the database rejects a value, 503 when the database
 * is unreachable, 500 on another database error (5xx: error and detail are set, the body is not for
 * clients); or 1 when the answer is ready at once (400 {"error":...} for a malformed body; cb is
 * not called). request_id (may be NULL) is stored with the job and names the request in the
 * slow-query log; borrowed until cb. req is borrowed until cb or until job_http_clear
 * after 1. Loop thread.
 */
__attribute__((warn_unused_result)) int job_http_enqueue(struct job_http *req, struct rt_pool *pool,
                                                         const char *body, size_t len,
                                                         const char *request_id, job_http_cb cb);

/* The operations on one job, by the SQL functions of the same names. */
enum job_op { JOB_OP_GET, JOB_OP_RETRY, JOB_OP_CANCEL, JOB_OP_DELETE };

/*
 * GET /api/v1/jobs/:id, POST /api/v1/jobs/:id/retry, POST /api/v1/jobs/:id/cancel, DELETE
 * /api/v1/jobs/:id: 200 with the job as pgcorral.job_json has it ({"id","state","task",
 * "queue","payload","priority","run_at","attempts","max_attempts","last_error","key",
 * "locked_by","created_at","finished_at","run_ms","cancel_requested_at","request_id"}; after
 * the operation; for a delete, as it was), 404 {"error":"no job N"}, 409 when the job's
 * state does not allow it ({"error":"job N is already cancelled"}, "job N is running: cancel
 * it first", ...). Same return contract as job_http_enqueue (1: 400 for an id that is not a
 * positive integer).
 */
__attribute__((warn_unused_result)) int job_http_job(struct job_http *req, struct rt_pool *pool,
                                                     enum job_op op, const char *id, size_t idlen,
                                                     const char *request_id, job_http_cb cb);

/*
 * GET /api/v1/jobs?state=&task=&queue=&limit= (query: the raw query string, "" for none;
 * borrowed until the call returns): 200 {"jobs":[...]} with the jobs newest first (limit
 * 1..10000, default 100; an empty parameter is not given). 400 for an unknown parameter,
 * an unknown state or a bad limit. Same return contract as job_http_enqueue.
 */
__attribute__((warn_unused_result)) int job_http_list(struct job_http *req, struct rt_pool *pool,
                                                      const char *query, const char *request_id,
                                                      job_http_cb cb);

/* Frees req's body and spec; req can be used again. */
void job_http_clear(struct job_http *req);

#endif
