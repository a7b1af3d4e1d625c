/*
 * The web worker's hot path allocates nothing per request: the server child counts its
 * own malloc/calloc/realloc calls (this program interposes them), and a thousand
 * keep-alive pings, pipelined pings and 404s after warm-up must not add one. Both
 * backends. (Not under ASan or TSan, which own malloc themselves.)
 */
#include "tests/lib/webtest.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
int main(void)
{
    skip_all("malloc interposition does not mix with a sanitizer's allocator");
}
#else

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);

/* Allocations by the server child (shared with the parent); only the child counts. */
static _Atomic long *allocs;
static bool counting;

void *malloc(size_t n)
{
    if (counting)
        atomic_fetch_add_explicit(allocs, 1, memory_order_relaxed);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (counting)
        atomic_fetch_add_explicit(allocs, 1, memory_order_relaxed);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (counting)
        atomic_fetch_add_explicit(allocs, 1, memory_order_relaxed);
    return __libc_realloc(p, n);
}

/* n requests of req on c, one at a time (pipelined: all sent first when pipelined). */
static int run(struct wt_conn *c, const char *req, int n, int status, bool pipelined)
{
    struct wt_resp r;
    int good = 0;

    if (pipelined)
        for (int i = 0; i < n; i++)
            wt_sends(c->fd, req);
    for (int i = 0; i < n; i++) {
        if (!pipelined)
            wt_sends(c->fd, req);
        if (wt_read_resp(c, &r) && r.status == status)
            good++;
        wt_resp_free(&r);
    }
    return good;
}

int main(void)
{
    static const char ping[] = "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n";
    static const char nope[] = "GET /nope?x=1 HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\r\n";
    enum web_io_mode modes[3];
    const char *names[3];
    int n;

    tap_timeout(60);
    signal(SIGPIPE, SIG_IGN);
    allocs = wt_shared(sizeof *allocs);
    n = wt_backends(modes, names);
    for (int i = 0; i < n; i++) {
        wt_backend_env(names[i]);
        struct wt_server s;
        struct wt_opts o = {.io = modes[i]};
        struct wt_conn *c;
        long before, after;
        int good;

        web_limits_default(&o.limits);
        o.limits.max_requests = 100000; /* all on one connection */
        o.stats = wt_stats_block();
        s.lfd = wt_listen(&s.port);
        fflush(stdout);
        s.pid = fork();
        if (s.pid == 0) {
            counting = true;
            wt_child_main(s.lfd, &o);
        }
        atomic_store(allocs, 0);
        c = wt_open(s.port);
        /* Warm-up: the connection's buffers are allocated once, and grow to what a burst
         * of pipelined answers needs (larger than the burst measured below). */
        run(c, ping, 10, 200, false);
        run(c, nope, 10, 404, false);
        run(c, ping, 1000, 200, true);
        before = atomic_load(allocs);
        good = run(c, ping, 1000, 200, false);
        good += run(c, nope, 200, 404, false);
        good += run(c, ping, 200, 200, true);
        after = atomic_load(allocs);
        ok(before > 0, "%s: the child's allocations are seen (%ld by start-up and warm-up)",
           names[i], before);
        is_int(good, 1400, "%s: 1400 requests answered", names[i]);
        is_int(after - before, 0, "%s: the server allocated nothing for them", names[i]);
        wt_close(c);
        is_int(wt_server_stop(&s), 0, "%s: the server drains and exits 0", names[i]);
        close(s.lfd);
    }
    return done_testing();
}
#endif
