/*
 * The web worker role: on start, the plugins (--plugin) and the HTTP server on the listening
 * socket the supervisor opened for this web worker index, answering the built-in routes
 * and the plugins' routes through the worker's pools; on drain, the server drains, then
 * the worker is told it may close its pools and exit.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "workers/plugin.h"
#include "workers/web.h"

/* What plugin route handlers run with in this process (one web server per process). */
static struct plugin_env *web_plugin_env;

/*
 * Test hook, for tests/t960_adv_hung_web: PGCORRAL_TEST_STOP_ACCEPT=N makes the web
 * workers of generation N or lower (the first ones the supervisor forks are 1, 2, ...)
 * never accept, while their loop and heartbeat run on: a worker that is alive and hung
 * for its clients. Not for production use; unset, nothing changes.
 */
static bool test_stop_accept(const struct worker_ctx *w)
{
    const char *v = getenv("PGCORRAL_TEST_STOP_ACCEPT");
    long n = v ? strtol(v, NULL, 10) : 0;
    return n > 0 && w->generation <= (unsigned long)n;
}

/* Loads the plugins and, when they register routes, creates what their handlers need. */
static int web_plugins_start(struct worker_ctx *w, struct web_server_config *sc)
{
    const struct pgc_registry *reg;
    char err[1024], num[16];
    int limit, rc;

    rc = plugin_load_process(w->cfg->plugins, err, sizeof err);
    if (rc < 0) {
        rt_log(RT_LOG_ERROR, "cannot load plugins", json_pack("{s:s}", "error", err));
        return -EINVAL;
    }
    reg = plugin_process_registry();
    if (!reg || reg->nroutes == 0)
        return 0;
    rc = plugin_env_create(&web_plugin_env, &w->loop, w->pool,
                           w->read_pool != w->pool ? w->read_pool : NULL, w->read_router);
    if (rc < 0)
        return rc;
    /* Each handler holds a threadpool thread (4 by default) with its connection: room for
     * one per connection. Read when the threadpool first starts, in this process. */
    limit = w->cfg->db->connection_limit;
    snprintf(num, sizeof num, "%d", limit + 2 > 4 ? limit + 2 : 4);
    setenv("UV_THREADPOOL_SIZE", num, 1);
    sc->plugins = reg;
    sc->plugin_env = web_plugin_env;
    return 0;
}

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
    sc.test_no_accept = test_stop_accept(w);
    sc.health_timeout_ms = cfg->health_timeout_ms > 0 ? (unsigned)cfg->health_timeout_ms : 0;
    rc = web_plugins_start(w, &sc);
    if (rc < 0)
        return rc;
    rc = web_server_create(&srv, &w->loop, &sc);
    if (rc < 0) {
        plugin_env_close(web_plugin_env);
        web_plugin_env = NULL;
        return rc;
    }
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
    /* No handler runs any more: the env goes before the pools. */
    plugin_env_close(web_plugin_env);
    web_plugin_env = NULL;
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
