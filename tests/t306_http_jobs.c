/*
 * The jobs routes of the web worker on both I/O backends, against a migrated database:
 * POST /api/v1/jobs enqueues (201 with the id; 200 "duplicate" for a known key; 400 with
 * the reason for a bad description; chunked bodies too), GET /api/v1/jobs/:id shows the job
 * (400 for a bad id, 404 for none), other methods get 405; a task no live node registers
 * gets 422 naming the known tasks, unless "force":true. Needs PostgreSQL.
 */
#include <jansson.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/webtest.h"

/* POSTs body to /api/v1/jobs on a new connection; returns the status, answer in r. */
static int post_job(int port, const char *body, struct wt_resp *r)
{
    char req[2048];
    snprintf(req, sizeof req,
             "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    return wt_request(port, req, r);
}

/* The node registry as a supervisor with plugins of tasks email and chunky would leave it
 * (no supervisor runs here): one live node. */
static void register_node(PGconn *db)
{
    jt_exec(db, "INSERT INTO pgcorral.nodes (node, host, pid, version, tasks)"
                " VALUES ('t306', 'h', 1, 'x', '{email,chunky}') ON CONFLICT (node) DO UPDATE"
                " SET heartbeat_at = now()");
}

/* Refusal of tasks that no live node registers, and "force":true. */
static void test_unknown_task(int port, const char *be, PGconn *db)
{
    struct wt_resp r;

    jt_exec(db, "DELETE FROM pgcorral.nodes");
    is_int(post_job(port, "{\"task\":\"email\"}", &r), 422, "%s: no live node at all: 422", be);
    ok(r.body && strstr(r.body, "no live node registers task \\\"email\\\"") &&
           strstr(r.body, "\\\"force\\\":true enqueues it anyway"),
       "%s: ... saying so and how to force it: %s", be, r.body ? r.body : "");
    wt_resp_free(&r);
    register_node(db);
    is_int(post_job(port, "{\"task\":\"nosuch\"}", &r), 422,
           "%s: a task no live node registers: 422", be);
    ok(r.body && strstr(r.body, "known tasks: chunky, email"), "%s: ... naming the known tasks: %s",
       be, r.body ? r.body : "");
    wt_resp_free(&r);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 'nosuch'"), 0,
           "%s: ... and nothing is added", be);
    is_int(post_job(port, "{\"task\":\"nosuch\",\"force\":true}", &r), 201,
           "%s: \"force\":true adds it anyway: 201", be);
    wt_resp_free(&r);
    is_int(post_job(port, "{\"task\":\"nosuch\",\"force\":1}", &r), 400,
           "%s: \"force\" that is not a boolean: 400", be);
    wt_resp_free(&r);
    jt_exec(db, "UPDATE pgcorral.nodes SET heartbeat_at = now() - interval '11 seconds'");
    is_int(post_job(port, "{\"task\":\"email\"}", &r), 422,
           "%s: a node silent for over 10 s is not live: 422", be);
    wt_resp_free(&r);
    register_node(db);
}

static void test_jobs(int port, const char *be, PGconn *db)
{
    struct wt_resp r;
    json_t *doc;
    json_int_t id = 0, id2;
    char path[64], v[64], sql[128];

    test_unknown_task(port, be, db);

    is_int(post_job(port, "{\"task\":\"email\",\"payload\":{\"to\":\"a@b\"},\"key\":\"k1\"}", &r),
           201, "%s: POST /api/v1/jobs enqueues: 201", be);
    doc = json_loads(r.body ? r.body : "", 0, NULL);
    id = json_integer_value(json_object_get(doc, "id"));
    ok(id > 0, "%s: ... with the new job's id (%lld)", be, (long long)id);
    json_decref(doc);
    wt_resp_free(&r);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND task = 'email'",
             (long long)id);
    is_int(pgt_query_ll(db, sql), 1, "%s: the job is in pgcorral.jobs", be);

    is_int(post_job(port, "{\"task\":\"email\",\"key\":\"k1\"}", &r), 200,
           "%s: the same key again: 200", be);
    doc = json_loads(r.body ? r.body : "", 0, NULL);
    id2 = json_integer_value(json_object_get(doc, "id"));
    ok(id2 == id && json_is_true(json_object_get(doc, "duplicate")),
       "%s: ... naming the existing job, duplicate true", be);
    json_decref(doc);
    wt_resp_free(&r);

    is_int(post_job(port, "{\"payload\":{}}", &r), 400, "%s: a job without task: 400", be);
    ok(r.body && strstr(r.body, "\"error\""), "%s: ... with the reason", be);
    wt_resp_free(&r);
    is_int(post_job(port, "{not json", &r), 400, "%s: malformed JSON: 400", be);
    wt_resp_free(&r);

    is_int(wt_request(port,
                      "POST /api/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"
                      "8\r\n{\"task\":\r\n9\r\n\"chunky\"}\r\n0\r\n\r\n",
                      &r),
           201, "%s: a chunked job description is enqueued", be);
    wt_resp_free(&r);

    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    is_int(wt_get(port, path, &r), 200, "%s: GET /api/v1/jobs/:id: 200", be);
    doc = json_loads(r.body ? r.body : "", 0, NULL);
    ok(json_integer_value(json_object_get(doc, "id")) == id &&
           strcmp(json_string_value(json_object_get(doc, "task")), "email") == 0 &&
           strcmp(json_string_value(json_object_get(doc, "state")), "queued") == 0,
       "%s: ... the job, task email, state queued", be);
    json_decref(doc);
    is_str(wt_header(&r, "content-type", v, sizeof v), "application/json", "%s: ... as JSON", be);
    wt_resp_free(&r);

    is_int(wt_get(port, "/api/v1/jobs/999999999", &r), 404, "%s: an unknown job id: 404", be);
    wt_resp_free(&r);
    is_int(wt_get(port, "/api/v1/jobs/abc", &r), 400, "%s: a job id that is not a number: 400", be);
    wt_resp_free(&r);
    is_int(wt_get(port, "/api/v1/jobs", &r), 200, "%s: GET /api/v1/jobs: 200 (the list)", be);
    ok(r.body && strstr(r.body, "\"jobs\""), "%s: ... {\"jobs\":[...]}", be);
    wt_resp_free(&r);
    is_int(wt_request(port, "PUT /api/v1/jobs/1 HTTP/1.1\r\nHost: t\r\n\r\n", &r), 405,
           "%s: PUT /api/v1/jobs/1: 405", be);
    const char *allow = wt_header(&r, "allow", v, sizeof v);
    ok(allow && strstr(allow, "DELETE") != NULL, "%s: ... Allow names DELETE", be);
    wt_resp_free(&r);
}

int main(void)
{
    enum web_io_mode modes[3];
    const char *names[3];
    const char *url;
    struct rt_dburl *db;
    char err[1024];
    PGconn *conn;
    int n;

    tap_timeout(60);
    signal(SIGPIPE, SIG_IGN);
    url = jt_create_db("pgc_t306");
    if (rt_dburl_parse(url, &db, err, sizeof err) < 0)
        bail("url: %s", err);
    if (sup_migrate(db, NULL, err, sizeof err) < 0)
        bail("migrate: %s", err);
    conn = jt_connect(url);
    n = wt_backends(modes, names);
    for (int i = 0; i < n; i++) {
        wt_backend_env(names[i]);
        struct wt_server s;
        struct wt_opts o = {.io = modes[i]};

        jt_exec(conn, "DELETE FROM pgcorral.jobs");
        web_limits_default(&o.limits);
        o.db_url = url;
        wt_server_start(&s, &o);
        test_jobs(s.port, names[i], conn);
        is_int(wt_server_stop(&s), 0, "%s: the server drains and exits 0", names[i]);
        close(s.lfd);
    }
    PQfinish(conn);
    rt_dburl_destroy(db);
    return done_testing();
}
