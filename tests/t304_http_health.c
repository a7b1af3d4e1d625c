/*
 * GET /api/v1/health through the web worker's own pool, on both I/O backends: 200 with
 * "database":"healthy" after SELECT 1 on the test cluster (also pipelined and from many
 * connections at once), and 503 with Retry-After and "database":"unreachable" when the
 * database cannot be reached, without the password in the answer. Needs PostgreSQL
 * (scripts/with-test-pg.sh).
 */
#include <jansson.h>

#include "tests/lib/webtest.h"

static void test_healthy(int port, const char *be, struct shm_worker *st)
{
    struct wt_resp r, rp[4];
    json_t *doc;
    struct wt_conn *c[10];
    int good = 0, got = 0;

    is_int(wt_get(port, "/api/v1/health", &r), 200, "%s: health answers 200 with a database", be);
    doc = json_loads(r.body ? r.body : "", 0, NULL);
    ok(doc && strcmp(json_string_value(json_object_get(doc, "status")), "ok") == 0 &&
           strcmp(json_string_value(json_object_get(doc, "database")), "healthy") == 0,
       "%s: health body has status ok, database healthy", be);
    ok(json_integer_value(json_object_get(json_object_get(doc, "pool"), "open")) >= 1,
       "%s: health shows the pool with its connection open", be);
    json_decref(doc);
    wt_resp_free(&r);

    c[0] = wt_open(port);
    wt_sends(c[0]->fd, "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    for (; got < 4; got++)
        if (!wt_read_resp(c[0], &rp[got]))
            break;
    ok(got == 4 && rp[0].status == 200 && strstr(rp[0].body, "healthy") && rp[1].status == 200 &&
           strstr(rp[1].body, "\"ok\"") && rp[2].status == 200 && strstr(rp[2].body, "healthy") &&
           rp[3].status == 404,
       "%s: pipelined health checks are answered in order between other requests", be);
    for (int i = 0; i < got; i++)
        wt_resp_free(&rp[i]);
    wt_close(c[0]);

    for (int i = 0; i < 10; i++) {
        c[i] = wt_open(port);
        wt_sends(c[i]->fd, "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n"
                           "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    for (int i = 0; i < 10; i++) {
        for (int k = 0; k < 2; k++) {
            if (wt_read_resp(c[i], &r) && r.status == 200)
                good++;
            wt_resp_free(&r);
        }
        wt_close(c[i]);
    }
    is_int(good, 20, "%s: 20 health checks from 10 connections at once all answer 200", be);
    ok(atomic_load(&st->counters.queries) >= 23, "%s: the pool counted the SELECT 1s (%llu)", be,
       (unsigned long long)atomic_load(&st->counters.queries));
}

static void test_unreachable(int port, const char *be)
{
    struct wt_resp r;
    char v[64];
    json_t *doc;

    is_int(wt_get(port, "/api/v1/health", &r), 503,
           "%s: health answers 503 when the database is unreachable", be);
    ok(wt_header(&r, "retry-after", v, sizeof v) && atoi(v) > 0, "%s: ... with Retry-After", be);
    doc = json_loads(r.body ? r.body : "", 0, NULL);
    ok(doc && strcmp(json_string_value(json_object_get(doc, "status")), "error") == 0 &&
           strcmp(json_string_value(json_object_get(doc, "database")), "unreachable") == 0 &&
           json_string_length(json_object_get(doc, "error")) > 0,
       "%s: ... body says status error, database unreachable, and why", be);
    ok(r.body && !strstr(r.body, "sekret"), "%s: ... and never shows the password", be);
    if (r.body)
        diag("%s: 503 body: %s", be, r.body);
    json_decref(doc);
    wt_resp_free(&r);
    is_int(wt_get(port, "/api/v1/ping", &r), 200, "%s: ping still answers without a database", be);
    wt_resp_free(&r);
}

int main(void)
{
    enum web_io_mode modes[3];
    const char *names[3];
    const char *url = getenv("PGC_TEST_DATABASE_URL");
    int n;

    tap_timeout(60);
    signal(SIGPIPE, SIG_IGN);
    if (!url || !*url)
        bail("PGC_TEST_DATABASE_URL is not set: run under scripts/with-test-pg.sh");
    n = wt_backends(modes, names);
    for (int i = 0; i < n; i++) {
        wt_backend_env(names[i]);
        struct wt_server s;
        struct wt_opts o = {.io = modes[i]};
        struct shm_worker *st = wt_stats_block();

        web_limits_default(&o.limits);
        o.db_url = url;
        o.stats = st;
        wt_server_start(&s, &o);
        test_healthy(s.port, names[i], st);
        is_int(wt_server_stop(&s), 0, "%s: the server and its pool drain, exit 0", names[i]);
        close(s.lfd);
        munmap(st, sizeof *st);

        /* Nothing listens on port 1. */
        o.db_url = "postgresql://app:sekret@127.0.0.1:1/app?connect_timeout=2&pool_timeout=3";
        o.stats = NULL;
        wt_server_start(&s, &o);
        test_unreachable(s.port, names[i]);
        is_int(wt_server_stop(&s), 0, "%s: the server drains, exit 0", names[i]);
        close(s.lfd);
    }
    return done_testing();
}
