/*
 * Recurring jobs (--cron) with two supervisors on one database (no job workers, so the
 * jobs stay to be counted): over 5 s of '@every 1s' each tick is enqueued exactly once
 * (one job per tick key, consecutive ticks); a tick whose job is gone is not enqueued
 * again; after downtime only the last missed tick of an hourly schedule runs; a new
 * schedule waits for its next tick; `pgcorral jobs cron` lists the schedules with their
 * next run and the nodes that run them.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

#define EVERY_1S "@every 1s t.tick {\"n\": 1}"
#define PARIS "CRON_TZ=Europe/Paris 0 9 * * mon-fri t.report"
#define HOURLY "@every 1h t.hourly"

static PGconn *db;
static char env_url[1200];

/* Polls sql (one count) until it is at least want, for at most timeout_ms. */
/* Starts supervisor n (1 or 2) with the three schedules, one web worker, no job worker. */
static bool start(struct ts_sup *s, int n)
{
    static char names[3][16], socks[3][16];
    snprintf(names[n], sizeof names[n], "t330-%d", n);
    snprintf(socks[n], sizeof socks[n], "t330-%d.sock", n);
    char *args[] = {"--jobs", "0",      "--listen", "127.0.0.1:0", "--node-name",
                    names[n], "--cron", EVERY_1S,   "--cron",      PARIS,
                    "--cron", HOURLY,   NULL};
    return ts_start(s, socks[n], 1, args, (char *[]){env_url, NULL});
}

/* The next run of spec (as `jobs cron` prints it) computed here. */
static const char *next_run(const char *spec)
{
    static char buf[256];
    struct sup_cron c;
    const char *rest;
    if (sup_cron_parse_spec(&c, spec, &rest, buf, sizeof buf) < 0)
        return buf;
    time_t t = (time_t)sup_cron_next(&c, (int64_t)time(NULL));
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
    return buf;
}

int main(void)
{
    struct ts_sup s1, s2;
    struct ot_output o;

    tap_timeout(90);
    signal(SIGPIPE, SIG_IGN);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t330");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    db = jt_connect(url);

    if (!start(&s1, 1) || !start(&s2, 2))
        bail("the supervisors did not start");
    is_int(pgt_wait_at_least(db,
                             "SELECT count(*) FROM pgcorral.live_nodes()"
                             " WHERE cardinality(schedules) = 3",
                             2, 5000),
           2, "both nodes run the three schedules (their heartbeats say)");

    /* Over 5 s: each tick of '@every 1s' once. */
    long long n = pgt_wait_at_least(db,
                                    "SELECT count(DISTINCT key) FROM pgcorral.jobs"
                                    " WHERE task = 't.tick'",
                                    6, 15000);
    ok(n >= 6, "'@every 1s' enqueued %lld ticks in about 5 s", n);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM (SELECT key FROM pgcorral.jobs"
                            " WHERE task = 't.tick' GROUP BY key HAVING count(*) > 1) d"),
           0, "no tick key has two jobs");
    is_int(pgt_query_ll(db, "SELECT count(*) - count(DISTINCT key) FROM pgcorral.jobs"
                            " WHERE task = 't.tick'"),
           0, "... and every job has a key");
    is_int(pgt_query_ll(db, "SELECT (max(t) - min(t) + 1) - count(*) FROM (SELECT DISTINCT"
                            " split_part(key, ':', 3)::bigint AS t FROM pgcorral.jobs"
                            " WHERE task = 't.tick') d"),
           0, "the ticks are consecutive seconds: none skipped");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.tick' AND"
                            " (key !~ '^cron:[0-9a-f]{16}:[0-9]+$' OR payload <> '{\"n\":1}')"),
           0, "keys are cron:SCHEDULE:TICK, and the payload is the schedule's");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.hourly'"), 0,
           "a new hourly schedule waits for its next tick");

    /* The key is free once the job is done; the schedule's last tick is not. */
    jt_exec(db, "DELETE FROM pgcorral.jobs WHERE task = 't.tick'");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.cron_schedules c,"
                            " pgcorral.cron_fire(c.schedule, c.spec, c.task, c.payload,"
                            "   c.last_tick - interval '1 second') f"
                            " WHERE c.task = 't.tick' AND f IS NOT NULL"),
           0, "a late supervisor firing a past tick enqueues nothing, its job done or not");

    /* `pgcorral jobs cron`. */
    char *argv[] = {(char *)pgt_binary(), "jobs", "cron", NULL};
    is_int(ot_run(argv, (char *[]){env_url, NULL}, 10000, &o), 0, "pgcorral jobs cron: exit 0");
    ok(strstr(o.out, "@every 1s") && strstr(o.out, "@every 1h") &&
           strstr(o.out, "CRON_TZ=Europe/Paris 0 9 * * mon-fri") && strstr(o.out, "t.report") &&
           strstr(o.out, "t330-1,t330-2"),
       "... lists the three schedules and the nodes that run them:\n%s", o.out);
    ok(strstr(o.out, next_run("CRON_TZ=Europe/Paris 0 9 * * mon-fri")) != NULL,
       "... with the next run of the Paris schedule, in UTC (%s)",
       next_run("CRON_TZ=Europe/Paris 0 9 * * mon-fri"));
    ot_output_free(&o);
    char *jargv[] = {(char *)pgt_binary(), "jobs", "cron", "--json", NULL};
    is_int(ot_run(jargv, (char *[]){env_url, NULL}, 10000, &o), 0, "jobs cron --json: exit 0");
    json_t *doc = json_loads(o.out, 0, NULL), *e;
    size_t i;
    long long now = (long long)time(NULL), next_1s = -1;
    json_array_foreach(json_object_get(doc, "schedules"), i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "spec")), "@every 1s") == 0)
            next_1s = json_integer_value(json_object_get(e, "next_run"));
    }
    ok(next_1s > now - 1 && next_1s <= now + 2, "... '@every 1s' runs next at %lld (now %lld)",
       next_1s, now);
    json_decref(doc);
    ot_output_free(&o);

    /* Downtime: both stop; the hourly schedule's last tick is five hours old. */
    ok(ts_stop(&s2) && ts_stop(&s1), "both supervisors stop cleanly");
    ok(!strstr(s1.p.log, "recurring job not enqueued") &&
           !strstr(s2.p.log, "recurring job not enqueued"),
       "... and neither logged a failed tick");
    pgt_proc_cleanup(&s1.p);
    pgt_proc_cleanup(&s2.p);
    jt_exec(db, "UPDATE pgcorral.cron_schedules SET last_tick = last_tick - interval '5 hours'"
                " WHERE task = 't.hourly'");
    jt_exec(db, "DELETE FROM pgcorral.jobs");
    if (!start(&s1, 1))
        bail("supervisor 1 did not start again");
    /* A few ticks of the 1 s schedule: the supervisor looked at the schedules meanwhile. */
    pgt_wait_at_least(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.tick'", 3, 10000);
    long long hour = (long long)time(NULL) / 3600 * 3600;
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.hourly' AND key LIKE '%%:%lld'",
             hour);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.hourly'"), 1,
           "after 5 hours down, one missed hourly tick runs, not 5");
    is_int(pgt_query_ll(db, sql), 1, "... the last one (%lld)", hour);
    ok(ts_stop(&s1), "the supervisor stops cleanly");
    pgt_proc_cleanup(&s1.p);
    PQfinish(db);
    return done_testing();
}
