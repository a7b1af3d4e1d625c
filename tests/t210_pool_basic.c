/*
 * The pool against the real server: acquire, query with bound parameters, release; idle
 * reuse; the prepared-statement cache and pgbouncer mode; rollback on release; broken and
 * lost connections; pipelined batches; the blocking API on a thread; reaping, recycling,
 * holders in the stats block; closing.
 */
#include "tests/lib/pooltest.h"

/* The test's one loop, shared by every pool it creates. */
static uv_loop_t loop;

static void test_basic(void)
{
    struct rt_dburl *u = t_url("connection_limit=3");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq a;
    struct t_q q;
    struct rt_pool_state st;

    struct rt_conn *c = t_acquire(&loop, p, &a, "basic", 5000);
    ok(c != NULL, "acquire opens a connection (%s)", a.err.message);
    if (!c)
        bail("no connection");
    const char *vals[] = {"41", "it's; DROP TABLE x --"};
    PGresult *r = t_conn_query(&loop, c, &q, "SELECT $1::int + 1, $2::text", 2, vals);
    ok(r && PQntuples(r) == 1, "query with bound parameters returns a row (%s)", q.err.message);
    if (r) {
        is_str(PQgetvalue(r, 0, 0), "42", "the parameter was bound as a value");
        is_str(PQgetvalue(r, 0, 1), vals[1], "text parameters arrive verbatim (never spliced)");
    }
    PQclear(r);
    int pid = PQbackendPID(rt_conn_pg(c));
    rt_pool_release(c);
    rt_pool_state(p, &st);
    ok(st.idle == 1 && st.in_use == 0 && st.open == 1,
       "released connection is idle (open %d, idle %d, in use %d)", st.open, st.idle, st.in_use);

    /* Idle reuse: many sequential queries, one connection. */
    int same = 1;
    for (int i = 0; i < 50; i++) {
        long long v = t_ll(t_pool_query(&loop, p, &q, "loop", "SELECT pg_backend_pid()", 0, NULL));
        same &= v == pid;
    }
    ok(same, "50 sequential queries all ran on the same backend");
    is_int(T_COUNTER(p, connects), 1, "connects counter stays 1");
    ok(T_COUNTER(p, acquires) >= 51, "acquires counted (%lld)", T_COUNTER(p, acquires));
    ok(T_COUNTER(p, queries) >= 51, "queries counted (%lld)", T_COUNTER(p, queries));
    ok(atomic_load(&rt_pool_stats_block(p)->hists.query.count) >= 51, "query histogram filled");

    /* SQL error: not transient, SQLSTATE kept, connection still usable. */
    r = t_pool_query(&loop, p, &q, "err", "SELECT 1/0", 0, NULL);
    ok(!r && q.err.code == RT_ESQL, "division by zero fails with RT_ESQL");
    is_str(q.err.sqlstate, "22012", "SQLSTATE kept");
    ok(!q.err.transient, "a data error is not transient");
    is_int(t_ll(t_pool_query(&loop, p, &q, "after", "SELECT 5", 0, NULL)), 5,
           "the pool works after an error");
    is_int(T_COUNTER(p, connects), 1, "the error did not cost the connection");

    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static long long prepared_count(struct rt_conn *c)
{
    struct t_q q;
    return t_ll(t_conn_query(&loop, c, &q,
                             "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgc_%'",
                             0, NULL));
}

static void test_statement_cache(void)
{
    struct rt_dburl *u = t_url("connection_limit=1&statement_cache_size=2");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq a;
    struct t_q q;

    struct rt_conn *c = t_acquire(&loop, p, &a, "cache", 5000);
    if (!c)
        bail("no connection: %s", a.err.message);
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT 1", 0, NULL)), 1, "statement A");
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT 2", 0, NULL)), 2, "statement B");
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT 3", 0, NULL)), 3, "statement C evicts A");
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT 3", 0, NULL)), 3, "statement C again (hit)");
    /* The count query is a fourth statement: it evicts B. The server holds exactly 2. */
    is_int(prepared_count(c), 2, "server holds statement_cache_size prepared statements");
    /* A statement the server lost (DEALLOCATE ALL) is prepared again, transparently. */
    PQclear(t_conn_query(&loop, c, &q, "DEALLOCATE ALL", 0, NULL));
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT 3", 0, NULL)), 3,
           "a statement the server forgot is prepared again");
    rt_pool_release(c);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);

    u = t_url("connection_limit=1&pgbouncer=true");
    p = t_pool(&loop, u, NULL);
    c = t_acquire(&loop, p, &a, "bouncer", 5000);
    if (!c)
        bail("no connection: %s", a.err.message);
    const char *v[] = {"7"};
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT $1::int", 1, v)), 7, "pgbouncer mode query");
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT $1::int", 1, v)), 7, "pgbouncer mode again");
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT count(*) FROM pg_prepared_statements", 0, NULL)),
           0, "pgbouncer mode leaves no named prepared statement");
    rt_pool_release(c);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_release_states(PGconn *side)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq a;
    struct t_q q;
    struct rt_pool_state st;

    /* Released inside a transaction: rolled back before anyone else gets it. */
    struct rt_conn *c = t_acquire(&loop, p, &a, "tx", 5000);
    if (!c)
        bail("no connection: %s", a.err.message);
    PQclear(t_conn_query(&loop, c, &q, "BEGIN", 0, NULL));
    PQclear(t_conn_query(&loop, c, &q, "INSERT INTO t210 VALUES (1)", 0, NULL));
    ok(q.err.code == 0, "insert inside a transaction (%s)", q.err.message);
    rt_pool_release(c);
    c = t_acquire(&loop, p, &a, "after-tx", 5000);
    ok(c && PQtransactionStatus(rt_conn_pg(c)) == PQTRANS_IDLE,
       "next holder gets the connection outside any transaction");
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT count(*) FROM t210", 0, NULL)), 0,
           "the abandoned transaction was rolled back");
    is_int(T_COUNTER(p, connects), 1, "rollback kept the connection");

    /* The server kills it while held: the query fails transient, the pool replaces it. */
    char kill[128];
    snprintf(kill, sizeof kill, "SELECT pg_terminate_backend(%d)", PQbackendPID(rt_conn_pg(c)));
    pgt_query_ll(side, kill);
    PGresult *r = t_conn_query(&loop, c, &q, "SELECT 1", 0, NULL);
    ok(!r && q.err.code == RT_ECONN_LOST, "query on a killed connection: connection lost (%d %s)",
       q.err.code, q.err.message);
    ok(q.err.transient, "connection lost is transient (sqlstate %s)", q.err.sqlstate);
    PQclear(r);
    rt_pool_release(c);
    rt_pool_state(p, &st);
    is_int(st.open, 0, "the broken connection was closed on release");
    is_int(t_ll(t_pool_query(&loop, p, &q, "again", "SELECT 9", 0, NULL)), 9,
           "the next acquire works");
    is_int(T_COUNTER(p, connects), 2, "with a new connection");

    /* An idle connection killed by the server is noticed by the loop, without a query. */
    c = t_acquire(&loop, p, &a, "pid", 5000);
    snprintf(kill, sizeof kill, "SELECT pg_terminate_backend(%d)", PQbackendPID(rt_conn_pg(c)));
    rt_pool_release(c);
    pgt_query_ll(side, kill);
    bool gone = false;
    for (int i = 0; i < 100 && !gone; i++) {
        t_run_for(&loop, 20);
        rt_pool_state(p, &st);
        gone = st.open == 0;
    }
    ok(gone, "an idle connection the server closed leaves the pool by itself");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* The batch under test and what its callback reported. */
static struct rt_batch_item items[4];
static bool batch_done;
static int batch_failed;
static void batch_cb(struct rt_batch *b, int failed)
{
    batch_done = true;
    batch_failed = failed;
}

static void test_batch(void)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq a;
    struct t_q q;
    struct rt_batch b;

    struct rt_conn *c = t_acquire(&loop, p, &a, "batch", 5000);
    if (!c)
        bail("no connection: %s", a.err.message);
    const char *v1[] = {"10"}, *v2[] = {"11"};
    items[0] = (struct rt_batch_item){"INSERT INTO t210 VALUES ($1)", 1, v1, NULL, {0}};
    items[1] = (struct rt_batch_item){"INSERT INTO t210 VALUES ($1)", 1, v2, NULL, {0}};
    items[2] =
        (struct rt_batch_item){"SELECT count(*) FROM t210 WHERE id >= 10", 0, NULL, NULL, {0}};
    memset(&b, 0, sizeof b);
    int rc = rt_conn_batch(c, &b, items, 3, 0, batch_cb);
    is_int(rc, 0, "batch sent");
    ok(t_run_until(&loop, &batch_done, 5000), "batch finished");
    is_int(batch_failed, 0, "no item failed");
    is_int(t_ll(items[2].res), 2, "the batch's statements ran in order in one round trip");
    PQclear(items[0].res);
    PQclear(items[1].res);

    /* Independent items: one failure does not abort the others. */
    items[0] = (struct rt_batch_item){"SELECT 1/0", 0, NULL, NULL, {0}};
    items[1] = (struct rt_batch_item){"SELECT 2", 0, NULL, NULL, {0}};
    batch_done = false;
    rc = rt_conn_batch(c, &b, items, 2, RT_BATCH_INDEPENDENT, batch_cb);
    ok(rc == 0 && t_run_until(&loop, &batch_done, 5000), "independent batch finished");
    is_int(batch_failed, 1, "one item failed");
    is_str(items[0].err.sqlstate, "22012", "the failing item has its SQLSTATE");
    is_int(t_ll(items[1].res), 2, "the next item still ran");

    /* Default: a failure aborts the rest of the batch. */
    items[0] = (struct rt_batch_item){"SELECT 1/0", 0, NULL, NULL, {0}};
    items[1] = (struct rt_batch_item){"SELECT 2", 0, NULL, NULL, {0}};
    batch_done = false;
    rc = rt_conn_batch(c, &b, items, 2, 0, batch_cb);
    ok(rc == 0 && t_run_until(&loop, &batch_done, 5000), "batch with an error finished");
    is_int(batch_failed, 2, "the error aborted the following item");
    ok(items[1].res == NULL && items[1].err.code != 0, "aborted item has an error");
    is_int(t_ll(t_conn_query(&loop, c, &q, "SELECT 3", 0, NULL)), 3,
           "the connection works normally after a batch");
    rt_pool_release(c);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

struct blk {
    struct rt_blocking b;
    bool done;
    long long value;
    int rc;
    unsigned long thread;
    struct rt_error err;
};

static void blk_fn(struct rt_blocking *req, struct rt_conn *conn)
{
    struct blk *k = req->data;
    PGresult *r = NULL;
    const char *v[] = {"20"};
    k->thread = (unsigned long)uv_thread_self();
    k->rc = rt_conn_exec_params(conn, "SELECT $1::int + 1", 1, v, &r, &k->err);
    k->value = k->rc == 0 ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
}

static void blk_done(struct rt_blocking *req, const struct rt_error *err)
{
    struct blk *k = req->data;
    k->done = true;
    if (err)
        k->err = *err;
}

static void test_blocking(void)
{
    struct rt_dburl *u = t_url("connection_limit=2");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct blk k[3];
    struct rt_pool_state st;

    for (int i = 0; i < 3; i++) {
        memset(&k[i], 0, sizeof k[i]);
        k[i].b.data = &k[i];
        if (rt_pool_run_blocking(p, &k[i].b, "job 7", blk_fn, blk_done) != 0)
            bail("run_blocking refused");
    }
    bool all = false;
    for (int i = 0; i < 500 && !all; i++) {
        t_run_for(&loop, 10);
        all = k[0].done && k[1].done && k[2].done;
    }
    ok(all, "three blocking jobs on a pool of two all finished");
    for (int i = 0; i < 3; i++)
        ok(k[i].rc == 0 && k[i].value == 21, "job %d ran its statement on a thread (%s)", i,
           k[i].err.message);
    ok(k[0].thread != (unsigned long)uv_thread_self(), "the job ran on another thread");
    rt_pool_state(p, &st);
    ok(st.open <= 2 && st.in_use == 0, "connections came back (open %d, in use %d)", st.open,
       st.in_use);
    struct t_q q;
    is_int(t_ll(t_pool_query(&loop, p, &q, "x", "SELECT 4", 0, NULL)), 4,
           "a connection back from a thread works on the loop");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_reaping(void)
{
    struct rt_dburl *u = t_url("connection_limit=2");
    struct rt_pool_opts o;
    struct rt_pool_state st;
    struct t_q q;

    /* Idle reaping. */
    rt_pool_opts_init(&o);
    o.max_idle_ms = 100;
    struct rt_pool *p = t_pool(&loop, u, &o);
    is_int(t_ll(t_pool_query(&loop, p, &q, "x", "SELECT 1", 0, NULL)), 1, "query");
    rt_pool_state(p, &st);
    is_int(st.idle, 1, "one idle connection");
    t_run_for(&loop, 400);
    rt_pool_state(p, &st);
    is_int(st.open, 0, "idle connection reaped after max_idle_time");
    ok(t_pool_close(&loop, p), "pool closes");

    /* Recycling after max_lifetime. */
    rt_pool_opts_init(&o);
    o.max_lifetime_ms = 150;
    p = t_pool(&loop, u, &o);
    long long pid1 = t_ll(t_pool_query(&loop, p, &q, "x", "SELECT pg_backend_pid()", 0, NULL));
    long long pid2 = t_ll(t_pool_query(&loop, p, &q, "x", "SELECT pg_backend_pid()", 0, NULL));
    is_int(pid2, pid1, "young connection reused");
    t_run_for(&loop, 300);
    long long pid3 = t_ll(t_pool_query(&loop, p, &q, "x", "SELECT pg_backend_pid()", 0, NULL));
    ok(pid3 > 0 && pid3 != pid1, "connection recycled after max_lifetime");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_holders_and_close(void)
{
    struct rt_dburl *u = t_url("connection_limit=2");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq a, b;
    struct shm_worker *w = rt_pool_stats_block(p);

    struct rt_conn *c1 = t_acquire(&loop, p, &a, "GET /api/v1/orders/:id", 5000);
    struct rt_conn *c2 = t_acquire(&loop, p, &b, "job 42", 5000);
    if (!c1 || !c2)
        bail("no connections");
    int found = 0;
    for (int i = 0; i < SHM_MAX_HOLDERS; i++)
        if (atomic_load(&w->holders[i].since_us) != 0 &&
            (!strcmp(w->holders[i].label, "GET /api/v1/orders/:id") ||
             !strcmp(w->holders[i].label, "job 42")))
            found++;
    is_int(found, 2, "both holders are in the stats block with their labels");
    is_int(atomic_load(&w->pool_in_use), 2, "in-use gauge");
    rt_pool_release(c1);
    rt_pool_release(c2);
    found = 0;
    for (int i = 0; i < SHM_MAX_HOLDERS; i++)
        found += atomic_load(&w->holders[i].since_us) != 0;
    is_int(found, 0, "released connections have no holder");
    is_int(atomic_load(&w->pool_idle), 2, "idle gauge");

    /* Closing with a connection still held: it closes when released. */
    c1 = t_acquire(&loop, p, &a, "late", 5000);
    bool closed = false;
    rt_pool_close(p, t_closed_cb, &closed);
    t_run_for(&loop, 50);
    ok(!closed, "close waits for the held connection");
    struct t_acq z;
    memset(&z, 0, sizeof z);
    z.req.data = &z;
    is_int(rt_pool_acquire(p, &z.req, "z", t_acq_cb), RT_EPOOL_CLOSED,
           "acquire on a closing pool is refused");
    rt_pool_release(c1);
    ok(t_run_until(&loop, &closed, 5000), "pool closed after the last release");
    rt_dburl_destroy(u);
}

int main(void)
{
    tap_timeout(60);
    PGconn *side = pgt_connect();
    PQclear(PQexec(side, "SET client_min_messages = warning"));
    PQclear(PQexec(side, "DROP TABLE IF EXISTS t210; CREATE TABLE t210 (id int)"));
    rt_log_set_level(RT_LOG_ERROR);
    uv_loop_init(&loop);

    test_basic();
    test_statement_cache();
    test_release_states(side);
    test_batch();
    test_blocking();
    test_reaping();
    test_holders_and_close();

    uv_run(&loop, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop), 0, "every handle was closed");
    PQclear(PQexec(side, "DROP TABLE t210"));
    PQfinish(side);
    return done_testing();
}
