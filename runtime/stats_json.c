/*
 * Builds the statistics JSON documents from the shared segment: totals over live and
 * retired workers, per-worker blocks, pool gauges and the slow-query ring.
 */
#include <stddef.h>
#include <stdio.h>

#include "runtime/rt_stats.h"
#include "runtime/rt_version.h"

#define COUNTER(f, h)                                                                              \
    {                                                                                              \
#f, offsetof(struct shm_counters, f), h                                                    \
    }

/* The counters users see, in display order. Every field of struct shm_counters. */
const struct rt_counter_desc rt_counter_descs[] = {
    COUNTER(acquires, "Connections handed out by the pools"),
    COUNTER(waits, "Acquires that had to wait for a connection"),
    COUNTER(timeouts, "Acquires that failed after pool_timeout"),
    COUNTER(connects, "Database connections opened"),
    COUNTER(connect_errors, "Database connection attempts that failed"),
    COUNTER(queries, "Statements run"),
    COUNTER(errors_transient, "Statement errors classified transient"),
    COUNTER(errors_fatal, "Statement errors that were not retried"),
    COUNTER(retries, "Retries of transient errors"),
    COUNTER(slow_queries, "Statements over the slow-query threshold"),
    COUNTER(http_accepted, "HTTP connections accepted"),
    COUNTER(http_requests, "HTTP requests answered"),
    COUNTER(http_1xx, "HTTP responses 1xx"),
    COUNTER(http_2xx, "HTTP responses 2xx"),
    COUNTER(http_3xx, "HTTP responses 3xx"),
    COUNTER(http_4xx, "HTTP responses 4xx"),
    COUNTER(http_5xx, "HTTP responses 5xx"),
    COUNTER(jobs_done, "Jobs completed"),
    COUNTER(jobs_failed, "Job attempts that failed"),
    COUNTER(jobs_retried, "Jobs rescheduled for another attempt"),
    COUNTER(unavailable, "Acquires refused at once while the database was unreachable"),
    COUNTER(access_log_dropped, "Access log lines dropped because the file did not keep up"),
    COUNTER(pipelined, "Statements auto-pipelined behind others on a busy connection"),
};
const size_t rt_counter_ndescs = sizeof rt_counter_descs / sizeof rt_counter_descs[0];
_Static_assert(sizeof rt_counter_descs / sizeof rt_counter_descs[0] == SHM_COUNTERS_N,
               "every shm counter has a name");

#define HIST(f, name, h)                                                                           \
    {                                                                                              \
        name, offsetof(struct shm_hists, f), h, false                                              \
    }
#define HIST_COUNTS(f, name, h)                                                                    \
    {                                                                                              \
        name, offsetof(struct shm_hists, f), h, true                                               \
    }

/* The histograms, by the names JSON and /metrics use. */
const struct rt_hist_desc rt_hist_descs[] = {
    HIST(acquire_wait, "acquire_wait_us", "Time to get a pooled connection"),
    HIST(query, "query_us", "Statement round trip"),
    HIST(http, "http_us", "HTTP request to response"),
    HIST(job, "job_us", "Job run time"),
    HIST(job_wait, "job_wait_us", "Job enqueue (or run_at, when later) to handler start"),
    HIST_COUNTS(claim_batch, "job_claim_batch", "Jobs per claim statement"),
    HIST_COUNTS(pipe_depth, "pipeline_depth_at_send",
                "Statements in flight on the connection at each auto-pipelined send"),
};
_Static_assert(sizeof rt_hist_descs / sizeof rt_hist_descs[0] ==
                   sizeof(struct shm_hists) / sizeof(struct shm_hist),
               "every shm histogram has a name");
const size_t rt_hist_ndescs = sizeof rt_hist_descs / sizeof rt_hist_descs[0];

const char *rt_role_name(unsigned role)
{
    return role == SHM_ROLE_WEB ? "web" : role == SHM_ROLE_JOB ? "job" : "none";
}

const char *rt_state_name(unsigned state)
{
    static const char *const names[] = {"empty", "starting", "ready", "draining", "dead"};
    return state < sizeof names / sizeof names[0] ? names[state] : "unknown";
}

static uint64_t counter_at(const struct shm_counters *c, size_t offset)
{
    return atomic_load_explicit((const _Atomic uint64_t *)((const char *)c + offset),
                                memory_order_relaxed);
}

static const struct shm_hist *hist_at(const struct shm_hists *h, size_t offset)
{
    return (const struct shm_hist *)((const char *)h + offset);
}

static json_t *counters_json(const struct shm_counters *c)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < rt_counter_ndescs; i++)
        json_object_set_new(o, rt_counter_descs[i].name,
                            json_integer((json_int_t)counter_at(c, rt_counter_descs[i].offset)));
    return o;
}

static json_t *hist_json(const struct shm_hist *h)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I}", "count",
                     (json_int_t)atomic_load_explicit(&h->count, memory_order_relaxed), "sum_us",
                     (json_int_t)atomic_load_explicit(&h->sum_us, memory_order_relaxed), "p50",
                     (json_int_t)shm_hist_quantile(h, 0.50), "p90",
                     (json_int_t)shm_hist_quantile(h, 0.90), "p99",
                     (json_int_t)shm_hist_quantile(h, 0.99));
}

static bool worker_live(const struct shm_worker *w)
{
    unsigned state = atomic_load_explicit(&w->state, memory_order_relaxed);
    return state != SHM_STATE_EMPTY && state != SHM_STATE_DEAD;
}

json_t *rt_stats_json(const struct shm_segment *seg)
{
    struct shm_counters totals;
    struct shm_hists hists;
    json_t *doc, *h, *workers;

    shm_counters_total(seg, &totals);
    shm_hists_total(seg, &hists);
    doc = json_object();
    h = json_object();
    workers = json_array();
    if (!doc || !h || !workers)
        goto fail;
    /* Which build answers: stats from a fleet are compared across versions. */
    json_object_set_new(doc, "version", json_string(PGCORRAL_VERSION));
    json_object_set_new(doc, "git", json_string(rt_version_git()));
    for (size_t i = 0; i < rt_hist_ndescs; i++)
        json_object_set_new(h, rt_hist_descs[i].name,
                            hist_json(hist_at(&hists, rt_hist_descs[i].offset)));
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct shm_worker *w = &seg->workers[i];
        if (!worker_live(w))
            continue;
        json_t *o = counters_json(&w->counters);
        json_object_set_new(o, "role", json_string(rt_role_name(w->role)));
        json_object_set_new(o, "index", json_integer(w->role_index));
        json_object_set_new(o, "pid", json_integer(w->pid));
        json_object_set_new(o, "state", json_string(rt_state_name(w->state)));
        json_array_append_new(workers, o);
    }
    json_object_set_new(doc, "totals", counters_json(&totals));
    json_object_set_new(doc, "histograms", h);
    json_object_set_new(doc, "budget",
                        json_pack("{s:i,s:i,s:i}", "slots", (int)shm_budget_size(seg), "usable",
                                  (int)shm_budget_usable(seg), "in_use",
                                  (int)shm_budget_in_use(seg)));
    json_object_set_new(doc, "workers", workers);
    return doc;

fail:
    json_decref(doc);
    json_decref(h);
    json_decref(workers);
    return NULL;
}

static json_t *pool_json_base(unsigned open, unsigned in_use, unsigned idle, unsigned waiting,
                              const struct shm_counters *c, const struct shm_hists *h);

/* One pool block: gauges, the pool's counters, two latency quantiles, and pipelining:
 * pipes / pipe_depth (now), pipelined (counter), depth at send (p50, p99, mean x 100). */
static json_t *pool_json(unsigned open, unsigned in_use, unsigned idle, unsigned waiting,
                         unsigned pipes, unsigned pipe_depth, const struct shm_counters *c,
                         const struct shm_hists *h)
{
    json_t *o = pool_json_base(open, in_use, idle, waiting, c, h);
    if (o)
        json_object_set_new(
            o, "pipeline",
            json_pack(
                "{s:i,s:i,s:I,s:I,s:{s:I,s:I,s:I}}", "connections", pipes, "depth", pipe_depth,
                "pipelined", (json_int_t)c->pipelined, "sent", (json_int_t)h->pipe_depth.count,
                "depth_at_send", "p50", (json_int_t)shm_hist_quantile(&h->pipe_depth, 0.5), "p99",
                (json_int_t)shm_hist_quantile(&h->pipe_depth, 0.99), "mean_x100",
                (json_int_t)(h->pipe_depth.count ? h->pipe_depth.sum_us * 100 / h->pipe_depth.count
                                                 : 0)));
    return o;
}

static json_t *pool_json_base(unsigned open, unsigned in_use, unsigned idle, unsigned waiting,
                              const struct shm_counters *c, const struct shm_hists *h)
{
    return json_pack("{s:i,s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I},s:{s:I,s:I}}",
                     "open", open, "in_use", in_use, "idle", idle, "waiting", waiting, "acquires",
                     (json_int_t)c->acquires, "timeouts", (json_int_t)c->timeouts, "unavailable",
                     (json_int_t)c->unavailable, "connects", (json_int_t)c->connects,
                     "connect_errors", (json_int_t)c->connect_errors, "retries",
                     (json_int_t)c->retries, "slow_queries", (json_int_t)c->slow_queries,
                     "acquire_wait_us", "p50", (json_int_t)shm_hist_quantile(&h->acquire_wait, 0.5),
                     "p99", (json_int_t)shm_hist_quantile(&h->acquire_wait, 0.99), "query_us",
                     "p50", (json_int_t)shm_hist_quantile(&h->query, 0.5), "p99",
                     (json_int_t)shm_hist_quantile(&h->query, 0.99));
}

json_t *rt_pools_json(const struct shm_segment *seg)
{
    struct shm_counters totals;
    struct shm_hists hists;
    unsigned open = 0, in_use = 0, idle = 0, waiting = 0, db_down = 0, pipes = 0, depth = 0;
    json_t *workers = json_array(), *total;

    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct shm_worker *w = &seg->workers[i];
        if (!worker_live(w))
            continue;
        json_t *o = pool_json(w->pool_open, w->pool_in_use, w->pool_idle, w->pool_waiting,
                              w->pool_pipes, w->pool_pipe_depth, &w->counters, &w->hists);
        json_object_set_new(o, "role", json_string(rt_role_name(w->role)));
        json_object_set_new(o, "index", json_integer(w->role_index));
        json_object_set_new(o, "pid", json_integer(w->pid));
        json_object_set_new(o, "limit", json_integer(w->pool_limit));
        json_object_set_new(o, "database", json_string(w->pool_db_down ? "unreachable" : "ok"));
        json_array_append_new(workers, o);
        db_down += w->pool_db_down ? 1 : 0;
        open += w->pool_open;
        in_use += w->pool_in_use;
        idle += w->pool_idle;
        waiting += w->pool_waiting;
        pipes += w->pool_pipes;
        depth += w->pool_pipe_depth;
    }
    shm_counters_total(seg, &totals);
    shm_hists_total(seg, &hists);
    total = pool_json(open, in_use, idle, waiting, pipes, depth, &totals, &hists);
    json_object_set_new(total, "database_unreachable", json_integer(db_down));
    return json_pack("{s:o,s:o}", "total", total, "workers", workers);
}

json_t *rt_slow_json(const struct shm_segment *seg, int max)
{
    struct shm_slow_entry entries[SHM_SLOW_RING];
    json_t *arr = json_array();
    int n;

    if (max > SHM_SLOW_RING)
        max = SHM_SLOW_RING;
    n = shm_slow_read(seg, entries, max);
    for (int i = 0; arr && i < n; i++) {
        json_array_append_new(
            arr, json_pack("{s:f,s:f,s:i,s:s,s:i,s:s}", "ts", (double)entries[i].ts_us / 1e6,
                           "duration_ms", (double)entries[i].duration_us / 1e3, "pid",
                           entries[i].pid, "role", rt_role_name(entries[i].role), "worker",
                           (int)entries[i].role_index, "query", entries[i].query));
    }
    return arr;
}
