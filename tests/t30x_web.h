/*
 * Shared by the web worker tests (t30x): a web server run in a forked child on a libuv
 * loop (on a listening socket the test opened, as the supervisor would), a few test-only
 * routes, and a small blocking HTTP client over real sockets with bounded waits.
 */
#ifndef PGCORRAL_T30X_WEB_H
#define PGCORRAL_T30X_WEB_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/rt_pool.h"
#include "tests/tap.h"
#include "workers/web.h"

#define WT_FN static __attribute__((unused))

/* Bound on every wait of the client: a failure, never a pause. */
#define WT_WAIT_MS 5000

/* ---- time ---------------------------------------------------------------------------- */

WT_FN long long wt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the server child ---------------------------------------------------------------- */

/* In the child: /test/slow requests being handled now (shared with the parent), or NULL. */
static _Atomic int *wt_inflight;

/* A test route's timer: /test/slow answers after ms milliseconds. */
struct wt_slow {
    uv_timer_t timer;
    struct web_conn *c;
};

static void wt_slow_closed(uv_handle_t *h)
{
    free(h); /* the timer is the first member of struct wt_slow */
}

static void wt_slow_fire(uv_timer_t *t)
{
    struct wt_slow *sl = (struct wt_slow *)t;
    static const char body[] = "{\"slow\":true}";
    if (wt_inflight)
        atomic_fetch_sub(wt_inflight, 1);
    web_respond(sl->c, 200, "application/json", NULL, body, sizeof body - 1);
    uv_close((uv_handle_t *)t, wt_slow_closed);
}

/* GET /test/slow?ms=N: answers {"slow":true} N ms later (default 200), from a timer. */
static void wt_route_slow(struct web_conn *c, const struct web_request *req)
{
    struct wt_slow *sl = malloc(sizeof *sl);
    long ms = 200;
    if (strncmp(req->query, "ms=", 3) == 0)
        ms = atol(req->query + 3);
    sl->c = c;
    if (wt_inflight)
        atomic_fetch_add(wt_inflight, 1);
    uv_timer_init(web_conn_server(c)->loop, &sl->timer);
    sl->timer.data = sl;
    uv_timer_start(&sl->timer, wt_slow_fire, (uint64_t)ms, 0);
}

/* POST /test/echo: answers the body back, with the method, path, query and X-Test header
 * in response headers. */
static void wt_route_echo(struct web_conn *c, const struct web_request *req)
{
    char extra[512];
    const char *xt = web_request_header(req, "x-test");
    snprintf(extra, sizeof extra, "X-Method: %s\r\nX-Path: %s\r\nX-Query: %s\r\nX-Test: %s\r\n",
             llhttp_method_name((llhttp_method_t)req->method), req->path, req->query, xt ? xt : "");
    web_respond(c, 200, "application/octet-stream", extra, req->body, req->body_len);
}

/* GET /test/big?n=N: N bytes of a known pattern (byte i is 'a' + i % 26). */
static void wt_route_big(struct web_conn *c, const struct web_request *req)
{
    size_t n = 100000;
    char *b;
    if (strncmp(req->query, "n=", 2) == 0)
        n = (size_t)atol(req->query + 2);
    b = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        b[i] = (char)('a' + i % 26);
    web_respond(c, 200, "text/plain", NULL, b, n);
    free(b);
}

static const struct web_route wt_routes[] = {
    {HTTP_GET, "/test/slow", wt_route_slow},
    {HTTP_POST, "/test/echo", wt_route_echo},
    {HTTP_PUT, "/test/echo", wt_route_echo},
    {HTTP_GET, "/test/big", wt_route_big},
};

/* What the child serves with. */
struct wt_opts {
    enum web_io_mode io;
    struct web_limits limits;
    struct shm_segment *seg;  /* may be NULL */
    struct shm_worker *stats; /* may be NULL */
    const char *db_url;       /* a pool for /health when not NULL */
    int pool_timeout_ms;
    _Atomic int *inflight; /* shared counter of /test/slow requests, or NULL */
};

/* The child's state. */
struct wt_child {
    uv_loop_t loop;
    uv_signal_t term;
    struct web_server *srv;
    struct rt_pool *pool;
    struct rt_dburl *url;
    int exit_code;
};

static void wt_child_pool_closed(void *arg)
{
    struct wt_child *ch = arg;
    uv_close((uv_handle_t *)&ch->term, NULL);
}

static void wt_child_drained(struct web_server *s, void *arg)
{
    struct wt_child *ch = arg;
    web_server_destroy(s);
    ch->srv = NULL;
    if (ch->pool)
        rt_pool_close(ch->pool, wt_child_pool_closed, ch);
    else
        wt_child_pool_closed(ch);
}

static void wt_child_on_term(uv_signal_t *sig, int signum)
{
    struct wt_child *ch = sig->data;
    uv_signal_stop(sig);
    web_server_drain(ch->srv, wt_child_drained, ch);
}

/* Body of the server child: serves lfd until SIGTERM, then drains and exits 0 (or 2 when
 * it cannot start, 3 when the loop still holds handles after the drain). */
__attribute__((noreturn)) static void wt_child_main(int lfd, const struct wt_opts *o)
{
    static struct wt_child ch;
    struct web_server_config cfg;
    char err[256];

    rt_log_set_level(RT_LOG_WARN);
    wt_inflight = o->inflight;
    uv_loop_init(&ch.loop);
    memset(&cfg, 0, sizeof cfg);
    cfg.listen_fd = lfd;
    cfg.io = o->io;
    cfg.limits = o->limits;
    cfg.seg = o->seg;
    cfg.stats = o->stats;
    cfg.routes = wt_routes;
    cfg.nroutes = sizeof wt_routes / sizeof wt_routes[0];
    if (o->db_url) {
        struct rt_pool_opts po;
        if (rt_dburl_parse(o->db_url, &ch.url, err, sizeof err) < 0)
            _exit(2);
        rt_pool_opts_init(&po);
        po.loop = &ch.loop;
        po.url = ch.url;
        po.stats = o->stats;
        po.pool_timeout_ms = o->pool_timeout_ms;
        if (rt_pool_create(&ch.pool, &po) < 0)
            _exit(2);
        cfg.pool = ch.pool;
    }
    if (web_server_create(&ch.srv, &ch.loop, &cfg) < 0)
        _exit(2);
    uv_signal_init(&ch.loop, &ch.term);
    ch.term.data = &ch;
    uv_signal_start(&ch.term, wt_child_on_term, SIGTERM);
    uv_run(&ch.loop, UV_RUN_DEFAULT);
    _exit(uv_loop_close(&ch.loop) == 0 ? 0 : 3);
}

/* A server child on its own listening socket. */
struct wt_server {
    pid_t pid;
    int lfd; /* the test's copy of the listening socket, kept like the supervisor's */
    int port;
};

/* Opens a listening socket on 127.0.0.1 (port 0: any), nonblocking as the supervisor's. */
WT_FN int wt_listen(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) < 0)
        bail("listen socket: %s", strerror(errno));
    *port = ntohs(a.sin_port);
    return fd;
}

/* Forks a server child on s->lfd (opened with wt_listen before). */
WT_FN void wt_server_fork(struct wt_server *s, const struct wt_opts *o)
{
    fflush(stdout);
    s->pid = fork();
    if (s->pid < 0)
        bail("fork: %s", strerror(errno));
    if (s->pid == 0)
        wt_child_main(s->lfd, o);
}

WT_FN void wt_server_start(struct wt_server *s, const struct wt_opts *o)
{
    s->lfd = wt_listen(&s->port);
    wt_server_fork(s, o);
}

/* Waits for the child to exit within timeout_ms. Returns its exit code, -1 when it was
 * killed by a signal, or -2 on timeout (it is SIGKILLed then). */
WT_FN int wt_server_wait(struct wt_server *s, int timeout_ms)
{
    long long end = wt_now_ms() + timeout_ms;
    int status;

    for (;;) {
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (wt_now_ms() > end) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &status, 0);
            return -2;
        }
        poll(NULL, 0, 5);
    }
}

/* SIGTERM (drain) and wait; returns what wt_server_wait returns. */
WT_FN int wt_server_stop(struct wt_server *s)
{
    kill(s->pid, SIGTERM);
    return wt_server_wait(s, WT_WAIT_MS);
}

/* Shared memory for counters the child writes and the parent reads. */
WT_FN void *wt_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bail("mmap: %s", strerror(errno));
    return p;
}

/* Polls until *v == want or timeout_ms pass. Returns the last value seen. */
WT_FN int wt_wait_value(_Atomic int *v, int want, int timeout_ms)
{
    long long end = wt_now_ms() + timeout_ms;
    int now;
    while ((now = atomic_load(v)) != want && wt_now_ms() < end)
        poll(NULL, 0, 2);
    return now;
}

/* A mapped block for the child's HTTP stats, readable by the parent. */
WT_FN struct shm_worker *wt_stats_block(void)
{
    void *p = mmap(NULL, sizeof(struct shm_worker), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bail("mmap: %s", strerror(errno));
    return p;
}

/* ---- the client ---------------------------------------------------------------------- */

WT_FN int wt_connect(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        bail("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Sends all of buf (len bytes). Returns true, or false when the peer is gone. */
WT_FN bool wt_send(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

WT_FN bool wt_sends(int fd, const char *s)
{
    return wt_send(fd, s, strlen(s));
}

/* One parsed response. */
struct wt_resp {
    int status;
    char head[4096]; /* status line and headers, NUL-terminated */
    char *body;      /* malloc'd, NUL-terminated; freed by wt_resp_free */
    size_t body_len;
};

WT_FN void wt_resp_free(struct wt_resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* The value of header name in r (case-insensitive) copied into out, or NULL. */
WT_FN const char *wt_header(const struct wt_resp *r, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = strstr(r->head, "\r\n");

    while (p && p[2] != '\0') {
        const char *line = p + 2, *end = strstr(line, "\r\n");
        if (!end)
            break;
        if ((size_t)(end - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(out, n, "%.*s", (int)(end - v), v);
            return out;
        }
        p = end;
    }
    return NULL;
}

/* Whether r says Connection: close. */
WT_FN bool wt_says_close(const struct wt_resp *r)
{
    char v[64];
    return wt_header(r, "connection", v, sizeof v) && strcasecmp(v, "close") == 0;
}

/* A connection's read side: bytes received and not yet parsed. */
struct wt_conn {
    int fd;
    char buf[2 << 20];
    size_t len;
    bool eof;   /* the server closed (or reset) */
    bool reset; /* ECONNRESET seen */
};

/* Reads once (up to timeout_ms). Returns false on timeout. */
static bool wt_fill(struct wt_conn *c, int timeout_ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    ssize_t n;

    if (c->eof)
        return false;
    if (poll(&p, 1, timeout_ms) != 1)
        return false;
    if (c->len == sizeof c->buf)
        bail("test client buffer full");
    n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n > 0) {
        c->len += (size_t)n;
    } else {
        c->eof = true;
        c->reset = n < 0 && errno == ECONNRESET;
    }
    return true;
}

/*
 * Reads one response (skipping 1xx interim ones unless keep_1xx) within timeout_ms.
 * Returns true and fills r, or false (timeout, or the connection ended first).
 * head_only: the request was HEAD (no body follows whatever Content-Length says).
 */
WT_FN bool wt_read_resp_ex(struct wt_conn *c, struct wt_resp *r, int timeout_ms, bool head_only,
                           bool keep_1xx)
{
    long long end = wt_now_ms() + timeout_ms;

    memset(r, 0, sizeof *r);
    for (;;) {
        char *hend = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (hend) {
            size_t hlen = (size_t)(hend - c->buf) + 4, clen = 0;
            char v[64];
            snprintf(r->head, sizeof r->head, "%.*s", (int)hlen, c->buf);
            r->status = atoi(r->head + 9);
            if (r->status >= 100 && r->status < 200) {
                memmove(c->buf, c->buf + hlen, c->len - hlen);
                c->len -= hlen;
                if (keep_1xx)
                    return true;
                continue;
            }
            if (!head_only && wt_header(r, "content-length", v, sizeof v))
                clen = (size_t)atol(v);
            if (c->len >= hlen + clen) {
                r->body = malloc(clen + 1);
                memcpy(r->body, c->buf + hlen, clen);
                r->body[clen] = '\0';
                r->body_len = clen;
                memmove(c->buf, c->buf + hlen + clen, c->len - hlen - clen);
                c->len -= hlen + clen;
                return true;
            }
        }
        long long left = end - wt_now_ms();
        if (left <= 0 || !wt_fill(c, (int)left))
            return false;
    }
}

WT_FN bool wt_read_resp(struct wt_conn *c, struct wt_resp *r)
{
    return wt_read_resp_ex(c, r, WT_WAIT_MS, false, false);
}

/* Whether the server closes the connection within timeout_ms without sending anything
 * more. Returns 1 when it closed, 0 on timeout, -1 when bytes arrived instead. */
WT_FN int wt_wait_close(struct wt_conn *c, int timeout_ms)
{
    long long end = wt_now_ms() + timeout_ms;
    size_t before = c->len;

    while (!c->eof) {
        long long left = end - wt_now_ms();
        if (left <= 0 || !wt_fill(c, (int)left))
            break;
    }
    if (c->len != before)
        return -1;
    return c->eof ? 1 : 0;
}

WT_FN struct wt_conn *wt_open(int port)
{
    struct wt_conn *c = calloc(1, sizeof *c);
    c->fd = wt_connect(port);
    return c;
}

WT_FN void wt_close(struct wt_conn *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c);
}

/* One request on a new connection; returns the status (0 on failure) and the response
 * in r (caller frees with wt_resp_free). */
WT_FN int wt_request(int port, const char *req, struct wt_resp *r)
{
    struct wt_conn *c = wt_open(port);
    int st = 0;
    if (wt_sends(c->fd, req) && wt_read_resp(c, r))
        st = r->status;
    wt_close(c);
    return st;
}

/* GET path on a new connection; returns the status (0 on failure), body in r. */
WT_FN int wt_get(int port, const char *path, struct wt_resp *r)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    return wt_request(port, req, r);
}

/*
 * The backends to run a suite over: epoll always; uring when the kernel has it; and
 * "uring-nodefer" (uring without DEFER_TASKRUN, as on kernels before 6.2) when the kernel
 * would use deferred task work, so that both ring modes are tested. Returns how many.
 */
WT_FN int wt_backends(enum web_io_mode modes[3], const char *names[3])
{
    const char *why;
    int n = 0;
    modes[n] = WEB_IO_EPOLL;
    names[n++] = "epoll";
    unsetenv("PGCORRAL_URING_DEFER");
    if (web_uring_probe(&why) == 0) {
        modes[n] = WEB_IO_URING;
        names[n++] = "uring";
        if (web_uring_defer_taskrun()) {
            modes[n] = WEB_IO_URING;
            names[n++] = "uring-nodefer";
        }
    } else {
        diag("io_uring backend not tested: %s", why);
    }
    return n;
}

/* Sets up the ring mode a backend name from wt_backends() asks for, in this process (call
 * before forking the server). */
WT_FN void wt_backend_env(const char *name)
{
    if (strcmp(name, "uring-nodefer") == 0)
        setenv("PGCORRAL_URING_DEFER", "0", 1);
    else
        unsetenv("PGCORRAL_URING_DEFER");
}

#endif
