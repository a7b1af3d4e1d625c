/*
 * The pgcorral schema and the SQL side of the job queue: migrations (two supervisors at
 * once, idempotent), pgcorral.add_job / add_jobs (defaults, dedupe keys, validation,
 * coalesced NOTIFY), the claim (index, SKIP LOCKED, priority order) and the batched ack;
 * the registry's migration keeps the jobs of an upgraded database.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* Runs sql with params; returns the result (caller clears) or bails when status differs. */
static PGresult *q(PGconn *c, ExecStatusType want, const char *sql, int n, const char **params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != want)
        bail("%s: %s", sql, PQresultErrorMessage(r));
    return r;
}

/* The error message of sql, or "" when it succeeds. */
static char *error_of(PGconn *c, const char *sql)
{
    static char msg[512];
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    msg[0] = '\0';
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
    PQclear(r);
    return msg;
}

static int count_notifies(PGconn *c, int wait_ms)
{
    int n = 0;
    PGnotify *nt;
    struct pollfd pf = {.fd = PQsocket(c), .events = POLLIN};
    while (poll(&pf, 1, wait_ms) > 0) {
        PQconsumeInput(c);
        while ((nt = PQnotifies(c)) != NULL) {
            n++;
            PQfreemem(nt);
        }
        wait_ms = 100;
    }
    return n;
}

static void test_migrations(void)
{
    struct rt_dburl *db = parse_url();
    char err[1024];
    pid_t kids[2];
    int ok_kids = 0, from = -1;
    PGconn *c;

    /* Two supervisors starting at once on an empty database. */
    for (int i = 0; i < 2; i++) {
        fflush(NULL);
        kids[i] = fork();
        if (kids[i] == 0) {
            char e[1024];
            _exit(sup_migrate(db, NULL, e, sizeof e) == 0 ? 0 : 1);
        }
    }
    for (int i = 0; i < 2; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        ok_kids += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    is_int(ok_kids, 2, "two migrations at once both succeed");
    c = jt_connect(url);
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.migrations"), SUP_SCHEMA_VERSION,
           "each migration is recorded once");
    int rc = sup_migrate(db, &from, err, sizeof err);
    ok(rc == 0 && from == SUP_SCHEMA_VERSION, "migrating again finds the schema current (%d)",
       from);
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'pgcorral'"
                           " AND indexname = 'jobs_claim_idx'"
                           " AND indexdef LIKE '%WHERE ((locked_by IS NULL) AND (outcome IS "
                           "NULL))'"),
           1, "the claim index is partial on unlocked, live jobs");
    ok(pgt_query_ll(c, "SELECT count(*) FROM pg_class WHERE relname = 'jobs' AND"
                       " 'autovacuum_vacuum_scale_factor=0' = ANY(reloptions)") == 1,
       "the jobs table has its own autovacuum settings");
    PQfinish(c);

    /* A database from a newer pgcorral is refused with a message that says so. */
    c = jt_connect(url);
    jt_exec(c, "INSERT INTO pgcorral.migrations VALUES (999, 'future')");
    ok(sup_migrate(db, NULL, err, sizeof err) < 0 && strstr(err, "version 999") &&
           strstr(err, "upgrade pgcorral"),
       "a schema newer than the build is refused: %s", err);
    ok(!strstr(err, "password"), "the error carries no password");
    jt_exec(c, "DELETE FROM pgcorral.migrations WHERE version = 999");
    PQfinish(c);
    rt_dburl_destroy(db);
}

static void test_add_job(void)
{
    PGconn *c = jt_connect(url), *l = jt_connect(url);
    PGresult *r;
    char a[32], b[32];

    jt_exec(l, "LISTEN " JOB_CHANNEL);
    r = q(c, PGRES_TUPLES_OK, "SELECT pgcorral.add_job('t1')", 0, NULL);
    snprintf(a, sizeof a, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    ok(atoll(a) > 0, "add_job returns an id (%s)", a);
    r = q(c, PGRES_TUPLES_OK,
          "SELECT queue, payload::text, priority, max_attempts, attempts, run_at <= now()"
          " FROM pgcorral.jobs WHERE id = $1",
          1, (const char *[]){a});
    ok(strcmp(PQgetvalue(r, 0, 0), "default") == 0 && strcmp(PQgetvalue(r, 0, 1), "{}") == 0 &&
           strcmp(PQgetvalue(r, 0, 2), "0") == 0 && strcmp(PQgetvalue(r, 0, 3), "25") == 0 &&
           strcmp(PQgetvalue(r, 0, 4), "0") == 0 && strcmp(PQgetvalue(r, 0, 5), "t") == 0,
       "defaults: queue default, payload {}, priority 0, max_attempts 25, due now");
    PQclear(r);
    is_int(count_notifies(l, 1000), 1, "one notification for one job");

    /* Coalesced: many jobs in one transaction notify once per queue. */
    jt_exec(c, "BEGIN");
    for (int i = 0; i < 20; i++)
        PQclear(q(c, PGRES_TUPLES_OK, "SELECT pgcorral.add_job('t1', '{\"i\":1}')", 0, NULL));
    PQclear(q(c, PGRES_TUPLES_OK, "SELECT pgcorral.add_job('t1', queue => 'mail')", 0, NULL));
    PQclear(q(c, PGRES_TUPLES_OK,
              "SELECT pgcorral.add_job('t1', run_at => now() + interval '1 hour')", 0, NULL));
    jt_exec(c, "COMMIT");
    is_int(count_notifies(l, 1000), 2, "22 jobs in one transaction: one notification per queue");

    /* Rolled back: no job, no notification. */
    jt_exec(c, "BEGIN");
    PQclear(q(c, PGRES_TUPLES_OK, "SELECT pgcorral.add_job('rolled_back')", 0, NULL));
    jt_exec(c, "ROLLBACK");
    is_int(count_notifies(l, 300), 0, "a rolled back enqueue does not notify");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.jobs WHERE task = 'rolled_back'"), 0,
           "and leaves no job");

    /* Dedupe keys. */
    r = q(c, PGRES_TUPLES_OK, "SELECT * FROM pgcorral.add_job_ex('k', key => 'order-7')", 0, NULL);
    snprintf(a, sizeof a, "%s", PQgetvalue(r, 0, 0));
    ok(strcmp(PQgetvalue(r, 0, 1), "t") == 0, "a new key creates a job");
    PQclear(r);
    r = q(c, PGRES_TUPLES_OK,
          "SELECT * FROM pgcorral.add_job_ex('k', '{\"other\":1}', key => 'order-7')", 0, NULL);
    snprintf(b, sizeof b, "%s", PQgetvalue(r, 0, 0));
    ok(strcmp(a, b) == 0 && strcmp(PQgetvalue(r, 0, 1), "f") == 0,
       "a duplicate key returns the existing job's id and adds nothing");
    PQclear(r);
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.jobs WHERE key = 'order-7'"
                           " AND payload = '{}'"),
           1, "the existing job is unchanged");
    jt_exec(c, "DELETE FROM pgcorral.jobs WHERE key = 'order-7'");
    r = q(c, PGRES_TUPLES_OK, "SELECT * FROM pgcorral.add_job_ex('k', key => 'order-7')", 0, NULL);
    ok(strcmp(PQgetvalue(r, 0, 1), "t") == 0, "once the job is done, the key is free again");
    PQclear(r);

    ok(strstr(error_of(c, "SELECT pgcorral.add_job('')"), "task must be a non-empty string") !=
           NULL,
       "an empty task is refused");
    ok(strstr(error_of(c, "SELECT pgcorral.add_job('x', max_attempts => 0)"),
              "max_attempts must be at least 1") != NULL,
       "max_attempts 0 is refused");
    count_notifies(l, 200);
    PQfinish(l);
    PQfinish(c);
}

static void test_add_jobs(void)
{
    PGconn *c = jt_connect(url);
    PGresult *r;
    char *big;
    size_t cap = 64 * 1024, len = 0;
    long long first, prev;
    bool in_order = true;

    jt_exec(c, "TRUNCATE pgcorral.jobs");
    PQclear(q(c, PGRES_TUPLES_OK, "SELECT pgcorral.add_job('k', key => 'dup')", 0, NULL));
    first = pgt_query_ll(c, "SELECT id FROM pgcorral.jobs WHERE key = 'dup'");
    big = malloc(cap);
    len += (size_t)snprintf(big + len, cap - len, "[");
    for (int i = 0; i < 1000; i++) {
        if (cap - len < 256)
            big = realloc(big, cap *= 2);
        if (i == 500)
            len += (size_t)snprintf(big + len, cap - len, "{\"task\":\"k\",\"key\":\"dup\"},");
        else if (i == 501)
            len += (size_t)snprintf(big + len, cap - len, "{\"task\":\"k\",\"key\":\"new\"},");
        else
            len += (size_t)snprintf(big + len, cap - len,
                                    "{\"task\":\"bulk\",\"payload\":{\"i\":%d},\"priority\":%d}%s",
                                    i, i % 3, i == 999 ? "" : ",");
    }
    snprintf(big + len, cap - len, "]");
    r = q(c, PGRES_TUPLES_OK, "SELECT * FROM pgcorral.add_jobs($1::jsonb)", 1,
          (const char *[]){big});
    is_int(PQntuples(r), 1000, "add_jobs returns one id per job");
    prev = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = atoll(PQgetvalue(r, i, 0));
        if (i == 500 || i == 501)
            continue; /* keyed: added one by one after the others */
        if (id <= prev)
            in_order = false;
        prev = id;
    }
    ok(atoll(PQgetvalue(r, 500, 0)) == first, "a duplicate key in a batch returns the old id");
    PQclear(r);
    ok(in_order, "ids come back in input order");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.jobs"), 1000,
           "999 new jobs plus the existing one");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.jobs WHERE task = 'bulk'"
                           " AND payload ? 'i'"),
           998, "payloads are stored");
    free(big);

    ok(strstr(error_of(c, "SELECT pgcorral.add_jobs('[{\"task\":\"a\"},{\"tsak\":\"b\"}]')"),
              "job 2: unknown field \"tsak\"") != NULL,
       "an unknown field is named with its job's position");
    ok(strstr(error_of(c, "SELECT pgcorral.add_jobs('[{\"task\":\"a\",\"priority\":\"high\"}]')"),
              "\"priority\" must be an integer") != NULL,
       "a wrong type is named");
    ok(strstr(error_of(c, "SELECT pgcorral.add_jobs('{\"task\":\"a\"}')"),
              "expects a JSON array") != NULL,
       "a non-array is refused");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.jobs"), 1000,
           "a refused batch adds nothing");
    PQfinish(c);
}

/* Appends a notice (auto_explain's plans) to the buffer arg. */
static void collect_notice(void *arg, const char *message)
{
    char *buf = arg;
    strncat(buf, message, 8192 - strlen(buf) - 1);
}

static void test_claim_and_ack(void)
{
    PGconn *a = jt_connect(url), *b = jt_connect(url);
    PGresult *r, *r2;
    static char plan[8192];
    int overlap = 0;

    /* The statistics say the table is empty, then a bulk enqueue adds 20000 jobs: the claim
     * must still walk jobs_claim_idx, not sort every due job (what a plain statement's
     * plan did until autoanalyze caught up). auto_explain shows the plan inside claim_jobs. */
    jt_exec(a, "TRUNCATE pgcorral.jobs");
    jt_exec(a, "ANALYZE pgcorral.jobs");
    jt_exec(a, "SELECT count(*) FROM pgcorral.add_jobs((SELECT jsonb_agg(jsonb_build_object("
               "'task', 't', 'priority', i % 3)) FROM generate_series(1, 20000) i))");
    PQnoticeProcessor quiet = PQsetNoticeProcessor(a, collect_notice, plan);
    jt_exec(a, "LOAD 'auto_explain'");
    jt_exec(a, "SET auto_explain.log_min_duration = 0");
    jt_exec(a, "SET auto_explain.log_nested_statements = on");
    jt_exec(a, "SET auto_explain.log_level = notice");
    jt_exec(a, "BEGIN");
    PQclear(q(a, PGRES_TUPLES_OK, JOB_CLAIM_SQL, 9,
              (const char *[]){"w", "10", NULL, NULL, NULL, NULL, NULL, NULL, NULL}));
    jt_exec(a, "ROLLBACK");
    jt_exec(a, "SET auto_explain.log_min_duration = -1");
    PQsetNoticeProcessor(a, quiet, NULL);
    ok(strstr(plan, "Index Scan using jobs_claim_idx") != NULL && !strstr(plan, "Sort Key: c.") &&
           !strstr(plan, "Seq Scan on jobs"),
       "with stale statistics the claim still walks jobs_claim_idx (no sort, no seq scan)");
    if (!strstr(plan, "Index Scan using jobs_claim_idx"))
        diag("%s", plan);

    /* Two workers claiming at once get disjoint jobs. */
    jt_exec(a, "BEGIN");
    r = q(a, PGRES_TUPLES_OK, JOB_CLAIM_SQL, 9,
          (const char *[]){"host:1:1", "50", NULL, NULL, NULL, NULL, NULL, NULL, NULL});
    r2 = q(b, PGRES_TUPLES_OK, JOB_CLAIM_SQL, 9,
           (const char *[]){"host:2:1", "50", NULL, NULL, NULL, NULL, NULL, NULL, NULL});
    for (int i = 0; i < PQntuples(r); i++)
        for (int k = 0; k < PQntuples(r2); k++)
            overlap += strcmp(PQgetvalue(r, i, 0), PQgetvalue(r2, k, 0)) == 0;
    ok(PQntuples(r) == 50 && PQntuples(r2) == 50 && overlap == 0,
       "SKIP LOCKED: concurrent claims get 50 + 50 different jobs");
    bool prio_ok = true;
    for (int i = 1; i < PQntuples(r); i++)
        prio_ok &= atoi(PQgetvalue(r, i, 4)) >= atoi(PQgetvalue(r, i - 1, 4));
    ok(prio_ok && strcmp(PQgetvalue(r, 0, 4), "0") == 0, "claimed in priority order");
    ok(strcmp(PQgetvalue(r, 0, 5), "1") == 0, "the claim counts the attempt");
    PQclear(r);
    jt_exec(a, "COMMIT");
    PQclear(r2);

    /* Acks: two done, one failed with retries left, one out of attempts, one given back. */
    jt_exec(a, "TRUNCATE pgcorral.jobs");
    jt_exec(a, "SELECT pgcorral.add_job('t', max_attempts => CASE WHEN i = 4 THEN 1 ELSE 5 "
               "END) FROM generate_series(1, 5) i");
    PQclear(q(a, PGRES_TUPLES_OK, JOB_CLAIM_SQL, 9,
              (const char *[]){"h:1:1", "5", NULL, NULL, NULL, NULL, NULL, NULL, NULL}));
    long long id0 = pgt_query_ll(a, "SELECT min(id) FROM pgcorral.jobs");
    char done[64], ids[128], errs[128], delays[64], giveback[64];
    snprintf(done, sizeof done, "{%lld,%lld}", id0, id0 + 1);
    snprintf(ids, sizeof ids, "{%lld,%lld,%lld}", id0 + 2, id0 + 3, id0 + 4);
    snprintf(errs, sizeof errs, "{\"boom \\\"quoted\\\"\",\"out of attempts\",NULL}");
    snprintf(delays, sizeof delays, "{60000,1000,0}");
    snprintf(giveback, sizeof giveback, "{0,0,1}");
    r = q(a, PGRES_TUPLES_OK, JOB_ACK_SQL, 9,
          (const char *[]){"h:1:1", done, ids, errs, delays, giveback, "{f,f,f}", "f", NULL});
    ok(strcmp(PQgetvalue(r, 0, 0), "2") == 0 && strcmp(PQgetvalue(r, 0, 1), "3") == 0,
       "one ack statement deletes 2 and updates 3");
    PQclear(r);
    is_int(pgt_query_ll(a, "SELECT count(*) FROM pgcorral.jobs"), 3, "done jobs are deleted");
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND locked_by IS NULL AND "
             "outcome IS NULL AND last_error = 'boom \"quoted\"' AND run_at > now() + "
             "interval '50 s'",
             id0 + 2);
    is_int(pgt_query_ll(a, sql), 1, "a failure is unlocked, keeps its error, retries later");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND outcome = 'failed' AND "
             "last_error = 'out of attempts'",
             id0 + 3);
    is_int(pgt_query_ll(a, sql), 1, "a failure out of attempts is kept as failed");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND attempts = 0 AND "
             "locked_by IS NULL AND last_error IS NULL AND run_at <= now()",
             id0 + 4);
    is_int(pgt_query_ll(a, sql), 1, "a job given back unstarted gets its attempt back");
    PQclear(q(a, PGRES_TUPLES_OK, JOB_CLAIM_SQL, 9,
              (const char *[]){"h:1:1", "5", NULL, NULL, NULL, NULL, NULL, NULL, NULL}));
    is_int(pgt_query_ll(a, "SELECT count(*) FROM pgcorral.jobs WHERE locked_by IS NOT NULL"), 1,
           "only the given-back job is claimable again");
    r = q(a, PGRES_TUPLES_OK, JOB_ACK_SQL, 9,
          (const char *[]){"other:9:9", "{}", ids, errs, delays, giveback, "{f,f,f}", "f", NULL});
    ok(strcmp(PQgetvalue(r, 0, 1), "0") == 0, "an ack by another incarnation changes nothing");
    PQclear(r);
    snprintf(sql, sizeof sql, "SELECT (pgcorral.retry_job(%lld)->>'state' = 'queued')::int",
             id0 + 3);
    is_int(pgt_query_ll(a, sql), 1, "retry_job puts a failed job back");
    PQfinish(a);
    PQfinish(b);
}

/* In a child: `pgcorral enqueue` with the arguments in arg. */
static int run_enqueue(void *arg)
{
    char **argv = arg;
    int argc = 0;
    while (argv[argc])
        argc++;
    setenv("DATABASE_URL", url, 1);
    return sup_enqueue_main(argc, argv);
}

static void test_enqueue_cli(void)
{
    PGconn *c = jt_connect(url);
    char *out = NULL;
    char sql[256];
    int rc;

    jt_exec(c, "TRUNCATE pgcorral.jobs");
    /* A live node that registers the task, as a running supervisor would leave it. */
    jt_exec(c, "INSERT INTO pgcorral.nodes (node, host, pid, version, tasks)"
               " VALUES ('t310', 'h', 1, 'x', '{mail.send,t}')");
    rc = jt_run_captured(run_enqueue,
                         (char *[]){"mail.send", "{\"to\":\"a@b\"}", "--queue", "mail",
                                    "--priority", "-5", "--key", "k1", "--run-at", "+1h", NULL},
                         &out);
    long long id = atoll(out);
    ok(rc == 0 && id > 0, "pgcorral enqueue prints the new id (%lld)", id);
    free(out);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND task = 'mail.send' AND "
             "queue = 'mail' AND priority = -5 AND key = 'k1' AND payload->>'to' = 'a@b' AND "
             "run_at > now() + interval '50 minutes'",
             id);
    is_int(pgt_query_ll(c, sql), 1, "with its queue, priority, key, payload and run_at");
    rc = jt_run_captured(run_enqueue, (char *[]){"mail.send", "{}", "--key", "k1", NULL}, &out);
    char idline[32];
    snprintf(idline, sizeof idline, "%lld\n", id);
    ok(rc == 0 && strstr(out, idline) && strstr(out, "exists"),
       "a duplicate key prints the existing id and says so");
    free(out);
    rc = jt_run_captured(run_enqueue, (char *[]){"t", "{not json", NULL}, &out);
    ok(rc == 2 && strstr(out, "not valid JSON"), "malformed payload: exit 2 and a reason");
    free(out);
    rc = jt_run_captured(run_enqueue, (char *[]){"t", "{}", "--priority", "high", NULL}, &out);
    ok(rc == 2 && strstr(out, "--priority must be an integer"), "a bad flag value is named");
    free(out);
    jt_exec(c, "DROP SCHEMA pgcorral CASCADE");
    rc = jt_run_captured(run_enqueue, (char *[]){"t", "{}", NULL}, &out);
    ok(rc == 1 && strstr(out, "pgcorral migrate"),
       "without the schema: exit 1 and how to create it");
    free(out);
    PQfinish(c);
}

/*
 * A database from before the node registry (its objects dropped and its migration row
 * removed, found by name: the lead may renumber migrations) with a queued and a failed job
 * is upgraded, and keeps both jobs as they were.
 */
static void test_registry_upgrade(void)
{
    struct rt_dburl *db = parse_url();
    PGconn *c = jt_connect(url);
    char err[1024];

    jt_exec(c, "TRUNCATE pgcorral.jobs");
    jt_exec(c, "SELECT pgcorral.add_job('kept.queued', '{\"a\":1}')");
    jt_exec(c, "SELECT pgcorral.add_job('kept.failed')");
    jt_exec(c, "UPDATE pgcorral.jobs SET attempts = 25, outcome = 'failed', finished_at = now(),"
               " last_error = 'boom'"
               " WHERE task = 'kept.failed'");
    jt_exec(c, "DROP TABLE pgcorral.nodes, pgcorral.cron_schedules, pgcorral.cluster CASCADE;"
               "DROP FUNCTION pgcorral.check_task, pgcorral.add_known_job,"
               "  pgcorral.claimed_unknown_task, pgcorral.cron_fire, pgcorral.lease_renew,"
               "  pgcorral.lease_expire, pgcorral.cluster_set_budget, pgcorral.app_marks_node;"
               "DELETE FROM pgcorral.migrations"
               "  WHERE name IN ('node registry (unknown tasks) and recurring jobs',"
               "    'cluster budget and node leases')");
    err[0] = '\0';
    ok(sup_migrate(db, NULL, err, sizeof err) == 0, "the registry migration upgrades it %s", err);
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.migrations"), SUP_SCHEMA_VERSION,
           "... to the current version");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.jobs WHERE"
                           " (task = 'kept.queued' AND payload = '{\"a\":1}' AND outcome IS NULL)"
                           " OR (task = 'kept.failed' AND attempts = 25 AND last_error = 'boom'"
                           "     AND outcome = 'failed')"),
           2, "the queued and the failed job are kept as they were");
    is_int(pgt_query_ll(c, "SELECT count(*) FROM pgcorral.live_nodes()"), 0,
           "pgcorral.nodes is there, empty");
    PQfinish(c);
    rt_dburl_destroy(db);
}

int main(void)
{
    tap_timeout(60);
    pgt_db_url();
    url = jt_create_db("pgct_t310");
    test_migrations();
    test_add_job();
    test_add_jobs();
    test_claim_and_ack();
    test_registry_upgrade();
    test_enqueue_cli();
    return done_testing();
}
