/*
 * Timeouts a user sees: pool_timeout fires on time with an error that describes the pool
 * (limit, in use, idle, waiting, holders and their ages); connect_timeout fires against a
 * loopback socket that listens but never answers; waiters are served in FIFO order.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "tests/lib/pooltest.h"

/* The test's one loop, shared by every pool it creates. */
static uv_loop_t loop;

static void test_pool_timeout(void)
{
    struct rt_dburl *u = t_url("connection_limit=1&pool_timeout=1");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq held, w;

    struct rt_conn *c = t_acquire(&loop, p, &held, "GET /api/v1/health", 5000);
    if (!c)
        bail("no connection: %s", held.err.message);
    long long t0 = pgt_now_ms();
    struct rt_conn *c2 = t_acquire(&loop, p, &w, "job 42", 5000);
    long long waited = (long long)w.t_ms - t0;
    ok(c2 == NULL, "second acquire on a full pool fails");
    is_int(w.err.code, RT_EPOOL_TIMEOUT, "with RT_EPOOL_TIMEOUT");
    ok(w.err.transient, "pool timeout is transient");
    ok(waited >= 990 && waited < 2500, "after pool_timeout (1 s): %lld ms", waited);
    diag("message: %s", w.err.message);
    ok(strstr(w.err.message, "pool timeout after 1000 ms") != NULL, "message names the timeout");
    ok(strstr(w.err.message, "primary: limit 1, in use 1, idle 0, waiting 1") != NULL,
       "message carries the pool's state");
    ok(strstr(w.err.message, "holders: GET /api/v1/health 1.") != NULL,
       "message names the holder and its age");
    is_int(T_COUNTER(p, timeouts), 1, "timeouts counted");
    rt_pool_release(c);
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_fifo(void)
{
    struct rt_dburl *u = t_url("connection_limit=1&pool_timeout=5");
    struct rt_pool *p = t_pool(&loop, u, NULL);
    struct t_acq held, a, b, c;
    struct rt_pool_state st;

    struct rt_conn *conn = t_acquire(&loop, p, &held, "first", 5000);
    if (!conn)
        bail("no connection: %s", held.err.message);
    t_acquire_start(p, &a, "a");
    t_acquire_start(p, &b, "b");
    t_acquire_start(p, &c, "c");
    t_run_for(&loop, 20);
    rt_pool_state(p, &st);
    is_int(st.waiting, 3, "three waiters");
    is_int(atomic_load(&rt_pool_stats_block(p)->pool_waiting), 3, "waiting gauge");
    is_int(rt_pool_acquire_cancel(&b.req), 0, "a waiter can cancel");
    is_int(rt_pool_acquire_cancel(&b.req), -ENOENT, "cancel twice: -ENOENT");
    rt_pool_release(conn);
    ok(a.done && a.conn && !c.done, "the oldest waiter gets the released connection");
    rt_pool_release(a.conn);
    ok(c.done && c.conn, "then the next one");
    ok(!b.done, "the cancelled waiter is never called");
    rt_pool_release(c.conn);
    is_int(T_COUNTER(p, connects), 1, "one connection served everyone");
    ok(atomic_load(&rt_pool_stats_block(p)->hists.acquire_wait.count) >= 3,
       "acquire waits recorded");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
}

static void test_connect_timeout(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char extra[256], err[256];
    struct rt_dburl *u;
    struct shm_segment *seg;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 8) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        bail("cannot open the silent listener: %s", strerror(errno));
    /* The kernel completes the handshake; nobody ever answers the startup packet. */
    snprintf(extra, sizeof extra,
             "postgresql://nobody@127.0.0.1:%d/db?connect_timeout=1&sslmode=disable",
             ntohs(sa.sin_port));
    if (rt_dburl_parse(extra, &u, err, sizeof err) != 0)
        bail("url: %s", err);
    if (shm_create(&seg, 4) != 0)
        bail("shm_create");
    struct rt_pool_opts o;
    rt_pool_opts_init(&o);
    o.seg = seg;
    o.worker_index = 0;
    o.token = shm_token(0, 1);
    struct rt_pool *p = t_pool(&loop, u, &o);
    struct t_acq a;

    long long t0 = pgt_now_ms();
    t_acquire_start(p, &a, "connect");
    t_run_for(&loop, 100);
    is_int(shm_budget_in_use(seg), 1, "the connect attempt holds a budget slot");
    if (!t_run_until(&loop, &a.done, 5000))
        bail("connect did not time out");
    long long took = (long long)a.t_ms - t0;
    ok(a.conn == NULL, "acquire fails");
    is_int(a.err.code, RT_ECONNECT_TIMEOUT, "with RT_ECONNECT_TIMEOUT");
    ok(a.err.transient, "connect timeout is transient");
    ok(took >= 990 && took < 2500, "after connect_timeout (1 s): %lld ms", took);
    diag("message: %s", a.err.message);
    ok(strstr(a.err.message, "connect timeout after 1000 ms") != NULL, "message names it");
    ok(strstr(a.err.message, "127.0.0.1") != NULL, "message names the host");
    is_int(shm_budget_in_use(seg), 0, "the budget slot was freed after the failure");
    is_int(T_COUNTER(p, connect_errors), 1, "connect errors counted");
    ok(t_pool_close(&loop, p), "pool closes");
    close(fd);
    rt_dburl_destroy(u);

    /* Refused outright: fails at once with a transient connect error, slot freed. */
    snprintf(extra, sizeof extra, "postgresql://nobody@127.0.0.1:%d/db?sslmode=disable",
             ntohs(sa.sin_port));
    if (rt_dburl_parse(extra, &u, err, sizeof err) != 0)
        bail("url: %s", err);
    p = t_pool(&loop, u, &o);
    t0 = pgt_now_ms();
    t_acquire(&loop, p, &a, "refused", 5000);
    ok(!a.conn && a.err.code == RT_ECONNECT, "connection refused: RT_ECONNECT (%s)", a.err.message);
    ok(a.err.transient, "connection refused is transient (sqlstate %s)", a.err.sqlstate);
    ok((long long)a.t_ms - t0 < 500, "and fails at once");
    is_int(shm_budget_in_use(seg), 0, "slot freed");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
    shm_destroy(seg);
}

int main(void)
{
    tap_timeout(60);
    rt_log_set_level(RT_LOG_ERROR);
    uv_loop_init(&loop);
    test_connect_timeout();
    test_pool_timeout();
    test_fifo();
    uv_run(&loop, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop), 0, "every handle was closed");
    return done_testing();
}
