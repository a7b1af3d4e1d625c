/*
 * Read routing to DATABASE_REPLICA_URL: reads run on the replica when it works (here: the
 * same test server under another application_name); when it refuses connections, never
 * answers, or is missing, reads run on the primary with one warning per outage, not per
 * query; a probe read finds the replica back; a replica connection lost mid-read is
 * repeated on the primary.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "runtime/rt_read_pool.h"
#include "tests/lib/pooltest.h"

/* The test's one loop, shared by every pool it creates. */
static uv_loop_t loop;

#define MSG_DOWN "Read replica unreachable; reads fall back to the primary"
#define MSG_UP "Read replica reachable again; reads go back to it"

/* ---- helpers ------------------------------------------------------------------------- */

/* Lines of lines whose msg is msg (NULL: any) and level is level (NULL: any). */
static int count_lines(json_t *lines, const char *msg, const char *level)
{
    size_t i;
    json_t *j;
    int n = 0;

    json_array_foreach(lines, i, j)
    {
        const char *m = json_string_value(json_object_get(j, "msg"));
        const char *l = json_string_value(json_object_get(j, "level"));
        if ((!msg || (m && !strcmp(m, msg))) && (!level || (l && !strcmp(l, level))))
            n++;
    }
    return n;
}

/* The first line whose msg is msg, borrowed from lines; NULL when none. */
static json_t *find_line(json_t *lines, const char *msg)
{
    size_t i;
    json_t *j;

    json_array_foreach(lines, i, j)
    {
        const char *m = json_string_value(json_object_get(j, "msg"));
        if (m && !strcmp(m, msg))
            return j;
    }
    return NULL;
}

/* The test cluster's user name, from its URL (postgresql://USER@/...). */
static const char *db_user(void)
{
    static char user[64];
    const char *s = strstr(pgt_db_url(), "://");
    size_t n = s ? strcspn(s + 3, "@:/") : 0;
    if (!n || n >= sizeof user)
        bail("no user name in the test URL");
    memcpy(user, s + 3, n);
    user[n] = 0;
    return user;
}

/* Parses a URL; bails out when it does not parse. */
static struct rt_dburl *parse(const char *url)
{
    struct rt_dburl *u;
    char err[256];
    if (rt_dburl_parse_as("DATABASE_REPLICA_URL", url, &u, err, sizeof err) != 0)
        bail("cannot parse %s: %s", url, err);
    return u;
}

/* A router over primary and replica with a short probe wait; bails out on failure. */
static struct rt_read_router *router(struct rt_pool *primary, struct rt_pool *replica, int probe_ms)
{
    struct rt_read_opts o;
    struct rt_read_router *r;
    rt_read_opts_init(&o);
    o.probe_min_ms = probe_ms;
    o.probe_max_ms = probe_ms * 2;
    if (rt_read_router_create(&r, primary, replica, &o) != 0)
        bail("rt_read_router_create failed");
    return r;
}

/* ---- one read through each entry point, waiting for it ------------------------------- */

struct t_rq {
    struct rt_read_query rq;
    bool done;
    PGresult *res;
    struct rt_error err;
};

static void t_rq_cb(struct rt_read_query *rq, PGresult *res, const struct rt_error *err)
{
    struct t_rq *t = rq->data;
    t->done = true;
    t->res = res;
    if (err)
        t->err = *err;
}

/* Starts a read of application_name (which pool ran it) into t. */
static void read_start(struct rt_read_router *r, struct t_rq *t)
{
    memset(t, 0, sizeof *t);
    t->rq.data = t;
    if (rt_read_query(r, &t->rq, "t215 read", "SELECT current_setting('application_name')", 0, NULL,
                      t_rq_cb) != 0)
        bail("rt_read_query refused");
}

/* Which pool ran a finished read: its application_name, or "error: ..." (static buffer). */
static const char *read_result(struct t_rq *t)
{
    static char out[RT_ERROR_MSG_LEN + 16];
    if (t->res && PQntuples(t->res) == 1)
        snprintf(out, sizeof out, "%s", PQgetvalue(t->res, 0, 0));
    else
        snprintf(out, sizeof out, "error: %s", t->err.message);
    PQclear(t->res);
    t->res = NULL;
    return out;
}

/* One read through rt_read_query; returns the application_name that answered. */
static const char *read_one(struct rt_read_router *r)
{
    struct t_rq t;
    read_start(r, &t);
    if (!t_run_until(&loop, &t.done, 15000))
        bail("read did not finish");
    return read_result(&t);
}

struct t_racq {
    struct rt_read_acquire req;
    bool done;
    struct rt_conn *conn;
    struct rt_error err;
};

static void t_racq_cb(struct rt_read_acquire *req, struct rt_conn *conn, const struct rt_error *err)
{
    struct t_racq *t = req->data;
    t->done = true;
    t->conn = conn;
    if (err)
        t->err = *err;
}

/* One read acquire; returns the pool of the connection (released again), or NULL. */
static struct rt_pool *acquire_one(struct rt_read_router *r)
{
    struct t_racq t;
    memset(&t, 0, sizeof t);
    t.req.data = &t;
    if (rt_read_acquire(r, &t.req, "t215 acquire", t_racq_cb) != 0)
        bail("rt_read_acquire refused");
    if (!t_run_until(&loop, &t.done, 15000))
        bail("read acquire did not finish");
    if (!t.conn) {
        diag("read acquire failed: %s", t.err.message);
        return NULL;
    }
    struct rt_pool *p = rt_conn_pool(t.conn);
    rt_pool_release(t.conn);
    return p;
}

struct t_rblk {
    struct rt_read_blocking req;
    bool done, ran;
    char app[64];
    struct rt_error err;
};

/* Handler thread: reads application_name on the connection it was given. */
static void t_rblk_fn(struct rt_read_blocking *req, struct rt_conn *conn)
{
    struct t_rblk *t = req->data;
    struct rt_error err;
    PGresult *res = NULL;
    t->ran = true;
    if (rt_conn_exec_params(conn, "SELECT current_setting('application_name')", 0, NULL, &res,
                            &err) == 0 &&
        PQntuples(res) == 1)
        snprintf(t->app, sizeof t->app, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

static void t_rblk_done(struct rt_read_blocking *req, const struct rt_error *err)
{
    struct t_rblk *t = req->data;
    t->done = true;
    if (err)
        t->err = *err;
}

/* One blocking read on a thread; returns the application_name it saw ("" if fn did not
 * run). */
static const char *blocking_one(struct rt_read_router *r)
{
    static struct t_rblk t;
    memset(&t, 0, sizeof t);
    t.req.data = &t;
    if (rt_read_run_blocking(r, &t.req, "t215 blocking", t_rblk_fn, t_rblk_done) != 0)
        bail("rt_read_run_blocking refused");
    if (!t_run_until(&loop, &t.done, 15000))
        bail("blocking read did not finish");
    if (!t.ran)
        diag("blocking read did not run: %s", t.err.message);
    return t.app;
}

static struct rt_read_stats stats_of(const struct rt_read_router *r)
{
    struct rt_read_stats s;
    rt_read_router_stats(r, &s);
    return s;
}

/* ---- the replica works --------------------------------------------------------------- */

static bool backend_gone(void *arg)
{
    return pgt_query_ll(arg, "SELECT count(*) FROM pg_stat_activity "
                             "WHERE application_name = 't215_replica'") == 0;
}

static void test_replica_works(PGconn *side, struct rt_pool *primary)
{
    struct rt_dburl *ru = t_url("application_name=t215_replica&connection_limit=2");
    struct rt_pool_opts o;
    rt_pool_opts_init(&o);
    o.validate_after_ms = 600000; /* an idle connection is reused without a check */
    struct rt_pool *replica = t_pool(&loop, ru, &o);
    struct rt_read_router *r = router(primary, replica, 200);

    t_capture_begin();
    is_str(read_one(r), "t215_replica", "a read query runs on the replica");
    ok(acquire_one(r) == replica, "a read acquire gets a replica connection");
    is_str(blocking_one(r), "t215_replica", "blocking read-only work runs on the replica");
    struct rt_read_stats s = stats_of(r);
    ok(!s.replica_down && s.outages == 0 && s.fallbacks == 0,
       "no outage, no fallback (down %d, outages %llu, fallbacks %llu)", s.replica_down,
       (unsigned long long)s.outages, (unsigned long long)s.fallbacks);
    is_int(s.replica_reads, 3, "three replica reads counted");

    /* The replica's backend is killed while its connection sits idle in the pool: the
     * next read loses it mid-query and is repeated on the primary. */
    PQclear(PQexec(side, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 't215_replica'"));
    ok(pgt_wait_until(backend_gone, side, 5000), "the replica's backend is gone");
    is_str(read_one(r), "t215_primary",
           "a read whose replica connection was lost mid-query is repeated on the primary");
    s = stats_of(r);
    is_int(s.outages, 0, "a lost connection alone is no outage");
    is_int(s.fallbacks, 1, "the repeated read is counted as a fallback");
    is_str(read_one(r), "t215_replica", "the next read is on the replica again");
    json_t *lines = t_capture_end(NULL);
    is_int(count_lines(lines, MSG_DOWN, NULL), 0, "no outage warning while the replica works");
    json_decref(lines);

    ok(t_pool_close(&loop, replica), "replica pool closes");
    rt_read_router_destroy(r);
    rt_dburl_destroy(ru);

    /* Without a replica every read runs on the primary, and that is not a fallback. */
    r = router(primary, NULL, 200);
    is_str(read_one(r), "t215_primary", "without a replica, reads run on the primary");
    s = stats_of(r);
    is_int(s.fallbacks, 0, "which is not counted as a fallback");
    rt_read_router_destroy(r);
}

/* ---- the replica refuses connections ------------------------------------------------- */

static void test_refused(struct rt_pool *primary)
{
    char url[512];
    snprintf(url, sizeof url,
             "postgresql://%s@127.0.0.1:%d/postgres?application_name=t215_dead&"
             "connection_limit=4",
             db_user(), pgt_closed_port());
    struct rt_dburl *ru = parse(url);
    struct rt_pool *replica = t_pool(&loop, ru, NULL);
    /* A long probe wait: within this test no read tries the replica again. */
    struct rt_read_router *r = router(primary, replica, 60000);
    int good = 0;

    t_capture_begin();
    for (int i = 0; i < 20; i++)
        good += !strcmp(read_one(r), "t215_primary");
    is_int(good, 20, "20 sequential reads succeed on the primary while the replica refuses");

    /* Ten at once. */
    struct t_rq many[10];
    bool all_done;
    for (int i = 0; i < 10; i++)
        read_start(r, &many[i]);
    long long deadline = pgt_now_ms() + 15000;
    do {
        uv_run(&loop, UV_RUN_ONCE);
        all_done = true;
        for (int i = 0; i < 10; i++)
            all_done &= many[i].done;
    } while (!all_done && pgt_now_ms() < deadline);
    good = 0;
    for (int i = 0; i < 10; i++)
        good += many[i].done && !strcmp(read_result(&many[i]), "t215_primary");
    is_int(good, 10, "10 concurrent reads succeed on the primary");

    ok(acquire_one(r) == primary, "a read acquire falls back to a primary connection");
    is_str(blocking_one(r), "t215_primary", "blocking read-only work falls back to the primary");

    struct rt_read_stats s = stats_of(r);
    ok(s.replica_down, "the replica is marked down");
    is_int(s.outages, 1, "one outage");
    is_int(s.fallbacks, 32, "every read counted as a fallback");

    json_t *lines = t_capture_end(NULL);
    is_int(count_lines(lines, MSG_DOWN, "warn"), 1, "one warning for the outage, not per query");
    int warns = count_lines(lines, NULL, "warn");
    ok(warns <= 2, "32 reads during the outage wrote %d warn lines in all", warns);
    json_t *w = find_line(lines, MSG_DOWN);
    const char *rep = json_string_value(json_object_get(w, "replica"));
    ok(rep && strstr(rep, "127.0.0.1") != NULL, "the warning names the replica (%s)",
       rep ? rep : "none");
    const char *e = json_string_value(json_object_get(w, "error"));
    ok(e && *e, "and says why (%s)", e ? e : "none");
    json_decref(lines);

    ok(t_pool_close(&loop, replica), "replica pool closes");
    rt_read_router_destroy(r);
    rt_dburl_destroy(ru);
}

/* ---- the replica never answers ------------------------------------------------------- */

static void test_silent(struct rt_pool *primary)
{
    char url[512];
    int port, fd = pgt_silent_listener(&port);
    snprintf(url, sizeof url,
             "postgresql://%s@127.0.0.1:%d/postgres?application_name=t215_silent&"
             "connection_limit=2",
             db_user(), port);
    struct rt_dburl *ru = parse(url);
    struct rt_pool_opts o;
    rt_pool_opts_init(&o);
    o.connect_timeout_ms = 300;
    struct rt_pool *replica = t_pool(&loop, ru, &o);
    struct rt_read_router *r = router(primary, replica, 60000);

    t_capture_begin();
    long long t0 = pgt_now_ms();
    const char *app = read_one(r);
    long long took = pgt_now_ms() - t0;
    is_str(app, "t215_primary", "a read succeeds on the primary when the replica never answers");
    ok(took >= 290 && took < 3000, "after the replica's connect_timeout (300 ms): %lld ms", took);
    t0 = pgt_now_ms();
    int good = 0;
    for (int i = 0; i < 10; i++)
        good += !strcmp(read_one(r), "t215_primary");
    took = pgt_now_ms() - t0;
    is_int(good, 10, "10 more reads succeed");
    ok(took < 1000, "without waiting for the replica again: %lld ms for 10 reads", took);
    json_t *lines = t_capture_end(NULL);
    is_int(count_lines(lines, MSG_DOWN, "warn"), 1, "one outage warning");
    json_decref(lines);

    ok(t_pool_close(&loop, replica), "replica pool closes");
    rt_read_router_destroy(r);
    rt_dburl_destroy(ru);
    close(fd);
}

/* ---- the replica comes back ---------------------------------------------------------- */

static void test_recovery(void)
{
    const char *pgdir = getenv("PGC_TEST_PGDIR"), *pgport = getenv("PGC_TEST_PGPORT");
    char dir[128], url[512], sock[256], real[256];

    if (!pgdir || !pgport)
        bail("PGC_TEST_PGDIR / PGC_TEST_PGPORT not set: run through scripts/with-test-pg.sh");
    snprintf(dir, sizeof dir, "%s", pgt_tmp_path("replica"));
    if (mkdir(dir, 0755) < 0)
        bail("mkdir %s", dir);
    /* The replica's socket folder is empty: nothing to connect to, until the link. */
    snprintf(url, sizeof url,
             "postgresql://%s@/postgres?host=%s&port=%s&application_name=t215_back&"
             "connection_limit=2",
             db_user(), dir, pgport);
    snprintf(sock, sizeof sock, "%s/.s.PGSQL.%s", dir, pgport);
    snprintf(real, sizeof real, "%s/.s.PGSQL.%s", pgdir, pgport);
    struct rt_dburl *pu = t_url("application_name=t215_primary&connection_limit=2");
    struct rt_pool *primary = t_pool(&loop, pu, NULL);
    struct rt_dburl *ru = parse(url);
    struct rt_pool *replica = t_pool(&loop, ru, NULL);
    struct rt_read_router *r = router(primary, replica, 200);

    t_capture_begin();
    is_str(read_one(r), "t215_primary", "with the replica missing, a read runs on the primary");
    is_str(read_one(r), "t215_primary", "and the next one too, without trying the replica");
    t_run_for(&loop, 250);
    is_str(read_one(r), "t215_primary",
           "after the probe wait, a read probes the missing replica and still succeeds");
    struct rt_read_stats s = stats_of(r);
    ok(s.replica_down && s.outages == 1, "still one outage after a failed probe");

    if (symlink(real, sock) < 0)
        bail("symlink %s", sock);
    t_run_for(&loop, 450); /* the wait doubled after the failed probe */
    is_str(read_one(r), "t215_back", "once the replica is back, the probe read runs on it");
    is_str(read_one(r), "t215_back", "and so do the reads after it");
    s = stats_of(r);
    ok(!s.replica_down, "the outage is over");
    is_int(s.fallbacks, 3, "three reads fell back during the outage");
    json_t *lines = t_capture_end(NULL);
    is_int(count_lines(lines, MSG_DOWN, "warn"), 1, "one warning when it went away");
    is_int(count_lines(lines, MSG_UP, "info"), 1, "one info line when it came back");
    json_t *up = find_line(lines, MSG_UP);
    ok(json_integer_value(json_object_get(up, "outage_ms")) >= 600,
       "the line says how long the outage lasted (%lld ms)",
       (long long)json_integer_value(json_object_get(up, "outage_ms")));
    json_decref(lines);

    ok(t_pool_close(&loop, replica), "replica pool closes");
    ok(t_pool_close(&loop, primary), "primary pool closes");
    rt_read_router_destroy(r);
    rt_dburl_destroy(ru);
    rt_dburl_destroy(pu);
    unlink(sock);
    rmdir(dir);
}

int main(void)
{
    tap_timeout(60);
    PGconn *side = pgt_connect();
    if (uv_loop_init(&loop) != 0)
        bail("uv_loop_init");

    struct rt_dburl *pu = t_url("application_name=t215_primary&connection_limit=4");
    struct rt_pool *primary = t_pool(&loop, pu, NULL);

    test_replica_works(side, primary);
    test_refused(primary);
    test_silent(primary);
    ok(t_pool_close(&loop, primary), "primary pool closes");
    rt_dburl_destroy(pu);
    test_recovery();

    PQfinish(side);
    uv_loop_close(&loop);
    return done_testing();
}
