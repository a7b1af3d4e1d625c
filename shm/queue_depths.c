/*
 * The job queue depths in the segment: the supervisor's sweep counts the jobs of every
 * queue by state and publishes the table here, so that /metrics in any web worker reports
 * it without a query per scrape. One writer at a time (two supervisors take turns during
 * a binary upgrade), a seqlock: depths_seq is odd while the
 * supervisor rewrites the table; readers copy it between two even loads that agree.
 */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "shm/shm.h"

/* Copies a reader makes before it gives up on a writer that never pauses. */
#define DEPTHS_READ_TRIES 100

void shm_depths_publish(struct shm_segment *seg, const struct shm_queue_depths *d)
{
    struct shm_queue_depths body;
    uint64_t seq;

    memcpy(&body, d, sizeof body);
    if (body.at_us == 0)
        body.at_us = shm_now_us();
    /* Taken with a CAS even -> odd: two supervisors publish while a binary upgrade overlaps
     * them, and take turns. Acquire: the previous writer's table is complete before ours. */
    seq = atomic_load_explicit(&seg->depths_seq, memory_order_relaxed);
    for (;;) {
        if ((seq & 1) == 0 &&
            atomic_compare_exchange_weak_explicit(&seg->depths_seq, &seq, seq + 1,
                                                  memory_order_acquire, memory_order_relaxed))
            break;
        if (seq & 1)
            seq = atomic_load_explicit(&seg->depths_seq, memory_order_relaxed);
    }
    /* Release fence: a reader that sees any byte below also sees the odd value. */
    atomic_thread_fence(memory_order_release);
    memcpy(&seg->depths, &body, sizeof body);
    /* Release: publishes the table with the even value. */
    atomic_store_explicit(&seg->depths_seq, seq + 2, memory_order_release);
}

int shm_depths_read(const struct shm_segment *seg, struct shm_queue_depths *out)
{
    for (int i = 0; i < DEPTHS_READ_TRIES; i++) {
        /* Acquire: the table written before this even value is visible to the copy. */
        uint64_t before = atomic_load_explicit(&seg->depths_seq, memory_order_acquire);
        if (before & 1)
            continue;
        memcpy(out, &seg->depths, sizeof *out);
        /* Acquire fence, then a relaxed load: a copy that read newer bytes sees the newer
         * (odd or larger) value here. */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&seg->depths_seq, memory_order_relaxed) == before) {
            if (out->nqueues > SHM_MAX_QUEUES)
                out->nqueues = SHM_MAX_QUEUES;
            for (uint32_t q = 0; q < out->nqueues; q++)
                out->queues[q].name[SHM_LABEL_LEN - 1] = '\0';
            return 0;
        }
    }
    memset(out, 0, sizeof *out);
    return -EAGAIN;
}
