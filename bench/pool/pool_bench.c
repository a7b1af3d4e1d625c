/*
 * The pool benchmark's driver (bench/pool/run.sh builds and runs it):
 *
 *   pool_bench run URL WORKERS SECONDS SCALE
 *     WORKERS forked processes, each with its own libuv loop and pool (connection_limit
 *     from URL) inside one shared budget, as pgcorral's workers have; each keeps
 *     connection_limit queries in flight (a closed loop) of pgbench's select-only
 *     statement on a random aid through rt_pool_query(). Prints "tps=..." for the
 *     measured window, which starts after a warm-up and is the same for every worker.
 *
 *   pool_bench acqrel URL ITERATIONS
 *     One idle connection, then ITERATIONS x (rt_pool_try_acquire + rt_pool_release) in
 *     bench_acqrel(), for `valgrind --tool=callgrind --toggle-collect=bench_acqrel`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/rt.h"
#include "shm/shm.h"

#define BENCH_SQL "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
#define BENCH_WARMUP_MS 2000
#define BENCH_MAX_CLIENTS 256

/* One in-flight query of the closed loop. */
struct bench_client {
    struct rt_query q;
    struct bench_worker *w;
    char aid[24];
    const char *values[1];
};

/* One worker process's state. */
struct bench_worker {
    uv_loop_t loop;
    struct rt_pool *pool;
    struct bench_client clients[BENCH_MAX_CLIENTS];
    int nclients, inflight;
    uint64_t rng;
    long long accounts; /* 100000 x scale */
    bool counting, stopping;
    uint64_t done; /* queries finished inside the window */
    uint64_t all;  /* queries finished in all, warm-up included (CPU per query) */
    uint64_t errors;
    uv_timer_t start_timer, stop_timer;
};

/* xorshift64: a random aid per query. */
static uint64_t bench_rand(struct bench_worker *w)
{
    uint64_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    w->rng = x;
    return x;
}

static void bench_issue(struct bench_client *c);

/* A query came back: count it when inside the window, start the next one. */
static void bench_done(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct bench_client *c = q->data;
    struct bench_worker *w = c->w;

    w->inflight--;
    if (res && PQntuples(res) == 1) {
        w->all++;
        if (w->counting)
            w->done++;
    } else {
        w->errors++;
        if (w->errors <= 3)
            fprintf(stderr, "pool_bench: query failed: %s\n", err ? err->message : "no row");
    }
    PQclear(res);
    if (!w->stopping)
        bench_issue(c);
}

/* Starts the client's next query on a random account. */
static void bench_issue(struct bench_client *c)
{
    struct bench_worker *w = c->w;
    snprintf(c->aid, sizeof c->aid, "%lld", 1 + (long long)(bench_rand(w) % (uint64_t)w->accounts));
    c->values[0] = c->aid;
    c->q.data = c;
    if (rt_pool_query(w->pool, &c->q, "bench", BENCH_SQL, 1, c->values, bench_done) != 0) {
        fprintf(stderr, "pool_bench: rt_pool_query refused\n");
        exit(1);
    }
    w->inflight++;
}

/* The warm-up is over: the window opens. */
static void bench_start_cb(uv_timer_t *t)
{
    struct bench_worker *w = t->data;
    w->counting = true;
}

/* The pool closed: close the timers, so the loop ends. */
static void bench_closed(void *arg)
{
    struct bench_worker *w = arg;
    uv_close((uv_handle_t *)&w->start_timer, NULL);
    uv_close((uv_handle_t *)&w->stop_timer, NULL);
}

/* The window is over: no new queries; the pool closes once the last one is back. */
static void bench_drain_cb(uv_timer_t *t)
{
    struct bench_worker *w = t->data;
    if (w->inflight > 0) {
        uv_timer_start(t, bench_drain_cb, 1, 0);
        return;
    }
    rt_pool_close(w->pool, bench_closed, w);
}

/* The window closes: stop counting and issuing, then drain. */
static void bench_stop_cb(uv_timer_t *t)
{
    struct bench_worker *w = t->data;
    w->counting = false;
    w->stopping = true;
    bench_drain_cb(t);
}

/* CLOCK_MONOTONIC in ms: the same clock in every process. */
static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A worker process: counts the queries it finished between start_ms and stop_ms. */
static void bench_worker_main(const struct rt_dburl *url, struct shm_segment *seg, int index,
                              long long start_ms, long long stop_ms, long long accounts, int fd)
{
    static struct bench_worker w;
    struct rt_pool_opts o;
    char line[128];
    int rc;

    memset(&w, 0, sizeof w);
    w.accounts = accounts;
    w.rng = ((uint64_t)getpid() << 32) ^ (uint64_t)mono_ms() ^ 0x9e3779b97f4a7c15ULL;
    if (uv_loop_init(&w.loop) != 0)
        _exit(1);
    atomic_store(&seg->workers[index].generation, 1);
    atomic_store(&seg->workers[index].pid, (int32_t)getpid());
    rt_pool_opts_init(&o);
    o.loop = &w.loop;
    o.url = url;
    o.seg = seg;
    o.worker_index = index;
    o.token = shm_token((uint32_t)index, 1);
    rc = rt_pool_create(&w.pool, &o);
    if (rc != 0) {
        fprintf(stderr, "pool_bench: rt_pool_create: %d\n", rc);
        _exit(1);
    }
    /* POOL_BENCH_CLIENTS: more queries in flight than connections (auto-pipelining). */
    const char *nc = getenv("POOL_BENCH_CLIENTS");
    w.nclients = nc && atoi(nc) > 0 ? atoi(nc) : url->connection_limit;
    if (w.nclients > BENCH_MAX_CLIENTS)
        w.nclients = BENCH_MAX_CLIENTS;
    uv_timer_init(&w.loop, &w.start_timer);
    uv_timer_init(&w.loop, &w.stop_timer);
    w.start_timer.data = w.stop_timer.data = &w;
    long long now = mono_ms();
    uv_timer_start(&w.start_timer, bench_start_cb, (uint64_t)(start_ms > now ? start_ms - now : 0),
                   0);
    uv_timer_start(&w.stop_timer, bench_stop_cb, (uint64_t)(stop_ms > now ? stop_ms - now : 0), 0);
    for (int i = 0; i < w.nclients; i++) {
        w.clients[i].w = &w;
        bench_issue(&w.clients[i]);
    }
    uv_run(&w.loop, UV_RUN_DEFAULT);
    snprintf(line, sizeof line, "%llu %llu %llu\n", (unsigned long long)w.done,
             (unsigned long long)w.errors, (unsigned long long)w.all);
    if (write(fd, line, strlen(line)) < 0)
        _exit(1);
    _exit(w.errors ? 1 : 0);
}

/* `run`: forks the workers with a common window and prints the total tps. */
static int bench_run(const char *urltext, int workers, int seconds, int scale)
{
    struct rt_dburl *url;
    struct shm_segment *seg;
    char err[512];
    int fds[2], failed = 0;
    unsigned long long total = 0, errors = 0, all = 0;

    if (rt_dburl_parse(urltext, &url, err, sizeof err) != 0) {
        fprintf(stderr, "pool_bench: %s\n", err);
        return 2;
    }
    if (shm_create(&seg, (uint32_t)(workers * url->connection_limit + 1)) != 0 || pipe(fds) < 0) {
        fprintf(stderr, "pool_bench: cannot create the shared segment\n");
        return 1;
    }
    long long start_ms = mono_ms() + BENCH_WARMUP_MS;
    long long stop_ms = start_ms + (long long)seconds * 1000;
    for (int i = 0; i < workers; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            close(fds[0]);
            bench_worker_main(url, seg, i, start_ms, stop_ms, 100000LL * scale, fds[1]);
        }
    }
    close(fds[1]);
    for (int i = 0; i < workers; i++) {
        int st;
        if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
    }
    FILE *f = fdopen(fds[0], "r");
    unsigned long long d, e, a;
    while (f && fscanf(f, "%llu %llu %llu", &d, &e, &a) == 3) {
        total += d;
        errors += e;
        all += a;
    }
    if (f)
        fclose(f);
    printf("tps=%.1f queries=%llu all_queries=%llu errors=%llu seconds=%d workers=%d limit=%d "
           "budget_slots=%u\n",
           (double)total / seconds, total, all, errors, seconds, workers, url->connection_limit,
           seg->nslots);
    shm_destroy(seg);
    rt_dburl_destroy(url);
    return failed || errors ? 1 : 0;
}

/* ---- acquire + release, for callgrind -------------------------------------------------- */

/* The measured code: n fast-path acquire + release pairs on an idle connection. */
__attribute__((noinline)) void bench_acqrel(struct rt_pool *p, long n);
__attribute__((noinline)) void bench_acqrel(struct rt_pool *p, long n)
{
    struct rt_conn *c;

    for (long i = 0; i < n; i++) {
        if (rt_pool_try_acquire(p, "GET /api/v1/items", &c) != 0)
            abort();
        rt_pool_release(c);
    }
}

/* The warm-up acquire of `acqrel`. */
static void bench_first(struct rt_acquire *req, struct rt_conn *conn, const struct rt_error *err)
{
    if (!conn) {
        fprintf(stderr, "pool_bench: cannot connect: %s\n", err->message);
        exit(1);
    }
    *(struct rt_conn **)req->data = conn;
}

/* `acqrel`: one idle connection, then bench_acqrel(n). */
static int bench_acqrel_main(const char *urltext, long n)
{
    struct rt_dburl *url;
    struct shm_segment *seg;
    struct rt_pool *pool;
    struct rt_pool_opts o;
    struct rt_acquire req;
    struct rt_conn *conn = NULL;
    struct rt_pool_state st;
    uv_loop_t loop;
    char err[512];

    if (rt_dburl_parse(urltext, &url, err, sizeof err) != 0) {
        fprintf(stderr, "pool_bench: %s\n", err);
        return 2;
    }
    if (shm_create(&seg, 4) != 0 || uv_loop_init(&loop) != 0)
        return 1;
    atomic_store(&seg->workers[0].generation, 1);
    rt_pool_opts_init(&o);
    o.loop = &loop;
    o.url = url;
    o.seg = seg;
    o.worker_index = 0;
    o.token = shm_token(0, 1);
    if (rt_pool_create(&pool, &o) != 0)
        return 1;
    req.data = &conn;
    if (rt_pool_acquire(pool, &req, "warm-up", bench_first) != 0)
        return 1;
    while (!conn)
        uv_run(&loop, UV_RUN_ONCE);
    rt_pool_release(conn);
    /* The loop does not run from here on, so its clock stands still: no connection looks
     * idle long enough to be validated, which is the fast path being measured. */
    bench_acqrel(pool, n);
    rt_pool_state(pool, &st);
    printf("iterations=%ld open=%d idle=%d acquires=%llu\n", n, st.open, st.idle,
           (unsigned long long)atomic_load(&rt_pool_stats_block(pool)->counters.acquires));
    return st.idle == 1 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 6 && !strcmp(argv[1], "run"))
        return bench_run(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc == 4 && !strcmp(argv[1], "acqrel"))
        return bench_acqrel_main(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: pool_bench run URL WORKERS SECONDS SCALE\n"
                    "       pool_bench acqrel URL ITERATIONS\n");
    return 2;
}
