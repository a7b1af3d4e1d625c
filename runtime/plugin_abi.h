/*
 * The plugin ABI on the host side: the structures behind pgcorral.h's opaque types (jobs,
 * requests, responses, a handler's context) and the worker environment that handler
 * threads reach the loop through. runtime/plugin_api.c implements pgcorral.h on them;
 * workers fill them (job worker, web worker's route runner).
 */
#ifndef PGCORRAL_PLUGIN_ABI_H
#define PGCORRAL_PLUGIN_ABI_H

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

/* Path parameters of a matched route: pointers into the request path, not NUL-terminated. */
struct plugin_params {
    int n;
    const char *name[PLUGIN_MAX_PARAMS]; /* borrowed from the route (after the ':') */
    size_t name_len[PLUGIN_MAX_PARAMS];
    const char *value[PLUGIN_MAX_PARAMS]; /* borrowed from the path */
    size_t value_len[PLUGIN_MAX_PARAMS];
};

/*
 * Sets up what the plugin API needs in this process (the TTL cache behind pgc_cache_*).
 * Idempotent and thread-safe; plugin_registry_load calls it. Returns 0 or -ENOMEM.
 */
__attribute__((warn_unused_result)) int plugin_api_init(void);

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
    /* A route on the primary with auto-pipelining: the handler starts without a connection;
     * plain statements go through the loop (plugin_bridge_exec: pipelined), and the first
     * one that needs a session (pgc_tx, SET, BEGIN, ...) pins conn for the rest of the run
     * (plugin_bridge_pin; the route runner takes it back). */
    bool lazy;
    /* A PGC_ROUTE_ON_LOOP handler on a fiber of the loop (lazy too): its statements suspend
     * the fiber; what needs a session of its own (pgc_tx, SET, BEGIN) is refused. */
    bool on_loop;
    bool snoozed; /* pgc_snooze was called: snooze_s holds its seconds */
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

/* Closes the env's handle; frees it in the close callback. Pending replica reads and
 * primary statements and pins of handlers fail with RT_EPOOL_CLOSED. NULL does nothing. Loop
 * thread. */
void plugin_env_close(struct plugin_env *env);

/* The replica pool, or NULL. */
struct rt_pool *plugin_env_replica(const struct plugin_env *env);

/* The primary pool (never NULL), and the read router (may be NULL). Borrowed. */
struct rt_pool *plugin_env_primary(const struct plugin_env *env);
struct rt_read_router *plugin_env_router(const struct plugin_env *env);
/* The worker's loop, which the env's pools run on. Borrowed. */
uv_loop_t *plugin_env_loop(const struct plugin_env *env);

/*
 * Runs fn(arg) on a fiber of env's loop (rt_fiber.h), then done(arg) on the loop's stack:
 * for handlers that wait only through pgc_ calls (PGC_ROUTE_ON_LOOP). Their statements go
 * straight to the pools' loop, with no thread and no wake-up. Returns 0, or -ESHUTDOWN
 * (the env is closing) or -ENOMEM: then neither runs. Loop thread.
 */
int plugin_env_spawn(struct plugin_env *env, void (*fn)(void *arg), void (*done)(void *arg),
                     void *arg);

/* The pgc_ code (pgcorral.h: PGC_ESQL, PGC_ECONN, ...) of a pool error code; 0 stays 0. */
int plugin_error_code(int rt_code);

#endif
