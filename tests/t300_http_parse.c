/*
 * The web worker's HTTP/1.1 over real sockets, on both I/O backends: the ping route, HEAD,
 * 404 and 405 answers, keep-alive, pipelined requests answered in order (also behind a
 * slow one), chunked request bodies (split into single bytes, with extensions and
 * trailers), HTTP/1.0, Connection: close, Expect: 100-continue, and the HTTP statistics
 * the worker keeps in shared memory.
 */
#include "tests/lib/webtest.h"

/* Responses counted by the tests of one backend, to compare with the shm counters. */
static unsigned counted_2xx, counted_4xx;

static void count(const struct wt_resp *r)
{
    if (r->status / 100 == 2)
        counted_2xx++;
    else if (r->status / 100 == 4)
        counted_4xx++;
}

static void test_ping(int port, const char *be)
{
    struct wt_resp r;
    char v[128];

    is_int(wt_get(port, "/api/v1/ping", &r), 200, "%s: GET /api/v1/ping answers 200", be);
    is_str(r.body, "{\"status\":\"ok\"}", "%s: ping body is {\"status\":\"ok\"}", be);
    is_str(wt_header(&r, "content-type", v, sizeof v), "application/json",
           "%s: ping is application/json", be);
    ok(wt_header(&r, "date", v, sizeof v) && strstr(v, " GMT"), "%s: answers carry a Date", be);
    count(&r);
    wt_resp_free(&r);

    is_int(wt_get(port, "/api/v1/ping?x=1&y=2", &r), 200, "%s: a query string is ignored", be);
    count(&r);
    wt_resp_free(&r);
}

static void test_errors(int port, const char *be)
{
    struct wt_resp r;
    char v[128];

    is_int(wt_get(port, "/nope", &r), 404, "%s: unknown path answers 404", be);
    is_str(r.body, "{\"error\":\"not found\"}", "%s: 404 has a JSON body", be);
    is_str(wt_header(&r, "content-type", v, sizeof v), "application/json",
           "%s: 404 is application/json", be);
    count(&r);
    wt_resp_free(&r);

    is_int(
        wt_request(port, "POST /api/v1/ping HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r),
        405, "%s: POST to a GET route answers 405", be);
    is_str(r.body, "{\"error\":\"method not allowed\"}", "%s: 405 has a JSON body", be);
    is_str(wt_header(&r, "allow", v, sizeof v), "GET, HEAD", "%s: 405 lists Allow: GET, HEAD", be);
    count(&r);
    wt_resp_free(&r);
}

static void test_head(int port, const char *be)
{
    struct wt_conn *c = wt_open(port);
    struct wt_resp r;
    char v[64];

    wt_sends(c->fd, "HEAD /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp_ex(c, &r, WT_WAIT_MS, true, false) && r.status == 200,
       "%s: HEAD on a GET route answers 200", be);
    is_str(wt_header(&r, "content-length", v, sizeof v), "15",
           "%s: HEAD says the GET body's length", be);
    count(&r);
    wt_resp_free(&r);
    /* No body bytes may follow: the next answer on the connection starts right away. */
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200 && strcmp(r.body, "{\"status\":\"ok\"}") == 0,
       "%s: HEAD sends no body (the next answer parses cleanly)", be);
    count(&r);
    wt_resp_free(&r);
    wt_close(c);
}

static void test_keepalive(int port, const char *be)
{
    struct wt_conn *c = wt_open(port);
    struct wt_resp r;
    int good = 0;

    for (int i = 0; i < 5; i++) {
        wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
        if (wt_read_resp(c, &r) && r.status == 200 && !wt_says_close(&r))
            good++;
        count(&r);
        wt_resp_free(&r);
    }
    is_int(good, 5, "%s: five requests in a row on one keep-alive connection", be);
    is_int(wt_wait_close(c, 100), 0, "%s: the connection stays open after them", be);
    wt_close(c);
}

static void test_pipelining(int port, const char *be)
{
    struct wt_conn *c = wt_open(port);
    struct wt_resp r[5];
    int got = 0;
    char v[64];

    /* A slow request first: the ones behind it must wait for it, in order. */
    wt_sends(c->fd, "GET /test/slow?ms=150 HTTP/1.1\r\nHost: t\r\n\r\n"
                    "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\none"
                    "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n"
                    "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                    "PUT /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\ntwo\r\n0\r\n\r\n");
    for (; got < 5; got++)
        if (!wt_read_resp(c, &r[got]))
            break;
    is_int(got, 5, "%s: five pipelined requests get five answers", be);
    if (got == 5) {
        ok(r[0].status == 200 && strcmp(r[0].body, "{\"slow\":true}") == 0,
           "%s: pipelined answer 1 is the slow route's", be);
        ok(r[1].status == 200 && strcmp(r[1].body, "one") == 0 &&
               strcmp(wt_header(&r[1], "x-method", v, sizeof v), "POST") == 0,
           "%s: pipelined answer 2 is the POST echo", be);
        ok(r[2].status == 200 && strcmp(r[2].body, "{\"status\":\"ok\"}") == 0,
           "%s: pipelined answer 3 is ping", be);
        is_int(r[3].status, 404, "%s: pipelined answer 4 is the 404", be);
        ok(r[4].status == 200 && strcmp(r[4].body, "two") == 0 &&
               strcmp(wt_header(&r[4], "x-method", v, sizeof v), "PUT") == 0,
           "%s: pipelined answer 5 is the chunked PUT echo", be);
    }
    for (int i = 0; i < got; i++) {
        count(&r[i]);
        wt_resp_free(&r[i]);
    }
    wt_close(c);
}

static void test_chunked(int port, const char *be)
{
    struct wt_resp r;
    char v[64];
    static const char dribble[] = "POST /test/echo?q=1 HTTP/1.1\r\nHost: t\r\nX-Test: drip\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n"
                                  "5\r\nhello\r\n1;name=value\r\n,\r\n6\r\n world\r\n"
                                  "0\r\nX-Trailer: yes\r\n\r\n";
    struct wt_conn *c;

    is_int(wt_request(port,
                      "POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                      &r),
           200, "%s: a chunked request body is accepted", be);
    is_str(r.body, "hello world", "%s: the route sees the decoded chunked body", be);
    count(&r);
    wt_resp_free(&r);

    /* One byte per send(): every parser state split across reads. */
    c = wt_open(port);
    for (size_t i = 0; i < sizeof dribble - 1; i++) {
        wt_send(c->fd, dribble + i, 1);
        poll(NULL, 0, 1);
    }
    ok(wt_read_resp(c, &r) && r.status == 200, "%s: a request sent byte by byte is answered", be);
    is_str(r.body, "hello, world", "%s: its chunk extensions and trailer are skipped", be);
    is_str(wt_header(&r, "x-test", v, sizeof v), "drip",
           "%s: its header split over reads arrives whole", be);
    is_str(wt_header(&r, "x-query", v, sizeof v), "q=1", "%s: its query string arrives", be);
    count(&r);
    wt_resp_free(&r);
    wt_close(c);
}

static void test_http10_and_close(int port, const char *be)
{
    struct wt_conn *c;
    struct wt_resp r;
    char v[64];

    c = wt_open(port);
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.0\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200, "%s: HTTP/1.0 without Host is answered", be);
    ok(wt_says_close(&r), "%s: HTTP/1.0 answer says Connection: close", be);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1, "%s: and the server closes after it", be);
    count(&r);
    wt_resp_free(&r);
    wt_close(c);

    c = wt_open(port);
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200 &&
           strcasecmp(wt_header(&r, "connection", v, sizeof v), "keep-alive") == 0,
       "%s: HTTP/1.0 keep-alive is answered with Connection: keep-alive", be);
    count(&r);
    wt_resp_free(&r);
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200, "%s: and the connection is reused", be);
    count(&r);
    wt_resp_free(&r);
    wt_close(c);

    c = wt_open(port);
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200 && wt_says_close(&r),
       "%s: Connection: close is echoed", be);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1, "%s: and the connection is closed", be);
    count(&r);
    wt_resp_free(&r);
    wt_close(c);
}

static void test_expect(int port, const char *be)
{
    struct wt_conn *c = wt_open(port);
    struct wt_resp r;

    wt_sends(c->fd, "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                    "Expect: 100-continue\r\n\r\n");
    ok(wt_read_resp_ex(c, &r, WT_WAIT_MS, false, true) && r.status == 100,
       "%s: Expect: 100-continue gets 100 Continue before the body is sent", be);
    wt_resp_free(&r);
    wt_sends(c->fd, "ping");
    ok(wt_read_resp(c, &r) && r.status == 200 && strcmp(r.body, "ping") == 0,
       "%s: then the body is read and answered", be);
    count(&r);
    wt_resp_free(&r);
    wt_close(c);
}

static struct shm_worker *g_stats;

static void test_stats(int port, const char *be)
{
    struct wt_conn *a = wt_open(port), *b = wt_open(port);
    struct wt_resp r;
    long long end;
    uint32_t open_now;

    wt_sends(a->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    wt_sends(b->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp(a, &r) && r.status == 200, "%s: stats: request on connection a", be);
    count(&r);
    wt_resp_free(&r);
    ok(wt_read_resp(b, &r) && r.status == 200, "%s: stats: request on connection b", be);
    count(&r);
    wt_resp_free(&r);
    is_int(atomic_load(&g_stats->http_open), 2, "%s: shm http_open counts 2 open connections", be);
    is_int(atomic_load(&g_stats->counters.http_2xx), counted_2xx, "%s: shm counts every 2xx", be);
    is_int(atomic_load(&g_stats->counters.http_4xx), counted_4xx, "%s: shm counts every 4xx", be);
    is_int(atomic_load(&g_stats->counters.http_requests), counted_2xx + counted_4xx,
           "%s: shm http_requests counts every answer", be);
    is_int(atomic_load(&g_stats->hists.http.count), counted_2xx + counted_4xx,
           "%s: the HTTP latency histogram holds every answer", be);
    ok(atomic_load(&g_stats->hists.http.sum_us) >= 150000,
       "%s: its sum includes the 150 ms slow request", be);
    wt_close(a);
    wt_close(b);
    end = wt_now_ms() + WT_WAIT_MS;
    while ((open_now = atomic_load(&g_stats->http_open)) != 0 && wt_now_ms() < end)
        poll(NULL, 0, 5);
    is_int(open_now, 0, "%s: http_open drops to 0 when clients hang up", be);
}

int main(void)
{
    enum web_io_mode modes[3];
    const char *names[3];
    int n;

    tap_timeout(60);
    signal(SIGPIPE, SIG_IGN);
    n = wt_backends(modes, names);
    for (int i = 0; i < n; i++) {
        wt_backend_env(names[i]);
        struct wt_server s;
        struct wt_opts o = {.io = modes[i]};
        const char *be = names[i];

        web_limits_default(&o.limits);
        g_stats = wt_stats_block();
        o.stats = g_stats;
        counted_2xx = counted_4xx = 0;
        wt_server_start(&s, &o);
        test_ping(s.port, be);
        test_errors(s.port, be);
        test_head(s.port, be);
        test_keepalive(s.port, be);
        test_pipelining(s.port, be);
        test_chunked(s.port, be);
        test_http10_and_close(s.port, be);
        test_expect(s.port, be);
        test_stats(s.port, be);
        is_int(wt_server_stop(&s), 0, "%s: the server drains and exits 0 on SIGTERM", be);
        close(s.lfd);
        munmap(g_stats, sizeof *g_stats);
    }
    return done_testing();
}
