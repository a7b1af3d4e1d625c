/*
 * Handler outcomes beyond done and failed, run by a real job worker against the database:
 * pgc_discard fails a job at once and for good (one attempt, its message as last_error,
 * never retried), also from inside pgc_tx (whose work is rolled back); pgc_snooze puts a
 * job off N seconds without counting the attempt (scheduled in between, last_error
 * untouched) and it runs again after about N s; a pgc_snooze with seconds out of range is
 * an ordinary failure that names the range; pgc_fail still retries with backoff.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/jobharness.h"
#include "tests/lib/jobtest.h"

static PGconn *db;

/* Waits until sql counts want (pumping the harness); returns the last count. */
/* The text of the first value sql returns ("(none)" without a row), in buf. */
static const char *text_of(const char *sql, char *buf, size_t len)
{
    PGresult *r = PQexec(db, sql);
    snprintf(buf, len, "%s",
             PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0
                 ? (PQgetisnull(r, 0, 0) ? "(null)" : PQgetvalue(r, 0, 0))
                 : "(none)");
    PQclear(r);
    return buf;
}

static void test_discard(struct jh *h)
{
    char buf[512];

    jt_exec(db, "SELECT pgcorral.add_job('t.discard', '{\"msg\": \"payload has no \\\"to\\\"\"}',"
                " max_attempts => 5)");
    is_int(jh_wait_count(h, db,
                         "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.discard' AND"
                         " outcome = 'failed'",
                         1, 5000),
           1, "a discarded job is failed at once, with 4 of its 5 attempts left");
    is_str(text_of("SELECT attempts || ' ' || last_error || ' ' || (finished_at IS NOT NULL)"
                   " || ' ' || (locked_by IS NULL) FROM pgcorral.jobs WHERE task = 't.discard'",
                   buf, sizeof buf),
           "1 payload has no \"to\" true true",
           "after 1 attempt, the handler's message as last_error, finished and unlocked");
    /* A retry would come after 100 ms (retry base): wait well past it. */
    jh_pump(h, 700);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE task = 't.discard'"), 1,
           "and it is never retried (one run in 700 ms, retries are 100 ms apart)");
    ok(atomic_load(&h->seg->workers[0].counters.jobs_failed) == 1,
       "the worker counts it as failed");

    jt_exec(db, "SELECT pgcorral.add_job('t.discard_tx')");
    jh_wait_count(h, db,
                  "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.discard_tx' AND"
                  " outcome = 'failed'",
                  1, 5000);
    is_str(text_of("SELECT attempts || ' ' || last_error FROM pgcorral.jobs WHERE"
                   " task = 't.discard_tx'",
                   buf, sizeof buf),
           "1 discarded inside pgc_tx", "pgc_discard returned through pgc_tx discards the job");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE task = 't.discard_tx'"), 0,
           "and the transaction's work is rolled back");
}

/* Whether the t.snooze job is in state scheduled. */
static bool snooze_scheduled(void *arg)
{
    char buf[256];
    text_of("SELECT pgcorral.job_state(j) FROM pgcorral.jobs j WHERE task = 't.snooze'", buf,
            sizeof buf);
    return strcmp(buf, "scheduled") == 0;
}

static void test_snooze(struct jh *h)
{
    char buf[512];

    /* A job that failed once before carries a last_error the snooze must keep. */
    jt_exec(db, "INSERT INTO pgcorral.jobs (task, payload, attempts, last_error)"
                " VALUES ('t.snooze', '{\"s\": 1}', 1, 'earlier failure')");
    jt_exec(db, "NOTIFY pgcorral_jobs, 'default'");
    ok(jh_wait(h, snooze_scheduled, NULL, 5000), "a snoozed job runs once, then is scheduled");
    is_str(text_of("SELECT attempts || ' ' || last_error || ' ' || (locked_by IS NULL) || ' ' ||"
                   " (outcome IS NULL) || ' ' || (run_at > now() + interval '500 ms')"
                   " FROM pgcorral.jobs WHERE task = 't.snooze'",
                   buf, sizeof buf),
           "1 earlier failure true true true",
           "its attempt is given back (still 1), last_error unchanged, due about 1 s later");
    is_int(
        jh_wait_count(h, db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.snooze'", 0, 5000),
        0, "it runs again and is done");
    is_str(text_of("SELECT string_agg(attempt::text, ',' ORDER BY at) FROM t_runs"
                   " WHERE task = 't.snooze'",
                   buf, sizeof buf),
           "2,2", "both runs were attempt 2: the snooze counted none");
    long long gap = pgt_query_ll(db, "SELECT (extract(epoch FROM max(at) - min(at)) * 1000)::bigint"
                                     " FROM t_runs WHERE task = 't.snooze'");
    ok(gap >= 1000 && gap < 2500, "the second run came about 1 s after the first (%lld ms)", gap);

    /* Out of range: an ordinary failure, retried, whose error names the range. */
    jt_exec(db, "SELECT pgcorral.add_job('t.snooze', '{\"s\": -1}', max_attempts => 1)");
    jh_wait_count(h, db,
                  "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.snooze' AND"
                  " outcome = 'failed'",
                  1, 5000);
    is_str(text_of("SELECT last_error FROM pgcorral.jobs WHERE task = 't.snooze'", buf, sizeof buf),
           "pgc_snooze: seconds must be from 0 to 604800 (7 days), got -1",
           "pgc_snooze(-1) fails the run, naming the range");
}

static void test_fail_still_retries(struct jh *h)
{
    jt_exec(db, "SELECT pgcorral.add_job('t.flaky', '{\"ok_at\": 2}')");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM t_runs WHERE task = 't.flaky'", 1, 5000), 1,
           "pgc_fail still means retry: a job failing once succeeds on attempt 2");
}

int main(void)
{
    struct jh h;
    struct job_options o;
    const char *plugins[2];

    tap_timeout(60);
    pgt_db_url();
    const char *url = jt_create_job_db("pgct_t328");
    db = jt_connect(url);
    jt_create_runs_table(db);
    plugins[0] = jt_build_plugin("jobs", NULL);
    plugins[1] = NULL;
    jh_init(&h, url, plugins, 32);
    jh_listen(&h, 0, 0);
    job_options_init(&o);
    /* No poll: wake-ups, and the worker's timer for the retries and snoozes it acked. */
    o.poll_interval_ms = 60000;
    o.retry_base_ms = 100;
    jh_spawn(&h, 0, &o);

    test_discard(&h);
    test_snooze(&h);
    test_fail_still_retries(&h);

    jh_done(&h);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
