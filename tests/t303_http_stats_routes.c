/*
 * The web worker's statistics routes on both I/O backends, against a real shm segment:
 * GET /api/v1/stats (the control socket's stats JSON, counting the HTTP answers the
 * worker gave) and GET /metrics (Prometheus text: checked line by line for the exposition
 * format's rules, HELP and TYPE, cumulative histogram buckets; and by promtool when it is
 * installed).
 */
#include <ctype.h>
#include <jansson.h>
#include <math.h>

#include "tests/lib/webtest.h"

/* ---- a checker for the Prometheus text format 0.0.4 ---------------------------------- */

static bool valid_name(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
            return false;
    return true;
}

/* A family's state while checking. */
struct fam {
    char name[128];
    char type[16];
    bool help;
    /* histogram: the series being read (its labels without le) */
    char series[256];
    double last_le, last_cum, inf_count, count;
    bool saw_inf, saw_sum, saw_count, saw_bucket;
};

/* The labels of a sample line without its le pair, into out: the series of a histogram. */
static void series_key(const char *labels, size_t n, char *out, size_t outn)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outn;) {
        if ((i == 0 || labels[i - 1] == ',' || labels[i - 1] == '{') &&
            strncmp(labels + i, "le=\"", 4) == 0) {
            const char *q = memchr(labels + i + 4, '"', n - i - 4);
            i = q ? (size_t)(q - labels) + 1 : n;
            if (i < n && labels[i] == ',')
                i++;
            continue;
        }
        out[o++] = labels[i++];
    }
    while (o > 0 && out[o - 1] == ',')
        o--;
    out[o] = '\0';
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Closes the checks of a histogram family. */
static bool fam_finish(const struct fam *f, char *why, size_t n)
{
    if (strcmp(f->type, "histogram") != 0 || (!f->saw_bucket && !f->saw_sum && !f->saw_count))
        return true; /* a histogram family without series yet is fine */
    if (!f->saw_bucket || !f->saw_inf || !f->saw_sum || !f->saw_count) {
        snprintf(why, n, "%.100s: histogram without buckets, +Inf, _sum or _count", f->name);
        return false;
    }
    if (f->inf_count != f->count) {
        snprintf(why, n, "%.100s: +Inf bucket %g != _count %g", f->name, f->inf_count, f->count);
        return false;
    }
    return true;
}

/*
 * Checks text against the exposition format rules promtool enforces: HELP and TYPE once
 * per family before its samples, samples of a family together, valid names and values,
 * counters named *_total, histogram buckets with increasing le, non-decreasing counts, a
 * +Inf bucket equal to _count. Returns true, or false with the reason in why.
 */
static bool check_exposition(const char *text, char *why, size_t n)
{
    static struct fam seen[256];
    int nseen = 0;
    struct fam *cur = NULL;
    const char *line = text;

    if (!*text || text[strlen(text) - 1] != '\n') {
        snprintf(why, n, "does not end with a newline");
        return false;
    }
    while (*line) {
        const char *end = strchr(line, '\n');
        char l[1024];
        snprintf(l, sizeof l, "%.*s", (int)(end - line), line);
        line = end + 1;
        if (strncmp(l, "# HELP ", 7) == 0 || strncmp(l, "# TYPE ", 7) == 0) {
            char name[128] = "", rest[256] = "";
            bool is_help = l[2] == 'H';
            sscanf(l + 7, "%127s %255[^\n]", name, rest);
            if (!valid_name(name, strlen(name)) || !*rest) {
                snprintf(why, n, "bad line: %.100s", l);
                return false;
            }
            if (!cur || strcmp(cur->name, name) != 0) {
                if (cur && !fam_finish(cur, why, n))
                    return false;
                for (int i = 0; i < nseen; i++)
                    if (strcmp(seen[i].name, name) == 0) {
                        snprintf(why, n, "family %.100s appears twice", name);
                        return false;
                    }
                if (nseen == 256) {
                    snprintf(why, n, "too many families");
                    return false;
                }
                cur = &seen[nseen++];
                memset(cur, 0, sizeof *cur);
                snprintf(cur->name, sizeof cur->name, "%s", name);
                cur->last_le = -INFINITY;
            }
            if (is_help) {
                if (cur->help) {
                    snprintf(why, n, "two HELP lines for %.100s", name);
                    return false;
                }
                cur->help = true;
            } else {
                if (cur->type[0] || cur->saw_bucket) {
                    snprintf(why, n, "TYPE of %.100s twice or after samples", name);
                    return false;
                }
                if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram") &&
                    strcmp(rest, "summary") && strcmp(rest, "untyped")) {
                    snprintf(why, n, "unknown TYPE %.100s", rest);
                    return false;
                }
                snprintf(cur->type, sizeof cur->type, "%.15s", rest); /* one of the names above */
                if (strcmp(rest, "counter") == 0 && !ends_with(name, "_total")) {
                    snprintf(why, n, "counter %.100s not named *_total", name);
                    return false;
                }
            }
            continue;
        }
        if (l[0] == '#') {
            snprintf(why, n, "unexpected comment: %.100s", l);
            return false;
        }
        /* A sample: name[{labels}] value */
        size_t nl = strcspn(l, "{ ");
        const char *p = l + nl;
        char le[64] = "", key[256] = "";
        if (!valid_name(l, nl)) {
            snprintf(why, n, "bad metric name: %.100s", l);
            return false;
        }
        if (*p == '{') {
            const char *close = strchr(p, '}');
            const char *lep = strstr(p, "le=\"");
            if (!close) {
                snprintf(why, n, "unclosed labels: %.100s", l);
                return false;
            }
            if (lep && lep < close)
                sscanf(lep + 4, "%63[^\"]", le);
            series_key(p + 1, (size_t)(close - p - 1), key, sizeof key);
            p = close + 1;
        }
        if (*p != ' ') {
            snprintf(why, n, "no value: %.100s", l);
            return false;
        }
        char *vend;
        double v = strtod(p + 1, &vend);
        if (vend == p + 1 || *vend) {
            snprintf(why, n, "bad value: %.100s", l);
            return false;
        }
        char sname[128];
        snprintf(sname, sizeof sname, "%.*s", (int)nl, l);
        if (!cur || !cur->type[0]) {
            snprintf(why, n, "sample without TYPE: %.100s", l);
            return false;
        }
        if (strcmp(cur->type, "histogram") == 0) {
            char base[140];
            if (strcmp(key, cur->series) != 0) {
                /* A new series of the family (other labels): its buckets start again. */
                if (cur->saw_bucket && ends_with(sname, "_bucket") && cur->saw_count == false) {
                    snprintf(why, n, "series before %.100s has no _count", l);
                    return false;
                }
                snprintf(cur->series, sizeof cur->series, "%s", key);
                cur->last_le = -INFINITY;
                cur->last_cum = 0;
                cur->saw_inf = cur->saw_sum = cur->saw_count = false;
            }
            if (ends_with(sname, "_bucket")) {
                snprintf(base, sizeof base, "%s_bucket", cur->name);
                if (strcmp(sname, base) != 0 || !*le) {
                    snprintf(why, n, "bad bucket: %.100s", l);
                    return false;
                }
                double lev = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, NULL);
                if (lev <= cur->last_le || v < cur->last_cum) {
                    snprintf(why, n, "buckets not increasing / cumulative at %.100s", l);
                    return false;
                }
                cur->last_le = lev;
                cur->last_cum = v;
                cur->saw_bucket = true;
                if (isinf(lev)) {
                    cur->saw_inf = true;
                    cur->inf_count = v;
                }
            } else if (ends_with(sname, "_sum")) {
                cur->saw_sum = true;
            } else if (ends_with(sname, "_count")) {
                cur->saw_count = true;
                cur->count = v;
                if (!fam_finish(cur, why, n))
                    return false;
            } else {
                snprintf(why, n, "histogram sample %.100s", l);
                return false;
            }
        } else if (strcmp(sname, cur->name) != 0) {
            snprintf(why, n, "sample %.100s outside its family (%.100s)", sname, cur->name);
            return false;
        }
    }
    return cur ? fam_finish(cur, why, n) : true;
}

/* The value of the first sample line that starts with prefix, or NAN. */
static double sample(const char *text, const char *prefix)
{
    const char *p = text;
    size_t n = strlen(prefix);
    while (p && *p) {
        if (strncmp(p, prefix, n) == 0 && (p[n] == ' ' || p[n] == '{'))
            return strtod(strchr(p + n, ' ') + 1, NULL);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return NAN;
}

/* ---- the tests ----------------------------------------------------------------------- */

static void test_checker(void)
{
    char why[256];
    ok(!check_exposition("# TYPE x_total counter\nx_total 1\n# TYPE x_total counter\n", why,
                         sizeof why),
       "checker: rejects a family declared twice");
    ok(!check_exposition("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\n"
                         "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
                         why, sizeof why),
       "checker: rejects buckets that are not cumulative");
    ok(!check_exposition("# TYPE c counter\nc 1\n", why, sizeof why),
       "checker: rejects a counter not named *_total");
    ok(check_exposition("# HELP g A gauge.\n# TYPE g gauge\ng{a=\"b\"} 1.5\n", why, sizeof why),
       "checker: accepts a well-formed gauge");
    ok(check_exposition("# TYPE h histogram\nh_bucket{r=\"a\",le=\"1\"} 2\n"
                        "h_bucket{r=\"a\",le=\"+Inf\"} 3\nh_sum{r=\"a\"} 1\nh_count{r=\"a\"} 3\n"
                        "h_bucket{r=\"b\",le=\"1\"} 1\nh_bucket{r=\"b\",le=\"+Inf\"} 1\n"
                        "h_sum{r=\"b\"} 1\nh_count{r=\"b\"} 1\n",
                        why, sizeof why),
       "checker: accepts a histogram with a series per label value");
    ok(!check_exposition("# TYPE h histogram\nh_bucket{r=\"a\",le=\"1\"} 2\n"
                         "h_bucket{r=\"a\",le=\"+Inf\"} 3\nh_sum{r=\"a\"} 1\nh_count{r=\"a\"} 2\n",
                         why, sizeof why),
       "checker: rejects a labelled series whose _count is not its +Inf bucket");
}

static bool promtool_available(void)
{
    return system("command -v promtool >/dev/null 2>&1") == 0;
}

/* Runs `promtool check metrics` on text; returns its exit status. */
static int promtool_check(const char *text, char *out, size_t n)
{
    char path[] = "/tmp/t303-metrics-XXXXXX", cmd[256];
    int fd = mkstemp(path);
    FILE *p;
    size_t len = 0;
    int st;

    size_t left = strlen(text);
    const char *at = text;
    while (fd >= 0 && left > 0) {
        ssize_t w = write(fd, at, left);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        at += w;
        left -= (size_t)w;
    }
    if (fd < 0)
        return -1;
    close(fd);
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    p = popen(cmd, "r");
    if (!p)
        return -1;
    len = fread(out, 1, n - 1, p);
    out[len] = '\0';
    st = pclose(p);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_routes(struct shm_segment *seg, int port, const char *be)
{
    struct wt_resp r;
    json_t *doc, *totals, *workers;
    json_error_t jerr;
    char v[128], why[256];
    struct wt_conn *c;

    for (int i = 0; i < 3; i++) {
        is_int(wt_get(port, "/api/v1/ping", &r), 200, "%s: ping %d", be, i + 1);
        wt_resp_free(&r);
    }
    is_int(wt_get(port, "/nope", &r), 404, "%s: a 404", be);
    wt_resp_free(&r);

    is_int(wt_get(port, "/api/v1/stats", &r), 200, "%s: GET /api/v1/stats answers 200", be);
    is_str(wt_header(&r, "content-type", v, sizeof v), "application/json",
           "%s: stats is application/json", be);
    doc = json_loads(r.body ? r.body : "", 0, &jerr);
    ok(doc != NULL, "%s: stats is valid JSON", be);
    totals = json_object_get(doc, "totals");
    workers = json_object_get(doc, "workers");
    is_int(json_integer_value(json_object_get(totals, "http_requests")), 4,
           "%s: stats totals count the 4 answers before it", be);
    is_int(json_integer_value(json_object_get(totals, "http_2xx")), 3, "%s: ... 3 of them 2xx", be);
    is_int(json_integer_value(json_object_get(totals, "http_4xx")), 1, "%s: ... 1 of them 4xx", be);
    ok(json_array_size(workers) == 1 &&
           strcmp(json_string_value(json_object_get(json_array_get(workers, 0), "role")), "web") ==
               0,
       "%s: stats lists the web worker", be);
    json_decref(doc);
    wt_resp_free(&r);

    c = wt_open(port);
    wt_sends(c->fd, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp(c, &r) && r.status == 200, "%s: GET /metrics answers 200", be);
    is_str(wt_header(&r, "content-type", v, sizeof v), "text/plain; version=0.0.4; charset=utf-8",
           "%s: /metrics has the exposition format's content type", be);
    if (!ok(r.body && check_exposition(r.body, why, sizeof why),
            "%s: /metrics follows the text exposition format", be))
        diag("  %s", why);
    if (r.body) {
        ok(strstr(r.body, "# HELP pgcorral_http_requests_total ") &&
               strstr(r.body, "# TYPE pgcorral_http_requests_total counter\n"),
           "%s: counters have HELP and TYPE lines", be);
        ok(strstr(r.body, "pgcorral_http_requests_total{code=\"200\",method=\"GET\","
                          "route=\"/api/v1/ping\"} 3\n") != NULL,
           "%s: pgcorral_http_requests_total counts the 3 pings by code, method and route", be);
        ok(strstr(r.body, "pgcorral_http_requests_total{code=\"404\",method=\"GET\","
                          "route=\"unmatched\"} 1\n") != NULL,
           "%s: ... the 404 as route \"unmatched\" (the path is no label)", be);
        ok(strstr(r.body, "pgcorral_http_requests_total{code=\"200\",method=\"GET\","
                          "route=\"/api/v1/stats\"} 1\n") != NULL &&
               !strstr(r.body, "route=\"/nope\""),
           "%s: ... and the stats answer; no series of the unknown path", be);
        ok(!strstr(r.body, "pgcorral_http_4xx_total") && !strstr(r.body, "pgcorral_http_seconds"),
           "%s: the unlabelled pgcorral_http_4xx_total and pgcorral_http_seconds are gone", be);
        ok(strstr(r.body, "pgcorral_http_request_duration_seconds_count{route=\"/api/v1/ping\"} "
                          "3\n") &&
               strstr(r.body,
                      "pgcorral_http_request_duration_seconds_bucket{route=\"/api/v1/ping\","
                      "le=\"+Inf\"} 3\n"),
           "%s: the HTTP latency histogram by route: _count 3 and +Inf bucket 3 for ping", be);
        ok(sample(r.body, "pgcorral_http_request_duration_seconds_sum") > 0, "%s: ... and a _sum",
           be);
        ok(strstr(r.body, "le=\"2e-06\"") && !strstr(r.body, "le=\"0.000000\"") &&
               !strstr(r.body, "le=\"0.000002\""),
           "%s: bucket bounds in their shortest form (le=\"2e-06\", never 0.000000)", be);
        ok(!strstr(r.body, "pid=") && !strstr(r.body, "pgcorral_worker_info"),
           "%s: no pid label anywhere, no pgcorral_worker_info", be);
        ok(strstr(r.body, "pgcorral_workers{role=\"web\",state=\"ready\"} 1\n") &&
               strstr(r.body, "pgcorral_workers{role=\"job\",state=\"ready\"} 0\n"),
           "%s: pgcorral_workers counts workers by role and state", be);
        ok(strstr(r.body, "process_cpu_seconds_total{role=\"supervisor\"} ") &&
               strstr(r.body, "process_cpu_seconds_total{role=\"web\",worker=\"0\"} ") &&
               strstr(r.body, "process_resident_memory_bytes{role=\"web\",worker=\"0\"} ") &&
               strstr(r.body, "process_open_fds{role=\"web\",worker=\"0\"} ") &&
               strstr(r.body, "process_start_time_seconds{role=\"supervisor\"} "),
           "%s: process_* metrics of the segment's creator and of the web worker", be);
        is_int((long long)sample(r.body, "pgcorral_budget_slots"), seg->nslots,
               "%s: the budget gauge shows B", be);
        ok(strstr(r.body, "pgcorral_http_open_connections{role=\"web\",worker=\"0\"} 1\n") != NULL,
           "%s: the open HTTP connections gauge has role and worker labels", be);
        ok(strstr(r.body, "pgcorral_pool_in_use_connections{role=\"web\",worker=\"0\"} ") != NULL,
           "%s: pool gauges are there", be);
        ok(strstr(r.body, "pgcorral_jobs{queue=\"default\",state=\"ready\"} 3\n") &&
               strstr(r.body, "pgcorral_jobs{queue=\"default\",state=\"running\"} 2\n") &&
               strstr(r.body, "pgcorral_jobs{queue=\"default\",state=\"failed\"} 0\n"),
           "%s: queue depth by queue and state, from the segment", be);
        ok(strstr(r.body, "pgcorral_jobs{queue=\"we\\\"ird\\\\q\",state=\"scheduled\"} 1\n") !=
               NULL,
           "%s: a queue name's quote and backslash are escaped", be);
        ok(strstr(r.body, "pgcorral_job_claim_batch_bucket{le=\"14\"} 2\n") &&
               strstr(r.body, "pgcorral_job_claim_batch_bucket{le=\"6\"} 0\n") &&
               strstr(r.body, "pgcorral_job_claim_batch_sum 20\n"),
           "%s: the claim batch histogram counts jobs, not seconds", be);
        ok(strstr(r.body, "# TYPE pgcorral_job_wait_seconds histogram\n") != NULL,
           "%s: the enqueue-to-start histogram is there", be);
        if (promtool_available()) {
            char out[4096];
            int st = promtool_check(r.body, out, sizeof out);
            if (!ok(st == 0, "%s: promtool check metrics accepts /metrics", be))
                diag("  promtool exit %d: %s", st, out);
        } else {
            diag("promtool not installed (Debian package prometheus): only the built-in "
                 "format checker ran");
        }
    }
    wt_resp_free(&r);
    wt_sends(c->fd, "HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    ok(wt_read_resp_ex(c, &r, WT_WAIT_MS, true, false) && r.status == 200 &&
           atol(wt_header(&r, "content-length", v, sizeof v)) > 1000,
       "%s: HEAD /metrics gives the length only", be);
    wt_resp_free(&r);
    wt_close(c);
}

int main(void)
{
    enum web_io_mode modes[3];
    const char *names[3];
    int n;

    tap_timeout(60);
    signal(SIGPIPE, SIG_IGN);
    test_checker();
    n = wt_backends(modes, names);
    for (int i = 0; i < n; i++) {
        wt_backend_env(names[i]);
        struct shm_segment *seg;
        struct wt_server s;
        struct wt_opts o = {.io = modes[i]};
        struct wt_resp r;

        if (shm_create(&seg, 8) < 0)
            bail("shm_create failed");
        /* What the supervisor writes for a web worker at fork. */
        atomic_store(&seg->workers[0].role, SHM_ROLE_WEB);
        atomic_store(&seg->workers[0].role_index, 0);
        atomic_store(&seg->workers[0].state, SHM_STATE_READY);
        atomic_store(&seg->workers[0].generation, 1);
        /* What a supervisor's sweep and a job worker would have left: two queues (one with
         * a name that needs escaping) and two claims of 10 jobs. */
        struct shm_queue_depths d = {.nqueues = 2};
        snprintf(d.queues[0].name, sizeof d.queues[0].name, "default");
        d.queues[0].ready = 3;
        d.queues[0].running = 2;
        snprintf(d.queues[1].name, sizeof d.queues[1].name, "we\"ird\\q");
        d.queues[1].scheduled = 1;
        shm_depths_publish(seg, &d);
        shm_hist_add(&seg->workers[0].hists.claim_batch, 10);
        shm_hist_add(&seg->workers[0].hists.claim_batch, 10);
        web_limits_default(&o.limits);
        o.seg = seg;
        o.stats = &seg->workers[0];
        wt_server_start(&s, &o);
        atomic_store(&seg->workers[0].pid, s.pid);
        test_routes(seg, s.port, names[i]);
        is_int(wt_server_stop(&s), 0, "%s: the server drains and exits 0", names[i]);
        close(s.lfd);
        shm_destroy(seg);

        /* Without a segment (not under a supervisor) the routes say so. */
        o.seg = NULL;
        o.stats = NULL;
        wt_server_start(&s, &o);
        is_int(wt_get(s.port, "/metrics", &r), 503, "%s: /metrics without shm answers 503",
               names[i]);
        wt_resp_free(&r);
        is_int(wt_server_stop(&s), 0, "%s: the server drains and exits 0", names[i]);
        close(s.lfd);
    }
    return done_testing();
}
