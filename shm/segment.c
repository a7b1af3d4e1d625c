/*
 * The segment's life: mapping it shared from a memfd before fork, one eventfd per worker
 * entry, mapping it again in a new supervisor after a binary upgrade, unmapping it; budget tokens
 * and the clock every _us field uses. The layout checks below are what lets several processes use
 * the same bytes safely.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shm/shm.h"

/* Atomics in shared memory must be lock-free: a lock inside libatomic is per process. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "_Atomic uint32_t must be lock-free");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "_Atomic uint64_t must be lock-free");
_Static_assert(sizeof(_Atomic uint64_t) == sizeof(uint64_t), "atomic u64 has no extra state");
_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "atomic u32 has no extra state");

/* shm_counters_fold() and the folds of histograms walk these structs as uint64 arrays. */
_Static_assert(sizeof(struct shm_counters) == SHM_COUNTERS_N * sizeof(uint64_t),
               "struct shm_counters is an array of uint64");
_Static_assert(offsetof(struct shm_counters, pipelined) == (SHM_COUNTERS_N - 1) * sizeof(uint64_t),
               "struct shm_counters has no padding");
_Static_assert(sizeof(struct shm_hist) == (SHM_HIST_BUCKETS + 2) * sizeof(uint64_t),
               "struct shm_hist is an array of uint64");
_Static_assert(offsetof(struct shm_hist, sum_us) == (SHM_HIST_BUCKETS + 1) * sizeof(uint64_t),
               "struct shm_hist has no padding");
_Static_assert(sizeof(struct shm_hists) == 7 * sizeof(struct shm_hist),
               "struct shm_hists is an array of histograms");

/* One cache line (or more) per worker, so that workers never write each other's lines. */
_Static_assert(_Alignof(struct shm_worker) == 64, "struct shm_worker is cache-line aligned");
_Static_assert(sizeof(struct shm_worker) % 64 == 0, "struct shm_worker is whole cache lines");
_Static_assert(offsetof(struct shm_segment, workers) % 64 == 0, "workers[] starts on a line");
_Static_assert(offsetof(struct shm_worker, counters) % sizeof(uint64_t) == 0,
               "counters are 8-byte aligned");
_Static_assert(offsetof(struct shm_segment, slots) % sizeof(uint32_t) == 0,
               "slots are 4-byte aligned");
_Static_assert(offsetof(struct shm_slow_entry, seq) == 0 && sizeof(struct shm_slow_entry) % 8 == 0,
               "slow entries are 8-byte aligned");

/* The token's low byte: worker index + 1 (1..SHM_MAX_WORKERS), 0xff for the supervisor. */
_Static_assert(SHM_MAX_WORKERS < 0xff && SHM_SUPERVISOR_INDEX == 0xff,
               "worker indexes and the supervisor fit the token's low byte");
_Static_assert(SHM_MAX_SLOTS <= 0x7fffffff, "slot numbers are returned as int");

/* The mapping's length: the struct, rounded up to whole pages. */
static size_t segment_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t size = sizeof(struct shm_segment);

    if (page > 0)
        size = (size + (size_t)page - 1) / (size_t)page * (size_t)page;
    return size;
}

int shm_create(struct shm_segment **out, uint32_t nslots)
{
    struct shm_segment *seg;
    size_t size = segment_size();
    int i = 0, err, fd;

    if (out == NULL || nslots == 0 || nslots > SHM_MAX_SLOTS)
        return -EINVAL;
    /* A memfd rather than an anonymous mapping, so that a binary upgrade can hand the
     * same pages to the new supervisor. Close-on-exec: only an upgrade passes it on. */
    fd = memfd_create("pgcorral-shm", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    /* A new memfd reads as zeros: every slot free, every counter 0, every state EMPTY. */
    seg = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (seg == MAP_FAILED) {
        err = -errno;
        close(fd);
        return err;
    }
    seg->fd = fd;
    seg->magic = SHM_MAGIC;
    seg->layout_version = SHM_LAYOUT_VERSION;
    seg->nslots = nslots;
    atomic_store_explicit(&seg->budget, nslots, memory_order_relaxed);
    atomic_store_explicit(&seg->usable, nslots, memory_order_relaxed);
    atomic_store_explicit(&seg->lease_cap, nslots, memory_order_relaxed);
    seg->size = size;
    seg->supervisor_pid = (int32_t)getpid();
    /* Non-blocking, so that a drain never blocks and a writer never stalls on a full count;
     * no EFD_CLOEXEC: workers are forked, never exec'd, and need them all. */
    for (i = 0; i < SHM_MAX_WORKERS; i++) {
        seg->workers[i].wake_fd = eventfd(0, EFD_NONBLOCK);
        if (seg->workers[i].wake_fd < 0) {
            err = -errno;
            goto fail;
        }
    }
    *out = seg;
    return 0;

fail:
    while (i-- > 0)
        close(seg->workers[i].wake_fd);
    munmap(seg, size);
    close(fd);
    return err;
}

int shm_adopt(struct shm_segment **out, int fd)
{
    struct shm_segment *seg;
    size_t size = segment_size();
    struct stat st;
    int flags, err;

    if (out == NULL || fd < 0 || fstat(fd, &st) < 0)
        return -EINVAL;
    /* A size of another build maps a layout we would misread: refuse before mapping. */
    if (st.st_size != (off_t)size)
        return -EPROTO;
    seg = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (seg == MAP_FAILED)
        return -errno;
    if (seg->magic != SHM_MAGIC || seg->layout_version != SHM_LAYOUT_VERSION || seg->size != size ||
        seg->fd != fd || seg->nslots == 0 || seg->nslots > SHM_MAX_SLOTS) {
        munmap(seg, size);
        return -EPROTO;
    }
    flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
        err = -errno;
        munmap(seg, size);
        return err;
    }
    *out = seg;
    return 0;
}

void shm_destroy(struct shm_segment *seg)
{
    int fd;

    if (seg == NULL)
        return;
    fd = seg->fd;
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        close(seg->workers[i].wake_fd);
    munmap(seg, seg->size);
    close(fd);
}

uint32_t shm_token(uint32_t index, uint32_t generation)
{
    uint32_t low;

    assert(index < SHM_MAX_WORKERS || index == SHM_SUPERVISOR_INDEX);
    low = index == SHM_SUPERVISOR_INDEX ? 0xffu : (index % SHM_MAX_WORKERS) + 1;
    return (generation << 8) | low;
}

uint64_t shm_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
