/*
 * Example plugin: route GET /api/v1/accounts/:id, one uncached point read of pgbench's
 * accounts table (`pgbench -i` creates it). The handler's plain pgc_exec_params runs
 * through the worker's loop, so concurrent requests share round trips (auto-pipelining,
 * DESIGN "Pool"). 404 when the account does not exist, 400 for an id that is not a number.
 */
#include <stdio.h>
#include <string.h>

#include "pgcorral.h"

static const char balance_sql[] = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

static int accounts(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    const char *id = pgc_req_param(req, "id");
    struct pgc_result *r = NULL;
    char body[96];
    size_t n = id ? strlen(id) : 0;
    int rc;

    /* aid is an int: at most 10 digits, so the server never sees a cast error. */
    if (n == 0 || n > 10 || strspn(id, "0123456789") != n)
        return pgc_res_json(res, 400, "{\"error\":\"the account id must be a number\"}");
    rc = pgc_exec_params(ctx, balance_sql, 1, &id, &r);
    if (rc == PGC_ESQL && strcmp(pgc_error_sqlstate(ctx), "22003") == 0)
        return pgc_res_json(res, 404, "{\"error\":\"account not found\"}");
    if (rc)
        return rc;
    if (pgc_nrows(r) == 0) {
        pgc_result_free(r);
        return pgc_res_json(res, 404, "{\"error\":\"account not found\"}");
    }
    snprintf(body, sizeof body, "{\"aid\":%s,\"abalance\":%s}", id, pgc_value(r, 0, 0));
    pgc_result_free(r);
    return pgc_res_json(res, 200, body);
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    return pgc_register_route(reg, "GET", "/api/v1/accounts/:id", accounts, PGC_ROUTE_ON_LOOP);
}
