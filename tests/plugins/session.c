/*
 * Test plugin of t332: route handlers that need a whole connection while plain statements
 * of other requests are auto-pipelined: session state set by hand, and a transaction.
 */
#include <stdio.h>
#include <string.h>

#include "pgcorral.h"

/* GET /s/session: SET, then SHOW on the same connection; answers {"app":"..."}. */
static int session(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    struct pgc_result *r = NULL;
    char out[128];
    int rc;

    if ((rc = pgc_exec(ctx, "SET application_name = 't332_session'", NULL)) != 0)
        return rc;
    if ((rc = pgc_exec(ctx, "SELECT current_setting('application_name')", &r)) != 0)
        return rc;
    snprintf(out, sizeof out, "{\"app\":\"%s\"}", pgc_value(r, 0, 0));
    pgc_result_free(r);
    return pgc_res_json(res, 200, out);
}

/* Two statements of one pgc_tx, which must see the same transaction. */
static int same_tx(struct pgc_ctx *ctx, void *arg)
{
    struct pgc_result *a = NULL, *b = NULL;
    int rc = pgc_exec(ctx, "SELECT txid_current()", &a);
    if (rc == 0)
        rc = pgc_exec(ctx, "SELECT txid_current()", &b);
    if (rc == 0)
        *(int *)arg = strcmp(pgc_value(a, 0, 0), pgc_value(b, 0, 0)) == 0;
    pgc_result_free(a);
    pgc_result_free(b);
    return rc;
}

/* GET /s/tx: {"same":true} when both statements of the transaction ran in it. */
static int tx(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    int same = 0, rc = pgc_tx(ctx, same_tx, &same);
    if (rc)
        return rc;
    return pgc_res_json(res, 200, same ? "{\"same\":true}" : "{\"same\":false}");
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    int rc = pgc_register_route(reg, "GET", "/s/session", session, 0);
    return rc ? rc : pgc_register_route(reg, "GET", "/s/tx", tx, 0);
}
