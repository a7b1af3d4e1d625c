/*
 * Test plugin of t333: routes with PGC_ROUTE_ON_LOOP (their handlers run on fibers of the
 * web worker's loop): statements with parameters, several in a row, an SQL error, a
 * statement the server rolls back once (retried after the 1 s back-off), a slow one, what
 * an on-loop handler may not do (pgc_tx, SET), and a handler without any statement.
 */
#include <stdio.h>
#include <string.h>

#include "pgcorral.h"

/* GET /l/double/:n: {"n":N,"double":2N} from the database. */
static int twice(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    const char *n = pgc_req_param(req, "n");
    struct pgc_result *r = NULL;
    char out[128];
    int rc = pgc_exec_params(ctx, "SELECT $1::int * 2", 1, &n, &r);
    if (rc)
        return rc;
    snprintf(out, sizeof out, "{\"n\":%s,\"double\":%s}", n, pgc_value(r, 0, 0));
    pgc_result_free(r);
    return pgc_res_json(res, 200, out);
}

/* POST /l/notes/:text: an INSERT, then a SELECT that sees it (two statements in a row). */
static int note(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    const char *text = pgc_req_param(req, "text");
    struct pgc_result *r = NULL;
    char out[128];
    int rc = pgc_exec_params(ctx, "INSERT INTO t333_notes (body) VALUES ($1)", 1, &text, NULL);
    if (rc == 0)
        rc = pgc_exec_params(ctx, "SELECT count(*) FROM t333_notes WHERE body = $1", 1, &text,
                             &r);
    if (rc)
        return rc;
    snprintf(out, sizeof out, "{\"count\":%s}", pgc_value(r, 0, 0));
    pgc_result_free(r);
    return pgc_res_json(res, 201, out);
}

/* GET /l/sqlerr: what a failed statement reports. */
static int sqlerr(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char out[128];
    int rc = pgc_exec(ctx, "SELECT 1/0", NULL);
    snprintf(out, sizeof out, "{\"rc\":%d,\"sqlstate\":\"%s\"}", rc, pgc_error_sqlstate(ctx));
    return pgc_res_json(res, 400, out);
}

/* GET /l/flaky: t333_flaky() fails with 40001 on its first call; the statement is retried. */
static int flaky(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    struct pgc_result *r = NULL;
    char out[64];
    int rc = pgc_exec(ctx, "SELECT t333_flaky()", &r);
    if (rc)
        return rc;
    snprintf(out, sizeof out, "{\"calls\":%s}", pgc_value(r, 0, 0));
    pgc_result_free(r);
    return pgc_res_json(res, 200, out);
}

/* GET /l/sleep: a statement that takes 2 s. */
static int slow(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    int rc = pgc_exec(ctx, "SELECT pg_sleep(2)", NULL);
    return rc ? rc : pgc_res_json(res, 200, "{\"slept\":true}");
}

static int tx_body(struct pgc_ctx *ctx, void *arg)
{
    return pgc_exec(ctx, "SELECT 1", NULL);
}

/* GET /l/refused: pgc_tx and SET, which need a session an on-loop handler does not have. */
static int refused(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char out[1024];
    int tx = pgc_tx(ctx, tx_body, NULL);
    int set = pgc_exec(ctx, "SET application_name = 'x'", NULL);
    snprintf(out, sizeof out, "{\"tx\":%d,\"set\":%d,\"einval\":%d,\"error\":\"%s\"}", tx, set,
             PGC_EINVAL, pgc_error_message(ctx));
    return pgc_res_json(res, 200, out);
}

/* GET /l/plain: no statement at all. */
static int plain(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    return pgc_res_json(res, 200, "{\"plain\":true}");
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    int rc = 0;
    rc |= pgc_register_route(reg, "GET", "/l/double/:n", twice, PGC_ROUTE_ON_LOOP);
    rc |= pgc_register_route(reg, "POST", "/l/notes/:text", note, PGC_ROUTE_ON_LOOP);
    rc |= pgc_register_route(reg, "GET", "/l/sqlerr", sqlerr, PGC_ROUTE_ON_LOOP);
    rc |= pgc_register_route(reg, "GET", "/l/flaky", flaky, PGC_ROUTE_ON_LOOP);
    rc |= pgc_register_route(reg, "GET", "/l/sleep", slow, PGC_ROUTE_ON_LOOP);
    rc |= pgc_register_route(reg, "GET", "/l/refused", refused, PGC_ROUTE_ON_LOOP);
    rc |= pgc_register_route(reg, "GET", "/l/plain", plain, PGC_ROUTE_ON_LOOP);
    /* Read-only too: on the primary, as there is no replica. */
    rc |= pgc_register_route(reg, "GET", "/l/read/:n", twice,
                             PGC_ROUTE_ON_LOOP | PGC_ROUTE_READONLY);
    return rc;
}
