/*
 * Adversarial, jobs: attempts are charged only for runs. A job worker (connection_limit=2,
 * so two handlers) holds a batch larger than its concurrency: two long jobs (20 s)
 * running, six or so short ones claimed and waiting behind them. It is SIGKILLed. Every
 * job that never started must go back to ready with its attempts unchanged and later run
 * once, on its first attempt, although max_attempts is 1; those whose handler had started
 * are charged (kept as failed: the two running, and short ones that finished but whose ack
 * waited for a connection), so a job that kills its worker still uses up its attempts.
 *
 * Then the same batch, but the worker is first told to drain (SIGTERM: it gives its
 * unstarted jobs back, but that ack waits for a connection, both held by long handlers)
 * and SIGKILLed before the ack could go out, as at a shutdown deadline: the jobs it was
 * giving back are still not charged.
 *
 * Last, a worker SIGKILLed while its claim is in flight (a trigger makes the claim sleep):
 * the server commits that claim after the supervisor's unlock at the death, so the jobs
 * stay locked by the dead worker until the supervisor's next sweep frees them; they were
 * never started either, and are not charged.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"
#include "workers/job.h"

#define LONG_MS 20000 /* the two long jobs: the batch stays claimed this long */
#define SHORT_MS 300
#define N_FIRST 2  /* short, priority 0: the first claim (one per handler) */
#define N_LONG 2   /* long, priority 1: the head of the second claim, running at the kill */
#define N_BEHIND 8 /* short, priority 2: the rest of the second claim, waiting */

static PGconn *db;
static const char *control;
static const char *plugin;

/* Every unlock of a job (locked_by set -> NULL) as the row came out of it. */
static const char audit_sql[] =
    "CREATE TABLE t_release (job_id bigint, old_locked_by text, attempts int, failed boolean,"
    "  last_error text);"
    "CREATE FUNCTION t_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    "  INSERT INTO t_release VALUES (NEW.id, OLD.locked_by, NEW.attempts,"
    "    NEW.outcome IS NOT DISTINCT FROM 'failed', NEW.last_error);"
    "  RETURN NULL; END $$;"
    "CREATE TRIGGER t_audit AFTER UPDATE ON pgcorral.jobs FOR EACH ROW"
    "  WHEN (OLD.locked_by IS NOT NULL AND NEW.locked_by IS NULL) EXECUTE FUNCTION t_audit()";

/* Locked jobs that have not started (no t_runs row). */
#define HELD_UNSTARTED                                                                             \
    "SELECT count(*) FROM pgcorral.jobs j WHERE locked_by IS NOT NULL"                             \
    " AND NOT EXISTS (SELECT 1 FROM t_runs r WHERE r.job_id = j.id)"

/* The worker holds its batch: the two long jobs running, started less than 10 s ago (so
 * that neither ends, and no other job starts, around the kill), and at least four
 * waiting. */
static bool batch_held(void *arg)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs j JOIN t_runs r ON r.job_id = j.id"
             " AND r.phase = 'start' WHERE j.locked_by IS NOT NULL"
             " AND j.payload = '{\"ms\":%d}' AND clock_timestamp() - r.at < interval '10 s'",
             LONG_MS);
    return pgt_query_ll(db, sql) == N_LONG && pgt_query_ll(db, HELD_UNSTARTED) >= 4;
}

/* The pid of the job worker in state (ready, draining), or 0. */
static pid_t job_pid(const char *state)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    pid_t pid = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "role")), "job") == 0 &&
            strcmp(json_string_value(json_object_get(w, "state")), state) == 0)
            pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
    }
    json_decref(doc);
    return pid;
}

static bool job_ready(void *arg)
{
    return job_pid("ready") > 0;
}

static bool job_draining(void *arg)
{
    return job_pid("draining") == *(pid_t *)arg;
}

/*
 * A fresh database name with tables t_runs and t_release, jobs_sql run in it, and the
 * supervisor with one job worker (connection_limit=2) started on it. Writes the
 * supervisor's log file path into logfile.
 */
static void start_run(struct pgt_proc *sup, const char *name, const char *jobs_sql, char *logfile,
                      size_t loglen)
{
    static char env_url[1200];
    char sock[64];
    const char *url;

    url = jt_create_job_db(name);
    PQfinish(db);
    db = jt_connect(url);
    jt_create_runs_table(db);
    jt_exec(db, audit_sql);
    jt_exec(db, jobs_sql);

    snprintf(sock, sizeof sock, "%s.sock", name);
    control = pgt_tmp_path(sock);
    snprintf(sock, sizeof sock, "%s.log", name);
    snprintf(logfile, loglen, "%s", pgt_tmp_path(sock));
    unlink(logfile);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s&connection_limit=2", url);
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "0",
                    "--jobs",
                    "1",
                    "--plugin",
                    (char *)plugin,
                    "--control",
                    (char *)control,
                    "--log-file",
                    logfile,
                    "--shutdown-timeout",
                    "60",
                    NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(sup, argv, env);
    if (!pgt_wait_until(job_ready, NULL, 20000)) {
        pgt_proc_drain(sup);
        bail("the supervisor did not come up:\n%s", sup->log);
    }
}

/*
 * One run: a fresh database with the jobs above (max_attempts 1), the supervisor with one
 * job worker, and the worker killed (after a SIGTERM when drain) while it holds its
 * batch. Writes the supervisor's log file path into logfile and the dead incarnation into
 * dead_lb; returns the supervisor, still running.
 */
static void run_until_killed(struct pgt_proc *sup, const char *name, bool drain, char *logfile,
                             size_t loglen, char *dead_lb, size_t lblen)
{
    char sql[1024];
    pid_t pid;

    /* Two short jobs first (the first claim, one per handler); the second claim, sent
     * while both handlers are busy, takes a prefetch batch: the long ones, then short
     * ones, which wait for the long ones to end. */
    snprintf(sql, sizeof sql,
             "SELECT pgcorral.add_job('t.record', '{\"ms\":%d}', 'default', NULL, 0, 1)"
             " FROM generate_series(1, %d);"
             "SELECT pgcorral.add_job('t.record', '{\"ms\":%d}', 'default', NULL, 1, 1)"
             " FROM generate_series(1, %d);"
             "SELECT pgcorral.add_job('t.record', '{\"ms\":%d}', 'default', NULL, 2, 1)"
             " FROM generate_series(1, %d)",
             SHORT_MS, N_FIRST, LONG_MS, N_LONG, SHORT_MS, N_BEHIND);
    start_run(sup, name, sql, logfile, loglen);

    bool held = pgt_wait_until(batch_held, NULL, 20000);
    ok(held,
       "%s: the job worker holds a batch larger than its concurrency (%d running, %lld "
       "waiting)",
       name, N_LONG, pgt_query_ll(db, HELD_UNSTARTED));
    pid = job_pid("ready");
    jt_exec(db, "CREATE TABLE t_unstarted AS SELECT id FROM pgcorral.jobs j"
                " WHERE locked_by IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM t_runs r WHERE r.job_id = j.id);"
                "CREATE TABLE t_started AS SELECT id FROM pgcorral.jobs j"
                " WHERE locked_by IS NOT NULL AND id NOT IN (SELECT id FROM t_unstarted)");
    PGresult *r = PQexec(db, "SELECT min(locked_by) FROM pgcorral.jobs");
    snprintf(dead_lb, lblen, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (drain) {
        /* It gives its unstarted jobs back; the ack waits for a connection. */
        kill(pid, SIGTERM);
        ok(pgt_wait_until(job_draining, &pid, 10000) &&
               pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE locked_by IS NULL"
                                " AND id IN (SELECT id FROM t_unstarted)") == 0,
           "%s: SIGTERM: the worker drains, the jobs it gives back still locked", name);
    }
    kill(pid, SIGKILL);
}

/* Waits until the dead incarnation's jobs are all released; checks how. */
static void check_release(const char *name, const char *dead_lb, long long *unstarted)
{
    char sql[1024];
    long long n_unstarted = pgt_query_ll(db, "SELECT count(*) FROM t_unstarted");
    long long n_started = pgt_query_ll(db, "SELECT count(*) FROM t_started");

    /* Nothing of the dead incarnation stays locked; every job it held was released once. */
    snprintf(sql, sizeof sql,
             "SELECT (SELECT count(*) FROM pgcorral.jobs WHERE locked_by = '%s') * 1000 +"
             " (SELECT count(*) FROM t_release WHERE old_locked_by = '%s')",
             dead_lb, dead_lb);
    is_int(pgt_wait_count(db, sql, n_unstarted + n_started, 10000), n_unstarted + n_started,
           "%s: the supervisor released the %lld jobs the dead worker held", name,
           n_unstarted + n_started);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM t_release WHERE old_locked_by = '%s' AND attempts = 0"
             " AND NOT failed AND last_error IS NULL AND job_id IN (SELECT id FROM t_unstarted)",
             dead_lb);
    is_int(pgt_query_ll(db, sql), n_unstarted,
           "%s: each job that never started went back to ready with attempts unchanged (0 of 1)",
           name);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM t_release WHERE old_locked_by = '%s' AND attempts = 1"
             " AND failed AND last_error LIKE '%%died while it held this job%%'"
             " AND job_id IN (SELECT id FROM t_started)",
             dead_lb);
    is_int(pgt_query_ll(db, sql), n_started,
           "%s: the %lld whose handler had started are charged: attempts 1 of 1, kept as failed",
           name, n_started);
    *unstarted = n_unstarted;
}

/* What check_log looks for in the supervisor's log. */
struct release_want {
    const char *logfile;
    long long jobs, back;
};

/* Whether a line about the release with the wanted numbers is in the log. The release can
 * come from the unlock at the worker's death or, for a claim that committed after it, from
 * a later sweep (then the first line may say 0 jobs); the line is written just after the
 * database is updated, so it is waited for. */
static bool release_logged(void *arg)
{
    struct release_want *w = arg;
    char *log = ot_read_file(w->logfile);
    json_t *lines = ot_log_lines(log, "unlocked the jobs of a worker that died"), *line;
    size_t i;
    bool found = false;
    json_array_foreach(lines, i, line)
    {
        found = found || (json_integer_value(json_object_get(line, "jobs")) == w->jobs &&
                          json_integer_value(json_object_get(line, "given_back")) == w->back);
    }
    json_decref(lines);
    free(log);
    return found;
}

/* The supervisor's line about the release. */
static void check_log(const char *name, const char *logfile, long long jobs, long long back)
{
    struct release_want w = {logfile, jobs, back};
    bool found = pgt_wait_until(release_logged, &w, 10000);
    ok(found, "%s: the supervisor logs the release: %lld jobs, %lld of them given back unstarted",
       name, jobs, back);
    if (!found) {
        char *log = ot_read_file(logfile);
        json_t *lines = ot_log_lines(log, "unlocked the jobs of a worker that died");
        char *text = json_dumps(lines, JSON_COMPACT);
        diag("release lines: %s", text ? text : "?");
        free(text);
        json_decref(lines);
        free(log);
    }
}

static void stop(struct pgt_proc *sup, const char *logfile)
{
    json_decref(pgt_ctl(control, "shutdown fast"));
    pgt_proc_wait_exit(sup, 10000);
    pgt_proc_cleanup(sup);
    unlink(logfile);
}

int main(void)
{
    struct pgt_proc sup;
    char logfile[128], dead_lb[96];
    long long n_unstarted, n_started, n;

    tap_timeout(150);
    plan(19);
    pgt_db_url();
    plugin = jt_build_plugin("jobs", NULL);

    /* SIGKILL in the middle of the batch. */
    run_until_killed(&sup, "pgct_t963", false, logfile, sizeof logfile, dead_lb, sizeof dead_lb);
    check_release("kill", dead_lb, &n_unstarted);
    n_started = pgt_query_ll(db, "SELECT count(*) FROM t_started");
    /* The replacement runs the unstarted jobs: each once, on its first attempt. */
    n = pgt_wait_count(db,
                       "SELECT count(*) FROM t_runs WHERE phase = 'done'"
                       " AND job_id IN (SELECT id FROM t_unstarted)",
                       n_unstarted, 20000);
    is_int(n, n_unstarted, "kill: every job that never started runs to completion later");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'start'"
                            " AND attempt = 1 AND job_id IN (SELECT id FROM t_unstarted)"),
           n_unstarted, "kill: each started once, as attempt 1");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed'"
                            " AND id IN (SELECT id FROM t_unstarted)"),
           0, "kill: none of them is failed");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed'"),
           n_started, "kill: the only failed jobs are those whose handler had started");
    check_log("kill", logfile, n_unstarted + n_started, n_unstarted);
    stop(&sup, logfile);

    /* SIGTERM, then SIGKILL while the give-back ack waits. */
    run_until_killed(&sup, "pgct_t963b", true, logfile, sizeof logfile, dead_lb, sizeof dead_lb);
    check_release("drain+kill", dead_lb, &n_unstarted);
    n_started = pgt_query_ll(db, "SELECT count(*) FROM t_started");
    check_log("drain+kill", logfile, n_unstarted + n_started, n_unstarted);
    stop(&sup, logfile);

    /* SIGKILL while the claim is in flight: each row it locks sleeps 1 s in a trigger. */
    start_run(&sup, "pgct_t963c",
              "CREATE FUNCTION t_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
              "  PERFORM pg_sleep(1); RETURN NEW; END $$;"
              "CREATE TRIGGER t_slow BEFORE UPDATE ON pgcorral.jobs FOR EACH ROW"
              "  WHEN (OLD.locked_by IS NULL AND NEW.locked_by IS NOT NULL)"
              "  EXECUTE FUNCTION t_slow();"
              "SELECT pgcorral.add_job('t.record', '{}', 'default', NULL, 0, 1)"
              " FROM generate_series(1, 2)",
              logfile, sizeof logfile);
    pid_t pid = job_pid("ready");
    ok(pgt_wait_count(db,
                      "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                      " AND query LIKE '%claim_jobs%'",
                      1, 10000) == 1,
       "claim in flight: the worker's claim is running (sleeping in the trigger)");
    rt_job_locked_by(dead_lb, sizeof dead_lb, pid, 1);
    kill(pid, SIGKILL);
    /* The claim commits about 1.5 s after the death, long after the death's unlock; the
     * supervisor's sweep (every 5 s) frees the two jobs. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM t_release WHERE old_locked_by = '%s' AND attempts = 0"
             " AND NOT failed AND last_error IS NULL",
             dead_lb);
    is_int(pgt_wait_count(db, sql, 2, 15000), 2,
           "claim in flight: both jobs it locked after the worker died go back to ready with "
           "attempts unchanged");
    check_log("claim in flight", logfile, 2, 2);
    is_int(pgt_wait_count(db, "SELECT count(*) FROM t_runs WHERE phase = 'done' AND attempt = 1", 2,
                          15000),
           2, "claim in flight: both run later, as attempt 1");
    stop(&sup, logfile);

    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
