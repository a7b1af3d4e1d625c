/*
 * Test plugin of the plugin API tests (t321): routes that echo request accessors, report
 * which pool they run on, fail, retry a transaction after a deadlock, use the cache, and
 * call the job outcomes where they do not belong.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "pgcorral.h"

/* Runs of the deadlock transaction's body (the first one fails with 40P01). */
static atomic_int tx_runs;

static int echo(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char name[64] = "", out[1024];
    size_t blen;
    const char *body = pgc_req_body(req, &blen);
    struct pgc_result *r = NULL;
    int rc = pgc_req_query_param(req, "name", name, sizeof name);
    if (rc < 0 && rc != PGC_ENOENT)
        return pgc_fail(ctx, "query param: %d", rc);
    rc = pgc_exec(ctx, "SELECT current_setting('application_name')", &r);
    if (rc)
        return rc;
    snprintf(out, sizeof out,
             "{\"id\":\"%s\",\"name\":\"%s\",\"hdr\":\"%s\",\"body\":\"%.*s\",\"app\":\"%s\","
             "\"method\":\"%s\",\"path\":\"%s\"}",
             pgc_req_param(req, "id"), name,
             pgc_req_header(req, "x-test") ? pgc_req_header(req, "x-test") : "", (int)blen,
             body ? body : "", pgc_value(r, 0, 0), pgc_req_method(req), pgc_req_path(req));
    pgc_result_free(r);
    pgc_res_header(res, "X-Echo", "1");
    return pgc_res_json(res, 200, out);
}

/* Which server session: application_name of pgc_exec and of pgc_exec_read. */
static int where(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    struct pgc_result *a = NULL, *b = NULL;
    char out[256];
    int rc = pgc_exec(ctx, "SELECT current_setting('application_name')", &a);
    if (rc == 0)
        rc = pgc_exec_read(ctx, "SELECT current_setting('application_name')", 0, NULL, &b);
    if (rc == 0) {
        snprintf(out, sizeof out, "{\"exec\":\"%s\",\"read\":\"%s\"}", pgc_value(a, 0, 0),
                 pgc_value(b, 0, 0));
        rc = pgc_res_json(res, 200, out);
    }
    pgc_result_free(a);
    pgc_result_free(b);
    return rc;
}

static int fail(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    return pgc_fail(ctx, "nope: %s", pgc_req_path(req));
}

/* pgc_discard and pgc_snooze belong to task handlers: what they return in a route. */
static int outcomes(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char out[512];
    int discard = pgc_discard(ctx, "not here");
    int snooze = pgc_snooze(ctx, 1);
    snprintf(out, sizeof out, "{\"discard\":%d,\"snooze\":%d,\"error\":\"%s\"}", discard, snooze,
             pgc_error_message(ctx));
    return pgc_res_json(res, 200, out);
}

static int sqlerr(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char out[256];
    int rc = pgc_exec(ctx, "SELECT 1/0", NULL);
    snprintf(out, sizeof out, "{\"rc\":%d,\"sqlstate\":\"%s\",\"transient\":%d}", rc,
             pgc_error_sqlstate(ctx), pgc_error_transient(ctx));
    return pgc_res_json(res, 400, out);
}

static int deadlock_body(struct pgc_ctx *ctx, void *arg)
{
    int run = atomic_fetch_add(&tx_runs, 1) + 1;
    int rc = pgc_exec(ctx, "INSERT INTO t_tx (run) VALUES (1)", NULL);
    if (rc)
        return rc;
    if (run == 1)
        return pgc_exec(ctx,
                        "DO $$ BEGIN RAISE EXCEPTION 'simulated deadlock' USING ERRCODE ="
                        " '40P01'; END $$",
                        NULL);
    return 0;
}

static int deadlock(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char out[64];
    int rc = pgc_tx(ctx, deadlock_body, NULL);
    if (rc)
        return rc;
    snprintf(out, sizeof out, "{\"runs\":%d}", atomic_load(&tx_runs));
    return pgc_res_json(res, 200, out);
}

/* ?set=VALUE stores VALUE for 1 s; without, answers what the cache holds. */
static int cache(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char v[64], out[128];
    char *got = NULL;
    size_t len = 0;
    if (pgc_req_query_param(req, "set", v, sizeof v) >= 0) {
        int rc = pgc_cache_set(ctx, "t321", v, strlen(v), 1);
        snprintf(out, sizeof out, "{\"set\":%d}", rc);
        return pgc_res_json(res, 200, out);
    }
    if (pgc_cache_get(ctx, "t321", &got, &len) != 0)
        return pgc_res_json(res, 404, "{\"cached\":null}");
    snprintf(out, sizeof out, "{\"cached\":\"%.*s\"}", (int)len, got);
    pgc_free(got);
    return pgc_res_json(res, 200, out);
}

static int enqueue(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    struct pgc_enqueue_opts o = {.queue = "api", .priority = 7, .key = "api-key"};
    int64_t a = 0, b = 0;
    char out[128];
    int rc = pgc_enqueue(ctx, "some.task", "{\"x\":1}", &o, &a);
    if (rc == 0)
        rc = pgc_enqueue(ctx, "some.task", NULL, &o, &b);
    if (rc)
        return rc;
    snprintf(out, sizeof out, "{\"a\":%lld,\"b\":%lld}", (long long)a, (long long)b);
    return pgc_res_json(res, 201, out);
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    int rc = 0;
    rc |= pgc_register_route(reg, "POST", "/t/items/:id", echo, 0);
    rc |= pgc_register_route(reg, "GET", "/t/where", where, 0);
    rc |= pgc_register_route(reg, "GET", "/t/where-ro", where, PGC_ROUTE_READONLY);
    rc |= pgc_register_route(reg, "GET", "/t/fail", fail, 0);
    rc |= pgc_register_route(reg, "GET", "/t/sqlerr", sqlerr, 0);
    rc |= pgc_register_route(reg, "GET", "/t/outcomes", outcomes, 0);
    rc |= pgc_register_route(reg, "GET", "/t/deadlock", deadlock, 0);
    rc |= pgc_register_route(reg, "GET", "/t/cache", cache, 0);
    rc |= pgc_register_route(reg, "GET", "/t/enqueue", enqueue, 0);
    return rc;
}
