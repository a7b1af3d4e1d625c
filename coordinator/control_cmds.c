/*
 * The control socket's commands, dispatched through one {word, handler} table. Each
 * handler returns the JSON document that answers it.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/ctl_int.h"
#include "coordinator/jobs_int.h"
#include "coordinator/sup_int.h"
#include "runtime/rt_util.h"

#define SLOW_DEFAULT 10

static json_t *cmd_help(struct sup *s, const char *args);

__attribute__((format(printf, 1, 2))) static json_t *error_json(const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Errors quote what the client sent, which may be any bytes: keep them printable
     * ASCII so that the answer is always valid JSON text. */
    for (char *p = msg; *p; p++)
        if (!isprint((unsigned char)*p))
            *p = '?';
    return json_pack("{s:s}", "error", msg);
}

static json_t *cmd_workers(struct sup *s, const char *args)
{
    json_t *arr = json_array();
    uint64_t now = shm_now_us();

    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct sup_worker *w = &s->workers[i];
        const struct shm_worker *sw = &s->seg->workers[i];
        if (!w->used)
            continue;
        /* Relaxed: shown as they are, nothing else is read through them. */
        unsigned state = atomic_load_explicit(&sw->state, memory_order_relaxed);
        uint64_t hb = atomic_load_explicit(&sw->heartbeat_us, memory_order_relaxed);
        json_t *o = json_pack("{s:s,s:i,s:i,s:s,s:i,s:i,s:f,s:f}", "role", rt_role_name(w->role),
                              "index", w->role_index, "pid", (int)w->pid, "state",
                              w->fatal ? "failed" : rt_state_name(state), "restarts", w->restarts,
                              "generation", (int)w->generation, "uptime_s",
                              w->pid > 0 ? (double)(now - w->started_us) / 1e6 : 0.0,
                              "heartbeat_age_s", hb && now > hb ? (double)(now - hb) / 1e6 : 0.0);
        json_array_append_new(arr, o);
    }
    return json_pack("{s:o}", "workers", arr);
}

/* The server's limits are the last ones a pool read after a restart, else preflight's. */
static json_t *cmd_budget(struct sup *s, const char *args)
{
    int max = atomic_load_explicit(&s->seg->server_max_connections, memory_order_relaxed);
    int reserved = atomic_load_explicit(&s->seg->server_reserved, memory_order_relaxed);

    if (max == 0) {
        max = s->preflight.max_connections;
        reserved = s->preflight.superuser_reserved + s->preflight.reserved;
    }
    return json_pack(
        "{s:{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:b,s:i,s:i}}", "budget", "slots", s->budget, "usable",
        (int)shm_budget_usable(s->seg), "in_use", (int)shm_budget_in_use(s->seg),
        "per_worker_limit", s->cfg->db->connection_limit, "max_connections", max,
        "superuser_reserved", s->preflight.superuser_reserved, "reserved", reserved, "workers",
        sup_role_count(s, SHM_ROLE_WEB) + sup_role_count(s, SHM_ROLE_JOB), "shared",
        s->budget_shared, "leased",
        (int)atomic_load_explicit(&s->seg->lease_granted, memory_order_relaxed), "cluster_budget",
        (int)atomic_load_explicit(&s->seg->cluster_budget, memory_order_relaxed));
}

static json_t *cmd_stats(struct sup *s, const char *args)
{
    json_t *st = rt_stats_json(s->seg);
    if (!st)
        return error_json("%s", "out of memory");
    json_object_set_new(st, "uptime_s", json_real((double)(shm_now_us() - s->started_us) / 1e6));
    /* It changes with a binary upgrade (SIGUSR2): where to send the next signal. */
    json_object_set_new(st, "supervisor_pid", json_integer((json_int_t)getpid()));
    return json_pack("{s:o}", "stats", st);
}

static json_t *cmd_pools(struct sup *s, const char *args)
{
    return json_pack("{s:o}", "pools", rt_pools_json(s->seg));
}

static json_t *cmd_slow(struct sup *s, const char *args)
{
    int n = SLOW_DEFAULT;

    if (*args && rt_parse_int(args, 1, SHM_SLOW_RING, &n) != 0)
        return error_json("slow takes a count from 1 to %d, got '%s'", SHM_SLOW_RING, args);
    return json_pack("{s:o}", "slow", rt_slow_json(s->seg, n));
}

/* The effective configuration; the database URLs only in their redacted form. */
static json_t *cmd_config(struct sup *s, const char *args)
{
    const struct sup_config *c = s->cfg;
    const struct rt_dburl *db = c->db;
    json_t *plugins = json_array(), *doc;
    char bound[80];

    for (int i = 0; i < c->nplugins; i++)
        json_array_append_new(plugins, json_string(c->plugins[i]));
    doc = json_pack(
        "{s:{s:i,s:i,s:s,s:s,s:i,s:i,s:i,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:s,s:s*,s:o,s:s,s:s*,"
        "s:{s:i,s:i,s:i,s:b,s:i,s:i,s:i}}}",
        "config", "web", sup_role_count(s, SHM_ROLE_WEB), "jobs", sup_role_count(s, SHM_ROLE_JOB),
        "control", c->control_path, "listen", c->listen_addr, "listen_port", s->listen_port,
        "shutdown_timeout_s", c->shutdown_timeout_s, "max_db_connections", s->budget, "io",
        c->io_mode, "slow_query_threshold_ms", c->slow_query_ms, "health_timeout_s",
        c->health_timeout_s, "wait_for_db_s", c->wait_for_db_s, "worker_timeout_s",
        c->worker_timeout_s, "stats_interval_s", c->stats_interval_s, "utilization_warn_after_s",
        c->utilization_warn_s, "log_format", c->log_format, "log_file", c->log_file, "plugins",
        plugins, "database_url", db->redacted, "database_replica_url",
        c->replica ? c->replica->redacted : NULL, "pool", "connection_limit", db->connection_limit,
        "pool_timeout_s", db->pool_timeout_s, "connect_timeout_s", db->connect_timeout_s,
        "pgbouncer", db->pgbouncer, "statement_cache_size", db->statement_cache_size,
        "max_idle_time_s", db->max_idle_time_s, "max_lifetime_s", db->max_lifetime_s);
    /* What --listen resolved to ("localhost:0" -> "127.0.0.1:41234"). */
    if (doc && s->n_listen_fds > 0)
        json_object_set_new(json_object_get(doc, "config"), "listen_address",
                            json_string(sup_listen_name(s->listen_fds[0], bound, sizeof bound)));
    /* The admin listener and the access log; whether a token is set, never the token. */
    if (doc) {
        json_t *cf = json_object_get(doc, "config");
        json_object_set_new(cf, "admin_listen",
                            c->admin_listen ? json_string(c->admin_listen) : json_null());
        if (s->n_admin_fds > 0) {
            json_object_set_new(cf, "admin_port", json_integer(s->admin_port));
            json_object_set_new(cf, "admin_address",
                                json_string(sup_listen_name(s->admin_fds[0], bound, sizeof bound)));
        }
        json_object_set_new(cf, "access_log",
                            c->access_log ? json_string(c->access_log) : json_null());
        json_object_set_new(cf, "api_token_set", json_boolean(c->api_token != NULL));
        json_t *limits = json_object();
        for (int i = 0; i < c->nlimited; i++)
            json_object_set_new(limits, c->limited_queues[i], json_integer(c->queue_limits[i]));
        json_object_set_new(cf, "queue_concurrency", limits);
    }
    return doc;
}

/* scale web|jobs N */
static json_t *cmd_scale(struct sup *s, const char *args)
{
    char role[8], count[32], extra[2], err[512];
    long long n;
    enum shm_role r;

    /* The count as text: sscanf's %d turns a number too large for an int into garbage. */
    if (sscanf(args, "%7s %31s %1s", role, count, extra) != 2)
        return error_json("usage: scale web|jobs N, got '%s'", args);
    if (rt_parse_ll(count, 0, SUP_MAX_ROLE_WORKERS, &n) < 0)
        return error_json("scale: the worker count must be 0..%d, got '%s'", SUP_MAX_ROLE_WORKERS,
                          count);
    if (strcmp(role, "web") == 0)
        r = SHM_ROLE_WEB;
    else if (strcmp(role, "jobs") == 0 || strcmp(role, "job") == 0)
        r = SHM_ROLE_JOB;
    else
        return error_json("scale: role must be web or jobs, got '%s'", role);
    if (sup_scale(s, r, (int)n, err, sizeof err) < 0)
        return error_json("scale refused: %s", err);
    return json_pack("{s:{s:i,s:i}}", "scaled", "web", sup_role_count(s, SHM_ROLE_WEB), "jobs",
                     sup_role_count(s, SHM_ROLE_JOB));
}

static json_t *cmd_reload(struct sup *s, const char *args)
{
    char err[1024];
    if (sup_reload(s, err, sizeof err) < 0)
        return error_json("reload refused: %s", err);
    return json_pack("{s:{s:i}}", "reload", "epoch", (int)s->epoch);
}

static json_t *cmd_shutdown(struct sup *s, const char *args)
{
    bool fast = strcmp(args, "fast") == 0;
    if (*args && !fast)
        return error_json("usage: shutdown [fast], got '%s'", args);
    sup_shutdown(s, fast);
    return json_pack("{s:{s:s}}", "shutdown", "mode", fast ? "fast" : "graceful");
}

/* {count, p50, p99} of a histogram. */
static json_t *hist_summary(const struct shm_hist *h)
{
    return json_pack("{s:I,s:I,s:I}", "count", (json_int_t)h->count, "p50",
                     (json_int_t)shm_hist_quantile(h, 0.5), "p99",
                     (json_int_t)shm_hist_quantile(h, 0.99));
}

/* Queue depth (cached by the supervisor's sweep, not read per call) and job counters. */
static json_t *cmd_jobs(struct sup *s, const char *args)
{
    struct shm_counters totals;
    struct shm_hists hists;
    json_t *depth = s->jobs ? sup_jobq_json(s->jobs) : json_object();

    shm_counters_total(s->seg, &totals);
    shm_hists_total(s->seg, &hists);
    json_object_set_new(depth, "done", json_integer((json_int_t)totals.jobs_done));
    json_object_set_new(depth, "failed", json_integer((json_int_t)totals.jobs_failed));
    json_object_set_new(depth, "retried", json_integer((json_int_t)totals.jobs_retried));
    json_object_set_new(depth, "job_us", hist_summary(&hists.job));
    json_object_set_new(depth, "job_wait_us", hist_summary(&hists.job_wait));
    json_object_set_new(depth, "job_claim_batch", hist_summary(&hists.claim_batch));
    return json_pack("{s:o}", "jobs", depth);
}

/* This node's lease of the cluster budget and the nodes as its last renewal saw them. */
static json_t *cmd_cluster(struct sup *s, const char *args)
{
    json_t *doc = s->jobs ? sup_jobq_cluster_json(s->jobs) : NULL;
    return doc ? json_pack("{s:o}", "cluster", doc)
               : json_pack("{s:s}", "error", "no lease: the job-queue connection is not running");
}

/* The commands, in the order `help` lists them. */
static const struct {
    const char *word;
    json_t *(*run)(struct sup *s, const char *args);
    bool takes_args;
    const char *summary;
} commands[] = {
    {"workers", cmd_workers, false, "worker table: role, pid, state, restarts, uptime"},
    {"budget", cmd_budget, false, "global connection budget: slots and slots in use"},
    {"stats", cmd_stats, false, "aggregated counters and histograms of all workers"},
    {"pools", cmd_pools, false, "connection pools: totals and per worker"},
    {"slow", cmd_slow, true, "slow [N]: the last N slow queries (default 10)"},
    {"jobs", cmd_jobs, false, "job queue depth by queue and state, and job counters"},
    {"cluster", cmd_cluster, false, "the cluster budget: this node's lease and every node's"},
    {"config", cmd_config, false, "effective configuration (secrets redacted)"},
    {"scale", cmd_scale, true, "scale web|jobs N: change a worker count (inside the budget)"},
    {"reload", cmd_reload, false, "rolling restart: new workers up before old ones drain"},
    {"shutdown", cmd_shutdown, true, "shutdown [fast]: graceful (or fast) stop"},
    {"help", cmd_help, false, "this list"},
};

json_t *ctl_commands_json(void)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < sizeof commands / sizeof commands[0]; i++)
        json_object_set_new(o, commands[i].word, json_string(commands[i].summary));
    return o ? json_pack("{s:o}", "commands", o) : NULL;
}

static json_t *cmd_help(struct sup *s, const char *args)
{
    return ctl_commands_json();
}

json_t *sup_control_dispatch(struct sup *s, const char *line)
{
    char word[32];
    size_t n = 0;
    const char *args;

    while (isspace((unsigned char)*line))
        line++;
    while (line[n] && !isspace((unsigned char)line[n]))
        n++;
    if (n == 0)
        return error_json("%s", "empty command (try 'help')");
    for (size_t i = 0; i < n; i++) {
        if (!isprint((unsigned char)line[i]))
            return error_json("%s", "command contains control or non-ASCII bytes");
    }
    if (n >= sizeof word)
        return error_json("unknown command '%.32s...'", line);
    memcpy(word, line, n);
    word[n] = '\0';
    args = line + n;
    while (isspace((unsigned char)*args))
        args++;

    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(word, commands[i].word) != 0)
            continue;
        if (!commands[i].takes_args && *args)
            return error_json("'%s' takes no arguments", word);
        return commands[i].run(s, args);
    }
    return error_json("unknown command '%s'", word);
}
