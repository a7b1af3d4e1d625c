/*
 * The global connection budget: reservations stop at exactly B, releases and reclaims free
 * exactly the right slots, concurrent processes never share a slot, and a worker waiting
 * for budget is woken through its eventfd by a release or reclaim in another process.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/tap.h"

/* Bound on every wait for a wake-up or a child: a failure, never a pause. */
#define WAKE_TIMEOUT_MS 5000

/* Slots holding token. */
static int slots_of(const struct shm_segment *seg, uint32_t token)
{
    int n = 0;
    for (uint32_t i = 0; i < seg->nslots; i++)
        n += atomic_load(&seg->slots[i]) == token;
    return n;
}

/* The first slot holding token, or -1. */
static int slot_with(const struct shm_segment *seg, uint32_t token)
{
    for (uint32_t i = 0; i < seg->nslots; i++)
        if (atomic_load(&seg->slots[i]) == token)
            return (int)i;
    return -1;
}

/* Waits for pid; returns its exit code, or -1 if it did not exit normally. */
static int wait_child(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Whether fd becomes readable within timeout_ms. */
static int readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

static void test_single_process(void)
{
    enum { B = 5 };
    struct shm_segment *seg;
    uint32_t a = shm_token(0, 1), b = shm_token(1, 1);
    int slots[B], distinct = 1, all_ok = 1, s;

    if (shm_create(&seg, B) != 0)
        bail("shm_create failed");
    for (int i = 0; i < B; i++) {
        slots[i] = shm_budget_reserve(seg, a);
        all_ok &= slots[i] >= 0 && slots[i] < B;
        for (int j = 0; j < i; j++)
            distinct &= slots[i] != slots[j];
    }
    ok(all_ok && distinct, "B = %d reservations get %d distinct slots", B, B);
    is_int(shm_budget_reserve(seg, a), -EAGAIN, "reservation B + 1 fails with -EAGAIN");
    is_int(shm_budget_reserve(seg, b), -EAGAIN, "also for another token");
    is_int(shm_budget_in_use(seg), B, "in use: B");

    is_int(shm_budget_release(seg, slots[2], b), -EINVAL, "release with the wrong token: -EINVAL");
    is_int(shm_budget_in_use(seg), B, "and the slot stays reserved");
    is_int(shm_budget_release(seg, -1, a), -EINVAL, "release of slot -1: -EINVAL");
    is_int(shm_budget_release(seg, B, a), -EINVAL, "release of slot B: -EINVAL");
    is_int(shm_budget_release(seg, slots[2], 0), -EINVAL, "release with token 0: -EINVAL");
    is_int(shm_budget_release(seg, slots[2], a), 0, "release with the right token frees it");
    is_int(shm_budget_in_use(seg), B - 1, "in use: B - 1");
    is_int(shm_budget_release(seg, slots[2], a), -EINVAL, "a second release of it: -EINVAL");
    is_int(shm_budget_reserve(seg, 0), -EINVAL, "token 0 cannot reserve");
    s = shm_budget_reserve(seg, b);
    is_int(s, slots[2], "the freed slot can be reserved again");
    is_int(shm_budget_reserve(seg, b), -EAGAIN, "and then the budget is full again");

    /* a holds 4 slots, b holds 1; move one of a's to b so that the split is 3 / 2. */
    if (shm_budget_release(seg, slots[0], a) != 0 || shm_budget_reserve(seg, b) < 0)
        bail("cannot rearrange slots");
    is_int(slots_of(seg, a) * 10 + slots_of(seg, b), 32, "a holds 3 slots and b 2");
    is_int(shm_budget_reclaim(seg, a), 3, "reclaim(a) frees a's 3 slots");
    is_int(slots_of(seg, a) * 10 + slots_of(seg, b), 2, "b still holds its 2, a none");
    is_int(shm_budget_reclaim(seg, a), 0, "reclaim(a) again frees nothing");
    is_int(shm_budget_reclaim(seg, 0), 0, "reclaim(0) frees nothing (free slots are not owned)");
    is_int(shm_budget_in_use(seg), 2, "in use: 2");
    is_int(shm_budget_reclaim(seg, b), 2, "reclaim(b) frees b's 2");
    is_int(shm_budget_in_use(seg), 0, "in use: 0");
    shm_destroy(seg);
}

/*
 * Several processes reserve and release at once (churn), then all reserve until the
 * budget is full. A private shared array records who believes it owns each slot: a slot
 * handed to two processes at once shows up there.
 */
static void test_concurrent_reserve(void)
{
    enum { B = SHM_MAX_SLOTS, KIDS = 4, CHURN = 20000 };
    struct shm_segment *seg;
    _Atomic uint32_t *owner;
    pid_t pids[KIDS];
    int got[KIDS], sum = 0, owned = 0, fine = 1, go[2], code;
    uint64_t doubles = 0;

    /* owner[B] counts the children done with the churn: the fill starts together. */
    owner = mmap(NULL, (B + 1) * sizeof *owner, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                 -1, 0);
    if (owner == MAP_FAILED || shm_create(&seg, B) != 0 || pipe(go) != 0)
        bail("setup failed");
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork();
        if (pids[k] < 0)
            bail("fork: %s", strerror(errno));
        if (pids[k] == 0) {
            uint32_t tok = shm_token((uint32_t)k, 7);
            char c;
            int n = 0;
            close(go[1]);
            if (read(go[0], &c, 1) != 0) /* all start when the parent closes the pipe */
                _exit(1);
            for (int i = 0; i < CHURN; i++) {
                int s = shm_budget_reserve(seg, tok);
                if (s < 0)
                    _exit(2);
                if (atomic_exchange(&owner[s], tok) != 0)
                    shm_count(&seg->workers[k].counters.errors_fatal, 1);
                if (atomic_exchange(&owner[s], 0) != tok)
                    shm_count(&seg->workers[k].counters.errors_fatal, 1);
                if (shm_budget_release(seg, s, tok) != 0)
                    _exit(3);
            }
            atomic_fetch_add(&owner[B], 1);
            while (atomic_load(&owner[B]) < KIDS)
                sched_yield();
            while (shm_budget_reserve(seg, tok) >= 0)
                n++;
            /* Exit codes are 8 bits: report through the child's own stats block. */
            atomic_store(&seg->workers[k].counters.acquires, (uint64_t)n);
            _exit(0);
        }
    }
    close(go[0]);
    close(go[1]);
    for (int k = 0; k < KIDS; k++)
        if ((code = wait_child(pids[k])) != 0) {
            diag("  child %d exited with %d", k, code);
            fine = 0;
        }
    for (int k = 0; k < KIDS; k++) {
        got[k] = (int)atomic_load(&seg->workers[k].counters.acquires);
        doubles += atomic_load(&seg->workers[k].counters.errors_fatal);
        sum += got[k];
        owned += slots_of(seg, shm_token((uint32_t)k, 7));
        fine &= slots_of(seg, shm_token((uint32_t)k, 7)) == got[k];
    }
    ok(fine && doubles == 0,
       "%d processes x %d reserve/release: no slot is ever handed to two at once", KIDS, CHURN);
    if (doubles)
        diag("  %llu double allocations", (unsigned long long)doubles);
    ok(fine && sum == B && owned == B,
       "then racing to fill it they get exactly B = %d slots (%d+%d+%d+%d), each owned by the "
       "process that got it",
       B, got[0], got[1], got[2], got[3]);
    munmap(owner, (B + 1) * sizeof *owner);
    shm_destroy(seg);
}

/*
 * A forked worker finds the budget full, announces that it waits and blocks in poll() on
 * its wake_fd; the parent frees a slot (by release, or by reclaim of a dead worker's token)
 * and the worker must wake and get that slot.
 */
static void test_waiter_woken(int by_reclaim)
{
    enum { B = 3, WAITER = 5 };
    const char *how = by_reclaim ? "reclaim" : "release";
    struct shm_segment *seg;
    uint32_t holder = shm_token(1, 1), mine = shm_token(WAITER, 1);
    int p[2], slots[B], code;
    char c;
    pid_t pid;

    if (shm_create(&seg, B) != 0 || pipe(p) != 0)
        bail("setup failed");
    for (int i = 0; i < B; i++)
        slots[i] = shm_budget_reserve(seg, holder);
    pid = fork();
    if (pid < 0)
        bail("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = seg->workers[WAITER].wake_fd, s;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        shm_budget_wait_begin(seg, WAITER);
        if (shm_budget_reserve(seg, mine) >= 0)
            _exit(2); /* the budget was full: no slot expected */
        if (write(p[1], "w", 1) != 1)
            _exit(3);
        if (poll(&pfd, 1, WAKE_TIMEOUT_MS) != 1)
            _exit(4); /* never woken */
        if (!shm_budget_wake_drain(seg, WAITER))
            _exit(5);
        s = shm_budget_reserve(seg, mine);
        shm_budget_wait_end(seg, WAITER);
        _exit(s >= 0 ? 0 : 6);
    }
    close(p[1]);
    if (read(p[0], &c, 1) != 1)
        bail("the waiter died before waiting");
    ok(atomic_load(&seg->waiters) == 1 && atomic_load(&seg->workers[WAITER].waiting_budget) == 1,
       "%s: the waiter is counted and flagged", how);
    if (by_reclaim)
        is_int(shm_budget_reclaim(seg, holder), B, "%s frees the dead holder's %d slots", how, B);
    else
        is_int(shm_budget_release(seg, slots[1], holder), 0, "%s of one slot", how);
    code = wait_child(pid);
    is_int(code, 0, "%s in another process wakes the waiter in poll(), which gets the slot", how);
    is_int(slots_of(seg, mine), 1, "%s: the slot now carries the waiter's token", how);
    ok(atomic_load(&seg->waiters) == 0 && atomic_load(&seg->workers[WAITER].waiting_budget) == 0,
       "%s: wait_end clears the flag and the count", how);

    /* Nobody waits any more: a release must not touch the eventfd (the fast path). */
    is_int(shm_budget_release(seg, slot_with(seg, mine), mine), 0,
           "%s: the waiter's slot is released", how);
    ok(!readable(seg->workers[WAITER].wake_fd, 0), "%s: with no waiter, a release wakes nobody",
       how);
    close(p[0]);
    shm_destroy(seg);
}

/* A worker killed while it waits must not leave the waiter count up: the supervisor's
 * retire clears it, so releases go back to the one-load fast path. */
static void test_killed_waiter(void)
{
    enum { B = 1, W = 9 };
    struct shm_segment *seg;
    int p[2], slot;
    char c;
    pid_t pid;

    if (shm_create(&seg, B) != 0 || pipe(p) != 0)
        bail("setup failed");
    slot = shm_budget_reserve(seg, shm_token(0, 1));
    pid = fork();
    if (pid == 0) {
        shm_budget_wait_begin(seg, W);
        if (write(p[1], "w", 1) != 1)
            _exit(3);
        for (;;)
            pause();
    }
    close(p[1]);
    if (pid < 0 || read(p[0], &c, 1) != 1)
        bail("the waiter did not start");
    /* A wake-up that the waiter never consumed. */
    if (eventfd_write(seg->workers[W].wake_fd, 1) != 0)
        bail("eventfd_write: %s", strerror(errno));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    is_int(atomic_load(&seg->waiters), 1, "a waiter killed while waiting is still counted");
    atomic_store(&seg->workers[W].generation, 1);
    is_int(shm_worker_retire(seg, W), 0, "retire of the dead waiter (it held no slot)");
    ok(atomic_load(&seg->waiters) == 0 && atomic_load(&seg->workers[W].waiting_budget) == 0,
       "retire ends its wait: no waiter left");
    is_int(shm_budget_release(seg, slot, shm_token(0, 1)), 0, "a release");
    ok(!readable(seg->workers[W].wake_fd, 0),
       "wakes nobody, and the dead waiter's pending wake-up was drained");
    close(p[0]);
    shm_destroy(seg);
}

int main(void)
{
    tap_timeout(30);
    test_single_process();
    test_concurrent_reserve();
    test_waiter_woken(0);
    test_waiter_woken(1);
    test_killed_waiter();
    return done_testing();
}
