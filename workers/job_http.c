/*
 * The jobs routes of the web worker, as asynchronous helpers on its pool: POST
 * /api/v1/jobs (validate, add through pgcorral.add_known_job, which refuses a task no live
 * node registers unless "force":true) and GET /api/v1/jobs/:id.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime/rt_json.h"
#include "workers/job.h"

/* One job as JSON, built by the server. $1 = id. */
static const char get_sql[] =
    "SELECT json_build_object('id', id, 'queue', queue, 'task', task, 'payload', payload,"
    " 'priority', priority, 'run_at', run_at, 'attempts', attempts,"
    " 'max_attempts', max_attempts, 'last_error', last_error,"
    " 'state', CASE WHEN failed_at IS NOT NULL THEN 'failed'"
    "   WHEN locked_by IS NOT NULL THEN 'running'"
    "   WHEN run_at > now() THEN 'scheduled' ELSE 'ready' END,"
    " 'locked_by', locked_by, 'key', key, 'created_at', created_at,"
    " 'failed_at', failed_at, 'request_id', request_id)::text"
    " FROM pgcorral.jobs WHERE id = $1::bigint";

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
 * (the add functions' own messages about the job's fields); else 503/500 without it. */
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
    rc = job_spec_parse(&req->spec, body ? body : "", body ? len : 0, err, sizeof err);
    if (rc < 0) {
        if (rc == -ENOMEM)
            answer_failure(req, 500, "out of memory", NULL);
        else
            answer_error(req, 400, err);
        return 1;
    }
    job_spec_params(&req->spec, req->values);
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

static void on_got(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct job_http *req = q->data;

    if (!res) {
        answer_db_error(req, err);
    } else if (PQntuples(res) == 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "no job %s (finished jobs are deleted)", req->idbuf);
        answer_error(req, 404, msg);
        PQclear(res);
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

int job_http_get(struct job_http *req, struct rt_pool *pool, const char *id, size_t idlen,
                 const char *request_id, job_http_cb cb)
{
    int rc;

    req->status = 0;
    req->body = NULL;
    req->error = NULL;
    req->detail[0] = req->sqlstate[0] = '\0';
    req->cb = cb;
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
    req->q.data = req;
    req->q.request_id = request_id;
    rc = rt_pool_query(pool, &req->q, "GET /api/v1/jobs/:id", get_sql, 1, req->values, on_got);
    if (rc < 0) {
        answer_failure(req, 503, "the worker is stopping", NULL);
        return 1;
    }
    return 0;
}

void job_http_clear(struct job_http *req)
{
    free(req->body);
    req->body = NULL;
    job_spec_free(&req->spec);
}
