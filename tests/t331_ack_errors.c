/*
 * An ack the server refuses for a reason that will not change is not retried forever: a
 * trigger makes the deletion of one "poison" job raise SQLSTATE 22023, so every ack
 * statement that carries it fails. The worker logs the refusal once with the server's
 * error and gives the job up (it stays locked until the worker is gone, then the
 * supervisor's orphan path unlocks it); a refused batch of several jobs is acked one by one,
 * so its good jobs still complete; later acks still commit, and SIGTERM drains the worker.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/jobharness.h"
#include "tests/lib/jobtest.h"

#define NGOOD 20

static PGconn *db;

static bool poison_ran(void *arg)
{
    (void)arg;
    return pgt_query_ll(db, "SELECT count(*) FROM t_runs r JOIN pgcorral.jobs j ON j.id ="
                            " r.job_id WHERE j.payload ? 'poison' AND r.phase = 'done'") == 1;
}

static bool good_acked(void *arg)
{
    (void)arg;
    return pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE NOT payload ? 'poison'") == 0;
}

static bool poisons_unlocked(void *arg)
{
    (void)arg;
    return pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE payload ? 'poison'"
                            " AND locked_by IS NULL") == 2;
}

static bool slow_ack_started(void *arg)
{
    (void)arg;
    return pgt_query_ll(db, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                            " AND query LIKE '%ack_jobs%'") == 1;
}

static bool worker_exited(void *arg)
{
    return jh_exited(arg, 0);
}

/* How many lines of the file at path contain needle. */
static int count_lines(const char *path, const char *needle)
{
    char line[8192];
    int n = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

int main(void)
{
    struct jh h;
    struct job_options o;
    const char *plugins[2] = {NULL, NULL};
    const char *url;
    char log_path[] = "/tmp/t331_log_XXXXXX";
    int log_fd, saved_stderr;

    tap_timeout(60);
    pgt_db_url();
    url = jt_create_job_db("pgct_t331");
    db = jt_connect(url);
    jt_create_runs_table(db);
    /* The refusal comes from the real server, for a value it will never accept. */
    jt_exec(db, "CREATE FUNCTION t_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF OLD.payload ? 'slow' THEN PERFORM pg_sleep(1); END IF;"
                " IF OLD.payload ? 'poison' THEN"
                " RAISE EXCEPTION 'poison job % refused', OLD.id USING ERRCODE = '22023';"
                " END IF; RETURN OLD; END $$");
    jt_exec(db, "CREATE TRIGGER t_refuse_poison BEFORE DELETE ON pgcorral.jobs"
                " FOR EACH ROW EXECUTE FUNCTION t_refuse_poison()");
    plugins[0] = jt_build_plugin("jobs", NULL);
    jh_init(&h, url, plugins, 16);
    jh_listen(&h, 0, 0);
    job_options_init(&o);
    o.poll_interval_ms = 100;

    /* The worker's log (its stderr) goes to a file the test reads. */
    log_fd = mkstemp(log_path);
    if (log_fd < 0)
        bail("mkstemp: %s", strerror(errno));
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    dup2(log_fd, STDERR_FILENO);
    jh_spawn(&h, 0, &o);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    close(log_fd);

    jt_exec(db, "SELECT pgcorral.add_job('t.record', '{\"poison\": true}')");
    ok(jh_wait(&h, poison_ran, NULL, 10000), "the poison job ran");
    jt_exec(db, "SELECT count(*) FROM pgcorral.add_jobs((SELECT jsonb_agg(jsonb_build_object("
                "'task', 't.record', 'payload', jsonb_build_object('n', i)))"
                " FROM generate_series(1, 20) i))");
    ok(jh_wait(&h, good_acked, NULL, 10000),
       "the %d jobs enqueued after the refused ack are acked (deleted)", NGOOD);
    is_int(pgt_query_ll(db, "SELECT count(DISTINCT job_id) FROM t_runs r WHERE phase = 'done'"),
           NGOOD + 1, "each job ran");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'"), NGOOD + 1,
           "and once");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE payload ? 'poison'"
                            " AND locked_by IS NOT NULL"),
           1, "the refused job stays locked by the live worker");

    /* A batch with good jobs and a poison one: while the ack of a slow job holds the next
     * batch back, the others finish and their outcomes pile up into one ack. */
    jt_exec(db, "SELECT pgcorral.add_job('t.record', '{\"slow\": true}')");
    ok(jh_wait(&h, slow_ack_started, NULL, 10000), "the slow job's ack is in flight");
    jt_exec(db, "SELECT count(*) FROM pgcorral.add_jobs((SELECT jsonb_agg(jsonb_build_object("
                "'task', 't.record', 'payload', CASE WHEN i = 5 THEN '{\"poison\": 2}'"
                " ELSE jsonb_build_object('n', i) END)) FROM generate_series(1, 20) i))");
    ok(jh_wait(&h, good_acked, NULL, 10000),
       "the good jobs of a refused batch are acked one by one (deleted)");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'"), 2 * NGOOD + 2,
           "every job ran once");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE payload ? 'poison'"
                            " AND locked_by IS NOT NULL"),
           2, "only the refused jobs stay locked");

    kill(h.pid[0], SIGTERM);
    ok(jh_wait(&h, worker_exited, &h, 10000), "SIGTERM: the worker drains and exits");
    ok(h.pid[0] == 0 && WIFEXITED(h.status[0]) && WEXITSTATUS(h.status[0]) == 0, "with status 0");
    ok(jh_wait(&h, poisons_unlocked, NULL, 10000),
       "the supervisor's orphan path unlocks the refused jobs once the worker is gone");

    is_int(count_lines(log_path, "job ack refused; the job stays locked"), 2,
           "each refused job is logged once");
    is_int(count_lines(log_path, "job ack refused; acking its jobs one by one"), 1,
           "the refused batch is logged once");
    ok(count_lines(log_path, "poison job") == 3 && count_lines(log_path, "22023") == 3,
       "with the server's error and its SQLSTATE");
    is_int(count_lines(log_path, "job ack failed; retrying"), 0, "and is not retried");
    unlink(log_path);

    jh_done(&h);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
