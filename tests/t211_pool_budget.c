/*
 * The global budget: pools never exceed their limit nor, together, the budget B of the
 * shm segment. Three forked processes (limit 4 each, B = 6) run bursts of concurrent
 * queries while the parent samples pg_stat_activity; in one process, a pool waiting for a
 * slot is woken through its eventfd when another worker's pool gives one back.
 */
#include <sys/wait.h>

#include "tests/lib/pooltest.h"

#define NPROC 3
#define LIMIT 4
#define BUDGET 6
#define ROUNDS 4
#define BURST 12

/* In a child: queries of the current burst that finished, and those that failed. */
static int child_done;
static int child_failed;
static void child_cb(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    child_done++;
    if (!res) {
        child_failed++;
        fprintf(stderr, "child query failed: %s\n", err ? err->message : "?");
    }
    PQclear(res);
}

/* One worker process: waits for the start signal, then runs bursts. Exit status = failed
 * queries, or 100+ when its pool went over its limit. */
static void child(struct shm_segment *seg, int index, int start_fd)
{
    uv_loop_t loop;
    char c;
    struct rt_query q[BURST];
    struct rt_pool_state st;
    int over = 0;

    uv_loop_init(&loop);
    rt_log_set_level(RT_LOG_ERROR);
    struct rt_dburl *u = t_url("connection_limit=4&pool_timeout=20&application_name=t211");
    struct rt_pool_opts o;
    rt_pool_opts_init(&o);
    o.seg = seg;
    o.worker_index = index;
    o.token = shm_token((uint32_t)index, 1);
    struct rt_pool *p = t_pool(&loop, u, &o);
    if (read(start_fd, &c, 1) < 0) {
    }
    for (int r = 0; r < ROUNDS; r++) {
        child_done = 0;
        /* Zeroed: request_id is an optional public field (NULL = none). */
        memset(q, 0, sizeof q);
        for (int i = 0; i < BURST; i++) {
            if (rt_pool_query(p, &q[i], "burst", "SELECT pg_sleep(0.1)", 0, NULL, child_cb) != 0)
                _exit(99);
        }
        while (child_done < BURST) {
            uv_run(&loop, UV_RUN_ONCE);
            rt_pool_state(p, &st);
            if (st.open > LIMIT)
                over = 1;
        }
    }
    if (!t_pool_close(&loop, p))
        _exit(98);
    _exit(over ? 100 + child_failed : child_failed);
}

static void test_processes(void)
{
    struct shm_segment *seg;
    int pipefd[2];
    pid_t pids[NPROC];
    PGconn *side = pgt_connect();

    if (shm_create(&seg, BUDGET) != 0)
        bail("shm_create");
    if (pipe(pipefd) < 0)
        bail("pipe");
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            bail("fork");
        if (pids[i] == 0) {
            close(pipefd[1]);
            child(seg, i, pipefd[0]);
        }
    }
    close(pipefd[0]);
    close(pipefd[1]); /* everyone starts at once */

    long long max_server = 0, max_slots = 0, samples = 0;
    int alive = NPROC, statuses[NPROC];
    long long deadline = pgt_now_ms() + 30000;
    while (alive > 0 && pgt_now_ms() < deadline) {
        long long n = pgt_query_ll(
            side, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 't211'");
        long long s = shm_budget_in_use(seg);
        if (n > max_server)
            max_server = n;
        if (s > max_slots)
            max_slots = s;
        samples++;
        for (int i = 0; i < NPROC; i++) {
            if (pids[i] > 0 && waitpid(pids[i], &statuses[i], WNOHANG) == pids[i]) {
                pids[i] = 0;
                alive--;
            }
        }
        usleep(2000);
    }
    ok(alive == 0, "all %d worker processes finished", NPROC);
    for (int i = 0; i < NPROC; i++) {
        int code = WIFEXITED(statuses[i]) ? WEXITSTATUS(statuses[i]) : -1;
        ok(code == 0, "worker %d: all %d queries succeeded, never over its limit (exit %d)", i,
           ROUNDS * BURST, code);
    }
    diag("%lld samples; max server connections %lld, max slots %lld", samples, max_server,
         max_slots);
    ok(max_server <= BUDGET, "the server never saw more than B = %d connections (max %lld)", BUDGET,
       max_server);
    ok(max_slots <= BUDGET, "never more than B slots reserved (max %lld)", max_slots);
    ok(max_server >= BUDGET - 1, "the burst did use the budget (max %lld)", max_server);
    uint64_t waits = 0, connects = 0;
    for (int i = 0; i < NPROC; i++) {
        waits += atomic_load(&seg->workers[i].counters.waits);
        connects += atomic_load(&seg->workers[i].counters.connects);
    }
    ok(waits > 0, "acquires had to wait (%llu)", (unsigned long long)waits);
    ok(connects > BUDGET, "slots moved between workers: %llu connections opened in total",
       (unsigned long long)connects);
    is_int(shm_budget_in_use(seg), 0, "every slot was freed after the pools closed");
    is_int(atomic_load(&seg->waiters), 0, "no worker is left waiting");
    long long left = -1;
    for (int i = 0; i < 50 && left != 0; i++) {
        left = pgt_query_ll(
            side, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 't211'");
        if (left)
            usleep(20000);
    }
    is_int(left, 0, "the server sees the connections gone");
    shm_destroy(seg);
    PQfinish(side);
}

/* In one process: pool B waits for the only slot, pool A gives it back on release. */
static void test_wake(void)
{
    uv_loop_t loop;
    struct shm_segment *seg;
    struct t_acq a, b;
    struct rt_pool_state st;

    uv_loop_init(&loop);
    if (shm_create(&seg, 1) != 0)
        bail("shm_create");
    struct rt_dburl *u = t_url("connection_limit=2&pool_timeout=5");
    struct rt_pool_opts o;
    rt_pool_opts_init(&o);
    o.seg = seg;
    o.leak_threshold_ms = 200; /* a 100 ms reaper tick */
    o.worker_index = 0;
    o.token = shm_token(0, 1);
    struct rt_pool *pa = t_pool(&loop, u, &o);
    o.worker_index = 1;
    o.token = shm_token(1, 1);
    struct rt_pool *pb = t_pool(&loop, u, &o);

    struct rt_conn *ca = t_acquire(&loop, pa, &a, "a", 5000);
    ok(ca != NULL, "pool A takes the only budget slot");
    t_acquire_start(pb, &b, "b");
    t_run_for(&loop, 150);
    ok(!b.done, "pool B waits for a slot");
    is_int(atomic_load(&seg->workers[1].waiting_budget), 1, "B's waiting flag is up");
    is_int(atomic_load(&seg->waiters), 1, "one waiter in the segment");
    rt_pool_release(ca);
    ok(t_run_until(&loop, &b.done, 3000) && b.conn, "B gets a connection once A releases");
    rt_pool_state(pa, &st);
    is_int(st.open, 0, "A gave its idle connection back because someone was waiting");
    is_int(atomic_load(&seg->waiters), 0, "nobody waits any more");
    is_int(shm_budget_in_use(seg), 1, "one slot in use");

    /* Now A waits; B's connection is idle: the reaper gives it back. */
    rt_pool_release(b.conn);
    rt_pool_state(pb, &st);
    is_int(st.idle, 1, "B keeps its connection idle while nobody waits");
    ok(t_acquire(&loop, pa, &a, "a2", 3000) != NULL,
       "A gets the slot that B's idle connection held");
    rt_pool_state(pb, &st);
    is_int(st.open, 0, "B's idle connection was closed for A");
    rt_pool_release(a.conn);
    ok(t_pool_close(&loop, pa) && t_pool_close(&loop, pb), "pools close");
    is_int(shm_budget_in_use(seg), 0, "no slot left");
    uv_run(&loop, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop), 0, "every handle closed");
    rt_dburl_destroy(u);
    shm_destroy(seg);
}

int main(void)
{
    tap_timeout(90);
    rt_log_set_level(RT_LOG_ERROR);
    test_wake();
    test_processes();
    return done_testing();
}
