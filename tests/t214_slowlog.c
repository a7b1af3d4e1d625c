/*
 * The slow-query log and the leak warning, as a user reads them: JSON lines on stderr
 * (captured through a pipe, parsed with jansson), the shm slow-query ring and counters.
 */
#include "tests/lib/pooltest.h"

/* The test's one loop, shared by every pool it creates. */
static uv_loop_t loop;
static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void test_slow_log(struct shm_segment *seg)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool_opts o;
    struct t_q q;

    rt_pool_opts_init(&o);
    o.seg = seg;
    o.worker_index = 0;
    o.token = shm_token(0, 1);
    o.slow_query_ms = 500;
    struct rt_pool *p = t_pool(&loop, u, &o);
    const char *vals[] = {"hello"};

    is_int(t_ll(t_pool_query(&loop, p, &q, "warm", "SELECT 1", 0, NULL)), 1, "connection ready");
    t_capture_begin();
    PGresult *r =
        t_pool_query(&loop, p, &q, "GET /slow", "SELECT pg_sleep(0.6)::text || $1::text", 1, vals);
    PQclear(r);
    PQclear(t_pool_query(&loop, p, &q, "GET /fast", "SELECT 2", 0, NULL));
    json_t *lines = t_capture_end("Slow query detected");
    ok(r != NULL, "slow query ran");
    is_int(json_array_size(lines), 1, "exactly one slow-query line (none for the fast query)");
    json_t *l = json_array_get(lines, 0);
    if (l) {
        is_str(jstr(l, "level"), "warn", "level warn");
        is_str(jstr(l, "message"), "Slow query detected", "message");
        is_str(jstr(l, "query"), "SELECT pg_sleep(0.6)::text || $1::text", "query text");
        const char *d = jstr(l, "duration");
        int ms = atoi(d);
        ok(ms >= 600 && ms < 2000 && !strcmp(d + strspn(d, "0123456789"), "ms"),
           "duration like \"1250ms\" (%s)", d);
        json_t *params = json_object_get(l, "params");
        ok(json_is_array(params) && json_array_size(params) == 1 &&
               !strcmp(json_string_value(json_array_get(params, 0)), "hello"),
           "params as an array");
        ok(strlen(jstr(l, "timestamp")) >= 20, "timestamp (%s)", jstr(l, "timestamp"));
        ok(json_integer_value(json_object_get(l, "pid")) == getpid(), "pid");
        is_str(jstr(l, "role"), "web", "role");
        is_int(json_integer_value(json_object_get(l, "worker")), 0, "worker");
    }
    json_decref(lines);
    struct shm_worker *w = rt_pool_stats_block(p);
    is_int(atomic_load(&w->counters.slow_queries), 1, "slow_queries counted in shm");
    struct shm_slow_entry e[4];
    int n = shm_slow_read(seg, e, 4);
    is_int(n, 1, "one entry in the shm slow-query ring");
    if (n == 1) {
        is_str(e[0].query, "SELECT pg_sleep(0.6)::text || $1::text", "ring: query text");
        ok(e[0].duration_us >= 600000, "ring: duration %llu us",
           (unsigned long long)e[0].duration_us);
        is_int(e[0].pid, getpid(), "ring: pid");
        is_int(e[0].role, SHM_ROLE_WEB, "ring: role");
    }
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

struct blk {
    struct rt_blocking b;
    bool done;
};
static void blk_fn(struct rt_blocking *req, struct rt_conn *c)
{
    struct rt_error err;
    const char *v[] = {"top secret"};
    PGresult *r = NULL;
    if (rt_conn_exec_params(c, "SELECT $1::text AS a_rather_long_column_name", 1, v, &r, &err))
        fprintf(stderr, "blocking query failed: %s\n", err.message);
    PQclear(r);
}
static void blk_done(struct rt_blocking *req, const struct rt_error *err)
{
    ((struct blk *)req->data)->done = true;
}

static void test_redact_truncate(void)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool_opts o;
    struct blk k;

    rt_pool_opts_init(&o);
    o.slow_query_ms = 0; /* everything is slow */
    o.redact_params = true;
    o.slow_query_max_len = 20;
    struct rt_pool *p = t_pool(&loop, u, &o);
    memset(&k, 0, sizeof k);
    k.b.data = &k;
    t_capture_begin();
    if (rt_pool_run_blocking(p, &k.b, "job 1", blk_fn, blk_done) != 0)
        bail("run_blocking");
    bool done = t_run_until(&loop, &k.done, 5000);
    json_t *lines = t_capture_end("Slow query detected");
    ok(done, "blocking query ran");
    is_int(json_array_size(lines), 1, "the blocking path is slow-logged too");
    json_t *l = json_array_get(lines, 0);
    if (l) {
        is_str(jstr(l, "query"), "SELECT $1::text AS a", "query truncated to max length");
        json_t *params = json_object_get(l, "params");
        ok(json_array_size(params) == 1 &&
               !strcmp(json_string_value(json_array_get(params, 0)), "***"),
           "params redacted as \"***\"");
        char *dump = json_dumps(l, 0);
        ok(dump && !strstr(dump, "top secret"), "the secret is nowhere in the line");
        free(dump);
    }
    json_decref(lines);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_leak_warning(void)
{
    struct rt_dburl *u = t_url("connection_limit=1");
    struct rt_pool_opts o;
    struct t_acq a;

    rt_pool_opts_init(&o);
    o.leak_threshold_ms = 100;
    struct rt_pool *p = t_pool(&loop, u, &o);
    struct rt_conn *c = t_acquire(&loop, p, &a, "job 42", 5000);
    if (!c)
        bail("no connection: %s", a.err.message);
    t_capture_begin();
    t_run_for(&loop, 400);
    rt_pool_release(c);
    t_run_for(&loop, 150);
    json_t *lines = t_capture_end("Connection held longer than leak threshold");
    is_int(json_array_size(lines), 1, "one leak warning for a connection held too long");
    json_t *l = json_array_get(lines, 0);
    if (l) {
        is_str(jstr(l, "level"), "warn", "level warn");
        is_str(jstr(l, "holder"), "job 42", "names the holder's label");
        long long age = json_integer_value(json_object_get(l, "age_ms"));
        ok(age >= 100 && age < 400, "with its age (%lld ms)", age);
    }
    json_decref(lines);

    /* Held shorter than the threshold: no warning. */
    c = t_acquire(&loop, p, &a, "quick", 5000);
    t_capture_begin();
    t_run_for(&loop, 30);
    rt_pool_release(c);
    t_run_for(&loop, 250);
    lines = t_capture_end("Connection held longer than leak threshold");
    is_int(json_array_size(lines), 0, "no warning for a short hold");
    json_decref(lines);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

int main(void)
{
    struct shm_segment *seg;

    tap_timeout(60);
    uv_loop_init(&loop);
    if (shm_create(&seg, 4) != 0)
        bail("shm_create");
    atomic_store(&seg->workers[0].role, SHM_ROLE_WEB);
    rt_log_set_identity("web", 0);
    rt_log_set_level(RT_LOG_WARN);
    test_slow_log(seg);
    test_redact_truncate();
    test_leak_warning();
    uv_run(&loop, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop), 0, "every handle was closed");
    shm_destroy(seg);
    return done_testing();
}
