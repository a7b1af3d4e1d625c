/*
 * Retention of finished jobs on the real binary: with keep_completed in the config file a
 * done job stays completed with finished_at and its run time, GET /api/v1/jobs/ID answers
 * completed, and its key is free again; the sweep prunes completed jobs past
 * --keep-completed and failed ones past --keep-failed, in batches (the log says how many),
 * and leaves the others; the dead rows pruning leaves behind are measured. Bad durations
 * are refused with a message that names the setting.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

static PGconn *db;

/* What count_is waits for: sql's count equals n. */
struct want {
    const char *sql;
    long long n;
};

static bool count_is(void *arg)
{
    const struct want *w = arg;
    return pgt_query_ll(db, w->sql) == w->n;
}

static bool wait_count(const char *sql, long long n, int ms)
{
    struct want w = {sql, n};
    return pgt_wait_until(count_is, &w, ms);
}

/* `pgcorral run ARGS` must refuse at once (exit 2) naming want. */
static void expect_refused(char *const args[], const char *env_url, const char *want,
                           const char *what)
{
    char *argv[16] = {(char *)pgt_binary(), "run"};
    int n = 2;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char *env[] = {(char *)env_url, NULL};
    struct ot_output o;
    ot_run(argv, env, 10000, &o);
    ok(o.code == 2 && strstr(o.err, want) != NULL, "%s: exit 2 naming it", what);
    if (o.code != 2 || !strstr(o.err, want))
        diag("exit %d, stderr: %s", o.code, o.err);
    ot_output_free(&o);
}

int main(void)
{
    struct ts_sup s;
    struct wt_resp r;
    char env_url[1024], path[96];
    struct ot_output o;

    tap_timeout(90);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t326");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);

    /* The flags are listed and checked. */
    char *help[] = {(char *)pgt_binary(), "run", "--help", NULL};
    ot_run(help, NULL, 10000, &o);
    ok(o.code == 0 && strstr(o.out, "--keep-completed") && strstr(o.out, "--keep-failed"),
       "run --help lists --keep-completed and --keep-failed");
    ot_output_free(&o);
    expect_refused((char *[]){"--keep-completed", "1w", NULL}, env_url,
                   "--keep-completed must be a duration such as 90s, 5m, 1h or 7d",
                   "--keep-completed 1w (no such unit)");
    expect_refused((char *[]){"--keep-failed", "-5m", NULL}, env_url, "--keep-failed must be",
                   "--keep-failed -5m");

    /* Old finished jobs, there before the supervisor starts: its first sweep prunes them. */
    db = jt_connect(url);
    char *mig[] = {(char *)pgt_binary(), "migrate", NULL};
    char *env[] = {env_url, NULL};
    if (ot_run(mig, env, 20000, &o) != 0)
        bail("migrate: %s", o.err);
    ot_output_free(&o);
    jt_exec(db, "CREATE EXTENSION IF NOT EXISTS pgstattuple");
    jt_exec(db, "INSERT INTO pgcorral.jobs (task, outcome, finished_at, run_ms)"
                " SELECT 'old', 'completed', now() - interval '2 hours', 5"
                " FROM generate_series(1, 2500)");
    jt_exec(db, "INSERT INTO pgcorral.jobs (task, outcome, finished_at, run_ms)"
                " SELECT 'recent', 'completed', now() - interval '10 minutes', 5"
                " FROM generate_series(1, 3)");
    jt_exec(db, "INSERT INTO pgcorral.jobs (task, outcome, finished_at)"
                " SELECT 'gone', o, now() - interval '1 minute'"
                " FROM unnest(ARRAY['failed', 'cancelled']) o");
    jt_exec(db, "VACUUM pgcorral.jobs");

    /* keep_completed from the config file, --keep-failed as a flag. */
    const char *conf_path = pgt_tmp_path("t326.conf");
    FILE *f = fopen(conf_path, "w");
    if (!f)
        bail("cannot write %s", conf_path);
    fprintf(f, "# retention\nkeep_completed = 1h\n");
    fclose(f);
    char *args[] = {"--jobs",
                    "1",
                    "--listen",
                    "127.0.0.1:0",
                    "--plugin",
                    (char *)jt_example_plugin("basic"),
                    "--config",
                    (char *)conf_path,
                    "--keep-failed",
                    "30s",
                    NULL};
    if (!ts_start(&s, "t326.sock", 1, args, env))
        bail("the supervisor did not start");

    ok(wait_count("SELECT count(*) FROM pgcorral.jobs WHERE task = 'old'", 0, 15000),
       "completed jobs older than keep_completed (1h) are pruned");
    ok(pgt_proc_wait_log(&s.p, "\"outcomes\":\"completed\",\"jobs\":2500,\"batches\":3", 5000),
       "... 2500 of them, in 3 batches, as the log says");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE task = 'recent'"), 3,
           "completed jobs inside keep_completed stay");
    ok(wait_count("SELECT count(*) FROM pgcorral.jobs WHERE task = 'gone'", 0, 10000),
       "failed and cancelled jobs older than --keep-failed (30s) are pruned");
    long long dead = pgt_query_ll(db, "SELECT dead_tuple_count FROM pgstattuple('pgcorral.jobs')");
    long long live = pgt_query_ll(db, "SELECT tuple_count FROM pgstattuple('pgcorral.jobs')");
    diag("measured: after pruning 2502 rows, pgstattuple sees %lld dead and %lld live tuples "
         "(before any vacuum)",
         dead, live);
    ok(dead <= 2502, "pruning leaves at most one dead row per pruned job (%lld)", dead);

    /* A done job is kept as completed with its run time; its key is free again. */
    is_int(ts_req(s.port, "POST", "/api/v1/jobs", NULL,
                  "{\"task\":\"sleep\",\"payload\":{\"ms\":120},\"key\":\"nightly\"}", &r),
           201, "a keyed sleep job is enqueued");
    long long id = r.body && strchr(r.body, ':') ? strtoll(strchr(r.body, ':') + 1, NULL, 10) : 0;
    wt_resp_free(&r);
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND outcome = 'completed'", id);
    ok(wait_count(sql, 1, 10000), "once done, it is kept as completed");
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", id);
    is_int(ts_req(s.port, "GET", path, NULL, NULL, &r), 200, "GET /api/v1/jobs/ID: 200");
    json_t *doc = json_loads(r.body ? r.body : "", 0, NULL);
    ok(strcmp(json_string_value(json_object_get(doc, "state")), "completed") == 0 &&
           json_is_string(json_object_get(doc, "finished_at")),
       "... state completed, with finished_at");
    long long run_ms = json_integer_value(json_object_get(doc, "run_ms"));
    ok(run_ms >= 100 && run_ms < 5000, "... and its run time (%lld ms for a 120 ms sleep)", run_ms);
    json_decref(doc);
    wt_resp_free(&r);
    is_int(
        ts_req(s.port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"noop\",\"key\":\"nightly\"}", &r),
        201, "the completed job does not block its key: the same key adds a new job");
    wt_resp_free(&r);

    ok(ts_stop(&s), "the supervisor stops cleanly");
    pgt_proc_cleanup(&s.p);
    unlink(conf_path);
    PQfinish(db);
    return done_testing();
}
