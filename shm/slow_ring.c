/*
 * The slow-query ring: the last SHM_SLOW_RING slow queries of all workers, lock-free.
 *
 *   slow_next (fetch_add) -> push number n -> entry slow[n % SHM_SLOW_RING]
 *   entry seq:  0 --claim--> (pid << 1) | 1 --write, publish--> 2 * (n + 1)
 *
 * A push claims its entry with a CAS from an even seq older than its own (an odd seq means
 * another push is still writing it: ours is dropped rather than torn; a newer even seq
 * means ours is already out of the ring). Readers copy an entry between two loads of seq
 * and keep the copy only if both show the completed push they expect. The writer's pid in
 * the odd value lets the supervisor free an entry whose writer was killed mid-push.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include "shm/shm.h"
#include "shm/shm_int.h"

/* Bytes of an entry after seq: what a push writes and a read copies. */
#define SLOW_BODY_OFF offsetof(struct shm_slow_entry, ts_us)
#define SLOW_BODY_LEN (sizeof(struct shm_slow_entry) - SLOW_BODY_OFF)

/* The completed seq of push number n. */
static uint64_t slow_done(uint64_t n)
{
    return 2 * (n + 1);
}

void shm_slow_push(struct shm_segment *seg, const struct shm_slow_entry *e)
{
    struct shm_slow_entry body;
    struct shm_slow_entry *slot;
    uint64_t n, cur, claim = ((uint64_t)getpid() << 1) | 1;
    size_t len;

    /* Build the body privately, so that the shared entry is written by one memcpy. */
    memcpy(&body, e, sizeof body);
    if (body.ts_us == 0)
        body.ts_us = shm_now_us();
    len = strnlen(e->query, SHM_SLOW_TEXT_LEN - 1);
    memset(body.query + len, 0, SHM_SLOW_TEXT_LEN - len);

    /* Relaxed: a ticket; the entry's seq carries the ordering. */
    n = atomic_fetch_add_explicit(&seg->slow_next, 1, memory_order_relaxed);
    slot = &seg->slow[n % SHM_SLOW_RING];
    /* Relaxed: the CAS below decides. */
    cur = atomic_load_explicit(&slot->seq, memory_order_relaxed);
    do {
        if ((cur & 1) || cur >= slow_done(n))
            return; /* being written by another push, or holds a newer one */
        /* Relaxed CAS even -> odd claims the entry; the fence below orders the body after it. */
    } while (!atomic_compare_exchange_weak_explicit(&slot->seq, &cur, claim, memory_order_relaxed,
                                                    memory_order_relaxed));
    /* Release fence: a reader that sees any byte of the body below also sees the odd claim
     * (or later) in its second load of seq. */
    atomic_thread_fence(memory_order_release);
    memcpy((char *)slot + SLOW_BODY_OFF, (const char *)&body + SLOW_BODY_OFF, SLOW_BODY_LEN);
    /* Release: publishes the body with the completed seq. Only the supervisor, after our
     * death, may change an odd seq that names us, so a plain store is enough. */
    atomic_store_explicit(&slot->seq, slow_done(n), memory_order_release);
}

int shm_slow_read(const struct shm_segment *seg, struct shm_slow_entry *out, int max)
{
    uint64_t next, oldest;
    int got = 0;

    /* Acquire: pairs with nothing in particular; every entry is validated by its seq. */
    next = atomic_load_explicit(&seg->slow_next, memory_order_acquire);
    oldest = next > SHM_SLOW_RING ? next - SHM_SLOW_RING : 0;
    for (uint64_t n = next; n > oldest && got < max; n--) {
        const struct shm_slow_entry *slot = &seg->slow[(n - 1) % SHM_SLOW_RING];
        struct shm_slow_entry *dst = &out[got];
        /* Acquire: the body written before this completed seq is visible to the copy. */
        uint64_t before = atomic_load_explicit(&slot->seq, memory_order_acquire), after;
        if (before != slow_done(n - 1))
            continue; /* being written, overwritten, or dropped */
        memcpy((char *)dst + SLOW_BODY_OFF, (const char *)slot + SLOW_BODY_OFF, SLOW_BODY_LEN);
        /* Acquire fence, then a relaxed load: a copy that read a newer push's bytes sees that
         * push's claim here. */
        atomic_thread_fence(memory_order_acquire);
        after = atomic_load_explicit(&slot->seq, memory_order_relaxed);
        if (after != before)
            continue; /* torn */
        atomic_init(&dst->seq, n - 1);
        dst->query[SHM_SLOW_TEXT_LEN - 1] = '\0';
        got++;
    }
    return got;
}

int shm__slow_abandon(struct shm_segment *seg, pid_t pid)
{
    uint64_t claim = ((uint64_t)pid << 1) | 1;
    int freed = 0;

    for (int i = 0; i < SHM_SLOW_RING; i++) {
        uint64_t expected = claim;
        /* Relaxed CAS claim -> 0: the writer is dead, so there is no body to order. */
        if (atomic_compare_exchange_strong_explicit(&seg->slow[i].seq, &expected, 0,
                                                    memory_order_relaxed, memory_order_relaxed))
            freed++;
    }
    return freed;
}
