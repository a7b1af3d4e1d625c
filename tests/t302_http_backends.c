/*
 * The web worker's two I/O backends under load and through a drain: --io auto picks
 * io_uring when the kernel has it; many concurrent keep-alive connections; an answer
 * larger than the socket buffers read slowly; the drain (idle connections closed,
 * in-flight and already-received requests answered with Connection: close on the last,
 * a partial request finished, queued connections served by the next server on the kept
 * socket); wrk through a rolling restart (no errors, no non-2xx) and through a SIGKILL.
 */
#include "tests/lib/webtest.h"

/* ---- auto ---------------------------------------------------------------------------- */

static void on_auto_drained(struct web_server *s, void *arg)
{
    *(bool *)arg = true;
}

static void test_auto(void)
{
    enum web_io_mode m;
    struct web_server_config cfg = {0};
    struct web_server *s = NULL;
    const char *why;
    bool drained = false;
    uv_loop_t loop;
    int port, rc;

    ok(web_io_mode_parse("auto", &m) == 0 && m == WEB_IO_AUTO &&
           web_io_mode_parse("uring", &m) == 0 && m == WEB_IO_URING &&
           web_io_mode_parse("epoll", &m) == 0 && m == WEB_IO_EPOLL &&
           web_io_mode_parse(NULL, &m) == 0 && m == WEB_IO_AUTO,
       "--io accepts auto, uring, epoll (default auto)");
    is_int(web_io_mode_parse("kqueue", &m), -EINVAL, "--io rejects anything else");

    uv_loop_init(&loop);
    cfg.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    cfg.io = WEB_IO_EPOLL;
    web_limits_default(&cfg.limits);
    is_int(web_server_create(&s, &loop, &cfg), -EINVAL,
           "a socket that is not listening is refused at start");
    close(cfg.listen_fd);
    cfg.listen_fd = wt_listen(&port);
    cfg.io = WEB_IO_AUTO;
    web_limits_default(&cfg.limits);
    /* With deferred task work turned off, auto has nothing to gain from io_uring: epoll,
     * whatever the kernel offers. */
    setenv("PGCORRAL_URING_DEFER", "0", 1);
    rc = web_server_create(&s, &loop, &cfg);
    is_int(rc, 0, "a server with --io auto and PGCORRAL_URING_DEFER=0 starts");
    if (rc == 0) {
        is_str(web_server_io_name(s), "epoll", "... on epoll");
        web_server_drain(s, on_auto_drained, &drained);
        while (!drained && uv_run(&loop, UV_RUN_ONCE))
            ;
        web_server_destroy(s);
        uv_run(&loop, UV_RUN_NOWAIT);
        drained = false;
    }
    unsetenv("PGCORRAL_URING_DEFER");
    cfg.listen_fd = wt_listen(&port); /* the drain closed the listener */
    rc = web_server_create(&s, &loop, &cfg);
    is_int(rc, 0, "a server with --io auto starts");
    if (rc == 0) {
        /* Which one depends on the kernel's behaviour (t308 checks what the probe stands
         * for); what never happens is io_uring without deferred task work. */
        ok(strcmp(web_server_io_name(s), "epoll") == 0 ||
               (web_uring_probe(&why) == 0 && web_uring_defer_taskrun()),
           "--io auto picks io_uring only with DEFER_TASKRUN (picked %s)", web_server_io_name(s));
        web_server_drain(s, on_auto_drained, &drained);
        while (!drained && uv_run(&loop, UV_RUN_ONCE))
            ;
        ok(drained, "a server without connections drains at once");
        web_server_destroy(s);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    is_int(uv_loop_close(&loop), 0, "the drained server left no handle on the loop");
}

/* ---- load ---------------------------------------------------------------------------- */

static void test_many_connections(int port, const char *be)
{
    enum { NCONN = 40, NREQ = 25 };
    struct wt_conn *c[NCONN];
    struct wt_resp r;
    int good = 0;

    for (int i = 0; i < NCONN; i++)
        c[i] = wt_open(port);
    for (int k = 0; k < NREQ; k++) {
        for (int i = 0; i < NCONN; i++)
            wt_sends(c[i]->fd, k % 5 == 4 ? "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                                          : "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
        for (int i = 0; i < NCONN; i++) {
            if (wt_read_resp(c[i], &r) && r.status == (k % 5 == 4 ? 404 : 200))
                good++;
            wt_resp_free(&r);
        }
    }
    is_int(good, NCONN * NREQ, "%s: %d connections x %d interleaved requests all answered", be,
           NCONN, NREQ);
    for (int i = 0; i < NCONN; i++)
        wt_close(c[i]);
}

/* Reads one answer whose body is the /test/big pattern, checking it as it streams in
 * (it may be larger than the client's buffer). Returns the body length seen, -1 on a
 * wrong byte or a bad head; leaves what follows the body in c. */
static long read_big(struct wt_conn *c)
{
    size_t want, seen = 0;
    char *hend;

    while (!(hend = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (!wt_fill(c, WT_WAIT_MS))
            return -1;
    {
        struct wt_resp r;
        char v[32];
        size_t hlen = (size_t)(hend - c->buf) + 4;
        memset(&r, 0, sizeof r);
        snprintf(r.head, sizeof r.head, "%.*s", (int)hlen, c->buf);
        if (atoi(r.head + 9) != 200 || !wt_header(&r, "content-length", v, sizeof v))
            return -1;
        want = (size_t)atol(v);
        memmove(c->buf, c->buf + hlen, c->len - hlen);
        c->len -= hlen;
    }
    for (;;) {
        size_t take = c->len < want - seen ? c->len : want - seen;
        for (size_t i = 0; i < take; i++)
            if (c->buf[i] != (char)('a' + (seen + i) % 26))
                return -1;
        seen += take;
        memmove(c->buf, c->buf + take, c->len - take);
        c->len -= take;
        if (seen == want)
            return (long)seen;
        if (!wt_fill(c, WT_WAIT_MS))
            return (long)seen;
    }
}

static void test_big_slow_reader(int port, const char *be)
{
    enum { N = 16 << 20 };
    struct wt_conn *c = wt_open(port);
    struct wt_resp r;

    /* A late reader: the answer is far larger than the socket buffers, so the server's
     * sends go out in pieces as the client reads. */
    wt_sends(c->fd, "GET /test/big?n=16777216 HTTP/1.1\r\nHost: t\r\n\r\n"
                    "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    poll(NULL, 0, 200);
    is_int(read_big(c), N, "%s: a 16 MiB answer arrives whole and byte for byte", be);
    ok(wt_read_resp(c, &r) && r.status == 200, "%s: the request pipelined behind it follows", be);
    wt_resp_free(&r);
    wt_close(c);
}

/* ---- drain --------------------------------------------------------------------------- */

static void test_drain(const char *be, enum web_io_mode io)
{
    struct wt_server s;
    struct wt_opts o = {.io = io};
    struct wt_conn *idle, *slow, *pipe, *partial, *queued;
    struct wt_resp r, rp[3];
    _Atomic int *inflight = wt_shared(sizeof *inflight);
    int got = 0;

    web_limits_default(&o.limits);
    o.inflight = inflight;
    wt_server_start(&s, &o);

    idle = wt_open(s.port);
    wt_sends(idle->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp(idle, &r) && r.status == 200, "%s: drain: a keep-alive connection, idle", be);
    wt_resp_free(&r);

    slow = wt_open(s.port);
    wt_sends(slow->fd, "GET /test/slow?ms=400 HTTP/1.1\r\nHost: t\r\n\r\n");
    pipe = wt_open(s.port);
    wt_sends(pipe->fd, "GET /test/slow?ms=400 HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    is_int(wt_wait_value(inflight, 2, WT_WAIT_MS), 2, "%s: drain: two slow requests in flight", be);
    partial = wt_open(s.port);
    wt_sends(partial->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n");

    kill(s.pid, SIGTERM);

    is_int(wt_wait_close(idle, WT_WAIT_MS), 1,
           "%s: drain: the idle keep-alive connection is closed without an answer", be);
    wt_sends(partial->fd, "\r\n");
    ok(wt_read_resp(partial, &r) && r.status == 200 && wt_says_close(&r),
       "%s: drain: a request partly sent before the drain is answered, with close", be);
    wt_resp_free(&r);
    ok(wt_read_resp(slow, &r) && r.status == 200 && strcmp(r.body, "{\"slow\":true}") == 0 &&
           wt_says_close(&r),
       "%s: drain: the in-flight request is answered, with Connection: close", be);
    wt_resp_free(&r);
    is_int(wt_wait_close(slow, WT_WAIT_MS), 1, "%s: drain: ... then closed", be);
    for (; got < 3; got++)
        if (!wt_read_resp(pipe, &rp[got]))
            break;
    is_int(got, 3, "%s: drain: all three requests received before the drain are answered", be);
    if (got == 3)
        ok(rp[0].status == 200 && !wt_says_close(&rp[0]) && rp[1].status == 200 &&
               !wt_says_close(&rp[1]) && rp[2].status == 200 && wt_says_close(&rp[2]),
           "%s: drain: only the last of them says Connection: close", be);
    for (int i = 0; i < got; i++)
        wt_resp_free(&rp[i]);
    is_int(wt_wait_close(pipe, WT_WAIT_MS), 1, "%s: drain: ... then closed", be);
    is_int(wt_server_wait(&s, WT_WAIT_MS), 0, "%s: drain: the server exits 0 when done", be);

    /* The listening socket is still open (here, as in the supervisor): a new client waits
     * in its queue, and the next server answers it. */
    queued = wt_open(s.port);
    wt_sends(queued->fd, "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n");
    {
        struct pollfd p = {.fd = queued->fd, .events = POLLIN};
        is_int(poll(&p, 1, 200), 0, "%s: a client arriving after the drain waits (no refusal)", be);
    }
    wt_server_fork(&s, &o);
    ok(wt_read_resp(queued, &r) && r.status == 200,
       "%s: the replacement server answers the queued client", be);
    wt_resp_free(&r);
    is_int(wt_server_stop(&s), 0, "%s: the replacement drains and exits 0", be);

    wt_close(idle);
    wt_close(slow);
    wt_close(pipe);
    wt_close(partial);
    wt_close(queued);
    close(s.lfd);
    munmap(inflight, sizeof *inflight);
}

/* ---- wrk ----------------------------------------------------------------------------- */

/* wrk's totals. */
struct wrk_result {
    long requests, non2xx, err_connect, err_read, err_write, err_timeout;
    bool ran;
};

/* Starts wrk against port for secs seconds; returns its pid, output in *fd. */
static pid_t wrk_start(int port, int conns, int secs, int *fd)
{
    char url[64], c[16], d[16];
    int p[2];
    pid_t pid;

    snprintf(url, sizeof url, "http://127.0.0.1:%d/api/v1/ping", port);
    snprintf(c, sizeof c, "%d", conns);
    snprintf(d, sizeof d, "%ds", secs);
    if (pipe(p) < 0)
        bail("pipe: %s", strerror(errno));
    pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        execlp("wrk", "wrk", "-t1", "-c", c, "-d", d, url, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *fd = p[0];
    return pid;
}

static void wrk_finish(pid_t pid, int fd, struct wrk_result *w)
{
    static char out[8192];
    size_t len = 0;
    ssize_t n;
    int status;
    const char *e;

    memset(w, 0, sizeof *w);
    while ((n = read(fd, out + len, sizeof out - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = '\0';
    close(fd);
    waitpid(pid, &status, 0);
    w->ran = WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(out, "requests in");
    if ((e = strstr(out, " requests in"))) {
        while (e > out && e[-1] >= '0' && e[-1] <= '9')
            e--;
        w->requests = atol(e);
    }
    if ((e = strstr(out, "Non-2xx or 3xx responses:")))
        w->non2xx = atol(e + strlen("Non-2xx or 3xx responses:"));
    if ((e = strstr(out, "Socket errors:")))
        sscanf(e, "Socket errors: connect %ld, read %ld, write %ld, timeout %ld", &w->err_connect,
               &w->err_read, &w->err_write, &w->err_timeout);
    if (!w->ran)
        diag("wrk output: %s", out);
}

/* A rolling restart under load: the new server starts on the same socket, then the old
 * one drains. wrk must see no error and no non-2xx answer. */
static void test_wrk_rolling(const char *be, enum web_io_mode io)
{
    struct wt_server a, b;
    struct wt_opts o = {.io = io};
    struct shm_worker *sa = wt_stats_block();
    struct wrk_result w;
    uint64_t before;
    long long end;
    int fd;
    pid_t wrk;

    web_limits_default(&o.limits);
    o.stats = sa;
    wt_server_start(&a, &o);
    wrk = wrk_start(a.port, 16, 2, &fd);
    /* Load on the old server first. */
    end = wt_now_ms() + WT_WAIT_MS;
    while (atomic_load(&sa->counters.http_requests) < 2000 && wt_now_ms() < end)
        poll(NULL, 0, 5);
    before = atomic_load(&sa->counters.http_requests);
    b = a;
    o.stats = NULL;
    /* The new server needs no head start: until it accepts, new connections wait in the
     * socket's queue, which stays open here (as in the supervisor). */
    wt_server_fork(&b, &o);
    kill(a.pid, SIGTERM);
    is_int(wt_server_wait(&a, WT_WAIT_MS), 0, "%s: wrk: the old server drains under load", be);
    wrk_finish(wrk, fd, &w);
    ok(w.ran && w.requests > (long)before, "%s: wrk ran (%ld requests, %llu before the restart)",
       be, w.requests, (unsigned long long)before);
    is_int(w.err_connect + w.err_read + w.err_write + w.err_timeout, 0,
           "%s: wrk through a graceful restart: 0 socket errors", be);
    is_int(w.non2xx, 0, "%s: wrk through a graceful restart: 0 non-2xx answers", be);
    is_int(wt_server_stop(&b), 0, "%s: wrk: the new server drains and exits 0", be);
    close(a.lfd);
    munmap(sa, sizeof *sa);
}

/* SIGKILL under load; a replacement starts on the kept socket. Only the killed server's
 * open connections may fail. */
static void test_wrk_sigkill(const char *be, enum web_io_mode io)
{
    enum { CONNS = 16 };
    struct wt_server a, b;
    struct wt_opts o = {.io = io};
    struct shm_worker *sa = wt_stats_block(), *sb = wt_stats_block();
    struct wrk_result w;
    long long end;
    long errors;
    int fd;
    pid_t wrk;

    web_limits_default(&o.limits);
    o.stats = sa;
    wt_server_start(&a, &o);
    wrk = wrk_start(a.port, CONNS, 2, &fd);
    end = wt_now_ms() + WT_WAIT_MS;
    while (atomic_load(&sa->counters.http_requests) < 2000 && wt_now_ms() < end)
        poll(NULL, 0, 5);
    kill(a.pid, SIGKILL);
    wt_server_wait(&a, WT_WAIT_MS);
    b = a;
    o.stats = sb;
    wt_server_fork(&b, &o);
    wrk_finish(wrk, fd, &w);
    errors = w.err_connect + w.err_read + w.err_write + w.err_timeout;
    diag("%s: wrk through a SIGKILL: %ld requests, errors connect %ld read %ld write %ld "
         "timeout %ld, non-2xx %ld",
         be, w.requests, w.err_connect, w.err_read, w.err_write, w.err_timeout, w.non2xx);
    ok(w.ran && atomic_load(&sb->counters.http_2xx) > 0,
       "%s: wrk: the replacement serves after a SIGKILL", be);
    ok(errors <= CONNS && w.err_connect == 0,
       "%s: wrk: only the killed server's %d connections may fail (%ld errors)", be, CONNS, errors);
    is_int(w.non2xx, 0, "%s: wrk: no non-2xx answer", be);
    is_int(wt_server_stop(&b), 0, "%s: wrk: the replacement drains and exits 0", be);
    close(a.lfd);
    munmap(sa, sizeof *sa);
    munmap(sb, sizeof *sb);
}

int main(void)
{
    enum web_io_mode modes[3];
    const char *names[3];
    int n;

    tap_timeout(90);
    signal(SIGPIPE, SIG_IGN);
    rt_log_set_level(RT_LOG_WARN);
    test_auto();
    n = wt_backends(modes, names);
    for (int i = 0; i < n; i++) {
        wt_backend_env(names[i]);
        struct wt_server s;
        struct wt_opts o = {.io = modes[i]};

        web_limits_default(&o.limits);
        wt_server_start(&s, &o);
        test_many_connections(s.port, names[i]);
        test_big_slow_reader(s.port, names[i]);
        is_int(wt_server_stop(&s), 0, "%s: the server drains and exits 0", names[i]);
        close(s.lfd);
        test_drain(names[i], modes[i]);
        if (access("/usr/bin/wrk", X_OK) == 0) {
            test_wrk_rolling(names[i], modes[i]);
            test_wrk_sigkill(names[i], modes[i]);
        } else {
            bail("wrk is not installed (Debian package wrk)");
        }
    }
    return done_testing();
}
