/*
 * What the supervisor logs on its own for monitoring: the sustained utilisation warning
 * (budget or pool use above 80 % for --utilization-warn-after, once per episode, and a
 * line when it recovers) and the periodic `stats` line (--stats-interval; 0 = off; 60 by
 * default). The load is real: sleep jobs hold every connection of the job worker's pool.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define DB "pgct405"
#define LIMIT 4
#define BUDGET (LIMIT + 1) /* one job worker, no web worker */
#define HOT_MS 2500        /* each sleep job holds a connection this long */
#define WARN_MSG "connection utilisation above 80 %"
#define BACK_MSG "utilisation back under 80 %"

static const char *control;

/* Log lines of path with this msg and, when what is not NULL, this "what" field. */
static json_t *lines_of(const char *path, const char *msg, const char *what)
{
    char *text = ot_read_file(path);
    json_t *all = ot_log_lines(text, msg), *out = json_array(), *l;
    size_t i;
    json_array_foreach(all, i, l)
    {
        const char *w = json_string_value(json_object_get(l, "what"));
        if (!what || (w && strcmp(w, what) == 0))
            json_array_append(out, l);
    }
    json_decref(all);
    free(text);
    return out;
}

struct log_wait {
    const char *path, *msg, *what;
    size_t n;
};

static bool log_has(void *arg)
{
    struct log_wait *lw = arg;
    json_t *l = lines_of(lw->path, lw->msg, lw->what);
    bool yes = json_array_size(l) >= lw->n;
    json_decref(l);
    return yes;
}

static double uptime_s(void)
{
    json_t *doc = pgt_ctl(control, "stats");
    double v = json_number_value(json_object_get(json_object_get(doc, "stats"), "uptime_s"));
    json_decref(doc);
    return v;
}

static bool uptime_over(void *arg)
{
    return uptime_s() >= *(double *)arg;
}

static bool job_ready(void *arg)
{
    return ot_all_ready(control, 0, 1);
}

/* Starts a supervisor with one job worker and the extra flags; bails when it does not come
 * up. */
static void start(struct pgt_proc *sup, const char *env_url, const char *plugin,
                  const char *logfile, char *const extra[])
{
    char *argv[32] = {(char *)pgt_binary(),
                      "run",
                      "--web",
                      "0",
                      "--jobs",
                      "1",
                      "--control",
                      (char *)control,
                      "--listen",
                      "127.0.0.1:0",
                      "--plugin",
                      (char *)plugin,
                      "--log-file",
                      (char *)logfile};
    int n = 14;
    for (int i = 0; extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    char *env[] = {(char *)env_url, NULL};
    unlink(logfile);
    pgt_spawn(sup, argv, env);
    if (!pgt_wait_until(job_ready, NULL, 20000)) {
        pgt_proc_drain(sup);
        char *log = ot_read_file(logfile);
        bail("supervisor did not come up:\n%s\n%s", sup->log, log ? log : "");
    }
}

static void stop(struct pgt_proc *sup, const char *what)
{
    kill(sup->pid, SIGTERM);
    ok(pgt_proc_wait_exit(sup, 20000) && WIFEXITED(sup->status) && WEXITSTATUS(sup->status) == 0,
       "%s: SIGTERM, the supervisor exits 0", what);
    pgt_proc_cleanup(sup);
}

static long long int_at(json_t *o, const char *k1, const char *k2)
{
    json_t *v = json_object_get(o, k1);
    if (k2)
        v = json_object_get(v, k2);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* Whether a stats log line has the documented shape. */
static bool stats_line_ok(json_t *l)
{
    json_t *pools = json_object_get(l, "pools");
    const char *level = json_string_value(json_object_get(l, "level"));
    const char *role = json_string_value(json_object_get(l, "role"));
    return level && strcmp(level, "info") == 0 && role && strcmp(role, "supervisor") == 0 &&
           json_is_string(json_object_get(l, "ts")) && int_at(l, "workers", NULL) == 1 &&
           int_at(l, "budget", "slots") == BUDGET && int_at(l, "budget", "in_use") >= 1 &&
           int_at(pools, "open", NULL) >= 0 && int_at(pools, "in_use", NULL) >= 0 &&
           int_at(pools, "idle", NULL) >= 0 && int_at(pools, "waiting", NULL) >= 0 &&
           int_at(pools, "acquires", NULL) >= 0;
}

int main(void)
{
    char env_url[1200], plugin[1024], log_a[128], log_b[128], log_c[128];
    struct pgt_proc sup;
    json_t *l, *w;
    size_t i;

    tap_timeout(120);
    control = pgt_tmp_path("t405.sock");
    snprintf(log_a, sizeof log_a, "%s", pgt_tmp_path("t405-a.log"));
    snprintf(log_b, sizeof log_b, "%s", pgt_tmp_path("t405-b.log"));
    snprintf(log_c, sizeof log_c, "%s", pgt_tmp_path("t405-c.log"));
    const char *url = jt_create_db(DB);
    /* Idle connections close after 1 s, so that budget use falls back after the load. */
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s&connection_limit=%d&max_idle_time=1", url,
             LIMIT);
    snprintf(plugin, sizeof plugin, "%s", jt_example_plugin("basic"));
    plan(21);

    /* ---- A: --utilization-warn-after 1 --stats-interval 1 ---- */
    start(&sup, env_url, plugin, log_a,
          (char *[]){"--utilization-warn-after", "1", "--stats-interval", "1", NULL});
    ok(ot_config_int(control, "utilization_warn_after_s") == 1 &&
           ot_config_int(control, "stats_interval_s") == 1,
       "config shows utilization_warn_after_s 1 and stats_interval_s 1");

    /* Idle first: two stats lines take over 2 s of the supervisor's own ticks, longer than
     * the 1 s warning window. The warning's absence is what is tested here, so the bound
     * is an event of the supervisor (its stats lines), not a sleep in place of a wait. */
    struct log_wait lw = {log_a, "stats", NULL, 2};
    bool two = pgt_wait_until(log_has, &lw, 10000);
    double up_two = uptime_s();
    json_t *stats = lines_of(log_a, "stats", NULL);
    ok(two, "--stats-interval 1: a stats line every second (%zu by uptime %.1f s)",
       json_array_size(stats), up_two);
    ok((double)json_array_size(stats) <= floor(up_two) + 1,
       "and no more than one a second (%zu lines in %.1f s)", json_array_size(stats), up_two);
    bool shape = json_array_size(stats) >= 2, idle = true;
    json_array_foreach(stats, i, l)
    {
        shape = shape && stats_line_ok(l);
        idle = idle && int_at(l, "budget", "in_use") * 10 <= BUDGET * 8 &&
               int_at(json_object_get(l, "pools"), "in_use", NULL) * 10 <= LIMIT * 8;
    }
    ok(shape, "each stats line is JSON with level, role, workers, budget {slots, in_use} and "
              "pools {open, in_use, idle, waiting, acquires}");
    if (!shape || !idle) {
        char *t = json_dumps(stats, JSON_COMPACT);
        diag("%s", t);
        free(t);
    }
    json_decref(stats);
    ok(idle, "the stats lines show pool and budget use at most 80 %%");
    w = lines_of(log_a, WARN_MSG, NULL);
    is_int(json_array_size(w), 0, "idle for %.1f s (over the 1 s window): no utilisation warning",
           up_two);
    json_decref(w);

    /* Hot: LIMIT sleep jobs hold all LIMIT connections of the pool for HOT_MS; with the
     * supervisor's own connection that is every slot of B. */
    PGconn *db = jt_connect(url);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pgcorral.add_job('sleep', '{\"ms\":%d}'::jsonb))"
             " FROM generate_series(1, %d)",
             HOT_MS, LIMIT);
    long long t_hot = pgt_now_ms();
    jt_exec(db, sql);
    lw = (struct log_wait){log_a, WARN_MSG, "budget", 1};
    bool got_budget = pgt_wait_until(log_has, &lw, 10000);
    lw = (struct log_wait){log_a, WARN_MSG, "pool", 1};
    bool got_pool = pgt_wait_until(log_has, &lw, 10000);
    long long t_warned = pgt_now_ms();

    w = lines_of(log_a, WARN_MSG, "budget");
    l = json_array_get(w, 0);
    ok(got_budget && strcmp(json_string_value(json_object_get(l, "level")), "warn") == 0 &&
           int_at(l, "in_use", NULL) == BUDGET && int_at(l, "slots", NULL) == BUDGET &&
           json_number_value(json_object_get(l, "utilization")) > 0.8 &&
           json_number_value(json_object_get(l, "sustained_s")) >= 1.0,
       "budget above 80 %% for 1 s: a warning with the numbers (in_use %lld of %lld slots, "
       "utilization %.2f, sustained %.1f s)",
       int_at(l, "in_use", NULL), int_at(l, "slots", NULL),
       json_number_value(json_object_get(l, "utilization")),
       json_number_value(json_object_get(l, "sustained_s")));
    json_decref(w);
    w = lines_of(log_a, WARN_MSG, "pool");
    l = json_array_get(w, 0);
    const char *wrole = json_string_value(json_object_get(l, "worker_role"));
    ok(got_pool && wrole && strcmp(wrole, "job") == 0 && int_at(l, "worker_index", NULL) == 0 &&
           int_at(l, "in_use", NULL) == LIMIT && int_at(l, "limit", NULL) == LIMIT &&
           json_number_value(json_object_get(l, "utilization")) > 0.8 &&
           json_number_value(json_object_get(l, "sustained_s")) >= 1.0,
       "pool above 80 %% for 1 s: a warning naming the worker (job %lld, in_use %lld of %lld, "
       "sustained %.1f s)",
       int_at(l, "worker_index", NULL), int_at(l, "in_use", NULL), int_at(l, "limit", NULL),
       json_number_value(json_object_get(l, "sustained_s")));
    json_decref(w);
    ok(t_warned - t_hot >= 1000 && t_warned - t_hot < HOT_MS + 2000,
       "the warnings came after the 1 s window, while the load lasted (%lld ms)", t_warned - t_hot);

    /* The load ends: the pool empties, the idle connections close (max_idle_time=1). */
    lw = (struct log_wait){log_a, BACK_MSG, "pool", 1};
    ok(pgt_wait_until(log_has, &lw, 15000), "pool use falls: '%s' (pool)", BACK_MSG);
    lw = (struct log_wait){log_a, BACK_MSG, "budget", 1};
    ok(pgt_wait_until(log_has, &lw, 15000), "budget use falls: '%s' (budget)", BACK_MSG);
    w = lines_of(log_a, WARN_MSG, NULL);
    is_int(json_array_size(w), 2, "one warning per episode: one for the budget, one for the pool");
    if (json_array_size(w) != 2) {
        char *t = json_dumps(w, JSON_COMPACT);
        diag("%s", t);
        free(t);
    }
    json_decref(w);
    PQfinish(db);
    stop(&sup, "A");

    /* ---- B: --stats-interval 0 ---- */
    start(&sup, env_url, plugin, log_b, (char *[]){"--stats-interval", "0", NULL});
    is_int(ot_config_int(control, "stats_interval_s"), 0, "config shows stats_interval_s 0");
    /* The same span in which A logged two lines, by the supervisor's own clock: the
     * absence of the line is what is tested. */
    double span = up_two > 2.5 ? up_two : 2.5;
    bool up = pgt_wait_until(uptime_over, &span, 10000);
    double up_b = uptime_s();
    ok(up, "B has been up %.1f s", up_b);
    stats = lines_of(log_b, "stats", NULL);
    json_t *all = lines_of(log_b, NULL, NULL);
    is_int(json_array_size(stats), 0, "--stats-interval 0: no stats line in %.1f s", up_b);
    ok(json_array_size(all) > 0, "while the log has other lines (%zu)", json_array_size(all));
    json_decref(stats);
    json_decref(all);
    stop(&sup, "B");

    /* ---- C: the defaults ---- */
    start(&sup, env_url, plugin, log_c, (char *[]){NULL});
    is_int(ot_config_int(control, "stats_interval_s"), 60, "by default stats_interval_s is 60");
    is_int(ot_config_int(control, "utilization_warn_after_s"), 30,
           "by default utilization_warn_after_s is 30");
    stop(&sup, "C");

    unlink(log_a);
    unlink(log_b);
    unlink(log_c);
    return done_testing();
}
