/*
 * Example plugin: the guide's order transaction as task `order.create`. Payload
 * {"retailer_id": 1, "total_cents": 1250, ...}: in one transaction, insert the order and
 * increment the retailer's total_orders; pgc_tx runs it again whole after a deadlock or
 * serialization failure (1 s, 2 s, 4 s). Tables live in schema `example`, created on first
 * use with two retailers (ids 1 and 2).
 */
#include <stdatomic.h>
#include <stdio.h>

#include "pgcorral.h"

/* Set once the example schema exists (per worker process). */
static atomic_bool schema_ready;

/* Creates the example tables once, under an advisory lock (workers start together). */
static int create_schema(struct pgc_ctx *ctx, void *arg)
{
    static const char *const stmts[] = {
        "SELECT pg_advisory_xact_lock(7045631834937901421)",
        "CREATE SCHEMA IF NOT EXISTS example",
        "CREATE TABLE IF NOT EXISTS example.retailers (id int PRIMARY KEY, name text NOT NULL,"
        " total_orders int NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS example.orders (id bigserial PRIMARY KEY,"
        " retailer_id int NOT NULL REFERENCES example.retailers,"
        " total_cents bigint NOT NULL, payload jsonb NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO example.retailers (id, name) VALUES (1, 'Acme'), (2, 'Globex')"
        " ON CONFLICT DO NOTHING",
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        int rc = pgc_exec(ctx, stmts[i], NULL);
        if (rc)
            return rc;
    }
    return 0;
}

/* What order_tx needs from the job. */
struct order {
    const struct pgc_job *job;
    char retailer[24], total[24];
};

/* The transaction: the order, then the retailer's counter. */
static int order_tx(struct pgc_ctx *ctx, void *arg)
{
    struct order *o = arg;
    const char *ins[3] = {o->retailer, o->total, pgc_job_payload(o->job)};
    const char *upd[1] = {o->retailer};
    struct pgc_result *res = NULL;
    int rc;

    rc = pgc_exec_params(ctx,
                         "INSERT INTO example.orders (retailer_id, total_cents, payload)"
                         " VALUES ($1, $2, $3::jsonb)",
                         3, ins, NULL);
    if (rc)
        return rc;
    rc = pgc_exec_params(ctx,
                         "UPDATE example.retailers SET total_orders = total_orders + 1"
                         " WHERE id = $1",
                         1, upd, &res);
    if (rc)
        return rc;
    long long n = pgc_affected(res);
    pgc_result_free(res);
    if (n != 1)
        return pgc_fail(ctx, "order.create: no retailer %s", o->retailer);
    return 0;
}

static int order_create(struct pgc_ctx *ctx, const struct pgc_job *job)
{
    struct order o = {.job = job};
    long long retailer, total = 0;
    int rc;

    /* A payload never gets better by waiting: discard the job instead of retrying it 25
     * times over about 14 hours of backoff. */
    if (pgc_job_arg_int(job, "retailer_id", &retailer) != 0)
        return pgc_discard(ctx, "order.create: payload needs an integer \"retailer_id\"");
    if (pgc_job_arg_int(job, "total_cents", &total) == PGC_EINVAL)
        return pgc_discard(ctx, "order.create: \"total_cents\" must be an integer");
    snprintf(o.retailer, sizeof o.retailer, "%lld", retailer);
    snprintf(o.total, sizeof o.total, "%lld", total);
    if (!atomic_load(&schema_ready)) {
        rc = pgc_tx(ctx, create_schema, NULL);
        if (rc)
            return rc;
        atomic_store(&schema_ready, 1);
    }
    rc = pgc_tx(ctx, order_tx, &o);
    if (rc == 0)
        pgc_log(ctx, PGC_LOG_INFO, "order created for retailer %s", o.retailer);
    return rc;
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    return pgc_register_task(reg, "order.create", order_create, 30000);
}
