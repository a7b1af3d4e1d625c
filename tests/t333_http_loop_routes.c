/*
 * Plugin routes with PGC_ROUTE_ON_LOOP (tests/plugins/onloop.c) through the real binary,
 * one web worker with a pool of two connections: handlers on fibers of the loop answer
 * with their own rows, 64 at once; two statements in a row; an SQL error reaches the
 * handler; a statement rolled back with 40001 is retried after the back-off; pgc_tx and SET
 * are refused with a message that names the flag; a 2 s statement in one handler does not
 * hold up other requests (ping, statements of other on-loop handlers); a client that leaves
 * while its handler waits costs nothing but that request; SIGTERM while one runs still
 * answers it.
 */
#include <poll.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"

#define SLEEPING                                                                                   \
    "SELECT count(*) FROM pg_stat_activity"                                                        \
    " WHERE state = 'active' AND query = 'SELECT pg_sleep(2)'"

/* Restarts of the one web worker so far (ctl workers). */
static long long web_restarts(const char *control)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    long long n = -1;
    size_t i;

    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        const char *role = json_string_value(json_object_get(w, "role"));
        if (role && strcmp(role, "web") == 0)
            n = json_integer_value(json_object_get(w, "restarts"));
    }
    json_decref(doc);
    return n;
}

int main(void)
{
    char env_url[1200];
    struct ts_sup s;
    struct wt_resp r = {0};
    enum { N = 64 };
    struct wt_conn *cs[N];
    int st, good = 0;

    tap_timeout(60);
    signal(SIGPIPE, SIG_IGN);
    plan(20);
    pgt_db_url();
    const char *db = jt_create_db("pgct_t333");
    PGconn *side = jt_connect(db);
    jt_exec(side, "CREATE TABLE t333_notes (body text);"
                  "CREATE SEQUENCE t333_flaky_seq;"
                  "CREATE FUNCTION t333_flaky() RETURNS bigint LANGUAGE plpgsql AS $$"
                  " DECLARE n bigint := nextval('t333_flaky_seq'); BEGIN"
                  " IF n = 1 THEN RAISE EXCEPTION 'first call' USING ERRCODE = '40001'; END IF;"
                  " RETURN n; END $$");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s%sconnection_limit=2", db,
             strchr(db, '?') ? "&" : "?");
    char *env[] = {env_url, NULL};
    char *args[] = {"--jobs",      "0",        "--listen",
                    "127.0.0.1:0", "--plugin", (char *)jt_build_plugin("onloop", NULL),
                    NULL};
    if (!ts_start(&s, "t333.sock", 1, args, env))
        bail("the supervisor did not start");

    st = wt_get(s.port, "/l/double/21", &r);
    is_int(st, 200, "an on-loop route answers 200");
    is_str(r.body, "{\"n\":21,\"double\":42}", "with its statement's result");
    wt_resp_free(&r);
    st = wt_get(s.port, "/l/plain", &r);
    ok(st == 200 && r.body && !strcmp(r.body, "{\"plain\":true}"),
       "a handler without statements answers (%d)", st);
    wt_resp_free(&r);
    st = wt_get(s.port, "/l/read/5", &r);
    ok(st == 200 && r.body && !strcmp(r.body, "{\"n\":5,\"double\":10}"),
       "a read-only on-loop route answers from the primary without a replica (%d)", st);
    wt_resp_free(&r);

    /* 64 at once on two connections: each gets its own row. */
    for (int i = 0; i < N; i++) {
        char req[128];
        cs[i] = wt_open(s.port);
        snprintf(req, sizeof req, "GET /l/double/%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
        if (!wt_sends(cs[i]->fd, req))
            bail("send");
    }
    for (int i = 0; i < N; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"n\":%d,\"double\":%d}", i, 2 * i);
        if (wt_read_resp(cs[i], &r) && r.status == 200 && r.body && !strcmp(r.body, want))
            good++;
        wt_resp_free(&r);
        wt_close(cs[i]);
    }
    is_int(good, N, "%d requests at once each got their own result", N);

    st = ts_req(s.port, "POST", "/l/notes/hello", NULL, NULL, &r);
    ok(st == 201 && r.body && !strcmp(r.body, "{\"count\":1}"),
       "an INSERT and then a SELECT that sees it (%d %s)", st, r.body ? r.body : "");
    wt_resp_free(&r);
    st = ts_req(s.port, "POST", "/l/notes/hello", NULL, NULL, &r);
    ok(st == 201 && r.body && !strcmp(r.body, "{\"count\":2}"), "... twice (%d %s)", st,
       r.body ? r.body : "");
    wt_resp_free(&r);

    st = wt_get(s.port, "/l/sqlerr", &r);
    ok(st == 400 && r.body && strstr(r.body, "\"sqlstate\":\"22012\"") &&
           !strstr(r.body, "\"rc\":0,"),
       "an SQL error reaches the handler with its SQLSTATE (%s)", r.body ? r.body : "");
    wt_resp_free(&r);

    long long t0 = pgt_now_ms();
    st = wt_get(s.port, "/l/flaky", &r);
    long long took = pgt_now_ms() - t0;
    ok(st == 200 && r.body && !strcmp(r.body, "{\"calls\":2}"),
       "a statement rolled back with 40001 is run again, once (%d %s)", st, r.body ? r.body : "");
    ok(took >= 1000, "after the 1 s back-off (%lld ms)", took);
    wt_resp_free(&r);

    st = wt_get(s.port, "/l/refused", &r);
    is_int(st, 200, "a handler that asks for a session answers");
    ok(r.body && strstr(r.body, "\"tx\":-22,\"set\":-22,\"einval\":-22") != NULL,
       "pgc_tx and SET return PGC_EINVAL (%s)", r.body ? r.body : "");
    ok(r.body && strstr(r.body, "register the route without PGC_ROUTE_ON_LOOP"),
       "the error says what to do");
    wt_resp_free(&r);

    /* A 2 s statement: other requests, with and without statements, are answered while it
     * runs (the loop is not held by the fiber that waits). */
    struct wt_conn *slow = wt_open(s.port);
    if (!wt_sends(slow->fd, "GET /l/sleep HTTP/1.1\r\nHost: t\r\n\r\n"))
        bail("send");
    ok(pgt_wait_count(side, SLEEPING, 1, 10000) == 1, "the slow statement runs");
    st = wt_get(s.port, "/api/v1/ping", &r);
    wt_resp_free(&r);
    int st2 = wt_get(s.port, "/l/double/3", &r);
    wt_resp_free(&r);
    ok(st == 200 && st2 == 200 && pgt_query_ll(side, SLEEPING) == 1,
       "ping and another on-loop route answer while it runs (%d, %d)", st, st2);
    ok(wt_read_resp(slow, &r) && r.status == 200 && r.body && !strcmp(r.body, "{\"slept\":true}"),
       "the slow request gets its answer");
    wt_resp_free(&r);
    wt_close(slow);

    /* A client that leaves while its handler waits: the handler ends, nobody is answered,
     * and the worker goes on (no restart). */
    long long restarts0 = web_restarts(s.control);
    slow = wt_open(s.port);
    if (!wt_sends(slow->fd, "GET /l/sleep HTTP/1.1\r\nHost: t\r\n\r\n"))
        bail("send");
    if (pgt_wait_count(side, SLEEPING, 1, 10000) != 1)
        bail("the slow statement did not start");
    wt_close(slow);
    ok(pgt_wait_count(side, SLEEPING, 0, 10000) == 0, "a client left: its statement still ends");
    st = wt_get(s.port, "/l/double/4", &r);
    ok(st == 200 && r.body && !strcmp(r.body, "{\"n\":4,\"double\":8}") &&
           web_restarts(s.control) == restarts0,
       "... and the same worker answers the next request (%d)", st);
    wt_resp_free(&r);

    /* SIGTERM while one runs: it is answered, then the supervisor exits cleanly. */
    slow = wt_open(s.port);
    if (!wt_sends(slow->fd, "GET /l/sleep HTTP/1.1\r\nHost: t\r\n\r\n"))
        bail("send");
    if (pgt_wait_count(side, SLEEPING, 1, 10000) != 1)
        bail("the slow statement did not start");
    kill(s.p.pid, SIGTERM);
    ok(wt_read_resp(slow, &r) && r.status == 200 && r.body && !strcmp(r.body, "{\"slept\":true}"),
       "SIGTERM: the request in flight is answered");
    wt_resp_free(&r);
    wt_close(slow);
    ok(ts_stop(&s), "and the supervisor stops cleanly");
    pgt_proc_cleanup(&s.p);
    PQfinish(side);
    return done_testing();
}
