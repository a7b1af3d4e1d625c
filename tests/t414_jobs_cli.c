/*
 * `pgcorral jobs list|show|retry|cancel|delete` against the database, with no supervisor
 * running: filters and --json, show, cancel of queued, scheduled and running jobs, retry of
 * one failed job and of --failed [--task T], delete, and the errors a user gets (a job
 * that does not exist, a job in the wrong state, an ID that is not a positive integer).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

static char env_url[1024];
static PGconn *db;

/* Runs `pgcorral jobs ARGS...` (NULL-terminated) into o; returns the exit code. */
static int jobs(struct ot_output *o, ...)
{
    char *argv[32] = {(char *)pgt_binary(), "jobs"};
    int n = 2;
    va_list ap;
    va_start(ap, o);
    for (char *a; n < 31 && (a = va_arg(ap, char *)) != NULL;)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    char *env[] = {env_url, NULL};
    return ot_run(argv, env, 10000, o);
}

/* Adds a job with SQL and returns its id. */
static long long add(const char *sql)
{
    long long id = pgt_query_ll(db, sql);
    if (id <= 0)
        bail("%s: no id", sql);
    return id;
}

/* Whether the line of job id in `jobs list` output is there. */
static bool lists(const char *out, long long id)
{
    char needle[32];
    snprintf(needle, sizeof needle, "\n%-10lld ", id);
    return out && strstr(out, needle) != NULL;
}

int main(void)
{
    struct ot_output o;
    char err[512], a[24], b[24], c[24], d[24], e[24], f[24], k[24], big[24];

    tap_timeout(60);
    pgt_db_url();
    const char *url = jt_create_job_db("pgct_t414");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    db = jt_connect(url);

    long long ja = add("SELECT pgcorral.add_job('mail', queue => 'q1')");
    long long jb = add("SELECT pgcorral.add_job('mail', run_at => now() + interval '1 hour')");
    long long jc = add("INSERT INTO pgcorral.jobs (task, outcome, finished_at, attempts,"
                       " last_error) VALUES ('mail', 'failed', now(), 25, 'smtp down')"
                       " RETURNING id");
    long long jd = add("INSERT INTO pgcorral.jobs (task, outcome, finished_at, attempts)"
                       " VALUES ('sms', 'failed', now(), 25) RETURNING id");
    long long je = add("INSERT INTO pgcorral.jobs (task, outcome, finished_at, run_ms)"
                       " VALUES ('sms', 'completed', now(), 12) RETURNING id");
    long long jf = add("INSERT INTO pgcorral.jobs (task, locked_by, locked_at, attempts)"
                       " VALUES ('long', 'elsewhere:1:1', now(), 1) RETURNING id");
    snprintf(a, sizeof a, "%lld", ja);
    snprintf(b, sizeof b, "%lld", jb);
    snprintf(c, sizeof c, "%lld", jc);
    snprintf(d, sizeof d, "%lld", jd);
    snprintf(e, sizeof e, "%lld", je);
    snprintf(f, sizeof f, "%lld", jf);
    snprintf(big, sizeof big, "%lld", jf + 1000);

    /* list */
    is_int(jobs(&o, "list", NULL), 0, "jobs list: exit 0 without a supervisor");
    ok(lists(o.out, ja) && lists(o.out, jb) && lists(o.out, jc) && lists(o.out, jd) &&
           lists(o.out, je) && lists(o.out, jf) && strstr(o.out, "(6 jobs)"),
       "... every job, one line each");
    ok(strstr(o.out, "scheduled") && strstr(o.out, "running") && strstr(o.out, "completed") &&
           strstr(o.out, "smtp down"),
       "... with states and the last error");
    ot_output_free(&o);
    is_int(jobs(&o, "list", "--state", "failed", NULL), 0, "jobs list --state failed");
    ok(lists(o.out, jc) && lists(o.out, jd) && !lists(o.out, ja) && !lists(o.out, je),
       "... only the failed jobs");
    ot_output_free(&o);
    jobs(&o, "list", "--state=failed", "--task", "sms", NULL);
    ok(lists(o.out, jd) && !lists(o.out, jc), "--state failed --task sms: only that task's");
    ot_output_free(&o);
    jobs(&o, "list", "--queue", "q1", NULL);
    ok(lists(o.out, ja) && strstr(o.out, "(1 job)"), "--queue q1: only that queue's");
    ot_output_free(&o);
    jobs(&o, "list", "--limit", "2", NULL);
    ok(lists(o.out, jf) && lists(o.out, je) && strstr(o.out, "(2 jobs)"),
       "--limit 2: the two newest");
    ot_output_free(&o);
    is_int(jobs(&o, "list", "--state", "scheduled", "--json", NULL), 0, "jobs list --json");
    json_t *arr = json_loads(o.out, 0, NULL);
    json_t *first = json_array_get(arr, 0);
    ok(json_is_array(arr) && json_array_size(arr) == 1 &&
           json_integer_value(json_object_get(first, "id")) == jb &&
           strcmp(json_string_value(json_object_get(first, "state")), "scheduled") == 0 &&
           json_object_get(first, "run_at") && json_object_get(first, "finished_at"),
       "... a JSON array of job objects with their state and times");
    json_decref(arr);
    ot_output_free(&o);
    is_int(jobs(&o, "list", "--state", "done", NULL), 2, "an unknown state: exit 2");
    ok(strstr(o.err, "--state must be queued, scheduled, running, failed, completed or "
                     "cancelled, got 'done'") != NULL,
       "... naming the states");
    ot_output_free(&o);
    is_int(jobs(&o, "list", "--limit", "0", NULL), 2, "--limit 0: exit 2");
    ot_output_free(&o);
    is_int(jobs(&o, "list", "--color", NULL), 2, "an unknown flag: exit 2");
    ot_output_free(&o);

    /* show */
    is_int(jobs(&o, "show", c, NULL), 0, "jobs show ID: exit 0");
    json_t *job = json_loads(o.out, 0, NULL);
    ok(json_integer_value(json_object_get(job, "id")) == jc &&
           strcmp(json_string_value(json_object_get(job, "state")), "failed") == 0 &&
           strcmp(json_string_value(json_object_get(job, "last_error")), "smtp down") == 0,
       "... the job as JSON: failed, with its error");
    json_decref(job);
    ot_output_free(&o);
    is_int(jobs(&o, "show", big, NULL), 1, "show of a job that does not exist: exit 1");
    ok(strstr(o.err, "no job ") && strstr(o.err, big), "... 'no job %s'", big);
    ot_output_free(&o);
    is_int(jobs(&o, "show", "abc", NULL), 2, "show abc: exit 2");
    ok(strstr(o.err, "must be a positive integer, got 'abc'") != NULL, "... saying why");
    ot_output_free(&o);
    is_int(jobs(&o, "cancel", "0", NULL), 2, "cancel 0: exit 2 (not positive)");
    ot_output_free(&o);
    is_int(jobs(&o, "cancel", "99999999999999999999", NULL), 2, "an ID beyond bigint: exit 2");
    ot_output_free(&o);
    is_int(jobs(&o, "cancel", NULL), 2, "cancel without an ID: exit 2");
    ot_output_free(&o);

    /* cancel */
    is_int(jobs(&o, "cancel", a, b, NULL), 0, "cancel of a queued and a scheduled job: exit 0");
    ok(strcmp(jt_job_state(db, ja), "cancelled") == 0 &&
           strcmp(jt_job_state(db, jb), "cancelled") == 0,
       "... both are cancelled");
    ok(ot_count(o.out, ": cancelled\n") == 2, "... one line each");
    ot_output_free(&o);
    is_int(jobs(&o, "cancel", a, NULL), 1, "cancel of a cancelled job: exit 1");
    snprintf(err, sizeof err, "job %s is already cancelled", a);
    ok(strstr(o.err, err) != NULL, "... '%s'", err);
    ot_output_free(&o);
    jobs(&o, "cancel", e, NULL);
    snprintf(err, sizeof err, "job %s is already completed", e);
    ok(o.code == 1 && strstr(o.err, err) != NULL, "cancel of a completed job: '%s'", err);
    ot_output_free(&o);
    is_int(jobs(&o, "cancel", f, NULL), 0, "cancel of a running job: exit 0");
    ok(strstr(o.out, "cancel requested") != NULL, "... the cancel is requested");
    snprintf(err, sizeof err,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND cancel_requested_at IS NOT"
             " NULL AND outcome IS NULL",
             jf);
    is_int(pgt_query_ll(db, err), 1, "... recorded; the job runs on until its handler returns");
    is_str(jt_job_state(db, jf), "running", "... and is still running");
    ot_output_free(&o);

    /* retry */
    is_int(jobs(&o, "retry", c, NULL), 0, "retry of a failed job: exit 0");
    snprintf(err, sizeof err,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND attempts = 0 AND"
             " outcome IS NULL AND run_at <= now()",
             jc);
    ok(strcmp(jt_job_state(db, jc), "queued") == 0 && pgt_query_ll(db, err) == 1,
       "... it is queued again with fresh attempts");
    ot_output_free(&o);
    is_int(jobs(&o, "retry", e, NULL), 1, "retry of a completed job: exit 1");
    ok(strstr(o.err, "only failed, cancelled or scheduled jobs are retried") != NULL,
       "... saying which jobs can be");
    ot_output_free(&o);
    long long jk_live = add("SELECT pgcorral.add_job('mail', key => 'k1')");
    long long jk = add("INSERT INTO pgcorral.jobs (task, key, outcome, finished_at) VALUES"
                       " ('mail', 'k1', 'failed', now()) RETURNING id");
    snprintf(k, sizeof k, "%lld", jk);
    is_int(jobs(&o, "retry", k, NULL), 1, "retry of a failed job whose key a live job holds: 1");
    snprintf(err, sizeof err, "taken by job %lld", jk_live);
    ok(strstr(o.err, err) != NULL, "... naming the holder");
    ot_output_free(&o);
    add("INSERT INTO pgcorral.jobs (task, outcome, finished_at) VALUES ('sms', 'failed', now())"
        " RETURNING id");
    is_int(jobs(&o, "retry", "--failed", "--task", "sms", NULL), 0, "retry --failed --task sms");
    ok(strstr(o.out, "retried 2 failed jobs of task sms") != NULL, "... retried both");
    is_str(jt_job_state(db, jd), "queued", "... the sms job is queued again");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed'"), 1,
           "... the other task's failed job is left alone");
    ot_output_free(&o);
    is_int(jobs(&o, "retry", "--failed", NULL), 0, "retry --failed");
    ok(strstr(o.out, "retried 0 failed jobs; 1 skipped: a live job holds their key") != NULL,
       "... the failed job whose key is taken is skipped, and said so");
    ot_output_free(&o);

    /* delete */
    is_int(jobs(&o, "delete", a, e, NULL), 0, "delete of a cancelled and a completed job: exit 0");
    snprintf(err, sizeof err, "SELECT count(*) FROM pgcorral.jobs WHERE id IN (%lld, %lld)", ja,
             je);
    is_int(pgt_query_ll(db, err), 0, "... both are gone");
    ot_output_free(&o);
    is_int(jobs(&o, "delete", f, NULL), 1, "delete of a running job: exit 1");
    ok(strstr(o.err, "is running: cancel it first") != NULL, "... saying what to do");
    ot_output_free(&o);
    is_int(jobs(&o, "delete", a, NULL), 1, "delete of a job that is gone: exit 1");
    snprintf(err, sizeof err, "no job %s", a);
    ok(strstr(o.err, err) != NULL, "... '%s'", err);
    ot_output_free(&o);

    /* usage */
    is_int(jobs(&o, "--help", NULL), 0, "jobs --help: exit 0");
    ok(strstr(o.out, "jobs list") && strstr(o.out, "jobs cancel") && strstr(o.out, "--failed"),
       "... listing the commands");
    ot_output_free(&o);
    is_int(jobs(&o, "purge", NULL), 2, "an unknown jobs command: exit 2");
    ot_output_free(&o);
    is_int(jobs(&o, "cancel", "--failed", NULL), 2, "--failed outside retry: exit 2");
    ot_output_free(&o);
    char *argv[] = {(char *)pgt_binary(), "jobs", "list", NULL};
    char *noenv[] = {"DATABASE_URL=", NULL};
    ot_run(argv, noenv, 10000, &o);
    ok(o.code == 2 && strstr(o.err, "DATABASE_URL is not set"), "no DATABASE_URL: exit 2");
    ot_output_free(&o);
    PQfinish(db);
    return done_testing();
}
