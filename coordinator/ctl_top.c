/*
 * `pgcorral ctl top`: a live view refreshed every second: workers, pools, budget, and the
 * HTTP, job and query rates computed from the difference of two `stats` answers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "coordinator/ctl_int.h"
#include "runtime/rt_util.h"

#define TOP_MAX_WORKERS 128
#define TOP_COUNT_MAX 1000000   /* --count: frames */
#define TOP_INTERVAL_MIN_MS 100 /* --interval */
#define TOP_INTERVAL_MAX_MS 3600000

/* Per-worker counters of the previous frame, by pid, for per-worker rates. */
struct top_prev {
    long long pid, http, jobs;
};

/* The answers one frame needs, in the order they are asked for. */
static const char *const frame_cmds[] = {"workers\n", "stats\n", "pools\n", "budget\n"};
#define NFRAME_CMDS (sizeof frame_cmds / sizeof frame_cmds[0])

/*
 * Asks for every command of a frame into docs. Returns true, or false after printing the
 * first failure once (the supervisor is gone: asking the others would say it again) with
 * every docs entry NULL.
 */
static bool ask_all(const char *path, json_t *docs[NFRAME_CMDS])
{
    size_t i;

    for (i = 0; i < NFRAME_CMDS; i++) {
        const char *why = "the answer is not JSON";
        char *text = ctl_request(path, frame_cmds[i], &why);
        docs[i] = text ? json_loads(text, 0, NULL) : NULL;
        free(text);
        if (!docs[i]) {
            fprintf(stderr, "pgcorral ctl top: %s\n", why);
            break;
        }
    }
    if (i == NFRAME_CMDS)
        return true;
    while (i-- > 0) {
        json_decref(docs[i]);
        docs[i] = NULL;
    }
    return false;
}

static void top_usage(FILE *f)
{
    fprintf(f, "usage: pgcorral ctl top [--count N] [--interval MS] [--control PATH]\n"
               "A live view of the supervisor: workers, pools, budget, and HTTP, job and\n"
               "query rates. Refreshed every --interval ms (default 1000, at least 100);\n"
               "--count N stops after N frames (default: until interrupted).\n");
}

static long long get_ll(json_t *obj, const char *key)
{
    return (long long)json_integer_value(json_object_get(obj, key));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prints one frame; prev holds the last frame's totals and per-worker counters. */
static void frame(const char *path, json_t *workers, json_t *stats, json_t *pools, json_t *budget,
                  json_t *prev_totals, double dt, struct top_prev *prev, int *nprev)
{
    json_t *totals = json_object_get(stats, "totals");
    json_t *ptot = json_object_get(pools, "total");
    json_t *hist = json_object_get(stats, "histograms");
    struct top_prev next[TOP_MAX_WORKERS];
    int nnext = 0;
    time_t t = time(NULL);
    char when[32];
    json_t *w;
    size_t i;

#define RATE(key)                                                                                  \
    (prev_totals && dt > 0 ? (double)(get_ll(totals, key) - get_ll(prev_totals, key)) / dt : 0.0)

    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&t));
    printf("pgcorral top  %s  (control %s)\n\n", when, path);
    printf("BUDGET  in use %lld / %lld slots   server max_connections %lld\n",
           get_ll(budget, "in_use"), get_ll(budget, "slots"), get_ll(budget, "max_connections"));
    printf("POOLS   open %lld  in use %lld  idle %lld  waiting %lld   timeouts %lld   "
           "acquire p99 %lld us   query p99 %lld us\n",
           get_ll(ptot, "open"), get_ll(ptot, "in_use"), get_ll(ptot, "idle"),
           get_ll(ptot, "waiting"), get_ll(ptot, "timeouts"),
           get_ll(json_object_get(ptot, "acquire_wait_us"), "p99"),
           get_ll(json_object_get(ptot, "query_us"), "p99"));
    {
        /* Auto-pipelining (issue 14): connections and statements in pipelines now, the
         * share of statements that rode on a busy connection, depth at send. */
        json_t *pl = json_object_get(ptot, "pipeline");
        json_t *ds = json_object_get(pl, "depth_at_send");
        printf("PIPE    connections %lld  depth %lld   pipelined %lld (%.1f/s)   "
               "depth at send p50 %lld p99 %lld mean %.2f\n",
               get_ll(pl, "connections"), get_ll(pl, "depth"), get_ll(pl, "pipelined"),
               prev_totals && dt > 0
                   ? (double)(get_ll(totals, "pipelined") - get_ll(prev_totals, "pipelined")) / dt
                   : 0.0,
               get_ll(ds, "p50"), get_ll(ds, "p99"), (double)get_ll(ds, "mean_x100") / 100.0);
    }
    printf("RATES   http %.1f req/s (5xx %.1f/s, p99 %lld us)   jobs %.1f/s done, %.1f/s failed   "
           "queries %.1f/s\n\n",
           RATE("http_requests"), RATE("http_5xx"), get_ll(json_object_get(hist, "http_us"), "p99"),
           RATE("jobs_done"), RATE("jobs_failed"), RATE("queries"));
#undef RATE

    printf("%-5s %5s %8s %-9s %8s %20s %9s %9s\n", "ROLE", "INDEX", "PID", "STATE", "RESTARTS",
           "POOL use/open/limit", "HTTP/s", "JOBS/s");
    json_array_foreach(json_object_get(workers, "workers"), i, w)
    {
        long long pid = get_ll(w, "pid");
        json_t *pw = NULL, *sw = NULL, *x;
        size_t k;
        json_array_foreach(json_object_get(pools, "workers"), k, x) if (get_ll(x, "pid") == pid)
            pw = x;
        json_array_foreach(json_object_get(stats, "workers"), k, x) if (get_ll(x, "pid") == pid)
            sw = x;
        long long http = sw ? get_ll(sw, "http_requests") : 0;
        long long jobs = sw ? get_ll(sw, "jobs_done") : 0;
        double http_rate = 0, jobs_rate = 0;
        for (int p = 0; p < *nprev; p++) {
            if (prev[p].pid == pid && dt > 0) {
                http_rate = (double)(http - prev[p].http) / dt;
                jobs_rate = (double)(jobs - prev[p].jobs) / dt;
            }
        }
        if (nnext < TOP_MAX_WORKERS)
            next[nnext++] = (struct top_prev){pid, http, jobs};
        char pool[32];
        snprintf(pool, sizeof pool, "%lld/%lld/%lld", pw ? get_ll(pw, "in_use") : 0,
                 pw ? get_ll(pw, "open") : 0, pw ? get_ll(pw, "limit") : 0);
        printf("%-5s %5lld %8lld %-9s %8lld %20s %9.1f %9.1f\n",
               json_string_value(json_object_get(w, "role")), get_ll(w, "index"), pid,
               json_string_value(json_object_get(w, "state")), get_ll(w, "restarts"), pool,
               http_rate, jobs_rate);
    }
    memcpy(prev, next, sizeof next[0] * (size_t)nnext);
    *nprev = nnext;
    fflush(stdout);
}

int ctl_top(const char *path, int argc, char **argv)
{
    long count = 0; /* 0 = until interrupted */
    long interval_ms = 1000;
    struct top_prev prev[TOP_MAX_WORKERS];
    int nprev = 0;
    json_t *prev_totals = NULL;
    double prev_t = 0;
    bool tty = isatty(STDOUT_FILENO);

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            top_usage(stdout);
            return 0;
        }
    }
    for (int i = 0; i < argc; i++) {
        long long v;
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            if (rt_parse_ll(argv[++i], 1, TOP_COUNT_MAX, &v) < 0) {
                fprintf(stderr, "pgcorral ctl top: --count must be 1..%d, got '%s'\n",
                        TOP_COUNT_MAX, argv[i]);
                return 2;
            }
            count = (long)v;
        } else if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
            if (rt_parse_ll(argv[++i], TOP_INTERVAL_MIN_MS, TOP_INTERVAL_MAX_MS, &v) < 0) {
                fprintf(stderr,
                        "pgcorral ctl top: --interval must be %d..%d (milliseconds), got '%s'\n",
                        TOP_INTERVAL_MIN_MS, TOP_INTERVAL_MAX_MS, argv[i]);
                return 2;
            }
            interval_ms = (long)v;
        } else if (strcmp(argv[i], "--json") != 0) {
            fprintf(stderr, "pgcorral ctl top: unknown argument '%s' (--count N, --interval MS)\n",
                    argv[i]);
            return 2;
        }
    }
    for (long n = 0; count == 0 || n < count; n++) {
        json_t *docs[NFRAME_CMDS];
        if (!ask_all(path, docs)) {
            json_decref(prev_totals);
            return 1;
        }
        json_t *workers = docs[0], *stats = docs[1], *pools = docs[2], *budget = docs[3];
        double t = now_s();
        if (tty)
            fputs("\033[H\033[2J", stdout); /* home, clear screen */
        else if (n > 0)
            fputs("\n", stdout);
        frame(path, workers, json_object_get(stats, "stats"), json_object_get(pools, "pools"),
              json_object_get(budget, "budget"), prev_totals, t - prev_t, prev, &nprev);
        json_decref(prev_totals);
        prev_totals = json_incref(json_object_get(json_object_get(stats, "stats"), "totals"));
        prev_t = t;
        json_decref(workers);
        json_decref(stats);
        json_decref(pools);
        json_decref(budget);
        if (count == 0 || n + 1 < count)
            usleep((useconds_t)interval_ms * 1000);
    }
    json_decref(prev_totals);
    return 0;
}
