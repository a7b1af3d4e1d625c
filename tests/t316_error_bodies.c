/*
 * 5xx answers keep the database to themselves, on the real binary: a plugin route whose
 * statement fails answers 500 {"error":"internal error","error_id":ID} and the log line
 * with the same ID has the database's message; a jobs route whose function is missing
 * answers 503 with an id and no database text (a 400 keeps its specific message); with the
 * database stopped, /api/v1/health answers 503 "database unavailable" (its "database"
 * reason code kept) and a plugin route 5xx, neither naming the socket, port or libpq's
 * words. The database is started again before the test ends, whatever happens.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"

/* The command that starts the test cluster again (as scripts/with-test-pg.sh did), in its
 * own session so that no kill of our process group reaches the server. */
static char pg_start_cmd[2048];
static volatile sig_atomic_t pg_down;

/* Starts the test cluster if this test stopped it. Returns whether it is up. */
static bool pg_up(void)
{
    if (!pg_down)
        return true;
    if (system(pg_start_cmd) != 0)
        return false;
    pg_down = 0;
    return true;
}

static void pg_up_atexit(void)
{
    if (pg_down && !pg_up())
        fprintf(stderr, "t316: could not start the test cluster again: %s\n", pg_start_cmd);
}

/* The test's timeout: the cluster first (fork and exec only: a signal handler), then the
 * usual timeout. */
static void on_alarm(int sig)
{
    if (pg_down) {
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/sh", "sh", "-c", pg_start_cmd, (char *)NULL);
            _exit(127);
        }
        if (pid > 0)
            waitpid(pid, NULL, 0);
    }
    tap_on_alarm(sig);
}

static bool pg_stop(void)
{
    char cmd[1024];
    const char *bin = getenv("PGC_TEST_PGBIN"), *dir = getenv("PGC_TEST_PGDIR");
    snprintf(cmd, sizeof cmd, "%s%s/pg_ctl -D %s/data -m fast -w -t 60 stop >/dev/null 2>&1",
             geteuid() == 0 ? "runuser -u postgres -- " : "", bin, dir);
    pg_down = 1;
    return system(cmd) == 0;
}

/* The log line of the supervisor's output whose error_id is id, or NULL (caller decrefs). */
static json_t *line_with_id(struct pgt_proc *p, const char *id)
{
    long long end = pgt_now_ms() + 5000;
    for (;;) {
        pgt_proc_drain(p);
        json_t *lines = ot_log_lines(p->log, NULL), *l, *found = NULL;
        size_t i;
        json_array_foreach(lines, i, l)
        {
            const char *e = json_string_value(json_object_get(l, "error_id"));
            if (e && strcmp(e, id) == 0 && !found)
                found = json_incref(l);
        }
        json_decref(lines);
        if (found || pgt_now_ms() > end)
            return found;
        poll(NULL, 0, 20);
    }
}

/* The error_id of a body {"error":...,"error_id":ID} (a static copy), or "". */
static const char *body_id(const char *body)
{
    static char id[64];
    json_t *doc = body ? json_loads(body, 0, NULL) : NULL;
    snprintf(id, sizeof id, "%s",
             json_string_value(json_object_get(doc, "error_id"))
                 ? json_string_value(json_object_get(doc, "error_id"))
                 : "");
    json_decref(doc);
    return id;
}

/* Whether body names nothing of the database: socket folder, port, libpq's words. */
static bool body_clean(const char *body)
{
    const char *dir = getenv("PGC_TEST_PGDIR"), *port = getenv("PGC_TEST_PGPORT");
    static const char *const words[] = {"connection",   "socket",   "server",   "refused", "port",
                                        "No such file", "postgres", ".s.PGSQL", "host"};
    char colon_port[16];
    snprintf(colon_port, sizeof colon_port, ":%s", port);
    /* (the bare port number could match the pid in the body by chance) */
    if (!body || strstr(body, dir) || strstr(body, colon_port))
        return false;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strstr(body, words[i]))
            return false;
    return true;
}

static void test_route_error(struct ts_sup *s)
{
    struct wt_resp r;
    char rid[160], want[128];
    int st = ts_req(s->port, "GET", "/o/bigint?v=abc", NULL, NULL, &r);
    const char *id = body_id(r.body);

    is_int(st, 500, "a plugin route whose statement fails answers 500");
    snprintf(want, sizeof want, "{\"error\":\"internal error\",\"error_id\":\"%s\"}", id);
    ok(ts_is_hex(id, RT_ERROR_ID_LEN) && r.body && strcmp(r.body, want) == 0,
       "... {\"error\":\"internal error\",\"error_id\":ID}, nothing else: %s",
       r.body ? r.body : "");
    ok(r.body && !strstr(r.body, "bigint") && !strstr(r.body, "abc") && !strstr(r.body, "syntax"),
       "... without the database's message");
    wt_header(&r, "X-Request-Id", rid, sizeof rid);
    json_t *l = line_with_id(&s->p, id);
    const char *err = json_string_value(json_object_get(l, "error"));
    ok(l && err && strstr(err, "invalid input syntax for type bigint: \"abc\""),
       "the log line with error_id %s has the database's message: %s", id, err ? err : "none");
    ok(l && strcmp(json_string_value(json_object_get(l, "level")), "error") == 0 &&
           json_string_value(json_object_get(l, "sqlstate")) &&
           strcmp(json_string_value(json_object_get(l, "sqlstate")), "22P02") == 0 &&
           json_string_value(json_object_get(l, "request_id")) &&
           strcmp(json_string_value(json_object_get(l, "request_id")), rid) == 0,
       "... at level error, with the SQLSTATE and the request's X-Request-Id");
    json_decref(l);
    wt_resp_free(&r);
}

static void test_jobs_errors(struct ts_sup *s, const char *url)
{
    struct wt_resp r;
    int st = ts_req(s->port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"\"}", &r);

    is_int(st, 400, "jobs: an empty task answers 400");
    ok(r.body && strstr(r.body, "task") && !strstr(r.body, "error_id"),
       "... with its specific message: %s", r.body ? r.body : "");
    wt_resp_free(&r);

    /* The enqueue function gone (a schema from another version, say). */
    PGconn *db = jt_connect(url);
    jt_exec(db, "DROP FUNCTION pgcorral.add_job_req");
    PQfinish(db);
    st = ts_req(s->port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"t316\",\"force\":true}", &r);
    const char *id = body_id(r.body);
    ok(st >= 500 && ts_is_hex(id, RT_ERROR_ID_LEN),
       "jobs: a database failure answers %d with "
       "an error id: %s",
       st, r.body ? r.body : "");
    ok(r.body && !strstr(r.body, "does not exist") && !strstr(r.body, "add_job_req") &&
           !strstr(r.body, "function"),
       "... without the database's message");
    json_t *l = line_with_id(&s->p, id);
    const char *err = json_string_value(json_object_get(l, "error"));
    ok(err && strstr(err, "add_job_req") && strstr(err, "does not exist"),
       "... the log line with that id has it: %s", err ? err : "none");
    json_decref(l);
    wt_resp_free(&r);
}

static void test_database_down(struct ts_sup *s)
{
    struct wt_resp r;
    int st;

    if (!ok(pg_stop(), "the test cluster stops (pg_ctl stop)"))
        return;
    st = ts_req(s->port, "GET", "/api/v1/health", NULL, NULL, &r);
    is_int(st, 503, "down: /api/v1/health answers 503");
    json_t *doc = r.body ? json_loads(r.body, 0, NULL) : NULL;
    const char *id = body_id(r.body);
    ok(doc &&
           strcmp(json_string_value(json_object_get(doc, "error")), "database unavailable") == 0 &&
           strcmp(json_string_value(json_object_get(doc, "database")), "unreachable") == 0 &&
           strcmp(json_string_value(json_object_get(doc, "status")), "error") == 0,
       "down: ... \"error\":\"database unavailable\", its \"database\" reason code kept");
    ok(body_clean(r.body), "down: ... no socket folder, port or libpq text: %s",
       r.body ? r.body : "");
    json_t *l = line_with_id(&s->p, id);
    const char *err = json_string_value(json_object_get(l, "error"));
    ok(err && *err, "down: the log line with error_id %s says why: %s", id, err ? err : "none");
    json_decref(l);
    json_decref(doc);
    char first[64];
    snprintf(first, sizeof first, "%s", id);
    wt_resp_free(&r);

    /* The same failure again at once: the same id, no second line. The first check met the
     * refused connect; from then on the pool is in its outage and refuses at once, a
     * failure of its own: compare two of those. */
    wt_resp_free(&r);
    ts_req(s->port, "GET", "/api/v1/health", NULL, NULL, &r);
    snprintf(first, sizeof first, "%s", body_id(r.body) ? body_id(r.body) : "");
    wt_resp_free(&r);
    ts_req(s->port, "GET", "/api/v1/health", NULL, NULL, &r);
    is_str(body_id(r.body), first, "down: a second health check at once names the same line");
    wt_resp_free(&r);
    ts_req(s->port, "GET", "/api/v1/ping", NULL, NULL, &r); /* a round trip: logs are out */
    wt_resp_free(&r);
    pgt_proc_drain(&s->p);
    char needle[80];
    snprintf(needle, sizeof needle, "\"error_id\":\"%s\"", first);
    is_int(ts_count(s->p.log, needle), 1, "down: ... which was logged once");

    st = ts_req(s->port, "GET", "/o/bigint?v=1", NULL, NULL, &r);
    id = body_id(r.body);
    ok(st >= 500 && ts_is_hex(id, RT_ERROR_ID_LEN) && body_clean(r.body),
       "down: a plugin route answers %d with an error id and nothing of the database: %s", st,
       r.body ? r.body : "");
    l = line_with_id(&s->p, id);
    ok(l != NULL, "down: ... and its log line has that id");
    json_decref(l);
    wt_resp_free(&r);

    ok(pg_up(), "the test cluster starts again");
    long long end = pgt_now_ms() + 20000;
    st = 0;
    while (st != 200 && pgt_now_ms() < end) {
        st = ts_req(s->port, "GET", "/api/v1/health", NULL, NULL, &r);
        wt_resp_free(&r);
        if (st != 200)
            poll(NULL, 0, 100);
    }
    is_int(st, 200, "up again: health answers 200");
}

int main(void)
{
    const char *url;
    char env_url[1200];
    struct ts_sup s;

    tap_timeout(120);
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    pgt_db_url();
    if (!getenv("PGC_TEST_PGDIR") || !getenv("PGC_TEST_PGBIN") || !getenv("PGC_TEST_PGPORT"))
        bail("PGC_TEST_PGDIR / PGC_TEST_PGBIN / PGC_TEST_PGPORT not set: run through "
             "scripts/with-test-pg.sh");
    snprintf(pg_start_cmd, sizeof pg_start_cmd,
             "setsid %s%s/pg_ctl -D %s/data -l %s/postgres.log -w -t 60 -o \"-p %s -k %s -c "
             "listen_addresses='' -c max_connections=200 -c fsync=off\" start >/dev/null 2>&1",
             geteuid() == 0 ? "runuser -u postgres -- " : "", getenv("PGC_TEST_PGBIN"),
             getenv("PGC_TEST_PGDIR"), getenv("PGC_TEST_PGDIR"), getenv("PGC_TEST_PGPORT"),
             getenv("PGC_TEST_PGDIR"));
    atexit(pg_up_atexit);

    url = jt_create_db("pgct_t316");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *env[] = {env_url, NULL};
    char *args[] = {"--jobs",      "0",        "--listen",
                    "127.0.0.1:0", "--plugin", (char *)jt_build_plugin("obs", NULL),
                    NULL};
    if (!ts_start(&s, "t316.sock", 1, args, env))
        bail("the supervisor did not start");
    test_route_error(&s);
    test_jobs_errors(&s, url);
    test_database_down(&s);
    ok(ts_stop(&s), "the supervisor stops cleanly");
    pgt_proc_cleanup(&s.p);
    jt_remove_plugins();
    return done_testing();
}
