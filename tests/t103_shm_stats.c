/*
 * Per-worker statistics in the segment: log2 histograms and their quantiles, folding
 * counters, totals over retired and live workers, retiring a dead worker's block, and the
 * slow-query ring (order, truncation, no torn entries under concurrent writers).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/tap.h"

/* Sorts values for the exact quantiles. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The only bucket of h holding anything, or -1 if none or several do. */
static int only_bucket(const struct shm_hist *h)
{
    int found = -1;
    for (int i = 0; i < SHM_HIST_BUCKETS; i++) {
        if (atomic_load(&h->buckets[i]) == 0)
            continue;
        if (found >= 0)
            return -1;
        found = i;
    }
    return found;
}

/* The bucket value v lands in, through shm_hist_add on an empty histogram. */
static int bucket_of(uint64_t v)
{
    struct shm_hist h = {0};
    shm_hist_add(&h, v);
    return only_bucket(&h);
}

static void test_hist_buckets(void)
{
    ok(bucket_of(0) == 0, "0 us lands in bucket 0");
    ok(bucket_of(1) == 1 && bucket_of(2) == 1, "1 and 2 land in bucket 1");
    ok(bucket_of(3) == 2 && bucket_of(6) == 2 && bucket_of(7) == 3, "3..6 in bucket 2, 7 in 3");
    ok(bucket_of(999) == 9 && bucket_of(1000) == 9 && bucket_of(1023) == 10,
       "1 ms lands in bucket 9 = floor(log2(1001)), 1023 us in bucket 10");
    {
        int all = 1;
        for (int i = 1; i < SHM_HIST_BUCKETS; i++) /* both ends of every bucket */
            all &= bucket_of((UINT64_C(1) << i) - 1) == i &&
                   bucket_of((UINT64_C(1) << i) - 2) == i - 1;
        ok(all, "bucket i holds exactly [2^i - 1, 2^(i+1) - 1) for every i");
    }
    ok(bucket_of(UINT64_C(1) << 45) == SHM_HIST_BUCKETS - 1 &&
           bucket_of(UINT64_MAX) == SHM_HIST_BUCKETS - 1,
       "values past the last bucket are clamped into it (also UINT64_MAX)");

    struct shm_hist h = {0};
    shm_hist_add(&h, 5);
    shm_hist_add(&h, 10);
    shm_hist_add(&h, 100);
    ok(atomic_load(&h.count) == 3 && atomic_load(&h.sum_us) == 115, "count and sum_us are kept");
}

static void test_hist_quantiles(void)
{
    struct shm_hist h = {0};

    is_int(shm_hist_quantile(&h, 0.5), 0, "empty histogram: quantile 0");
    shm_hist_add(&h, 0);
    is_int(shm_hist_quantile(&h, 0.99), 1, "only zeros: p99 below 1 us");

    memset(&h, 0, sizeof h);
    for (uint64_t v = 1; v <= 100; v++)
        shm_hist_add(&h, v);
    /* Values 1..100: the 50th is 50 (bucket 5: [31, 63)), the 99th 99 (bucket 6: [63, 127)). */
    is_int(shm_hist_quantile(&h, 0.5), 63, "uniform 1..100: p50 = 63 (the 50th value, 50, < 63)");
    is_int(shm_hist_quantile(&h, 0.99), 127, "uniform 1..100: p99 = 127");
    is_int(shm_hist_quantile(&h, 0.0), 3, "q = 0: the smallest value's bucket (1 -> < 3)");
    is_int(shm_hist_quantile(&h, 1.0), 127, "q = 1: the largest value's bucket");
    is_int(shm_hist_quantile(&h, 7.0), 127, "q > 1 is clamped to 1");
    is_int(shm_hist_quantile(&h, -1.0), 3, "q < 0 is clamped to 0");

    /* 90 fast requests of 10 us and 10 slow ones of 1 s. */
    memset(&h, 0, sizeof h);
    for (int i = 0; i < 90; i++)
        shm_hist_add(&h, 10);
    for (int i = 0; i < 10; i++)
        shm_hist_add(&h, 1000000);
    is_int(shm_hist_quantile(&h, 0.5), 15, "bimodal: p50 is the fast mode (< 15 us)");
    is_int(shm_hist_quantile(&h, 0.9), 15, "bimodal: p90 still fast (90th value)");
    is_int(shm_hist_quantile(&h, 0.91), (1 << 20) - 1, "bimodal: p91 is the slow mode (< 2^20)");

    memset(&h, 0, sizeof h);
    shm_hist_add(&h, UINT64_C(1) << 50);
    ok(shm_hist_quantile(&h, 0.5) == SHM_HIST_MAX_US,
       "a value in the open-ended last bucket reports SHM_HIST_MAX_US");

    /* Random log-spread values: the reported bound is above the exact nearest-rank value
     * and less than twice it (plus one). */
    enum { N = 5000 };
    static uint64_t vals[N];
    const double qs[] = {0.01, 0.25, 0.5, 0.9, 0.99, 0.999};
    int good = 1;
    srand(12345);
    memset(&h, 0, sizeof h);
    for (int i = 0; i < N; i++) {
        vals[i] = (uint64_t)rand() >> (rand() % 31);
        shm_hist_add(&h, vals[i]);
    }
    qsort(vals, N, sizeof vals[0], cmp_u64);
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        size_t rank = (size_t)(qs[i] * N + 0.999999); /* ceil */
        uint64_t exact = vals[rank - 1], got = shm_hist_quantile(&h, qs[i]);
        if (!(got > exact && got <= 2 * exact + 1)) {
            diag("  q %.3f: exact %llu, got %llu", qs[i], (unsigned long long)exact,
                 (unsigned long long)got);
            good = 0;
        }
    }
    ok(good, "random values: exact quantile < reported bound <= 2 x exact + 1");
}

static void test_fold(void)
{
    struct shm_counters a = {0}, b = {0};
    struct shm_hists ha = {0}, hb = {0};
    _Atomic uint64_t *pa = &a.acquires, *pb = &b.acquires;
    int good = 1;

    for (size_t i = 0; i < SHM_COUNTERS_N; i++) {
        atomic_store(&pa[i], 100 * i);
        atomic_store(&pb[i], i + 1);
    }
    shm_counters_fold(&a, &b);
    for (size_t i = 0; i < SHM_COUNTERS_N; i++)
        good &= atomic_load(&pa[i]) == 101 * i + 1 && atomic_load(&pb[i]) == i + 1;
    ok(good && a.acquires == 1 && a.pipelined == 101 * (SHM_COUNTERS_N - 1) + 1,
       "shm_counters_fold adds every counter, first to last, and leaves src alone");

    shm_hist_add(&ha.query, 10);
    shm_hist_add(&hb.query, 10);
    shm_hist_add(&hb.query, 1000);
    shm_hist_add(&hb.job, 7);
    shm_hist_add(&hb.acquire_wait, 3);
    shm_hist_add(&hb.http, 2000);
    shm_hist_add(&hb.job_wait, 5);
    shm_hist_add(&hb.claim_batch, 40);
    shm_hists_fold(&ha, &hb);
    ok(ha.query.count == 3 && ha.query.sum_us == 1020 && ha.query.buckets[3] == 2 &&
           ha.query.buckets[9] == 1 && ha.job.buckets[3] == 1 && ha.acquire_wait.count == 1 &&
           ha.http.sum_us == 2000 && ha.job_wait.sum_us == 5 && ha.claim_batch.sum_us == 40 &&
           hb.query.count == 2,
       "shm_hists_fold adds all six histograms bucket by bucket");
}

/* Gives worker i some activity: counters, a histogram, gauges, a holder, budget slots. */
static void fake_activity(struct shm_segment *seg, int i, uint64_t n, int slots)
{
    struct shm_worker *w = &seg->workers[i];
    shm_count(&w->counters.acquires, n);
    shm_count(&w->counters.http_2xx, 2 * n);
    shm_hist_add(&w->hists.http, 100);
    atomic_store(&w->pool_open, 3);
    atomic_store(&w->pool_in_use, 2);
    atomic_store(&w->http_open, 5);
    atomic_store(&w->holders[1].since_us, shm_now_us());
    snprintf(w->holders[1].label, sizeof w->holders[1].label, "GET /orders");
    for (int k = 0; k < slots; k++)
        if (shm_budget_reserve(seg, shm_token((uint32_t)i, atomic_load(&w->generation))) < 0)
            bail("cannot reserve");
}

/* Whether worker i's counters, histograms, gauges and holders are all zero. */
static int block_zeroed(const struct shm_segment *seg, int i)
{
    const struct shm_worker *w = &seg->workers[i];
    const unsigned char *c = (const unsigned char *)&w->counters;
    const unsigned char *h = (const unsigned char *)&w->hists;
    const unsigned char *o = (const unsigned char *)&w->holders;
    int zero = w->pool_open == 0 && w->pool_in_use == 0 && w->pool_idle == 0 &&
               w->pool_waiting == 0 && w->pool_limit == 0 && w->http_open == 0;
    for (size_t k = 0; k < sizeof w->counters; k++)
        zero &= c[k] == 0;
    for (size_t k = 0; k < sizeof w->hists; k++)
        zero &= h[k] == 0;
    for (size_t k = 0; k < sizeof w->holders; k++)
        zero &= o[k] == 0;
    return zero;
}

static void test_totals_and_retire(void)
{
    struct shm_segment *seg;
    struct shm_counters t;
    struct shm_hists th;

    if (shm_create(&seg, 16) != 0)
        bail("shm_create failed");
    shm_counters_total(seg, &t);
    ok(t.acquires == 0 && t.jobs_retried == 0, "a new segment totals 0");

    atomic_store(&seg->workers[0].generation, 3);
    atomic_store(&seg->workers[5].generation, 4);
    atomic_store(&seg->workers[5].pid, 999999); /* no such process writes the ring */
    fake_activity(seg, 0, 10, 2);
    fake_activity(seg, 5, 7, 3);
    shm_count(&seg->workers[SHM_MAX_WORKERS - 1].counters.jobs_retried, 1);
    atomic_store(&seg->retired.acquires, 100);
    shm_counters_total(seg, &t);
    ok(t.acquires == 117 && t.http_2xx == 34 && t.jobs_retried == 1,
       "totals = retired + every worker, up to the last entry (117 acquires)");
    shm_hists_total(seg, &th);
    ok(th.http.count == 2 && th.http.sum_us == 200 && th.query.count == 0,
       "histogram totals add the workers' histograms");

    is_int(shm_worker_retire(seg, 5), 3, "retiring worker 5 frees its 3 budget slots");
    ok(block_zeroed(seg, 5), "its counters, histograms, gauges and holders are zeroed");
    ok(atomic_load(&seg->retired.acquires) == 107 && seg->retired_hists.http.count == 1,
       "and folded into retired");
    shm_counters_total(seg, &t);
    ok(t.acquires == 117 && t.http_2xx == 34, "the totals did not change (117 acquires)");
    is_int(shm_budget_in_use(seg), 2, "worker 0's 2 slots are untouched");
    ok(atomic_load(&seg->workers[0].counters.acquires) == 10 && seg->workers[0].pool_open == 3,
       "and so is worker 0's block");
    ok(atomic_load(&seg->workers[5].generation) == 4 && atomic_load(&seg->workers[5].pid) == 999999,
       "retire leaves generation and pid to the supervisor");

    /* Respawned at a new generation: its new counts add on top. */
    atomic_store(&seg->workers[5].generation, 6);
    fake_activity(seg, 5, 1, 1);
    shm_counters_total(seg, &t);
    is_int(t.acquires, 118, "a respawned worker's counts add to the retired ones");
    is_int(shm_worker_retire(seg, 5), 1, "a second retire frees only the new incarnation's slot");
    is_int(shm_worker_retire(seg, -1), -EINVAL, "retire of index -1: -EINVAL");
    is_int(shm_worker_retire(seg, SHM_MAX_WORKERS), -EINVAL, "retire of SHM_MAX_WORKERS: -EINVAL");
    shm_destroy(seg);
}

/* An entry with query text q, from worker index w. */
static struct shm_slow_entry slow_entry(const char *q, uint64_t duration, uint32_t w)
{
    struct shm_slow_entry e;
    memset(&e, 0, sizeof e);
    e.duration_us = duration;
    e.pid = getpid();
    e.role = SHM_ROLE_WEB;
    e.role_index = w;
    snprintf(e.query, sizeof e.query, "%s", q);
    return e;
}

static void test_slow_ring_basics(void)
{
    struct shm_segment *seg;
    struct shm_slow_entry out[SHM_SLOW_RING + 8], e;
    char text[1000];
    int n, order = 1;

    if (shm_create(&seg, 1) != 0)
        bail("shm_create failed");
    is_int(shm_slow_read(seg, out, 10), 0, "an empty ring reads 0 entries");
    e = slow_entry("SELECT 1", 600000, 0);
    shm_slow_push(seg, &e);
    e = slow_entry("SELECT 2", 700000, 1);
    shm_slow_push(seg, &e);
    e = slow_entry("SELECT 3", 800000, 2);
    shm_slow_push(seg, &e);
    n = shm_slow_read(seg, out, 10);
    ok(n == 3 && strcmp(out[0].query, "SELECT 3") == 0 && strcmp(out[2].query, "SELECT 1") == 0 &&
           out[0].seq == 2 && out[2].seq == 0,
       "three pushes read back newest first, seq = push number");
    ok(out[1].duration_us == 700000 && out[1].role_index == 1 && out[1].pid == getpid() &&
           out[1].role == SHM_ROLE_WEB && out[1].ts_us > 0,
       "fields are copied; ts_us 0 is filled in with now");
    n = shm_slow_read(seg, out, 2);
    ok(n == 2 && strcmp(out[0].query, "SELECT 3") == 0 && strcmp(out[1].query, "SELECT 2") == 0,
       "max = 2 returns the 2 newest");
    is_int(shm_slow_read(seg, out, 0), 0, "max = 0 returns nothing");

    for (int i = 0; i < 100; i++) {
        snprintf(text, sizeof text, "q%d", i);
        e = slow_entry(text, (uint64_t)i, 0);
        shm_slow_push(seg, &e);
    }
    n = shm_slow_read(seg, out, SHM_SLOW_RING + 8);
    for (int i = 0; i < n; i++) {
        snprintf(text, sizeof text, "q%d", 99 - i);
        order &= strcmp(out[i].query, text) == 0 && out[i].duration_us == (uint64_t)(99 - i) &&
                 out[i].seq == (uint64_t)(102 - i);
    }
    ok(n == SHM_SLOW_RING && order, "after 103 pushes the ring holds the newest %d, in order",
       SHM_SLOW_RING);

    /* Truncation by push itself (the runtime cuts at a character boundary: t202). */
    memset(&e, 'y', sizeof e); /* no NUL anywhere in the query */
    e.ts_us = 1;
    shm_slow_push(seg, &e);
    n = shm_slow_read(seg, out, 1);
    ok(n == 1 && strlen(out[0].query) == SHM_SLOW_TEXT_LEN - 1 && out[0].ts_us == 1,
       "push NUL-terminates a query that fills the whole field");
    shm_destroy(seg);
}

/* Writer child: pushes entries whose text is derived from (worker, n), so a reader can
 * tell a torn entry from a whole one. */
static __attribute__((noreturn)) void slow_writer(struct shm_segment *seg, uint32_t w, int count)
{
    char text[SHM_SLOW_TEXT_LEN];
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (int n = 0; n < count; n++) {
        struct shm_slow_entry e;
        int len = 20 + (int)((w * 131 + (uint32_t)n * 31) % 200);
        memset(text, 'a' + (int)((w + (uint32_t)n) % 26), (size_t)len);
        text[len] = '\0';
        snprintf(text, 20, "w%u n%d ", w, n); /* NUL lands inside: restore the fill */
        text[strlen(text)] = 'a' + (char)((w + (uint32_t)n) % 26);
        e = slow_entry(text, (uint64_t)n, w);
        shm_slow_push(seg, &e);
    }
    _exit(0);
}

/* Whether a read entry is exactly what writer role_index pushed as push duration_us. */
static int entry_whole(const struct shm_slow_entry *e)
{
    uint32_t w = e->role_index;
    int n = (int)e->duration_us;
    int len = 20 + (int)((w * 131 + (uint32_t)n * 31) % 200);
    char want[SHM_SLOW_TEXT_LEN];
    memset(want, 'a' + (int)((w + (uint32_t)n) % 26), (size_t)len);
    want[len] = '\0';
    snprintf(want, 20, "w%u n%d ", w, n);
    want[strlen(want)] = 'a' + (char)((w + (uint32_t)n) % 26);
    return strcmp(e->query, want) == 0;
}

static void test_slow_ring_concurrent(void)
{
    enum { WRITERS = 3, PUSHES = 30000 };
    struct shm_segment *seg;
    struct shm_slow_entry out[SHM_SLOW_RING];
    pid_t pids[WRITERS];
    long reads = 0, entries = 0, torn = 0, disorder = 0;
    int live = WRITERS, exited_ok = 1;

    if (shm_create(&seg, 1) != 0)
        bail("shm_create failed");
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        if (pids[w] < 0)
            bail("fork: %s", strerror(errno));
        if (pids[w] == 0)
            slow_writer(seg, (uint32_t)w, PUSHES);
    }
    while (live > 0) {
        int n = shm_slow_read(seg, out, SHM_SLOW_RING);
        reads++;
        for (int i = 0; i < n; i++) {
            entries++;
            torn += !entry_whole(&out[i]);
            if (i > 0 && out[i].seq >= out[i - 1].seq)
                disorder++;
        }
        for (int w = 0; w < WRITERS; w++) {
            int status;
            if (pids[w] > 0 && waitpid(pids[w], &status, WNOHANG) == pids[w]) {
                exited_ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
                pids[w] = 0;
                live--;
            }
        }
    }
    diag("%d writers x %d pushes; the reader made %ld reads of %ld entries", WRITERS, PUSHES, reads,
         entries);
    ok(exited_ok && entries > 0, "concurrent writers in %d processes finished", WRITERS);
    is_int(torn, 0, "no entry read while others wrote the ring was torn");
    is_int(disorder, 0, "every read is newest first");
    for (int i = 0; i < SHM_SLOW_RING; i++) {
        struct shm_slow_entry e = slow_entry("calm", (uint64_t)i, 0);
        shm_slow_push(seg, &e);
    }
    ok(shm_slow_read(seg, out, SHM_SLOW_RING) == SHM_SLOW_RING &&
           out[0].duration_us == SHM_SLOW_RING - 1,
       "afterwards the ring works as before: %d pushes read back whole", SHM_SLOW_RING);
    shm_destroy(seg);
}

/* A writer killed in the middle of a push leaves its entry odd (being written, its pid in
 * seq, as shm.h documents); retiring that worker frees the entry for the next pushes. */
static void test_slow_ring_dead_writer(void)
{
    struct shm_segment *seg;
    struct shm_slow_entry out[SHM_SLOW_RING], e;
    const pid_t dead = 999999;
    uint64_t next;
    int n;

    if (shm_create(&seg, 1) != 0)
        bail("shm_create failed");
    for (int i = 0; i < SHM_SLOW_RING; i++) {
        e = slow_entry("before", 1, 0);
        shm_slow_push(seg, &e);
    }
    /* Push number SHM_SLOW_RING claimed slot 0, then its process died. */
    next = atomic_fetch_add(&seg->slow_next, 1);
    atomic_store(&seg->slow[next % SHM_SLOW_RING].seq, ((uint64_t)dead << 1) | 1);
    n = shm_slow_read(seg, out, SHM_SLOW_RING);
    is_int(n, SHM_SLOW_RING - 1, "a half-written entry is skipped by readers");
    for (int i = 0; i < SHM_SLOW_RING; i++) { /* next lap: slot 0 is still taken */
        e = slow_entry("lap", 2, 0);
        shm_slow_push(seg, &e);
    }
    is_int(shm_slow_read(seg, out, SHM_SLOW_RING), SHM_SLOW_RING - 1,
           "while its writer's death is not handled, pushes to it are dropped");
    atomic_store(&seg->workers[7].pid, dead);
    (void)shm_worker_retire(seg, 7);
    for (int i = 0; i < SHM_SLOW_RING; i++) {
        e = slow_entry("after", 3, 0);
        shm_slow_push(seg, &e);
    }
    n = shm_slow_read(seg, out, SHM_SLOW_RING);
    ok(n == SHM_SLOW_RING && strcmp(out[SHM_SLOW_RING - 1].query, "after") == 0,
       "after retiring the dead writer's entry the ring holds %d entries again", SHM_SLOW_RING);
    shm_destroy(seg);
}

/* A depth table in which every number is v and every queue is named "q<v>-<i>". */
static void depths_of(struct shm_queue_depths *d, uint64_t v)
{
    memset(d, 0, sizeof *d);
    d->at_us = v + 1;
    d->nqueues = 1 + (uint32_t)(v % SHM_MAX_QUEUES);
    d->omitted = (uint32_t)v;
    for (uint32_t i = 0; i < d->nqueues; i++) {
        struct shm_queue_depth *q = &d->queues[i];
        snprintf(q->name, sizeof q->name, "q%llu-%u", (unsigned long long)v, i);
        q->ready = q->scheduled = q->running = q->failed = v;
    }
}

/* Whether a table read back is one that depths_of() made, whole. */
static bool depths_whole(const struct shm_queue_depths *d)
{
    struct shm_queue_depths want;
    depths_of(&want, d->at_us - 1);
    return d->at_us > 0 && memcmp(d, &want, sizeof want) == 0;
}

/* The queue depths the supervisor publishes for /metrics: read back whole while another
 * process rewrites them as fast as it can, never half old and half new. */
static void test_queue_depths(void)
{
    enum { PUBLISHES = 20000 };
    struct shm_segment *seg;
    struct shm_queue_depths d;
    long reads = 0, torn = 0, busy = 0;
    int status;
    pid_t pid;

    if (shm_create(&seg, 1) != 0)
        bail("shm_create failed");
    ok(shm_depths_read(seg, &d) == 0 && d.at_us == 0 && d.nqueues == 0,
       "before the first count the depths are empty (at_us 0)");
    pid = fork();
    if (pid < 0)
        bail("fork: %s", strerror(errno));
    if (pid == 0) {
        for (uint64_t v = 1; v <= PUBLISHES; v++) {
            depths_of(&d, v);
            shm_depths_publish(seg, &d);
        }
        _exit(0);
    }
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (shm_depths_read(seg, &d) < 0) {
            busy++;
            continue;
        }
        reads++;
        if (d.at_us != 0)
            torn += !depths_whole(&d);
    }
    diag("%d publishes; %ld reads, %ld gave up on a busy writer", PUBLISHES, reads, busy);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0 && reads > 0, "the writer finished");
    is_int(torn, 0, "no table read during the rewrites was torn");
    ok(shm_depths_read(seg, &d) == 0 && depths_whole(&d) && d.at_us == PUBLISHES + 1,
       "afterwards the last table is read back whole");
    d.at_us = 0;
    shm_depths_publish(seg, &d);
    ok(shm_depths_read(seg, &d) == 0 && d.at_us > 0,
       "a publish without a time gets the current time");
    shm_destroy(seg);
}

int main(void)
{
    tap_timeout(30);
    test_hist_buckets();
    test_hist_quantiles();
    test_fold();
    test_totals_and_retire();
    test_slow_ring_basics();
    test_slow_ring_concurrent();
    test_slow_ring_dead_writer();
    test_queue_depths();
    return done_testing();
}
