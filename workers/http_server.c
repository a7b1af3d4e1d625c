/*
 * The web worker's HTTP server: the I/O backend's choice (--io auto|uring|epoll), start on
 * the listening socket the supervisor opened, the drain (stop accepting, let in-flight
 * requests finish, close idle keep-alive connections after a short grace) and the stop.
 * The connections themselves are http_conn.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workers/web.h"

int web_io_mode_parse(const char *s, enum web_io_mode *out)
{
    if (!s || strcmp(s, "auto") == 0)
        *out = WEB_IO_AUTO;
    else if (strcmp(s, "uring") == 0)
        *out = WEB_IO_URING;
    else if (strcmp(s, "epoll") == 0)
        *out = WEB_IO_EPOLL;
    else
        return -EINVAL;
    return 0;
}

/*
 * Picks the backend. --io epoll and --io uring are taken as asked (uring fails when the
 * kernel lacks it). --io auto takes io_uring only where it is the faster one: with
 * DEFER_TASKRUN rings, whose completion work runs in batches when the loop asks for it.
 * Plain io_uring rings measured no faster than epoll for our ping (bench/http, 2 cores,
 * kernel 6.18), so without a DEFER_TASKRUN ring that passed its behaviour probe, auto
 * takes epoll and says why.
 */
static int server_pick_io(struct web_server *s)
{
    const char *why = NULL;
    int rc;

    if (s->cfg.io == WEB_IO_EPOLL) {
        s->io = &web_io_epoll;
        rt_log(RT_LOG_INFO, "web: I/O backend",
               json_pack("{s:s,s:s?}", "io", "epoll", "listener", s->cfg.name));
        return 0;
    }
    rc = web_uring_probe(&why);
    if (rc == 0 && (s->cfg.io == WEB_IO_URING || web_uring_defer_taskrun())) {
        s->io = &web_io_uring;
        rt_log(RT_LOG_INFO, "web: I/O backend",
               json_pack("{s:s,s:b,s:s?}", "io", "uring", "defer_taskrun",
                         web_uring_defer_taskrun(), "defer_off_because", web_uring_defer_reason()));
        return 0;
    }
    if (s->cfg.io == WEB_IO_URING) {
        rt_log(RT_LOG_ERROR, "web: --io uring asked for, but io_uring is not usable",
               json_pack("{s:s}", "reason", why ? why : strerror(-rc)));
        return -ENOSYS;
    }
    if (rc == 0)
        why = web_uring_defer_reason();
    s->io = &web_io_epoll;
    rt_log(RT_LOG_INFO, "web: I/O backend",
           json_pack("{s:s,s:s}", "io", "epoll", "uring_not_chosen_because",
                     rc == 0 ? "io_uring without DEFER_TASKRUN is no faster than epoll, and "
                               "DEFER_TASKRUN is not usable here"
                             : (why ? why : strerror(-rc))));
    if (rc == 0 && why)
        rt_log(RT_LOG_INFO, "web: io_uring DEFER_TASKRUN probe", json_pack("{s:s}", "result", why));
    return 0;
}

int web_server_create(struct web_server **out, uv_loop_t *loop, const struct web_server_config *cfg)
{
    struct web_server *s;
    const char *errpos = NULL;
    int rc;

    s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->cfg = *cfg;
    s->listen_fd = cfg->listen_fd;
    web_conn_parser_settings(&s->settings);

    {
        int listening = 0;
        socklen_t len = sizeof listening;
        if (getsockopt(cfg->listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 ||
            !listening) {
            rc = -EINVAL;
            errpos = "listen_fd is not a listening socket";
            goto fail;
        }
    }
    rc = web_routes_init(s);
    if (rc < 0) {
        errpos = "routes";
        goto fail;
    }
    if (cfg->test_no_accept) {
        /* No backend state is needed without sockets; epoll's has none to release. */
        s->io = &web_io_epoll;
        close(s->listen_fd);
        rt_logf(RT_LOG_WARN, "web: test hook PGCORRAL_TEST_STOP_ACCEPT: this worker never "
                             "accepts");
        *out = s;
        return 0;
    }
    rc = server_pick_io(s);
    if (rc < 0) {
        errpos = "io";
        goto fail_routes;
    }
    rc = s->io->listen_start(s);
    if (rc < 0) {
        errpos = "listen";
        goto fail_routes;
    }
    s->listening = true;
    *out = s;
    return 0;

fail_routes:
    web_routes_fini(s);
fail:
    rt_log(RT_LOG_ERROR, "web: cannot start the HTTP server",
           json_pack("{s:s,s:s}", "step", errpos, "error", rc > -4096 ? strerror(-rc) : "unknown"));
    free(s);
    return rc;
}

const char *web_server_io_name(const struct web_server *s)
{
    return s->io->name;
}

unsigned web_server_conn_count(const struct web_server *s)
{
    return s->nconns;
}

void web_server_listener_closed(struct web_server *s)
{
    s->listening = false;
    web_server_conn_gone(s);
}

void web_server_backend_closed(struct web_server *s)
{
    if (s->drain_done)
        s->drain_done(s, s->drain_arg);
}

/* The drain is over once the listener and every connection are gone: release the
 * backend, which reports back through web_server_backend_closed(). */
void web_server_conn_gone(struct web_server *s)
{
    if (!s->draining || s->listening || s->nconns > 0 || s->backend_closing)
        return;
    s->backend_closing = true;
    rt_log(RT_LOG_INFO, "web: drained", json_pack("{s:s}", "io", s->io->name));
    s->io->close_backend(s);
}

void web_server_drain(struct web_server *s, void (*done)(struct web_server *s, void *arg),
                      void *arg)
{
    struct web_conn *c, *next;

    if (s->draining)
        return;
    s->draining = true;
    s->drain_done = done;
    s->drain_arg = arg;
    /* Take in what already arrived before deciding who is idle. */
    s->io->poll_now(s);
    for (c = s->conns; c; c = next) {
        next = c->next; /* c may go */
        web_conn_drain(c);
    }
    if (s->listening)
        s->io->listen_stop(s);
    else
        web_server_conn_gone(s);
}

void web_server_destroy(struct web_server *s)
{
    if (!s)
        return;
    web_routes_fini(s);
    free(s);
}
