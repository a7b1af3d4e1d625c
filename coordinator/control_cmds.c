/*
 * The control socket's commands, dispatched through one {word, handler} table. Each
 * handler returns the JSON document that answers it.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/sup_int.h"

#define SLOW_DEFAULT 10

static json_t *cmd_help(struct sup *s, const char *args);

__attribute__((format(printf, 1, 2))) static json_t *error_json(const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
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
        unsigned state = atomic_load(&sw->state);
        uint64_t hb = atomic_load(&sw->heartbeat_us);
        json_t *o = json_pack("{s:s,s:i,s:i,s:s,s:i,s:i,s:f,s:f}", "role",
                              rt_role_name(w->role), "index", w->role_index, "pid", (int)w->pid,
                              "state", w->fatal ? "failed" : rt_state_name(state), "restarts",
                              w->restarts, "generation", (int)w->generation, "uptime_s",
                              w->pid > 0 ? (double)(now - w->started_us) / 1e6 : 0.0,
                              "heartbeat_age_s", hb && now > hb ? (double)(now - hb) / 1e6 : 0.0);
        json_array_append_new(arr, o);
    }
    return json_pack("{s:o}", "workers", arr);
}

static json_t *cmd_budget(struct sup *s, const char *args)
{
    return json_pack("{s:{s:i,s:i,s:i,s:i,s:i,s:i,s:b}}", "budget", "slots", s->budget, "in_use",
                     (int)shm_budget_in_use(s->seg), "per_worker_limit",
                     s->cfg->db->connection_limit, "max_connections",
                     s->preflight.max_connections, "superuser_reserved",
                     s->preflight.superuser_reserved, "workers",
                     s->cfg->web_workers + s->cfg->job_workers, "shared",
                     s->cfg->max_db_connections > 0 &&
                         s->cfg->max_db_connections <
                             (s->cfg->web_workers + s->cfg->job_workers) *
                                     s->cfg->db->connection_limit +
                                 1);
}

static json_t *cmd_stats(struct sup *s, const char *args)
{
    json_t *st = rt_stats_json(s->seg);
    if (!st)
        return error_json("%s", "out of memory");
    json_object_set_new(st, "uptime_s", json_real((double)(shm_now_us() - s->started_us) / 1e6));
    return json_pack("{s:o}", "stats", st);
}

static json_t *cmd_pools(struct sup *s, const char *args)
{
    return json_pack("{s:o}", "pools", rt_pools_json(s->seg));
}

static json_t *cmd_slow(struct sup *s, const char *args)
{
    long n = SLOW_DEFAULT;
    char *end;

    if (*args) {
        n = strtol(args, &end, 10);
        if (end == args || *end || n < 1 || n > SHM_SLOW_RING)
            return error_json("slow takes a count from 1 to 64, got '%s'", args);
    }
    return json_pack("{s:o}", "slow", rt_slow_json(s->seg, (int)n));
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
    {"help", cmd_help, false, "this list"},
};

static json_t *cmd_help(struct sup *s, const char *args)
{
    json_t *o = json_object();
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        json_object_set_new(o, commands[i].word, json_string(commands[i].summary));
    return json_pack("{s:o}", "commands", o);
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
