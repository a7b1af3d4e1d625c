/*
 * Adversarial: the database goes away under load, on the real binary and the real server.
 * (1) PostgreSQL stopped while wrk hammers GET /api/v1/health: a handful of log lines and
 * connection attempts instead of one per request, 503 with Retry-After at once (health,
 * jobs and plugin routes, on threads and on the loop), one line when it goes and one when it is
 * back (with the outage's length and the refused requests), recovery in under a second; in-process,
 * the refusal is a transient error that rt_retry retries. (2) PostgreSQL frozen (SIGSTOP): health
 * answers 503 "timeout" within --health-timeout, no connection stays busy, and after the thaw
 * health is 200 again. (3) PostgreSQL restarted with a smaller max_connections: the budget shrinks
 * to what the server takes (minus reserved connections), logged once, and pg_stat_activity
 * never shows more of ours under load; it grows back after a restart with the old setting.
 * The server is always thawed and restored to its harness settings (max_connections=200).
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/pooltest.h"

#define DB "pgct962"
#define LIMIT 4
#define HARNESS_MAX_CONNECTIONS 200 /* what scripts/with-test-pg.sh starts the server with */
#define SMALL_MAX_CONNECTIONS 12

static uv_loop_t loop_; /* the in-process pool's */
static const char *control;
static const char *logfile;
static const char *url;
static struct pgt_proc sup;

/* ---- the test cluster: stop, start, restart with another max_connections, freeze ---- */

/* What the cluster is now, so that exit and the timeout can put it back. */
static bool pg_stopped;
static int pg_tcp_port; /* listening on 127.0.0.1:pg_tcp_port instead of the harness's port
                           (unix socket only) when not 0 */
static int pg_max_connections = HARNESS_MAX_CONNECTIONS;
static pid_t frozen[512];
static volatile sig_atomic_t nfrozen;

/* Runs pg_ctl action (stop, start, restart) with the harness's options but the given
 * max_connections and, when tcp_port is not 0, on that port and on 127.0.0.1 too, as the
 * cluster's owner. Returns its exit code. */
static int pg_ctl(const char *action, int max_connections, int tcp_port)
{
    const char *dir = getenv("PGC_TEST_PGDIR"), *bin = getenv("PGC_TEST_PGBIN");
    const char *port = getenv("PGC_TEST_PGPORT");
    char pgctl[1100], data[1100], log[1100], opts[1400];
    char *args[24];
    struct ot_output o;
    int n = 0, rc;

    if (!dir || !bin || !port)
        bail("PGC_TEST_PGDIR / PGC_TEST_PGBIN / PGC_TEST_PGPORT not set: run through "
             "scripts/with-test-pg.sh");
    snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", bin);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/postgres.log", dir);
    char tcp_port_s[16];
    snprintf(tcp_port_s, sizeof tcp_port_s, "%d", tcp_port);
    snprintf(opts, sizeof opts,
             "-p %s -k %s -c listen_addresses='%s' -c max_connections=%d -c fsync=off",
             tcp_port ? tcp_port_s : port, dir, tcp_port ? "127.0.0.1" : "", max_connections);
    if (getuid() == 0) {
        args[n++] = "/usr/sbin/runuser";
        args[n++] = "-u";
        args[n++] = "postgres";
        args[n++] = "--";
    }
    char *rest[] = {pgctl, "-D", data,   "-l", log,  "-w",           "-t",
                    "60",  "-m", "fast", "-o", opts, (char *)action, NULL};
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++)
        args[n++] = rest[i];
    rc = ot_run(args, NULL, 90000, &o);
    if (rc != 0)
        diag("pg_ctl %s failed (%d): %s%s", action, rc, o.out, o.err);
    ot_output_free(&o);
    if (rc == 0) {
        pg_stopped = strcmp(action, "stop") == 0;
        if (!pg_stopped) {
            pg_max_connections = max_connections;
            pg_tcp_port = tcp_port;
        }
    }
    return rc;
}

/* The postmaster's pid, from the first line of postmaster.pid; 0 when unknown. */
static pid_t postmaster_pid(void)
{
    char path[1100], *text;
    pid_t pid;

    snprintf(path, sizeof path, "%s/data/postmaster.pid", getenv("PGC_TEST_PGDIR"));
    text = ot_read_file(path);
    pid = text ? (pid_t)atoi(text) : 0;
    free(text);
    return pid;
}

/* Stops (SIGSTOP) the postmaster, then every process it forked: the database is frozen,
 * its sockets open. Returns how many processes. */
static int pg_freeze(void)
{
    pid_t pm = postmaster_pid();
    DIR *d;
    struct dirent *e;

    if (pm <= 0 || kill(pm, SIGSTOP) < 0)
        bail("cannot stop the postmaster (pid %d): %s", (int)pm, strerror(errno));
    frozen[nfrozen++] = pm;
    d = opendir("/proc");
    while (d && (e = readdir(d)) && nfrozen < (int)(sizeof frozen / sizeof frozen[0])) {
        char path[300], *stat, *close_paren;
        int ppid = 0;
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid <= 0)
            continue;
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        stat = ot_read_file(path);
        /* "pid (comm) state ppid ...": comm may hold spaces and parentheses. */
        close_paren = stat ? strrchr(stat, ')') : NULL;
        if (close_paren && sscanf(close_paren + 1, " %*c %d", &ppid) == 1 && ppid == pm &&
            kill(pid, SIGSTOP) == 0)
            frozen[nfrozen++] = pid;
        free(stat);
    }
    if (d)
        closedir(d);
    return nfrozen;
}

/* SIGCONT to everything pg_freeze stopped. Async-signal-safe. */
static void pg_thaw(void)
{
    for (int i = nfrozen - 1; i >= 0; i--)
        kill(frozen[i], SIGCONT);
    nfrozen = 0;
}

/* The test's timeout: thaw the server first, or the harness could not stop it. */
static void on_alarm(int sig)
{
    pg_thaw();
    tap_on_alarm(sig);
}

/* On every way out: the server thawed, running, with the harness's settings. */
static void restore_cluster(void)
{
    pg_thaw();
    if (sup.pid > 0 && !sup.exited)
        pgt_proc_cleanup(&sup);
    if (pg_stopped)
        (void)pg_ctl("start", HARNESS_MAX_CONNECTIONS, 0);
    else if (pg_max_connections != HARNESS_MAX_CONNECTIONS || pg_tcp_port)
        (void)pg_ctl("restart", HARNESS_MAX_CONNECTIONS, 0);
}

/* ---- the supervisor ------------------------------------------------------------------ */

static int want_web, want_jobs;

static bool sup_ready(void *arg)
{
    return ot_all_ready(control, want_web, want_jobs);
}

/* Starts `pgcorral run --web web --jobs jobs` on db_url with the examples' plugins,
 * logging to logfile (emptied first), and waits until every worker is ready. Returns the
 * HTTP port. */
static int sup_start(const char *db_url, int web, int jobs)
{
    char env_url[1200], webs[8], jobss[8], basic[1024], products[1024], accounts[1024];

    want_web = web;
    want_jobs = jobs;
    snprintf(webs, sizeof webs, "%d", web);
    snprintf(jobss, sizeof jobss, "%d", jobs);
    snprintf(basic, sizeof basic, "%s", jt_example_plugin("basic"));
    snprintf(products, sizeof products, "%s", jt_example_plugin("products"));
    snprintf(accounts, sizeof accounts, "%s", jt_example_plugin("accounts"));
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s%sconnection_limit=%d", db_url,
             strchr(db_url, '?') ? "&" : "?", LIMIT);
    unlink(logfile);
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    webs,
                    "--jobs",
                    jobss,
                    "--control",
                    (char *)control,
                    "--listen",
                    "127.0.0.1:0",
                    "--plugin",
                    basic,
                    "--plugin",
                    products,
                    "--plugin",
                    accounts,
                    "--log-file",
                    (char *)logfile,
                    "--shutdown-timeout",
                    "10",
                    NULL};
    /* The environment's name of --health-timeout (2 s is also the default). */
    char *env[] = {env_url, "PGCORRAL_HEALTH_TIMEOUT=2", NULL};
    pgt_spawn(&sup, argv, env);
    if (!pgt_wait_until(sup_ready, NULL, 20000)) {
        pgt_proc_drain(&sup);
        char *log = ot_read_file(logfile);
        bail("supervisor did not come up:\n%s\n%s", sup.log, log ? log : "");
    }
    return (int)ot_config_int(control, "listen_port");
}

/* SIGTERM; whether it exited 0 within 20 s. */
static bool sup_stop(void)
{
    kill(sup.pid, SIGTERM);
    bool clean =
        pgt_proc_wait_exit(&sup, 20000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0;
    pgt_proc_cleanup(&sup);
    sup.pid = 0;
    return clean;
}

static long long stat_total(const char *name)
{
    json_t *doc = pgt_ctl(control, "stats");
    long long v = json_integer_value(
        json_object_get(json_object_get(json_object_get(doc, "stats"), "totals"), name));
    json_decref(doc);
    return v;
}

/* pools.total.key from the control socket (-1 when missing). */
static long long pools_total(const char *key)
{
    json_t *doc = pgt_ctl(control, "pools");
    json_t *v = json_object_get(json_object_get(json_object_get(doc, "pools"), "total"), key);
    long long n = json_is_integer(v) ? json_integer_value(v) : -1;
    json_decref(doc);
    return n;
}

/* budget.key from the control socket (-1 when missing). */
static long long budget_value(const char *key)
{
    json_t *doc = pgt_ctl(control, "budget");
    json_t *v = json_object_get(json_object_get(doc, "budget"), key);
    long long n = json_is_integer(v) ? json_integer_value(v) : -1;
    json_decref(doc);
    return n;
}

/* Lines in the log file so far, and the lines with msg among them (a new array). */
static int log_line_count(void)
{
    char *text = ot_read_file(logfile);
    int n = ot_count(text, "\n");
    free(text);
    return n;
}

static json_t *log_msgs(const char *msg)
{
    char *text = ot_read_file(logfile);
    json_t *arr = ot_log_lines(text, msg);
    free(text);
    return arr;
}

/* ---- HTTP ---------------------------------------------------------------------------- */

/* GET path: its status (0 = no answer within 5 s), how long it took, and the response
 * (caller frees; may be NULL). */
static int timed_get(int port, const char *path, long long *ms, char **resp)
{
    long long t0 = pgt_now_ms();
    int status = ot_http_get(port, path, resp);
    *ms = pgt_now_ms() - t0;
    return status;
}

/* A response header's value (case-insensitive name) into out; false when absent. */
static bool header(const char *resp, const char *name, char *out, size_t size)
{
    size_t n = strlen(name);
    for (const char *l = resp ? strstr(resp, "\r\n") : NULL; l && l[2] != '\r';
         l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, name, n) == 0 && l[2 + n] == ':') {
            const char *v = l + 3 + n;
            while (*v == ' ')
                v++;
            snprintf(out, size, "%.*s", (int)strcspn(v, "\r\n"), v);
            return true;
        }
    }
    return false;
}

struct http_port {
    int port;
    int status; /* wanted */
};

static bool health_is(void *arg)
{
    struct http_port *h = arg;
    char *resp = NULL;
    int status = ot_http_get(h->port, "/api/v1/health", &resp);
    free(resp);
    return status == h->status;
}

/* ---- (1) stopped --------------------------------------------------------------------- */

/* At least *arg pools find the database unreachable (ctl pools). */
static bool pools_down(void *arg)
{
    return pools_total("database_unreachable") >= *(int *)arg;
}

/* The measurement window of the outage under load: long enough to count lines per second,
 * with wrk well under way. */
struct window {
    long long t0, requests0;
};

static bool window_done(void *arg)
{
    struct window *w = arg;
    return pgt_now_ms() - w->t0 >= 3000 && stat_total("http_requests") - w->requests0 >= 500;
}

/* Log lines of msg match "Database unavailable" ones: every pool that went came back. */
static bool all_back(void *arg)
{
    json_t *down = log_msgs("Database unavailable; requests fail at once until a reconnect "
                            "succeeds"),
           *up = log_msgs("Database available again");
    bool done = json_array_size(down) > 0 && json_array_size(up) == json_array_size(down);
    json_decref(down);
    json_decref(up);
    return done;
}

/* In-process: the pool's refusal during an outage is immediate, says "database
 * unavailable", is transient, and rt_retry retries it. */
struct refuse_ctx {
    struct rt_pool *pool;
    int attempts;
    bool all_sync;
};

static int refuse_once(void *arg, struct rt_error *err)
{
    struct refuse_ctx *r = arg;
    struct t_acq a;

    r->attempts++;
    t_acquire_start(r->pool, &a, "retry");
    r->all_sync &= a.done; /* refused before rt_pool_acquire returned */
    if (!t_run_until(&loop_, &a.done, 5000))
        bail("acquire did not finish");
    *err = a.err;
    return a.conn ? 0 : a.err.code;
}

static void refusal_in_process(void)
{
    char u[256], e[256];
    struct rt_dburl *du;
    struct t_acq a;
    int port = pgt_closed_port();

    snprintf(u, sizeof u, "postgresql://nobody@127.0.0.1:%d/db?sslmode=disable&connect_timeout=2",
             port);
    if (rt_dburl_parse(u, &du, e, sizeof e) != 0)
        bail("url: %s", e);
    struct rt_pool *p = t_pool(&loop_, du, NULL);
    t_acquire(&loop_, p, &a, "first", 5000);
    ok(!a.conn && a.err.transient, "in-process: the first attempt fails, transient (%s)",
       a.err.message);
    long long errors0 = (long long)atomic_load(&rt_pool_stats_block(p)->counters.connect_errors);
    int sync = 0, unavailable = 0, transient = 0;
    for (int i = 0; i < 20; i++) {
        t_acquire_start(p, &a, "next");
        sync += a.done;
        if (!t_run_until(&loop_, &a.done, 5000))
            bail("acquire did not finish");
        unavailable += !a.conn && strstr(a.err.message, "database unavailable") != NULL;
        transient += a.err.transient;
    }
    long long attempts =
        (long long)atomic_load(&rt_pool_stats_block(p)->counters.connect_errors) - errors0;
    ok(sync == 20 && unavailable == 20 && transient == 20 && attempts <= 3,
       "in-process: 20 acquires refused at once, \"database unavailable\", transient, with %lld "
       "connection attempts meanwhile (%d sync, %d unavailable: %s)",
       attempts, sync, unavailable, a.err.message);
    struct refuse_ctx r = {p, 0, true};
    struct rt_error err;
    struct rt_retry_policy pol = {3, 1, 2.0, 0.0};
    int rc = rt_retry(&pol, refuse_once, &r, &err);
    ok(rc != 0 && r.attempts == 4 && r.all_sync,
       "in-process: rt_retry treats the refusal as transient: 1 try + 3 retries, each refused "
       "at once (%d attempts)",
       r.attempts);
    ok(t_pool_close(&loop_, p), "in-process: the pool closes during the outage");
    rt_dburl_destroy(du);
}

static void case_stopped(void)
{
    struct ot_wrk wrk;
    struct ot_wrk_result wr;
    struct window w;
    char *resp = NULL, v[64];
    long long ms;
    int status;

    diag("(1) PostgreSQL stopped under load");
    /* Over TCP, as in production: a refused connection then fails in PQconnectPoll, where
     * a unix socket that is gone fails already as libpq starts connecting. On a port the
     * kernel has just found free: the harness's may be someone's ephemeral port. */
    char tcp_url[512];
    const char *user = strstr(url, "://") + 3;
    int tcp = pgt_closed_port();
    snprintf(tcp_url, sizeof tcp_url, "postgresql://%.*s@127.0.0.1:%d/%s", (int)strcspn(user, "@"),
             user, tcp, DB);
    if (pg_ctl("restart", HARNESS_MAX_CONNECTIONS, tcp) != 0) {
        tcp = 0;
        if (pg_ctl("start", HARNESS_MAX_CONNECTIONS, 0) != 0 && PQping(url) != PQPING_OK)
            bail("PostgreSQL does not start again");
    }
    diag("database over %s", tcp ? "TCP (127.0.0.1)" : "the unix socket (no TCP port)");
    int port = sup_start(tcp ? tcp_url : url, 2, 1);
    struct http_port up = {port, 200};
    if (!pgt_wait_until(health_is, &up, 10000))
        bail("health is not 200 before the outage");

    if (pg_ctl("stop", pg_max_connections, tcp) != 0)
        bail("pg_ctl stop failed");
    int lines0 = log_line_count();
    long long connect_errors0 = stat_total("connect_errors");
    w.t0 = pgt_now_ms();
    w.requests0 = stat_total("http_requests");
    ot_wrk_start(&wrk, port, "/api/v1/health", 16, 60);
    /* Both web workers' pools have seen the outage (their first request heard the connect
     * error itself); no bail: without outages in the pools, the checks below tell. */
    int two = 2;
    (void)pgt_wait_until(pools_down, &two, 3000);

    /* "At once": far below connect_timeout (5 s) and pool_timeout (10 s), which a request
     * that dialled the dead server or waited for a connection would take; 1 s leaves room
     * for ThreadSanitizer's slowdown under wrk (a plugin route once took 252 ms there). */
    status = timed_get(port, "/api/v1/health", &ms, &resp);
    ok(status == 503 && ms < 1000 && header(resp, "Retry-After", v, sizeof v) && atoi(v) > 0,
       "stopped: health answers 503 with Retry-After at once (%d in %lld ms)", status, ms);
    ok(resp && strstr(resp, "\"database\":\"unreachable\"") && strstr(resp, "database unavailable"),
       "stopped: ... its body says database unreachable, \"database unavailable\" and why");
    if (resp)
        diag("503 body: %s", strstr(resp, "\r\n\r\n") ? strstr(resp, "\r\n\r\n") + 4 : resp);
    free(resp);
    status = timed_get(port, "/api/v1/products", &ms, &resp);
    ok(status == 503 && ms < 1000 && header(resp, "Retry-After", v, sizeof v),
       "stopped: a plugin route answers 503 with Retry-After at once (%d in %lld ms)", status, ms);
    free(resp);
    status = timed_get(port, "/api/v1/accounts/1", &ms, &resp);
    ok(status == 503 && ms < 1000 && header(resp, "Retry-After", v, sizeof v),
       "stopped: an on-loop plugin route answers 503 with Retry-After at once (%d in %lld ms)",
       status, ms);
    free(resp);
    status = timed_get(port, "/api/v1/jobs/1", &ms, &resp);
    ok(status == 503 && ms < 1000 && header(resp, "Retry-After", v, sizeof v),
       "stopped: a jobs route answers 503 with Retry-After at once (%d in %lld ms)", status, ms);
    free(resp);

    bool measured = pgt_wait_until(window_done, &w, 15000);
    ot_wrk_stop(&wrk, &wr);
    long long t1 = pgt_now_ms();
    int lines1 = log_line_count();
    long long attempts = stat_total("connect_errors") - connect_errors0;
    double secs = (double)(t1 - w.t0) / 1000.0;
    double rate = (double)(lines1 - lines0) / secs;
    diag("outage under load: %ld requests in %.1f s (%.0f/s), %ld non-2xx, %d log lines "
         "(%.1f/s), %lld connection attempts",
         wr.requests, secs, (double)wr.requests / secs, wr.non2xx, lines1 - lines0, rate, attempts);
    ok(measured && wr.ran && wr.requests >= 500 && wr.non2xx == wr.requests &&
           wr.err_connect + wr.err_read + wr.err_write + wr.err_timeout == 0,
       "stopped: wrk got %ld answers, all 503, no socket error", wr.requests);
    ok(rate <= 5.0, "stopped: %.1f log lines per second under load (at most 5)", rate);
    /* Each of the 3 pools: the attempt that failed, the backoff's first steps (50, 100, 200,
     * 400 ms, each shortened by up to half), then at most one every 500 ms under load. */
    ok(attempts <= (long long)(3 * (6 + 2 * secs)),
       "stopped: %lld connection attempts in %.1f s for %ld requests (one reconnect loop per "
       "pool)",
       attempts, secs, wr.requests);
    json_t *per_attempt = log_msgs("Connection attempt failed");
    json_t *down = log_msgs("Database unavailable; requests fail at once until a reconnect "
                            "succeeds");
    ok(json_array_size(per_attempt) == 0 && json_array_size(down) >= 2 &&
           json_array_size(down) <= 3,
       "stopped: one \"Database unavailable\" line per pool (%zu for 2 web + 1 job workers), no "
       "line per attempt (%zu)",
       json_array_size(down), json_array_size(per_attempt));
    json_decref(per_attempt);
    json_decref(down);

    long long t_start = pgt_now_ms();
    if (pg_ctl("start", HARNESS_MAX_CONNECTIONS, tcp) != 0)
        bail("pg_ctl start failed");
    long long t_up = pgt_now_ms();
    bool back = pgt_wait_until(health_is, &up, 10000);
    long long t_200 = pgt_now_ms();
    diag("recovery: first 200 from /api/v1/health %lld ms after pg_ctl start -w returned "
         "(%lld ms after it was started)",
         t_200 - t_up, t_200 - t_start);
    ok(back && t_200 - t_up < 1000, "stopped: health is 200 again %lld ms after PostgreSQL is up",
       t_200 - t_up);

    bool all = pgt_wait_until(all_back, NULL, 10000);
    json_t *ups = log_msgs("Database available again"), *line;
    size_t i;
    long long refused = 0, good = 0;
    json_array_foreach(ups, i, line)
    {
        long long out = json_integer_value(json_object_get(line, "outage_ms"));
        refused += json_integer_value(json_object_get(line, "refused"));
        good += out > 0 && json_is_integer(json_object_get(line, "refused"));
    }
    ok(all && good == (long long)json_array_size(ups) && refused >= wr.non2xx * 9 / 10,
       "stopped: one \"Database available again\" line per pool, with outage_ms and refused "
       "(%lld refused, wrk saw %ld 503s)",
       refused, wr.non2xx);
    json_decref(ups);
    ok(stat_total("unavailable") >= wr.non2xx * 9 / 10,
       "stopped: the refusals are counted in stats (unavailable %lld)", stat_total("unavailable"));
    ok(sup_stop(), "stopped: SIGTERM, the supervisor exits 0");
    if (tcp && pg_ctl("restart", HARNESS_MAX_CONNECTIONS, 0) != 0)
        bail("PostgreSQL does not restart with the harness's settings");
}

/* ---- (2) frozen ---------------------------------------------------------------------- */

static void case_frozen(void)
{
    char *resp = NULL, v[64];
    long long ms1, ms2;
    int s1, s2;

    diag("(2) PostgreSQL frozen (SIGSTOP)");
    int port = sup_start(url, 1, 0);
    struct http_port up = {port, 200};
    if (!pgt_wait_until(health_is, &up, 10000))
        bail("health is not 200 before the freeze");
    is_int(ot_config_int(control, "health_timeout_s"), 2,
           "frozen: PGCORRAL_HEALTH_TIMEOUT sets health_timeout_s (2)");

    int n = pg_freeze();
    s1 = timed_get(port, "/api/v1/health", &ms1, &resp);
    ok(s1 == 503 && ms1 < 2500,
       "frozen (%d processes): health answers 503 within the 2 s health timeout (%d in %lld ms)", n,
       s1, ms1);
    ok(resp && strstr(resp, "\"database\":\"timeout\"") && header(resp, "Retry-After", v, sizeof v),
       "frozen: ... with \"database\":\"timeout\" and Retry-After");
    free(resp);
    /* Its connection was given up, so this one waits for a new connection that hangs. */
    s2 = timed_get(port, "/api/v1/health", &ms2, &resp);
    ok(s2 == 503 && ms2 < 2500, "frozen: the next check too (%d in %lld ms)", s2, ms2);
    free(resp);
    long long busy = pools_total("in_use");
    ok(busy == 0, "frozen: no connection is left in use by the checks that timed out (%lld)", busy);

    long long t_thaw = pgt_now_ms();
    pg_thaw();
    bool back = pgt_wait_until(health_is, &up, 15000);
    diag("health 200 again %lld ms after the thaw", pgt_now_ms() - t_thaw);
    ok(back, "thawed: health answers 200 again");
    long long in_use = pools_total("in_use"), waiting = pools_total("waiting");
    ok(in_use == 0 && waiting == 0,
       "thawed: ctl pools shows no connection stuck in use (%lld, "
       "%lld waiting)",
       in_use, waiting);
    ok(sup_stop(), "frozen: SIGTERM, the supervisor exits 0");
}

/* ---- (3) smaller max_connections ----------------------------------------------------- */

static bool jobs_reached(void *arg)
{
    return stat_total("jobs_done") >= *(long long *)arg;
}

static bool budget_grew_back(void *arg)
{
    json_t *grew = log_msgs("Connection budget grows back to fit the server");
    bool done = json_array_size(grew) > 0;
    json_decref(grew);
    return done;
}

static void case_smaller_server(void)
{
    struct ot_sampler sampler;
    struct ot_wrk wrk;
    struct ot_wrk_result wr;
    const int web = 1, jobs = 2, budget = (web + jobs) * LIMIT + 1;

    diag("(3) PostgreSQL restarted with max_connections=%d", SMALL_MAX_CONNECTIONS);
    int port = sup_start(url, web, jobs);
    is_int(budget_value("slots"), budget, "smaller server: B = (%d + %d) x %d + 1 = %d", web, jobs,
           LIMIT, budget);

    if (pg_ctl("restart", SMALL_MAX_CONNECTIONS, 0) != 0)
        bail("pg_ctl restart with max_connections=%d failed", SMALL_MAX_CONNECTIONS);
    PGconn *db = jt_connect(url);
    long long max = pgt_query_ll(db, "SELECT current_setting('max_connections')::int");
    long long reserved =
        pgt_query_ll(db, "SELECT current_setting('superuser_reserved_connections')::int + "
                         "coalesce(current_setting('reserved_connections', true)::int, 0)");
    long long usable = max - reserved;
    diag("server: max_connections %lld, reserved %lld: %lld usable, budget %d", max, reserved,
         usable, budget);

    /* Ours on the test database, every 20 ms, not counting the sampler. */
    ot_sampler_start(&sampler, url,
                     "SELECT count(*) FROM pg_stat_activity WHERE datname = '" DB "'"
                     " AND application_name LIKE 'pgcorral%' AND pid <> pg_backend_pid()",
                     20);
    long long done0 = stat_total("jobs_done");
    jt_exec(db, "SELECT count(pgcorral.add_job('sleep', '{\"ms\":150}'::jsonb))"
                " FROM generate_series(1, 120)");
    ot_wrk_start(&wrk, port, "/api/v1/health", 8, 60);
    long long want = done0 + 60;
    bool loaded = pgt_wait_until(jobs_reached, &want, 30000);
    ot_wrk_stop(&wrk, &wr);
    ot_sampler_stop(&sampler);
    int peak = 0, nsamples = atomic_load(&sampler.nsamples);
    for (int i = 0; i < nsamples; i++)
        if (sampler.samples[i].n > peak)
            peak = sampler.samples[i].n;
    ot_sampler_free(&sampler);
    diag("under load: %lld jobs done, %ld HTTP requests; our connections peaked at %d in %d "
         "samples",
         stat_total("jobs_done") - done0, wr.requests, peak, nsamples);
    ok(loaded && nsamples >= 20, "smaller server: jobs and HTTP load ran (%d samples)", nsamples);
    ok(peak <= usable && peak >= usable - 2,
       "smaller server: our connections stayed at or under max_connections - reserved = %lld "
       "(peak %d)",
       usable, peak);
    json_t *shrunk = log_msgs("Connection budget shrunk to fit the server");
    json_t *first = json_array_get(shrunk, 0);
    ok(json_array_size(shrunk) == 1 &&
           json_integer_value(json_object_get(first, "usable")) == usable,
       "smaller server: the shrink is logged once (%zu lines), usable %lld",
       json_array_size(shrunk), json_integer_value(json_object_get(first, "usable")));
    json_decref(shrunk);
    is_int(budget_value("usable"), usable, "smaller server: ctl budget shows the usable slots");
    PQfinish(db);

    if (pg_ctl("restart", HARNESS_MAX_CONNECTIONS, 0) != 0)
        bail("pg_ctl restart with max_connections=%d failed", HARNESS_MAX_CONNECTIONS);
    struct http_port up = {port, 200};
    bool back =
        pgt_wait_until(health_is, &up, 10000) && pgt_wait_until(budget_grew_back, NULL, 10000);
    long long usable_after = budget_value("usable");
    ok(back && usable_after == budget, "restored server: the budget grows back to %d (usable %lld)",
       budget, usable_after);
    ok(sup_stop(), "smaller server: SIGTERM, the supervisor exits 0");
}

int main(void)
{
    tap_timeout(180);
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    rt_log_set_level(RT_LOG_ERROR);
    uv_loop_init(&loop_);
    control = pgt_tmp_path("t962.sock");
    logfile = pgt_tmp_path("t962.log");
    url = jt_create_db(DB);
    atexit(restore_cluster);
    plan(33);

    refusal_in_process();
    case_stopped();
    case_frozen();
    case_smaller_server();

    uv_run(&loop_, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop_), 0, "in-process: every handle was closed");
    restore_cluster();
    unlink(logfile);
    return done_testing();
}
