/*
 * The access log and request ids, on the real binary. --access-log PATH gets one JSON line
 * per request (ts, method, path without its query, status, bytes, duration_ms, request_id,
 * worker); X-Request-Id is taken from a valid request header (1-128 of [A-Za-z0-9._-]),
 * else made up (16 hex digits), and always sent back; the request id reaches the
 * slow-query log line of a statement the request ran and the jobs it enqueued
 * (POST /api/v1/jobs, pgc_enqueue in a route). SIGUSR1 reopens the file after rotation.
 * A file that does not keep up (a pipe nobody reads) never stalls answers: lines are
 * dropped and counted (pgcorral_access_log_dropped_total). "-" is stderr.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"

/* The access log line of request id rid in the file at path, waiting up to 5 s (caller
 * decrefs), or NULL. */
static json_t *line_for(const char *path, const char *rid)
{
    long long end = pgt_now_ms() + 5000;
    for (;;) {
        char *text = ot_read_file(path);
        json_t *found = NULL;
        for (const char *l = text; l && *l && !found;) {
            const char *e = strchr(l, '\n');
            json_t *doc = json_loadb(l, e ? (size_t)(e - l) : strlen(l), 0, NULL);
            const char *id = json_string_value(json_object_get(doc, "request_id"));
            if (id && strcmp(id, rid) == 0)
                found = json_incref(doc);
            json_decref(doc);
            l = e ? e + 1 : NULL;
        }
        free(text);
        if (found || pgt_now_ms() > end)
            return found;
        poll(NULL, 0, 20);
    }
}

/* GET path with X-Request-Id: given (NULL: none); the id the answer came back with. */
static const char *get_with_id(int port, const char *path, const char *given, int *status)
{
    static char rid[256];
    char hdr[512];
    struct wt_resp r;

    snprintf(hdr, sizeof hdr, "X-Request-Id: %s\r\n", given ? given : "");
    *status = ts_req(port, "GET", path, given ? hdr : NULL, NULL, &r);
    if (!wt_header(&r, "X-Request-Id", rid, sizeof rid))
        rid[0] = '\0';
    wt_resp_free(&r);
    return rid;
}

static void test_lines(struct ts_sup *s, const char *logpath)
{
    static const char *const keys[] = {"ts",          "method",     "path",   "status", "bytes",
                                       "duration_ms", "request_id", "worker", NULL};
    char long_ok[129], long_bad[130];
    int st;
    const char *rid = get_with_id(s->port, "/api/v1/ping?x=1", "abc.DEF_1-2", &st);
    json_t *l;

    is_int(st, 200, "ping with X-Request-Id: abc.DEF_1-2 answers 200");
    is_str(rid, "abc.DEF_1-2", "... and sends the id back");
    l = line_for(logpath, "abc.DEF_1-2");
    ok(l != NULL, "the access log has its line");
    bool keys_ok = json_object_size(l) == 8;
    for (int i = 0; keys[i]; i++)
        keys_ok &= json_object_get(l, keys[i]) != NULL;
    ok(keys_ok, "... with exactly ts, method, path, status, bytes, duration_ms, request_id, "
                "worker");
    const char *ts = json_string_value(json_object_get(l, "ts"));
    ok(ts && strlen(ts) == 24 && ts[10] == 'T' && ts[23] == 'Z',
       "... ts like "
       "2026-01-31T12:00:00.123Z: %s",
       ts ? ts : "");
    is_str(json_string_value(json_object_get(l, "method")), "GET", "... method GET");
    is_str(json_string_value(json_object_get(l, "path")), "/api/v1/ping",
           "... path without the query string");
    is_int(json_integer_value(json_object_get(l, "status")), 200, "... status 200");
    is_int(json_integer_value(json_object_get(l, "bytes")), 15, "... bytes 15 (the body)");
    ok(json_is_number(json_object_get(l, "duration_ms")) &&
           json_number_value(json_object_get(l, "duration_ms")) >= 0,
       "... a duration_ms");
    is_int(json_integer_value(json_object_get(l, "worker")), 0, "... worker 0");
    json_decref(l);

    rid = get_with_id(s->port, "/api/v1/ping", NULL, &st);
    ok(ts_is_hex(rid, 16), "no X-Request-Id: one is made up, 16 hex digits: %s", rid);
    l = line_for(logpath, rid);
    ok(l != NULL, "... and logged");
    json_decref(l);

    rid = get_with_id(s->port, "/nope", "bad id!", &st);
    ok(st == 404 && ts_is_hex(rid, 16), "an X-Request-Id with a space and '!' is replaced: %s",
       rid);
    l = line_for(logpath, rid);
    is_int(json_integer_value(json_object_get(l, "status")), 404, "... its line says 404");
    json_decref(l);
    memset(long_ok, 'a', 128);
    long_ok[128] = '\0';
    memset(long_bad, 'b', 129);
    long_bad[129] = '\0';
    rid = get_with_id(s->port, "/api/v1/ping", long_ok, &st);
    is_str(rid, long_ok, "a 128-character X-Request-Id is kept");
    rid = get_with_id(s->port, "/api/v1/ping", long_bad, &st);
    ok(ts_is_hex(rid, 16), "a 129-character one is replaced");
    rid = get_with_id(s->port, "/api/v1/ping", "a\"b", &st);
    ok(ts_is_hex(rid, 16), "one with a quote is replaced");
}

static void test_propagation(struct ts_sup *s, const char *url)
{
    struct wt_resp r;
    int st;
    PGconn *db = jt_connect(url);
    char sql[256];

    /* The slow-query log line names the request. */
    get_with_id(s->port, "/o/slow", "slow-t318", &st);
    is_int(st, 200, "GET /o/slow (a 300 ms statement) answers 200");
    long long end = pgt_now_ms() + 5000;
    json_t *slow = NULL;
    while (!slow && pgt_now_ms() < end) {
        pgt_proc_drain(&s->p);
        json_t *lines = ot_log_lines(s->p.log, "Slow query detected"), *l;
        size_t i;
        json_array_foreach(lines, i, l)
        {
            const char *id = json_string_value(json_object_get(l, "request_id"));
            if (id && strcmp(id, "slow-t318") == 0 && !slow)
                slow = json_incref(l);
        }
        json_decref(lines);
        if (!slow)
            poll(NULL, 0, 20);
    }
    ok(slow != NULL, "the slow-query log line has request_id slow-t318");
    is_str(json_string_value(json_object_get(slow, "caller")), "GET /o/slow",
           "... and the route as its caller");
    json_decref(slow);

    /* Jobs keep the request that enqueued them. */
    st = ts_req(s->port, "POST", "/api/v1/jobs", "X-Request-Id: job-t318\r\n",
                "{\"task\":\"t318\",\"force\":true}", &r);
    json_t *doc = r.body ? json_loads(r.body, 0, NULL) : NULL;
    long long id = json_integer_value(json_object_get(doc, "id"));
    json_decref(doc);
    wt_resp_free(&r);
    is_int(st, 201, "POST /api/v1/jobs with X-Request-Id: job-t318 answers 201");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND request_id = 'job-t318'", id);
    is_int(pgt_query_ll(db, sql), 1, "the job's request_id column is job-t318");
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", id);
    wt_get(s->port, path, &r);
    doc = r.body ? json_loads(r.body, 0, NULL) : NULL;
    is_str(json_string_value(json_object_get(doc, "request_id")), "job-t318", "GET %s shows it",
           path);
    json_decref(doc);
    wt_resp_free(&r);

    st = ts_req(s->port, "POST", "/o/enqueue", "X-Request-Id: route-t318\r\n", NULL, &r);
    doc = r.body ? json_loads(r.body, 0, NULL) : NULL;
    id = json_integer_value(json_object_get(doc, "id"));
    json_decref(doc);
    wt_resp_free(&r);
    is_int(st, 201, "a route that calls pgc_enqueue answers 201");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE id = %lld AND request_id = 'route-t318'",
             id);
    is_int(pgt_query_ll(db, sql), 1, "... and its job's request_id is the route's request");
    PQfinish(db);
}

static void test_reopen(struct ts_sup *s, const char *logpath)
{
    char rotated[256], rid[64];
    int st, n = 0;
    json_t *l = NULL;

    snprintf(rotated, sizeof rotated, "%s.1", logpath);
    ok(rename(logpath, rotated) == 0, "the access log is renamed (rotation)");
    kill(s->p.pid, SIGUSR1);
    /* The signal reaches the worker on its own time: ask until a line lands in the new
     * file. */
    long long end = pgt_now_ms() + 10000;
    while (!l && pgt_now_ms() < end) {
        snprintf(rid, sizeof rid, "after-rotate-%d", n++);
        get_with_id(s->port, "/api/v1/ping", rid, &st);
        char *text = ot_read_file(logpath);
        l = text && strstr(text, "after-rotate-") ? json_object() : NULL;
        free(text);
        if (!l)
            poll(NULL, 0, 100);
    }
    ok(l != NULL, "after SIGUSR1 lines go to a new file at the old path");
    json_decref(l);
    char *old = ot_read_file(rotated);
    ok(old && strstr(old, "abc.DEF_1-2"), "the rotated file keeps the earlier lines");
    free(old);
    unlink(rotated);
}

/* GET /metrics (no token in these runs); the body (caller frees) or NULL. */
static char *scrape(int port)
{
    struct wt_resp r;
    char *body = NULL;
    if (wt_get(port, "/metrics", &r) == 200 && r.body)
        body = strdup(r.body);
    wt_resp_free(&r);
    return body;
}

/* A FIFO nobody reads: the writer blocks, the loop does not. */
static void test_slow_file(const char *url)
{
    const char *fifo = pgt_tmp_path("access.fifo");
    char env_url[1200], *env[] = {env_url, NULL};
    char *args[] = {"--jobs", "0", "--listen", "127.0.0.1:0", "--access-log", (char *)fifo, NULL};
    struct ts_sup s;
    int rfd, good = 0;
    static const char ping[] = "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\n\r\n";

    unlink(fifo);
    if (mkfifo(fifo, 0600) < 0 || (rfd = open(fifo, O_RDONLY | O_NONBLOCK)) < 0)
        bail("mkfifo %s: %s", fifo, strerror(errno));
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    if (!ok(ts_start(&s, "t318b.sock", 1, args, env), "slow file: starts with --access-log FIFO"))
        return;
    /* 16000 pipelined pings: ~2.5 MB of log lines for a 64 KiB pipe and a 1 MiB buffer. */
    long long t0 = pgt_now_ms();
    for (int batch = 0; batch < 16; batch++) {
        /* (a connection serves 1000 requests at most) */
        struct wt_conn *c = wt_open(s.port);
        for (int i = 0; i < 1000; i++)
            wt_sends(c->fd, ping);
        for (int i = 0; i < 1000; i++) {
            struct wt_resp r;
            if (wt_read_resp(c, &r) && r.status == 200)
                good++;
            wt_resp_free(&r);
        }
        wt_close(c);
    }
    is_int(good, 16000,
           "slow file: all 16000 pings answered (%lld ms) while nobody reads the "
           "log",
           pgt_now_ms() - t0);
    char *text = scrape(s.port);
    double dropped = -1;
    if (text) {
        const char *p = strstr(text, "\npgcorral_access_log_dropped_total ");
        dropped = p ? strtod(p + 35, NULL) : -1;
    }
    ok(dropped > 0, "slow file: pgcorral_access_log_dropped_total counts dropped lines (%g)",
       dropped);
    free(text);
    ok(ts_stop(&s), "slow file: the supervisor still stops cleanly");
    ok(ts_count(s.p.log, "lines dropped") >= 1, "slow file: the drop is logged");
    pgt_proc_cleanup(&s.p);
    close(rfd);
    unlink(fifo);
}

static void test_stderr(const char *url)
{
    char env_url[1200], *env[] = {env_url, NULL};
    char *args[] = {"--jobs", "0", "--listen", "127.0.0.1:0", "--access-log", "-", NULL};
    struct ts_sup s;
    int st;

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    if (!ok(ts_start(&s, "t318c.sock", 1, args, env), "stderr: starts with --access-log -"))
        return;
    get_with_id(s.port, "/api/v1/ping", "stderr-t318", &st);
    bool seen = false;
    long long end = pgt_now_ms() + 5000;
    while (!seen && pgt_now_ms() < end) {
        pgt_proc_drain(&s.p);
        seen = s.p.log && strstr(s.p.log, "\"request_id\":\"stderr-t318\",\"worker\":0}");
        if (!seen)
            poll(NULL, 0, 20);
    }
    ok(seen, "stderr: the access line is on the supervisor's stderr");
    ok(ts_stop(&s), "stderr: the supervisor stops cleanly");
    pgt_proc_cleanup(&s.p);
}

int main(void)
{
    const char *url, *logpath;
    char env_url[1200];
    struct ts_sup s;

    tap_timeout(150);
    signal(SIGPIPE, SIG_IGN);
    pgt_db_url();
    url = jt_create_db("pgct_t318");
    logpath = strdup(pgt_tmp_path("access.log"));
    unlink(logpath);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *env[] = {env_url, NULL};
    char *args[] = {"--jobs",
                    "0",
                    "--listen",
                    "127.0.0.1:0",
                    "--access-log",
                    (char *)logpath,
                    "--slow-query-threshold",
                    "100",
                    "--plugin",
                    (char *)jt_build_plugin("obs", NULL),
                    NULL};
    if (!ts_start(&s, "t318.sock", 1, args, env))
        bail("the supervisor did not start");
    test_lines(&s, logpath);
    test_propagation(&s, url);
    test_reopen(&s, logpath);
    ok(ts_stop(&s), "the supervisor stops cleanly");
    pgt_proc_cleanup(&s.p);
    unlink(logpath);
    free((char *)logpath);

    test_slow_file(url);
    test_stderr(url);
    jt_remove_plugins();
    return done_testing();
}
