/*
 * Prometheus text exposition of the shared segment (GET /metrics): budget gauges, counter
 * totals, HTTP answers by code, method and route, workers by role and state, per-worker
 * gauges, the log2 histograms as cumulative buckets, and the process_* metrics of the
 * supervisor and every worker (read from /proc).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
/* Auto-pipelining (issue 14). */
U32_GETTER(pool_pipes)
U32_GETTER(pool_pipe_depth)

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
    {"pgcorral_pool_pipelining_connections", "Pool connections in pipeline mode now",
     get_pool_pipes},
    {"pgcorral_pool_pipeline_depth", "Statements in flight on pipelining connections now",
     get_pool_pipe_depth},
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

/* Whether a counter is rendered by pgcorral_http_requests_total{code,method,route} instead
 * of a family of its own (http_requests, http_1xx ... http_5xx: the stats JSON keeps them). */
static bool counter_is_http(const char *name)
{
    return strncmp(name, "http_", 5) == 0;
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

/* A number in its shortest exact form ("2e-06", "0.5", "14"): le bounds and sums. */
static void put_number(FILE *f, double v)
{
    char buf[40];
    snprintf(buf, sizeof buf, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, sizeof buf, "%.17g", v);
    fputs(buf, f);
}

/* The series of one histogram: cumulative _bucket series by le (seconds, or counts for a
 * histogram of counts), _sum and _count; labels (may be "") go before le. h holds plain
 * numbers or shared ones (relaxed loads either way). */
static void render_hist_series(FILE *f, const char *name, const char *labels, bool counts,
                               const struct shm_hist *h)
{
    double scale = counts ? 1.0 : 1e6;
    const char *sep = *labels ? "," : "";
    uint64_t cum = 0;

    /* Bucket i holds floor(log2(v + 1)) == i, i.e. v <= 2^(i+1) - 2; the last bucket
     * also holds everything larger, so it is only +Inf. */
    for (int i = 0; i < SHM_HIST_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i == SHM_HIST_BUCKETS - 1)
            break;
        fprintf(f, "%s_bucket{%s%sle=\"", name, labels, sep);
        put_number(f, (double)((UINT64_C(1) << (i + 1)) - 2) / scale);
        fprintf(f, "\"} %llu\n", (unsigned long long)cum);
    }
    fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    fprintf(f, "%s_sum%s%s%s ", name, *labels ? "{" : "", labels, *labels ? "}" : "");
    put_number(f, (double)atomic_load_explicit(&h->sum_us, memory_order_relaxed) / scale);
    /* The buckets' sum, so that _count always equals the +Inf bucket. */
    fprintf(f, "\n%s_count%s%s%s %llu\n", name, *labels ? "{" : "", labels, *labels ? "}" : "",
            (unsigned long long)cum);
}

/* One histogram family without labels. */
static void render_hist(FILE *f, const char *name, const struct rt_hist_desc *d,
                        const struct shm_hist *h)
{
    fprintf(f, "# HELP %s %s.\n# TYPE %s histogram\n", name, d->help, name);
    render_hist_series(f, name, "", d->counts, h);
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

/* v with \\, " and newline escaped into out (n bytes, cut when too long). */
static void label_escape(char *out, size_t n, const char *v)
{
    size_t o = 0;

    for (; *v && o + 3 < n; v++) {
        if (*v == '\\' || *v == '"' || *v == '\n')
            out[o++] = '\\';
        out[o++] = *v == '\n' ? 'n' : *v;
    }
    out[o] = '\0';
}

/* HTTP answers by code, method and route, and answer times by route, over live and retired
 * workers. */
static int render_http(FILE *f, const struct shm_segment *seg)
{
    struct shm_http_totals *t = malloc(sizeof *t);
    char route[2 * SHM_LABEL_LEN + 8], labels[2 * SHM_LABEL_LEN + 16];

    if (!t)
        return -ENOMEM;
    shm_http_total(seg, t);
    fprintf(f, "# HELP pgcorral_http_requests_total HTTP requests answered, by status code, "
               "method and route pattern (unmatched: no route; other: past the table).\n"
               "# TYPE pgcorral_http_requests_total counter\n");
    for (int i = 0; i < t->nseries; i++) {
        uint32_t key = t->series[i].key;
        label_escape(route, sizeof route, t->routes[SHM_HTTP_KEY_ROUTE(key)].name);
        fprintf(f, "pgcorral_http_requests_total{code=\"%u\",method=\"%s\",route=\"%s\"} %llu\n",
                SHM_HTTP_KEY_STATUS(key), shm_http_method_name(SHM_HTTP_KEY_METHOD(key)), route,
                (unsigned long long)t->series[i].count);
    }
    if (t->dropped)
        fprintf(f,
                "pgcorral_http_requests_total{code=\"other\",method=\"OTHER\",route=\"other\"} "
                "%llu\n",
                (unsigned long long)t->dropped);
    fprintf(f, "# HELP pgcorral_http_request_duration_seconds HTTP request (first byte) to "
               "answer, by route pattern.\n"
               "# TYPE pgcorral_http_request_duration_seconds histogram\n");
    for (int r = 0; r < t->nroutes; r++) {
        uint64_t any = 0;
        for (int b = 0; b < SHM_HIST_BUCKETS; b++)
            any += atomic_load_explicit(&t->routes[r].duration.buckets[b], memory_order_relaxed);
        if (!any)
            continue; /* "other" when nothing went there: no series */
        label_escape(route, sizeof route, t->routes[r].name);
        snprintf(labels, sizeof labels, "route=\"%s\"", route);
        render_hist_series(f, "pgcorral_http_request_duration_seconds", labels, false,
                           &t->routes[r].duration);
    }
    free(t);
    return 0;
}

/* Worker processes by role and state (every combination, 0 included). */
static void render_workers(FILE *f, const struct shm_segment *seg)
{
    static const unsigned roles[] = {SHM_ROLE_WEB, SHM_ROLE_JOB};
    static const unsigned states[] = {SHM_STATE_STARTING, SHM_STATE_READY, SHM_STATE_DRAINING,
                                      SHM_STATE_DEAD};
    int n[2][4] = {{0}};

    for (int w = 0; w < SHM_MAX_WORKERS; w++) {
        /* Relaxed: a snapshot of the worker table. */
        unsigned role = atomic_load_explicit(&seg->workers[w].role, memory_order_relaxed);
        unsigned state = atomic_load_explicit(&seg->workers[w].state, memory_order_relaxed);
        for (int r = 0; r < 2; r++)
            for (int s = 0; s < 4; s++)
                n[r][s] += role == roles[r] && state == states[s];
    }
    fprintf(f, "# HELP pgcorral_workers Worker processes by role and state.\n"
               "# TYPE pgcorral_workers gauge\n");
    for (int r = 0; r < 2; r++)
        for (int s = 0; s < 4; s++)
            fprintf(f, "pgcorral_workers{role=\"%s\",state=\"%s\"} %d\n", rt_role_name(roles[r]),
                    rt_state_name(states[s]), n[r][s]);
}

/* What /proc says about one process. */
struct proc_sample {
    char labels[48]; /* role="supervisor" or role="web",worker="0" */
    double cpu_s, start_s, rss_bytes;
    long fds; /* -1 when /proc/PID/fd cannot be read */
};

/* The boot time (Unix seconds) from /proc/stat, 0 when unknown. */
static double boot_time_s(void)
{
    FILE *f = fopen("/proc/stat", "re");
    char line[256];
    double bt = 0;

    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %lf", &bt) == 1)
            break;
    fclose(f);
    return bt;
}

/* Reads /proc/PID/{stat,statm,fd} into *out. Returns true, or false when pid is gone. */
static bool proc_read(pid_t pid, double btime, struct proc_sample *out)
{
    char path[64], buf[1024], *p;
    unsigned long long utime = 0, stime = 0, start = 0;
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    unsigned long size = 0, resident = 0;
    FILE *f;
    size_t n;
    DIR *d;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (!(f = fopen(path, "re")))
        return false;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name is in parentheses and may hold anything: fields follow the last ')'.
     * After it: state (3), ... utime (14), stime (15), ... starttime (22). */
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 1,
                     " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                     "%*d %*d %llu",
                     &utime, &stime, &start) != 3)
        return false;
    if (ticks <= 0)
        ticks = 100;
    out->cpu_s = (double)(utime + stime) / (double)ticks;
    out->start_s = btime + (double)start / (double)ticks;
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    out->rss_bytes = 0;
    if ((f = fopen(path, "re"))) {
        if (fscanf(f, "%lu %lu", &size, &resident) == 2)
            out->rss_bytes = (double)resident * (double)(page > 0 ? page : 4096);
        fclose(f);
    }
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    out->fds = -1;
    if ((d = opendir(path))) {
        struct dirent *e;
        out->fds = 0;
        while ((e = readdir(d)))
            out->fds += e->d_name[0] != '.';
        closedir(d);
    }
    return true;
}

/* process_* metrics (the names of the Prometheus client libraries) of the supervisor and of
 * every live worker, read from /proc when rendering. */
static void render_process(FILE *f, const struct shm_segment *seg)
{
    struct proc_sample ps[SHM_MAX_WORKERS + 1];
    static const struct {
        const char *name, *type, *help;
    } fams[] = {
        {"process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds"},
        {"process_resident_memory_bytes", "gauge", "Resident memory size in bytes"},
        {"process_open_fds", "gauge", "Number of open file descriptors"},
        {"process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds"},
    };
    double btime = boot_time_s();
    int n = 0;

    if (seg->supervisor_pid > 0 && proc_read(seg->supervisor_pid, btime, &ps[n])) {
        snprintf(ps[n].labels, sizeof ps[n].labels, "role=\"supervisor\"");
        n++;
    }
    for (int w = 0; w < SHM_MAX_WORKERS; w++) {
        const struct shm_worker *wk = &seg->workers[w];
        pid_t pid = atomic_load_explicit(&wk->pid, memory_order_relaxed);
        if (!worker_listed(wk) || pid <= 0 || pid == seg->supervisor_pid ||
            !proc_read(pid, btime, &ps[n]))
            continue;
        snprintf(ps[n].labels, sizeof ps[n].labels, "role=\"%s\",worker=\"%u\"",
                 rt_role_name(atomic_load_explicit(&wk->role, memory_order_relaxed)),
                 atomic_load_explicit(&wk->role_index, memory_order_relaxed));
        n++;
    }
    for (size_t k = 0; k < sizeof fams / sizeof fams[0]; k++) {
        fprintf(f, "# HELP %s %s.\n# TYPE %s %s\n", fams[k].name, fams[k].help, fams[k].name,
                fams[k].type);
        for (int i = 0; i < n; i++) {
            double v = k == 0   ? ps[i].cpu_s
                       : k == 1 ? ps[i].rss_bytes
                       : k == 2 ? (double)ps[i].fds
                                : ps[i].start_s;
            if (k == 2 && ps[i].fds < 0)
                continue;
            fprintf(f, "%s{%s} ", fams[k].name, ps[i].labels);
            put_number(f, v);
            fputc('\n', f);
        }
    }
}

/* The node's lease of the cluster budget, as its last renewal left it (coordinator/lease.c). */
static void render_lease(FILE *f, const struct shm_segment *seg)
{
    uint64_t renewed = atomic_load_explicit(&seg->lease_renewed_us, memory_order_relaxed);
    uint64_t now = shm_now_us();

    fprintf(f,
            "# HELP pgcorral_cluster_budget_slots Connections all nodes on the database may "
            "hold together (the cluster budget C).\n"
            "# TYPE pgcorral_cluster_budget_slots gauge\npgcorral_cluster_budget_slots %u\n"
            "# HELP pgcorral_cluster_nodes Nodes whose lease of the cluster budget runs.\n"
            "# TYPE pgcorral_cluster_nodes gauge\npgcorral_cluster_nodes %u\n"
            "# HELP pgcorral_lease_slots Slots of the cluster budget this node leases.\n"
            "# TYPE pgcorral_lease_slots gauge\npgcorral_lease_slots %u\n"
            "# HELP pgcorral_lease_target_slots Slots this node keeps (below the lease while "
            "it gives some back).\n"
            "# TYPE pgcorral_lease_target_slots gauge\npgcorral_lease_target_slots %u\n"
            "# HELP pgcorral_lease_fenced 1 while this node does not trust its lease (no new "
            "connection).\n"
            "# TYPE pgcorral_lease_fenced gauge\npgcorral_lease_fenced %u\n"
            "# HELP pgcorral_lease_fences_total Times this node stopped trusting its lease.\n"
            "# TYPE pgcorral_lease_fences_total counter\npgcorral_lease_fences_total %llu\n",
            atomic_load_explicit(&seg->cluster_budget, memory_order_relaxed),
            atomic_load_explicit(&seg->cluster_nodes, memory_order_relaxed),
            atomic_load_explicit(&seg->lease_granted, memory_order_relaxed),
            atomic_load_explicit(&seg->lease_target, memory_order_relaxed),
            atomic_load_explicit(&seg->lease_fenced, memory_order_relaxed),
            (unsigned long long)atomic_load_explicit(&seg->lease_fences, memory_order_relaxed));
    if (renewed > 0)
        fprintf(f,
                "# HELP pgcorral_lease_renewal_age_seconds Time since this node last renewed "
                "its lease.\n"
                "# TYPE pgcorral_lease_renewal_age_seconds gauge\n"
                "pgcorral_lease_renewal_age_seconds %.3f\n",
                now > renewed ? (double)(now - renewed) / 1e6 : 0.0);
}

int rt_metrics_render(const struct shm_segment *seg, char **out, size_t *len)
{
    struct shm_counters totals;
    struct shm_hists hists;
    char *buf = NULL;
    size_t size = 0;
    char name[96];
    FILE *f;
    int rc;

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
            shm_budget_size(seg));
    fprintf(f,
            "# HELP pgcorral_budget_in_use_slots Budget slots held by open connections.\n"
            "# TYPE pgcorral_budget_in_use_slots gauge\npgcorral_budget_in_use_slots %u\n",
            shm_budget_in_use(seg));
    fprintf(f,
            "# HELP pgcorral_budget_usable_slots Budget slots the server can take now (after a "
            "restart with a smaller max_connections, fewer than the budget).\n"
            "# TYPE pgcorral_budget_usable_slots gauge\npgcorral_budget_usable_slots %u\n",
            shm_budget_usable(seg));
    render_lease(f, seg);

    for (size_t i = 0; i < rt_counter_ndescs; i++) {
        if (counter_is_http(rt_counter_descs[i].name))
            continue;
        snprintf(name, sizeof name, "pgcorral_%s_total", rt_counter_descs[i].name);
        fprintf(f, "# HELP %s %s.\n# TYPE %s counter\n%s %llu\n", name, rt_counter_descs[i].help,
                name, name, (unsigned long long)counter_at(&totals, rt_counter_descs[i].offset));
    }
    rc = render_http(f, seg);

    render_workers(f, seg);
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
        /* HTTP times are pgcorral_http_request_duration_seconds{route} (render_http). */
        if (strcmp(rt_hist_descs[i].name, "http_us") == 0)
            continue;
        hist_metric_name(name, sizeof name, &rt_hist_descs[i]);
        render_hist(f, name, &rt_hist_descs[i],
                    (const struct shm_hist *)((const char *)&hists + rt_hist_descs[i].offset));
    }
    render_depths(f, seg);
    render_process(f, seg);

    if (fclose(f) != 0 || !buf || rc < 0) {
        free(buf);
        return -ENOMEM;
    }
    *out = buf;
    *len = size;
    return 0;
}
