/*
 * Slow clients cannot switch the web tier off (adversarial suite): on every backend --io
 * can pick (auto, uring, epoll), 150 connections send half a request each and never the
 * rest, and never read the 408 the header timeout answers. Then new clients must get their
 * pings answered, while those connections are still open and after they are closed. With the old
 * default (io_uring with DEFER_TASKRUN on a kernel that announces deferred task work late) the web
 * tier stayed dead for good after this, its workers ready and idle. One supervisor per backend, all
 * at the same time, so the 10 s header timeout is waited for once.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"
#include "workers/web.h"

enum { NBACKENDS = 3, NHALF = 150, TIMEOUT_WAIT_MS = 25000 };

struct backend {
    const char *io;
    char control[256];
    struct pgt_proc sup;
    int port;
    int half[NHALF];
    bool up;
};

static bool ready(void *arg)
{
    struct backend *b = arg;
    return ot_all_ready(b->control, 2, 0);
}

/* A blocking connection to 127.0.0.1:port, or -1. */
static int connect_to(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* The 4xx answers a supervisor's workers have given (the 408s of the header timeout). */
static long long answered_4xx(const char *control)
{
    json_t *doc = pgt_ctl(control, "stats");
    long long n = json_integer_value(
        json_object_get(json_object_get(json_object_get(doc, "stats"), "totals"), "http_4xx"));
    json_decref(doc);
    return n;
}

/* Whether every backend has answered every half request with its 408 (the clients never
 * read it, like the attacker's). */
static bool all_timed_out(void *arg)
{
    struct backend *bs = arg;
    for (int k = 0; k < NBACKENDS; k++)
        if (bs[k].up && answered_4xx(bs[k].control) < NHALF)
            return false;
    return true;
}

/* n pings on new connections; stops at the first one not answered 200 within 5 s. */
static int pings(int port, int n)
{
    char *resp = NULL;
    int good = 0;
    for (int i = 0; i < n; i++) {
        int st = ot_http_get(port, "/api/v1/ping", &resp);
        free(resp);
        resp = NULL;
        if (st != 200)
            break;
        good++;
    }
    return good;
}

int main(void)
{
    static struct backend bs[NBACKENDS] = {{.io = "auto"}, {.io = "uring"}, {.io = "epoll"}};
    const char *why;
    char env_url[1024];

    tap_timeout(120);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    for (int k = 0; k < NBACKENDS; k++) {
        struct backend *b = &bs[k];
        if (strcmp(b->io, "uring") == 0 && web_uring_probe(&why) != 0) {
            diag("--io uring not tested: %s", why);
            continue;
        }
        snprintf(b->control, sizeof b->control, "%s", pgt_tmp_path(b->io));
        char *argv[] = {
            (char *)pgt_binary(), "run",      "--web",    "2",           "--jobs", "0",
            "--control",          b->control, "--listen", "127.0.0.1:0", "--io",   (char *)b->io,
            "--log-format",       "text",     NULL};
        char *env[] = {env_url, NULL};
        pgt_spawn(&b->sup, argv, env);
        if (!pgt_wait_until(ready, b, 20000)) {
            pgt_proc_drain(&b->sup);
            bail("--io %s: the supervisor did not come up:\n%s", b->io, b->sup.log);
        }
        b->port = (int)ot_config_int(b->control, "listen_port");
        b->up = true;
    }

    for (int k = 0; k < NBACKENDS; k++) {
        struct backend *b = &bs[k];
        int opened = 0;
        if (!b->up)
            continue;
        for (int i = 0; i < NHALF; i++) {
            b->half[i] = connect_to(b->port);
            if (b->half[i] >= 0 && send(b->half[i], "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n", 36,
                                        MSG_NOSIGNAL) == 36)
                opened++;
        }
        is_int(opened, NHALF, "--io %s: %d connections each sent half a request", b->io, NHALF);
    }
    ok(pgt_wait_until(all_timed_out, bs, TIMEOUT_WAIT_MS),
       "every backend answered every half request with its header timeout");

    for (int k = 0; k < NBACKENDS; k++) {
        struct backend *b = &bs[k];
        if (!b->up)
            continue;
        is_int(pings(b->port, 10), 10,
               "--io %s: with the timed-out connections still open and "
               "unread, 10 pings on new connections are answered",
               b->io);
        for (int i = 0; i < NHALF; i++)
            if (b->half[i] >= 0)
                close(b->half[i]);
        is_int(pings(b->port, 10), 10, "--io %s: once they are closed, 10 more pings are answered",
               b->io);
        pgt_proc_drain(&b->sup);
        const char *line = strstr(b->sup.log, "web: I/O backend");
        if (line)
            diag("--io %s: %.*s", b->io, (int)strcspn(line, "\n"), line);
    }

    for (int k = 0; k < NBACKENDS; k++) {
        if (!bs[k].up)
            continue;
        kill(bs[k].sup.pid, SIGTERM);
        ok(pgt_proc_wait_exit(&bs[k].sup, 15000) && WIFEXITED(bs[k].sup.status) &&
               WEXITSTATUS(bs[k].sup.status) == 0,
           "--io %s: the supervisor drains and exits 0", bs[k].io);
        pgt_proc_cleanup(&bs[k].sup);
    }
    done_testing();
}
