/* The web tests' helpers (webtest.h). */
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
#include "tests/lib/webtest.h"

long long wt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* In the child: /test/slow requests being handled now (shared with the parent), or NULL. */
static _Atomic int *wt_inflight;

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
__attribute__((noreturn)) void wt_child_main(int lfd, const struct wt_opts *o)
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

int wt_listen(int *port)
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

void wt_server_fork(struct wt_server *s, const struct wt_opts *o)
{
    fflush(stdout);
    s->pid = fork();
    if (s->pid < 0)
        bail("fork: %s", strerror(errno));
    if (s->pid == 0)
        wt_child_main(s->lfd, o);
}

void wt_server_start(struct wt_server *s, const struct wt_opts *o)
{
    s->lfd = wt_listen(&s->port);
    wt_server_fork(s, o);
}

int wt_server_wait(struct wt_server *s, int timeout_ms)
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

int wt_server_stop(struct wt_server *s)
{
    kill(s->pid, SIGTERM);
    return wt_server_wait(s, WT_WAIT_MS);
}

void *wt_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bail("mmap: %s", strerror(errno));
    return p;
}

int wt_wait_value(_Atomic int *v, int want, int timeout_ms)
{
    long long end = wt_now_ms() + timeout_ms;
    int now;
    while ((now = atomic_load(v)) != want && wt_now_ms() < end)
        poll(NULL, 0, 2);
    return now;
}

struct shm_worker *wt_stats_block(void)
{
    void *p = mmap(NULL, sizeof(struct shm_worker), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bail("mmap: %s", strerror(errno));
    return p;
}

int wt_connect(int port)
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

bool wt_send(int fd, const void *buf, size_t len)
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

bool wt_sends(int fd, const char *s)
{
    return wt_send(fd, s, strlen(s));
}

void wt_resp_free(struct wt_resp *r)
{
    free(r->body);
    r->body = NULL;
}

const char *wt_header(const struct wt_resp *r, const char *name, char *out, size_t n)
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

bool wt_says_close(const struct wt_resp *r)
{
    char v[64];
    return wt_header(r, "connection", v, sizeof v) && strcasecmp(v, "close") == 0;
}

/* Reads once (up to timeout_ms). Returns false on timeout. */
bool wt_fill(struct wt_conn *c, int timeout_ms)
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

bool wt_read_resp_ex(struct wt_conn *c, struct wt_resp *r, int timeout_ms, bool head_only,
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

bool wt_read_resp(struct wt_conn *c, struct wt_resp *r)
{
    return wt_read_resp_ex(c, r, WT_WAIT_MS, false, false);
}

int wt_wait_close(struct wt_conn *c, int timeout_ms)
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

struct wt_conn *wt_open(int port)
{
    struct wt_conn *c = calloc(1, sizeof *c);
    c->fd = wt_connect(port);
    return c;
}

void wt_close(struct wt_conn *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c);
}

int wt_request(int port, const char *req, struct wt_resp *r)
{
    struct wt_conn *c = wt_open(port);
    int st = 0;
    if (wt_sends(c->fd, req) && wt_read_resp(c, r))
        st = r->status;
    wt_close(c);
    return st;
}

int wt_get(int port, const char *path, struct wt_resp *r)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    return wt_request(port, req, r);
}

int wt_backends(enum web_io_mode modes[3], const char *names[3])
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

void wt_backend_env(const char *name)
{
    if (strcmp(name, "uring-nodefer") == 0)
        setenv("PGCORRAL_URING_DEFER", "0", 1);
    else
        unsetenv("PGCORRAL_URING_DEFER");
}
