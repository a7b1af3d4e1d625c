/*
 * Job states (migration "job states"): an upgraded database keeps its queued and failed
 * jobs (failed_at becomes outcome 'failed' with finished_at), pgcorral.job_state names the
 * state users see, a finished job never blocks its key, and the ack ends jobs as
 * completed (with run time), cancelled or failed for good.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"
#include "workers/job.h"

/* The URL of this test's database. */
static const char *url;

static struct rt_dburl *parse_url(void)
{
    struct rt_dburl *db;
    char err[512];
    if (rt_dburl_parse(url, &db, err, sizeof err) < 0)
        bail("rt_dburl_parse: %s", err);
    return db;
}

/* The first value of sql as text (static buffer), or "" on error or no row. */
static const char *text_of(PGconn *c, const char *sql)
{
    static char buf[512];
    PGresult *r = PQexec(c, sql);
    buf[0] = '\0';
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(buf, sizeof buf, "%s", PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        diag("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return buf;
}

/* A database at the version before job states, with jobs in it, migrated to the end. */
static void test_upgrade(void)
{
    struct rt_dburl *db = parse_url();
    char err[1024];
    int from = -1;
    PGconn *c = jt_connect(url);

    if (sup_migrate_upto(db, SUP_SCHEMA_JOB_STATES - 1, NULL, err, sizeof err) < 0)
        bail("migrate to the version before job states: %s", err);
    jt_exec(c, "INSERT INTO pgcorral.jobs (task, key) VALUES ('queued', 'k-queued')");
    jt_exec(c, "INSERT INTO pgcorral.jobs (task, key, attempts, max_attempts, last_error,"
               " failed_at) VALUES ('failed', 'k-failed', 3, 3, 'boom',"
               " '2026-01-02 03:04:05+00')");
    ok(sup_migrate(db, &from, err, sizeof err) == 0 && from == SUP_SCHEMA_JOB_STATES - 1,
       "the upgrade runs (%s)", err);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT left(name, 10) FROM pgcorral.migrations WHERE version = %d",
             SUP_SCHEMA_JOB_STATES);
    is_str(text_of(c, sql), "job states", "SUP_SCHEMA_JOB_STATES is the job states migration");
    is_str(text_of(c, "SELECT pgcorral.job_state(j) || ' ' || coalesce(outcome, '-') FROM"
                      " pgcorral.jobs j WHERE task = 'queued'"),
           "queued -", "a queued job survives the upgrade, still queued");
    is_str(text_of(c, "SELECT pgcorral.job_state(j) || ' ' || last_error || ' ' ||"
                      " (finished_at = '2026-01-02 03:04:05+00') FROM pgcorral.jobs j"
                      " WHERE task = 'failed'"),
           "failed boom true", "a failed job survives as outcome failed, finished_at = failed_at");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM information_schema.columns WHERE"
                           " table_schema = 'pgcorral' AND column_name = 'failed_at'"),
           0, "failed_at is gone");
    is_int(pgt_query_ll(c, "SELECT (pgcorral.add_job_ex('again', key => 'k-failed')).created::int"),
           1, "after the upgrade, the failed job no longer blocks its key");
    is_int(pgt_query_ll(c, "SELECT (pgcorral.add_job_ex('again', key => 'k-queued')).created::int"),
           0, "the queued job still holds its key");
    PQfinish(c);
    rt_dburl_destroy(db);
}

/* Claims every due job for worker h:1:1; returns how many. */
static int claim_all(PGconn *c)
{
    const char *v[9] = {"h:1:1", "100", NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    PGresult *r = PQexecParams(c, JOB_CLAIM_SQL, 9, NULL, v, NULL, NULL, 0);
    int n = PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : -1;
    if (n < 0)
        diag("claim: %s", PQresultErrorMessage(r));
    PQclear(r);
    return n;
}

/* One ack of worker h:1:1 with the 8 parameters after the worker. */
static void ack(PGconn *c, const char *done, const char *ids, const char *errs, const char *delays,
                const char *giveback, const char *final, const char *keep, const char *run_ms)
{
    const char *v[9] = {"h:1:1", done, ids, errs, delays, giveback, final, keep, run_ms};
    PGresult *r = PQexecParams(c, JOB_ACK_SQL, 9, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        bail("ack: %s", PQresultErrorMessage(r));
    PQclear(r);
}

static void test_ack_outcomes(void)
{
    PGconn *c = jt_connect(url);
    char sql[512], done[64], ids[96];

    jt_exec(c, "TRUNCATE pgcorral.jobs");
    jt_exec(c, "SELECT pgcorral.add_job('t', key => 'k' || i) FROM generate_series(1, 5) i");
    long long id0 = pgt_query_ll(c, "SELECT min(id) FROM pgcorral.jobs");
    is_int(claim_all(c), 5, "five jobs claimed");
    is_str(text_of(c, "SELECT string_agg(DISTINCT pgcorral.job_state(j), ',') FROM"
                      " pgcorral.jobs j"),
           "running", "claimed jobs are running");
    /* Job 2 gets a cancel request while it runs. */
    snprintf(sql, sizeof sql,
             "UPDATE pgcorral.jobs SET cancel_requested_at = now() WHERE id IN (%lld, %lld)",
             id0 + 1, id0 + 4);
    jt_exec(c, sql);
    /* Done without retention: 1 deleted, 2 (cancel asked) cancelled. */
    snprintf(done, sizeof done, "{%lld,%lld}", id0, id0 + 1);
    /* 3 failed for good at once, 4 given back, 5 failed with a cancel asked. */
    snprintf(ids, sizeof ids, "{%lld,%lld,%lld}", id0 + 2, id0 + 3, id0 + 4);
    ack(c, done, ids, "{\"bad input\",NULL,\"stopped\"}", "{0,5000,1000}", "{0,1,0}", "{t,f,f}",
        "f", NULL);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld", id0);
    is_int(pgt_query_ll(c, sql), 0, "without retention a done job is deleted");
    snprintf(sql, sizeof sql,
             "SELECT pgcorral.job_state(j) || ' ' || (finished_at IS NOT NULL) FROM"
             " pgcorral.jobs j WHERE id = %lld",
             id0 + 1);
    is_str(text_of(c, sql), "cancelled true", "a done job whose cancel was asked is cancelled");
    snprintf(sql, sizeof sql,
             "SELECT pgcorral.job_state(j) || ' ' || last_error || ' ' || attempts FROM"
             " pgcorral.jobs j WHERE id = %lld",
             id0 + 2);
    is_str(text_of(c, sql), "failed bad input 1", "final: failed at once, attempts left or not");
    snprintf(sql, sizeof sql,
             "SELECT pgcorral.job_state(j) || ' ' || attempts || ' ' ||"
             " (run_at > now() + interval '3 s') FROM pgcorral.jobs j WHERE id = %lld",
             id0 + 3);
    is_str(text_of(c, sql), "scheduled 0 true",
           "no error and a delay: the attempt given back, run_at moved by the delay");
    snprintf(sql, sizeof sql, "SELECT pgcorral.job_state(j) FROM pgcorral.jobs j WHERE id = %lld",
             id0 + 4);
    is_str(text_of(c, sql), "cancelled", "a failure after a cancel request ends cancelled");

    /* Keys: failed (3) and cancelled (2) jobs do not block theirs; scheduled (4) does. */
    is_int(pgt_query_ll(c, "SELECT (pgcorral.add_job_ex('t', key => 'k3')).created::int"), 1,
           "a failed job's key is free");
    is_int(pgt_query_ll(c, "SELECT (pgcorral.add_job_ex('t', key => 'k2')).created::int"), 1,
           "a cancelled job's key is free");
    is_int(pgt_query_ll(c, "SELECT (pgcorral.add_job_ex('t', key => 'k4')).created::int"), 0,
           "a scheduled job's key is taken");

    /* With retention: completed, with finished_at and the run time. */
    jt_exec(c, "TRUNCATE pgcorral.jobs");
    jt_exec(c, "SELECT pgcorral.add_job('t', key => 'kept')");
    id0 = pgt_query_ll(c, "SELECT min(id) FROM pgcorral.jobs");
    is_int(claim_all(c), 1, "one job claimed");
    snprintf(done, sizeof done, "{%lld}", id0);
    ack(c, done, "{}", "{}", "{}", "{}", "{}", "t", "{1234}");
    snprintf(sql, sizeof sql,
             "SELECT pgcorral.job_state(j) || ' ' || run_ms || ' ' ||"
             " (finished_at > now() - interval '1 min') || ' ' || (locked_by IS NULL)"
             " FROM pgcorral.jobs j WHERE id = %lld",
             id0);
    is_str(text_of(c, sql), "completed 1234 true true",
           "with retention a done job is kept completed, with finished_at and run_ms");
    is_int(pgt_query_ll(c, "SELECT (pgcorral.add_job_ex('t', key => 'kept')).created::int"), 1,
           "a completed job's key is free");
    is_int(claim_all(c), 1, "the claim skips the completed job and takes the new one");
    PQfinish(c);
}

int main(void)
{
    tap_timeout(60);
    pgt_db_url();
    url = jt_create_db("pgct_t324");
    test_upgrade();
    test_ack_outcomes();
    return done_testing();
}
