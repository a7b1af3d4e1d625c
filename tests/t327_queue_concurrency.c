/*
 * --queue-concurrency QUEUE=N through the real binary: malformed values are refused with
 * exit 2 and a message naming them (flag and config file), --help lists the flag, `ctl
 * config` shows the limits (a flag beats the file for the same queue); two supervisors on
 * one database, two job workers each, one limited by the flag and one by the config file,
 * never run more than 2 jobs of queue `slow` at once (handler intervals, and the locked
 * rows sampled while they run), while jobs of another queue run many at once and finish
 * first; the claim function itself, from two connections; and the upgrade to the schema
 * version of the limits keeps queued and failed jobs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define SLOW_JOBS 10
#define SLOW_MS 400
#define FAST_JOBS 24
#define FAST_MS 300

static PGconn *db;

/* `pgcorral run ARGS` that must fail at once: whether it exited 2 naming want. */
static bool refused(const char *url, char *const args[], const char *want)
{
    char env_url[1200];
    char *argv[16] = {(char *)pgt_binary(), "run"};
    int n = 2;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *env[] = {env_url, NULL};
    struct ot_output o;
    int code = ot_run(argv, env, 10000, &o);
    bool good = code == 2 && strstr(o.err, want) != NULL;
    if (!good)
        diag("exit %d, wanted '%s' in:\n%s", code, want, o.err);
    ot_output_free(&o);
    return good;
}

/* A supervisor and its control socket. */
struct sup {
    struct pgt_proc p;
    const char *control;
};

/* Both job workers of s (and nothing else) are ready: the condition of start(). */
static bool two_job_workers(void *arg)
{
    const struct sup *s = arg;
    return ot_all_ready(s->control, 0, 2);
}

/* `pgcorral run --web 0 --jobs 2 --plugin PLUGIN --control NAME EXTRA...`. */
static void start(struct sup *s, const char *name, const char *url, const char *plugin,
                  char *const extra[])
{
    static char env_url[2][1200];
    static int nenv;
    char *argv[24] = {(char *)pgt_binary(), "run",          "--web",    "0", "--jobs", "2",
                      "--plugin",           (char *)plugin, "--control"};
    int n = 9;

    s->control = pgt_tmp_path(name);
    argv[n++] = (char *)s->control;
    for (int i = 0; extra[i] && n < 23; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    char *env_entry = env_url[nenv++ % 2];
    snprintf(env_entry, sizeof env_url[0], "DATABASE_URL=%s", url);
    char *env[] = {env_entry, NULL};
    pgt_spawn(&s->p, argv, env);
    if (!pgt_wait_until(two_job_workers, s, 20000)) {
        pgt_proc_drain(&s->p);
        bail("the supervisor %s did not come up:\n%s", name, s->p.log);
    }
}

static bool stop(struct sup *s)
{
    kill(s->p.pid, SIGTERM);
    bool clean =
        pgt_proc_wait_exit(&s->p, 20000) && WIFEXITED(s->p.status) && WEXITSTATUS(s->p.status) == 0;
    if (!clean)
        diag("the supervisor did not stop cleanly:\n%s", s->p.log ? s->p.log : "");
    pgt_proc_cleanup(&s->p);
    return clean;
}

/* The most handlers of queue q that ran at once, from the start and done rows of t_runs. */
static long long max_overlap(const char *q)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "WITH iv AS (SELECT s.job_id, s.at AS t0, d.at AS t1 FROM t_runs s JOIN t_runs d"
             "  ON d.job_id = s.job_id AND d.phase = 'done' WHERE s.phase = 'start'"
             "  AND s.task = 't.record' AND s.job_id IN (SELECT job_id FROM t_queue"
             "  WHERE queue = '%s'))"
             " SELECT coalesce(max((SELECT count(*) FROM iv b WHERE b.t0 <= a.t0"
             "  AND b.t1 > a.t0)), 0) FROM iv a",
             q);
    return pgt_query_ll(db, sql);
}

static bool all_done(void *arg)
{
    return pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'") ==
           SLOW_JOBS + FAST_JOBS;
}

/* Runs a claim on c: "slow jobs/all jobs" it got, or the error message. */
static const char *claim(PGconn *c, const char *args, char *buf, size_t len)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FILTER (WHERE queue = 'slow') || '/' || count(*)"
             " FROM pgcorral.claim_jobs(%s)",
             args);
    PGresult *r = PQexec(c, sql);
    snprintf(buf, len, "%s",
             PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : PQresultErrorMessage(r));
    PQclear(r);
    return buf;
}

/* A database at the version before the queue limits, with a queued and a failed job,
 * migrated to the end: both jobs are still there, and the queued one is claimed under a
 * limit. */
static void test_upgrade(void)
{
    const char *url = jt_create_db("pgct_t327_up");
    struct rt_dburl *dburl = NULL;
    char err[1024], got[64];
    int from = -1;

    if (rt_dburl_parse(url, &dburl, err, sizeof err) < 0 ||
        sup_migrate_upto(dburl, SUP_SCHEMA_QUEUE_LIMITS - 1, NULL, err, sizeof err) < 0)
        bail("migrate to the version before the queue limits: %s", err);
    PGconn *c = jt_connect(url);
    jt_exec(c, "SELECT pgcorral.add_job('t', queue => 'slow')");
    jt_exec(c, "INSERT INTO pgcorral.jobs (task, queue, attempts, max_attempts, last_error,"
               " outcome, finished_at) VALUES ('t', 'slow', 3, 3, 'boom', 'failed', now())");
    ok(sup_migrate(dburl, &from, err, sizeof err) == 0 && from == SUP_SCHEMA_QUEUE_LIMITS - 1,
       "the upgrade to the queue limits runs (%s)", err);
    is_str(
        claim(c, "'u:1:1', 10, limited_queues => '{slow}', queue_limits => '{1}'", got, sizeof got),
        "1/1", "the queued job survives it and is claimed under a limit");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed' AND"
                           " last_error = 'boom' AND attempts = 3"),
           1, "the failed job survives it unchanged");
    PQfinish(c);
    rt_dburl_destroy(dburl);
}

/* The claim itself, from two connections: the limit holds across open transactions, a
 * claim never waits for another, the rest of a batch fills with other queues, a larger N
 * tops up to itself, and isolation levels that could overshoot are refused. */
static void claims_in_sql(const char *url)
{
    PGconn *a = jt_connect(url), *b = jt_connect(url);
    char got[512];

    jt_exec(a, "TRUNCATE pgcorral.jobs");
    jt_exec(a, "SELECT pgcorral.add_job('t', queue => 'slow') FROM generate_series(1, 5);"
               "SELECT pgcorral.add_job('t', queue => 'fast', priority => 1)"
               " FROM generate_series(1, 10)");
    jt_exec(a, "BEGIN");
    is_str(
        claim(a, "'a:1:1', 4, limited_queues => '{slow}', queue_limits => '{2}'", got, sizeof got),
        "2/4", "a claim of 4 with slow=2 takes 2 slow jobs, then fills up with fast ones");
    long long t0 = pgt_now_ms();
    is_str(
        claim(b, "'b:1:1', 20, limited_queues => '{slow}', queue_limits => '{2}'", got, sizeof got),
        "0/8", "while that claim is open, another leaves slow out and takes only the other 8 fast");
    ok(pgt_now_ms() - t0 < 1000, "without waiting for the first (%lld ms)", pgt_now_ms() - t0);
    jt_exec(a, "COMMIT");
    is_str(
        claim(b, "'b:1:1', 20, limited_queues => '{slow}', queue_limits => '{2}'", got, sizeof got),
        "0/0", "after it commits, the count sees its 2: slow is full");
    is_str(
        claim(b, "'b:1:1', 20, limited_queues => '{slow}', queue_limits => '{3}'", got, sizeof got),
        "1/1", "a claimer with a larger N (3) tops slow up to its own N");
    jt_exec(b, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    ok(strstr(claim(b, "'b:1:1', 20, limited_queues => '{slow}', queue_limits => '{5}'", got,
                    sizeof got),
              "per-queue concurrency needs READ COMMITTED, not repeatable read") != NULL,
       "a limited claim in REPEATABLE READ is refused, naming why: %s", got);
    jt_exec(b, "ROLLBACK");
    PQfinish(a);
    PQfinish(b);
}

int main(void)
{
    struct sup a, b;

    tap_timeout(120);
    plan(21);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t327");
    db = jt_connect(url);

    /* ---- the flag and its configuration -------------------------------------------- */
    ok(refused(url, (char *[]){"--queue-concurrency", "slow", NULL},
               "--queue-concurrency must be QUEUE=N (e.g. slow=2), got 'slow'"),
       "a value without =N exits 2 naming the expected form");
    ok(refused(url, (char *[]){"--queue-concurrency=slow=0", NULL},
               "--queue-concurrency slow: N must be an integer from 1 to 100000, got '0'"),
       "N = 0 exits 2 naming the range");
    const char *conf = pgt_tmp_path("t327.conf");
    FILE *f = fopen(conf, "w");
    fprintf(f, "# limits\nqueue_concurrency = slow=two\n");
    fclose(f);
    char want[600];
    snprintf(want, sizeof want, "%s:2: queue_concurrency slow: N must be an integer", conf);
    ok(refused(url, (char *[]){"--config", (char *)conf, NULL}, want),
       "a malformed queue_concurrency line in the config file names file, line and value");

    char *help_argv[] = {(char *)pgt_binary(), "run", "--help", NULL};
    struct ot_output o;
    ot_run(help_argv, NULL, 5000, &o);
    ok(o.code == 0 && strstr(o.out, "--queue-concurrency") && strstr(o.out, "QUEUE=N"),
       "run --help lists --queue-concurrency QUEUE=N");
    ot_output_free(&o);

    /* ---- two supervisors on one database ------------------------------------------ */
    jt_exec(db, "CREATE TABLE t_runs (job_id bigint, attempt int, task text, phase text,"
                " at timestamptz DEFAULT clock_timestamp())");
    jt_exec(db, "CREATE TABLE t_queue (job_id bigint, queue text)");
    const char *plugin = jt_build_plugin("jobs", NULL);
    char small_pools[1300];
    snprintf(small_pools, sizeof small_pools, "%s%cconnection_limit=5", url,
             strchr(url, '?') ? '&' : '?');

    /* One limits by the flag; the other by its config file, where a flag for another
     * limit of the same queue would win. */
    f = fopen(conf, "w");
    fprintf(f, "queue_concurrency = slow=2\nqueue_concurrency = other=7\n");
    fclose(f);
    start(&a, "t327a.sock", small_pools, plugin,
          (char *[]){"--queue-concurrency", "slow=2", "--shutdown-timeout", "20", NULL});
    start(&b, "t327b.sock", small_pools, plugin,
          (char *[]){"--config", (char *)conf, "--queue-concurrency", "other=3", NULL});
    json_t *cfg = pgt_ctl(b.control, "config");
    json_t *qc = json_object_get(json_object_get(cfg, "config"), "queue_concurrency");
    ok(json_integer_value(json_object_get(qc, "slow")) == 2 &&
           json_integer_value(json_object_get(qc, "other")) == 3,
       "ctl config shows queue_concurrency from the file, the flag winning for one queue");
    json_decref(cfg);
    ok(pgt_proc_wait_log(&a.p, "\"limited_queues\":\"{\\\"slow\\\"}\",\"queue_limits\":\"{2}\"",
                         5000),
       "a job worker logs the limits it claims under when it starts");

    /* Slow jobs first in the claim order, so that every claim meets them. */
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO t_queue SELECT pgcorral.add_job('t.record', jsonb_build_object('ms',"
             " %d), 'slow', priority => -1), 'slow' FROM generate_series(1, %d)",
             SLOW_MS, SLOW_JOBS);
    long long t0 = pgt_now_ms();
    jt_exec(db, sql);
    snprintf(sql, sizeof sql,
             "INSERT INTO t_queue SELECT pgcorral.add_job('t.record', jsonb_build_object('ms',"
             " %d), 'fast'), 'fast' FROM generate_series(1, %d)",
             FAST_MS, FAST_JOBS);
    jt_exec(db, sql);

    /* Sample the locked jobs of `slow` until every job is done. */
    long long most_locked = 0, fast_done_ms = -1;
    while (!all_done(NULL) && pgt_now_ms() - t0 < 30000) {
        long long n = pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE queue = 'slow'"
                                       " AND locked_by IS NOT NULL");
        if (n > most_locked)
            most_locked = n;
        if (fast_done_ms < 0 &&
            pgt_query_ll(db, "SELECT count(*) FROM t_runs r JOIN t_queue q USING (job_id)"
                             " WHERE q.queue = 'fast' AND r.phase = 'done'") == FAST_JOBS)
            fast_done_ms = pgt_now_ms() - t0;
    }
    long long total_ms = pgt_now_ms() - t0;
    ok(all_done(NULL), "all %d jobs ran (%lld ms)", SLOW_JOBS + FAST_JOBS, total_ms);
    is_int(max_overlap("slow"), 2,
           "at most 2 handlers of queue slow ran at once over 4 workers of 2 supervisors, and 2 "
           "did");
    ok(most_locked >= 1 && most_locked <= 2,
       "sampled while they ran, at most 2 jobs of slow were locked (most seen: %lld)", most_locked);
    ok(total_ms >= (SLOW_JOBS / 2) * SLOW_MS, "so the slow queue took at least %d ms (%lld ms)",
       (SLOW_JOBS / 2) * SLOW_MS, total_ms);
    long long fast_overlap = max_overlap("fast");
    ok(fast_overlap > 2 && fast_done_ms >= 0 && fast_done_ms < total_ms,
       "queue fast is not limited: %lld of its jobs ran at once, all done after %lld ms, "
       "before the slow queue",
       fast_overlap, fast_done_ms);

    ok(stop(&a) && stop(&b), "both supervisors stop cleanly");

    claims_in_sql(url);
    test_upgrade();
    unlink(conf);
    jt_remove_plugins();
    PQfinish(db);
    return done_testing();
}
