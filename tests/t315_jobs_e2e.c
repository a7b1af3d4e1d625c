/*
 * End to end through the real binary: `pgcorral run --web 0 --jobs 2 --plugin jobs.so`
 * migrates the schema, runs jobs added with `pgcorral enqueue` and with SQL, shows them in
 * `ctl jobs`; a SIGKILLed job worker's long jobs run again within 1 s on the other worker;
 * SIGTERM in the middle of 10,000 jobs leaves each done exactly once or still queued, none
 * locked, and the supervisor exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

static PGconn *db;
static const char *control;

/* The pids of the job workers, from `ctl workers`; returns how many are ready. */
static int job_workers(pid_t pids[2])
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    int n = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "role")), "job") == 0 &&
            strcmp(json_string_value(json_object_get(w, "state")), "ready") == 0 && n < 2)
            pids[n++] = (pid_t)json_integer_value(json_object_get(w, "pid"));
    }
    json_decref(doc);
    return n;
}

static bool two_ready(void *arg)
{
    return job_workers(arg) == 2;
}

static void start(struct pgt_proc *sup, const char *url, const char *plugin)
{
    static char env_url[1200];
    pid_t pids[2];
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "0",
                    "--jobs",
                    "2",
                    "--plugin",
                    (char *)plugin,
                    "--control",
                    (char *)control,
                    "--shutdown-timeout",
                    "20",
                    NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(sup, argv, env);
    if (!pgt_wait_until(two_ready, pids, 20000)) {
        pgt_proc_drain(sup);
        bail("the supervisor did not come up:\n%s", sup->log);
    }
}

/* `pgcorral enqueue ARGS...`: returns the exit status; its output in out. */
static int enqueue(const char *url, char **argv_tail, char *out, size_t outlen)
{
    struct pgt_proc p;
    char *argv[12] = {(char *)pgt_binary(), "enqueue"};
    static char env_url[1200];
    int n = 2;
    for (int i = 0; argv_tail[i] && n < 11; i++)
        argv[n++] = argv_tail[i];
    argv[n] = NULL;
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *env[] = {env_url, NULL};
    pgt_spawn(&p, argv, env);
    pgt_proc_wait_exit(&p, 10000);
    snprintf(out, outlen, "%s", p.log ? p.log : "");
    int st = WIFEXITED(p.status) ? WEXITSTATUS(p.status) : -1;
    pgt_proc_cleanup(&p);
    return st;
}

int main(void)
{
    struct pgt_proc sup;
    char out[512];
    pid_t pids[2];
    long long t_kill, dt;

    tap_timeout(150);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t315");
    control = pgt_tmp_path("t315.sock");
    db = jt_connect(url);
    jt_exec(db, "CREATE TABLE t_runs (job_id bigint, attempt int, task text, phase text,"
                " at timestamptz DEFAULT clock_timestamp())");
    const char *plugin = jt_build_plugin("jobs", NULL);

    start(&sup, url, plugin);
    ok(pgt_query_ll(db, "SELECT max(version) FROM pgcorral.migrations") >= 1,
       "pgcorral run migrates the schema");

    int st = enqueue(url, (char *[]){"t.record", "{\"cli\":1}", "--priority", "-1", NULL}, out,
                     sizeof out);
    out[strcspn(out, "\n")] = '\0';
    ok(st == 0 && atoll(out) > 0, "pgcorral enqueue adds a job and prints its id (%s)", out);
    is_int(pgt_wait_count(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'", 1, 5000), 1,
           "the job runs");
    json_t *doc = pgt_ctl(control, "jobs");
    json_t *jobs = json_object_get(doc, "jobs");
    ok(jobs && json_integer_value(json_object_get(jobs, "done")) >= 1, "ctl jobs counts jobs done");
    json_t *wait = json_object_get(jobs, "job_wait_us"),
           *batch = json_object_get(jobs, "job_claim_batch");
    ok(json_integer_value(json_object_get(wait, "count")) >= 1 &&
           json_integer_value(json_object_get(batch, "count")) >= 1 &&
           json_integer_value(json_object_get(batch, "p50")) >= 1,
       "ctl jobs shows the enqueue-to-start latency and the claim batch size");
    json_decref(doc);

    /* Orphans: six 3-second jobs, spread over the two workers; kill one worker. */
    jt_exec(db, "TRUNCATE t_runs");
    jt_exec(db, "SELECT pgcorral.add_job('t.record', '{\"ms\":3000}') FROM generate_series(1,6)");
    pgt_wait_at_least(db, "SELECT count(*) FROM t_runs WHERE phase = 'start'", 6, 10000);
    /* The worker that holds the most of them ("host:pid:generation"). */
    PGresult *r = PQexec(db, "SELECT locked_by, count(*) FROM pgcorral.jobs WHERE locked_by IS"
                             " NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 1");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        bail("no locked jobs: %s", PQresultErrorMessage(r));
    char victim_lb[128];
    snprintf(victim_lb, sizeof victim_lb, "%s", PQgetvalue(r, 0, 0));
    long long victim_jobs = atoll(PQgetvalue(r, 0, 1));
    PQclear(r);
    char *colon = strchr(victim_lb, ':');
    pids[0] = colon ? (pid_t)atoi(colon + 1) : 0;
    if (pids[0] <= 0)
        bail("cannot read a pid from '%s'", victim_lb);
    char sql[256];
    kill(pids[0], SIGKILL);
    t_kill = pgt_now_ms();
    snprintf(sql, sizeof sql, "SELECT count(*) FROM t_runs WHERE phase = 'start' AND attempt = 2");
    long long rerun = pgt_wait_count(db, sql, victim_jobs, 5000);
    dt = pgt_now_ms() - t_kill;
    ok(victim_jobs > 0 && rerun == victim_jobs,
       "the %lld jobs of the SIGKILLed worker start again (%lld)", victim_jobs, rerun);
    ok(dt < 1000, "within 1 s of the death (%lld ms)", dt);
    is_int(pgt_wait_count(db, "SELECT count(*) FROM pgcorral.jobs", 0, 15000), 0, "none is lost");
    is_int(pgt_query_ll(db, "SELECT count(DISTINCT job_id) FROM t_runs WHERE phase = 'done'"), 6,
           "all six finish");

    /* Graceful stop in the middle of 10,000 jobs. */
    pgt_wait_until(two_ready, pids, 10000);
    jt_exec(db, "TRUNCATE t_runs");
    jt_exec(db, "SELECT count(*) FROM pgcorral.add_jobs((SELECT jsonb_agg(jsonb_build_object("
                "'task', 't.record', 'payload', jsonb_build_object('ms', i % 3)))"
                " FROM generate_series(1, 10000) i))");
    pgt_wait_at_least(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'", 1500, 30000);
    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 30000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "SIGTERM mid-run: the supervisor drains and exits 0");
    long long done = pgt_query_ll(db, "SELECT count(DISTINCT job_id) FROM t_runs WHERE"
                                      " phase = 'done'");
    long long left = pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs");
    diag("%lld done, %lld queued after the stop", done, left);
    ok(left > 0, "the stop came in the middle");
    is_int(done + left, 10000, "done + queued = 10000: none lost");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE locked_by IS NOT NULL"), 0,
           "none left locked");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM (SELECT job_id FROM t_runs WHERE phase ="
                            " 'done' GROUP BY job_id HAVING count(*) > 1) d"),
           0, "none ran twice");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs r JOIN pgcorral.jobs j ON"
                            " j.id = r.job_id WHERE r.phase = 'done'"),
           0, "every finished job was acked");
    if (!WIFEXITED(sup.status) || WEXITSTATUS(sup.status) != 0)
        diag("supervisor output:\n%s", sup.log);
    pgt_proc_cleanup(&sup);
    unlink(control);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
