/*
 * Job workers: the job role's hooks (claim batches of jobs from pgcorral.jobs, run their
 * plugin handlers on threads with a borrowed connection, ack in batches, drain on SIGTERM)
 * and the HTTP helpers of the jobs routes. The SQL they speak is runtime/rt_jobq.h's.
 */
#ifndef PGCORRAL_JOB_H
#define PGCORRAL_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "runtime/rt_input.h"
#include "runtime/rt_jobq.h"
#include "runtime/rt_pool.h"
#include "workers/workers.h"

/* Exit status of a job worker that replaced itself after a handler overran its timeout
 * (a thread cannot be cancelled safely): the supervisor respawns it like any death. */
#define JOB_EXIT_REPLACE 75

/* The job role: start claims and runs jobs, drain finishes them (DESIGN "Job workers"). */
extern const struct worker_role_ops job_role_ops;

/*
 * The retry delay after failed attempt number attempt (1-based), in ms:
 * min(retry_base_ms * 2^(attempt-1), retry_max_ms). Any thread.
 */
int job_retry_delay_ms(const struct job_options *o, int attempt);

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
    struct rt_job_spec spec;
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
