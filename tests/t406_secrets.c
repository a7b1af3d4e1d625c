/*
 * Secrets never reach what users see: with passwords in DATABASE_URL and in the replica
 * URL (one that refuses connections, so that errors about it are logged), neither
 * password appears in the log file, any control-socket answer, `pgcorral ctl` (tables
 * and --json), `ctl db`, `check`, `enqueue`, the HTTP routes (/metrics, health, stats),
 * the process titles, or the errors of a start-up that fails. Each output is also checked
 * for the data it should hold (the URL with `***`), so that none passes by being empty.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define DB "pgct406"
#define PW1 "S3cr3t-Pa55-xyz"  /* the primary's password (trust auth: the server ignores it) */
#define PW2 "R3pl1ca-Pa55-qrs" /* the replica's */

static const char *control;

/* Whether text holds no part of either password that could identify it. */
static bool clean(const char *text)
{
    static const char *const needles[] = {PW1, PW2, "S3cr3t", "Pa55-xyz", "R3pl1ca", "Pa55-qrs"};
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        if (strstr(text, needles[i]))
            return false;
    return true;
}

/* One collected output: non-empty, holding must (when not NULL), and clean. */
static void check(const char *what, const char *text, const char *must)
{
    bool has = text && *text && (!must || strstr(text, must));
    bool ok_ = has && clean(text);
    ok(ok_, "%s: no password%s%s%s", what, must ? " (and it shows '" : "", must ? must : "",
       must ? "')" : "");
    if (!ok_)
        diag("%s: %.3000s", what, text ? text : "(nothing)");
}

/* Like check, for a parsed control answer. */
static void check_json(const char *what, json_t *doc, const char *must)
{
    char *t = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    bool no_error = doc && !json_object_get(doc, "error");
    check(what, no_error ? t : NULL, must);
    free(t);
}

/* The NUL-separated command line of pid as one string with spaces. */
static char *cmdline(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "r");
    char *buf = calloc(1, 8192);
    size_t n = f ? fread(buf, 1, 8191, f) : 0;
    if (f)
        fclose(f);
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    return buf;
}

/* Runs pgcorral with args and env; returns stdout and stderr together with the exit code
 * in front ("exit N\n..."), caller frees. */
static char *run_pgcorral(char *const args[], char *const env[], int *code)
{
    char *argv[32] = {(char *)pgt_binary()};
    int n = 1;
    struct ot_output o;
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    *code = ot_run(argv, env, 20000, &o);
    size_t len = strlen(o.out) + strlen(o.err) + 32;
    char *all = malloc(len);
    snprintf(all, len, "%s%s", o.out, o.err);
    ot_output_free(&o);
    return all;
}

static bool ready(void *arg)
{
    return ot_all_ready(control, 1, 1);
}

struct log_wait {
    const char *path, *needle;
};

static bool log_has(void *arg)
{
    struct log_wait *lw = arg;
    char *text = ot_read_file(lw->path);
    bool yes = text && strstr(text, lw->needle);
    free(text);
    return yes;
}

/* The test URL with user:password and the given database and extra query. */
static void url_with_password(char *out, size_t size, const char *base, const char *pw,
                              const char *extra)
{
    const char *at = strchr(base, '@'), *q = strchr(base, '?');
    if (!at || !q)
        bail("unexpected test URL %s", base);
    snprintf(out, size, "%.*s:%s%s&%s", (int)(at - base), base, pw, at, extra);
}

int main(void)
{
    char url[1200], env_url[1300], replica[256], env_replica[300], must[300], plugin_basic[1024],
        plugin_products[1024], logfile[128];
    struct pgt_proc sup;
    int code;
    char *out;

    tap_timeout(120);
    control = pgt_tmp_path("t406.sock");
    snprintf(logfile, sizeof logfile, "%s", pgt_tmp_path("t406.log"));
    unlink(logfile);
    const char *base = jt_create_db(DB);
    int closed = pgt_closed_port();
    url_with_password(url, sizeof url, base, PW1, "connection_limit=2");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    snprintf(replica, sizeof replica,
             "postgresql://postgres:" PW2 "@127.0.0.1:%d/" DB "?connect_timeout=2", closed);
    snprintf(env_replica, sizeof env_replica, "DATABASE_REPLICA_URL=%s", replica);
    snprintf(plugin_basic, sizeof plugin_basic, "%s", jt_example_plugin("basic"));
    snprintf(plugin_products, sizeof plugin_products, "%s", jt_example_plugin("products"));
    plan(60);

    /* ---- errors of a start-up that fails ---- */
    {
        char env1[5][1300], must1[5][300];
        const char *hostq = strchr(base, '?') + 1;
        const char *what[5] = {"the preflight's connection error", "a malformed setting",
                               "an unterminated IPv6 host (libpq quotes the URI)",
                               "a broken percent-encoding in ?password= (libpq quotes it)",
                               "a malformed replica URL"};
        /* The server refuses: the preflight names the database, redacted. */
        snprintf(env1[0], sizeof env1[0],
                 "DATABASE_URL=postgresql://postgres:" PW1 "@127.0.0.1:%d/" DB "?connect_timeout=2",
                 closed);
        snprintf(must1[0], sizeof must1[0], "postgresql://postgres:***@127.0.0.1:%d/" DB, closed);
        snprintf(env1[1], sizeof env1[1],
                 "DATABASE_URL=postgresql://postgres:" PW1 "@/" DB "?%s&connection_limit=lots",
                 hostq);
        snprintf(must1[1], sizeof must1[1], "connection_limit");
        snprintf(env1[2], sizeof env1[2], "DATABASE_URL=postgresql://postgres:" PW1 "@[::1/" DB);
        snprintf(must1[2], sizeof must1[2], "postgresql://postgres:***@[::1/" DB);
        snprintf(env1[3], sizeof env1[3],
                 "DATABASE_URL=postgresql://postgres@/" DB "?%s&password=" PW1 "%%zz", hostq);
        snprintf(must1[3], sizeof must1[3], "percent-encoded");
        snprintf(env1[4], sizeof env1[4],
                 "DATABASE_REPLICA_URL=postgresql://postgres:" PW2 "@127.0.0.1:%d/" DB
                 "?pool_timeout=-5",
                 closed);
        snprintf(must1[4], sizeof must1[4], "DATABASE_REPLICA_URL");
        char *args[] = {"run", "--control", (char *)control, "--listen", "127.0.0.1:0", NULL};
        for (int i = 0; i < 5; i++) {
            /* The replica case needs a good primary next to it. */
            char *env[3] = {env1[i], i == 4 ? env_url : NULL, NULL};
            out = run_pgcorral(args, env, &code);
            ok(code != 0, "start-up fails on %s (exit %d)", what[i], code);
            check(what[i], out, must1[i]);
            free(out);
        }
    }

    /* ---- a running supervisor ---- */
    /* DATABASE_URL through the environment (as the docs advise); the replica through a
     * flag, so that the workers' titles must overwrite a secret on their command line. */
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "1",
                    "--jobs",
                    "1",
                    "--control",
                    (char *)control,
                    "--listen",
                    "127.0.0.1:0",
                    "--plugin",
                    plugin_basic,
                    "--plugin",
                    plugin_products,
                    "--slow-query-threshold",
                    "0",
                    "--stats-interval",
                    "1",
                    "--log-file",
                    logfile,
                    "--database-replica-url",
                    replica,
                    NULL};
    pgt_spawn(&sup, argv, (char *[]){env_url, NULL});
    if (!pgt_wait_until(ready, NULL, 20000)) {
        pgt_proc_drain(&sup);
        char *log = ot_read_file(logfile);
        bail("supervisor did not come up:\n%s\n%s", sup.log, log ? log : "");
    }
    int port = (int)ot_config_int(control, "listen_port");
    char *resp = NULL;

    /* Work that touches both URLs: a read-only route (replica refused: fallback and a
     * logged error), the health check, a job. */
    int st = ot_http_get(port, "/api/v1/products", &resp);
    ok(st == 200,
       "GET /api/v1/products answers %d (read from the primary after the replica "
       "refused)",
       st);
    check("GET /api/v1/products", resp, "Widget");
    free(resp);
    out = run_pgcorral((char *[]){"enqueue", "noop", "{}", NULL}, (char *[]){env_url, NULL}, &code);
    ok(code == 0, "pgcorral enqueue exits 0");
    check("pgcorral enqueue", out, NULL);
    free(out);

    struct log_wait lw = {logfile, "Read replica unreachable"};
    ok(pgt_wait_until(log_has, &lw, 10000), "the log has the replica's connection error");
    lw = (struct log_wait){logfile, "\"msg\":\"stats\""};
    ok(pgt_wait_until(log_has, &lw, 10000), "the log has a stats line");

    /* HTTP. */
    st = ot_http_get(port, "/metrics", &resp);
    ok(st == 200, "GET /metrics answers %d", st);
    check("GET /metrics", resp, "pgcorral_");
    free(resp);
    st = ot_http_get(port, "/api/v1/health", &resp);
    ok(st == 200, "GET /api/v1/health answers %d", st);
    check("GET /api/v1/health", resp, "200");
    free(resp);
    st = ot_http_get(port, "/api/v1/stats", &resp);
    check("GET /api/v1/stats", resp, "http_requests");
    free(resp);

    /* Every control command, raw. */
    snprintf(must, sizeof must, "postgresql://postgres:***@127.0.0.1:%d/" DB, closed);
    json_t *doc = pgt_ctl(control, "config");
    const char *dbu =
        json_string_value(json_object_get(json_object_get(doc, "config"), "database_url"));
    ok(dbu && strstr(dbu, "postgresql://postgres:***@") && strstr(dbu, DB),
       "config shows database_url redacted: %s", dbu ? dbu : "(none)");
    check_json("control: config", doc, must);
    json_decref(doc);
    static const char *const commands[][2] = {
        {"help", "\"config\""},  {"workers", "\"ready\""},      {"budget", "\"slots\""},
        {"stats", "\"totals\""}, {"pools", "\"total\""},        {"slow 64", "SELECT"},
        {"jobs", "\"done\""},    {"scale web 1", "\"scaled\""},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "control: %s", commands[i][0]);
        doc = pgt_ctl(control, commands[i][0]);
        check_json(what, doc, commands[i][1]);
        json_decref(doc);
    }

    /* pgcorral ctl: tables for people and --json. */
    static const char *const ctl_cmds[][2] = {
        {"workers", "ready"}, {"budget", "slots"}, {"stats", "totals"}, {"pools", "total"},
        {"slow", "SELECT"},   {"jobs", "done"},    {"config", "***@"},  {"help", "config"},
    };
    for (size_t i = 0; i < sizeof ctl_cmds / sizeof ctl_cmds[0]; i++) {
        char what[64];
        for (int json = 0; json < 2; json++) {
            char *args[] = {"ctl",
                            "--control",
                            (char *)control,
                            json ? "--json" : (char *)ctl_cmds[i][0],
                            json ? (char *)ctl_cmds[i][0] : NULL,
                            NULL};
            snprintf(what, sizeof what, "pgcorral ctl %s%s", json ? "--json " : "", ctl_cmds[i][0]);
            out = run_pgcorral(args, NULL, &code);
            check(what, code == 0 ? out : NULL, ctl_cmds[i][1]);
            free(out);
        }
    }
    /* ctl db, check and ctl top read DATABASE_URL (or the socket) themselves. */
    out = run_pgcorral((char *[]){"ctl", "db", NULL}, (char *[]){env_url, NULL}, &code);
    check("pgcorral ctl db", code == 0 ? out : NULL, "pgcorral");
    free(out);
    out = run_pgcorral((char *[]){"ctl", "--json", "db", NULL}, (char *[]){env_url, NULL}, &code);
    check("pgcorral ctl --json db", code == 0 ? out : NULL, DB);
    free(out);
    out = run_pgcorral((char *[]){"check", "--web", "1", "--jobs", "1", NULL},
                       (char *[]){env_url, env_replica, NULL}, &code);
    check("pgcorral check (replica refused)", out, must);
    free(out);
    out = run_pgcorral((char *[]){"ctl", "--control", (char *)control, "top", "--count", "1", NULL},
                       NULL, &code);
    check("pgcorral ctl top", code == 0 ? out : NULL, "BUDGET");
    free(out);

    /* Process titles: what ps shows anyone on the machine. */
    char *title = cmdline(sup.pid);
    ok(strstr(title, "pgcorral") && strstr(title, " run ") && !strstr(title, PW1),
       "the supervisor's command line has no DATABASE_URL password (it came from the "
       "environment)");
    free(title);
    struct ot_worker w[8];
    int nw = ot_workers(control, w, 8);
    bool titles_ok = nw == 2;
    for (int i = 0; i < nw; i++) {
        char want[64];
        title = cmdline(w[i].pid);
        snprintf(want, sizeof want, "pgcorral: %s %d", w[i].role, w[i].index);
        titles_ok = titles_ok && strstr(title, want) && clean(title);
        if (!titles_ok)
            diag("worker %d: '%s'", (int)w[i].pid, title);
        free(title);
    }
    ok(titles_ok, "the workers' command lines are their titles ('pgcorral: web 0'), with "
                  "neither password (not the replica's from the supervisor's flags either)");

    /* A reload parses both URLs again (and logs about it). */
    doc = pgt_ctl(control, "reload");
    check_json("control: reload", doc, "\"epoch\"");
    json_decref(doc);
    lw = (struct log_wait){logfile, "rolling restart complete"};
    ok(pgt_wait_until(log_has, &lw, 15000), "the reload completes");

    doc = pgt_ctl(control, "shutdown");
    check_json("control: shutdown", doc, "graceful");
    json_decref(doc);
    ok(pgt_proc_wait_exit(&sup, 20000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "the supervisor exits 0");
    pgt_proc_drain(&sup);
    ok(clean(sup.log ? sup.log : ""), "the supervisor's stdout and stderr: no password");

    /* The whole log: the URLs in it are redacted, the replica's error is there. */
    char *log = ot_read_file(logfile);
    check("the log file", log, must);
    ok(log && strstr(log, "\"msg\":\"pgcorral starting\"") && strstr(log, ":***@") &&
           strstr(log, "\"msg\":\"Slow query detected\"") && strstr(log, "\"msg\":\"stats\""),
       "the log holds the start line with the redacted URL, slow queries and stats lines");
    free(log);
    pgt_proc_cleanup(&sup);
    unlink(logfile);
    return done_testing();
}
