/*
 * Chaos: mixed HTTP and job load on the real binary while a random worker is SIGKILLed
 * every 500 ms, PostgreSQL is restarted (-m fast) half-way, and the supervisor finally gets
 * SIGTERM. Asserts what users rely on: every job enqueued is done or failed by design, none
 * lost or left locked; pg_stat_activity never shows more than B of our connections; no
 * slot leaks; every killed worker came back; HTTP errors only in the database outage or on
 * a killed web worker's own requests. PGC_CHAOS_SECONDS sets the length (make chaos: 60).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define WORKERS_WEB 2
#define WORKERS_JOB 2
#define LIMIT 4
#define BUDGET (((WORKERS_WEB + WORKERS_JOB) * LIMIT) + 1)
#define MAX_EVENTS 4096

static const char *control;
static int http_port;
static long long t0;

/* Result of one HTTP request, written by the load process into a pipe. */
struct http_event {
    long long t_ms;
    int kind; /* 0 ok (2xx), 1 connect error, 2 read/reset error, 3 non-2xx status */
    int status;
};

/* Database outage window and kill times, in ms since t0. */
static long long outage_from = -1, outage_to = -1;
static long long web_kills[MAX_EVENTS];
static int n_web_kills;

/* The sampler thread: pg_stat_activity every 100 ms. */
static atomic_bool sampling = true;
static atomic_int max_ours, samples;

static void *sampler(void *arg)
{
    PGconn *c = NULL;
    while (atomic_load(&sampling)) {
        if (!c || PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            c = PQconnectdb(pgt_db_url());
        }
        if (PQstatus(c) == CONNECTION_OK) {
            PGresult *r = PQexec(c, "SELECT count(*) FROM pg_stat_activity "
                                    "WHERE application_name LIKE 'pgcorral%'");
            if (PQresultStatus(r) == PGRES_TUPLES_OK) {
                int n = atoi(PQgetvalue(r, 0, 0));
                if (n > atomic_load(&max_ours))
                    atomic_store(&max_ours, n);
                atomic_fetch_add(&samples, 1);
            }
            PQclear(r);
        }
        usleep(100000);
    }
    PQfinish(c);
    return NULL;
}

/* One GET with Connection: close. Fills ev. */
static void http_get(const char *path, struct http_event *ev)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)http_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char req[256], buf[1024];
    int fd = socket(AF_INET, SOCK_STREAM, 0), n, len;

    ev->t_ms = pgt_now_ms() - t0;
    ev->status = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        ev->kind = 1;
        close(fd);
        return;
    }
    len =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (write(fd, req, (size_t)len) != len || poll(&p, 1, 10000) <= 0 ||
        (n = (int)read(fd, buf, sizeof buf - 1)) <= 0) {
        ev->kind = 2;
        close(fd);
        return;
    }
    buf[n] = '\0';
    ev->status = atoi(buf + 9);
    ev->kind = ev->status >= 200 && ev->status < 300 ? 0 : 3;
    close(fd);
}

/* The HTTP load process: health and ping alternately until killed; events into fd. */
static void http_load(int fd)
{
    for (unsigned i = 0;; i++) {
        struct http_event ev;
        http_get(i % 2 ? "/api/v1/ping" : "/api/v1/health", &ev);
        if (write(fd, &ev, sizeof ev) != sizeof ev)
            _exit(0);
    }
}

/* HTTP results so far; read from the load process's pipe as they come (it must not fill). */
static long long http_ok, http_bad, http_unexplained;
static char first_bad[256];

static bool near_web_kill(long long t);
static bool in_outage(long long t);

static void read_http_events(int fd)
{
    struct http_event ev;
    while (read(fd, &ev, sizeof ev) == sizeof ev) {
        if (ev.kind == 0) {
            http_ok++;
            continue;
        }
        http_bad++;
        /* Allowed: any error in the outage; a read error (in-flight request) or a 503 near a
         * web worker's kill. Nothing else. */
        bool explained =
            in_outage(ev.t_ms) || ((ev.kind == 2 || ev.status == 503) && near_web_kill(ev.t_ms));
        if (!explained) {
            http_unexplained++;
            if (!*first_bad)
                snprintf(first_bad, sizeof first_bad, "t=%lld ms kind %d status %d", ev.t_ms,
                         ev.kind, ev.status);
        }
    }
}

static long long q_ll(PGconn *c, const char *sql)
{
    return pgt_query_ll(c, sql);
}

/* Workers from `workers`: pid, role, index. */
struct wk {
    pid_t pid;
    char role[8];
    int index, restarts;
    bool ready;
};

static int list_workers(struct wk *out, int max)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    int n = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (n >= max)
            break;
        out[n].pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
        snprintf(out[n].role, sizeof out[n].role, "%s",
                 json_string_value(json_object_get(w, "role")));
        out[n].index = (int)json_integer_value(json_object_get(w, "index"));
        out[n].restarts = (int)json_integer_value(json_object_get(w, "restarts"));
        out[n].ready = strcmp(json_string_value(json_object_get(w, "state")), "ready") == 0;
        n++;
    }
    json_decref(doc);
    return n;
}

static bool all_ready(void *arg)
{
    struct wk w[16];
    int n = list_workers(w, 16), ready = 0;
    for (int i = 0; i < n; i++)
        ready += w[i].ready;
    return n == WORKERS_WEB + WORKERS_JOB && ready == n;
}

/* Near a web kill: [kill - 50 ms, kill + 500 ms]. */
/* Whether a request that started at t may have been in flight on a web worker when it was
 * killed: started up to 250 ms before the kill (a slow request on a loaded 2-core machine)
 * or within 500 ms after it (queued for the dead worker). */
static bool near_web_kill(long long t)
{
    for (int i = 0; i < n_web_kills; i++)
        if (t >= web_kills[i] - 250 && t <= web_kills[i] + 500)
            return true;
    return false;
}

static bool in_outage(long long t)
{
    return outage_from >= 0 && t >= outage_from - 100 && t <= outage_to + 3000;
}

/* Enqueues n jobs of task with payload; returns how many the server took (0 in an outage). */
static int enqueue(PGconn **c, const char *task, const char *payload, int max_attempts, int n)
{
    char sql[512];
    if (PQstatus(*c) != CONNECTION_OK) {
        PQfinish(*c);
        *c = PQconnectdb(pgt_db_url());
        if (PQstatus(*c) != CONNECTION_OK)
            return 0;
    }
    snprintf(sql, sizeof sql,
             "SELECT count(pgcorral.add_job('%s', '%s'::jsonb, max_attempts => %d)) "
             "FROM generate_series(1, %d)",
             task, payload, max_attempts, n);
    long long got = pgt_query_ll(*c, sql);
    return got > 0 ? (int)got : 0;
}

struct drained_arg {
    PGconn *c;
};

static bool jobs_drained(void *arg)
{
    struct drained_arg *d = arg;
    return q_ll(d->c, "SELECT count(*) FROM pgcorral.jobs WHERE outcome IS NULL") == 0;
}

static bool slots_consistent(void *arg)
{
    json_t *b = pgt_ctl(control, "budget"), *p = pgt_ctl(control, "pools");
    long long in_use = json_integer_value(json_object_get(json_object_get(b, "budget"), "in_use"));
    long long open = json_integer_value(
        json_object_get(json_object_get(json_object_get(p, "pools"), "total"), "open"));
    json_decref(b);
    json_decref(p);
    /* every slot is an open pool connection, or the supervisor's job connection */
    return in_use == open + 1;
}

int main(void)
{
    const char *secs_env = getenv("PGC_CHAOS_SECONDS");
    int seconds = secs_env ? atoi(secs_env) : 10;
    char env_url[1100], url[1024], plugin[1024], budget_s[16];
    struct pgt_proc sup;
    pthread_t sampler_thread;
    int pfd[2];
    pid_t load;
    int kills = 0, kills_by_entry[2][8] = {{0}};
    int enq_ok = 0, enq_fail = 0;

    tap_timeout((unsigned)seconds + 150);
    srand((unsigned)getpid());
    control = pgt_tmp_path("chaos.sock");
    snprintf(url, sizeof url, "%s&connection_limit=%d&pool_timeout=2&connect_timeout=2",
             pgt_db_url(), LIMIT);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    snprintf(plugin, sizeof plugin, "%s", pgt_binary());
    strcpy(strrchr(plugin, '/'), "/examples/basic.so");
    snprintf(budget_s, sizeof budget_s, "%d", BUDGET);
    plan(10);

    PGconn *db = pgt_connect();
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
                    "--plugin",
                    plugin,
                    "--shutdown-timeout",
                    "20",
                    NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(&sup, argv, env);
    if (!pgt_wait_until(all_ready, NULL, 20000)) {
        pgt_proc_drain(&sup);
        bail("supervisor did not come up:\n%s", sup.log);
    }
    json_t *cfg = pgt_ctl(control, "config");
    http_port =
        (int)json_integer_value(json_object_get(json_object_get(cfg, "config"), "listen_port"));
    json_decref(cfg);
    PQclear(PQexec(db, "DELETE FROM pgcorral.jobs"));

    t0 = pgt_now_ms();
    pthread_create(&sampler_thread, NULL, sampler, NULL);
    if (pipe(pfd) < 0)
        bail("pipe");
    load = fork();
    if (load == 0) {
        close(pfd[0]);
        http_load(pfd[1]);
    }
    close(pfd[1]);
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);

    /* Failed by design: 'fail' with one attempt. */
    int fail_jobs = enqueue(&db, "fail", "{}", 1, 20);
    long long end = t0 + seconds * 1000LL;
    bool restarted = false;

    while (pgt_now_ms() < end) {
        int got = enqueue(&db, "noop", "{}", 25, 50);
        got += enqueue(&db, "sleep", "{\"ms\":50}", 25, 5);
        if (got)
            enq_ok += got;
        else
            enq_fail++;

        /* A random worker, SIGKILLed. */
        struct wk w[16];
        int n = list_workers(w, 16);
        if (n > 0) {
            struct wk *v = &w[rand() % n];
            if (v->pid > 0 && kill(v->pid, SIGKILL) == 0) {
                kills++;
                kills_by_entry[strcmp(v->role, "web") == 0][v->index & 7]++;
                if (strcmp(v->role, "web") == 0 && n_web_kills < MAX_EVENTS)
                    web_kills[n_web_kills++] = pgt_now_ms() - t0;
            }
        }
        /* Half-way: PostgreSQL restarts. */
        if (!restarted && pgt_now_ms() > t0 + seconds * 500LL) {
            char cmd[1024];
            restarted = true;
            outage_from = pgt_now_ms() - t0;
            snprintf(cmd, sizeof cmd,
                     "runuser -u postgres -- %s/pg_ctl -D %s/data restart -m fast -w >/dev/null",
                     getenv("PGC_TEST_PGBIN"), getenv("PGC_TEST_PGDIR"));
            if (system(cmd) != 0)
                diag("pg_ctl restart failed");
            outage_to = pgt_now_ms() - t0;
        }
        /* Half a second, reading the HTTP results meanwhile. */
        for (int k = 0; k < 10; k++) {
            read_http_events(pfd[0]);
            usleep(50000);
        }
    }
    kill(load, SIGKILL);
    waitpid(load, NULL, 0);
    read_http_events(pfd[0]);
    close(pfd[0]);

    diag("%d s, %d kills (%d web), PostgreSQL restarted at %lld-%lld ms", seconds, kills,
         n_web_kills, outage_from, outage_to);
    diag("http: %lld ok, %lld errors, %lld unexplained %s", http_ok, http_bad, http_unexplained,
         first_bad);
    ok(kills >= seconds, "workers were killed throughout (%d)", kills);
    ok(http_ok > 0 && http_unexplained == 0,
       "HTTP errors only in the outage or on a killed web worker's requests (%lld of %lld)",
       http_unexplained, http_bad);

    /* Every killed worker respawned. */
    ok(pgt_wait_until(all_ready, NULL, 30000), "every killed worker is back and ready");
    struct wk w[16];
    int n = list_workers(w, 16), short_restarts = 0;
    for (int i = 0; i < n; i++)
        if (w[i].restarts < kills_by_entry[strcmp(w[i].role, "web") == 0][w[i].index & 7])
            short_restarts++;
    ok(short_restarts == 0, "each entry's restarts count covers its kills");

    /* Jobs: all done or failed by design, none lost, none left locked. */
    PQfinish(db);
    db = pgt_connect();
    struct drained_arg d = {db};
    bool drained = pgt_wait_until(jobs_drained, &d, 60000);
    ok(drained, "all %d jobs enqueued were run (none lost)", enq_ok);
    if (!drained) {
        json_t *jd = pgt_ctl(control, "jobs");
        char *jt = json_dumps(jd, JSON_COMPACT);
        diag("jobs: %s", jt ? jt : "?");
        free(jt);
        json_decref(jd);
        pgt_proc_drain(&sup);
        diag("log tail: %s", sup.log + (sup.len > 6000 ? sup.len - 6000 : 0));
    }
    is_int(q_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE locked_by IS NOT NULL"), 0,
           "no job is left locked");
    PGresult *lr = PQexec(db, "SELECT locked_by, task, attempts, now() - locked_at, "
                              "coalesce(last_error, '') FROM pgcorral.jobs "
                              "WHERE locked_by IS NOT NULL LIMIT 5");
    for (int i = 0; i < PQntuples(lr); i++)
        diag("locked: %s %s attempts %s for %s (%s)", PQgetvalue(lr, i, 0), PQgetvalue(lr, i, 1),
             PQgetvalue(lr, i, 2), PQgetvalue(lr, i, 3), PQgetvalue(lr, i, 4));
    PQclear(lr);
    {
        struct wk now[16];
        int nn = list_workers(now, 16);
        for (int i = 0; i < nn; i++)
            diag("worker %s %d pid %d restarts %d", now[i].role, now[i].index, (int)now[i].pid,
                 now[i].restarts);
    }
    is_int(
        q_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'failed' AND task = 'fail'"),
        fail_jobs, "the jobs failed by design are kept as failed (%d)", fail_jobs);
    diag("jobs enqueued %d (+%d failing), enqueue attempts refused in the outage %d", enq_ok,
         fail_jobs, enq_fail);

    atomic_store(&sampling, false);
    pthread_join(sampler_thread, NULL);
    ok(atomic_load(&max_ours) <= BUDGET,
       "pg_stat_activity never showed more than B = %d of ours "
       "(max %d in %d samples)",
       BUDGET, atomic_load(&max_ours), atomic_load(&samples));
    ok(pgt_wait_until(slots_consistent, NULL, 10000),
       "budget slots in use = open connections + 1 (no slot leaked by the kills)");

    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 40000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "SIGTERM: the supervisor exits 0 after the chaos");
    if (!sup.exited || WEXITSTATUS(sup.status) != 0)
        diag("%s", sup.log + (sup.len > 4000 ? sup.len - 4000 : 0));
    pgt_proc_cleanup(&sup);
    PQfinish(db);
    return done_testing();
}
