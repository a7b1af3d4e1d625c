/*
 * Test plugin of the loader tests (t320), built in one of several broken or working forms
 * by -D flags: GOOD, GOOD2 (other names), DUP_TASK, DUP_ROUTE, BUILTIN_ROUTE, NO_INIT,
 * BAD_ABI, NO_ABI, UNDEFINED, INIT_FAILS, BAD_NAME.
 */
#if defined(BAD_ABI) || defined(NO_ABI)
#define PGC_NO_ABI_STAMP
#endif
#include "pgcorral.h"

#ifdef BAD_ABI
__attribute__((visibility("default"))) const unsigned pgc_plugin_abi = PGC_ABI_VERSION + 1;
#endif

#ifdef UNDEFINED
int pgc_no_such_function(void);
#endif

__attribute__((unused)) static int task(struct pgc_ctx *ctx, const struct pgc_job *job)
{
#ifdef UNDEFINED
    return pgc_no_such_function();
#else
    return 0;
#endif
}

__attribute__((unused)) static int route(struct pgc_ctx *ctx, const struct pgc_request *req,
                                         struct pgc_response *res)
{
    return pgc_res_json(res, 200, "{}");
}

#ifndef NO_INIT
int pgc_plugin_init(struct pgc_registry *reg)
{
#ifdef INIT_FAILS
    return -5;
#endif
#ifdef BAD_NAME
    return pgc_register_task(reg, "has space", task, 0);
#endif
#if defined(GOOD) || defined(DUP_TASK) || defined(UNDEFINED) || defined(BAD_ABI) || defined(NO_ABI)
    if (pgc_register_task(reg, "v.a", task, 0) || pgc_register_task(reg, "v.b", task, 1000))
        return 1;
    if (pgc_register_route(reg, "GET", "/v/items/:id", route, 0) ||
        pgc_register_route(reg, "GET", "/v/items/new", route, PGC_ROUTE_READONLY) ||
        pgc_register_route(reg, "POST", "/v/items", route, 0))
        return 1;
#endif
#ifdef GOOD2
    return pgc_register_task(reg, "v2.only", task, 0);
#endif
#ifdef DUP_ROUTE
    return pgc_register_route(reg, "GET", "/v/items/:key", route, 0);
#endif
#ifdef BUILTIN_ROUTE
    return pgc_register_route(reg, "GET", "/api/v1/health", route, 0);
#endif
    return 0;
}
#endif
