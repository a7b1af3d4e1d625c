/*
 * Loop wake-ups needed to answer: a web server runs in this process, and the test drives
 * its loop itself, one non-blocking iteration (UV_RUN_NOWAIT) at a time, after 64 clients
 * have sent a ping each. Every request is on the server's sockets before the first
 * iteration (loopback delivers during the client's send), so a backend that hears of it
 * answers all of them within a few iterations. A backend whose wake-up comes late (an
 * io_uring eventfd the kernel signals one RCU grace period later, or task work the kernel
 * kept back without saying so) answers none or only some, however often the loop turns:
 * that is the stall behind 5k instead of 80k requests/s with the old default. No clock is
 * read. Every backend --io can pick: auto, epoll, uring.
 */
#include "tests/lib/webtest.h"

enum { NCLIENTS = 64, MAX_ITERATIONS = 32 };

static const char PING[] = "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n";

/* One client: its socket and what it has read of the current answer. */
struct client {
    int fd;
    char buf[1024];
    size_t len;
    bool answered;
};

static void on_drained(struct web_server *s, void *arg)
{
    *(bool *)arg = true;
}

/* Reads what arrived for c without waiting; answered once a whole ping answer is there. */
static void client_read(struct client *c)
{
    ssize_t n;

    while (!c->answered &&
           (n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, MSG_DONTWAIT)) > 0) {
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
        c->answered = strncmp(c->buf, "HTTP/1.1 200", 12) == 0 && strstr(c->buf, "\"ok\"");
    }
}

/* Sends a ping on every client, then turns the loop until all are answered. Returns how
 * many iterations that took, or -(answered) when MAX_ITERATIONS were not enough. */
static int ping_all(uv_loop_t *loop, struct client *cl)
{
    int answered = 0;

    for (int i = 0; i < NCLIENTS; i++) {
        cl[i].len = 0;
        cl[i].answered = false;
        if (!wt_sends(cl[i].fd, PING))
            bail("send: %s", strerror(errno));
    }
    for (int it = 1; it <= MAX_ITERATIONS; it++) {
        uv_run(loop, UV_RUN_NOWAIT);
        answered = 0;
        for (int i = 0; i < NCLIENTS; i++) {
            client_read(&cl[i]);
            answered += cl[i].answered;
        }
        if (answered == NCLIENTS)
            return it;
    }
    return -answered;
}

static void test_backend(enum web_io_mode mode, const char *name)
{
    struct client cl[NCLIENTS];
    struct web_server_config cfg = {0};
    struct web_server *s = NULL;
    bool drained = false;
    uv_loop_t loop;
    int port, it;

    uv_loop_init(&loop);
    cfg.listen_fd = wt_listen(&port);
    cfg.io = mode;
    web_limits_default(&cfg.limits);
    if (web_server_create(&s, &loop, &cfg) < 0)
        bail("%s: the server did not start", name);
    uv_run(&loop, UV_RUN_NOWAIT); /* the backend arms its accept */
    for (int i = 0; i < NCLIENTS; i++) {
        cl[i].fd = wt_connect(port);
        if (cl[i].fd < 0)
            bail("connect: %s", strerror(errno));
    }

    it = ping_all(&loop, cl);
    diag("%s picked %s", name, web_server_io_name(s));
    ok(it > 0,
       "%s: 64 pings on new connections are all answered within %d loop iterations "
       "(answered: %d)",
       name, MAX_ITERATIONS, it > 0 ? NCLIENTS : -it);
    for (int round = 0; round < 3; round++) {
        it = ping_all(&loop, cl);
        ok(it > 0,
           "%s: round %d, 64 keep-alive pings sent at once are all answered within %d "
           "loop iterations (answered: %d)",
           name, round + 1, MAX_ITERATIONS, it > 0 ? NCLIENTS : -it);
    }

    for (int i = 0; i < NCLIENTS; i++)
        close(cl[i].fd);
    web_server_drain(s, on_drained, &drained);
    while (!drained && uv_run(&loop, UV_RUN_ONCE))
        ;
    web_server_destroy(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

int main(void)
{
    const char *why;

    rt_log_set_level(RT_LOG_WARN);
    tap_timeout(60);
    test_backend(WEB_IO_AUTO, "auto");
    test_backend(WEB_IO_EPOLL, "epoll");
    if (web_uring_probe(&why) == 0)
        test_backend(WEB_IO_URING, "uring");
    else
        diag("io_uring not tested: %s", why);
    done_testing();
}
