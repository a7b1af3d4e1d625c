/*
 * Input validated at the edge (issue 12, item 7): job fields over their length limits get
 * a 400 naming the field and the limit over HTTP, exit 2 from `pgcorral enqueue` and
 * PGC_EINVAL from pgc_enqueue, never a 500 or database text, and nothing is added; routes
 * that read a body want Content-Type: application/json (415 otherwise); integers of the
 * control protocol and the command line are range-checked with their real bounds.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define PAYLOAD_MAX (256 * 1024)

static int port;
static char env_url[1024];

/* One HTTP request with Connection: close (Content-Type left out when ctype is NULL).
 * Returns the status (0 on failure); the answer's body, parsed, in *doc when it is JSON. */
static int http(const char *method, const char *path, const char *ctype, const char *body,
                size_t len, json_t **doc)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char head[512], *resp = NULL;
    size_t rlen = 0, rcap = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), status = 0;
    long long deadline = pgt_now_ms() + 15000;

    if (doc)
        *doc = NULL;
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s%s%s"
                     "Content-Length: %zu\r\n\r\n",
                     method, path, ctype ? "Content-Type: " : "", ctype ? ctype : "",
                     ctype ? "\r\n" : "", len);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        write(fd, head, (size_t)n) != n)
        goto out;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, body + off, len - off);
        if (w <= 0)
            goto out;
        off += (size_t)w;
    }
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = deadline - pgt_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            goto out;
        if (rcap - rlen < 4096) {
            rcap = rcap ? rcap * 2 : 16384;
            resp = realloc(resp, rcap);
        }
        ssize_t r = read(fd, resp + rlen, rcap - rlen - 1);
        if (r <= 0)
            break;
        rlen += (size_t)r;
    }
    if (!resp || rlen < 12 || strncmp(resp, "HTTP/1.1 ", 9) != 0)
        goto out;
    resp[rlen] = '\0';
    status = atoi(resp + 9);
    char *b = strstr(resp, "\r\n\r\n");
    if (doc && b)
        *doc = json_loads(b + 4, 0, NULL);
    if (doc && !*doc)
        diag("answer %d is not JSON: %.300s", status, resp);
out:
    if (fd >= 0)
        close(fd);
    free(resp);
    return status;
}

/* The "error" string of doc, or "". */
static const char *error_of(json_t *doc)
{
    const char *e = json_string_value(json_object_get(doc, "error"));
    return e ? e : "";
}

/* A string of n letters and digits that does not compress (caller frees): a long value of
 * one repeated byte would fit a btree entry after compression and hide the database's
 * "index row size exceeds" error. */
static char *noise(size_t n)
{
    static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static unsigned long long state = 0x9e3779b97f4a7c15ULL;
    char *s = malloc(n + 1);
    if (!s)
        bail("out of memory");
    for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        s[i] = abc[(state >> 33) % (sizeof abc - 1)];
    }
    s[n] = '\0';
    return s;
}

/* POSTs a job {"task":..., FIELD: VALUE} with a field value of n bytes; returns the status
 * and the error text (or "") in err. field "payload" makes a JSON string of n bytes in all. */
static int post_field(const char *field, size_t n, char *err, size_t errlen)
{
    char *v = noise(n), *body;
    json_t *doc;
    int st;

    if (strcmp(field, "task") == 0) {
        if (asprintf(&body, "{\"task\":\"%s\",\"force\":true}", v) < 0)
            bail("asprintf");
    } else if (strcmp(field, "payload") == 0) {
        v[0] = v[n - 1] = '"';
        if (asprintf(&body, "{\"task\":\"t964\",\"force\":true,\"payload\":%s}", v) < 0)
            bail("asprintf");
    } else if (asprintf(&body, "{\"task\":\"t964\",\"force\":true,\"%s\":\"%s\"}", field, v) < 0) {
        bail("asprintf");
    }
    st = http("POST", "/api/v1/jobs", "application/json", body, strlen(body), &doc);
    snprintf(err, errlen, "%s", error_of(doc));
    json_decref(doc);
    free(body);
    free(v);
    return st;
}

/* Over the limit: 400 naming the field and the limit, no database text; at the limit: 201. */
static void field_limit(const char *field, size_t limit, size_t over)
{
    char err[512], want_name[32], want_limit[64], err2[512];
    int st_over = post_field(field, over, err, sizeof err);
    int st_at = post_field(field, limit, err2, sizeof err2);

    snprintf(want_name, sizeof want_name, "\"%s\"", field);
    snprintf(want_limit, sizeof want_limit, "the limit is %zu bytes", limit);
    bool good = st_over == 400 && strstr(err, want_name) && strstr(err, want_limit) &&
                !strstr(err, "btree") && !strstr(err, "index row") &&
                !strstr(err, "payload string") && st_at == 201;
    ok(good, "POST /api/v1/jobs: %s of %zu bytes answers 400 naming %s and '%s'; %zu bytes: 201",
       field, over, want_name, want_limit, limit);
    if (!good)
        diag("  over: %d '%s'; at the limit: %d '%s'", st_over, err, st_at, err2);
}

static void test_http_fields(void)
{
    field_limit("task", 128, 129);
    field_limit("queue", 128, 129);
    field_limit("queue", 128, 8000); /* a NOTIFY payload holds at most 8000 bytes */
    field_limit("key", 512, 513);
    field_limit("key", 512, 3000); /* over a btree entry (~2.7 kB): the database's 500 */
    /* "x...x" of n bytes is the payload's compact JSON text. */
    field_limit("payload", PAYLOAD_MAX, PAYLOAD_MAX + 1);
}

static void test_content_type(void)
{
    static const char job[] = "{\"task\":\"t964.ct\",\"force\":true}";
    json_t *doc;
    int none = http("POST", "/api/v1/jobs", NULL, job, sizeof job - 1, &doc);
    bool none_json = doc && strstr(error_of(doc), "application/json");
    json_decref(doc);
    int text = http("POST", "/api/v1/jobs", "text/plain", job, sizeof job - 1, &doc);
    bool text_json = doc && strstr(error_of(doc), "application/json");
    json_decref(doc);
    int jsonx = http("POST", "/api/v1/jobs", "application/jsonx", job, sizeof job - 1, NULL);
    int charset =
        http("POST", "/api/v1/jobs", "Application/JSON; charset=utf-8", job, sizeof job - 1, NULL);
    ok(none == 415 && none_json && text == 415 && text_json && jsonx == 415 && charset == 201,
       "POST /api/v1/jobs: no Content-Type %d, text/plain %d, application/jsonx %d (415 with a "
       "JSON error naming application/json); 'Application/JSON; charset=utf-8' %d",
       none, text, jsonx, charset);

    int p_text = http("POST", "/adv/echo", "text/plain", "{}", 2, &doc);
    bool p_json = doc && strstr(error_of(doc), "application/json");
    json_decref(doc);
    int p_form = http("POST", "/adv/echo", "application/x-www-form-urlencoded", "a=b", 3, NULL);
    int p_ok = http("POST", "/adv/echo", "application/json", "{}", 2, NULL);
    int p_empty = http("POST", "/adv/echo", NULL, "", 0, NULL);
    ok(p_text == 415 && p_json && p_form == 415 && p_ok == 200 && p_empty == 200,
       "a plugin route: a text/plain body %d and a form body %d get 415 (JSON error); a JSON "
       "body %d, no body %d",
       p_text, p_form, p_ok, p_empty);
}

/* pgc_enqueue refuses a field over its limit before any SQL. */
static void test_pgc_enqueue(void)
{
    static const struct {
        const char *field;
        int len, limit;
    } cases[] = {{"task", 129, 128},
                 {"queue", 8000, 128},
                 {"key", 3000, 512},
                 {"payload", PAYLOAD_MAX + 1, PAYLOAD_MAX}};
    int good = 0;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[128], want[96];
        json_t *doc;
        snprintf(path, sizeof path, "/adv/enqueue?field=%s&len=%d", cases[i].field, cases[i].len);
        snprintf(want, sizeof want, "%s is %d bytes; the limit is %d bytes", cases[i].field,
                 cases[i].len, cases[i].limit);
        int st = http("GET", path, NULL, NULL, 0, &doc);
        const char *msg = json_string_value(json_object_get(doc, "msg"));
        long long rc = json_integer_value(json_object_get(doc, "rc"));
        if (st == 200 && rc == -22 && msg && strstr(msg, want))
            good++;
        else
            diag("  %s: status %d rc %lld msg '%s'", cases[i].field, st, rc, msg ? msg : "");
        json_decref(doc);
    }
    ok(good == 4,
       "pgc_enqueue with a task of 129 bytes, a queue of 8000, a key of 3000, a payload over "
       "256 KiB: PGC_EINVAL and a message naming the field and its limit (%d of 4)",
       good);
}

/* Runs `pgcorral args...` with DATABASE_URL; output in o. */
static int cli(char *const args[], struct ot_output *o)
{
    char *argv[16] = {(char *)pgt_binary()};
    int n = 1;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return ot_run(argv, (char *[]){env_url, NULL}, 5000, o);
}

static void test_cli_enqueue(void)
{
    char *task = noise(129), *queue = noise(8000), *key = noise(3000);
    struct {
        const char *what;
        char *args[8];
        const char *want;
    } cases[] = {
        {"a TASK of 129 bytes",
         {"enqueue", task, "{}", NULL},
         "pgcorral enqueue: TASK is 129 bytes; the limit is 128"},
        {"--queue of 8000 bytes",
         {"enqueue", "t964.cli", "{}", "--queue", queue, NULL},
         "pgcorral enqueue: --queue is 8000 bytes; the limit is 128"},
        {"--key of 3000 bytes",
         {"enqueue", "t964.cli", "{}", "--key", key, NULL},
         "pgcorral enqueue: --key is 3000 bytes; the limit is 512"},
        {"--run-at +3153600000d",
         {"enqueue", "t964.cli", "{}", "--run-at", "+3153600000d", NULL},
         "--run-at must be an ISO 8601 timestamp"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct ot_output o;
        int code = cli(cases[i].args, &o);
        bool good = code == 2 && strstr(o.err, cases[i].want) && !strstr(o.err, "ERROR") &&
                    !strstr(o.err, "btree") && !strstr(o.err, "out of range") && !o.out[0];
        ok(good, "pgcorral enqueue with %s: exit 2 with '%s', no database text", cases[i].what,
           cases[i].want);
        if (!good)
            diag("  exit %d, stdout '%s', stderr '%.300s'", code, o.out, o.err);
        ot_output_free(&o);
    }
    free(task);
    free(queue);
    free(key);
}

static bool ready(void *control)
{
    return ot_all_ready(control, 1, 0);
}

static void test_integers(const char *control)
{
    struct ot_output o;
    char *big = "99999999999999999999";

    int c1 = cli((char *[]){"ctl", "--control", (char *)control, "scale", "web", big, NULL}, &o);
    bool g1 =
        c1 == 1 && strstr(o.err, "the worker count must be 0..64, got '99999999999999999999'");
    if (!g1)
        diag("  scale web %s: exit %d, stderr '%s'", big, c1, o.err);
    ot_output_free(&o);
    int c2 = cli((char *[]){"ctl", "--control", (char *)control, "scale", "jobs", "-1", NULL}, &o);
    bool g2 = c2 == 1 && strstr(o.err, "the worker count must be 0..64, got '-1'");
    if (!g2)
        diag("  scale jobs -1: exit %d, stderr '%s'", c2, o.err);
    ot_output_free(&o);
    ok(g1 && g2 && ot_all_ready(control, 1, 0),
       "ctl scale web 99999999999999999999 and scale jobs -1: exit 1, 'the worker count must "
       "be 0..64, got ...', nothing changes");

    int c3 = cli((char *[]){"ctl", "--control", (char *)control, "top", "--count", big, NULL}, &o);
    bool g3 = c3 == 2 && strstr(o.err, "--count must be 1..1000000, got '99999999999999999999'");
    if (!g3)
        diag("  top --count: exit %d, stderr '%s'", c3, o.err);
    ot_output_free(&o);
    int c4 = cli((char *[]){"ctl", "--control", (char *)control, "top", "--count", "1",
                            "--interval", big, NULL},
                 &o);
    bool g4 = c4 == 2 && strstr(o.err, "--interval must be 100..3600000");
    if (!g4)
        diag("  top --interval: exit %d, stderr '%s'", c4, o.err);
    ot_output_free(&o);
    ok(g3 && g4, "ctl top --count / --interval 99999999999999999999: exit 2 with the bounds");
}

int main(void)
{
    const char *control = pgt_tmp_path("ctl964.sock");
    struct pgt_proc sup;

    tap_timeout(150);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t964");
    const char *plugin = jt_build_plugin("adv", NULL);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    plan(16);

    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "1",
                    "--jobs",
                    "0",
                    "--listen",
                    "127.0.0.1:0",
                    "--control",
                    (char *)control,
                    "--plugin",
                    (char *)plugin,
                    NULL};
    pgt_spawn(&sup, argv, (char *[]){env_url, NULL});
    if (!pgt_wait_until(ready, (void *)control, 20000)) {
        pgt_proc_drain(&sup);
        bail("supervisor did not come up:\n%s", sup.log);
    }
    port = (int)ot_config_int(control, "listen_port");
    PGconn *db = jt_connect(url);

    test_http_fields();
    test_content_type();
    test_pgc_enqueue();
    test_cli_enqueue();
    ok(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE octet_length(task) > 128 OR "
                        "octet_length(queue) > 128 OR octet_length(key) > 512 OR "
                        "octet_length(payload::text) > 262144") == 0,
       "no job with a field over its limit was added");
    test_integers(control);

    PQfinish(db);
    kill(sup.pid, SIGTERM);
    if (!pgt_proc_wait_exit(&sup, 20000))
        diag("the supervisor did not exit on SIGTERM");
    pgt_proc_cleanup(&sup);
    jt_remove_plugins();
    return done_testing();
}
