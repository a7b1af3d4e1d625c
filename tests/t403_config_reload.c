/*
 * The --config file: 'name = value' lines that start-up reads and `reload` reads again.
 * A changed worker count and threshold take effect on reload; a broken file is refused
 * with its file and line, and the running configuration stays.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

static const char *control;

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        bail("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static long long config_int(const char *key)
{
    json_t *doc = pgt_ctl(control, "config");
    long long v = json_integer_value(json_object_get(json_object_get(doc, "config"), key));
    json_decref(doc);
    return v;
}

struct want {
    int web, jobs;
};

static bool counts_are(void *arg)
{
    struct want *w = arg;
    json_t *doc = pgt_ctl(control, "workers"), *x;
    size_t i;
    int web = 0, jobs = 0;
    /* Every row ready: a rolling restart still under way (a new worker starting, an old
     * one draining) would let the next steps see its extra worker. */
    json_array_foreach(json_object_get(doc, "workers"), i, x)
    {
        if (strcmp(json_string_value(json_object_get(x, "state")), "ready") != 0) {
            json_decref(doc);
            return false;
        }
        if (strcmp(json_string_value(json_object_get(x, "role")), "web") == 0)
            web++;
        else
            jobs++;
    }
    json_decref(doc);
    return web == w->web && jobs == w->jobs;
}

int main(void)
{
    char conf[128], text[2048], env_url[1024];
    struct pgt_proc sup, bad;
    json_t *doc;

    tap_timeout(90);
    control = pgt_tmp_path("conf.sock");
    snprintf(conf, sizeof conf, "%s", pgt_tmp_path("pgcorral.conf"));
    plan(10);

    /* An unknown setting in the file stops start-up with file and line. */
    write_file(conf, "# comment\nweb = 1\nwrokers = 3\n");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    /* B is fixed at start-up: leave room for the third worker the reload adds. */
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--config",
                    conf,
                    "--control",
                    (char *)control,
                    "--listen",
                    "127.0.0.1:0",
                    "--max-db-connections",
                    "40",
                    NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(&bad, argv, env);
    ok(pgt_proc_wait_exit(&bad, 10000) && WEXITSTATUS(bad.status) != 0 &&
           strstr(bad.log, ":3: unknown setting 'wrokers'"),
       "an unknown setting in the config file is refused with its line");
    pgt_proc_cleanup(&bad);

    /* The database URL may come from the file too (here: the environment has none). */
    snprintf(text, sizeof text,
             "web = 1\njobs = 1\nslow_query_threshold = 500\ndatabase_url = %s\n", pgt_db_url());
    write_file(conf, text);
    pgt_spawn(&sup, argv, NULL);
    struct want w = {1, 1};
    if (!ok(pgt_wait_until(counts_are, &w, 15000),
            "the supervisor starts from the config file alone (database_url in the file)")) {
        pgt_proc_drain(&sup);
        bail("supervisor did not come up:\n%s", sup.log);
    }
    is_int(config_int("slow_query_threshold_ms"), 500, "config shows the file's threshold");

    snprintf(text, sizeof text,
             "web = 1\njobs = 2\nslow_query_threshold = 250\ndatabase_url = %s\n", pgt_db_url());
    write_file(conf, text);
    doc = pgt_ctl(control, "reload");
    ok(json_object_get(doc, "reload") != NULL, "reload reads the file again");
    json_decref(doc);
    w = (struct want){1, 2};
    ok(pgt_wait_until(counts_are, &w, 15000), "jobs = 2 from the file is applied");
    is_int(config_int("slow_query_threshold_ms"), 250, "and the new threshold");

    write_file(conf, "web = 1\njobs = lots\n");
    doc = pgt_ctl(control, "reload");
    const char *err = json_string_value(json_object_get(doc, "error"));
    ok(err && strstr(err, ":2: jobs must be an integer"), "a broken file is refused: %s",
       err ? err : "(no error)");
    json_decref(doc);
    is_int(config_int("jobs"), 2, "and the running configuration stays");

    /* The job wake-up connection reconnects with its own copy of the URL: the reload freed
     * the configuration it was started from (read after free before, seen by ASan). */
    PGconn *c = pgt_connect();
    PQclear(PQexec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                      " AND query LIKE '%pgcorral%'"));
    PQfinish(c);
    bool relistened = false;
    for (long long end = pgt_now_ms() + 15000; !relistened && pgt_now_ms() < end;) {
        pgt_proc_wait_log(&sup, "job wake-up connection lost", 500);
        pgt_proc_wait_log(&sup, "\"budget_slot\"", 500);
        relistened = sup.log && ot_count(sup.log, "job wake-ups: listening") >= 2;
    }
    ok(relistened, "after the reload, the job wake-up connection reconnects when its backend "
                   "is terminated");

    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 20000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "supervisor exits 0");
    pgt_proc_cleanup(&sup);
    unlink(conf);
    return done_testing();
}
