/*
 * Prometheus text exposition of the shared segment (GET /metrics): budget gauges, counter
 * totals, per-worker gauges and the log2 histograms as cumulative buckets.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_metrics.h"
#include "runtime/rt_stats.h"
#include "runtime/rt_version.h"

/* A per-worker gauge: metric name, help and how to read it from a worker block. */
struct gauge_desc {
    const char *name;
    const char *help;
    double (*get)(const struct shm_worker *w);
};

#define U32_GETTER(field)                                                                          \
    static double get_##field(const struct shm_worker *w)                                          \
    {                                                                                              \
        /* Relaxed: a gauge snapshot. */                                                           \
        return (double)atomic_load_explicit(&w->field, memory_order_relaxed);                      \
    }
U32_GETTER(pool_open)
U32_GETTER(pool_in_use)
U32_GETTER(pool_idle)
U32_GETTER(pool_waiting)
U32_GETTER(pool_limit)
U32_GETTER(pool_db_down)
U32_GETTER(http_open)

/* Gauge readers of the fields that are not plain uint32 gauges. */
static double get_started(const struct shm_worker *w)
{
    return (double)atomic_load_explicit(&w->started_us, memory_order_relaxed) / 1e6;
}

static double get_heartbeat(const struct shm_worker *w)
{
    return (double)atomic_load_explicit(&w->heartbeat_us, memory_order_relaxed) / 1e6;
}

/* The per-worker gauges, in output order. */
static const struct gauge_desc gauges[] = {
    {"pgcorral_pool_open_connections", "Pool connections open (idle, in use or connecting)",
     get_pool_open},
    {"pgcorral_pool_in_use_connections", "Pool connections checked out", get_pool_in_use},
    {"pgcorral_pool_idle_connections", "Pool connections idle", get_pool_idle},
    {"pgcorral_pool_waiting_requests", "Requests waiting for a pool connection", get_pool_waiting},
    {"pgcorral_pool_limit_connections", "Pool size limit (connection_limit)", get_pool_limit},
    {"pgcorral_pool_database_unreachable", "1 while the pool finds the database unreachable",
     get_pool_db_down},
    {"pgcorral_http_open_connections", "HTTP client connections open", get_http_open},
    {"pgcorral_worker_start_time_seconds", "When the worker incarnation was forked (Unix time)",
     get_started},
    {"pgcorral_worker_heartbeat_time_seconds", "The worker's last heartbeat (Unix time)",
     get_heartbeat},
};

/* Whether a worker-table entry is a live worker (listed with its gauges). */
static bool worker_listed(const struct shm_worker *w)
{
    unsigned state = atomic_load_explicit(&w->state, memory_order_relaxed);
    return state != SHM_STATE_EMPTY && state != SHM_STATE_DEAD;
}

/* A counter by its offset (struct rt_counter_desc). Relaxed: a statistics snapshot. */
static uint64_t counter_at(const struct shm_counters *c, size_t offset)
{
    return atomic_load_explicit((const _Atomic uint64_t *)((const char *)c + offset),
                                memory_order_relaxed);
}

/* "acquire_wait_us" -> "pgcorral_acquire_wait_seconds", "job_claim_batch" ->
 * "pgcorral_job_claim_batch" into out. */
static void hist_metric_name(char *out, size_t n, const struct rt_hist_desc *d)
{
    size_t len = strlen(d->name);
    if (d->counts) {
        snprintf(out, n, "pgcorral_%s", d->name);
        return;
    }
    if (len > 3 && strcmp(d->name + len - 3, "_us") == 0)
        len -= 3;
    snprintf(out, n, "pgcorral_%.*s_seconds", (int)len, d->name);
}

/* One histogram family: cumulative _bucket series by le (seconds, or counts for a
 * histogram of counts), _sum and _count. */
static void render_hist(FILE *f, const char *name, const struct rt_hist_desc *d,
                        const struct shm_hist *h)
{
    double scale = d->counts ? 1.0 : 1e6;
    int decimals = d->counts ? 0 : 6;
    uint64_t cum = 0;

    fprintf(f, "# HELP %s %s.\n# TYPE %s histogram\n", name, d->help, name);
    /* Bucket i holds floor(log2(v + 1)) == i, i.e. v <= 2^(i+1) - 2; the last bucket
     * also holds everything larger, so it is only +Inf. */
    for (int i = 0; i < SHM_HIST_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i == SHM_HIST_BUCKETS - 1)
            break;
        fprintf(f, "%s_bucket{le=\"%.*f\"} %llu\n", name, decimals,
                (double)((UINT64_C(1) << (i + 1)) - 2) / scale, (unsigned long long)cum);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    fprintf(f, "%s_sum %.*f\n", name, decimals,
            (double)atomic_load_explicit(&h->sum_us, memory_order_relaxed) / scale);
    /* The buckets' sum, so that _count always equals the +Inf bucket. */
    fprintf(f, "%s_count %llu\n", name, (unsigned long long)cum);
}

/* A label value with \\, " and newline escaped, as the exposition format asks. */
static void put_label_value(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fputc('\\', f);
        if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

/* Jobs by queue and state, as the supervisor's sweep last counted them (every few seconds,
 * not per scrape), and the age of that count. Nothing before the first count. */
static void render_depths(FILE *f, const struct shm_segment *seg)
{
    static const char *const states[] = {"ready", "scheduled", "running", "failed"};
    struct shm_queue_depths d;

    if (shm_depths_read(seg, &d) < 0 || d.at_us == 0)
        return;
    fprintf(f, "# HELP pgcorral_jobs Jobs in pgcorral.jobs by queue and state (cached).\n"
               "# TYPE pgcorral_jobs gauge\n");
    for (uint32_t q = 0; q < d.nqueues; q++) {
        const struct shm_queue_depth *e = &d.queues[q];
        const uint64_t counts[] = {e->ready, e->scheduled, e->running, e->failed};
        for (size_t s = 0; s < sizeof states / sizeof states[0]; s++) {
            fputs("pgcorral_jobs{queue=\"", f);
            put_label_value(f, e->name);
            fprintf(f, "\",state=\"%s\"} %llu\n", states[s], (unsigned long long)counts[s]);
        }
    }
    fprintf(f,
            "# HELP pgcorral_jobs_queues_omitted Queues past the first %d (by name), not in "
            "pgcorral_jobs.\n# TYPE pgcorral_jobs_queues_omitted gauge\n"
            "pgcorral_jobs_queues_omitted %u\n",
            SHM_MAX_QUEUES, d.omitted);
    fprintf(f,
            "# HELP pgcorral_jobs_counted_timestamp_seconds When pgcorral_jobs was counted.\n"
            "# TYPE pgcorral_jobs_counted_timestamp_seconds gauge\n"
            "pgcorral_jobs_counted_timestamp_seconds %.3f\n",
            (double)d.at_us / 1e6);
}

int rt_metrics_render(const struct shm_segment *seg, char **out, size_t *len)
{
    struct shm_counters totals;
    struct shm_hists hists;
    char *buf = NULL;
    size_t size = 0;
    char name[96];
    FILE *f;

    f = open_memstream(&buf, &size);
    if (!f)
        return -ENOMEM;
    shm_counters_total(seg, &totals);
    shm_hists_total(seg, &hists);

    /* The usual *_build_info idiom: a constant 1 whose labels say which build this is. */
    fprintf(f, "# HELP pgcorral_build_info The pgcorral version and git commit (value 1).\n"
               "# TYPE pgcorral_build_info gauge\npgcorral_build_info{version=\"");
    put_label_value(f, PGCORRAL_VERSION);
    fputs("\",git=\"", f);
    put_label_value(f, rt_version_git());
    fputs("\"} 1\n", f);
    fprintf(f,
            "# HELP pgcorral_budget_slots Global database connection budget.\n"
            "# TYPE pgcorral_budget_slots gauge\npgcorral_budget_slots %u\n",
            seg->nslots);
    fprintf(f,
            "# HELP pgcorral_budget_in_use_slots Budget slots held by open connections.\n"
            "# TYPE pgcorral_budget_in_use_slots gauge\npgcorral_budget_in_use_slots %u\n",
            shm_budget_in_use(seg));
    fprintf(f,
            "# HELP pgcorral_budget_usable_slots Budget slots the server can take now (after a "
            "restart with a smaller max_connections, fewer than the budget).\n"
            "# TYPE pgcorral_budget_usable_slots gauge\npgcorral_budget_usable_slots %u\n",
            shm_budget_usable(seg));

    for (size_t i = 0; i < rt_counter_ndescs; i++) {
        snprintf(name, sizeof name, "pgcorral_%s_total", rt_counter_descs[i].name);
        fprintf(f, "# HELP %s %s.\n# TYPE %s counter\n%s %llu\n", name, rt_counter_descs[i].help,
                name, name, (unsigned long long)counter_at(&totals, rt_counter_descs[i].offset));
    }

    fprintf(f, "# HELP pgcorral_worker_info Worker processes (value 1), by state and pid.\n"
               "# TYPE pgcorral_worker_info gauge\n");
    for (int w = 0; w < SHM_MAX_WORKERS; w++) {
        const struct shm_worker *wk = &seg->workers[w];
        if (!worker_listed(wk))
            continue;
        fprintf(f, "pgcorral_worker_info{role=\"%s\",worker=\"%u\",state=\"%s\",pid=\"%d\"} 1\n",
                rt_role_name(wk->role), (unsigned)wk->role_index, rt_state_name(wk->state),
                (int)wk->pid);
    }
    for (size_t g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        fprintf(f, "# HELP %s %s.\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help,
                gauges[g].name);
        for (int w = 0; w < SHM_MAX_WORKERS; w++) {
            const struct shm_worker *wk = &seg->workers[w];
            if (!worker_listed(wk))
                continue;
            fprintf(f, "%s{role=\"%s\",worker=\"%u\"} %.17g\n", gauges[g].name,
                    rt_role_name(wk->role), (unsigned)wk->role_index, gauges[g].get(wk));
        }
    }

    for (size_t i = 0; i < rt_hist_ndescs; i++) {
        hist_metric_name(name, sizeof name, &rt_hist_descs[i]);
        render_hist(f, name, &rt_hist_descs[i],
                    (const struct shm_hist *)((const char *)&hists + rt_hist_descs[i].offset));
    }
    render_depths(f, seg);

    if (fclose(f) != 0 || !buf) {
        free(buf);
        return -ENOMEM;
    }
    *out = buf;
    *len = size;
    return 0;
}
