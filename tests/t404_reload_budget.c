/*
 * A rolling restart inside the budget, under load: wrk keeps the web workers' pools busy
 * (GET /api/v1/health: SELECT 1 through the pool) and a backlog of sleep jobs keeps the
 * job workers' pools busy, while SIGHUP and then `reload` replace every worker. A sampler
 * counts our backends in pg_stat_activity every 100 ms throughout: never more than B. wrk
 * sees no socket error and no non-2xx answer, and the supervisor serves afterwards.
 */
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

#define DB "pgct404"
#define WEB 2
#define JOBS 2
#define LIMIT 2
#define BUDGET ((WEB + JOBS) * LIMIT + 1)
#define BACKLOG 60  /* sleep jobs of 1 s: 15 s of work at 4 at a time, longer than the test */
#define JOB_MS 1000 /* draining job workers hold their connections a while: a reload takes time */

static const char *control;
static const char *logfile;
static struct ot_sampler sampler;

/* A reload being waited for: the pids it must replace, and which completion line. */
struct reload_wait {
    struct ot_worker before[16];
    int nbefore;
    int completions; /* "rolling restart complete" lines wanted in the log */
};

/* Whether every worker of before is gone, WEB + JOBS new ones are ready, and the log says
 * the rolling restart completed. */
static bool reload_done(void *arg)
{
    struct reload_wait *rw = arg;
    struct ot_worker now[16];
    int n = ot_workers(control, now, 16);

    if (!ot_all_ready(control, WEB, JOBS))
        return false;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < rw->nbefore; j++)
            if (now[i].pid == rw->before[j].pid)
                return false;
    char *log = ot_read_file(logfile);
    int done = ot_count(log, "\"msg\":\"rolling restart complete\"");
    free(log);
    return done >= rw->completions;
}

/* "pid,pid,..." of a worker list, for diagnostics. */
static const char *pids_text(const struct ot_worker *w, int n, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%d", i ? "," : "", (int)w[i].pid);
    return buf;
}

/* Whether a and b share no pid. */
static bool disjoint(const struct ot_worker *a, int na, const struct ot_worker *b, int nb)
{
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++)
            if (a[i].pid == b[j].pid)
                return false;
    return true;
}

static long long stat_total(const char *name)
{
    json_t *doc = pgt_ctl(control, "stats");
    long long v = json_integer_value(
        json_object_get(json_object_get(json_object_get(doc, "stats"), "totals"), name));
    json_decref(doc);
    return v;
}

/* How far the load must get before the next step: requests, jobs, samples. */
struct progress {
    long long requests, jobs;
    int samples;
};

static bool reached(void *arg)
{
    struct progress *p = arg;
    return stat_total("http_requests") >= p->requests && stat_total("jobs_done") >= p->jobs &&
           atomic_load(&sampler.nsamples) >= p->samples;
}

/* Every job worker runs LIMIT jobs at once, so each holds its whole pool: a reload then
 * has draining job workers that keep their connections while the new ones want theirs. */
static bool jobs_busy(void *arg)
{
    json_t *doc = pgt_ctl(control, "pools"), *w;
    size_t i;
    int busy = 0, jobs = 0;
    json_array_foreach(json_object_get(json_object_get(doc, "pools"), "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "role")), "job") != 0)
            continue;
        jobs++;
        busy += json_integer_value(json_object_get(w, "in_use")) == LIMIT;
    }
    json_decref(doc);
    return jobs == JOBS && busy == JOBS;
}

static bool ready(void *arg)
{
    return ot_all_ready(control, WEB, JOBS);
}

int main(void)
{
    char env_url[1200], plugin[1024], a[256], b[256];
    struct pgt_proc sup;
    struct ot_wrk wrk;
    struct ot_wrk_result wr;
    struct reload_wait rw1 = {0}, rw2 = {0};
    struct ot_worker after[16];
    long long windows[2][2];
    json_t *doc;

    tap_timeout(90);
    control = pgt_tmp_path("t404.sock");
    logfile = pgt_tmp_path("t404.log");
    unlink(logfile);
    const char *url = jt_create_db(DB);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s&connection_limit=%d", url, LIMIT);
    snprintf(plugin, sizeof plugin, "%s", jt_example_plugin("basic"));
    plan(19);

    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "2",
                    "--jobs",
                    "2",
                    "--control",
                    (char *)control,
                    "--listen",
                    "127.0.0.1:0",
                    "--plugin",
                    plugin,
                    "--log-file",
                    (char *)logfile,
                    "--shutdown-timeout",
                    "20",
                    NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(&sup, argv, env);
    if (!pgt_wait_until(ready, NULL, 20000)) {
        pgt_proc_drain(&sup);
        char *log = ot_read_file(logfile);
        bail("supervisor did not come up:\n%s\n%s", sup.log, log ? log : "");
    }
    int port = (int)ot_config_int(control, "listen_port");
    doc = pgt_ctl(control, "budget");
    is_int(json_integer_value(json_object_get(json_object_get(doc, "budget"), "slots")), BUDGET,
           "B = (%d + %d) x %d + 1 = %d", WEB, JOBS, LIMIT, BUDGET);
    json_decref(doc);

    /* Our backends on the test's own database, not counting the sampler. */
    ot_sampler_start(&sampler, url,
                     "SELECT count(*) FROM pg_stat_activity WHERE datname = '" DB "'"
                     " AND application_name LIKE 'pgcorral%' AND pid <> pg_backend_pid()",
                     100);

    PGconn *db = jt_connect(url);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pgcorral.add_job('sleep', '{\"ms\":%d}'::jsonb))"
             " FROM generate_series(1, %d)",
             JOB_MS, BACKLOG);
    jt_exec(db, sql);
    ot_wrk_start(&wrk, port, "/api/v1/health", 8, 60);
    /* A second of load and samples before the first reload. */
    struct progress want = {1000, 4, 10};
    bool got = pgt_wait_until(reached, &want, 15000);
    long long requests_before = stat_total("http_requests");
    ok(got, "under load: %lld requests answered, %lld jobs done before the reload", requests_before,
       stat_total("jobs_done"));

    /* First reload: SIGHUP. */
    ok(pgt_wait_until(jobs_busy, NULL, 10000), "both job workers' pools are in full use");
    rw1.nbefore = ot_workers(control, rw1.before, 16);
    rw1.completions = 1;
    windows[0][0] = pgt_now_ms();
    kill(sup.pid, SIGHUP);
    bool done1 = pgt_wait_until(reload_done, &rw1, 20000);
    windows[0][1] = pgt_now_ms();
    rw2.nbefore = ot_workers(control, rw2.before, 16);
    ok(done1 && rw1.nbefore == WEB + JOBS &&
           disjoint(rw1.before, rw1.nbefore, rw2.before, rw2.nbefore),
       "SIGHUP: every worker replaced, the new ones ready (%s -> %s, %lld ms)",
       pids_text(rw1.before, rw1.nbefore, a, sizeof a),
       pids_text(rw2.before, rw2.nbefore, b, sizeof b), windows[0][1] - windows[0][0]);

    /* Second reload: the control command, once the new job workers are busy too. */
    ok(pgt_wait_until(jobs_busy, NULL, 10000), "the new job workers' pools are in full use");
    long long jobs_mid = stat_total("jobs_done");
    diag("%lld of %d jobs done before the second reload", jobs_mid, BACKLOG);
    rw2.completions = 2;
    windows[1][0] = pgt_now_ms();
    doc = pgt_ctl(control, "reload");
    ok(json_object_get(doc, "reload") != NULL, "reload over the control socket is accepted");
    json_decref(doc);
    bool done2 = pgt_wait_until(reload_done, &rw2, 20000);
    windows[1][1] = pgt_now_ms();
    int nafter = ot_workers(control, after, 16);
    ok(done2 && disjoint(rw2.before, rw2.nbefore, after, nafter) &&
           disjoint(rw1.before, rw1.nbefore, after, nafter),
       "reload: every worker replaced again (%s -> %s, %lld ms)",
       pids_text(rw2.before, rw2.nbefore, a, sizeof a), pids_text(after, nafter, b, sizeof b),
       windows[1][1] - windows[1][0]);

    /* Load and samples on the new workers before wrk stops: they serve, too. */
    want = (struct progress){stat_total("http_requests") + 1000, stat_total("jobs_done") + 2,
                             atomic_load(&sampler.nsamples) + 10};
    ok(pgt_wait_until(reached, &want, 15000), "the new workers serve requests and run jobs");
    ot_wrk_stop(&wrk, &wr);
    ot_sampler_stop(&sampler);

    ok(wr.ran && wr.requests > requests_before,
       "wrk ran through both reloads (%ld requests, %lld before the first)", wr.requests,
       requests_before);
    if (!wr.ran)
        diag("wrk: %s", wr.out);
    is_int(wr.err_connect + wr.err_read + wr.err_write + wr.err_timeout, 0,
           "wrk: 0 socket errors through the rolling restarts");
    is_int(wr.non2xx, 0, "wrk: 0 non-2xx answers through the rolling restarts");
    if (wr.err_connect + wr.err_read + wr.err_write + wr.err_timeout + wr.non2xx)
        diag("wrk: %s", wr.out);
    ok(stat_total("jobs_done") > jobs_mid, "job workers kept working across the reloads");

    /* The samples: many of them, some inside each reload, and never more than B. */
    int n = atomic_load(&sampler.nsamples), max = 0, in_reload[2] = {0, 0}, max_reload = 0;
    for (int i = 0; i < n; i++) {
        const struct ot_sample *s = &sampler.samples[i];
        max = s->n > max ? s->n : max;
        for (int k = 0; k < 2; k++) {
            if (s->t_ms >= windows[k][0] && s->t_ms <= windows[k][1]) {
                in_reload[k]++;
                max_reload = s->n > max_reload ? s->n : max_reload;
            }
        }
    }
    ok(n >= 30 && in_reload[0] >= 1 && in_reload[1] >= 1,
       "pg_stat_activity sampled throughout: %d samples, %d and %d during the reloads "
       "(%d failed)",
       n, in_reload[0], in_reload[1], atomic_load(&sampler.errors));
    ok(max <= BUDGET, "never more than B = %d of our connections open (max %d, %d in the reloads)",
       BUDGET, max, max_reload);
    /* Not vacuous: the pools were full, so a restart that ignored B would have shown. */
    ok(max_reload >= BUDGET - 1, "the budget was nearly all in use during the reloads (max %d)",
       max_reload);

    /* Still serving: HTTP and the control socket. */
    char *resp = NULL;
    int st = ot_http_get(port, "/api/v1/health", &resp);
    ok(st == 200, "GET /api/v1/health after the reloads: %d", st);
    free(resp);
    ok(ot_all_ready(control, WEB, JOBS), "the control socket lists %d ready workers", WEB + JOBS);

    char *log = ot_read_file(logfile);
    json_t *errors = json_array();
    json_t *lines = ot_log_lines(log, NULL), *line;
    size_t i;
    json_array_foreach(lines, i, line)
    {
        if (strcmp(json_string_value(json_object_get(line, "level")), "error") == 0)
            json_array_append(errors, line);
    }
    ok(json_array_size(lines) > 0 && json_array_size(errors) == 0,
       "no error in the log through the reloads (%zu lines)", json_array_size(lines));
    if (json_array_size(errors)) {
        char *t = json_dumps(errors, JSON_COMPACT);
        diag("%.3000s", t);
        free(t);
    }
    json_decref(errors);
    json_decref(lines);
    free(log);

    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 30000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "SIGTERM: the supervisor exits 0");
    pgt_proc_cleanup(&sup);
    ot_sampler_free(&sampler);
    PQfinish(db);
    unlink(logfile);
    return done_testing();
}
