/*
 * The example plugins as make builds them (build/examples/NAME.so), run by a job worker:
 * order.create inserts an order and counts it on its retailer in one transaction (and
 * neither for an unknown retailer); noop and sleep finish; fail fails every attempt and is
 * kept as failed; discard, and order.create and sleep with payloads that cannot work, are
 * failed after one attempt; snooze puts its job off once, then finishes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/jobharness.h"
#include "tests/lib/jobtest.h"

static PGconn *db;

int main(void)
{
    struct jh h;
    struct job_options o;

    tap_timeout(60);
    pgt_db_url();
    /* jt_example_plugin returns a static buffer: copy each path. */
    static char paths[2][4200];
    snprintf(paths[0], sizeof paths[0], "%s", jt_example_plugin("basic"));
    snprintf(paths[1], sizeof paths[1], "%s", jt_example_plugin("orders"));
    const char *plugins[] = {paths[0], paths[1], NULL};
    const char *url = jt_create_job_db("pgct_t322");
    db = jt_connect(url);
    jh_init(&h, url, plugins, 32);
    jh_listen(&h, 0, 0);
    job_options_init(&o);
    o.poll_interval_ms = 200;
    o.retry_base_ms = 50;
    jh_spawn(&h, 0, &o);

    jt_exec(db, "SELECT pgcorral.add_job('order.create', jsonb_build_object('retailer_id', 1,"
                " 'total_cents', 100 * i)) FROM generate_series(1, 3) i");
    jt_exec(db, "SELECT pgcorral.add_job('order.create', jsonb_build_object('retailer_id', 2,"
                " 'total_cents', 5))");
    jt_exec(db, "SELECT pgcorral.add_job('order.create', '{\"retailer_id\": 99}',"
                " max_attempts => 1)");
    is_int(jh_wait_count(&h, db,
                         "SELECT count(*) FROM pgcorral.jobs WHERE task = 'order.create' AND"
                         " outcome IS NULL",
                         0, 20000),
           0, "order.create jobs run");
    is_int(pgt_query_ll(db, "SELECT total_orders FROM example.retailers WHERE id = 1"), 3,
           "retailer 1 counts its 3 orders");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM example.orders WHERE retailer_id = 1 AND"
                            " total_cents IN (100, 200, 300)"),
           3, "and the 3 orders exist");
    is_int(pgt_query_ll(db, "SELECT total_orders FROM example.retailers WHERE id = 2"), 1,
           "retailer 2 counts 1");
    jh_wait_count(&h, db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed'", 1, 5000);
    PGresult *r = PQexec(db, "SELECT last_error FROM pgcorral.jobs WHERE outcome = 'failed'");
    ok(PQntuples(r) == 1 && strstr(PQgetvalue(r, 0, 0), "insert or update on table") != NULL,
       "an unknown retailer fails the transaction: %s",
       PQntuples(r) ? PQgetvalue(r, 0, 0) : "(none)");
    PQclear(r);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM example.orders WHERE retailer_id = 99"), 0,
           "and leaves no order behind");

    jt_exec(db, "TRUNCATE pgcorral.jobs");
    jt_exec(db, "SELECT pgcorral.add_job('noop') FROM generate_series(1, 50)");
    jt_exec(db, "SELECT pgcorral.add_job('sleep', '{\"ms\": 200}')");
    jt_exec(db, "SELECT pgcorral.add_job('fail', max_attempts => 3)");
    is_int(
        jh_wait_count(&h, db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome IS NULL", 0, 10000),
        0, "noop and sleep jobs finish");
    is_int(jh_wait_count(&h, db,
                         "SELECT count(*) FROM pgcorral.jobs WHERE task = 'fail' AND"
                         " outcome = 'failed' AND attempts = 3 AND"
                         " last_error = 'fail: always fails (attempt 3 of 3)'",
                         1, 10000),
           1, "fail fails each attempt and is kept as failed");

    /* Payloads that never get better are discarded at once, not retried 25 times. */
    jt_exec(db, "TRUNCATE pgcorral.jobs");
    jt_exec(db, "SELECT pgcorral.add_job('order.create', '{\"total_cents\": 5}')");
    jt_exec(db, "SELECT pgcorral.add_job('sleep', '{\"ms\": \"long\"}')");
    jt_exec(db, "SELECT pgcorral.add_job('discard')");
    is_int(jh_wait_count(&h, db,
                         "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed' AND"
                         " attempts = 1 AND max_attempts = 25 AND finished_at IS NOT NULL",
                         3, 5000),
           3,
           "order.create without retailer_id, sleep with a bad ms and discard are failed "
           "after 1 attempt of 25");
    r = PQexec(db, "SELECT last_error FROM pgcorral.jobs WHERE task = 'order.create'");
    is_str(PQntuples(r) ? PQgetvalue(r, 0, 0) : "(none)",
           "order.create: payload needs an integer \"retailer_id\"",
           "with the handler's message as last_error");
    PQclear(r);

    /* snooze {"s": 1}: scheduled a second without an attempt counted, then done. */
    long long t0 = pgt_now_ms();
    jt_exec(db, "SELECT pgcorral.add_job('snooze', '{\"s\": 1}')");
    is_int(jh_wait_count(&h, db,
                         "SELECT count(*) FROM pgcorral.jobs j WHERE task = 'snooze' AND"
                         " pgcorral.job_state(j) = 'scheduled' AND attempts = 0",
                         1, 5000),
           1, "snooze runs once, then is scheduled with its attempt given back");
    is_int(
        jh_wait_count(&h, db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 'snooze'", 0, 5000),
        0, "and runs again, done");
    long long dt = pgt_now_ms() - t0;
    ok(dt >= 1000 && dt < 3000, "about 1 s later (%lld ms after the enqueue)", dt);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM example.snoozed"), 0,
           "leaving no mark behind in example.snoozed");
    jh_done(&h);
    PQfinish(db);
    return done_testing();
}
