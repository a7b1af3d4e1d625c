/*
 * Retry: which errors are transient, the backoff delays, and transactions retried whole
 * on the real conditions: a deadlock (40P01), a serialization failure (40001) under
 * SERIALIZABLE, a connection killed mid-transaction, too many connections (53300, a role's
 * connection limit); a unique violation (23505) is not retried; a server restart
 * mid-query is a transient "connection lost" and the pool recovers.
 */
#include <pthread.h>

#include "tests/lib/pooltest.h"

/* The test's one loop, shared by every pool it creates. */
static uv_loop_t loop;

static void test_classification(void)
{
    const char *transient[] = {"08000", "08006", "08P01", "40001", "40P01",
                               "53300", "57P01", "57P02", "57P03", "25006"};
    const char *fatal[] = {"23505", "42601", "22012", "42P01", "28P01", "40002", "53200", "", NULL};
    for (size_t i = 0; i < sizeof transient / sizeof *transient; i++)
        ok(rt_sqlstate_is_transient(transient[i]), "%s is transient", transient[i]);
    for (size_t i = 0; i < sizeof fatal / sizeof *fatal; i++)
        ok(!rt_sqlstate_is_transient(fatal[i]), "%s is not transient",
           fatal[i] ? fatal[i] : "NULL");
    struct rt_error e;
    rt_error_set(&e, RT_EPOOL_TIMEOUT, NULL, "x");
    ok(e.transient, "pool timeout is transient");
    rt_error_set(&e, RT_ECONNECT_TIMEOUT, NULL, "x");
    ok(e.transient, "connect timeout is transient");
    rt_error_set(&e, RT_ECONN_LOST, NULL, "x");
    ok(e.transient, "connection lost is transient");
    rt_error_set(&e, RT_ESQL, "23505", "dup");
    ok(!e.transient && !strcmp(e.sqlstate, "23505"), "23505 kept, not transient");

    struct rt_retry_policy p = RT_RETRY_DEFAULT;
    is_int(rt_retry_delay_ms(&p, 0), 1000, "default first delay 1 s");
    is_int(rt_retry_delay_ms(&p, 1), 2000, "then 2 s");
    is_int(rt_retry_delay_ms(&p, 2), 4000, "then 4 s");
    is_int(p.max_retries, 3, "3 retries by default");
    p.jitter = 0.5;
    int lo = 100000, hi = 0;
    for (int i = 0; i < 200; i++) {
        int d = rt_retry_delay_ms(&p, 1);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    ok(lo >= 1000 && hi <= 2000 && lo < hi, "jitter 0.5 spreads the 2 s delay over 1..2 s (%d..%d)",
       lo, hi);
}

struct flaky {
    int calls, fail_times;
    const char *state;
};

static int flaky_fn(void *arg, struct rt_error *err)
{
    struct flaky *f = arg;
    if (f->calls++ < f->fail_times)
        return rt_error_set(err, RT_ESQL, f->state, "flaky");
    return 0;
}

static void test_rt_retry(void)
{
    struct rt_retry_policy p = {3, 10, 2.0, 0.0};
    struct rt_error err;
    struct flaky f = {0, 2, "40001"};
    long long t0 = pgt_now_ms();
    is_int(rt_retry(&p, flaky_fn, &f, &err), 0, "transient failures are retried until success");
    long long took = pgt_now_ms() - t0;
    is_int(f.calls, 3, "two failures, one success");
    ok(took >= 30 && took < 500, "backoff 10 ms + 20 ms (%lld ms)", took);
    f = (struct flaky){0, 10, "40P01"};
    is_int(rt_retry(&p, flaky_fn, &f, &err), RT_ESQL, "gives up after max_retries");
    is_int(f.calls, 4, "1 attempt + 3 retries");
    f = (struct flaky){0, 10, "23505"};
    is_int(rt_retry(&p, flaky_fn, &f, &err), RT_ESQL, "a constraint violation fails");
    is_int(f.calls, 1, "at once, without retry");
}

/* ---- transactions on threads ---- */

/* Holds both transactions of a conflict at the point where they collide (first attempt). */
static pthread_barrier_t barrier;

struct txjob {
    struct rt_blocking b;
    bool done;
    int rc, attempts, mine, other;
    char seen[6]; /* a SQLSTATE fn saw */
    struct rt_error err;
    const char *begin;
    rt_tx_fn fn;
};

static int deadlock_fn(struct rt_conn *c, void *arg, struct rt_error *err)
{
    struct txjob *j = arg;
    char a[16], b[16];
    const char *va[] = {a}, *vb[] = {b};
    int rc;
    snprintf(a, sizeof a, "%d", j->mine);
    snprintf(b, sizeof b, "%d", j->other);
    j->attempts++;
    rc = rt_conn_exec_params(c, "SET LOCAL deadlock_timeout = '50ms'", 0, NULL, NULL, err);
    if (rc == 0)
        rc = rt_conn_exec_params(c, "UPDATE t213 SET v = v + 1 WHERE id = $1", 1, va, NULL, err);
    if (j->attempts == 1)
        pthread_barrier_wait(&barrier); /* both hold their first row */
    if (rc == 0)
        rc = rt_conn_exec_params(c, "UPDATE t213 SET v = v + 1 WHERE id = $1", 1, vb, NULL, err);
    if (rc)
        memcpy(j->seen, err->sqlstate, 6);
    return rc;
}

static int serial_fn(struct rt_conn *c, void *arg, struct rt_error *err)
{
    struct txjob *j = arg;
    char a[16], b[16];
    const char *va[] = {a}, *vb[] = {b};
    PGresult *r = NULL;
    int rc;
    snprintf(a, sizeof a, "%d", j->mine);
    snprintf(b, sizeof b, "%d", j->other);
    j->attempts++;
    rc = rt_conn_exec_params(c, "SELECT count(*) FROM t213s WHERE k = $1", 1, va, &r, err);
    PQclear(r);
    if (j->attempts == 1)
        pthread_barrier_wait(&barrier); /* both read before either writes: write skew */
    if (rc == 0)
        rc = rt_conn_exec_params(c, "INSERT INTO t213s VALUES ($1)", 1, vb, NULL, err);
    if (rc)
        memcpy(j->seen, err->sqlstate, 6);
    return rc;
}

static int unique_fn(struct rt_conn *c, void *arg, struct rt_error *err)
{
    struct txjob *j = arg;
    j->attempts++;
    return rt_conn_exec_params(c, "INSERT INTO t213 VALUES (1, 0)", 0, NULL, NULL, err);
}

/* First attempt: the server kills our session mid-transaction. */
static int killed_fn(struct rt_conn *c, void *arg, struct rt_error *err)
{
    struct txjob *j = arg;
    j->attempts++;
    if (j->attempts == 1) {
        int rc = rt_conn_exec_params(c, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL,
                                     NULL, err);
        if (rc)
            memcpy(j->seen, err->sqlstate, 6);
        return rc ? rc : rt_error_set(err, -EIO, NULL, "survived its own termination");
    }
    return rt_conn_exec_params(c, "UPDATE t213 SET v = v + 1 WHERE id = 1", 0, NULL, NULL, err);
}

static void tx_thread(struct rt_blocking *req, struct rt_conn *c)
{
    struct txjob *j = req->data;
    struct rt_retry_policy p = {3, 10, 2.0, 0.0};
    j->rc = rt_tx(c, j->begin, j->fn, j, &p, &j->err);
}

static void tx_done(struct rt_blocking *req, const struct rt_error *err)
{
    struct txjob *j = req->data;
    j->done = true;
    if (err) {
        j->rc = err->code;
        j->err = *err;
    }
}

static void run_jobs(struct rt_pool *p, struct txjob *jobs, int n)
{
    for (int i = 0; i < n; i++) {
        jobs[i].b.data = &jobs[i];
        if (rt_pool_run_blocking(p, &jobs[i].b, "tx", tx_thread, tx_done) != 0)
            bail("run_blocking refused");
    }
    for (int i = 0; i < 1000; i++) {
        bool all = true;
        for (int k = 0; k < n; k++)
            all &= jobs[k].done;
        if (all)
            return;
        t_run_for(&loop, 10);
    }
    bail("transaction jobs did not finish");
}

static void test_transactions(PGconn *side)
{
    struct rt_dburl *u = t_url("connection_limit=2");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct txjob j[2];

    /* Deadlock. */
    memset(j, 0, sizeof j);
    j[0].mine = 1, j[0].other = 2, j[0].fn = deadlock_fn;
    j[1].mine = 2, j[1].other = 1, j[1].fn = deadlock_fn;
    pthread_barrier_init(&barrier, NULL, 2);
    long long retries0 = T_COUNTER(p, retries);
    run_jobs(p, j, 2);
    ok(j[0].rc == 0 && j[1].rc == 0, "both deadlocked transactions committed in the end (%s / %s)",
       j[0].err.message, j[1].err.message);
    ok(!strcmp(j[0].seen, "40P01") || !strcmp(j[1].seen, "40P01"),
       "one of them hit a real deadlock (40P01)");
    is_int(j[0].attempts + j[1].attempts, 3, "the loser was retried once, whole");
    is_int(T_COUNTER(p, retries) - retries0, 1, "retries counted");
    is_int(pgt_query_ll(side, "SELECT sum(v) FROM t213"), 4, "every update applied exactly once");
    pthread_barrier_destroy(&barrier);

    /* Serialization failure. */
    memset(j, 0, sizeof j);
    j[0].mine = 1, j[0].other = 2, j[0].fn = serial_fn;
    j[1].mine = 2, j[1].other = 1, j[1].fn = serial_fn;
    j[0].begin = j[1].begin = "BEGIN ISOLATION LEVEL SERIALIZABLE";
    pthread_barrier_init(&barrier, NULL, 2);
    /* The failure comes inside fn or at COMMIT, whichever runs second: read rt_tx's log. */
    rt_log_set_level(RT_LOG_INFO);
    t_capture_begin();
    run_jobs(p, j, 2);
    json_t *lines = t_capture_end("Retrying transaction");
    rt_log_set_level(RT_LOG_ERROR);
    ok(j[0].rc == 0 && j[1].rc == 0,
       "both serializable transactions committed in the end (%s / %s)", j[0].err.message,
       j[1].err.message);
    json_t *l = json_array_get(lines, 0);
    const char *st = l ? json_string_value(json_object_get(l, "sqlstate")) : NULL;
    ok(json_array_size(lines) == 1 && st && !strcmp(st, "40001"),
       "one of them hit a real serialization failure (40001) and was retried (%s)",
       st ? st : "no retry logged");
    json_decref(lines);
    is_int(j[0].attempts + j[1].attempts, 3, "the loser was retried once");
    is_int(pgt_query_ll(side, "SELECT count(*) FROM t213s"), 2, "both rows are there");
    pthread_barrier_destroy(&barrier);

    /* Unique violation: not retried. */
    memset(j, 0, sizeof j);
    j[0].fn = unique_fn;
    run_jobs(p, j, 1);
    is_int(j[0].rc, RT_ESQL, "unique violation fails the transaction");
    is_str(j[0].err.sqlstate, "23505", "with its SQLSTATE");
    ok(!j[0].err.transient, "not transient");
    is_int(j[0].attempts, 1, "and is not retried");

    /* Killed mid-transaction: transient, the connection is reset, the retry commits. */
    memset(j, 0, sizeof j);
    j[0].fn = killed_fn;
    long long connects0 = T_COUNTER(p, connects);
    run_jobs(p, j, 1);
    ok(j[0].seen[0] && rt_sqlstate_is_transient(j[0].seen),
       "the killed session's error is transient (%s)", j[0].seen);
    is_int(j[0].rc, 0, "the transaction committed on a reset connection (%s)", j[0].err.message);
    is_int(j[0].attempts, 2, "after one retry");
    is_int(T_COUNTER(p, connects) - connects0, 1, "the reset counts as a connect");
    struct t_q q;
    is_int(t_ll(t_pool_query(&loop, p, &q, "x", "SELECT v FROM t213 WHERE id = 1", 0, NULL)), 3,
           "the pool goes on with the reset connection");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_too_many_connections(PGconn *side)
{
    PQclear(PQexec(side, "DROP ROLE IF EXISTS t213_limited"));
    PQclear(PQexec(side, "CREATE ROLE t213_limited LOGIN CONNECTION LIMIT 1"));
    struct rt_dburl *u = t_url("connection_limit=2");
    if (rt_dburl_set(u, "user", "t213_limited") != 0)
        bail("rt_dburl_set");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq a, b;
    struct rt_conn *c = t_acquire(&loop, p, &a, "one", 5000);
    ok(c != NULL, "first connection of the limited role (%s)", a.err.message);
    t_acquire(&loop, p, &b, "two", 5000);
    ok(!b.conn && b.err.code == RT_ECONNECT, "second connection refused by the server (%s)",
       b.err.message);
    is_str(b.err.sqlstate, "53300", "too_many_connections (53300) from the server");
    ok(b.err.transient, "53300 is transient");
    if (c)
        rt_pool_release(c);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
    PQclear(PQexec(side, "DROP ROLE t213_limited"));
}

/* pg_ctl restart: finished, and its exit status. */
static bool restarted;
static int64_t restart_status = -1;
static void restart_exit(uv_process_t *proc, int64_t status, int sig)
{
    restarted = true;
    restart_status = status;
    uv_close((uv_handle_t *)proc, NULL);
}

/* The pg_ctl restart child. */
static uv_process_t restart_proc;
static void restart_timer(uv_timer_t *t)
{
    static char data[600], pgctl[600];
    snprintf(data, sizeof data, "%s/data", getenv("PGC_TEST_PGDIR"));
    snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", getenv("PGC_TEST_PGBIN"));
    char *args[] = {"runuser", "-u", "postgres", "--", pgctl, "-D", data,
                    "restart", "-m", "fast",     "-w", "-t",  "30", NULL};
    uv_stdio_container_t io[3] = {{.flags = UV_IGNORE}, {.flags = UV_IGNORE}, {.flags = UV_IGNORE}};
    uv_process_options_t o = {
        .exit_cb = restart_exit, .file = "runuser", .args = args, .stdio_count = 3, .stdio = io};
    int rc = uv_spawn(t->loop, &restart_proc, &o);
    if (rc)
        bail("cannot start pg_ctl restart: %s", uv_strerror(rc));
    uv_close((uv_handle_t *)t, NULL);
}

static void test_restart(void)
{
    if (!getenv("PGC_TEST_PGDIR") || !getenv("PGC_TEST_PGBIN"))
        bail("PGC_TEST_PGDIR / PGC_TEST_PGBIN not set: run through scripts/with-test-pg.sh");
    struct rt_dburl *u = t_url("connection_limit=2");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq a, b;
    struct t_q q;
    struct rt_pool_state st;

    struct rt_conn *c1 = t_acquire(&loop, p, &a, "sleeper", 5000);
    struct rt_conn *c2 = t_acquire(&loop, p, &b, "idle", 5000);
    if (!c1 || !c2)
        bail("no connections");
    rt_pool_release(c2); /* one idle connection through the restart */
    memset(&q, 0, sizeof q);
    q.q.data = &q;
    if (rt_conn_query(c1, &q.q, "SELECT pg_sleep(20)", 0, NULL, t_q_cb) != 0)
        bail("query refused");
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, restart_timer, 300, 0);
    ok(t_run_until(&loop, &q.done, 30000), "the query in flight ended");
    ok(q.res == NULL, "with an error");
    is_int(q.err.code, RT_ECONN_LOST, "connection lost (%s, %s)", q.err.sqlstate, q.err.message);
    ok(q.err.transient, "transient");
    ok(t_run_until(&loop, &restarted, 30000) && restart_status == 0, "pg_ctl restart finished");
    rt_pool_release(c1);
    rt_pool_state(p, &st);
    is_int(st.open, 0, "both connections left the pool (the idle one too)");
    is_int(t_ll(t_pool_query(&loop, p, &q, "after", "SELECT 42", 0, NULL)), 42,
           "the next acquire works against the restarted server");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

int main(void)
{
    tap_timeout(90);
    rt_log_set_level(RT_LOG_ERROR);
    uv_loop_init(&loop);
    test_classification();
    test_rt_retry();

    PGconn *side = pgt_connect();
    PQclear(PQexec(side, "SET client_min_messages = warning"));
    PQclear(PQexec(side, "DROP TABLE IF EXISTS t213, t213s; "
                         "CREATE TABLE t213 (id int PRIMARY KEY, v int); "
                         "INSERT INTO t213 VALUES (1, 0), (2, 0); CREATE TABLE t213s (k int)"));
    test_transactions(side);
    test_too_many_connections(side);
    PQclear(PQexec(side, "DROP TABLE t213, t213s"));
    PQfinish(side);
    test_restart();

    uv_run(&loop, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop), 0, "every handle was closed");
    return done_testing();
}
