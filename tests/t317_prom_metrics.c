/*
 * /metrics of the real binary (2 web workers, 1 job worker, a plugin) follows the
 * Prometheus conventions: pgcorral_http_requests_total{code,method,route} with route the
 * pattern (a plugin's "/o/items/:id", "unmatched" for 404s: never the path), the request
 * duration histogram by route, workers by role and state, no pid label anywhere, process_*
 * of the supervisor and of every worker; promtool accepts it. A worker killed with SIGKILL
 * takes none of its series with it: they are folded into the retired totals, labels and all.
 */
#include <time.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"

/* The value of the sample line that starts with series (name and labels), or -1. */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -1;
}

/* GET /metrics; the body (caller frees) or NULL. */
static char *scrape(int port)
{
    struct wt_resp r;
    char *body = NULL;
    if (wt_get(port, "/metrics", &r) == 200)
        body = r.body ? strdup(r.body) : NULL;
    wt_resp_free(&r);
    return body;
}

/* `promtool check metrics` on text: its exit status (-1 when it cannot run), output in out. */
static int promtool_check(const char *text, char *out, size_t n)
{
    char path[] = "/tmp/t317-metrics-XXXXXX", cmd[256];
    int fd = mkstemp(path), st;
    FILE *f;
    size_t len;

    if (fd < 0)
        return -1;
    f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    f = popen(cmd, "r");
    if (!f) {
        unlink(path);
        return -1;
    }
    len = fread(out, 1, n - 1, f);
    out[len] = '\0';
    st = pclose(f);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Whether every process_* family has a sample for each of the four processes. */
static bool process_metrics(const char *text)
{
    static const char *const fams[] = {"process_cpu_seconds_total", "process_resident_memory_bytes",
                                       "process_open_fds", "process_start_time_seconds"};
    static const char *const who[] = {"{role=\"supervisor\"}", "{role=\"web\",worker=\"0\"}",
                                      "{role=\"web\",worker=\"1\"}", "{role=\"job\",worker=\"0\"}"};
    char series[128];
    bool good = true;
    double now = (double)time(NULL);

    for (size_t f = 0; f < 4; f++) {
        for (size_t w = 0; w < 4; w++) {
            snprintf(series, sizeof series, "%s%s", fams[f], who[w]);
            double v = value_of(text, series);
            bool fine = f == 3 ? v > now - 3600 && v < now + 5 : f == 0 ? v >= 0 : v > 0;
            if (!fine) {
                diag("  %s = %g", series, v);
                good = false;
            }
        }
    }
    return good;
}

int main(void)
{
    char env_url[1200], out[4096];
    struct ts_sup s;
    struct wt_resp r;
    char *text;

    tap_timeout(120);
    signal(SIGPIPE, SIG_IGN);
    pgt_db_url();
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", jt_create_db("pgct_t317"));
    char *env[] = {env_url, NULL};
    char *args[] = {"--jobs",      "1",        "--listen",
                    "127.0.0.1:0", "--plugin", (char *)jt_build_plugin("obs", NULL),
                    NULL};
    if (!ts_start(&s, "t317.sock", 2, args, env))
        bail("the supervisor did not start");

    for (int i = 0; i < 3; i++) {
        wt_get(s.port, "/api/v1/ping", &r);
        wt_resp_free(&r);
    }
    wt_get(s.port, "/o/items/1", &r);
    wt_resp_free(&r);
    wt_get(s.port, "/o/items/2", &r);
    wt_resp_free(&r);
    wt_get(s.port, "/nope/xyz", &r);
    wt_resp_free(&r);
    ts_req(s.port, "POST", "/api/v1/jobs", NULL,
           "{\"task\":\"t317\",\"run_at\":\"2999-01-01\",\"force\":true}", &r);
    json_t *job = r.body ? json_loads(r.body, 0, NULL) : NULL;
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld",
             (long long)json_integer_value(json_object_get(job, "id")));
    json_decref(job);
    wt_resp_free(&r);
    wt_get(s.port, path, &r);
    wt_resp_free(&r);

    text = scrape(s.port);
    if (!text)
        bail("GET /metrics failed");
    is_int((long long)value_of(text, "pgcorral_http_requests_total{code=\"200\",method=\"GET\","
                                     "route=\"/api/v1/ping\"}"),
           3, "3 pings: {code=\"200\",method=\"GET\",route=\"/api/v1/ping\"} over both workers");
    is_int((long long)value_of(text, "pgcorral_http_requests_total{code=\"200\",method=\"GET\","
                                     "route=\"/o/items/:id\"}"),
           2, "two plugin requests count under the route's pattern /o/items/:id");
    ok(!strstr(text, "/o/items/1") && !strstr(text, "/nope/xyz"), "no path is a label");
    is_int((long long)value_of(text, "pgcorral_http_requests_total{code=\"404\",method=\"GET\","
                                     "route=\"unmatched\"}"),
           1, "the 404 is route=\"unmatched\"");
    is_int((long long)value_of(text, "pgcorral_http_requests_total{code=\"201\",method=\"POST\","
                                     "route=\"/api/v1/jobs\"}"),
           1, "POST /api/v1/jobs 201");
    is_int((long long)value_of(text, "pgcorral_http_requests_total{code=\"200\",method=\"GET\","
                                     "route=\"/api/v1/jobs/:id\"}"),
           1, "GET /api/v1/jobs/N counts as /api/v1/jobs/:id");
    is_int((long long)value_of(text, "pgcorral_http_request_duration_seconds_count{route=\"/o/"
                                     "items/:id\"}"),
           2, "pgcorral_http_request_duration_seconds by route");
    ok(value_of(text, "pgcorral_http_request_duration_seconds_bucket{route=\"/o/items/:id\","
                      "le=\"+Inf\"}") == 2,
       "... with its +Inf bucket");
    ok(!strstr(text, "pid=") && !strstr(text, "pgcorral_worker_info"), "no pid label anywhere");
    is_int((long long)value_of(text, "pgcorral_workers{role=\"web\",state=\"ready\"}"), 2,
           "pgcorral_workers{role=\"web\",state=\"ready\"} 2");
    is_int((long long)value_of(text, "pgcorral_workers{role=\"job\",state=\"ready\"}"), 1,
           "pgcorral_workers{role=\"job\",state=\"ready\"} 1");
    ok(process_metrics(text),
       "process_cpu_seconds_total, _resident_memory_bytes, _open_fds, _start_time_seconds for "
       "the supervisor, web 0, web 1 and job 0");
    ok(strstr(text, "pgcorral_build_info{version=\"") != NULL, "pgcorral_build_info is there");
    ok(!strstr(text, "le=\"0.000000\"") && strstr(text, "le=\"2e-06\""),
       "bucket bounds in their shortest form");
    int st = promtool_check(text, out, sizeof out);
    if (st == -1 || system("command -v promtool >/dev/null 2>&1") != 0)
        diag("promtool not installed (Debian package prometheus): not checked");
    else if (!ok(st == 0, "promtool check metrics accepts it"))
        diag("  promtool exit %d: %s", st, out);
    free(text);

    /* SIGKILL a web worker: its answers stay counted under their labels. */
    struct ot_worker ws[8];
    int n = ot_workers(s.control, ws, 8);
    pid_t victim = 0;
    for (int i = 0; i < n; i++)
        if (strcmp(ws[i].role, "web") == 0 && ws[i].index == 0)
            victim = ws[i].pid;
    ok(victim > 0 && kill(victim, SIGKILL) == 0, "web 0 (pid %d) killed", (int)victim);
    long long end = pgt_now_ms() + 15000;
    bool back = false;
    while (!back && pgt_now_ms() < end) {
        n = ot_workers(s.control, ws, 8);
        for (int i = 0; i < n; i++)
            back |= strcmp(ws[i].role, "web") == 0 && ws[i].index == 0 && ws[i].pid != victim &&
                    strcmp(ws[i].state, "ready") == 0;
        if (!back)
            poll(NULL, 0, 50);
    }
    ok(back, "web 0 is back, a new process");
    text = scrape(s.port);
    ok(text &&
           value_of(text, "pgcorral_http_requests_total{code=\"200\",method=\"GET\","
                          "route=\"/api/v1/ping\"}") == 3 &&
           value_of(text, "pgcorral_http_requests_total{code=\"200\",method=\"GET\","
                          "route=\"/o/items/:id\"}") == 2 &&
           value_of(text, "pgcorral_http_request_duration_seconds_count{route=\"/o/items/:id\"}") ==
               2,
       "after the kill the series still say 3 pings and 2 /o/items/:id (retired, not lost)");
    ok(text && process_metrics(text), "process_* of the new web 0 too");
    free(text);

    ok(ts_stop(&s), "the supervisor stops cleanly");
    pgt_proc_cleanup(&s.p);
    jt_remove_plugins();
    return done_testing();
}
