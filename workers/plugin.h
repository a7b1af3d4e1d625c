/*
 * The plugin loader and the host side of the plugin API in workers: loading plugins (dlopen
 * RTLD_NOW|RTLD_LOCAL, ABI and symbol checks), the registry of their tasks and routes, and
 * running a route's handler on a thread with a connection (plugin_route_call, for the web
 * worker; jobs run theirs in workers/job.c). The structures behind pgcorral.h's opaque
 * types are runtime/plugin_abi.h's.
 */
#ifndef PGCORRAL_PLUGIN_H
#define PGCORRAL_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/plugin_abi.h"
#include "runtime/rt_pool.h"
#include "runtime/rt_read_pool.h"

/* A task a plugin registered. */
struct plugin_task {
    char *name;
    pgc_task_fn fn;
    int timeout_ms;     /* 0 = the worker's default */
    const char *plugin; /* path of the plugin that registered it (borrowed from the registry) */
};

/* A route a plugin registered. */
struct plugin_route {
    char *method;
    char *path; /* as registered, "/api/v1/jobs/:id" */
    pgc_route_fn fn;
    unsigned flags; /* PGC_ROUTE_* */
    const char *plugin;
};

/* One loaded plugin. */
struct plugin_so {
    char *path;
    void *dl; /* dlopen handle */
};

/* Every task and route of the plugins of one process. */
struct pgc_registry {
    struct plugin_task *tasks;
    int ntasks, cap_tasks;
    struct plugin_route *routes;
    int nroutes, cap_routes;
    struct plugin_so *plugins;
    int nplugins;
    const char *loading; /* the plugin whose pgc_plugin_init runs now */
    char error[512];     /* the first registration error, "" when none */
};

/*
 * Loads every plugin in paths (NULL-terminated; NULL = none) in order and runs its
 * pgc_plugin_init. Returns 0 and writes *out (free with plugin_registry_free), or a
 * negative error with a message in err that names the plugin and the problem: a file that
 * cannot be loaded (dlerror: missing file, undefined symbol), no pgc_plugin_abi (not built
 * against pgcorral.h) or a different ABI version, no pgc_plugin_init, an init that fails,
 * a task or route that another plugin (named) already registered. Not thread-safe.
 */
__attribute__((warn_unused_result)) int
plugin_registry_load(struct pgc_registry **out, const char *const *paths, char *err, size_t errlen);

/* Forgets the tasks and routes and dlcloses the plugins. NULL does nothing. */
void plugin_registry_free(struct pgc_registry *reg);

/*
 * A worker after fork: loads the plugins once for the whole process (later calls return
 * the same registry). Returns 0 or an error as plugin_registry_load. Loop thread.
 */
__attribute__((warn_unused_result)) int plugin_load_process(const char *const *paths, char *err,
                                                            size_t errlen);

/* The registry plugin_load_process loaded, or NULL. */
const struct pgc_registry *plugin_process_registry(void);

/* The task called name, or NULL. Any thread once loading is done. */
const struct plugin_task *plugin_task_find(const struct pgc_registry *reg, const char *name);

/* The names of every registered task, comma-separated, into buf (for error messages). */
char *plugin_task_names(const struct pgc_registry *reg, char *buf, size_t size);

/*
 * The route for method and path (path without the query string, len bytes), or NULL.
 * Writes params when it matches. *method_mismatch (when not NULL) is set when the path
 * matched some route with another method (405 rather than 404). Any thread.
 */
const struct plugin_route *plugin_route_match(const struct pgc_registry *reg, const char *method,
                                              const char *path, size_t len,
                                              struct plugin_params *params, bool *method_mismatch);

/* ---- running a route (the web worker) ------------------------------------------------ */

struct plugin_call;
/* call->res holds the response (status always set), call->rc the handler's return. */
typedef void (*plugin_call_cb)(struct plugin_call *call);

/* One route call, owned by the caller. */
struct plugin_call {
    void *data;              /* public: for the caller */
    struct pgc_request req;  /* public: filled by the caller before plugin_route_call */
    struct pgc_response res; /* read-only: the answer, in the callback */
    int rc;                  /* read-only: the handler's return value */
    /* private */
    struct rt_blocking blk;
    struct rt_read_blocking rblk; /* read-only routes through the env's router */
    uv_work_t work;               /* lazy routes (pgc_ctx.lazy): no connection up front */
    struct pgc_ctx ctx;
    struct plugin_env *env;
    const struct plugin_route *route;
    plugin_call_cb cb;
    char label[64];
};

/*
 * Runs route's handler for call->req: checks a connection out of the replica pool (read-only
 * route with a replica; through the env's router when it has one, so the primary while
 * the replica is down) or primary, runs the handler on a threadpool thread, gives the
 * connection back, then calls cb on the loop. On a primary that auto-pipelines
 * (rt_pool_pipelines) the handler starts without a connection (pgc_ctx.lazy): its plain
 * statements go through the loop, and the first that needs a session pins one, which goes
 * back when the handler returns. When no connection can be had, cb gets 503
 * {"error":"database unavailable","error_id":ID} (or "database busy", "the worker is
 * stopping") with Retry-After: 1; a handler that failed without a status gets 500
 * {"error":"internal error","error_id":ID}; the reason (database text) goes only to an
 * error log line with the same error_id, the route and the request id. params
 * (from plugin_route_match) are copied into call->req. Returns 0; -ENOMEM (no memory for
 * the copy of params) or RT_EPOOL_CLOSED (the pool is closing: the worker is stopping),
 * and then cb is not called. Loop thread. Free the answer with plugin_call_clear after cb.
 */
__attribute__((warn_unused_result)) int plugin_route_call(struct plugin_env *env,
                                                          struct plugin_call *call,
                                                          const struct plugin_route *route,
                                                          const struct plugin_params *params,
                                                          plugin_call_cb cb);

/* Frees call's response and private copies; call can be used again. */
void plugin_call_clear(struct plugin_call *call);

#endif
