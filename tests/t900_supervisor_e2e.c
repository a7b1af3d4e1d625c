/*
 * End to end: the real pgcorral binary against the throwaway PostgreSQL with --web 2
 * --jobs 2. Four workers come up; a SIGKILLed worker comes back with a new pid; SIGTERM
 * stops everything with exit 0 and no child left; a killed supervisor takes its workers
 * with it.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/pgtest.h"
#include "tests/tap.h"

/* What the tests wait for, read from the control socket's `workers` answer. */
struct expect {
    const char *control;
    int ready;     /* workers in state ready */
    pid_t old_pid; /* web 0's pid before the kill */
    pid_t new_pid; /* web 0's pid after */
    int restarts;  /* web 0's restarts after */
};

static json_t *find_worker(json_t *doc, const char *role, int index)
{
    json_t *w;
    size_t i;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "role")), role) == 0 &&
            json_integer_value(json_object_get(w, "index")) == index)
            return w;
    }
    return NULL;
}

static bool all_ready(void *arg)
{
    struct expect *e = arg;
    json_t *doc = pgt_ctl(e->control, "workers"), *w;
    size_t i;
    e->ready = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        e->ready += strcmp(json_string_value(json_object_get(w, "state")), "ready") == 0;
    }
    json_decref(doc);
    return e->ready == 4;
}

static bool web0_replaced(void *arg)
{
    struct expect *e = arg;
    json_t *doc = pgt_ctl(e->control, "workers");
    json_t *w = find_worker(doc, "web", 0);
    bool done = false;
    if (w) {
        e->new_pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
        e->restarts = (int)json_integer_value(json_object_get(w, "restarts"));
        done = e->new_pid > 0 && e->new_pid != e->old_pid &&
               strcmp(json_string_value(json_object_get(w, "state")), "ready") == 0;
    }
    json_decref(doc);
    return done;
}

struct pid_set {
    pid_t *pids;
    int n;
};

static bool none_alive(void *arg)
{
    struct pid_set *set = arg;
    for (int k = 0; k < set->n; k++)
        if (pgt_pid_alive(set->pids[k]))
            return false;
    return true;
}

static void comm_of(pid_t pid, char *buf, size_t size)
{
    char path[64];
    FILE *f;
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    buf[0] = '\0';
    f = fopen(path, "r");
    if (f) {
        if (fgets(buf, (int)size, f))
            buf[strcspn(buf, "\n")] = '\0';
        fclose(f);
    }
}

/* Starts a supervisor with 2 web and 2 job workers; waits for all four to be ready. */
static void start(struct pgt_proc *sup, struct expect *e, const char *control)
{
    char url[1024];
    snprintf(url, sizeof url, "DATABASE_URL=%s", pgt_db_url());
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "2",
                    "--jobs",
                    "2",
                    "--control",
                    (char *)control,
                    "--listen",
                    "127.0.0.1:0",
                    "--shutdown-timeout",
                    "10",
                    NULL};
    char *env[] = {url, NULL};
    memset(e, 0, sizeof *e);
    e->control = control;
    pgt_spawn(sup, argv, env);
    if (!pgt_wait_until(all_ready, e, 15000)) {
        pgt_proc_drain(sup);
        diag("supervisor output:\n%s", sup->log);
    }
}

int main(void)
{
    struct pgt_proc sup;
    struct expect e;
    const char *control = pgt_tmp_path("e2e.sock");
    pid_t pids[4];
    int npids = 0;
    char comm[64];
    struct stat st;

    tap_timeout(120);
    pgt_db_url();
    plan(17);

    start(&sup, &e, control);
    is_int(e.ready, 4, "--web 2 --jobs 2: `workers` shows 4 ready workers");

    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (npids < 4)
            pids[npids++] = (pid_t)json_integer_value(json_object_get(w, "pid"));
    }
    json_t *web0 = find_worker(doc, "web", 0);
    json_t *job1 = find_worker(doc, "job", 1);
    ok(web0 && job1, "the workers are web 0, web 1, job 0, job 1");
    e.old_pid = web0 ? (pid_t)json_integer_value(json_object_get(web0, "pid")) : 0;
    ok(web0 && json_integer_value(json_object_get(web0, "restarts")) == 0 &&
           json_number_value(json_object_get(web0, "uptime_s")) >= 0,
       "a fresh worker has restarts 0 and an uptime");
    comm_of(e.old_pid, comm, sizeof comm);
    is_str(comm, "pgcorral: web 0", "the worker's process title names its role and index");
    json_decref(doc);

    ok(stat(control, &st) == 0 && (st.st_mode & 0777) == 0600, "the control socket is mode 0600");

    doc = pgt_ctl(control, "budget");
    json_t *b = json_object_get(doc, "budget");
    is_int(json_integer_value(json_object_get(b, "slots")), 4 * 10 + 1,
           "budget: slots = workers x connection_limit + 1");
    is_int(json_integer_value(json_object_get(b, "per_worker_limit")), 10,
           "budget: per_worker_limit is connection_limit");
    ok(json_integer_value(json_object_get(b, "max_connections")) == 200,
       "budget: max_connections is the server's");
    ok(json_integer_value(json_object_get(b, "in_use")) <= 41, "budget: in_use within slots");
    json_decref(doc);

    /* A crash of one worker: it comes back with a new pid; the others are untouched. */
    kill(e.old_pid, SIGKILL);
    ok(pgt_wait_until(web0_replaced, &e, 10000), "SIGKILLed web 0 comes back ready");
    ok(e.new_pid != e.old_pid && e.new_pid > 0, "with a new pid (%d -> %d)", (int)e.old_pid,
       (int)e.new_pid);
    is_int(e.restarts, 1, "and restarts = 1");
    int others_alive = 0;
    for (int k = 0; k < npids; k++)
        others_alive += pids[k] != e.old_pid && pgt_pid_alive(pids[k]);
    is_int(others_alive, 3, "the other three workers kept running");
    pids[0] = e.new_pid; /* track the replacement too */

    /* Graceful stop. */
    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 20000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "SIGTERM: the supervisor exits 0");
    int left = 0;
    for (int k = 0; k < npids; k++)
        left += pgt_pid_alive(pids[k]);
    is_int(left, 0, "no worker is left after SIGTERM");
    ok(access(control, F_OK) != 0, "the control socket file is removed");
    if (!WIFEXITED(sup.status) || WEXITSTATUS(sup.status) != 0)
        diag("supervisor output:\n%s", sup.log);
    pgt_proc_cleanup(&sup);

    /* A supervisor that is SIGKILLed takes its workers with it (PR_SET_PDEATHSIG). */
    start(&sup, &e, control);
    doc = pgt_ctl(control, "workers");
    npids = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (npids < 4)
            pids[npids++] = (pid_t)json_integer_value(json_object_get(w, "pid"));
    }
    json_decref(doc);
    kill(sup.pid, SIGKILL);
    pgt_proc_wait_exit(&sup, 5000);
    struct pid_set gone = {pids, npids};
    ok(npids == 4 && pgt_wait_until(none_alive, &gone, 5000),
       "a SIGKILLed supervisor leaves no worker behind");
    pgt_proc_cleanup(&sup);
    unlink(control);
    return done_testing();
}
