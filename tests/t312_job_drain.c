/*
 * Graceful stop of job workers: SIGTERM two workers in the middle of 10,000 jobs. They stop
 * claiming, finish what runs, give back what they claimed but had not started, ack, and exit
 * 0. Afterwards every job was either done exactly once (and deleted) or is still queued
 * (unlocked, its attempt not counted): none lost, none left locked, none run twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/jobharness.h"
#include "tests/lib/jobtest.h"

#define NJOBS 10000

static PGconn *db;

struct at_least {
    long long want, got;
};

static bool runs_at_least(void *arg)
{
    struct at_least *a = arg;
    a->got = pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'");
    return a->got >= a->want;
}

static bool both_exited(void *arg)
{
    struct jh *h = arg;
    return jh_exited(h, 0) && jh_exited(h, 1);
}

int main(void)
{
    struct jh h;
    struct job_options o;
    const char *plugins[2] = {NULL, NULL};
    const char *url;
    long long runs, left;

    tap_timeout(120);
    pgt_db_url();
    url = jt_create_job_db("pgct_t312");
    db = jt_connect(url);
    jt_create_runs_table(db);
    plugins[0] = jt_build_plugin("jobs", NULL);
    jh_init(&h, url, plugins, 64);
    jh_listen(&h, 0, 0);
    job_options_init(&o);
    o.poll_interval_ms = 200;

    /* Jobs of 0-2 ms, so that the stop finds some running, some claimed, most queued. */
    jt_exec(db, "SELECT count(*) FROM pgcorral.add_jobs((SELECT jsonb_agg(jsonb_build_object("
                "'task', 't.record', 'payload', jsonb_build_object('ms', i % 3)))"
                " FROM generate_series(1, 10000) i))");
    jh_spawn(&h, 0, &o);
    jh_spawn(&h, 1, &o);
    struct at_least a = {1500, 0};
    bool running = jh_wait(&h, runs_at_least, &a, 30000);
    ok(running, "the workers are running jobs (%lld done)", a.got);
    kill(h.pid[0], SIGTERM);
    kill(h.pid[1], SIGTERM);
    ok(jh_wait(&h, both_exited, &h, 30000), "SIGTERM: both workers exit");
    ok(WIFEXITED(h.status[0]) && WEXITSTATUS(h.status[0]) == 0 && WIFEXITED(h.status[1]) &&
           WEXITSTATUS(h.status[1]) == 0,
       "with status 0 (drained, not killed)");

    runs = pgt_query_ll(db, "SELECT count(DISTINCT job_id) FROM t_runs WHERE phase = 'done'");
    left = pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs");
    diag("%lld jobs done, %lld still queued after the stop", runs, left);
    ok(left > 0, "the stop came in the middle of the run");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE locked_by IS NOT NULL"), 0,
           "no job is left locked");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM (SELECT job_id FROM t_runs WHERE phase = 'done'"
                            " GROUP BY job_id HAVING count(*) > 1) d"),
           0, "no job ran twice");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs r JOIN pgcorral.jobs j ON j.id = r.job_id"
                            " WHERE r.phase = 'done'"),
           0, "no finished job is still queued (every finished job was acked)");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'start' AND job_id NOT IN"
                            " (SELECT job_id FROM t_runs WHERE phase = 'done')"),
           0, "every job that started also finished (running jobs were let finish)");
    is_int(runs + left, NJOBS, "done + queued = %d: none lost", NJOBS);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE attempts <> 0 OR"
                            " outcome = 'failed' OR last_error IS NOT NULL"),
           0, "jobs given back unstarted keep attempts 0 and no error");

    /* New workers finish the rest. */
    jh_spawn(&h, 0, &o);
    jh_spawn(&h, 1, &o);
    struct at_least all = {NJOBS, 0};
    jh_wait(&h, runs_at_least, &all, 60000);
    is_int(pgt_query_ll(db, "SELECT count(DISTINCT job_id) FROM t_runs WHERE phase = 'done'"),
           NJOBS, "after a restart, all %d jobs are done", NJOBS);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'"), NJOBS,
           "each exactly once");
    jh_done(&h);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
