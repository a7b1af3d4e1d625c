/*
 * The node registry with two supervisors on one database, A (plugin of the t.* tasks, one
 * web worker, no job worker at first) and B (a plugin of task v2.only, one job worker):
 * both are recorded in pgcorral.nodes with their tasks; `pgcorral enqueue` and POST
 * /api/v1/jobs refuse a task no live node registers (exit 2 / 422, naming the known
 * tasks) and take it with --force / "force":true; B's worker puts back a job of A's task
 * without counting an attempt and A runs it (attempt 1) once it has a job worker; a job
 * of a task no live node registers is failed at once; a live node's name is refused to a
 * third supervisor; a clean stop removes the node's row.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

static PGconn *db;
static char env_url[1200];

/* Polls sql (one count) until it is want, for at most timeout_ms; returns the last count. */
/* `pgcorral ARGS...` with DATABASE_URL; stdout and stderr apart in o. */
static int pgc(struct ot_output *o, char *const args[])
{
    char *argv[16] = {(char *)pgt_binary()};
    int n = 1;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return ot_run(argv, (char *[]){env_url, NULL}, 10000, o);
}

struct ready_cond {
    const char *control;
    int web, jobs;
};

static bool all_ready(void *arg)
{
    struct ready_cond *r = arg;
    return ot_all_ready(r->control, r->web, r->jobs);
}

/* The text of a query's first value (static buffer), "" when none. */
static const char *text_of(const char *sql)
{
    static char buf[1024];
    PGresult *r = PQexec(db, sql);
    snprintf(buf, sizeof buf, "%s",
             PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return buf;
}

int main(void)
{
    struct ts_sup a;
    struct pgt_proc b, c;
    struct ot_output o;
    struct wt_resp r;
    char *fail_runs = NULL;
    char sql[512], needle[128];
    long long id;

    tap_timeout(90);
    signal(SIGPIPE, SIG_IGN);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t329");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    db = jt_connect(url);
    jt_exec(db, "CREATE TABLE t_runs (job_id bigint, attempt int, task text, phase text,"
                " at timestamptz DEFAULT clock_timestamp())");
    const char *jobs_so = jt_build_plugin("jobs", NULL);
    const char *v2_so = jt_build_plugin("variants", "-DGOOD2");

    /* A: the t.* tasks, a web worker, no job worker (room in the budget for one later). */
    char *a_args[] = {"--jobs",      "0",        "--listen",
                      "127.0.0.1:0", "--plugin", (char *)jobs_so,
                      "--node-name", "t329-a",   "--max-db-connections",
                      "40",          NULL};
    if (!ts_start(&a, "t329-a.sock", 1, a_args, (char *[]){env_url, NULL}))
        bail("supervisor A did not start");
    /* B: task v2.only, one job worker. */
    const char *b_control = pgt_tmp_path("t329-b.sock");
    char *b_argv[] = {(char *)pgt_binary(),
                      "run",
                      "--web",
                      "1",
                      "--jobs",
                      "1",
                      "--control",
                      (char *)b_control,
                      "--plugin",
                      (char *)v2_so,
                      "--node-name",
                      "t329-b",
                      "--listen",
                      "127.0.0.1:0",
                      NULL};
    pgt_spawn(&b, b_argv, (char *[]){env_url, NULL});
    if (!pgt_wait_until(all_ready, &(struct ready_cond){b_control, 1, 1}, 20000)) {
        pgt_proc_drain(&b);
        bail("supervisor B did not start:\n%s", b.log ? b.log : "");
    }

    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.live_nodes() WHERE"
                            " (node = 't329-a' AND 't.record' = ANY (tasks) AND pid > 0) OR"
                            " (node = 't329-b' AND tasks = '{v2.only}')"),
           2, "both supervisors are live nodes in pgcorral.nodes, with their tasks");

    /* Refusal. */
    is_int(pgc(&o, (char *[]){"enqueue", "nosuch", "{}", NULL}), 2,
           "pgcorral enqueue of a task no live node registers exits 2");
    ok(strstr(o.err,
              "no live node registers task \"nosuch\"; known tasks: t.crash, t.discard, "
              "t.discard_tx, t.fail, t.fail_text, t.flaky, t.hang, t.record, t.snooze, t.tx, "
              "v2.only (--force enqueues it anyway)") &&
           !*o.out,
       "... naming the known tasks of both nodes: %s", o.err);
    ot_output_free(&o);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs"), 0, "... and adds nothing");
    is_int(ts_req(a.port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"nosuch\"}", &r), 422,
           "POST /api/v1/jobs of that task: 422");
    ok(r.body && strstr(r.body, "known tasks: t.crash, t.discard"), "... naming them: %s",
       r.body ? r.body : "");
    wt_resp_free(&r);

    /* Put back: only B has a job worker, and it does not know t.record. */
    is_int(pgc(&o, (char *[]){"enqueue", "t.record", "{}", NULL}), 0,
           "pgcorral enqueue of a task A registers: exit 0");
    id = atoll(o.out);
    ot_output_free(&o);
    snprintf(needle, sizeof needle, "\"job\":%lld,\"task\":\"t.record\"", id);
    bool put_back = false;
    for (long long end = pgt_now_ms() + 8000; !put_back && pgt_now_ms() < end;) {
        pgt_proc_wait_log(&b, "putting it back", 500);
        put_back = ot_count(b.log, needle) >= 2;
    }
    ok(put_back, "B's job worker claimed it and put it back, twice (job %lld)", id);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND outcome IS NULL AND"
             " last_error IS NULL AND attempts - (locked_by IS NOT NULL)::int = 0",
             id);
    is_int(pgt_query_ll(db, sql), 1, "... without counting an attempt or an error");
    /* B would go on taking it from A about half the time (both poll): its worker goes. */
    json_decref(pgt_ctl(b_control, "scale jobs 0"));
    json_decref(pgt_ctl(a.control, "scale jobs 1"));
    snprintf(sql, sizeof sql, "SELECT count(*) FROM t_runs WHERE job_id = %lld AND attempt = 1",
             id);
    if (pgt_wait_count(db, sql, 1, 10000) != 1) {
        snprintf(sql, sizeof sql,
                 "SELECT coalesce(string_agg(attempt || ':' || phase, ' '), '-')"
                 " FROM t_runs WHERE job_id = %lld",
                 id);
        PGresult *runs = PQexec(db, sql);
        fail_runs = PQresultStatus(runs) == PGRES_TUPLES_OK ? strdup(PQgetvalue(runs, 0, 0)) : NULL;
        PQclear(runs);
    }
    ok(!fail_runs, "A, given a job worker, runs it: its attempt 1 (runs: %s)",
       fail_runs ? fail_runs : "1:done");
    if (fail_runs) {
        pgt_proc_drain(&a.p);
        diag("A:\n%s", a.p.log ? a.p.log : "");
        pgt_proc_drain(&b);
        diag("B:\n%s", b.log ? b.log : "");
    }
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld", id);
    is_int(pgt_wait_count(db, sql, 0, 5000), 0, "... and the job is done");

    /* Back to B's worker alone, for the task nobody knows. */
    json_decref(pgt_ctl(a.control, "scale jobs 0"));
    json_decref(pgt_ctl(b_control, "scale jobs 1"));
    /* Forced, and known by no live node: failed at once. */
    is_int(pgc(&o, (char *[]){"enqueue", "nosuch", "{}", "--force", NULL}), 0,
           "pgcorral enqueue --force adds it anyway");
    id = atoll(o.out);
    ot_output_free(&o);
    ok(id > 0, "... printing its id (%lld)", id);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND outcome = 'failed'", id);
    is_int(pgt_wait_count(db, sql, 1, 10000), 1, "a worker claims it and fails it at once");
    snprintf(sql, sizeof sql,
             "SELECT attempts || '/' || max_attempts FROM pgcorral.jobs"
             " WHERE id = %lld",
             (long long)id);
    is_str(text_of(sql), "1/25", "... after one attempt of 25");
    snprintf(sql, sizeof sql, "SELECT last_error FROM pgcorral.jobs WHERE id = %lld", id);
    const char *e = text_of(sql);
    ok(strstr(e, "unknown task \"nosuch\": no loaded plugin registers it (tasks here: ") != NULL,
       "... with the error it has always had: %s", e);
    is_int(ts_req(a.port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"nosuch\",\"force\":true}", &r),
           201, "POST /api/v1/jobs with \"force\":true: 201");
    wt_resp_free(&r);

    /* A live node's name. */
    char *c_argv[] = {(char *)pgt_binary(),
                      "run",
                      "--web",
                      "0",
                      "--jobs",
                      "1",
                      "--control",
                      (char *)pgt_tmp_path("t329-c.sock"),
                      "--plugin",
                      (char *)jobs_so,
                      "--node-name",
                      "t329-a",
                      NULL};
    pgt_spawn(&c, c_argv, (char *[]){env_url, NULL});
    ok(pgt_proc_wait_exit(&c, 15000) && WIFEXITED(c.status) && WEXITSTATUS(c.status) == 1 &&
           strstr(c.log, "--node-name 't329-a' is held by a live supervisor (host "),
       "a third supervisor with A's node name exits 1 naming the holder");
    pgt_proc_cleanup(&c);

    /* A clean stop leaves the registry. */
    kill(b.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&b, 20000) && WIFEXITED(b.status) && WEXITSTATUS(b.status) == 0,
       "B stops cleanly");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.nodes WHERE node = 't329-b'"), 0,
           "... and its row is gone");
    is_int(pgc(&o, (char *[]){"enqueue", "v2.only", "{}", NULL}), 2,
           "then its task is refused (exit 2)");
    ok(strstr(o.err, "known tasks: t.crash, t.discard, t.discard_tx, t.fail, t.fail_text, t.flaky, "
                     "t.hang, t.record, t.snooze, t.tx (--force") != NULL,
       "... naming A's tasks only: %s", o.err);
    ot_output_free(&o);
    pgt_proc_cleanup(&b);

    ok(ts_stop(&a), "A stops cleanly");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.nodes"), 0, "no node is left");
    is_int(pgc(&o, (char *[]){"enqueue", "t.record", "{}", NULL}), 2,
           "with no supervisor running, enqueue exits 2");
    ok(strstr(o.err, "no live node registers task \"t.record\": no pgcorral supervisor runs "
                     "against this database (--force enqueues it anyway)") != NULL,
       "... saying that no supervisor runs: %s", o.err);
    ot_output_free(&o);
    pgt_proc_cleanup(&a.p);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
