/*
 * The web worker's route runner: runs a plugin route's handler on a threadpool thread with
 * a connection of the worker's primary or replica pool (or, on a primary that
 * auto-pipelines, without one: its plain statements go through the loop), and turns what
 * goes wrong into an answer without internals (the details go to the error log under an
 * error_id).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_id.h"
#include "runtime/rt_log.h"
#include "workers/plugin.h"

/*
 * A failure answer without its details: {"error": public_msg, "error_id": ID}; the detail
 * (database text, host names: never for clients) goes to one error line with the same
 * error_id, the route, the request id and the SQLSTATE when there is one. Any thread.
 */
static void answer_failure(struct plugin_call *call, int status, const char *public_msg,
                           const char *detail, const char *sqlstate)
{
    struct pgc_response *res = &call->res;
    char id[RT_ERROR_ID_LEN + 1], body[160];

    json_t *fields = json_pack("{s:i,s:s}", "status", status, "route", call->label);
    if (fields && call->req.request_id)
        json_object_set_new(fields, "request_id", json_string(call->req.request_id));
    if (fields && sqlstate && *sqlstate)
        json_object_set_new(fields, "sqlstate", json_string(sqlstate));
    rt_log_failure(RT_LOG_ERROR, status != 503 ? "route failed" : "route not run",
                   detail && *detail ? detail : NULL, call->label, fields, id);
    snprintf(body, sizeof body, "{\"error\":\"%s\",\"error_id\":\"%s\"}", public_msg, id);
    plugin_response_clear(res);
    res->status = status;
    if (pgc_res_json(res, status, body) < 0)
        res->status = status;
}

/* The public message of a 503 for err, which says why no connection could be had. */
static const char *unavailable_message(const struct rt_error *err)
{
    return err->code == RT_EPOOL_TIMEOUT  ? "database busy"
           : err->code == RT_EPOOL_CLOSED ? "the worker is stopping"
                                          : "database unavailable";
}

/* Whether err means that no connection could be had (the pool is full, closing, or the
 * database unreachable), rather than that a statement failed. */
static bool no_connection(const struct rt_error *err)
{
    switch (err->code) {
    case RT_EPOOL_TIMEOUT:
    case RT_ECONNECT:
    case RT_ECONNECT_TIMEOUT:
    case RT_EDB_UNAVAILABLE:
    case RT_EPOOL_CLOSED:
        return true;
    default:
        return false;
    }
}

/* 503 with Retry-After: no connection could be had for the handler (err says why). */
static void answer_unavailable(struct plugin_call *call, const struct rt_error *err)
{
    answer_failure(call, 503, unavailable_message(err), err->message, err->sqlstate);
    if (pgc_res_header(&call->res, "Retry-After", "1") < 0)
        call->res.status = 503;
}

/* Runs the handler of call on conn (NULL: a lazy route, ctx.lazy). Handler thread, or a
 * fiber of the loop (on_loop: PGC_ROUTE_ON_LOOP). */
static void route_run(struct plugin_call *call, struct rt_conn *conn, bool on_loop)
{
    struct pgc_ctx *ctx = &call->ctx;

    plugin_ctx_init(ctx, conn, call->env, call->route->plugin, call->label);
    ctx->lazy = conn == NULL;
    ctx->on_loop = on_loop;
    ctx->req = &call->req;
    ctx->readonly = (call->route->flags & PGC_ROUTE_READONLY) && plugin_env_replica(call->env);
    /* Slow-query lines of this handler's statements name its request. */
    if (conn)
        rt_conn_set_request_id(conn, call->req.request_id);
    call->rc = call->route->fn(ctx, &call->req, &call->res);
    if (call->rc != 0 && call->res.status == 0 && ctx->lazy && no_connection(&ctx->err))
        answer_unavailable(call, &ctx->err); /* what a route given a connection answers */
    else if (call->rc != 0 && call->res.status == 0)
        answer_failure(call, 500, "internal error", pgc_error_message(ctx),
                       pgc_error_sqlstate(ctx));
    else if (call->res.status == 0)
        call->res.status = 200;
}

static void route_thread(struct rt_blocking *blk, struct rt_conn *conn)
{
    route_run(blk->data, conn, false);
}

static void route_thread_routed(struct rt_read_blocking *req, struct rt_conn *conn)
{
    route_run(req->data, conn, false);
}

/* The connection went back (or none could be had: err). Loop thread. */
static void route_finish(struct plugin_call *call, const struct rt_error *err)
{
    if (err) {
        call->rc = plugin_error_code(err->code);
        answer_unavailable(call, err);
    }
    call->cb(call);
}

static void route_work_lazy(uv_work_t *w)
{
    route_run(w->data, NULL, false);
}

static void route_fiber(void *arg)
{
    route_run(arg, NULL, true);
}

/* An on-loop handler returned (it pins nothing). Loop stack. */
static void route_fiber_done(void *arg)
{
    route_finish(arg, NULL);
}

/* A lazy route's handler returned: a connection it pinned goes back. Loop thread. */
static void route_after_lazy(uv_work_t *w, int status)
{
    struct plugin_call *call = w->data;

    if (call->ctx.conn) {
        rt_conn_return(call->ctx.conn);
        call->ctx.conn = NULL;
    }
    route_finish(call, NULL);
}

static void route_done(struct rt_blocking *blk, const struct rt_error *err)
{
    route_finish(blk->data, err);
}

static void route_done_routed(struct rt_read_blocking *req, const struct rt_error *err)
{
    route_finish(req->data, err);
}

int plugin_route_call(struct plugin_env *env, struct plugin_call *call,
                      const struct plugin_route *route, const struct plugin_params *params,
                      plugin_call_cb cb)
{
    struct rt_pool *pool, *replica;
    struct rt_read_router *router;
    size_t need = 0, off = 0;

    call->env = env;
    call->route = route;
    call->cb = cb;
    call->rc = 0;
    memset(&call->res, 0, sizeof call->res);
    snprintf(call->label, sizeof call->label, "%s %s", route->method, route->path);
    /* NUL-terminated copies of the path parameters for pgc_req_param. */
    call->req.params.n = 0;
    call->req.param_buf = NULL;
    if (params && params->n > 0) {
        for (int i = 0; i < params->n; i++)
            need += params->value_len[i] + 1;
        call->req.param_buf = malloc(need);
        if (!call->req.param_buf)
            return -ENOMEM;
        call->req.params = *params;
        for (int i = 0; i < params->n; i++) {
            memcpy(call->req.param_buf + off, params->value[i], params->value_len[i]);
            call->req.param_buf[off + params->value_len[i]] = '\0';
            call->req.params.value[i] = call->req.param_buf + off;
            off += params->value_len[i] + 1;
        }
    }
    /* Waits only in pgc_ calls: a fiber of the loop, no thread (PGC_ROUTE_ON_LOOP). */
    if (route->flags & PGC_ROUTE_ON_LOOP) {
        call->ctx.conn = NULL;
        return plugin_env_spawn(env, route_fiber, route_fiber_done, call);
    }
    replica = plugin_env_replica(env);
    router = plugin_env_router(env);
    if ((route->flags & PGC_ROUTE_READONLY) && replica && router) {
        call->rblk.data = call;
        return rt_read_run_blocking(router, &call->rblk, call->label, route_thread_routed,
                                    route_done_routed);
    }
    pool = (route->flags & PGC_ROUTE_READONLY) && replica ? replica : plugin_env_primary(env);
    /* Auto-pipelining: no connection up front; plain statements share the pool's. */
    if (pool == plugin_env_primary(env) && rt_pool_pipelines(pool, "SELECT")) {
        call->work.data = call;
        call->ctx.conn = NULL;
        return uv_queue_work(plugin_env_loop(env), &call->work, route_work_lazy, route_after_lazy);
    }
    call->blk.data = call;
    return rt_pool_run_blocking(pool, &call->blk, call->label, route_thread, route_done);
}

void plugin_call_clear(struct plugin_call *call)
{
    plugin_response_clear(&call->res);
    free(call->req.param_buf);
    call->req.param_buf = NULL;
    call->req.params.n = 0;
}
