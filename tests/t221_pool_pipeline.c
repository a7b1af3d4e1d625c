/*
 * Auto-pipelining against the real server (issue 14): statements of concurrent callers
 * share a busy connection and come back in order; a failing statement fails alone; 40001
 * and 40P01 are retried alone; a connection killed mid-pipeline has exactly its statements
 * retried, none run twice; a slow statement does not hold up statements that come after
 * the stall bound; pool_timeout still bounds the wait; the pool never opens more than its
 * limit; held connections and non-eligible statements are never pipelined.
 */
#include "runtime/rt_metrics.h"
#include "tests/lib/pooltest.h"

/* The test's one loop. */
static uv_loop_t loop;
/* Order in which query callbacks ran. */
static int seq;

struct pq {
    struct rt_query q;
    bool done;
    int order;
    long long val; /* first column, -1 = none */
    struct rt_error err;
    long long t_ms;
    const char *vals[2];
    char buf[32];
};

static void pq_cb(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct pq *t = q->data;
    t->done = true;
    t->order = ++seq;
    t->t_ms = pgt_now_ms();
    t->val = -1;
    if (err)
        t->err = *err;
    else
        memset(&t->err, 0, sizeof t->err);
    if (res && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        t->val = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
}

static void pq_start(struct rt_pool *p, struct pq *t, const char *sql, int n, const char *v)
{
    memset(t, 0, sizeof *t);
    t->q.data = t;
    if (v)
        snprintf(t->buf, sizeof t->buf, "%s", v);
    t->vals[0] = t->buf;
    if (rt_pool_query(p, &t->q, "t221", sql, n, n ? t->vals : NULL, pq_cb) != 0)
        bail("rt_pool_query refused");
}

static bool all_done_flag;
static bool pq_all_done(struct pq *ts, int n)
{
    for (int i = 0; i < n; i++)
        if (!ts[i].done)
            return false;
    return true;
}

/* Runs the loop until every query in ts finished (bounded). */
static void pq_wait(struct pq *ts, int n, int timeout_ms)
{
    long long end = pgt_now_ms() + timeout_ms;
    while (!pq_all_done(ts, n) && pgt_now_ms() < end)
        t_run_for(&loop, 5);
    if (!pq_all_done(ts, n))
        bail("queries did not finish within %d ms", timeout_ms);
}

static void side_exec(PGconn *side, const char *sql)
{
    PGresult *r = PQexec(side, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        bail("%s: %s", sql, PQerrorMessage(side));
    PQclear(r);
}

/* Eight callers at once on one connection: one round trip, results in order. */
static void test_shared(void)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct pq t[8];
    char v[8];
    bool ordered = true, right = true;

    is_int(u->pipeline_depth, 8, "pipeline_depth defaults to 8");
    for (int i = 0; i < 8; i++) {
        snprintf(v, sizeof v, "%d", i * 10);
        pq_start(p, &t[i], "SELECT $1::int", 1, v);
    }
    pq_wait(t, 8, 10000);
    for (int i = 0; i < 8; i++) {
        right = right && t[i].err.code == 0 && t[i].val == i * 10;
        ordered = ordered && (i == 0 || t[i].order == t[i - 1].order + 1);
    }
    ok(right, "every caller got its own result");
    ok(ordered, "results came back in order");
    is_int(T_COUNTER(p, pipelined), 7, "seven statements shared the busy connection");
    struct shm_worker *w = rt_pool_stats_block(p);
    is_int(atomic_load(&w->hists.pipe_depth.count), 8, "depth at send recorded per statement");
    ok(atomic_load(&w->hists.pipe_depth.sum_us) == 36, "depths 1..8 at send (sum %llu)",
       (unsigned long long)atomic_load(&w->hists.pipe_depth.sum_us));
    is_int(T_COUNTER(p, connects), 1, "on one connection");
    is_int(atomic_load(&w->pool_pipe_depth), 0, "depth gauge back to 0");
    is_int(atomic_load(&w->pool_pipes), 0, "no pipelining connection left");
    struct rt_pool_state st;
    rt_pool_state(p, &st);
    is_int(st.idle, 1, "the connection is idle again");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);

    /* pipeline_depth=0: the same load, one statement per connection at a time. */
    u = t_url("connection_limit=1&pipeline_depth=0");
    p = t_pool(&loop, u, NULL);
    for (int i = 0; i < 8; i++) {
        snprintf(v, sizeof v, "%d", i);
        pq_start(p, &t[i], "SELECT $1::int", 1, v);
    }
    pq_wait(t, 8, 10000);
    right = true;
    for (int i = 0; i < 8; i++)
        right = right && t[i].err.code == 0 && t[i].val == i;
    ok(right, "pipeline_depth=0: every statement ran");
    is_int(T_COUNTER(p, pipelined), 0, "pipeline_depth=0: nothing pipelined");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* A failing statement between two good ones: only it fails. */
static void test_error_isolated(void)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct pq t[3];

    pq_start(p, &t[0], "SELECT 1", 0, NULL);
    pq_start(p, &t[1], "SELECT 1/0", 0, NULL);
    pq_start(p, &t[2], "SELECT 3", 0, NULL);
    pq_wait(t, 3, 10000);
    ok(t[0].err.code == 0 && t[0].val == 1, "the statement before the failure succeeds");
    is_int(t[1].err.code, RT_ESQL, "the failing statement fails");
    is_str(t[1].err.sqlstate, "22012", "with its own SQLSTATE");
    ok(t[2].err.code == 0 && t[2].val == 3, "the statement after the failure succeeds");
    is_int(T_COUNTER(p, pipelined), 2, "all three shared the connection");
    /* The cached statements still work afterwards (a failed PREPARE is forgotten). */
    pq_start(p, &t[0], "SELEC 1", 0, NULL);
    pq_start(p, &t[1], "SELECT 5", 0, NULL);
    pq_wait(t, 2, 10000);
    is_str(t[0].err.sqlstate, "42601", "a syntax error fails alone");
    ok(t[1].err.code == 0 && t[1].val == 5, "its neighbour succeeds");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* 40001 / 40P01 in a pipelined statement: that statement alone runs again. */
static void test_retry_alone(PGconn *side, const char *code)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct pq t[3];
    char sql[256];

    side_exec(side, "CREATE SEQUENCE IF NOT EXISTS t221_seq; ALTER SEQUENCE t221_seq RESTART;"
                    "TRUNCATE t221_log");
    snprintf(sql, sizeof sql, "SELECT t221_flaky('%s')", code);
    pq_start(p, &t[0], "INSERT INTO t221_log VALUES ('a') RETURNING 1", 0, NULL);
    pq_start(p, &t[1], sql, 0, NULL);
    pq_start(p, &t[2], "INSERT INTO t221_log VALUES ('b') RETURNING 2", 0, NULL);
    pq_wait(t, 3, 15000);
    ok(t[0].err.code == 0 && t[2].err.code == 0, "%s: the neighbours succeed", code);
    ok(t[1].err.code == 0 && t[1].val == 2, "%s: the statement succeeds on its retry (%s)", code,
       t[1].err.message);
    is_int(T_COUNTER(p, retries), 1, "%s: one retry", code);
    is_int(pgt_query_ll(side, "SELECT count(*) FROM t221_log WHERE k = 'a'"), 1,
           "%s: the neighbour before ran once", code);
    is_int(pgt_query_ll(side, "SELECT count(*) FROM t221_log WHERE k = 'b'"), 1,
           "%s: the neighbour after ran once", code);
    ok(T_COUNTER(p, pipelined) >= 2, "%s: they were pipelined", code);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* The backend dies while a pipeline is in flight: those statements, and only those, run
 * again on a new connection; none that had succeeded runs twice. */
static void test_killed_mid_pipeline(PGconn *side)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct pq pre[2], t[7];
    char sql[128];
    bool all_ok = true;

    side_exec(side, "TRUNCATE t221_log");
    pq_start(p, &pre[0], "SELECT pg_backend_pid()", 0, NULL);
    pq_start(p, &pre[1], "INSERT INTO t221_log VALUES ('before') RETURNING 1", 0, NULL);
    pq_wait(pre, 2, 10000);
    long long pid = pre[0].val;
    ok(pid > 0 && pre[1].err.code == 0, "a first pipeline ran (backend %lld)", pid);

    pq_start(p, &t[0], "SELECT pg_sleep(0.5)::text || pg_backend_pid()", 0, NULL);
    for (int i = 1; i < 7; i++) {
        char v[8];
        snprintf(v, sizeof v, "k%d", i);
        pq_start(p, &t[i], "INSERT INTO t221_log VALUES ($1) RETURNING 1", 1, v);
    }
    t_run_for(&loop, 100); /* sent; the backend sleeps */
    ok(!t[0].done && !t[6].done, "the pipeline is in flight");
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)::int", pid);
    is_int(pgt_query_ll(side, sql), 1, "the backend is terminated");
    pq_wait(t, 7, 15000);
    for (int i = 0; i < 7; i++)
        all_ok = all_ok && t[i].err.code == 0;
    ok(all_ok, "every statement of the killed pipeline succeeded on a retry");
    is_int(T_COUNTER(p, retries), 7, "exactly the seven in flight were retried");
    is_int(T_COUNTER(p, connects), 2, "on a new connection");
    is_int(pgt_query_ll(side, "SELECT count(*) FROM t221_log WHERE k = 'before'"), 1,
           "the statement that had succeeded did not run again");
    is_int(pgt_query_ll(side, "SELECT count(*) FROM t221_log WHERE k LIKE 'k%'"), 6,
           "each retried insert ran once");
    is_int(pgt_query_ll(side, "SELECT count(DISTINCT k) FROM t221_log WHERE k LIKE 'k%'"), 6,
           "no insert twice");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* Runs the loop until the server runs a pg_sleep (a backend waits in PgSleep), then past
 * the stall bound: a loaded machine may take longer than any fixed time to connect and
 * send it. */
static void run_until_sleeping(PGconn *side)
{
    long long t0 = pgt_now_ms();
    while (pgt_query_ll(side, "SELECT count(*) FROM pg_stat_activity"
                              " WHERE wait_event = 'PgSleep'") < 1 &&
           pgt_now_ms() - t0 < 10000)
        t_run_for(&loop, 10);
    t_run_for(&loop, 2 * RT_PIPELINE_STALL_MS);
}

/* A 2 s statement: what comes after the stall bound goes to the other connection and is
 * not held up; nothing is queued behind it once it is past the bound. */
static void test_slow_neighbour(PGconn *side)
{
    struct rt_dburl *u = t_url("connection_limit=2");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct pq slow, t[24];

    pq_start(p, &slow, "SELECT pg_sleep(2)", 0, NULL);
    run_until_sleeping(side);
    long long t0 = pgt_now_ms();
    for (int i = 0; i < 24; i++)
        pq_start(p, &t[i], "SELECT 7", 0, NULL);
    pq_wait(t, 24, 10000);
    long long worst = 0;
    bool right = true;
    for (int i = 0; i < 24; i++) {
        right = right && t[i].err.code == 0 && t[i].val == 7;
        if (t[i].t_ms - t0 > worst)
            worst = t[i].t_ms - t0;
    }
    ok(right, "the neighbours succeed");
    ok(!slow.done, "while the slow statement still runs");
    ok(worst < 1000, "none waited for the 2 s statement (slowest %lld ms)", worst);
    ok(T_COUNTER(p, pipelined) >= 16, "they were pipelined on the other connection (%lld)",
       T_COUNTER(p, pipelined));
    pq_wait(&slow, 1, 5000);
    ok(slow.err.code == 0, "the slow statement finishes too");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);

    /* One connection, busy past the bound: a new statement is not queued behind it. */
    u = t_url("connection_limit=1&pool_timeout=1");
    p = t_pool(&loop, u, NULL);
    pq_start(p, &slow, "SELECT pg_sleep(3)", 0, NULL);
    run_until_sleeping(side);
    t0 = pgt_now_ms();
    pq_start(p, &t[0], "SELECT 1", 0, NULL);
    pq_wait(t, 1, 5000);
    is_int(t[0].err.code, RT_EPOOL_TIMEOUT, "it waits instead, and pool_timeout bounds the wait");
    ok(t[0].t_ms - t0 >= 990 && t[0].t_ms - t0 < 2000, "after 1 s (%lld ms)", t[0].t_ms - t0);
    is_int(T_COUNTER(p, pipelined), 0, "nothing was queued behind the slow statement");
    pq_wait(&slow, 1, 5000);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* Heavy load: never more than the limit, in the pool or on the server. */
static void test_limit(void)
{
    struct rt_dburl *u = t_url("connection_limit=3&application_name=t221_limit");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    enum { N = 300 };
    static struct pq t[N];
    long long most = 0;
    bool right = true;

    for (int i = 0; i < N; i++)
        pq_start(p, &t[i],
                 "SELECT count(*) FROM pg_stat_activity WHERE application_name = 't221_limit'", 0,
                 NULL);
    pq_wait(t, N, 20000);
    for (int i = 0; i < N; i++) {
        right = right && t[i].err.code == 0;
        if (t[i].val > most)
            most = t[i].val;
    }
    ok(right, "%d statements succeeded", N);
    ok(most >= 1 && most <= 3, "pg_stat_activity never showed more than 3 (%lld)", most);
    ok(T_COUNTER(p, connects) <= 3, "3 connections at most (%lld)", T_COUNTER(p, connects));
    ok(T_COUNTER(p, pipelined) > N / 2, "most were pipelined (%lld)", T_COUNTER(p, pipelined));
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* What `ctl pools` (the pools JSON) and GET /metrics show of the pipelining that just
 * happened on seg's workers: pipelined statements (total), the depth at send. */
static void check_observability(const struct shm_segment *seg, long long pipelined)
{
    json_t *pools = rt_pools_json(seg);
    json_t *pl = json_object_get(json_object_get(pools, "total"), "pipeline");
    json_t *w0 = json_object_get(json_array_get(json_object_get(pools, "workers"), 0), "pipeline");
    json_t *ds = json_object_get(pl, "depth_at_send");
    is_int(json_integer_value(json_object_get(pl, "pipelined")), pipelined,
           "pools JSON: total pipeline.pipelined counts every pipelined statement");
    ok(json_integer_value(json_object_get(pl, "sent")) > pipelined,
       "pools JSON: pipeline.sent counts every pipelined send");
    /* The quantiles are log2 bucket bounds; the mean is exact. */
    long long mean = json_integer_value(json_object_get(ds, "mean_x100"));
    ok(mean > 100 && mean <= 800 && json_integer_value(json_object_get(ds, "p99")) >= 2,
       "pools JSON: depth_at_send mean above 1 and at most pipeline_depth (%.2f)",
       (double)mean / 100);
    ok(json_is_integer(json_object_get(pl, "connections")) &&
           json_is_integer(json_object_get(pl, "depth")) && json_is_object(w0),
       "pools JSON: connections and depth gauges, per worker too");
    json_decref(pools);

    char *text = NULL, line[128];
    size_t len;
    ok(rt_metrics_render(seg, &text, &len) == 0, "/metrics renders");
    snprintf(line, sizeof line, "\npgcorral_pipelined_total %lld\n", pipelined);
    ok(text && strstr(text, line), "/metrics: pgcorral_pipelined_total %lld", pipelined);
    ok(text && strstr(text, "\npgcorral_pool_pipeline_depth{") &&
           strstr(text, "\npgcorral_pool_pipelining_connections{"),
       "/metrics: the depth and pipelining-connections gauges, per worker");
    ok(text && strstr(text, "\npgcorral_pipeline_depth_at_send_count "),
       "/metrics: the depth-at-send histogram");
    free(text);
}

/* Two pools (two workers) under a global budget B = 3, smaller than their limits: both
 * pipeline, and neither the budget nor pg_stat_activity ever shows more than B. */
static void test_budget(void)
{
    struct shm_segment *seg;
    enum { N = 200 };
    static struct pq t[2][N];
    struct rt_pool *p[2];
    long long most = 0, slots = 0;
    bool right = true;

    if (shm_create(&seg, 3) != 0)
        bail("shm_create");
    struct rt_dburl *u = t_url("connection_limit=3&application_name=t221_budget");
    for (int w = 0; w < 2; w++) {
        struct rt_pool_opts o;
        rt_pool_opts_init(&o);
        o.seg = seg;
        o.worker_index = w;
        o.token = shm_token((uint32_t)w, 1);
        p[w] = t_pool(&loop, u, &o);
        /* Serving, as a worker would say: the pools JSON and /metrics show live workers. */
        atomic_store(&seg->workers[w].state, SHM_STATE_READY);
    }
    for (int i = 0; i < N; i++)
        for (int w = 0; w < 2; w++)
            pq_start(p[w], &t[w][i],
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name = 't221_budget'",
                     0, NULL);
    long long end = pgt_now_ms() + 20000;
    while ((!pq_all_done(t[0], N) || !pq_all_done(t[1], N)) && pgt_now_ms() < end) {
        uv_run(&loop, UV_RUN_ONCE);
        if ((long long)shm_budget_in_use(seg) > slots)
            slots = (long long)shm_budget_in_use(seg);
    }
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < N; i++) {
            right = right && t[w][i].done && t[w][i].err.code == 0;
            if (t[w][i].val > most)
                most = t[w][i].val;
        }
    ok(right, "%d statements on two pools succeeded", 2 * N);
    ok(most >= 1 && most <= 3, "pg_stat_activity never showed more than B = 3 (%lld)", most);
    ok(slots <= 3, "budget slots in use never above B (%lld)", slots);
    ok(T_COUNTER(p[0], pipelined) + T_COUNTER(p[1], pipelined) > N,
       "the statements were pipelined (%lld + %lld)", T_COUNTER(p[0], pipelined),
       T_COUNTER(p[1], pipelined));
    check_observability(seg, T_COUNTER(p[0], pipelined) + T_COUNTER(p[1], pipelined));
    ok(t_pool_close(&loop, p[0]) && t_pool_close(&loop, p[1]), "pools close");
    is_int(shm_budget_in_use(seg), 0, "every slot was freed");
    rt_dburl_destroy(u);
    shm_destroy(seg);
}

/* A held connection takes nobody else's statements; transaction control is not pipelined;
 * a caller that gives up does not disturb its neighbours. */
static void test_never(void)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq held;
    struct pq t[3];

    struct rt_conn *c = t_acquire(&loop, p, &held, "holder", 5000);
    if (!c)
        bail("no connection");
    pq_start(p, &t[0], "SELECT 1", 0, NULL);
    t_run_for(&loop, 50);
    ok(!t[0].done, "a statement does not join a held connection");
    rt_pool_release(c);
    pq_wait(t, 1, 5000);
    ok(t[0].err.code == 0, "it runs once the connection is back");

    pq_start(p, &t[0], "SELECT pg_sleep(0.2)", 0, NULL);
    pq_start(p, &t[1], "BEGIN", 0, NULL);
    pq_start(p, &t[2], "SELECT 2", 0, NULL);
    pq_wait(t, 3, 5000);
    ok(t[1].order < t[2].order, "BEGIN waited for the whole connection, FIFO");
    is_int(T_COUNTER(p, pipelined), 0, "neither BEGIN nor what waits behind it was pipelined");

    /* Cancel one sent statement: its neighbours still get their results. */
    pq_start(p, &t[0], "SELECT pg_sleep(0.2)::text || '1'", 0, NULL);
    pq_start(p, &t[1], "SELECT 41", 0, NULL);
    pq_start(p, &t[2], "SELECT 42", 0, NULL);
    t_run_for(&loop, 30);
    is_int(rt_query_cancel(&t[1].q, "gave up"), 0, "a pipelined statement can be cancelled");
    is_int(t[1].err.code, RT_ECANCELED, "its caller hears at once");
    pq_wait(t, 3, 5000);
    ok(t[0].err.code == 0 && t[2].err.code == 0 && t[2].val == 42,
       "the neighbours are not disturbed");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

/* A callback cancels the last statement still waiting on its connection: the connection is
 * closed once the callback returned, and the pool goes on. */
static struct pq *cancel_target;
static void pq_cancel_cb(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    pq_cb(q, res, err);
    if (cancel_target)
        (void)rt_query_cancel(&cancel_target->q, "gave up from a callback");
    cancel_target = NULL;
}

static void test_cancel_in_callback(void)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct pq t[2];
    struct rt_pool_state st;

    memset(t, 0, sizeof t);
    t[0].q.data = &t[0];
    t[1].q.data = &t[1];
    cancel_target = &t[1];
    if (rt_pool_query(p, &t[0].q, "t221", "SELECT 1", 0, NULL, pq_cancel_cb) != 0 ||
        rt_pool_query(p, &t[1].q, "t221", "SELECT pg_sleep(0.3)", 0, NULL, pq_cb) != 0)
        bail("rt_pool_query refused");
    pq_wait(t, 2, 5000);
    ok(t[0].err.code == 0 && t[0].val == 1, "the first statement succeeds");
    is_int(t[1].err.code, RT_ECANCELED, "its callback cancelled the second");
    t_run_for(&loop, 20);
    rt_pool_state(p, &st);
    is_int(st.open, 0, "the connection the cancelled statement ran on is closed");
    pq_start(p, &t[0], "SELECT 9", 0, NULL);
    pq_wait(t, 1, 5000);
    ok(t[0].err.code == 0 && t[0].val == 9, "the pool goes on");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_url(void)
{
    char err[256];
    struct rt_dburl *u = NULL;
    char url[1024];

    snprintf(url, sizeof url, "%s%spgbouncer=true", pgt_db_url(),
             strchr(pgt_db_url(), '?') ? "&" : "?");
    ok(rt_dburl_parse(url, &u, err, sizeof err) == 0 && u->pipeline_depth == 0,
       "pgbouncer=true turns pipelining off");
    rt_dburl_destroy(u);
    u = NULL;
    snprintf(url, sizeof url, "%s%spgbouncer=true&pipeline_depth=4", pgt_db_url(),
             strchr(pgt_db_url(), '?') ? "&" : "?");
    ok(rt_dburl_parse(url, &u, err, sizeof err) != 0 &&
           strstr(err, "pipeline_depth=4 cannot be used with pgbouncer=true"),
       "pgbouncer=true with an explicit pipeline_depth is refused (t222)");
    rt_dburl_destroy(u);
    u = NULL;
    snprintf(url, sizeof url, "%s%spipeline_depth=65", pgt_db_url(),
             strchr(pgt_db_url(), '?') ? "&" : "?");
    ok(rt_dburl_parse(url, &u, err, sizeof err) == RT_EINVAL_URL, "pipeline_depth above 64: %s",
       err);
    rt_dburl_destroy(u);
}

int main(void)
{
    tap_timeout(120);
    rt_log_set_level(RT_LOG_ERROR);
    uv_loop_init(&loop);
    (void)all_done_flag;
    PGconn *side = pgt_connect();
    side_exec(side, "CREATE TABLE IF NOT EXISTS t221_log (k text)");
    side_exec(side, "CREATE SEQUENCE IF NOT EXISTS t221_seq");
    side_exec(side, "CREATE OR REPLACE FUNCTION t221_flaky(code text) RETURNS int "
                    "LANGUAGE plpgsql AS $$ DECLARE v int := nextval('t221_seq'::text); BEGIN "
                    "IF v = 1 THEN RAISE EXCEPTION 'flaky %', code USING ERRCODE = code; END IF; "
                    "RETURN v; END $$");
    test_url();
    test_shared();
    test_error_isolated();
    test_retry_alone(side, "40001");
    test_retry_alone(side, "40P01");
    test_killed_mid_pipeline(side);
    test_slow_neighbour(side);
    test_limit();
    test_budget();
    test_never();
    test_cancel_in_callback();
    PQfinish(side);
    uv_run(&loop, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop), 0, "every handle was closed");
    return done_testing();
}
