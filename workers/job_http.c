/*
 * The jobs routes of the web worker, as asynchronous helpers on its pool: POST
 * /api/v1/jobs (validate, add through pgcorral.add_known_job, which refuses a task no live
 * node registers unless "force":true), GET /api/v1/jobs (list) and the operations on one
 * job (show, retry, cancel, delete), through the SQL functions of the job operations
 * migration, whose SQLSTATEs become the HTTP status.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime/rt_util.h"
#include "runtime/rt_json.h"
#include "workers/job.h"
#include "workers/plugin.h"

/* The statement of each operation on one job ($1 = id), and its label in the logs. */
static const struct {
    const char *sql, *label;
} job_ops[] = {
    [JOB_OP_GET] = {"SELECT pgcorral.get_job($1::bigint)", "GET /api/v1/jobs/:id"},
    [JOB_OP_RETRY] = {"SELECT pgcorral.retry_job($1::bigint)", "POST /api/v1/jobs/:id/retry"},
    [JOB_OP_CANCEL] = {"SELECT pgcorral.cancel_job($1::bigint)", "POST /api/v1/jobs/:id/cancel"},
    [JOB_OP_DELETE] = {"SELECT pgcorral.delete_job($1::bigint)", "DELETE /api/v1/jobs/:id"},
};

/* The list, as one JSON document {"jobs":[...]}. $1 state, $2 task, $3 queue, $4 limit. */
static const char list_sql[] = "SELECT json_build_object('jobs', coalesce(json_agg(x), '[]'))"
                               " FROM pgcorral.list_jobs($1, $2, $3, $4::int) x";

/* Sets the answer: status and a JSON body built from doc (takes the reference). */
static void answer(struct job_http *req, int status, json_t *doc)
{
    free(req->body);
    req->status = status;
    req->body = rt_json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!req->body) {
        req->status = 500;
        req->error = "out of memory";
        req->body = strdup("{\"error\":\"out of memory\"}");
    }
}

static void answer_error(struct job_http *req, int status, const char *msg)
{
    answer(req, status, json_pack("{s:s}", "error", msg));
}

/* A failure (5xx): error (static) for the client; err's text and SQLSTATE (err may be
 * NULL) for the log only. */
static void answer_failure(struct job_http *req, int status, const char *error,
                           const struct rt_error *err)
{
    answer_error(req, status, error);
    req->error = error;
    if (err) {
        snprintf(req->detail, sizeof req->detail, "%s", err->message);
        snprintf(req->sqlstate, sizeof req->sqlstate, "%s", err->sqlstate);
    }
}

/* A database error: the client's fault (bad value: class 22, 23) -> 400 with the reason
 * (the functions' own messages); no such job (P0002) -> 404; a job in a state that does
 * not allow the operation (55000) -> 409; else 503/500 without the database's words. */
static void answer_db_error(struct job_http *req, const struct rt_error *err)
{
    bool client = err->code == RT_ESQL &&
                  (strncmp(err->sqlstate, "22", 2) == 0 || strncmp(err->sqlstate, "23", 2) == 0);
    if (err->code == RT_ESQL && strcmp(err->sqlstate, JOB_UNKNOWN_TASK_STATE) == 0) {
        char msg[RT_ERROR_MSG_LEN + 64];
        snprintf(msg, sizeof msg, "%s (\"force\":true enqueues it anyway)", err->message);
        answer_error(req, 422, msg);
    } else if (client)
        answer_error(req, 400, err->message);
    else if (err->code == RT_ESQL && strcmp(err->sqlstate, "P0002") == 0)
        answer_error(req, 404, err->message);
    else if (err->code == RT_ESQL && strcmp(err->sqlstate, "55000") == 0)
        answer_error(req, 409, err->message);
    else if (strcmp(err->sqlstate, "3F000") == 0 || strcmp(err->sqlstate, "42883") == 0)
        answer_failure(req, 503,
                       "the pgcorral schema is missing: the supervisor migrates it at start", err);
    else if (err->transient || err->code != RT_ESQL)
        answer_failure(req, 503, "database unavailable", err);
    else
        answer_failure(req, 500, "internal error", err);
}

static void on_added(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct job_http *req = q->data;

    if (!res) {
        answer_db_error(req, err);
    } else {
        json_int_t id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        bool created = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        if (created)
            answer(req, 201, json_pack("{s:I}", "id", id));
        else
            answer(req, 200, json_pack("{s:I,s:b}", "id", id, "duplicate", 1));
        PQclear(res);
    }
    req->cb(req);
}

int job_http_enqueue(struct job_http *req, struct rt_pool *pool, const char *body, size_t len,
                     const char *request_id, job_http_cb cb)
{
    char err[512];
    int rc;

    req->status = 0;
    req->body = NULL;
    req->error = NULL;
    req->detail[0] = req->sqlstate[0] = '\0';
    req->cb = cb;
    rc = rt_job_spec_parse(&req->spec, body ? body : "", body ? len : 0, err, sizeof err);
    if (rc < 0) {
        if (rc == -ENOMEM)
            answer_failure(req, 500, "out of memory", NULL);
        else
            answer_error(req, 400, err);
        return 1;
    }
    rt_job_spec_params(&req->spec, req->values);
    req->values[7] = request_id;
    req->values[8] = req->spec.force ? "true" : "false";
    req->q.data = req;
    req->q.request_id = request_id;
    rc = rt_pool_query(pool, &req->q, "POST /api/v1/jobs", JOB_ADD_KNOWN_SQL, 9, req->values,
                       on_added);
    if (rc < 0) {
        answer_failure(req, 503, "the worker is stopping", NULL);
        return 1;
    }
    return 0;
}

/* One JSON document from the server (the job, or the list) becomes the 200 answer. */
static void on_got(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct job_http *req = q->data;

    if (!res) {
        answer_db_error(req, err);
    } else {
        free(req->body);
        req->status = 200;
        req->body = strdup(PQgetvalue(res, 0, 0));
        if (!req->body)
            answer_failure(req, 500, "out of memory", NULL);
        PQclear(res);
    }
    req->cb(req);
}

/* Resets req's answer for a new call that reports to cb. */
static void start(struct job_http *req, job_http_cb cb)
{
    req->status = 0;
    req->body = NULL;
    req->error = NULL;
    req->detail[0] = req->sqlstate[0] = '\0';
    req->cb = cb;
}

/* Sends sql with req->values on pool; 0, or 1 with a 503 when the pool takes no query. */
static int send_query(struct job_http *req, struct rt_pool *pool, const char *label,
                      const char *sql, int n, const char *request_id)
{
    req->q.data = req;
    req->q.request_id = request_id;
    if (rt_pool_query(pool, &req->q, label, sql, n, req->values, on_got) < 0) {
        answer_failure(req, 503, "the worker is stopping", NULL);
        return 1;
    }
    return 0;
}

int job_http_job(struct job_http *req, struct rt_pool *pool, enum job_op op, const char *id,
                 size_t idlen, const char *request_id, job_http_cb cb)
{
    start(req, cb);
    if (idlen == 0 || idlen > 18 || id[0] == '0') {
        answer_error(req, 400, "the job id must be a positive integer");
        return 1;
    }
    for (size_t i = 0; i < idlen; i++) {
        if (id[i] < '0' || id[i] > '9') {
            answer_error(req, 400, "the job id must be a positive integer");
            return 1;
        }
    }
    memcpy(req->idbuf, id, idlen);
    req->idbuf[idlen] = '\0';
    req->values[0] = req->idbuf;
    return send_query(req, pool, job_ops[op].label, job_ops[op].sql, 1, request_id);
}

/* The query parameters of the list, in the order of list_jobs's. */
static const char *const list_params[] = {"state", "task", "queue", "limit"};

int job_http_list(struct job_http *req, struct rt_pool *pool, const char *query,
                  const char *request_id, job_http_cb cb)
{
    /* The query string's own decoding (pgc_req_query_param) on a request of just it. */
    struct pgc_request q = {.query = query ? query : ""};
    char msg[160];
    long long limit;

    start(req, cb);
    /* Every parameter must be one of list_params: a misspelt filter is not ignored. */
    for (const char *p = q.query; *p;) {
        size_t klen = strcspn(p, "=&");
        bool known = false;
        for (int i = 0; i < 4; i++)
            known |= strlen(list_params[i]) == klen && memcmp(p, list_params[i], klen) == 0;
        if (!known && klen > 0) {
            snprintf(msg, sizeof msg,
                     "unknown query parameter \"%.*s\" (parameters: state, task, queue, limit)",
                     (int)(klen > 32 ? 32 : klen), p);
            answer_error(req, 400, msg);
            return 1;
        }
        p += strcspn(p, "&");
        p += *p == '&';
    }
    for (int i = 0; i < 4; i++) {
        int n = pgc_req_query_param(&q, list_params[i], req->list_buf[i], sizeof req->list_buf[i]);
        if (n == PGC_EINVAL) {
            snprintf(msg, sizeof msg, "query parameter \"%s\" is longer than %zu bytes",
                     list_params[i], sizeof req->list_buf[i] - 1);
            answer_error(req, 400, msg);
            return 1;
        }
        /* Empty means not given: ?state=&task=x filters by task only. */
        req->values[i] = n > 0 ? req->list_buf[i] : NULL;
    }
    if (req->values[3] && rt_parse_ll(req->values[3], 1, 10000, &limit) < 0) {
        answer_error(req, 400, "limit must be an integer from 1 to 10000");
        return 1;
    }
    return send_query(req, pool, "GET /api/v1/jobs", list_sql, 4, request_id);
}

void job_http_clear(struct job_http *req)
{
    free(req->body);
    req->body = NULL;
    rt_job_spec_free(&req->spec);
}
