/*
 * Job operations end to end on the real binary: a running sleep job cancelled from the CLI
 * and over HTTP stops early (its handler sees pgc_cancelled) and ends cancelled; the jobs
 * routes list with filters, show, retry, cancel and delete with 404 (no job, unknown
 * sub-path), 405, 409 (wrong state) and 400 (bad id, bad filter) answers; POST takes
 * run_at "+5m".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

static char env_url[1024];
static PGconn *db;

/* What wait_state waits for. */
struct want {
    long long id;
    const char *state;
};

static bool has_state(void *arg)
{
    const struct want *w = arg;
    return strcmp(jt_job_state(db, w->id), w->state) == 0;
}

/* Waits up to ms for job id to be in state. */
static bool wait_state(long long id, const char *state, int ms)
{
    struct want w = {id, state};
    return pgt_wait_until(has_state, &w, ms);
}

/* A job in the database by SQL; returns its id. */
static long long add(const char *sql)
{
    long long id = pgt_query_ll(db, sql);
    if (id <= 0)
        bail("%s: no id", sql);
    return id;
}

/* The string field of a JSON body (static copy), or "". */
static const char *field(const char *body, const char *name)
{
    static char buf[256];
    json_t *doc = json_loads(body ? body : "", 0, NULL);
    const char *v = json_string_value(json_object_get(doc, name));
    snprintf(buf, sizeof buf, "%s", v ? v : "");
    json_decref(doc);
    return buf;
}

/* The last_error of job id, as a new string (caller frees). */
static char *last_error(long long id)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT coalesce(last_error, '') FROM pgcorral.jobs WHERE id = %lld",
             id);
    PGresult *r = PQexec(db, sql);
    char *s = strdup(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0)
                                                                               : "");
    PQclear(r);
    return s;
}

static void test_cancel_running(struct ts_sup *s)
{
    struct ot_output o;
    struct wt_resp r;
    char id[24], path[96];

    /* From the CLI. */
    long long j1 = add("SELECT pgcorral.add_job('sleep', '{\"ms\": 30000}')");
    ok(wait_state(j1, "running", 10000), "a 30 s sleep job is running");
    snprintf(id, sizeof id, "%lld", j1);
    char *argv[] = {(char *)pgt_binary(), "jobs", "cancel", id, NULL};
    char *env[] = {env_url, NULL};
    long long t0 = pgt_now_ms();
    is_int(ot_run(argv, env, 10000, &o), 0, "pgcorral jobs cancel of the running job: exit 0");
    ok(strstr(o.out, "cancel requested") != NULL, "... the cancel is requested");
    ot_output_free(&o);
    ok(wait_state(j1, "cancelled", 5000), "... the job ends cancelled");
    long long took = pgt_now_ms() - t0;
    ok(took < 3000, "... within %lld ms, long before its 30 s", took);
    char *e = last_error(j1);
    ok(strstr(e, "sleep: cancelled after") != NULL, "... its handler saw pgc_cancelled: '%s'", e);
    free(e);

    /* Over HTTP; a running job cannot be deleted meanwhile. */
    long long j2 = add("SELECT pgcorral.add_job('sleep', '{\"ms\": 30000}')");
    ok(wait_state(j2, "running", 10000), "another sleep job is running");
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", j2);
    is_int(ts_req(s->port, "DELETE", path, NULL, NULL, &r), 409, "DELETE of a running job: 409");
    ok(strstr(r.body, "is running: cancel it first") != NULL, "... saying to cancel it first");
    wt_resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", j2);
    is_int(ts_req(s->port, "POST", path, NULL, NULL, &r), 200,
           "POST /api/v1/jobs/ID/cancel of the running job: 200");
    ok(strcmp(field(r.body, "state"), "running") == 0 && *field(r.body, "cancel_requested_at"),
       "... the job, still running, with cancel_requested_at");
    wt_resp_free(&r);
    ok(wait_state(j2, "cancelled", 5000), "... then it ends cancelled");
}

static void test_routes(struct ts_sup *s)
{
    struct wt_resp r;
    char path[128];
    long long id;

    /* run_at "+5m", then cancel, cancel again, delete, and the job is gone. */
    is_int(
        ts_req(s->port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"noop\",\"run_at\":\"+5m\"}", &r),
        201, "POST run_at \"+5m\": 201");
    id = r.body ? strtoll(strchr(r.body, ':') ? strchr(r.body, ':') + 1 : "0", NULL, 10) : 0;
    wt_resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", id);
    is_int(ts_req(s->port, "GET", path, NULL, NULL, &r), 200, "GET /api/v1/jobs/ID: 200");
    is_str(field(r.body, "state"), "scheduled", "... scheduled");
    wt_resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", id);
    is_int(ts_req(s->port, "POST", path, NULL, NULL, &r), 200, "cancel of a scheduled job: 200");
    is_str(field(r.body, "state"), "cancelled", "... cancelled");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "POST", path, NULL, NULL, &r), 409, "cancel again: 409");
    char want[96];
    snprintf(want, sizeof want, "job %lld is already cancelled", id);
    is_str(field(r.body, "error"), want, "... '%s'", want);
    wt_resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", id);
    is_int(ts_req(s->port, "DELETE", path, NULL, NULL, &r), 200, "DELETE /api/v1/jobs/ID: 200");
    is_str(field(r.body, "state"), "cancelled", "... answers the job as it was");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "GET", path, NULL, NULL, &r), 404, "... then GET: 404");
    snprintf(want, sizeof want, "no job %lld", id);
    is_str(field(r.body, "error"), want, "... '%s'", want);
    wt_resp_free(&r);
    is_int(ts_req(s->port, "DELETE", path, NULL, NULL, &r), 404, "DELETE again: 404");
    wt_resp_free(&r);

    /* Retry of a failed job: it runs again (noop) and, done, is deleted. */
    id = add("INSERT INTO pgcorral.jobs (task, outcome, finished_at, attempts, max_attempts)"
             " VALUES ('noop', 'failed', now(), 3, 3) RETURNING id");
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/retry", id);
    is_int(ts_req(s->port, "POST", path, NULL, NULL, &r), 200, "POST /api/v1/jobs/ID/retry: 200");
    is_str(field(r.body, "state"), "queued", "... queued again");
    wt_resp_free(&r);
    ok(wait_state(id, "(none)", 5000), "... the worker runs it: done and deleted");

    /* The list and its filters. */
    long long fa = add("INSERT INTO pgcorral.jobs (task, queue, outcome, finished_at) VALUES"
                       " ('t325.a', 'qa', 'failed', now()) RETURNING id");
    add("INSERT INTO pgcorral.jobs (task, outcome, finished_at) VALUES ('t325.b', 'failed',"
        " now()) RETURNING id");
    is_int(ts_req(s->port, "GET", "/api/v1/jobs?state=failed&task=t325.a", NULL, NULL, &r), 200,
           "GET /api/v1/jobs?state=failed&task=t325.a: 200");
    json_t *doc = json_loads(r.body ? r.body : "", 0, NULL);
    json_t *jobs = json_object_get(doc, "jobs");
    ok(json_array_size(jobs) == 1 &&
           json_integer_value(json_object_get(json_array_get(jobs, 0), "id")) == fa,
       "... exactly that job");
    json_decref(doc);
    wt_resp_free(&r);
    ts_req(s->port, "GET", "/api/v1/jobs?state=failed&limit=1", NULL, NULL, &r);
    doc = json_loads(r.body ? r.body : "", 0, NULL);
    ok(json_array_size(json_object_get(doc, "jobs")) == 1, "limit=1: one job");
    json_decref(doc);
    wt_resp_free(&r);
    ts_req(s->port, "GET", "/api/v1/jobs?queue=qa", NULL, NULL, &r);
    doc = json_loads(r.body ? r.body : "", 0, NULL);
    ok(json_array_size(json_object_get(doc, "jobs")) == 1, "queue=qa: that queue's job");
    json_decref(doc);
    wt_resp_free(&r);
    is_int(ts_req(s->port, "GET", "/api/v1/jobs?state=done", NULL, NULL, &r), 400,
           "an unknown state: 400");
    ok(strstr(field(r.body, "error"), "unknown state \"done\"") != NULL, "... naming it");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "GET", "/api/v1/jobs?limit=0", NULL, NULL, &r), 400, "limit=0: 400");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "GET", "/api/v1/jobs?colour=red", NULL, NULL, &r), 400,
           "an unknown parameter: 400");
    ok(strstr(field(r.body, "error"), "unknown query parameter \"colour\"") != NULL,
       "... naming it");
    wt_resp_free(&r);

    /* Sub-paths and ids. */
    is_int(ts_req(s->port, "GET", "/api/v1/jobs/6/frobnicate", NULL, NULL, &r), 404,
           "an unknown sub-path: 404");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "POST", "/api/v1/jobs/6/retry/now", NULL, NULL, &r), 404,
           "a sub-path below an action: 404");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "GET", "/api/v1/jobs/6/retry", NULL, NULL, &r), 405,
           "GET of an action: 405, not a parse error");
    char v[64];
    is_str(wt_header(&r, "allow", v, sizeof v), "POST", "... Allow: POST");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "POST", "/api/v1/jobs/6", NULL, NULL, &r), 405, "POST to a job: 405");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "POST", "/api/v1/jobs/abc/cancel", NULL, NULL, &r), 400,
           "cancel of an id that is not a number: 400");
    is_str(field(r.body, "error"), "the job id must be a positive integer", "... saying so");
    wt_resp_free(&r);
    is_int(ts_req(s->port, "POST", "/api/v1/jobs/999999999/retry", NULL, NULL, &r), 404,
           "retry of a job that does not exist: 404");
    is_str(field(r.body, "error"), "no job 999999999", "... 'no job 999999999'");
    wt_resp_free(&r);
    id = add("INSERT INTO pgcorral.jobs (task, outcome, finished_at) VALUES ('noop', 'completed',"
             " now()) RETURNING id");
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/retry", id);
    is_int(ts_req(s->port, "POST", path, NULL, NULL, &r), 409, "retry of a completed job: 409");
    wt_resp_free(&r);
}

int main(void)
{
    struct ts_sup s;

    tap_timeout(90);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t325");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *args[] = {"--jobs",      "1",        "--listen",
                    "127.0.0.1:0", "--plugin", (char *)jt_example_plugin("basic"),
                    NULL};
    char *env[] = {env_url, NULL};
    if (!ts_start(&s, "t325.sock", 1, args, env))
        bail("the supervisor did not start");
    db = jt_connect(url);
    test_cancel_running(&s);
    test_routes(&s);
    ok(ts_stop(&s), "the supervisor stops cleanly");
    pgt_proc_cleanup(&s.p);
    PQfinish(db);
    return done_testing();
}
