/*
 * The job worker against a real database, run as forked children of the test (the
 * supervisor's part played by tests/lib/jobharness.h): jobs run once and are deleted,
 * wake-ups arrive through the LISTEN connection, failures retry with backoff until
 * max_attempts and are then kept as failed, unknown tasks fail clearly, priorities, run_at
 * and queues are honoured, pgc_tx + pgc_enqueue commit or roll back together, a task over
 * its timeout gets its worker replaced, a crashing handler takes down only its worker.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/jobharness.h"
#include "tests/lib/jobtest.h"

static const char *url;
static PGconn *db;

/* Number of rows a query counts, as a condition for jh_wait. */
/* Waits until sql counts want (pumping the harness); returns the last count. */
static void reset(void)
{
    jt_exec(db, "TRUNCATE pgcorral.jobs, t_runs");
}

static struct job_options options(int poll_ms)
{
    struct job_options o;
    job_options_init(&o);
    o.poll_interval_ms = poll_ms;
    o.retry_base_ms = 100;
    return o;
}

static void test_basics(struct jh *h)
{
    struct job_options o = options(60000);
    long long t0;

    reset();
    jh_spawn(h, 0, &o);
    /* The first claim happens at start; later ones only on wake-ups (poll is 60 s). */
    jt_exec(db, "SELECT pgcorral.add_jobs(jsonb_agg(jsonb_build_object('task', 't.record',"
                " 'payload', jsonb_build_object('i', i)))) FROM generate_series(1, 500) i");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM t_runs", 500, 15000), 500,
           "500 jobs added in bulk all run (woken through LISTEN, no poll)");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM pgcorral.jobs", 0, 5000), 0,
           "and are deleted once done (batched acks)");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM (SELECT job_id FROM t_runs GROUP BY job_id"
                            " HAVING count(*) > 1) d"),
           0, "each ran exactly once");
    ok(shm_budget_in_use(h->seg) >= 1, "the LISTEN connection holds a budget slot");

    /* One job at a time: enqueue -> start latency through the wake-up path. */
    long long worst = 0;
    for (int i = 0; i < 5; i++) {
        t0 = pgt_now_ms();
        jt_exec(db, "SELECT pgcorral.add_job('t.record')");
        jh_wait_count(h, db, "SELECT count(*) FROM pgcorral.jobs", 0, 5000);
        if (pgt_now_ms() - t0 > worst)
            worst = pgt_now_ms() - t0;
    }
    ok(worst < 500, "single jobs run promptly after enqueue (worst %lld ms, poll is 60 s)", worst);
    is_int(atomic_load(&h->seg->workers[0].counters.jobs_done), 505,
           "jobs_done counts in the worker's stats block");
}

static void test_failures(struct jh *h)
{
    reset();
    jt_exec(db, "SELECT pgcorral.add_job('t.flaky', '{\"ok_at\":3}')");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM t_runs WHERE task = 't.flaky'", 1, 10000), 1,
           "a job failing twice succeeds on its third attempt");
    is_int(pgt_query_ll(db, "SELECT attempt FROM t_runs WHERE task = 't.flaky'"), 3,
           "attempt 3 ran it");
    ok(atomic_load(&h->seg->workers[0].counters.jobs_retried) >= 2, "retries are counted");

    jt_exec(db, "SELECT pgcorral.add_job('t.fail', max_attempts => 3)");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed'", 1,
                         10000),
           1, "a job that always fails is kept as failed after max_attempts");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.fail' AND"
                            " attempts = 3 AND locked_by IS NULL AND"
                            " last_error = 'boom on attempt 3'"),
           1, "with 3 attempts and the last error");
    /* Backoff: 100 ms then 200 ms between the attempts (base 100 ms, doubling). */
    ok(job_retry_delay_ms(&(struct job_options){.retry_base_ms = 1000, .retry_max_ms = 3600000},
                          4) == 8000,
       "retry delay = base * 2^(attempt-1): 8 s after the 4th attempt with base 1 s");

    jt_exec(db, "SELECT pgcorral.add_job('no.such.task', max_attempts => 2)");
    is_int(jh_wait_count(h, db,
                         "SELECT count(*) FROM pgcorral.jobs WHERE task = 'no.such.task' AND"
                         " outcome = 'failed'",
                         1, 10000),
           1, "an unknown task is failed, and kept (never lost)");
    PGresult *r = PQexec(db, "SELECT last_error FROM pgcorral.jobs WHERE task = 'no.such.task'");
    const char *e = PQntuples(r) ? PQgetvalue(r, 0, 0) : "";
    ok(strstr(e, "unknown task \"no.such.task\"") && strstr(e, "t.record"),
       "its error names the task and the tasks there are: %s", e);
    PQclear(r);
}

static void test_order_and_queues(struct jh *h)
{
    struct job_options o = options(100);
    const char *queues[] = {"a", NULL};

    /* Stop worker 0; a single-handler worker shows the order. */
    kill(h->pid[0], SIGTERM);
    while (!jh_exited(h, 0))
        jh_pump(h, 10);
    reset();
    jt_exec(db, "SELECT pgcorral.add_job('t.record', priority => p) FROM unnest(ARRAY[5, -1, 3, "
                "0]) p");
    jt_exec(db, "SELECT pgcorral.add_job('t.record', '{\"late\":1}', run_at => now() + "
                "interval '1500 ms', priority => -100)");
    o.concurrency = 1;
    jh_spawn(h, 0, &o);
    jh_wait_count(h, db, "SELECT count(*) FROM t_runs", 4, 10000);
    PGresult *r;
    r = PQexec(db, "SELECT string_agg(job_id::text, ',' ORDER BY at) FROM t_runs");
    char order[128];
    snprintf(order, sizeof order, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    /* ids were assigned in the order 5, -1, 3, 0: run order must be -1, 0, 3, 5. */
    long long first = pgt_query_ll(db, "SELECT min(job_id) FROM t_runs");
    char want[128];
    snprintf(want, sizeof want, "%lld,%lld,%lld,%lld", first + 1, first + 3, first + 2, first);
    is_str(order, want, "lower priority values run first");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE payload ? 'late'"), 1,
           "a job with run_at in the future waits, even at the best priority");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM t_runs", 5, 5000), 5,
           "and runs once it is due");

    kill(h->pid[0], SIGTERM);
    while (!jh_exited(h, 0))
        jh_pump(h, 10);
    reset();
    o.concurrency = 0;
    o.queues = queues;
    jh_spawn(h, 0, &o);
    jt_exec(db, "SELECT pgcorral.add_job('t.record', queue => 'a')");
    jt_exec(db, "SELECT pgcorral.add_job('t.record', queue => 'b')");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM t_runs", 1, 5000), 1,
           "a worker serving queue a runs its job");
    jh_pump(h, 300);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE queue = 'b' AND"
                            " locked_by IS NULL AND attempts = 0"),
           1, "and leaves queue b's alone");
    kill(h->pid[0], SIGTERM);
    while (!jh_exited(h, 0))
        jh_pump(h, 10);
}

static void test_tx(struct jh *h)
{
    struct job_options o = options(100);

    reset();
    jh_spawn(h, 0, &o);
    jt_exec(db, "SELECT pgcorral.add_job('t.tx')");
    is_int(jh_wait_count(h, db, "SELECT count(*) FROM t_runs WHERE task = 't.record'", 1, 5000), 1,
           "pgc_enqueue inside pgc_tx: the follow-up job commits with the transaction, and runs");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'tx'"), 1,
           "with the transaction's own row");
    jt_exec(db, "SELECT pgcorral.add_job('t.tx', '{\"fail\":1}', max_attempts => 1)");
    jh_wait_count(h, db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed'", 1, 5000);
    jh_pump(h, 300);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'tx'"), 1,
           "a transaction that fails rolls back its row");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE queue = 'followups'"), 0,
           "and the job it enqueued");
    PGresult *r = PQexec(db, "SELECT last_error FROM pgcorral.jobs WHERE outcome = 'failed'");
    ok(PQntuples(r) == 1 && strstr(PQgetvalue(r, 0, 0), "rolled back on purpose"),
       "the job's error is the handler's message");
    PQclear(r);
}

static void test_timeout_and_crash(struct jh *h)
{
    long long t0;

    reset();
    jt_exec(db, "SELECT pgcorral.add_job('t.hang')");
    t0 = pgt_now_ms();
    while (!jh_exited(h, 0) && pgt_now_ms() - t0 < 10000)
        jh_pump(h, 10);
    ok(WIFEXITED(h->status[0]) && WEXITSTATUS(h->status[0]) == JOB_EXIT_REPLACE,
       "a task over its timeout (300 ms) makes its worker exit to be replaced");
    ok(pgt_now_ms() - t0 < 3000, "promptly (%lld ms)", pgt_now_ms() - t0);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.hang' AND"
                            " locked_by IS NULL AND outcome IS NULL AND attempts = 1 AND"
                            " last_error LIKE 'timed out after 300 ms%'"),
           1, "the job failed with a timeout error and waits for its retry");

    /* A handler that segfaults: its worker dies; the job is unlocked and retried. */
    reset();
    struct job_options o = options(100);
    jh_spawn(h, 0, &o);
    jt_exec(db, "SELECT pgcorral.add_job('t.crash', max_attempts => 2)");
    t0 = pgt_now_ms();
    while (!jh_exited(h, 0) && pgt_now_ms() - t0 < 10000)
        jh_pump(h, 10);
    /* (Under a sanitizer the SEGV is reported and the process exits non-zero.) */
    ok((WIFSIGNALED(h->status[0]) && WTERMSIG(h->status[0]) == SIGSEGV) ||
           (WIFEXITED(h->status[0]) && WEXITSTATUS(h->status[0]) != 0 &&
            WEXITSTATUS(h->status[0]) != JOB_EXIT_REPLACE),
       "a segfaulting handler takes down its worker only (the test survives)");
    is_int(jh_wait_count(h, db,
                         "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.crash' AND"
                         " locked_by IS NULL AND last_error LIKE 'worker % died%'",
                         1, 3000),
           1, "the supervisor side unlocks its job at once, with the reason");
    jh_spawn(h, 0, &o);
    is_int(jh_wait_count(h, db,
                         "SELECT count(*) FROM pgcorral.jobs WHERE task = 't.crash' AND"
                         " outcome = 'failed' AND attempts = 2",
                         1, 10000),
           1, "the job is retried by the new worker (and kept as failed after max_attempts)");
}

int main(void)
{
    struct jh h;
    const char *plugins[2];

    tap_timeout(120);
    pgt_db_url();
    url = jt_create_job_db("pgct_t311");
    db = jt_connect(url);
    jt_create_runs_table(db);
    plugins[0] = jt_build_plugin("jobs", NULL);
    plugins[1] = NULL;
    jh_init(&h, url, plugins, 64);
    jh_listen(&h, 0, 0);
    jh_pump(&h, 100);

    test_basics(&h);
    test_failures(&h);
    test_order_and_queues(&h);
    test_tx(&h);
    test_timeout_and_crash(&h);

    jh_done(&h);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
