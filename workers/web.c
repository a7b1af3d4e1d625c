/*
 * The web worker role: on start, the plugins (--plugin) and the HTTP server on the listening
 * socket the supervisor opened for this web worker index (and a second one on its admin
 * socket with --admin-listen), answering the built-in routes and the plugins' routes
 * through the worker's pools, and the access log; on drain, the servers drain, then the
 * worker is told it may close its pools and exit.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "workers/plugin.h"
#include "workers/web.h"

/* What plugin route handlers run with in this process (one web role per process). */
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
/* The role's state (worker_ctx.role_state). */
struct web_role {
    struct worker_ctx *w;
    struct web_server *pub;   /* the --listen socket's server */
    struct web_server *admin; /* the --admin-listen socket's server, or NULL */
    struct web_access_log *access_log;
    uv_signal_t usr1; /* SIGUSR1: reopen the access log (worker.c reopens the log file) */
    bool usr1_started;
    int draining; /* servers still draining */
};

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
     * one per connection; with auto-pipelining a handler's plain statements share
     * connections, so room for pipeline_depth more per connection (at most 64 threads).
     * Read when the threadpool first starts, in this process. */
    limit = w->cfg->db->connection_limit;
    if (w->cfg->db->pipeline_depth > 0)
        limit = limit * (w->cfg->db->pipeline_depth + 1) > 62
                    ? 62
                    : limit * (w->cfg->db->pipeline_depth + 1);
    snprintf(num, sizeof num, "%d", limit + 2 > 4 ? limit + 2 : 4);
    setenv("UV_THREADPOOL_SIZE", num, 1);
    sc->plugins = reg;
    sc->plugin_env = web_plugin_env;
    return 0;
}

static void on_usr1(uv_signal_t *sig, int signum)
{
    struct web_role *r = sig->data;
    web_access_log_reopen(r->access_log);
}

static void on_usr1_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Frees what the role holds besides its servers (access log, signal watcher, plugin env),
 * then r (once its signal watcher has closed). */
static void web_role_free(struct web_role *r)
{
    web_access_log_close(r->access_log);
    r->access_log = NULL;
    /* No handler runs any more: the env goes before the pools. */
    plugin_env_close(web_plugin_env);
    web_plugin_env = NULL;
    if (r->usr1_started)
        uv_close((uv_handle_t *)&r->usr1, on_usr1_closed);
    else
        free(r);
}

/* Role start: the HTTP server on this web worker's listening socket(s). */
static int web_start(struct worker_ctx *w)
{
    const struct worker_config *cfg = w->cfg;
    struct web_server_config sc = {0};
    struct web_role *r;
    int rc;

    if (w->role_index < 0 || w->role_index >= cfg->n_listen_fds || !cfg->listen_fds) {
        rt_log(RT_LOG_ERROR, "web: no listening socket for this web worker",
               json_pack("{s:i,s:i}", "web_index", w->role_index, "sockets", cfg->n_listen_fds));
        return -EINVAL;
    }
    if (cfg->admin_fds && w->role_index >= cfg->n_admin_fds) {
        rt_log(RT_LOG_ERROR, "web: no admin listening socket for this web worker",
               json_pack("{s:i,s:i}", "web_index", w->role_index, "sockets", cfg->n_admin_fds));
        return -EINVAL;
    }
    if (web_io_mode_parse(cfg->io_mode, &sc.io) < 0) {
        rt_log(RT_LOG_ERROR, "web: --io must be auto, uring or epoll",
               json_pack("{s:s?}", "io", cfg->io_mode));
        return -EINVAL;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->w = w;
    if (cfg->access_log) {
        rc = web_access_log_open(&r->access_log, &w->loop, cfg->access_log, w->role_index, w->self);
        if (rc < 0)
            goto fail;
        uv_signal_init(&w->loop, &r->usr1);
        r->usr1.data = r;
        uv_signal_start(&r->usr1, on_usr1, SIGUSR1);
        uv_unref((uv_handle_t *)&r->usr1);
        r->usr1_started = true;
    }
    sc.listen_fd = cfg->listen_fds[w->role_index];
    web_limits_default(&sc.limits);
    sc.seg = w->seg;
    sc.stats = w->self;
    sc.pool = w->pool;
    sc.test_no_accept = test_stop_accept(w);
    sc.health_timeout_ms = cfg->health_timeout_ms > 0 ? (unsigned)cfg->health_timeout_ms : 0;
    sc.api_token = cfg->api_token;
    sc.access_log = r->access_log;
    sc.route_set = cfg->admin_fds ? WEB_ROUTES_PUBLIC : WEB_ROUTES_ALL;
    rc = web_plugins_start(w, &sc);
    if (rc < 0)
        goto fail;
    rc = web_server_create(&r->pub, &w->loop, &sc);
    if (rc < 0)
        goto fail;
    if (cfg->admin_fds) {
        /* The admin listener: few requests (scrapes, job management), so the epoll
         * backend, whatever --io says; and no plugin routes. */
        sc.listen_fd = cfg->admin_fds[w->role_index];
        sc.route_set = WEB_ROUTES_ADMIN;
        sc.io = WEB_IO_EPOLL;
        sc.plugins = NULL;
        sc.plugin_env = NULL;
        sc.name = "admin";
        rc = web_server_create(&r->admin, &w->loop, &sc);
        if (rc < 0)
            goto fail; /* the worker exits (WORKER_EXIT_CONFIG), its public server with it */
    }
    w->role_state = r;
    rt_log(RT_LOG_INFO, "web: serving",
           json_pack("{s:s?,s:s?,s:s,s:b,s:s?}", "listen", cfg->listen_addr, "admin_listen",
                     cfg->admin_listen_addr, "io", web_server_io_name(r->pub), "api_token",
                     cfg->api_token != NULL, "access_log", cfg->access_log));
    return 0;

fail:
    web_role_free(r);
    return rc;
}

/* One server drained; after the last, the worker may close its pools and exit. */
static void on_server_drained(struct web_server *s, void *arg)
{
    struct web_role *r = arg;
    struct worker_ctx *w = r->w;

    web_server_destroy(s);
    if (--r->draining > 0)
        return;
    w->role_state = NULL;
    web_role_free(r);
    worker_drained(w);
}

/* SIGTERM: stop accepting, finish what is in flight (web_server_drain). */
static void web_drain(struct worker_ctx *w)
{
    struct web_role *r = w->role_state;

    if (!r) {
        worker_drained(w);
        return;
    }
    r->draining = r->admin ? 2 : 1;
    web_server_drain(r->pub, on_server_drained, r);
    if (r->admin)
        web_server_drain(r->admin, on_server_drained, r);
}

const struct worker_role_ops web_role_ops = {
    .start = web_start,
    .drain = web_drain,
};
