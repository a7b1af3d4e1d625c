/*
 * Example plugin: route GET /api/v1/products, a read-only route (it runs on the replica
 * pool when DATABASE_REPLICA_URL is set) whose answer is cached for 300 s in the worker's
 * TTL cache. The X-Cache header says hit or miss. Table example.products is created with
 * a few rows on first use when it does not exist (on the primary; a replica cannot).
 */
#include <string.h>

#include "pgcorral.h"

#define CACHE_KEY "example:products"
#define CACHE_TTL_S 300

/* The products as one JSON array, built by the server. */
static const char list_sql[] =
    "SELECT coalesce(json_agg(json_build_object('id', id, 'name', name,"
    " 'price_cents', price_cents) ORDER BY id), '[]')::text FROM example.products";

/* Creates and fills example.products (first use on a fresh database). */
static int create_products(struct pgc_ctx *ctx, void *arg)
{
    static const char *const stmts[] = {
        "SELECT pg_advisory_xact_lock(7045631834937901421)",
        "CREATE SCHEMA IF NOT EXISTS example",
        "CREATE TABLE IF NOT EXISTS example.products (id int PRIMARY KEY, name text NOT NULL,"
        " price_cents int NOT NULL)",
        "INSERT INTO example.products VALUES (1, 'Widget', 1250), (2, 'Gadget', 4999),"
        " (3, 'Gizmo', 799) ON CONFLICT DO NOTHING",
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        int rc = pgc_exec(ctx, stmts[i], NULL);
        if (rc)
            return rc;
    }
    return 0;
}

static int products(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    struct pgc_result *r = NULL;
    char *cached;
    size_t len;
    int rc;

    if (pgc_cache_get(ctx, CACHE_KEY, &cached, &len) == 0) {
        pgc_res_header(res, "X-Cache", "hit");
        rc = pgc_res_json(res, 200, cached);
        pgc_free(cached);
        return rc;
    }
    rc = pgc_exec_read(ctx, list_sql, 0, NULL, &r);
    if (rc == PGC_ESQL && strcmp(pgc_error_sqlstate(ctx), "42P01") == 0) {
        rc = pgc_tx(ctx, create_products, NULL);
        if (rc == 0)
            rc = pgc_exec_read(ctx, list_sql, 0, NULL, &r);
    }
    if (rc)
        return rc;
    const char *json = pgc_value(r, 0, 0);
    pgc_cache_set(ctx, CACHE_KEY, json, strlen(json), CACHE_TTL_S);
    pgc_res_header(res, "X-Cache", "miss");
    rc = pgc_res_json(res, 200, json);
    pgc_result_free(r);
    return rc;
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    return pgc_register_route(reg, "GET", "/api/v1/products", products, PGC_ROUTE_READONLY);
}
