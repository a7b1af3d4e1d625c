/*
 * The shared-memory segment: the global connection budget and every worker's statistics.
 * The supervisor maps it (MAP_SHARED, from a memfd) before it forks, so every worker sees
 * the same pages at the same address. It holds fixed arrays only, no pointers. A binary
 * upgrade (SIGUSR2) hands the memfd to the new supervisor across exec, which maps the same
 * pages again (shm_adopt): one budget for both generations while they overlap.
 *
 *   struct shm_segment
 *   +--------------------+
 *   | header             |  magic, layout version, size, slot and worker counts
 *   | slots[B]           |  budget: one _Atomic uint32_t owner token per connection
 *   | workers[MAX]       |  one cache-line aligned stats block per worker-table entry
 *   | retired            |  counters and histograms folded in from dead workers
 *   | slow ring          |  the last SHM_SLOW_RING slow queries
 *   | queue depths       |  the supervisor's last count of jobs by queue and state
 *   | retired_http       |  HTTP answers by route, method and status of dead workers
 *   +--------------------+
 *
 * A token is (generation << 8) | (index + 1), with 0xff in the low byte for the supervisor
 * (generation modulo 2^24): one CAS 0 -> token both reserves a slot and records its owner,
 * so the supervisor can free a dead worker's slots exactly (no crash window between
 * "reserve" and "record owner" can leak one).
 *
 * Budget and capacity: the segment holds nslots slots, the most B may grow to in this run
 * (ctl scale, reload, a larger lease); `budget` is B now, and `usable` never exceeds it.
 *
 * Usable slots: after a server restart with a smaller max_connections the budget may no
 * longer fit. `usable` (<= B) caps the slots that may be reserved: reservations take the
 * lowest free slot below it, and a connection that holds a slot at or above it is closed
 * at its next release, so the open connections shrink to fit. Whoever reads the server's
 * limits on a new connection writes it (shm_budget_fit); the value depends only on B and
 * the server, so concurrent writers agree.
 *
 * The lease: on top of `usable`, the cluster lease (coordinator/lease.c) caps how many
 * slots worker tokens may hold together (`lease_cap`; the supervisor's own connection is
 * not counted, the lease includes one slot for it) and can fence the node: no worker
 * reserves a new slot while `lease_fenced` is set. A reservation counts after its CAS and
 * backs off when that made the worker slots exceed the cap: of two that race, the later
 * count sees both. When the cap drops below what workers hold, `lease_excess` tells the
 * pools to close connections as they come back (one relaxed load on their release path).
 *
 * Waiting for budget: `waiters` counts the workers whose waiting_budget flag is set. It is
 * raised before the flag and lowered after it, so it is never below the number of flags:
 * no wake-up is lost. A worker SIGKILLed between those two instructions leaves it one too
 * high for good (shm_worker_retire() fixes every other case): releases then scan the flags
 * for nothing, and readers that take `waiters > 0` as "someone waits" are misled. A release
 * reads `waiters` and, only when it is not 0, writes 1 to the wake_fd of every waiting worker.
 */
#ifndef PGCORRAL_SHM_H
#define PGCORRAL_SHM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SHM_MAGIC 0x31524f4343475050ULL /* "PPGCCOR1" */
#define SHM_LAYOUT_VERSION 7
#define SHM_MAX_SLOTS 4096
#define SHM_MAX_WORKERS 128 /* worker-table entries; index 255 is the supervisor */
#define SHM_SUPERVISOR_INDEX 255
#define SHM_MAX_HOLDERS 64 /* connections per worker whose holder is tracked */
#define SHM_LABEL_LEN 48
#define SHM_HIST_BUCKETS 40 /* log2 buckets of microseconds: bucket i holds [2^i-1, 2^(i+1)-1) */
/* What shm_hist_quantile() reports for the last bucket, which also holds everything larger. */
#define SHM_HIST_MAX_US ((UINT64_C(1) << SHM_HIST_BUCKETS) - 1)
#define SHM_SLOW_RING 64
#define SHM_MAX_QUEUES 32 /* job queues whose depth /metrics reports (the first, by name) */
#define SHM_SLOW_TEXT_LEN 240
#define SHM_HTTP_ROUTES 32 /* route labels per HTTP block; more go to route "other" */
#define SHM_HTTP_SERIES 96 /* (route, method, status) counters per HTTP block */

enum shm_role { SHM_ROLE_NONE = 0, SHM_ROLE_WEB = 1, SHM_ROLE_JOB = 2 };

enum shm_worker_state {
    SHM_STATE_EMPTY = 0, /* table entry unused */
    SHM_STATE_STARTING,  /* forked, not yet serving */
    SHM_STATE_READY,     /* serving */
    SHM_STATE_DRAINING,  /* finishing in-flight work before exit */
    SHM_STATE_DEAD,      /* exited; the supervisor has not respawned it yet */
};

/* A histogram of durations in microseconds. Written by one process (relaxed). */
struct shm_hist {
    _Atomic uint64_t buckets[SHM_HIST_BUCKETS];
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
};

/*
 * Monotonic counters of one worker. Written by that worker only (relaxed atomics), read
 * by the supervisor. Keep every field an _Atomic uint64_t: shm_counters_fold() walks the
 * struct as an array.
 */
struct shm_counters {
    _Atomic uint64_t acquires;         /* pool acquires that got a connection */
    _Atomic uint64_t waits;            /* acquires that had to queue */
    _Atomic uint64_t timeouts;         /* acquires that hit pool_timeout */
    _Atomic uint64_t connects;         /* connections opened */
    _Atomic uint64_t connect_errors;   /* connection attempts that failed */
    _Atomic uint64_t queries;          /* statements run */
    _Atomic uint64_t errors_transient; /* query errors classified transient */
    _Atomic uint64_t errors_fatal;     /* query errors that are not retried */
    _Atomic uint64_t retries;          /* retries performed */
    _Atomic uint64_t slow_queries;     /* queries over the slow threshold */
    _Atomic uint64_t http_accepted;    /* HTTP connections accepted (the supervisor's check
                                          that a web worker still accepts reads it) */
    _Atomic uint64_t http_requests;
    _Atomic uint64_t http_1xx, http_2xx, http_3xx, http_4xx, http_5xx;
    _Atomic uint64_t jobs_done;
    _Atomic uint64_t jobs_failed;
    _Atomic uint64_t jobs_retried;
    _Atomic uint64_t unavailable; /* acquires refused at once: the database was unreachable */
    _Atomic uint64_t access_log_dropped; /* access log lines the writer could not keep up with */
    _Atomic uint64_t pipelined;          /* statements sent behind others on a busy connection */
};
#define SHM_COUNTERS_N (sizeof(struct shm_counters) / sizeof(_Atomic uint64_t))

/* Histograms of one worker; same writer rule as the counters. */
struct shm_hists {
    struct shm_hist acquire_wait; /* time from acquire to getting a connection */
    struct shm_hist query;        /* statement round trip */
    struct shm_hist http;         /* request to response */
    struct shm_hist job;          /* job run time */
    struct shm_hist job_wait;     /* enqueue (or run_at, when later) to handler start */
    struct shm_hist claim_batch;  /* jobs per claim statement: counts, not microseconds */
    struct shm_hist pipe_depth;   /* statements in flight on the connection, the one sent
                                     included, at each auto-pipelined send: counts */
};

/*
 * HTTP answers by route, method and status, and answer times by route, for /metrics
 * (pgcorral_http_requests_total{code,method,route}, pgcorral_http_request_duration_seconds
 * {route}). Bounded: at most SHM_HTTP_ROUTES route names (more are counted as route
 * "other") and SHM_HTTP_SERIES (route, method, status) counters (when full, the series goes
 * to route "other"; when that does not fit either, to `dropped`).
 *
 * A worker's block is written by that worker only; retired_http by the supervisor only
 * (shm_worker_retire, under retire_seq). Entries are claimed once and keep their key until
 * the block is retired: the name (or key) is written first, then `used` (key) with release.
 */
enum shm_http_method {
    SHM_HTTP_OTHER = 0, /* any method not listed */
    SHM_HTTP_GET,
    SHM_HTTP_HEAD,
    SHM_HTTP_POST,
    SHM_HTTP_PUT,
    SHM_HTTP_DELETE,
    SHM_HTTP_PATCH,
    SHM_HTTP_OPTIONS,
    SHM_HTTP_METHODS
};

/* A route label: the route's pattern ("/api/v1/jobs/:id"), "unmatched", ... */
struct shm_http_route {
    _Atomic uint32_t used; /* 0 = free; 1 = name set (release) */
    uint32_t pad;
    char name[SHM_LABEL_LEN]; /* NUL-terminated; cut to SHM_LABEL_LEN - 1 bytes */
    struct shm_hist duration; /* first byte of the request to the answer, microseconds */
};

/* One counter of answers. key: 0 = free, else SHM_HTTP_KEY(route, method, status). */
struct shm_http_series {
    _Atomic uint64_t count;
    _Atomic uint32_t key;
    uint32_t pad;
};

/* route 0 is "other"; route r >= 1 is routes[r - 1]. */
#define SHM_HTTP_KEY(route, method, status)                                                        \
    (0x80000000u | ((uint32_t)(status)&0x3ffu) << 16 | ((uint32_t)(method)&0xffu) << 8 |           \
     ((uint32_t)(route)&0xffu))
#define SHM_HTTP_KEY_ROUTE(key) ((key)&0xffu)
#define SHM_HTTP_KEY_METHOD(key) (((key) >> 8) & 0xffu)
#define SHM_HTTP_KEY_STATUS(key) (((key) >> 16) & 0x3ffu)

struct shm_http {
    struct shm_http_route routes[SHM_HTTP_ROUTES];
    struct shm_http_series series[SHM_HTTP_SERIES];
    struct shm_hist other_duration; /* answer times of route "other" */
    _Atomic uint64_t dropped;       /* answers that no series could take */
};

/* The current holder of one pooled connection, for leak and timeout reports. */
struct shm_holder {
    _Atomic uint64_t since_us; /* 0 = slot unused; else when it was checked out (CLOCK_REALTIME) */
    char label[SHM_LABEL_LEN]; /* route or job id; NUL-terminated */
};

/* One worker-table entry. Written by its worker, except where a field says otherwise. */
struct shm_worker {
    _Atomic uint32_t state;          /* enum shm_worker_state; supervisor and worker */
    _Atomic int32_t pid;             /* supervisor, at fork */
    _Atomic uint32_t generation;     /* supervisor, at fork; part of the budget token */
    _Atomic uint32_t role;           /* enum shm_role; supervisor */
    _Atomic uint32_t role_index;     /* "web 0", "job 1": supervisor */
    _Atomic uint32_t waiting_budget; /* worker: 1 while it waits for a budget slot */
    int wake_fd;                     /* eventfd created by the supervisor before any fork */
    _Atomic uint64_t started_us;     /* supervisor, at fork (CLOCK_REALTIME) */
    _Atomic uint64_t heartbeat_us;   /* worker, from its loop (CLOCK_REALTIME) */
    /* gauges, worker */
    _Atomic uint32_t pool_open, pool_in_use, pool_idle, pool_waiting, pool_limit;
    _Atomic uint32_t pool_db_down; /* 1 while the pool finds the database unreachable */
    /* Auto-pipelining now: connections in pipeline mode, statements in flight on them. */
    _Atomic uint32_t pool_pipes, pool_pipe_depth;
    _Atomic uint32_t http_open;
    /* Job worker: the claim_seq from which the jobs it holds have not started (0 = not
     * known: count them all as started). Written (release) before each handler starts;
     * only ever grows. Read by the supervisor after the worker died, before
     * shm_worker_retire(), to give those jobs their attempt back (coordinator/orphans.c). */
    _Atomic uint64_t jobs_unstarted_from;
    struct shm_counters counters;
    struct shm_hists hists;
    struct shm_holder holders[SHM_MAX_HOLDERS];
    struct shm_http http; /* worker */
} __attribute__((aligned(64)));

/*
 * One slow query. In the ring, seq is 0 (never written), 2 * (n + 1) once push number n
 * (0, 1, 2, ...) is complete, or (writer pid << 1) | 1 while a push writes it; readers skip
 * odd entries, and shm_worker_retire() frees those a dead writer left odd. In copies made by
 * shm_slow_read(), seq is the push number n.
 */
struct shm_slow_entry {
    _Atomic uint64_t seq; /* odd while being written; readers retry or skip */
    uint64_t ts_us;
    uint64_t duration_us;
    int32_t pid;
    uint32_t role, role_index;
    char query[SHM_SLOW_TEXT_LEN];
};

/* The jobs of one queue by state, as the supervisor's sweep last counted them. */
struct shm_queue_depth {
    char name[SHM_LABEL_LEN]; /* NUL-terminated; a longer name is cut */
    uint64_t ready, scheduled, running, failed;
};

/* The supervisor's last count of every queue, for /metrics in the web workers. */
struct shm_queue_depths {
    uint64_t at_us;   /* when it was read (CLOCK_REALTIME); 0 = never */
    uint32_t nqueues; /* entries used in queues[] */
    uint32_t omitted; /* queues past SHM_MAX_QUEUES, not reported */
    struct shm_queue_depth queues[SHM_MAX_QUEUES];
};

struct shm_segment {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t nslots; /* the slots array in use: the largest budget this run may grow to */
    size_t size;
    /* The memfd behind the mapping. Like every wake_fd, the same number in every process
     * that maps it: workers inherit it by fork, a new supervisor by exec. */
    int fd;
    _Atomic uint32_t budget;  /* B, this node's budget (1..nslots): grows online (ctl scale) */
    _Atomic uint32_t usable;  /* slots below this may be reserved (1..budget); see the top */
    _Atomic uint32_t waiters; /* workers waiting for a budget slot (seq_cst) */
    /* The server's limits behind `usable`, as last read (for reports; 0 = not read since
     * start). Written with it by shm_budget_fit; relaxed. */
    _Atomic int32_t server_max_connections, server_reserved;
    /* The lease (see the top): written by the supervisor, read by every reservation. */
    _Atomic uint32_t lease_cap;    /* slots worker tokens may hold together; nslots = no cap */
    _Atomic uint32_t lease_fenced; /* 1: no new worker reservation (the lease is not trusted) */
    _Atomic uint32_t lease_excess; /* 1: workers hold more than lease_cap; pools shed */
    /* What the last renewal said, for reports (relaxed; 0 = no lease yet). */
    _Atomic uint32_t cluster_budget, cluster_nodes, lease_granted, lease_target;
    _Atomic uint64_t lease_renewed_us; /* CLOCK_REALTIME of the last successful renewal */
    _Atomic uint64_t lease_fences;     /* times the node stopped trusting its lease */
    int32_t supervisor_pid; /* the supervisor serving now: shm_create, then shm_adopt after a
                               binary upgrade (for its process_* metrics) */
    _Atomic uint32_t slots[SHM_MAX_SLOTS];
    struct shm_worker workers[SHM_MAX_WORKERS];
    /* Totals of dead incarnations, written by a supervisor (two while a binary upgrade
     * overlaps them: retire_seq is taken with a CAS, so they take turns). */
    struct shm_counters retired;
    struct shm_hists retired_hists;
    _Atomic uint64_t retire_seq; /* supervisor: odd while it moves a block into retired */
    _Atomic uint64_t slow_next;  /* next slow-ring sequence number */
    struct shm_slow_entry slow[SHM_SLOW_RING];
    _Atomic uint64_t depths_seq;    /* supervisor: odd while it rewrites depths (CAS-taken) */
    struct shm_queue_depths depths; /* supervisor writes; anyone reads (shm_depths_read) */
    struct shm_http retired_http;   /* supervisor only: HTTP answers of dead incarnations */
};

/*
 * Maps a new zeroed segment with nslots budget slots (1..SHM_MAX_SLOTS) and creates
 * one eventfd per worker entry. Returns 0 and writes *out, or -EINVAL / -errno.
 * Start-up only, before fork. Caller releases with shm_destroy().
 */
__attribute__((warn_unused_result)) int shm_create(struct shm_segment **out, uint32_t nslots);

/*
 * Maps the segment behind fd (a memfd of shm_create() inherited across exec by a binary
 * upgrade) without changing it: the budget, its slots and every worker entry stay as the
 * previous supervisor left them, and the wake_fds are the inherited descriptors. Returns
 * 0 and writes *out; -EPROTO when the segment's magic, layout version or size is not this
 * build's (the binaries disagree on the layout), -EINVAL for a bad fd, or -errno. On
 * success the segment owns fd (shm_destroy closes it) and it is made close-on-exec again.
 */
__attribute__((warn_unused_result)) int shm_adopt(struct shm_segment **out, int fd);

/* Unmaps the segment and closes the eventfds. shm_destroy(NULL) does nothing. */
void shm_destroy(struct shm_segment *seg);

/* The budget token of worker index (0..SHM_MAX_WORKERS-1 or SHM_SUPERVISOR_INDEX) at a
 * generation. Never 0. */
uint32_t shm_token(uint32_t index, uint32_t generation);

/*
 * Reserves one budget slot for token, with a CAS 0 -> token: the lowest free slot below
 * `usable`, so that connections stay packed at the bottom and a smaller cap finds them
 * inside it. Returns the slot number (>= 0), or -EAGAIN when every usable slot is taken,
 * -EINVAL for token 0. Any process, any thread. Sequentially consistent (a full barrier
 * when it succeeds).
 */
__attribute__((warn_unused_result)) int shm_budget_reserve(struct shm_segment *seg, uint32_t token);

/*
 * Frees slot (CAS token -> 0) once its connection is closed, and wakes workers that wait
 * for a slot. Returns 0, or -EINVAL when the slot does not hold token (a bug, or the
 * supervisor already reclaimed it) or is out of range. Any process. Full barrier.
 */
int shm_budget_release(struct shm_segment *seg, int slot, uint32_t token);

/*
 * Frees every slot that holds token: the supervisor calls it after waitpid() of a dead
 * worker incarnation, before respawning. Returns how many slots it freed (0 for token 0);
 * wakes waiters when that is more than 0. Full barrier.
 */
int shm_budget_reclaim(struct shm_segment *seg, uint32_t token);

/* Slots currently reserved (a snapshot; exact only when nobody is changing them). */
uint32_t shm_budget_in_use(const struct shm_segment *seg);

/* Slots held by worker tokens (all but the supervisor's), a snapshot like the above. */
uint32_t shm_budget_workers_in_use(const struct shm_segment *seg);

/*
 * The supervisor applies its lease: worker tokens may hold at most cap slots together,
 * and none reserves while fenced. Raises lease_excess when workers hold more than cap (the
 * pools then close connections as they are released) and wakes budget waiters when the
 * cap grows or the fence lifts. Full barrier.
 */
void shm_budget_set_lease(struct shm_segment *seg, uint32_t cap, bool fenced);

/* Whether the pools must give back a connection now: lease_excess is raised and workers
 * still hold more than the cap (a scan only when the flag is up). */
bool shm_budget_over_lease(struct shm_segment *seg);

/*
 * Fits the budget to what the server can take now: usable = the server's max_connections
 * minus its reserved connections (reserved = superuser_reserved_connections +
 * reserved_connections), clamped to 1..B (`budget`), and remembers the limits for reports. Returns
 * the previous `usable` (the caller logs a change once: only one of several concurrent
 * callers sees it change). Wakes budget waiters when it grows. Any process. Full barrier.
 */
uint32_t shm_budget_fit(struct shm_segment *seg, int max_connections, int reserved);

/*
 * Sets B (1..nslots) and fits `usable` to it and to the server's limits as last read.
 * Returns 0, or -EINVAL out of range. Wakes budget waiters when usable grows. Supervisor.
 */
int shm_budget_resize(struct shm_segment *seg, uint32_t budget);

/* B now (1..nslots). Relaxed: reports and the supervisor's checks. */
static inline uint32_t shm_budget_size(const struct shm_segment *seg)
{
    return atomic_load_explicit(&seg->budget, memory_order_relaxed);
}

/* Slots that may be reserved now (1..B). Relaxed: a slot above it is given back lazily. */
static inline uint32_t shm_budget_usable(const struct shm_segment *seg)
{
    return atomic_load_explicit(&seg->usable, memory_order_relaxed);
}

/*
 * A worker that found no free slot announces that it waits (waiting_budget = 1, waiters++)
 * before trying once more, then watches its wake_fd. shm_budget_wait_end() undoes it.
 * Every release or reclaim writes the wake_fd of each waiting worker. Both are idempotent
 * and sequentially consistent; worker_index is 0..SHM_MAX_WORKERS-1 (the caller's entry).
 * shm_worker_retire() ends a dead worker's wait.
 */
void shm_budget_wait_begin(struct shm_segment *seg, int worker_index);
void shm_budget_wait_end(struct shm_segment *seg, int worker_index);

/*
 * Reads the worker's wake_fd (non-blocking) so that a level-triggered poll stops firing.
 * Returns true if a wake-up was pending. Wake-ups can be spurious: retry the reservation.
 */
bool shm_budget_wake_drain(struct shm_segment *seg, int worker_index);

/* Counter and histogram updates by the owning worker. Relaxed. */
static inline void shm_count(_Atomic uint64_t *counter, uint64_t n)
{
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}
void shm_hist_add(struct shm_hist *h, uint64_t us);

/*
 * Value at quantile q (0..1, clamped) of h, as the upper bound of the bucket that holds it,
 * in microseconds: the q-th value (nearest rank) lies in bucket i, so it is below 2^(i+1)-1,
 * which is returned (SHM_HIST_MAX_US for the last, open-ended bucket). 0 for an empty
 * histogram. Any process; a snapshot while the owner keeps adding.
 */
uint64_t shm_hist_quantile(const struct shm_hist *h, double q);

/* dst += src, counter by counter / bucket by bucket. dst is written by the caller only. */
void shm_counters_fold(struct shm_counters *dst, const struct shm_counters *src);
void shm_hists_fold(struct shm_hists *dst, const struct shm_hists *src);

/*
 * Supervisor, after a worker incarnation died and before its entry is reused: folds its
 * counters, histograms and HTTP block into retired, zeroes them, its gauges, holders and
 * jobs_unstarted_from (read what the dead worker left there first), ends its
 * budget wait, drains its wake_fd, frees slow-ring entries it left half-written, and frees
 * the budget slots of shm_token(index, generation) (shm_budget_reclaim). Leaves state, pid,
 * generation and role to the supervisor. Returns the number of slots freed, or -EINVAL for
 * an index outside 0..SHM_MAX_WORKERS-1. Readers of shm_counters_total() never see the
 * totals go backwards or count a block twice meanwhile.
 */
int shm_worker_retire(struct shm_segment *seg, int worker_index);

/*
 * Sum of retired and every live worker's counters / histograms into *out (zeroed first).
 * Any process; consistent with shm_worker_retire() running in the supervisor.
 */
void shm_counters_total(const struct shm_segment *seg, struct shm_counters *out);
void shm_hists_total(const struct shm_segment *seg, struct shm_hists *out);

/*
 * Appends a copy of *e (its seq ignored; ts_us 0 = now) to the ring, its query cut to
 * SHM_SLOW_TEXT_LEN - 1 bytes and NUL-terminated. Any process or thread, lock-free. Under
 * extreme contention (the ring's slot still being written by a push SHM_SLOW_RING older)
 * the entry is dropped rather than torn.
 */
void shm_slow_push(struct shm_segment *seg, const struct shm_slow_entry *e);

/*
 * Replaces the published queue depths with *d (its at_us, when 0, is set to now).
 * A supervisor (two take turns during a binary upgrade). Readers never see a half-written
 * table.
 */
void shm_depths_publish(struct shm_segment *seg, const struct shm_queue_depths *d);

/*
 * Copies the published queue depths into *out. Any process. Returns 0, or -EAGAIN when
 * the writer kept rewriting them during every attempt (out is then zeroed: no data).
 */
__attribute__((warn_unused_result)) int shm_depths_read(const struct shm_segment *seg,
                                                        struct shm_queue_depths *out);

/*
 * Copies up to max of the newest slow queries, newest first, into out. Returns how many.
 * Entries being written at that moment are skipped. Any process.
 */
int shm_slow_read(const struct shm_segment *seg, struct shm_slow_entry *out, int max);

/* ---- HTTP answers by route (struct shm_http) ------------------------------------------ */

/* The label of a method name ("GET" -> SHM_HTTP_GET; unknown -> SHM_HTTP_OTHER), and back
 * ("GET", ..., "OTHER"). */
enum shm_http_method shm_http_method_of(const char *name);
const char *shm_http_method_name(unsigned method);

/*
 * The route number of name in h (1..SHM_HTTP_ROUTES), claiming a free entry for a new
 * name; 0 ("other") when the table is full. The owner of h only (one writer). Linear in
 * the table: callers cache the answer.
 */
uint32_t shm_http_route(struct shm_http *h, const char *name);

/*
 * The counter of answers with route (from shm_http_route), method and status (100..999),
 * claiming a series for a new key: the series of (route "other", method, status) when the
 * table is full, &h->dropped when that does not fit either. The owner of h only. Linear:
 * callers cache the pointer (it stays valid until the block is retired).
 */
_Atomic uint64_t *shm_http_counter(struct shm_http *h, uint32_t route, unsigned method,
                                   unsigned status);

/* The answer-time histogram of route (0 = "other"). */
struct shm_hist *shm_http_hist(struct shm_http *h, uint32_t route);

/* HTTP answers of every worker and the retired ones, merged by route name. */
#define SHM_HTTP_TOTAL_ROUTES 256
#define SHM_HTTP_TOTAL_SERIES 1024
struct shm_http_totals {
    int nroutes; /* routes[0] is "other" */
    struct {
        char name[SHM_LABEL_LEN];
        struct shm_hist duration; /* plain numbers (a private copy) */
    } routes[SHM_HTTP_TOTAL_ROUTES];
    int nseries;
    struct {
        uint32_t key; /* SHM_HTTP_KEY with route an index into routes[] */
        uint64_t count;
    } series[SHM_HTTP_TOTAL_SERIES];
    uint64_t dropped;
};

/*
 * Sums retired_http and every worker's HTTP block into *out, merging equal route names
 * (routes past SHM_HTTP_TOTAL_ROUTES count as "other", series that do not fit as dropped).
 * Any process; consistent with shm_worker_retire() running meanwhile, like
 * shm_counters_total(). out is about 100 KB: allocate it.
 */
void shm_http_total(const struct shm_segment *seg, struct shm_http_totals *out);

/* Microseconds of CLOCK_REALTIME, the time base of every _us field above. */
uint64_t shm_now_us(void);

#endif
