/*
 * The web worker's limits and request-smuggling defences, on both I/O backends, with the
 * default sizes (8 KiB head, 1 MiB body, 1000 requests per connection) and short
 * timeouts: each rejection is answered with its status (400, 408, 413, 414, 431, 505) and
 * Connection: close, then the connection is closed and nothing behind it is answered.
 */
#include "tests/lib/webtest.h"

#define T_HEADER_MS 300
#define T_BODY_MS 300
#define T_IDLE_MS 300

/* Sends req on a new connection and checks that it is answered with status, says
 * Connection: close, and that the server then closes without answering anything else. */
static void expect_reject(int port, const char *be, const char *req, size_t len, int status,
                          const char *what)
{
    struct wt_conn *c = wt_open(port);
    struct wt_resp r;
    bool got;

    wt_send(c->fd, req, len);
    got = wt_read_resp(c, &r);
    if (!ok(got && r.status == status && wt_says_close(&r), "%s: %s -> %d and close", be, what,
            status))
        diag("  got status %d, head: %s", got ? r.status : 0, got ? r.head : "(none)");
    if (got && r.body && r.status == status)
        ok(strncmp(r.body, "{\"error\":\"", 10) == 0, "%s: %s: JSON error body", be, what);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1, "%s: %s: closed, nothing else answered", be, what);
    if (got)
        wt_resp_free(&r);
    wt_close(c);
}

#define REJECT(port, be, req, status, what)                                                        \
    expect_reject(port, be, req, sizeof req - 1, status, what)

static void test_head_limits(int port, const char *be)
{
    static char req[20000];
    struct wt_resp r;
    int n;

    /* Just under 8 KiB of head: accepted. */
    n = snprintf(req, sizeof req, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + n, 'a', 8000);
    n += 8000;
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n\r\n");
    is_int(wt_request(port, req, &r), 200, "%s: a head of %d bytes (under 8 KiB) is accepted", be,
           n);
    wt_resp_free(&r);

    n = snprintf(req, sizeof req, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + n, 'a', 9000);
    n += 9000;
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n\r\n");
    expect_reject(port, be, req, (size_t)n, 431, "a 9000-byte header value");

    /* Many small headers, each fine, together over the limit. */
    n = snprintf(req, sizeof req, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 400; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "X-H%d: 12345678901234567890\r\n", i);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    expect_reject(port, be, req, (size_t)n, 431, "400 headers of 30 bytes");

    n = snprintf(req, sizeof req, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < WEB_MAX_HEADERS + 1; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "X-%d: 1\r\n", i);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    expect_reject(port, be, req, (size_t)n, 431, "more than 64 header fields");

    n = snprintf(req, sizeof req, "GET /");
    memset(req + n, 'u', 9000);
    n += 9000;
    n += snprintf(req + n, sizeof req - (size_t)n, " HTTP/1.1\r\nHost: t\r\n\r\n");
    expect_reject(port, be, req, (size_t)n, 414, "a 9000-byte request target");

    /* Blank lines before a request count against the head too (no endless CRLF). */
    n = 0;
    for (int i = 0; i < 5000; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    n += snprintf(req + n, sizeof req - (size_t)n, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    expect_reject(port, be, req, (size_t)n, 431, "10000 bytes of blank lines");
}

static void test_body_limits(int port, const char *be)
{
    struct wt_conn *c;
    struct wt_resp r;
    static char chunk[65536 + 32];
    bool got = false;
    int sent = 0;

    REJECT(port, be, "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n", 413,
           "Content-Length 1 MiB + 1 (before any body byte)");

    /* Exactly 1 MiB: accepted. */
    c = wt_open(port);
    {
        static char big[1048576];
        memset(big, 'b', sizeof big);
        wt_sends(c->fd, "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
        wt_send(c->fd, big, sizeof big);
        ok(wt_read_resp(c, &r) && r.status == 200 && r.body_len == sizeof big,
           "%s: a 1 MiB body is accepted and echoed whole", be);
        wt_resp_free(&r);
    }
    wt_close(c);

    /* Chunked: no length up front; 413 as soon as the decoded body passes 1 MiB. */
    c = wt_open(port);
    wt_sends(c->fd, "POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    int hl = snprintf(chunk, sizeof chunk, "10000\r\n");
    memset(chunk + hl, 'c', 65536);
    memcpy(chunk + hl + 65536, "\r\n", 2);
    for (int i = 0; i < 20 && !got; i++) {
        if (!wt_send(c->fd, chunk, (size_t)hl + 65536 + 2))
            break;
        sent++;
        /* The answer may come while we still send. */
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 0) == 1)
            break;
    }
    got = wt_read_resp(c, &r);
    ok(got && r.status == 413 && wt_says_close(&r),
       "%s: a chunked body growing past 1 MiB -> 413 and close (sent %d chunks of 64 KiB)", be,
       sent);
    ok(sent >= 17, "%s: ... and not before more than 1 MiB was sent", be);
    if (got)
        wt_resp_free(&r);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1, "%s: ... then the connection closes", be);
    wt_close(c);
}

static void test_max_requests(int port, const char *be)
{
    struct wt_conn *c = wt_open(port);
    struct wt_resp r;
    int good = 0, closes = 0;

    for (int i = 1; i <= 1000; i++) {
        if (!wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n") ||
            !wt_read_resp(c, &r))
            break;
        good += r.status == 200;
        if (wt_says_close(&r))
            closes += i == 1000 ? 1 : 1000;
        wt_resp_free(&r);
    }
    is_int(good, 1000, "%s: 1000 requests on one connection are answered", be);
    is_int(closes, 1, "%s: only the 1000th says Connection: close", be);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1, "%s: then the server closes the connection", be);
    wt_close(c);
}

static void test_timeouts(int port, const char *be)
{
    struct wt_conn *c;
    struct wt_resp r;
    long long t0, dt;
    bool got;

    /* Headers that never end. */
    c = wt_open(port);
    t0 = wt_now_ms();
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n");
    got = wt_read_resp(c, &r);
    dt = wt_now_ms() - t0;
    ok(got && r.status == 408 && wt_says_close(&r), "%s: unfinished headers -> 408 and close", be);
    ok(dt >= T_HEADER_MS - 20 && dt < T_HEADER_MS + 1500,
       "%s: ... after the header timeout (%lld ms, limit %d)", be, dt, T_HEADER_MS);
    if (got)
        wt_resp_free(&r);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1, "%s: ... then closed", be);
    wt_close(c);

    /* Slowloris: a byte every 50 ms does not extend the header deadline. */
    c = wt_open(port);
    t0 = wt_now_ms();
    {
        static const char slow[] =
            "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaa";
        got = false;
        for (size_t i = 0; i < sizeof slow - 1 && !got; i++) {
            struct pollfd p = {.fd = c->fd, .events = POLLIN};
            if (!wt_send(c->fd, slow + i, 1))
                break;
            got = poll(&p, 1, 50) == 1;
        }
    }
    got = wt_read_resp(c, &r);
    dt = wt_now_ms() - t0;
    ok(got && r.status == 408 && dt < T_HEADER_MS + 1500,
       "%s: a header dribbled a byte per 50 ms still times out (408 after %lld ms)", be, dt);
    if (got)
        wt_resp_free(&r);
    wt_close(c);

    /* A body that stops short. */
    c = wt_open(port);
    wt_sends(c->fd, "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    t0 = wt_now_ms();
    got = wt_read_resp(c, &r);
    dt = wt_now_ms() - t0;
    ok(got && r.status == 408 && wt_says_close(&r) && dt >= T_BODY_MS - 20,
       "%s: a body that stops short -> 408 and close after the body timeout (%lld ms)", be, dt);
    if (got)
        wt_resp_free(&r);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1, "%s: ... then closed", be);
    wt_close(c);

    /* Idle keep-alive connection: closed quietly. */
    c = wt_open(port);
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200, "%s: a request before idling", be);
    wt_resp_free(&r);
    t0 = wt_now_ms();
    is_int(wt_wait_close(c, WT_WAIT_MS), 1,
           "%s: an idle keep-alive connection is closed without a response", be);
    dt = wt_now_ms() - t0;
    ok(dt >= T_IDLE_MS - 20, "%s: ... after the idle timeout (%lld ms, limit %d)", be, dt,
       T_IDLE_MS);
    wt_close(c);

    /* A connection that never sends anything: closed quietly. */
    c = wt_open(port);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1,
           "%s: a connection that sends nothing is closed without a response", be);
    wt_close(c);
}

static void test_versions_and_garbage(int port, const char *be)
{
    REJECT(port, be, "GET /api/v1/ping HTTP/2.0\r\nHost: t\r\n\r\n", 505, "HTTP/2.0");
    REJECT(port, be, "GET /api/v1/ping HTTP/1.2\r\nHost: t\r\n\r\n", 505, "HTTP/1.2");
    REJECT(port, be, "GET /api/v1/ping\r\n\r\n", 505, "HTTP/0.9 request line");
    REJECT(port, be, "HELLO\r\n\r\n", 400, "garbage");
    REJECT(port, be, "GET /api/v1/ping HTTP/1.1\nHost: t\n\n", 400, "bare LF line ends");
    REJECT(port, be, "GET /api/v1/ping HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 without Host");
    REJECT(port, be, "GET /api/v1/ping HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400,
           "two Host headers");
}

static void test_smuggling(int port, const char *be)
{
    struct wt_conn *c;
    struct wt_resp r;

    /* The pipelined GET behind each must never be answered. */
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n"
           "abcGET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n",
           400, "two different Content-Length");
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
           "abcGET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n",
           400, "two equal Content-Length");
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 1\r\n\r\na"
           "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n",
           400, "a Content-Length list");
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
           400, "a Content-Length that overflows");
    /* llhttp lenient_chunked_length off: */
    REJECT(
        port, be,
        "POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n",
        400, "Content-Length with Transfer-Encoding");
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
           "Content-Length: 5\r\n\r\n0\r\n\r\nGET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n",
           400, "Transfer-Encoding with Content-Length");
    /* llhttp lenient_transfer_encoding off: */
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
           "0\r\n\r\nGET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n",
           400, "Transfer-Encoding chunked, gzip (chunked not last)");
    REJECT(port, be, "POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
           400, "Transfer-Encoding without chunked");
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
           "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           400, "Transfer-Encoding chunked twice");
    /* llhttp lenient_headers off: */
    REJECT(port, be, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nX-A: a\001b\r\n\r\n", 400,
           "a control byte in a header value");
    /* What llhttp's loose mode lets through, rejected by us: */
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n"
           "Content-Length: 3\r\n\r\nabc",
           400, "whitespace between header name and colon");
    REJECT(port, be,
           "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n"
           "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n",
           400, "obs-fold");
    REJECT(port, be,
           "POST /test/echo HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\tTransfer-Encoding: chunked\r\n"
           "Content-Length: 3\r\n\r\nabc",
           400, "obs-fold with a tab");

    /* obs-fold split right at the fold, in separate reads. */
    c = wt_open(port);
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nX-A: b\r\n");
    poll(NULL, 0, 50);
    wt_sends(c->fd, " c\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 400 && wt_says_close(&r),
       "%s: obs-fold split across reads -> 400 and close", be);
    wt_resp_free(&r);
    wt_close(c);

    /* llhttp lenient_keep_alive off: after Connection: close nothing more is read. */
    c = wt_open(port);
    wt_sends(c->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                    "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200 && wt_says_close(&r),
       "%s: a request with Connection: close is answered with close", be);
    wt_resp_free(&r);
    is_int(wt_wait_close(c, WT_WAIT_MS), 1,
           "%s: ... and a request pipelined behind it is not answered", be);
    wt_close(c);
}

int main(void)
{
    enum web_io_mode modes[3];
    const char *names[3];
    int n;

    tap_timeout(90);
    signal(SIGPIPE, SIG_IGN);
    n = wt_backends(modes, names);
    for (int i = 0; i < n; i++) {
        wt_backend_env(names[i]);
        struct wt_server s;
        struct wt_opts o = {.io = modes[i]};
        const char *be = names[i];

        web_limits_default(&o.limits);
        o.limits.header_timeout_ms = T_HEADER_MS;
        o.limits.body_timeout_ms = T_BODY_MS;
        o.limits.idle_timeout_ms = T_IDLE_MS;
        wt_server_start(&s, &o);
        test_head_limits(s.port, be);
        test_body_limits(s.port, be);
        test_max_requests(s.port, be);
        test_timeouts(s.port, be);
        test_versions_and_garbage(s.port, be);
        test_smuggling(s.port, be);
        is_int(wt_server_stop(&s), 0, "%s: the server drains and exits 0", be);
        close(s.lfd);
    }
    return done_testing();
}
