/*
 * The global connection budget: B slots, each holding the token of the worker incarnation
 * that reserved it (0 = free), and the eventfd wake-ups of workers that wait for one.
 *
 * Lost wake-ups are ruled out by a Dekker-style pair of sequentially consistent accesses:
 * a waiter raises `waiters` and its flag, then scans the slots once more; a releaser frees
 * its slot, then reads `waiters`. In the single order of seq_cst operations one of the two
 * comes second and sees the other's write: either the waiter's scan finds the free slot, or
 * the releaser sees the waiter (its flag, which was raised before that scan) and wakes it.
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "shm/shm.h"

/* Writes 1 to the wake_fd of every worker whose waiting flag is up. */
static void budget_wake_waiters(struct shm_segment *seg)
{
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        struct shm_worker *w = &seg->workers[i];
        /* Seq_cst: pairs with the flag store in shm_budget_wait_begin() (see the top). */
        if (atomic_load_explicit(&w->waiting_budget, memory_order_seq_cst) == 0)
            continue;
        /* EAGAIN means the count is already huge: the worker is awake anyway. */
        if (eventfd_write(w->wake_fd, 1) < 0) {
        }
    }
}

/* Wakes waiters if there are any: a single load on the fast path. */
static void budget_maybe_wake(struct shm_segment *seg)
{
    /* Seq_cst: must be ordered after the CAS that freed a slot (see the top). */
    if (atomic_load_explicit(&seg->waiters, memory_order_seq_cst) > 0)
        budget_wake_waiters(seg);
}

static bool is_supervisor_token(uint32_t token)
{
    return (token & 0xff) == SHM_SUPERVISOR_INDEX;
}

/* After our CAS took slot: whether the worker slots now exceed the lease (see shm.h). */
static bool beyond_lease(struct shm_segment *seg, uint32_t token)
{
    if (is_supervisor_token(token))
        return false;
    /* Seq_cst: ordered after our CAS, so of two racing reservations the later sees both. */
    if (atomic_load_explicit(&seg->lease_fenced, memory_order_seq_cst))
        return true;
    return shm_budget_workers_in_use(seg) >
           atomic_load_explicit(&seg->lease_cap, memory_order_seq_cst);
}

int shm_budget_reserve(struct shm_segment *seg, uint32_t token)
{
    uint32_t n = shm_budget_usable(seg);

    if (token == 0)
        return -EINVAL;
    if (n > seg->nslots)
        n = seg->nslots;
    /* Lowest first: a cap lowered by shm_budget_fit() then finds the connections below it. */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t expected = 0;
        /* Seq_cst load: a waiter's rescan must see a release ordered before it (see the top);
         * reading first keeps a full segment from costing a locked CAS per slot. */
        if (atomic_load_explicit(&seg->slots[i], memory_order_seq_cst) != 0)
            continue;
        /* Seq_cst CAS 0 -> token (full barrier): reserves the slot and records its owner. */
        if (!atomic_compare_exchange_strong_explicit(&seg->slots[i], &expected, token,
                                                     memory_order_seq_cst, memory_order_seq_cst))
            continue;
        if (!beyond_lease(seg, token))
            return (int)i;
        /* Seq_cst store: back off; a waiter that counted us sees the slot free again. */
        atomic_store_explicit(&seg->slots[i], 0, memory_order_seq_cst);
        budget_maybe_wake(seg);
        return -EAGAIN;
    }
    return -EAGAIN;
}

uint32_t shm_budget_workers_in_use(const struct shm_segment *seg)
{
    uint32_t used = 0;

    for (uint32_t i = 0; i < seg->nslots; i++) {
        uint32_t t = atomic_load_explicit(&seg->slots[i], memory_order_seq_cst);
        if (t != 0 && !is_supervisor_token(t))
            used++;
    }
    return used;
}

void shm_budget_set_lease(struct shm_segment *seg, uint32_t cap, bool fenced)
{
    uint32_t old_cap = atomic_exchange_explicit(&seg->lease_cap, cap, memory_order_seq_cst);
    uint32_t was_fenced =
        atomic_exchange_explicit(&seg->lease_fenced, fenced ? 1 : 0, memory_order_seq_cst);

    atomic_store_explicit(&seg->lease_excess, shm_budget_workers_in_use(seg) > cap ? 1 : 0,
                          memory_order_relaxed);
    if (cap > old_cap || (was_fenced && !fenced))
        budget_maybe_wake(seg);
}

bool shm_budget_over_lease(struct shm_segment *seg)
{
    /* Relaxed: the pools' release path; the supervisor re-raises it at each renewal. */
    if (!atomic_load_explicit(&seg->lease_excess, memory_order_relaxed))
        return false;
    if (shm_budget_workers_in_use(seg) >
        atomic_load_explicit(&seg->lease_cap, memory_order_relaxed))
        return true;
    atomic_store_explicit(&seg->lease_excess, 0, memory_order_relaxed);
    return false;
}

/* usable = the server's room (unknown: 0 max_connections) clamped to 1..B. */
static uint32_t usable_for(const struct shm_segment *seg, int max_connections, int reserved)
{
    long usable = max_connections > 0 ? (long)max_connections - (long)reserved : LONG_MAX;
    long b = (long)shm_budget_size(seg);

    if (usable > b)
        usable = b;
    return usable < 1 ? 1 : (uint32_t)usable;
}

int shm_budget_resize(struct shm_segment *seg, uint32_t budget)
{
    uint32_t cap, old;

    if (budget < 1 || budget > seg->nslots)
        return -EINVAL;
    atomic_store_explicit(&seg->budget, budget, memory_order_seq_cst);
    cap = usable_for(seg, atomic_load_explicit(&seg->server_max_connections, memory_order_relaxed),
                     atomic_load_explicit(&seg->server_reserved, memory_order_relaxed));
    old = atomic_exchange_explicit(&seg->usable, cap, memory_order_seq_cst);
    if (cap > old)
        budget_maybe_wake(seg);
    return 0;
}

uint32_t shm_budget_fit(struct shm_segment *seg, int max_connections, int reserved)
{
    uint32_t cap, old;

    cap = usable_for(seg, max_connections, reserved);
    /* Relaxed: report fields, written before the cap they explain. */
    atomic_store_explicit(&seg->server_max_connections, max_connections, memory_order_relaxed);
    atomic_store_explicit(&seg->server_reserved, reserved, memory_order_relaxed);
    /* Seq_cst exchange (full barrier): a reservation that follows sees the new cap, and of
     * several callers with the same limits exactly one sees the old value change. */
    old = atomic_exchange_explicit(&seg->usable, cap, memory_order_seq_cst);
    if (cap > old)
        budget_maybe_wake(seg); /* slots that were out of reach are usable again */
    return old;
}

int shm_budget_release(struct shm_segment *seg, int slot, uint32_t token)
{
    uint32_t expected = token;

    if (token == 0 || slot < 0 || (uint32_t)slot >= seg->nslots)
        return -EINVAL;
    /* Seq_cst CAS token -> 0 (full barrier): frees the slot only if it is still ours, and
     * is ordered before the read of `waiters` in budget_maybe_wake(). */
    if (!atomic_compare_exchange_strong_explicit(&seg->slots[slot], &expected, 0,
                                                 memory_order_seq_cst, memory_order_seq_cst))
        return -EINVAL;
    budget_maybe_wake(seg);
    return 0;
}

int shm_budget_reclaim(struct shm_segment *seg, uint32_t token)
{
    int freed = 0;

    if (token == 0)
        return 0;
    for (uint32_t i = 0; i < seg->nslots; i++) {
        uint32_t expected = token;
        /* Seq_cst CAS token -> 0 (full barrier); a slot of another token is left alone. */
        if (atomic_compare_exchange_strong_explicit(&seg->slots[i], &expected, 0,
                                                    memory_order_seq_cst, memory_order_relaxed))
            freed++;
    }
    if (freed > 0)
        budget_maybe_wake(seg);
    return freed;
}

uint32_t shm_budget_in_use(const struct shm_segment *seg)
{
    uint32_t used = 0;

    for (uint32_t i = 0; i < seg->nslots; i++)
        /* Relaxed: a snapshot for reports. */
        if (atomic_load_explicit(&seg->slots[i], memory_order_relaxed) != 0)
            used++;
    return used;
}

void shm_budget_wait_begin(struct shm_segment *seg, int worker_index)
{
    struct shm_worker *w;

    assert(worker_index >= 0 && worker_index < SHM_MAX_WORKERS);
    if (worker_index < 0 || worker_index >= SHM_MAX_WORKERS)
        return;
    w = &seg->workers[worker_index];
    /* Seq_cst, count first and flag second: `waiters` is never below the number of raised
     * flags, even if this process dies in between (see shm.h). */
    atomic_fetch_add_explicit(&seg->waiters, 1, memory_order_seq_cst);
    /* Seq_cst exchange: ordered before the caller's rescan of the slots. Already waiting:
     * undo the extra count. */
    if (atomic_exchange_explicit(&w->waiting_budget, 1, memory_order_seq_cst) != 0)
        atomic_fetch_sub_explicit(&seg->waiters, 1, memory_order_seq_cst);
}

void shm_budget_wait_end(struct shm_segment *seg, int worker_index)
{
    struct shm_worker *w;

    assert(worker_index >= 0 && worker_index < SHM_MAX_WORKERS);
    if (worker_index < 0 || worker_index >= SHM_MAX_WORKERS)
        return;
    w = &seg->workers[worker_index];
    /* Seq_cst, flag first and count second (the mirror of wait_begin); only the call that
     * lowers the flag lowers the count. */
    if (atomic_exchange_explicit(&w->waiting_budget, 0, memory_order_seq_cst) != 0)
        atomic_fetch_sub_explicit(&seg->waiters, 1, memory_order_seq_cst);
}

bool shm_budget_wake_drain(struct shm_segment *seg, int worker_index)
{
    eventfd_t value;

    assert(worker_index >= 0 && worker_index < SHM_MAX_WORKERS);
    if (worker_index < 0 || worker_index >= SHM_MAX_WORKERS)
        return false;
    /* Non-blocking fd: EAGAIN when nothing is pending. */
    return eventfd_read(seg->workers[worker_index].wake_fd, &value) == 0 && value > 0;
}
