/*
 * Test plugin of the observability tests (t316 error bodies, t317 metrics, t318 access log):
 * a route whose statement fails in the database, a slow statement, an enqueue from a
 * handler, and a route with a path parameter.
 */
#include <stdio.h>
#include <string.h>

#include "pgcorral.h"

/* GET /o/bigint?v=abc: SELECT $1::bigint; an invalid number fails in the database and the
 * handler returns the error (no status of its own: the runtime answers 500). */
static int bigint(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char v[64] = "abc", out[96];
    const char *params[1] = {v};
    struct pgc_result *r = NULL;
    (void)pgc_req_query_param(req, "v", v, sizeof v);
    int rc = pgc_exec_params(ctx, "SELECT $1::bigint", 1, params, &r);
    if (rc)
        return rc;
    snprintf(out, sizeof out, "{\"v\":%s}", pgc_value(r, 0, 0));
    pgc_result_free(r);
    return pgc_res_json(res, 200, out);
}

/* GET /o/slow: a statement over the test's slow-query threshold. */
static int slow(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    int rc = pgc_exec(ctx, "SELECT pg_sleep(0.3) /* t3xx slow */", NULL);
    if (rc)
        return rc;
    return pgc_res_json(res, 200, "{\"slept\":true}");
}

/* POST /o/enqueue: one job in the handler's transaction; answers its id. */
static int enqueue(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    int64_t id = 0;
    char out[64];
    int rc = pgc_enqueue(ctx, "obs.task", "{\"from\":\"route\"}", NULL, &id);
    if (rc)
        return rc;
    snprintf(out, sizeof out, "{\"id\":%lld}", (long long)id);
    return pgc_res_json(res, 201, out);
}

/* GET /o/items/:id: echoes the parameter. */
static int item(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char out[128];
    snprintf(out, sizeof out, "{\"id\":\"%s\"}", pgc_req_param(req, "id"));
    return pgc_res_json(res, 200, out);
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    int rc = 0;
    rc |= pgc_register_route(reg, "GET", "/o/bigint", bigint, 0);
    rc |= pgc_register_route(reg, "GET", "/o/slow", slow, 0);
    rc |= pgc_register_route(reg, "POST", "/o/enqueue", enqueue, 0);
    rc |= pgc_register_route(reg, "GET", "/o/items/:id", item, 0);
    return rc;
}
