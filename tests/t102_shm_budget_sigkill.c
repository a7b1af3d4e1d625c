/*
 * The acceptance test: workers reserving and releasing budget slots at random are
 * SIGKILLed and respawned hundreds of times; the supervisor's retire after each waitpid()
 * frees exactly the dead incarnation's slots. The budget is never exceeded, no slot is ever
 * handed to two holders, no waiter misses its wake-up, nothing leaks at the end, and the
 * totals (retired + live counters) never go backwards, even for a reader in another process.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/tap.h"

#define B 8    /* the global budget */
#define KIDS 4 /* workers, each holding up to HOLD slots: demand 16 > B */
#define HOLD 4
#define KILLS 500    /* SIGKILL + respawn cycles */
#define WAIT_MS 2000 /* a waiter not woken within this counts as a lost wake-up */

/* State shared by the test's processes, outside the segment under test. */
struct arena {
    _Atomic uint32_t owner[B];  /* who believes it holds each slot (0 = nobody) */
    _Atomic uint32_t stop;      /* parent: the reader may exit */
    _Atomic uint64_t backwards; /* reader: totals that went down */
    _Atomic uint64_t reads;     /* reader: totals read */
};

/* The segment and arena, mapped before any fork. */
static struct shm_segment *seg;
static struct arena *arena;

/* A small per-process PRNG (xorshift), so that children do not share rand()'s state. */
static uint64_t rng_state;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* Child: a slot was reserved; record and check ownership. */
static void took(struct shm_worker *w, uint32_t tok, int slot, int *held, int *n)
{
    if (atomic_exchange(&arena->owner[slot], tok) != 0)
        shm_count(&w->counters.errors_fatal, 1); /* handed out twice */
    held[(*n)++] = slot;
    shm_count(&w->counters.acquires, 1);
    atomic_store_explicit(&w->pool_open, (uint32_t)*n, memory_order_relaxed);
}

/* Child: blocks until a slot is free, following the wait protocol. Returns the slot. */
static int wait_for_slot(struct shm_worker *w, int index, uint32_t tok)
{
    for (;;) {
        struct pollfd p = {.fd = w->wake_fd, .events = POLLIN};
        int s;
        shm_budget_wait_begin(seg, index);
        s = shm_budget_reserve(seg, tok);
        if (s < 0) {
            shm_count(&w->counters.waits, 1);
            if (poll(&p, 1, WAIT_MS) == 0)
                shm_count(&w->counters.timeouts, 1); /* nobody woke us */
            shm_budget_wake_drain(seg, index);
        }
        shm_budget_wait_end(seg, index);
        if (s >= 0)
            return s;
        s = shm_budget_reserve(seg, tok);
        if (s >= 0)
            return s;
    }
}

/* Child: reserves and releases at random, holding up to HOLD slots, until killed. */
static __attribute__((noreturn)) void worker_main(int index, uint32_t generation)
{
    struct shm_worker *w = &seg->workers[index];
    uint32_t tok = shm_token((uint32_t)index, generation);
    int held[HOLD], n = 0;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    rng_state = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL | 1;
    for (;;) {
        shm_count(&w->counters.queries, 1);
        if (n > 0 && rng() % 4 == 0) {
            /* A query on a held connection blocks, as a real one does; it also keeps five
             * processes on two cores from starving the parent's kill / reap / respawn. */
            struct timespec query = {0, 1000};
            nanosleep(&query, NULL);
        }
        if (n < HOLD && (n == 0 || rng() % 10 < 6)) {
            int s = shm_budget_reserve(seg, tok);
            if (s >= 0) {
                took(w, tok, s, held, &n);
                continue;
            }
            if (n == 0) { /* nothing to give back: wait, as a pool with no connection does */
                took(w, tok, wait_for_slot(w, index, tok), held, &n);
                continue;
            }
            /* Holding some: give one back instead of waiting (no hold-and-wait deadlock). */
        }
        int i = (int)(rng() % (uint32_t)n), s = held[i];
        held[i] = held[--n];
        atomic_store_explicit(&w->pool_open, (uint32_t)n, memory_order_relaxed);
        if (atomic_exchange(&arena->owner[s], 0) != tok)
            shm_count(&w->counters.errors_fatal, 1);
        if (shm_budget_release(seg, s, tok) != 0)
            shm_count(&w->counters.errors_fatal, 1); /* someone freed our slot */
    }
}

/* Child: reads the totals over and over; they must never go down. */
static __attribute__((noreturn)) void reader_main(void)
{
    struct shm_counters prev, cur;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    shm_counters_total(seg, &prev);
    while (!atomic_load(&arena->stop)) {
        shm_counters_total(seg, &cur);
        if (cur.acquires < prev.acquires || cur.queries < prev.queries)
            atomic_fetch_add(&arena->backwards, 1);
        atomic_fetch_add(&arena->reads, 1);
        prev = cur;
    }
    _exit(0);
}

/* Forks worker index at a new generation, the way the supervisor does. */
static pid_t spawn(int index, uint32_t generation)
{
    pid_t pid;

    atomic_store(&seg->workers[index].generation, generation);
    atomic_store(&seg->workers[index].state, SHM_STATE_STARTING);
    pid = fork();
    if (pid < 0)
        bail("fork: %s", strerror(errno));
    if (pid == 0)
        worker_main(index, generation);
    atomic_store(&seg->workers[index].pid, pid);
    return pid;
}

/* Slots carrying a nonzero token, counted directly. */
static uint32_t nonzero_slots(void)
{
    uint32_t n = 0;
    for (int i = 0; i < B; i++)
        n += atomic_load(&seg->slots[i]) != 0;
    return n;
}

/* Results of the parent's sampling. */
static uint32_t max_in_use, max_nonzero;
static long samples, backwards;
static uint64_t last_acquires, last_queries, last_timeouts;

/* Samples the budget and the totals once. */
static void sample(void)
{
    struct shm_counters t;
    uint32_t u = shm_budget_in_use(seg), z = nonzero_slots();

    max_in_use = u > max_in_use ? u : max_in_use;
    max_nonzero = z > max_nonzero ? z : max_nonzero;
    shm_counters_total(seg, &t);
    if (t.acquires < last_acquires || t.queries < last_queries)
        backwards++;
    last_acquires = t.acquires;
    last_queries = t.queries;
    last_timeouts = t.timeouts;
    samples++;
}

/* The supervisor's part after waitpid(): forget the dead one's ownership records (it can no
 * longer release them), then retire its entry. Returns the slots retire freed. */
static int reap(int index, pid_t pid, uint32_t generation, int *leftover)
{
    uint32_t tok = shm_token((uint32_t)index, generation);
    int freed;

    if (waitpid(pid, NULL, 0) != pid)
        bail("waitpid: %s", strerror(errno));
    for (int i = 0; i < B; i++) {
        uint32_t expected = tok;
        atomic_compare_exchange_strong(&arena->owner[i], &expected, 0);
    }
    freed = shm_worker_retire(seg, index);
    atomic_store(&seg->workers[index].state, SHM_STATE_DEAD);
    for (int i = 0; i < B; i++)
        *leftover += atomic_load(&seg->slots[i]) == tok;
    return freed;
}

int main(void)
{
    pid_t pids[KIDS], reader;
    uint32_t gens[KIDS], next_gen = 0;
    int freed_total = 0, leftover = 0, stuck = 0, reader_code, kills;
    uint64_t seed = (uint64_t)time(NULL) ^ (uint64_t)getpid();
    struct shm_counters total;
    struct timespec t0, t1;

    tap_timeout(60);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    diag("seed %llu", (unsigned long long)seed);
    rng_state = seed | 1;
    if (shm_create(&seg, B) != 0)
        bail("shm_create failed");
    arena = mmap(NULL, sizeof *arena, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (arena == MAP_FAILED)
        bail("mmap: %s", strerror(errno));

    reader = fork();
    if (reader < 0)
        bail("fork: %s", strerror(errno));
    if (reader == 0)
        reader_main();
    for (int k = 0; k < KIDS; k++)
        pids[k] = spawn(k, gens[k] = ++next_gen);

    for (kills = 0; kills < KILLS; kills++) {
        int v = (int)(rng() % KIDS);
        uint64_t start = atomic_load(&seg->workers[v].counters.acquires);
        uint64_t target = start + 1 + rng() % 40;
        struct timespec deadline, now;

        /* Let the victim work a random while (bounded), sampling all along. */
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += 3;
        for (;;) {
            sample();
            if (atomic_load(&seg->workers[v].counters.acquires) >= target)
                break;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec > deadline.tv_sec ||
                (now.tv_sec == deadline.tv_sec && now.tv_nsec > deadline.tv_nsec)) {
                stuck++;
                break;
            }
            sched_yield();
        }
        if (stuck > 0 || last_timeouts > 0)
            break; /* the assertions below report it; do not wait out every kill */
        if (kill(pids[v], SIGKILL) != 0)
            bail("kill: %s", strerror(errno));
        freed_total += reap(v, pids[v], gens[v], &leftover);
        sample();
        pids[v] = spawn(v, gens[v] = ++next_gen);
    }

    for (int k = 0; k < KIDS; k++)
        kill(pids[k], SIGKILL);
    for (int k = 0; k < KIDS; k++)
        freed_total += reap(k, pids[k], gens[k], &leftover);
    sample();
    atomic_store(&arena->stop, 1);
    reader_code = waitpid(reader, &reader_code, 0) == reader ? 0 : -1;
    shm_counters_total(seg, &total);
    clock_gettime(CLOCK_MONOTONIC, &t1);

    diag("%d kills in %.2f s, %ld samples, %d slots reclaimed from dead workers, %llu waits, "
         "%llu acquires, reader read the totals %llu times",
         kills, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, samples,
         freed_total, (unsigned long long)total.waits, (unsigned long long)total.acquires,
         (unsigned long long)atomic_load(&arena->reads));
    is_int(stuck, 0, "every victim made progress before its kill (nobody starved)");
    ok(kills == KILLS, "%d of %d SIGKILL + retire + respawn cycles done", kills, KILLS);
    ok(max_in_use <= B && max_nonzero <= B,
       "shm_budget_in_use and the nonzero tokens never exceeded B = %d (max %u / %u)", B,
       max_in_use, max_nonzero);
    is_int(total.errors_fatal, 0,
           "no slot was ever handed to two holders, nor freed under a live holder");
    ok(freed_total > 0, "kills landed while workers held slots, and retire freed them (%d)",
       freed_total);
    is_int(leftover, 0, "after each retire no slot carries the dead incarnation's token");
    is_int(shm_budget_in_use(seg), 0, "after killing everyone and retiring: 0 slots in use");
    is_int(atomic_load(&seg->waiters), 0, "and no waiter left counted");
    ok(total.waits > 0, "workers had to wait for budget (%llu times)",
       (unsigned long long)total.waits);
    is_int(total.timeouts, 0, "every wait was ended by a wake-up, none by its %d ms bound",
           WAIT_MS);
    is_int(backwards, 0, "the supervisor's totals never went backwards across %d retires",
           kills + KIDS);
    ok(reader_code == 0 && atomic_load(&arena->backwards) == 0 && atomic_load(&arena->reads) > 0,
       "nor did a reader's in another process (%llu reads)",
       (unsigned long long)atomic_load(&arena->reads));
    ok(total.acquires == atomic_load(&seg->retired.acquires) && total.acquires == last_acquires &&
           total.acquires > 0,
       "all counts ended up in retired: %llu acquires", (unsigned long long)total.acquires);
    munmap(arena, sizeof *arena);
    shm_destroy(seg);
    return done_testing();
}
