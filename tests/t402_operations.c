/*
 * Operating a running supervisor: `scale` and TTIN/TTOU inside the budget, a rolling
 * restart (HUP and `reload`) in which every worker is replaced and the new one is ready
 * before the old one goes, a hung (SIGSTOPped) worker replaced after --worker-timeout,
 * `config` without secrets, SIGUSR1 log reopening, and `shutdown` over the socket.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define SECRET "t0pSecretPw"

static const char *control;

/* Counts workers of role (NULL = any) in state (NULL = any). */
static int count_workers(const char *role, const char *state)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    int n = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        const char *r = json_string_value(json_object_get(w, "role"));
        const char *st = json_string_value(json_object_get(w, "state"));
        n += (!role || strcmp(r, role) == 0) && (!state || strcmp(st, state) == 0);
    }
    json_decref(doc);
    return n;
}

struct want {
    const char *role;
    int ready;
    int total;
};

static bool workers_are(void *arg)
{
    struct want *w = arg;
    return count_workers(w->role, "ready") == w->ready && count_workers(w->role, NULL) == w->total;
}

/* The pids of all workers, sorted into a string like "12,15,19". */
static void pid_list(char *buf, size_t size)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i, len = 1;
    snprintf(buf, size, ",");
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        len += (size_t)snprintf(buf + len, size - len, "%lld,",
                                (long long)json_integer_value(json_object_get(w, "pid")));
    }
    json_decref(doc);
}

static pid_t job0_pid;

static bool job0_replaced(void *arg)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    bool done = false;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "role")), "job") == 0 &&
            json_integer_value(json_object_get(w, "index")) == 0)
            done = json_integer_value(json_object_get(w, "pid")) != job0_pid &&
                   strcmp(json_string_value(json_object_get(w, "state")), "ready") == 0;
    }
    json_decref(doc);
    return done;
}

static pid_t worker_pid(const char *role, int index)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    pid_t pid = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "role")), role) == 0 &&
            json_integer_value(json_object_get(w, "index")) == index)
            pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
    }
    json_decref(doc);
    return pid;
}

int main(void)
{
    char env_url[2048], logfile[128], rotated[160];
    struct pgt_proc sup;
    json_t *doc;
    char before[512], after[512];

    tap_timeout(180);
    control = pgt_tmp_path("ops.sock");
    snprintf(logfile, sizeof logfile, "%s", pgt_tmp_path("ops.log"));
    snprintf(rotated, sizeof rotated, "%s.1", logfile);
    unlink(logfile);
    unlink(rotated);

    /* A URL with a password (trust auth ignores it) so that redaction can be checked. */
    const char *db = pgt_db_url();
    const char *at = strstr(db, "@");
    const char *scheme_end = strstr(db, "://");
    if (!at || !scheme_end)
        bail("unexpected test URL %s", db);
    /* scheme://user:SECRET@ + the rest of the URL, with connection_limit=2. */
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%.*s:%s%.*s?connection_limit=2&%s",
             (int)(at - db), db, SECRET, (int)(strchr(db, '?') - at), at, strchr(db, '?') + 1);

    plan(18);
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
                    "--max-db-connections",
                    "9",
                    "--worker-timeout",
                    "2",
                    "--log-file",
                    logfile,
                    "--shutdown-timeout",
                    "10",
                    NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(&sup, argv, env);
    struct want w = {NULL, 2, 2};
    if (!pgt_wait_until(workers_are, &w, 15000)) {
        pgt_proc_drain(&sup);
        bail("supervisor did not come up:\n%s", sup.log);
    }

    /* config: everything, the password nowhere. */
    doc = pgt_ctl(control, "config");
    char *text = json_dumps(doc, JSON_COMPACT);
    ok(text && strstr(text, "\"connection_limit\":2") && strstr(text, ":***@") &&
           !strstr(text, SECRET),
       "config shows the settings with the password redacted");
    if (text && strstr(text, SECRET))
        diag("%s", text);
    free(text);
    json_decref(doc);

    /* Budget 9 with limit 2 holds (workers x 2) + 1 <= 9: up to 4 workers. */
    doc = pgt_ctl(control, "scale jobs 3");
    ok(json_object_get(doc, "scaled") != NULL, "scale jobs 3 is accepted");
    json_decref(doc);
    w = (struct want){"job", 3, 3};
    ok(pgt_wait_until(workers_are, &w, 10000), "three job workers are ready");

    doc = pgt_ctl(control, "scale jobs 9");
    const char *err = json_string_value(json_object_get(doc, "error"));
    ok(err && strstr(err, "(10 x 2) + 1 = 21 exceeds the budget of 9"),
       "scale beyond the budget is refused with the numbers (%s)", err ? err : "no error");
    json_decref(doc);
    doc = pgt_ctl(control, "scale pigs 2");
    ok(json_object_get(doc, "error") != NULL, "scale with an unknown role is an error");
    json_decref(doc);

    kill(sup.pid, SIGTTOU);
    w = (struct want){"job", 2, 2};
    ok(pgt_wait_until(workers_are, &w, 10000), "SIGTTOU: one job worker fewer, drained away");
    kill(sup.pid, SIGTTIN);
    w = (struct want){"job", 3, 3};
    ok(pgt_wait_until(workers_are, &w, 10000), "SIGTTIN: one job worker more");
    doc = pgt_ctl(control, "scale jobs 1");
    json_decref(doc);
    w = (struct want){"job", 1, 1};
    ok(pgt_wait_until(workers_are, &w, 10000), "scale jobs 1 drains the surplus");

    /* Rolling restart by HUP: every pid changes, the count never drops below 2 ready. */
    pid_list(before, sizeof before);
    kill(sup.pid, SIGHUP);
    /* Sampled throughout: each role keeps a ready worker; done when no old pid is left. */
    long long deadline = pgt_now_ms() + 20000;
    int min_web = 99, min_job = 99;
    bool replaced = false;
    while (pgt_now_ms() < deadline && !replaced) {
        int web = count_workers("web", "ready"), job = count_workers("job", "ready");
        min_web = web < min_web ? web : min_web;
        min_job = job < min_job ? job : min_job;
        pid_list(after, sizeof after);
        replaced = count_workers(NULL, NULL) == 2 && count_workers(NULL, "ready") == 2;
        char *tok, copy[512];
        snprintf(copy, sizeof copy, "%s", before);
        for (tok = strtok(copy, ","); replaced && tok; tok = strtok(NULL, ",")) {
            char needle[32];
            snprintf(needle, sizeof needle, ",%s,", tok);
            if (strstr(after, needle))
                replaced = false;
        }
        if (!replaced)
            usleep(10000);
    }
    ok(replaced, "SIGHUP replaces every worker (%s -> %s)", before, after);
    ok(min_web >= 1 && min_job >= 1,
       "a ready worker of each role was there throughout the reload (min web %d, job %d)", min_web,
       min_job);

    doc = pgt_ctl(control, "reload");
    ok(json_object_get(doc, "reload") != NULL, "reload over the socket starts another one");
    json_decref(doc);
    w = (struct want){NULL, 2, 2};
    pgt_wait_until(workers_are, &w, 20000);

    /* A hung worker: SIGSTOP stops its heartbeat; after --worker-timeout 2 it is replaced. */
    pgt_wait_until(workers_are, &w, 20000);
    job0_pid = worker_pid("job", 0);
    kill(job0_pid, SIGSTOP);
    long long t0 = pgt_now_ms();
    ok(pgt_wait_until(job0_replaced, NULL, 15000), "a SIGSTOPped worker is replaced");
    diag("replaced after %lld ms", pgt_now_ms() - t0);
    ok(!pgt_pid_alive(job0_pid), "the hung process is gone");

    /* Log rotation: rename, SIGUSR1, new lines go to a new file. */
    ok(rename(logfile, rotated) == 0, "rotate the log file");
    kill(sup.pid, SIGUSR1);
    struct stat st;
    long long until = pgt_now_ms() + 5000;
    while (stat(logfile, &st) != 0 && pgt_now_ms() < until)
        usleep(20000);
    ok(stat(logfile, &st) == 0, "SIGUSR1 reopens the log file at its path");

    doc = pgt_ctl(control, "shutdown");
    ok(json_object_get(doc, "shutdown") != NULL, "shutdown over the socket is accepted");
    json_decref(doc);
    ok(pgt_proc_wait_exit(&sup, 20000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "and the supervisor exits 0");

    /* Nothing secret in any log line. */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cat %s %s 2>/dev/null | grep -c %s", logfile, rotated, SECRET);
    FILE *f = popen(cmd, "r");
    int hits = -1;
    if (f) {
        if (fscanf(f, "%d", &hits) != 1)
            hits = -1;
        pclose(f);
    }
    is_int(hits, 0, "the password appears in no log line");
    pgt_proc_cleanup(&sup);
    unlink(logfile);
    unlink(rotated);
    return done_testing();
}
