/*
 * Per-worker statistics: log2 histograms and their quantiles, folding counter blocks,
 * retiring a dead worker's block into `retired`, and totals over retired plus live blocks.
 *
 * A retire moves numbers from a worker's block into `retired`; a reader in another process
 * summing both at that moment could count them twice or not at all. `retire_seq` is a
 * seqlock around the move: odd while it runs; readers retry until they read an even value
 * that did not change across their sum.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "shm/shm.h"
#include "shm/shm_int.h"

/* Uint64 words in a struct shm_hists (four histograms; segment.c asserts no padding). */
#define HISTS_WORDS (sizeof(struct shm_hists) / sizeof(_Atomic uint64_t))

/* Times a totals reader retries a sum overlapped by a retire before it takes the last one;
 * a retire lasts microseconds, so this bound only matters if the supervisor died inside one. */
#define TOTALS_MAX_TRIES 10000

/* dst[i] += src[i] for n words. dst is written by the caller only. */
static void fold_words(_Atomic uint64_t *dst, const _Atomic uint64_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        /* Relaxed: statistics; the seqlock orders them where it matters. */
        uint64_t v = atomic_load_explicit(&src[i], memory_order_relaxed);
        if (v != 0)
            atomic_store_explicit(&dst[i], atomic_load_explicit(&dst[i], memory_order_relaxed) + v,
                                  memory_order_relaxed);
    }
}

/* dst[i] = 0 for n words. */
static void zero_words(_Atomic uint64_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        /* Relaxed: the dead owner no longer writes; the seqlock orders readers. */
        atomic_store_explicit(&dst[i], 0, memory_order_relaxed);
}

/* Plain sum dst[i] += src[i] into a private (non-shared) block. */
static void add_words(_Atomic uint64_t *dst, const _Atomic uint64_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        /* Relaxed load of shared stats; dst is private to the caller. */
        atomic_init(&dst[i], atomic_load_explicit(&dst[i], memory_order_relaxed) +
                                 atomic_load_explicit(&src[i], memory_order_relaxed));
}

/* The bucket of value us: floor(log2(us + 1)), clamped to the last bucket. */
static unsigned hist_bucket(uint64_t us)
{
    unsigned b;

    if (us == UINT64_MAX)
        return SHM_HIST_BUCKETS - 1;
    b = 63u - (unsigned)__builtin_clzll(us + 1);
    return b < SHM_HIST_BUCKETS ? b : SHM_HIST_BUCKETS - 1;
}

void shm_hist_add(struct shm_hist *h, uint64_t us)
{
    /* Relaxed: statistics, each word on its own; readers accept a skewed snapshot. */
    atomic_fetch_add_explicit(&h->buckets[hist_bucket(us)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

uint64_t shm_hist_quantile(const struct shm_hist *h, double q)
{
    uint64_t counts[SHM_HIST_BUCKETS], total = 0, rank, seen = 0;

    /* The buckets, not `count`, so that the rank and the walk agree on one snapshot. */
    for (int i = 0; i < SHM_HIST_BUCKETS; i++) {
        /* Relaxed: a snapshot of statistics. */
        counts[i] = atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        total += counts[i];
    }
    if (total == 0)
        return 0;
    if (!(q > 0.0)) /* also NaN */
        q = 0.0;
    if (q > 1.0)
        q = 1.0;
    rank = (uint64_t)ceil(q * (double)total); /* nearest rank, 1-based */
    if (rank < 1)
        rank = 1;
    if (rank > total)
        rank = total;
    for (int i = 0; i < SHM_HIST_BUCKETS; i++) {
        seen += counts[i];
        if (seen >= rank)
            return i == SHM_HIST_BUCKETS - 1 ? SHM_HIST_MAX_US : (UINT64_C(2) << i) - 1;
    }
    return SHM_HIST_MAX_US; /* not reached */
}

void shm_counters_fold(struct shm_counters *dst, const struct shm_counters *src)
{
    fold_words(&dst->acquires, &src->acquires, SHM_COUNTERS_N);
}

void shm_hists_fold(struct shm_hists *dst, const struct shm_hists *src)
{
    fold_words(&dst->acquire_wait.buckets[0], &src->acquire_wait.buckets[0], HISTS_WORDS);
}

int shm_worker_retire(struct shm_segment *seg, int worker_index)
{
    struct shm_worker *w;
    uint64_t seq;
    uint32_t generation;
    pid_t pid;

    if (worker_index < 0 || worker_index >= SHM_MAX_WORKERS)
        return -EINVAL;
    w = &seg->workers[worker_index];

    /* Seqlock write side, taken with a CAS even -> odd: during a binary upgrade two
     * supervisors may retire blocks at once, and take turns here (each holds it for a few
     * microseconds). Relaxed CAS, then a release fence: no store of the move below can be
     * seen by a reader without this odd value being visible to its second check. */
    seq = atomic_load_explicit(&seg->retire_seq, memory_order_relaxed);
    for (;;) {
        if ((seq & 1) == 0 &&
            atomic_compare_exchange_weak_explicit(&seg->retire_seq, &seq, seq + 1,
                                                  memory_order_acquire, memory_order_relaxed))
            break;
        if (seq & 1)
            seq = atomic_load_explicit(&seg->retire_seq, memory_order_relaxed);
    }
    atomic_thread_fence(memory_order_release);
    shm_counters_fold(&seg->retired, &w->counters);
    shm_hists_fold(&seg->retired_hists, &w->hists);
    zero_words(&w->counters.acquires, SHM_COUNTERS_N);
    zero_words(&w->hists.acquire_wait.buckets[0], HISTS_WORDS);
    shm__http_retire(&seg->retired_http, &w->http);
    /* Release: publishes the move before the even value. */
    atomic_store_explicit(&seg->retire_seq, seq + 2, memory_order_release);

    /* Gauges and holders describe the dead process only. Relaxed: reports. */
    atomic_store_explicit(&w->pool_open, 0, memory_order_relaxed);
    atomic_store_explicit(&w->pool_in_use, 0, memory_order_relaxed);
    atomic_store_explicit(&w->pool_idle, 0, memory_order_relaxed);
    atomic_store_explicit(&w->pool_waiting, 0, memory_order_relaxed);
    atomic_store_explicit(&w->pool_limit, 0, memory_order_relaxed);
    atomic_store_explicit(&w->http_open, 0, memory_order_relaxed);
    atomic_store_explicit(&w->jobs_unstarted_from, 0, memory_order_relaxed);
    for (int i = 0; i < SHM_MAX_HOLDERS; i++) {
        /* Relaxed: since_us 0 marks the holder unused; the label goes with it. */
        atomic_store_explicit(&w->holders[i].since_us, 0, memory_order_relaxed);
        memset(w->holders[i].label, 0, sizeof w->holders[i].label);
    }

    /* A worker killed while it waited for budget must not keep `waiters` up. */
    shm_budget_wait_end(seg, worker_index);
    (void)shm_budget_wake_drain(seg, worker_index);

    /* Relaxed: the supervisor wrote pid and generation itself, before the fork. */
    pid = atomic_load_explicit(&w->pid, memory_order_relaxed);
    if (pid > 0)
        shm__slow_abandon(seg, pid);
    generation = atomic_load_explicit(&w->generation, memory_order_relaxed);
    return shm_budget_reclaim(seg, shm_token((uint32_t)worker_index, generation));
}

/*
 * Sums words [0, n) of retired plus the block at byte offset off of every worker into out,
 * under the read side of the retire seqlock.
 */
static void total_words(const struct shm_segment *seg, const _Atomic uint64_t *retired, size_t off,
                        _Atomic uint64_t *out, size_t n)
{
    for (int tries = 0;; tries++) {
        /* Acquire: the move of a retire that finished before is visible below. */
        uint64_t before = atomic_load_explicit(&seg->retire_seq, memory_order_acquire), after;
        if ((before & 1) && tries < TOTALS_MAX_TRIES) {
            sched_yield();
            continue;
        }
        for (size_t i = 0; i < n; i++)
            atomic_init(&out[i], 0);
        add_words(out, retired, n);
        for (int w = 0; w < SHM_MAX_WORKERS; w++)
            add_words(out, (const _Atomic uint64_t *)((const char *)&seg->workers[w] + off), n);
        /* Acquire fence, then a relaxed load: if the sum read any store of a retire that
         * started, this load sees that retire's odd value or a later one. */
        atomic_thread_fence(memory_order_acquire);
        after = atomic_load_explicit(&seg->retire_seq, memory_order_relaxed);
        if (before == after || tries >= TOTALS_MAX_TRIES)
            return;
    }
}

void shm_counters_total(const struct shm_segment *seg, struct shm_counters *out)
{
    total_words(seg, &seg->retired.acquires, offsetof(struct shm_worker, counters), &out->acquires,
                SHM_COUNTERS_N);
}

void shm_hists_total(const struct shm_segment *seg, struct shm_hists *out)
{
    total_words(seg, &seg->retired_hists.acquire_wait.buckets[0],
                offsetof(struct shm_worker, hists), &out->acquire_wait.buckets[0], HISTS_WORDS);
}
