/*
 * --wait-for-db: with the test cluster stopped, `run --wait-for-db 20` logs one line per
 * failed try (attempt number, reason, backoff 0.5 s, 1 s, 2 s, ...) and becomes ready once
 * the database is started again; with PGCORRAL_WAIT_FOR_DB=2 it gives up after about 2 s
 * with the preflight's error; without the setting it fails at once, as before. The password
 * in DATABASE_URL appears nowhere. The cluster is always started again, also on a bail-out
 * or the test's timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define PASSWORD "t411-sekret"

/* pg_ctl's command lines, built before the cluster is stopped; the alarm handler and the
 * exit handler use them, so nothing is allocated there. */
static char pgctl[600], datadir[600], logfile[600], opts[2048];
static char *start_argv[] = {"runuser", "-u", "postgres", "--", pgctl, "-D", datadir, "-l",
                             logfile,   "-w", "-t",       "60", "-o",  opts, "start", NULL};
static char *stop_argv[] = {"runuser", "-u",   "postgres", "--", pgctl, "-D",   datadir,
                            "-m",      "fast", "-w",       "-t", "60",  "stop", NULL};
static volatile sig_atomic_t db_stopped;

/* Runs argv (found on PATH), output discarded, and waits. Async-signal-safe, for the alarm
 * handler. Returns the exit status, or -1. */
static int run_quiet(char *const argv[])
{
    int status;
    pid_t pid = fork();

    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        alarm(0);
        execvp(argv[0], argv);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void db_start_again(void)
{
    if (db_stopped && run_quiet(start_argv) == 0)
        db_stopped = 0;
}

/* The test's timeout: start the cluster again before tap_on_alarm kills everything. */
static void on_alarm(int sig)
{
    db_start_again();
    tap_on_alarm(sig);
}

/*
 * The options the cluster runs with, from data/postmaster.opts ("/path/postgres" "-p"
 * "5432" ...), without -D, each single-quoted for the shell pg_ctl starts postgres with.
 */
static void read_postmaster_opts(void)
{
    char path[700];
    snprintf(path, sizeof path, "%s/postmaster.opts", datadir);
    char *text = ot_read_file(path), *p;
    size_t len = 0;
    bool skip_next = false;
    int token = 0;

    if (!text)
        bail("cannot read %s", path);
    for (p = strchr(text, '"'); p; p = strchr(p, '"'), token++) {
        char *end = strchr(p + 1, '"');
        if (!end)
            break;
        *end = '\0';
        if (token == 0 && p != text && p[-1] != ' ')
            bail("unexpected %s: %s", path, text);
        if (skip_next || strcmp(p + 1, "-D") == 0) {
            skip_next = !skip_next;
        } else {
            len += (size_t)snprintf(opts + len, sizeof opts - len, "%s'%s'", len ? " " : "", p + 1);
            if (len >= sizeof opts || strchr(p + 1, '\''))
                bail("postmaster options too long or quoted: %s", text);
        }
        p = end + 1;
    }
    free(text);
    if (len == 0)
        bail("no options in %s", path);
}

/* DATABASE_URL with PASSWORD in it: the server trusts local users, so it changes nothing
 * there, but it must never be shown. */
static void url_with_password(char *out, size_t size)
{
    const char *url = pgt_db_url(), *scheme = strstr(url, "://"), *at;
    if (!scheme || !(at = strchr(scheme + 3, '@')) || memchr(scheme + 3, ':', at - scheme - 3))
        bail("unexpected test URL %s", url);
    snprintf(out, size, "DATABASE_URL=%.*s:%s%s", (int)(at - url), url, PASSWORD, at);
}

/* The "database not reachable" lines of a log, parsed (caller decrefs). */
static json_t *tries(struct pgt_proc *p)
{
    pgt_proc_drain(p);
    return ot_log_lines(p->log, "database not reachable");
}

static bool three_tries(void *arg)
{
    json_t *t = tries(arg);
    bool yes = json_array_size(t) >= 3;
    json_decref(t);
    return yes;
}

static const char *b_control;
static bool b_ready(void *arg)
{
    pgt_proc_drain(arg);
    return ot_all_ready(b_control, 1, 1);
}

/* Whether the tries in t are numbered 1, 2, ... and each carries a reason. */
static bool numbered_with_reasons(json_t *t)
{
    json_t *line;
    size_t i;
    json_array_foreach(t, i, line)
    {
        const char *reason = json_string_value(json_object_get(line, "reason"));
        if (json_integer_value(json_object_get(line, "attempt")) != (json_int_t)i + 1 || !reason ||
            !strstr(reason, "cannot connect to the database"))
            return false;
    }
    return json_array_size(t) > 0;
}

int main(void)
{
    const char *pgdir = getenv("PGC_TEST_PGDIR"), *pgbin = getenv("PGC_TEST_PGBIN");
    char env_url[1200], *control_a, *control_c;
    struct pgt_proc a, b, c;
    long long t0, a_ms, c_ms;
    json_t *t;

    tap_timeout(120);
    signal(SIGALRM, on_alarm);
    if (!pgdir || !pgbin)
        bail("PGC_TEST_PGDIR / PGC_TEST_PGBIN not set: run through scripts/with-test-pg.sh");
    snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", pgbin);
    snprintf(datadir, sizeof datadir, "%s/data", pgdir);
    snprintf(logfile, sizeof logfile, "%s/postgres.log", pgdir);
    read_postmaster_opts();
    url_with_password(env_url, sizeof env_url);
    control_a = strdup(pgt_tmp_path("wait-a.sock"));
    b_control = strdup(pgt_tmp_path("wait-b.sock"));
    control_c = strdup(pgt_tmp_path("wait-c.sock"));
    plan(15);

    PGconn *db = pgt_connect();
    long long max_conn = pgt_query_ll(db, "SELECT current_setting('max_connections')::int");
    PQfinish(db);

    atexit(db_start_again);
    db_stopped = 1;
    is_int(run_quiet(stop_argv), 0, "the test cluster is stopped (pg_ctl stop)");

    /* Without the setting: one try, the error at once, as before. */
    char *argv_c[] = {(char *)pgt_binary(), "run",         "--web",     "1",       "--jobs", "0",
                      "--listen",           "127.0.0.1:0", "--control", control_c, NULL};
    char *env_c[] = {env_url, NULL};
    t0 = pgt_now_ms();
    pgt_spawn(&c, argv_c, env_c);
    ok(pgt_proc_wait_exit(&c, 10000) && WIFEXITED(c.status) && WEXITSTATUS(c.status) == 1,
       "without --wait-for-db the supervisor exits 1");
    c_ms = pgt_now_ms() - t0;
    t = tries(&c);
    ok(c_ms < 1500 && json_array_size(t) == 0 &&
           strstr(c.log, "pgcorral: preflight: cannot connect to the database"),
       "at once (%lld ms), with no retry lines and the preflight error", c_ms);
    json_decref(t);

    /* PGCORRAL_WAIT_FOR_DB=2: tries for 2 s, then the same error. */
    char *argv_a[] = {(char *)pgt_binary(), "run",         "--web",     "1",       "--jobs", "0",
                      "--listen",           "127.0.0.1:0", "--control", control_a, NULL};
    char *env_a[] = {env_url, "PGCORRAL_WAIT_FOR_DB=2", NULL};
    /* --wait-for-db 20, the flag, and the database comes back meanwhile. */
    char *argv_b[] = {(char *)pgt_binary(),
                      "run",
                      "--web",
                      "1",
                      "--jobs",
                      "1",
                      "--listen",
                      "127.0.0.1:0",
                      "--control",
                      (char *)b_control,
                      "--wait-for-db",
                      "20",
                      NULL};
    char *env_b[] = {env_url, NULL};
    t0 = pgt_now_ms();
    pgt_spawn(&a, argv_a, env_a);
    pgt_spawn(&b, argv_b, env_b);

    ok(pgt_proc_wait_exit(&a, 15000) && WIFEXITED(a.status) && WEXITSTATUS(a.status) == 1,
       "with PGCORRAL_WAIT_FOR_DB=2 the supervisor exits 1 while the database stays down");
    a_ms = pgt_now_ms() - t0;
    ok(a_ms >= 1900 && a_ms < 6000, "after about 2 s (%lld ms)", a_ms);
    ok(strstr(a.log, "pgcorral: preflight: cannot connect to the database") &&
           strstr(a.log, "--wait-for-db 2"),
       "with the preflight's error and how long it waited");
    t = tries(&a);
    ok(json_array_size(t) >= 3 && numbered_with_reasons(t) &&
           json_is_true(json_object_get(json_array_get(t, json_array_size(t) - 1), "giving_up")),
       "one log line per try, numbered, with the reason; the last one gives up (%zu tries)",
       json_array_size(t));
    json_decref(t);

    ok(pgt_wait_until(three_tries, &b, 15000), "--wait-for-db 20 keeps trying (3 tries logged)");
    t = tries(&b);
    double r1 = json_real_value(json_object_get(json_array_get(t, 0), "retry_in_s"));
    double r2 = json_real_value(json_object_get(json_array_get(t, 1), "retry_in_s"));
    double r3 = json_real_value(json_object_get(json_array_get(t, 2), "retry_in_s"));
    ok(numbered_with_reasons(t) && r1 == 0.5 && r2 == 1.0 && r3 == 2.0,
       "numbered, with reasons, backing off 0.5 s, 1 s, 2 s (%.1f, %.1f, %.1f)", r1, r2, r3);
    json_decref(t);

    is_int(run_quiet(start_argv), 0, "the cluster is started again (pg_ctl start)");
    db_stopped = 0;
    db = pgt_connect();
    is_int(pgt_query_ll(db, "SELECT current_setting('max_connections')::int"), max_conn,
           "with the options it had (max_connections %lld)", max_conn);
    PQfinish(db);
    bool ready = pgt_wait_until(b_ready, &b, 30000);
    if (!ok(ready, "the waiting supervisor then comes up: every worker ready"))
        diag("log:\n%s", b.log);
    t = ot_log_lines(b.log, "database reachable");
    ok(json_integer_value(json_object_get(json_array_get(t, 0), "attempt")) >= 4,
       "and logs the try that reached the database (try %lld)",
       (long long)json_integer_value(json_object_get(json_array_get(t, 0), "attempt")));
    json_decref(t);
    ok(!strstr(a.log, PASSWORD) && !strstr(b.log, PASSWORD) && !strstr(c.log, PASSWORD) &&
           strstr(b.log, ":***@"),
       "the password appears in no log line or error (the URL shows ***)");

    kill(b.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&b, 30000) && WIFEXITED(b.status) && WEXITSTATUS(b.status) == 0,
       "the supervisor exits 0 on SIGTERM");
    pgt_proc_cleanup(&a);
    pgt_proc_cleanup(&b);
    pgt_proc_cleanup(&c);
    free(control_a);
    free((char *)b_control);
    free(control_c);
    return done_testing();
}
