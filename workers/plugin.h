/*
 * The plugin loader and the host side of the plugin API: loading plugins (dlopen
 * RTLD_NOW|RTLD_LOCAL, ABI and symbol checks), the registry of their tasks and routes, the
 * structures behind pgcorral.h's opaque types, and running a handler on a thread with a
 * connection (jobs: workers/job.c; routes: plugin_route_call for the web worker).
 */
#ifndef PGCORRAL_PLUGIN_H
#define PGCORRAL_PLUGIN_H

#ifndef PGC_HOST
#define PGC_HOST 1 /* pgcorral.h: the host defines no pgc_plugin_abi of its own */
#endif

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/pgcorral.h"
#include "runtime/rt_pool.h"
#include "runtime/rt_read_pool.h"

#define PLUGIN_MAX_PARAMS 8 /* ":name" segments of one route */

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

/*
 * Sets up what the plugin API needs in this process (the TTL cache behind pgc_cache_*).
 * Idempotent and thread-safe; plugin_registry_load calls it. Returns 0 or -ENOMEM.
 */
__attribute__((warn_unused_result)) int plugin_api_init(void);

/* Forgets the tasks and routes and dlcloses the plugins. NULL does nothing. */
void plugin_registry_free(struct pgc_registry *reg);

/*
 * The supervisor's fail-fast check before fork: loads the plugins, then unloads them, so
 * that workers load them afresh after fork (a rolling restart picks up a new build).
 * When tasks is not NULL, writes the names of the tasks they register there as a JSON
 * array text (caller frees). Returns 0 or an error as plugin_registry_load (-ENOMEM when
 * the list cannot be made).
 */
__attribute__((warn_unused_result)) int plugin_check(const char *const *paths, char **tasks,
                                                     char *err, size_t errlen);

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

/* Path parameters of a matched route: pointers into the request path, not NUL-terminated. */
struct plugin_params {
    int n;
    const char *name[PLUGIN_MAX_PARAMS]; /* borrowed from the route (after the ':') */
    size_t name_len[PLUGIN_MAX_PARAMS];
    const char *value[PLUGIN_MAX_PARAMS]; /* borrowed from the path */
    size_t value_len[PLUGIN_MAX_PARAMS];
};

/*
 * The route for method and path (path without the query string, len bytes), or NULL.
 * Writes params when it matches. *method_mismatch (when not NULL) is set when the path
 * matched some route with another method (405 rather than 404). Any thread.
 */
const struct plugin_route *plugin_route_match(const struct pgc_registry *reg, const char *method,
                                              const char *path, size_t len,
                                              struct plugin_params *params, bool *method_mismatch);

/* ---- the structures behind pgcorral.h ------------------------------------------------ */

/* A header of a request or response. */
struct plugin_header {
    const char *name, *value; /* NUL-terminated */
};

/* The job a task handler runs; filled by the job worker. */
struct pgc_job {
    int64_t id;
    const char *task, *queue, *payload, *key; /* payload: JSON text; key may be NULL */
    int priority, attempt, max_attempts;
    json_t *args; /* the payload parsed on first use by pgc_job_arg_* (handler thread) */
};

/* The request a route handler answers; filled by the web worker, strings NUL-terminated
 * and borrowed until the call's callback. */
struct pgc_request {
    const char *method;
    const char *path;  /* without the query string */
    const char *query; /* "" when none */
    const struct plugin_header *headers;
    int nheaders;
    const char *body; /* NULL when empty */
    size_t body_len;
    const char *request_id;      /* X-Request-Id (given or made up); may be NULL */
    struct plugin_params params; /* of the matched route */
    char *param_buf;             /* private: NUL-terminated copies for pgc_req_param */
};

/* The response a route handler builds; read by the web worker, owned by the call. */
struct pgc_response {
    int status;                    /* 0 until set */
    struct plugin_header *headers; /* names and values owned */
    int nheaders, cap_headers;
    char *body; /* owned; NULL when empty */
    size_t body_len;
};

struct plugin_env;

/* One run of a handler: set up by plugin_ctx_init, on the handler's thread. */
struct pgc_ctx {
    struct rt_conn *conn;          /* the handler's connection (borrowed) */
    struct plugin_env *env;        /* the worker's pools and loop; NULL = none (no replica) */
    const char *plugin;            /* path of the handler's plugin */
    const struct pgc_job *job;     /* task handlers */
    const struct pgc_request *req; /* route handlers */
    const char *label;             /* "job 42" or "GET /api/v1/products" */
    bool readonly;                 /* a read-only route on the replica */
    bool in_tx;                    /* inside pgc_tx */
    bool snoozed;                  /* pgc_snooze was called: snooze_s holds its seconds */
    int snooze_s;
    struct rt_error err;       /* the last error */
    bool cancelled;            /* pgc_cancelled found a cancel request (stays true) */
    int64_t cancel_checked_ns; /* CLOCK_MONOTONIC of pgc_cancelled's last query; 0 = none */
};

/* Prepares ctx for a handler run on conn. Any thread. */
void plugin_ctx_init(struct pgc_ctx *ctx, struct rt_conn *conn, struct plugin_env *env,
                     const char *plugin, const char *label);

/* Frees what a job's accessors cached (the parsed payload). */
void plugin_job_clear(struct pgc_job *job);

/* Frees a response's headers and body and zeroes it. */
void plugin_response_clear(struct pgc_response *res);

/* ---- the worker's environment for handlers ------------------------------------------- */

/*
 * A worker's pools as handler threads reach them: pgc_exec_read from a handler that holds
 * a primary connection runs on the replica pool through the loop (uv_async, then an
 * asynchronous query there) while the thread waits. Created on the loop thread; replica
 * may be NULL. router (borrowed, may be NULL) is the worker's read router over primary and
 * replica: when given, replica reads and read-only routes go through it, so that they run
 * on the primary while the replica is unreachable (rt_read_pool.h); it must outlive the
 * env and every call started through it. Returns 0 and *out, or -ENOMEM / a libuv error.
 */
__attribute__((warn_unused_result)) int plugin_env_create(struct plugin_env **out, uv_loop_t *loop,
                                                          struct rt_pool *primary,
                                                          struct rt_pool *replica,
                                                          struct rt_read_router *router);

/* Closes the env's handle; frees it in the close callback. Pending replica reads fail
 * with RT_EPOOL_CLOSED. NULL does nothing. Loop thread. */
void plugin_env_close(struct plugin_env *env);

/* The replica pool, or NULL. */
struct rt_pool *plugin_env_replica(const struct plugin_env *env);

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
 * connection back, then calls cb on the loop. When no connection can be had, cb gets 503
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
