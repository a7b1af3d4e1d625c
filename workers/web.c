/*
 * The web worker role: on start, the HTTP server on the listening socket the supervisor
 * opened for this web worker index, answering /api/v1/health through the worker's pool;
 * on drain, the server drains, then the worker is told it may close its pools and exit.
 */
#include <errno.h>
#include <stdlib.h>

#include "workers/web.h"

/* Role start: the HTTP server on this web worker's listening socket. */
static int web_start(struct worker_ctx *w)
{
    const struct worker_config *cfg = w->cfg;
    struct web_server_config sc = {0};
    struct web_server *srv;
    int rc;

    if (w->role_index < 0 || w->role_index >= cfg->n_listen_fds || !cfg->listen_fds) {
        rt_log(RT_LOG_ERROR, "web: no listening socket for this web worker",
               json_pack("{s:i,s:i}", "web_index", w->role_index, "sockets", cfg->n_listen_fds));
        return -EINVAL;
    }
    if (web_io_mode_parse(cfg->io_mode, &sc.io) < 0) {
        rt_log(RT_LOG_ERROR, "web: --io must be auto, uring or epoll",
               json_pack("{s:s?}", "io", cfg->io_mode));
        return -EINVAL;
    }
    sc.listen_fd = cfg->listen_fds[w->role_index];
    web_limits_default(&sc.limits);
    sc.seg = w->seg;
    sc.stats = w->self;
    sc.pool = w->pool;
    rc = web_server_create(&srv, &w->loop, &sc);
    if (rc < 0)
        return rc;
    w->role_state = srv;
    rt_log(RT_LOG_INFO, "web: serving",
           json_pack("{s:s?,s:s}", "listen", cfg->listen_addr, "io", web_server_io_name(srv)));
    return 0;
}

/* Every connection is answered and closed: the worker may close its pools and exit. */
static void on_server_drained(struct web_server *s, void *arg)
{
    struct worker_ctx *w = arg;

    web_server_destroy(s);
    w->role_state = NULL;
    worker_drained(w);
}

/* SIGTERM: stop accepting, finish what is in flight (web_server_drain). */
static void web_drain(struct worker_ctx *w)
{
    if (!w->role_state) {
        worker_drained(w);
        return;
    }
    web_server_drain(w->role_state, on_server_drained, w);
}

const struct worker_role_ops web_role_ops = {
    .start = web_start,
    .drain = web_drain,
};
