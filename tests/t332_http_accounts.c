/*
 * GET /api/v1/accounts/:id (examples/accounts.c) through the real binary with a pool of
 * one connection: the answer, 404 for a missing account, 400 for a bad id; then 32
 * requests at once (the table locked until their statements queued), whose handlers'
 * pgc_exec_params go through the loop and share the one connection (issue 14, item 4).
 * Handlers that need a whole connection (SET by hand, pgc_tx) still get one.
 */
#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"

/* The supervisor's control socket. */
static const char *control;

/* Whether at least 8 statements wait in the pool or sit in its pipeline. */
static bool queued(void *arg)
{
    json_t *doc = pgt_ctl(control, "pools");
    json_t *total = json_object_get(json_object_get(doc, "pools"), "total");
    long long n = json_integer_value(json_object_get(total, "waiting")) +
                  json_integer_value(json_object_get(json_object_get(total, "pipeline"), "depth"));
    json_decref(doc);
    return n >= 8;
}

int main(void)
{
    char env_url[1200], url[1100];
    struct ts_sup s;
    struct wt_resp r = {0};
    enum { N = 32 };
    struct wt_conn *cs[N];
    int st, good = 0;

    tap_timeout(60);
    signal(SIGPIPE, SIG_IGN);
    plan(14);
    pgt_db_url();
    const char *db = jt_create_db("pgct_t332");
    PGconn *side = jt_connect(db);
    PQclear(PQexec(side, "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int,"
                         " abalance int, filler char(84));"
                         "INSERT INTO pgbench_accounts SELECT g, 1, g * 10, '' "
                         "FROM generate_series(1, 1000) g"));
    snprintf(url, sizeof url, "%s%sconnection_limit=1", db, strchr(db, '?') ? "&" : "?");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *env[] = {env_url, NULL};
    char *args[] = {"--jobs",   "0",
                    "--listen", "127.0.0.1:0",
                    "--plugin", (char *)jt_example_plugin("accounts"),
                    "--plugin", (char *)jt_build_plugin("session", NULL),
                    NULL};
    if (!ts_start(&s, "t332.sock", 1, args, env))
        bail("the supervisor did not start");
    control = s.control;

    st = wt_get(s.port, "/api/v1/accounts/7", &r);
    is_int(st, 200, "GET /api/v1/accounts/7 answers 200");
    is_str(r.body, "{\"aid\":7,\"abalance\":70}", "with the balance from the database");
    wt_resp_free(&r);
    st = wt_get(s.port, "/api/v1/accounts/99999", &r);
    is_int(st, 404, "a missing account answers 404");
    wt_resp_free(&r);
    st = wt_get(s.port, "/api/v1/accounts/abc", &r);
    is_int(st, 400, "an id that is not a number answers 400");
    wt_resp_free(&r);

    /* The table is locked until the requests queued up: then they go out together. */
    PQclear(PQexec(side, "BEGIN; LOCK TABLE pgbench_accounts IN ACCESS EXCLUSIVE MODE"));
    for (int i = 0; i < N; i++) {
        char req[128];
        cs[i] = wt_open(s.port);
        snprintf(req, sizeof req, "GET /api/v1/accounts/%d HTTP/1.1\r\nHost: t\r\n\r\n", i + 1);
        if (!wt_sends(cs[i]->fd, req))
            bail("send");
    }
    ok(pgt_wait_until(queued, NULL, 10000), "the requests' statements queue in the pool");
    PQclear(PQexec(side, "COMMIT"));
    for (int i = 0; i < N; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"aid\":%d,\"abalance\":%d}", i + 1, (i + 1) * 10);
        if (wt_read_resp(cs[i], &r) && r.status == 200 && r.body && !strcmp(r.body, want))
            good++;
        wt_resp_free(&r);
        wt_close(cs[i]);
    }
    is_int(good, N, "%d requests at once each got their own account", N);
    json_t *doc = pgt_ctl(control, "pools"), *pools = json_object_get(doc, "pools");
    json_t *pl = json_object_get(json_object_get(pools, "total"), "pipeline");
    long long pipelined = json_integer_value(json_object_get(pl, "pipelined"));
    ok(pipelined >= 7, "handler statements shared the one connection (pipelined %lld)", pipelined);
    long long open = json_integer_value(json_object_get(json_object_get(pools, "total"), "open"));
    ok(open == 1, "on one connection (%lld open)", open);
    json_decref(doc);
    st = wt_get(s.port, "/metrics", &r);
    ok(st == 200 && r.body && strstr(r.body, "\npgcorral_pipelined_total ") &&
           strstr(r.body, "\npgcorral_pool_pipeline_depth{") &&
           strstr(r.body, "\npgcorral_pool_pipelining_connections{") &&
           strstr(r.body, "\npgcorral_pipeline_depth_at_send_bucket{"),
       "/metrics has the pipelining counter, gauges and histogram");
    wt_resp_free(&r);

    /* Never pipelined: session state by hand, and a transaction, get a whole connection. */
    st = wt_get(s.port, "/s/session", &r);
    is_int(st, 200, "a handler that SETs by hand answers");
    is_str(r.body, "{\"app\":\"t332_session\"}", "and its SHOW saw its SET (one connection)");
    wt_resp_free(&r);
    st = wt_get(s.port, "/s/tx", &r);
    is_int(st, 200, "a handler with pgc_tx answers");
    is_str(r.body, "{\"same\":true}", "both statements of its transaction ran in it");
    wt_resp_free(&r);

    ok(ts_stop(&s), "the supervisor stops cleanly on SIGTERM");
    pgt_proc_cleanup(&s.p);
    PQfinish(side);
    return done_testing();
}
