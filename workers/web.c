/*
 * The web worker role: on start, the worker's database pool and the HTTP server on the
 * listening socket the supervisor opened for this web worker index; on drain, the server
 * drains, then the pool closes, then the worker is told it may exit.
 */
#include <errno.h>
#include <stdlib.h>

#include "runtime/rt_pool.h"
#include "workers/web.h"

/* The role's state, in worker_ctx.role_state. */
struct web_role {
    struct worker_ctx *w;
    struct web_server *srv;
    struct rt_pool *pool;
};

static int web_start(struct worker_ctx *w)
{
    const struct worker_config *cfg = w->cfg;
    struct web_server_config sc = {0};
    struct rt_pool_opts po;
    struct web_role *r;
    const char *errpos = NULL;
    int rc;

    if (w->role_index < 0 || w->role_index >= cfg->n_listen_fds || !cfg->listen_fds) {
        rt_log(RT_LOG_ERROR, "web: no listening socket for this web worker",
               json_pack("{s:i,s:i}", "web_index", w->role_index, "sockets", cfg->n_listen_fds));
        return -EINVAL;
    }
    if (web_io_mode_parse(cfg->io_mode, &sc.io) < 0) {
        rt_log(RT_LOG_ERROR, "web: --io must be auto, uring or epoll",
               json_pack("{s:s}", "io", cfg->io_mode));
        return -EINVAL;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->w = w;

    if (cfg->db) {
        rt_pool_opts_init(&po);
        po.loop = &w->loop;
        po.url = cfg->db;
        po.name = "primary";
        po.seg = w->seg;
        po.worker_index = w->index;
        po.token = w->token;
        po.slow_query_ms = cfg->slow_query_ms;
        rc = rt_pool_create(&r->pool, &po);
        if (rc < 0) {
            errpos = "pool";
            goto fail;
        }
    }

    sc.listen_fd = cfg->listen_fds[w->role_index];
    web_limits_default(&sc.limits);
    sc.seg = w->seg;
    sc.stats = w->self;
    sc.pool = r->pool;
    rc = web_server_create(&r->srv, &w->loop, &sc);
    if (rc < 0) {
        errpos = "server";
        goto fail_pool;
    }
    w->role_state = r;
    rt_log(RT_LOG_INFO, "web: serving",
           json_pack("{s:s,s:s}", "listen", cfg->listen_addr ? cfg->listen_addr : "",
                     "io", web_server_io_name(r->srv)));
    return 0;

fail_pool:
    rt_pool_close(r->pool, NULL, NULL);
fail:
    rt_log(RT_LOG_ERROR, "web: cannot start", json_pack("{s:s}", "step", errpos));
    free(r);
    return rc;
}

static void on_pool_closed(void *arg)
{
    struct web_role *r = arg;
    struct worker_ctx *w = r->w;

    w->role_state = NULL;
    free(r);
    worker_drained(w);
}

static void on_server_drained(struct web_server *s, void *arg)
{
    struct web_role *r = arg;

    web_server_destroy(s);
    r->srv = NULL;
    if (r->pool)
        rt_pool_close(r->pool, on_pool_closed, r);
    else
        on_pool_closed(r);
}

static void web_drain(struct worker_ctx *w)
{
    struct web_role *r = w->role_state;

    if (!r) {
        worker_drained(w);
        return;
    }
    web_server_drain(r->srv, on_server_drained, r);
}

const struct worker_role_ops web_role_ops = {
    .start = web_start,
    .drain = web_drain,
};
