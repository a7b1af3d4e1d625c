/*
 * The shared segment's life: creation (header, zeroed budget, one non-blocking eventfd per
 * worker entry), sharing across fork, destruction, bad sizes refused, budget tokens.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/tap.h"

/* Orders tokens for the uniqueness check. */
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Open file descriptors of this process, counted by probing. */
static int count_open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            n++;
    return n;
}

static void test_create(void)
{
    struct shm_segment *seg = NULL;
    long page = sysconf(_SC_PAGESIZE);
    int fds_ok = 1, zero = 1, rc;
    pid_t pid;
    int status;

    rc = shm_create(&seg, 10);
    is_int(rc, 0, "shm_create with 10 slots succeeds");
    if (rc != 0)
        bail("cannot create a segment: %d", rc);
    ok(seg->magic == SHM_MAGIC, "header carries the magic");
    is_int(seg->layout_version, SHM_LAYOUT_VERSION, "header carries the layout version");
    is_int(seg->nslots, 10, "header carries the budget B");
    ok(seg->size >= sizeof(struct shm_segment) && seg->size % (size_t)page == 0,
       "size covers the struct in whole pages (%zu >= %zu)", seg->size, sizeof(struct shm_segment));
    for (int i = 0; i < SHM_MAX_SLOTS; i++)
        zero &= atomic_load(&seg->slots[i]) == 0;
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        zero &= atomic_load(&seg->workers[i].state) == SHM_STATE_EMPTY &&
                atomic_load(&seg->workers[i].counters.acquires) == 0;
    ok(zero && shm_budget_in_use(seg) == 0 && atomic_load(&seg->waiters) == 0,
       "a new segment is zeroed: every slot free, every entry empty");
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        int fd = seg->workers[i].wake_fd, fl = fcntl(fd, F_GETFL);
        fds_ok &= fd > 2 && fl >= 0 && (fl & O_NONBLOCK);
        for (int j = 0; j < i; j++)
            fds_ok &= seg->workers[j].wake_fd != fd;
    }
    ok(fds_ok, "every worker entry has its own non-blocking eventfd");
    ok((uintptr_t)&seg->workers[1] % 64 == 0 && sizeof(struct shm_worker) % 64 == 0,
       "worker blocks are cache-line aligned (%zu bytes)", sizeof(struct shm_worker));

    /* What a forked child writes, the parent reads: the mapping is shared. */
    pid = fork();
    if (pid == 0) {
        int slot = shm_budget_reserve(seg, shm_token(3, 1));
        atomic_store(&seg->workers[3].counters.queries, 42);
        _exit(slot >= 0 ? 0 : 1);
    }
    ok(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
       "a forked child reserves a slot");
    ok(shm_budget_in_use(seg) == 1 && atomic_load(&seg->workers[3].counters.queries) == 42,
       "the parent sees the child's slot and counter (MAP_SHARED)");

    int fd0 = seg->workers[0].wake_fd, fdl = seg->workers[SHM_MAX_WORKERS - 1].wake_fd;
    int memfd = seg->fd;
    int before = count_open_fds();
    shm_destroy(seg);
    ok(fcntl(fd0, F_GETFD) < 0 && fcntl(fdl, F_GETFD) < 0 && fcntl(memfd, F_GETFD) < 0 &&
           count_open_fds() == before - SHM_MAX_WORKERS - 1,
       "shm_destroy closes the %d eventfds and the memfd", SHM_MAX_WORKERS);
    before = count_open_fds();
    shm_destroy(NULL);
    is_int(count_open_fds(), before, "shm_destroy(NULL) closes nothing (and does not crash)");
}

static void test_errors(void)
{
    struct shm_segment *seg = (struct shm_segment *)&seg; /* a marker: must stay untouched */
    struct shm_segment *marker = seg;
    struct rlimit old, low;
    int before, rc;

    is_int(shm_create(&seg, 0), -EINVAL, "0 slots: -EINVAL");
    is_int(shm_create(&seg, SHM_MAX_SLOTS + 1), -EINVAL, "SHM_MAX_SLOTS + 1 slots: -EINVAL");
    is_int(shm_create(NULL, 4), -EINVAL, "no out pointer: -EINVAL");
    ok(seg == marker, "*out is not written on failure");

    rc = shm_create(&seg, SHM_MAX_SLOTS);
    is_int(rc, 0, "SHM_MAX_SLOTS slots is accepted");
    if (rc == 0) {
        int n = 0;
        while (shm_budget_reserve(seg, 1) >= 0)
            n++;
        is_int(n, SHM_MAX_SLOTS, "all SHM_MAX_SLOTS slots can be reserved");
        shm_destroy(seg);
    } else {
        ok(0, "all SHM_MAX_SLOTS slots can be reserved");
    }

    /* Out of descriptors half-way through the eventfds: an error, and nothing leaks. */
    if (getrlimit(RLIMIT_NOFILE, &old) != 0)
        bail("getrlimit: %s", strerror(errno));
    before = count_open_fds();
    low = old;
    low.rlim_cur = (rlim_t)before + SHM_MAX_WORKERS / 2;
    seg = marker;
    if (setrlimit(RLIMIT_NOFILE, &low) != 0)
        bail("setrlimit: %s", strerror(errno));
    rc = shm_create(&seg, 4);
    if (setrlimit(RLIMIT_NOFILE, &old) != 0)
        bail("setrlimit: %s", strerror(errno));
    is_int(rc, -EMFILE, "running out of descriptors fails with -EMFILE");
    ok(seg == marker && count_open_fds() == before, "and closes the eventfds it had made");
}

static void test_tokens(void)
{
    enum { GENS = 1000, N = (SHM_MAX_WORKERS + 1) * GENS };
    uint32_t *t = malloc(N * sizeof *t);
    int k = 0, nonzero = 1, distinct = 1;

    if (!t)
        bail("out of memory");
    for (uint32_t g = 0; g < GENS; g++) {
        for (uint32_t i = 0; i < SHM_MAX_WORKERS; i++)
            t[k++] = shm_token(i, g);
        t[k++] = shm_token(SHM_SUPERVISOR_INDEX, g);
    }
    for (int i = 0; i < N; i++)
        nonzero &= t[i] != 0;
    qsort(t, N, sizeof *t, cmp_u32);
    for (int i = 1; i < N; i++)
        distinct &= t[i] != t[i - 1];
    ok(nonzero, "a token is never 0 (also index 0 at generation 0)");
    ok(distinct, "tokens are distinct for every (index, generation), supervisor included");
    ok(shm_token(0, 1) != shm_token(1, 0) && shm_token(SHM_SUPERVISOR_INDEX, 0) != 0 &&
           shm_token(SHM_SUPERVISOR_INDEX, 0) != shm_token(SHM_SUPERVISOR_INDEX, 1),
       "supervisor tokens differ by generation");
    free(t);
}

static void test_clock(void)
{
    uint64_t a = shm_now_us();
    uint64_t wall = (uint64_t)time(NULL) * 1000000u;
    uint64_t b = shm_now_us();
    ok(a <= b && a + 2000000 > wall && a < wall + 2000000,
       "shm_now_us is CLOCK_REALTIME in microseconds");
}

int main(void)
{
    tap_timeout(20);
    test_create();
    test_errors();
    test_tokens();
    test_clock();
    return done_testing();
}
