/*
 * The jobs routes' helpers of the web worker on a real pool: POST /api/v1/jobs validates
 * its body (malformed JSON, unknown fields, wrong types, bad timestamps -> 400 with the
 * reason) and answers 201 {"id"} or, for a key that exists, 200 {"id","duplicate":true};
 * GET /api/v1/jobs/:id answers the job with its state, 404 when there is none, 400 for an
 * id that is not one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"
#include "workers/job.h"

/* The loop and pool the helpers run on. */
static uv_loop_t loop;
static struct rt_pool *pool;

static void on_done(struct job_http *req)
{
    *(bool *)req->data = true;
}

/* POST with body (or GET id when get): returns the status; the body stays in req. */
static int run(struct job_http *req, bool get, const char *text)
{
    bool done = false;
    int rc;
    memset(req, 0, sizeof *req);
    req->data = &done;
    rc = get ? job_http_job(req, pool, JOB_OP_GET, text, strlen(text), NULL, on_done)
             : job_http_enqueue(req, pool, text, strlen(text), NULL, on_done);
    if (rc == 1)
        return req->status;
    long long end = pgt_now_ms() + 10000;
    while (!done && pgt_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return done ? req->status : -1;
}

static void expect_400(const char *body, const char *needle, const char *what)
{
    struct job_http req;
    int st = run(&req, false, body);
    if (!ok(st == 400 && req.body && strstr(req.body, needle), "%s", what))
        diag("  got %d %s", st, req.body ? req.body : "");
    job_http_clear(&req);
}

int main(void)
{
    struct job_http req;
    struct rt_dburl *u;
    struct rt_pool_opts o;
    char err[256], id[32];
    int st;

    tap_timeout(60);
    pgt_db_url();
    const char *url = jt_create_job_db("pgct_t314");
    if (rt_dburl_parse(url, &u, err, sizeof err) < 0)
        bail("%s", err);
    PGconn *db = jt_connect(url);
    /* A live node that registers the task, as a running supervisor would leave it. */
    jt_exec(db, "INSERT INTO pgcorral.nodes (node, host, pid, version, tasks)"
                " VALUES ('t314', 'h', 1, 'x', '{mail.send}')");
    uv_loop_init(&loop);
    rt_pool_opts_init(&o);
    o.loop = &loop;
    o.url = u;
    if (rt_pool_create(&pool, &o) < 0)
        bail("rt_pool_create");

    st = run(&req, false,
             "{\"task\":\"mail.send\",\"payload\":{\"to\":\"a@b\"},\"queue\":\"mail\","
             "\"priority\":-3,\"max_attempts\":5,\"run_at\":\"2030-01-02T03:04:05Z\","
             "\"key\":\"m-1\"}");
    is_int(st, 201, "POST /api/v1/jobs: 201 for a new job");
    long long jid = 0;
    ok(req.body && sscanf(req.body, "{\"id\": %lld}", &jid) == 1 && jid > 0, "with its id: %s",
       req.body ? req.body : "");
    job_http_clear(&req);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 'mail.send' AND"
                            " queue = 'mail' AND priority = -3 AND max_attempts = 5 AND"
                            " key = 'm-1' AND payload->>'to' = 'a@b' AND"
                            " run_at = '2030-01-02T03:04:05Z'"),
           1, "every field is stored");
    st = run(&req, false, "{\"task\":\"mail.send\",\"key\":\"m-1\"}");
    ok(st == 200 && req.body && strstr(req.body, "\"duplicate\":true"),
       "a duplicate key: 200 with the existing id and duplicate: true (%s)",
       req.body ? req.body : "");
    job_http_clear(&req);

    /* The CLI's relative form works over HTTP too (runtime/rt_time.h parses both). */
    st = run(&req, false, "{\"task\":\"later\",\"run_at\":\"+5m\",\"force\":true}");
    is_int(st, 201, "run_at \"+5m\": 201");
    job_http_clear(&req);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 'later' AND"
                            " run_at BETWEEN now() + interval '290 s' AND now() + interval '310 s'"
                            " AND pgcorral.job_state(jobs) = 'scheduled'"),
           1, "... stored as scheduled, 5 minutes ahead");
    expect_400("{\"task\":\"t\",\"run_at\":\"+5y\"}", "+N[s|m|h|d]",
               "run_at \"+5y\" (no such unit): 400 naming the forms");
    expect_400("{\"task\":", "malformed JSON", "malformed JSON: 400 with the reason");
    expect_400("[1,2]", "must be a JSON object", "a non-object: 400");
    expect_400("{\"task\":\"t\",\"prio\":1}", "unknown field \\\"prio\\\"",
               "an unknown field: 400 naming it");
    expect_400("{\"payload\":{}}", "\\\"task\\\" is required", "a missing task: 400");
    expect_400("{\"task\":7}", "\\\"task\\\" must be a non-empty string", "a wrong type: 400");
    expect_400("{\"task\":\"t\",\"priority\":1.5}", "\\\"priority\\\" must be an integer",
               "a fractional priority: 400");
    expect_400("{\"task\":\"t\",\"max_attempts\":0}", "at least 1", "max_attempts 0: 400");
    expect_400("{\"task\":\"t\",\"run_at\":\"tomorrow\"}", "ISO 8601", "a bad run_at: 400");
    expect_400("{\"task\":\"t\",\"task\":\"u\"}", "malformed JSON", "a duplicated field: 400");
    expect_400("{\"task\":\"t\",\"run_at\":\"2025-02-29T00:00:00Z\"}", "out of range",
               "a value the database rejects (Feb 29 of 2025): 400 with its message");

    snprintf(id, sizeof id, "%lld", jid);
    st = run(&req, true, id);
    is_int(st, 200, "GET /api/v1/jobs/:id: 200");
    ok(req.body && strstr(req.body, "\"state\" : \"scheduled\"") &&
           strstr(req.body, "\"task\" : \"mail.send\""),
       "with the job and its state: %s", req.body ? req.body : "");
    job_http_clear(&req);
    st = run(&req, true, "999999");
    is_int(st, 404, "an unknown id: 404");
    job_http_clear(&req);
    st = run(&req, true, "12ab");
    is_int(st, 400, "an id that is not a number: 400");
    job_http_clear(&req);

    rt_pool_close(pool, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    rt_dburl_destroy(u);
    PQfinish(db);
    return done_testing();
}
