/*
 * The admin listener and the API token, on the real binary. With --admin-listen the public
 * listener answers only plugin routes, ping and health (/metrics, /api/v1/stats and the
 * jobs routes 404), and the admin listener only those (ping and plugin routes 404). With
 * PGCORRAL_API_TOKEN the admin routes want "Authorization: Bearer TOKEN" (401 with a JSON
 * error and WWW-Authenticate: Bearer otherwise), on whichever listener serves them; the
 * token shows in no log line, `ctl config`, stats or answer. With neither, a public listener
 * off loopback logs one warning. And the token comparison: right, and in time that does
 * not depend on where the first difference is (an early-exit compare fails that).
 */
#include <time.h>

#include "runtime/rt_id.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/suptest.h"

#define TOKEN "t309-Adm1n-T0ken-xyz"
#define AUTH "Authorization: Bearer " TOKEN "\r\n"

/* ---- the comparison -------------------------------------------------------------------- */

/* Nanoseconds of one rt_secret_equal(given, secret), the median of 31 runs. */
static long long time_compare(const char *given, size_t glen, const char *secret, size_t slen)
{
    long long t[31];
    for (int i = 0; i < 31; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        volatile bool eq = rt_secret_equal(given, glen, secret, slen);
        clock_gettime(CLOCK_MONOTONIC, &b);
        (void)eq;
        t[i] = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    }
    for (int i = 0; i < 31; i++)
        for (int j = i + 1; j < 31; j++)
            if (t[j] < t[i]) {
                long long x = t[i];
                t[i] = t[j];
                t[j] = x;
            }
    return t[15];
}

static void test_compare(void)
{
    const size_t n = 1 << 20;
    char *secret = malloc(n), *early = malloc(n), *late = malloc(n);

    ok(rt_secret_equal("abc", 3, "abc", 3), "compare: equal tokens match");
    ok(!rt_secret_equal("abd", 3, "abc", 3) && !rt_secret_equal("xbc", 3, "abc", 3),
       "compare: a different last or first byte does not");
    ok(!rt_secret_equal("ab", 2, "abc", 3) && !rt_secret_equal("abcabc", 6, "abc", 3) &&
           !rt_secret_equal("abca", 4, "abc", 3),
       "compare: a prefix, a repetition or a longer token does not");
    ok(!rt_secret_equal("", 0, "abc", 3) && !rt_secret_equal("abc", 3, "", 0),
       "compare: empty given or empty secret never matches");

    /* 1 MiB tokens differing in their first or their last byte: an early-exit compare is
     * about a million times faster on the first; this one takes as long. */
    for (size_t i = 0; i < n; i++)
        secret[i] = (char)('a' + i % 26);
    memcpy(early, secret, n);
    memcpy(late, secret, n);
    early[0] ^= 1;
    late[n - 1] ^= 1;
    (void)time_compare(secret, n, secret, n); /* warm the caches */
    long long te = time_compare(early, n, secret, n), tl = time_compare(late, n, secret, n);
    ok(te * 5 > tl && tl * 5 > te,
       "compare: a difference in the first byte takes as long as one in the last (%lld vs "
       "%lld ns)",
       te, tl);
    /* Its time follows the given token's length, not the secret's. */
    long long tshort = time_compare("x", 1, secret, n);
    ok(tshort * 20 < tl, "compare: a 1-byte token against a 1 MiB secret takes %lld ns, not %lld",
       tshort, tl);
    free(secret);
    free(early);
    free(late);
}

/* ---- the listeners --------------------------------------------------------------------- */

/* Status of method path on port with headers (may be NULL); the answer freed. */
static int status_of(int port, const char *method, const char *path, const char *headers,
                     const char *body)
{
    struct wt_resp r;
    int st = ts_req(port, method, path, headers, body, &r);
    wt_resp_free(&r);
    return st;
}

static void test_admin_listener(const char *url, const char *plugin)
{
    char env_url[1200], *env[] = {env_url, "PGCORRAL_API_TOKEN=" TOKEN, NULL};
    char *args[] = {"--jobs",      "0",        "--listen",     "127.0.0.1:0", "--admin-listen",
                    "127.0.0.1:0", "--plugin", (char *)plugin, NULL};
    struct ts_sup s;
    struct wt_resp r;
    char v[256];
    int st;

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    if (!ok(ts_start(&s, "t309a.sock", 2, args, env), "admin: the supervisor starts with "
                                                      "--admin-listen and a token"))
        return;
    ok(s.admin_port > 0 && s.admin_port != s.port, "admin: `ctl config` shows admin_port %d",
       s.admin_port);

    /* The public listener: plugin routes, ping, health; the admin routes are not there. */
    is_int(status_of(s.port, "GET", "/api/v1/ping", NULL, NULL), 200, "public: ping 200");
    is_int(status_of(s.port, "GET", "/api/v1/health", NULL, NULL), 200, "public: health 200");
    is_int(status_of(s.port, "GET", "/o/items/7", NULL, NULL), 200, "public: a plugin route 200");
    is_int(status_of(s.port, "GET", "/metrics", AUTH, NULL), 404,
           "public: /metrics 404, even with the token");
    is_int(status_of(s.port, "GET", "/api/v1/stats", AUTH, NULL), 404, "public: stats 404");
    is_int(status_of(s.port, "POST", "/api/v1/jobs", AUTH, "{\"task\":\"x\"}"), 404,
           "public: POST /api/v1/jobs 404");
    is_int(status_of(s.port, "GET", "/api/v1/jobs/1", AUTH, NULL), 404,
           "public: GET /api/v1/jobs/1 404");

    /* The admin listener: only the admin routes, behind the token. */
    st = ts_req(s.admin_port, "GET", "/metrics", NULL, NULL, &r);
    is_int(st, 401, "admin: /metrics without the token 401");
    ok(wt_header(&r, "WWW-Authenticate", v, sizeof v) && strncmp(v, "Bearer", 6) == 0,
       "admin: ... with WWW-Authenticate: %s", wt_header(&r, "WWW-Authenticate", v, sizeof v));
    json_t *doc = r.body ? json_loads(r.body, 0, NULL) : NULL;
    ok(json_is_string(json_object_get(doc, "error")), "admin: ... and a JSON error: %s",
       r.body ? r.body : "");
    json_decref(doc);
    wt_resp_free(&r);
    is_int(status_of(s.admin_port, "GET", "/metrics", "Authorization: Bearer " TOKEN "x\r\n", NULL),
           401, "admin: a longer token 401");
    is_int(status_of(s.admin_port, "GET", "/metrics", "Authorization: Bearer t309\r\n", NULL), 401,
           "admin: a prefix of the token 401");
    is_int(status_of(s.admin_port, "GET", "/metrics", "Authorization: Basic " TOKEN "\r\n", NULL),
           401, "admin: another scheme 401");
    st = ts_req(s.admin_port, "GET", "/metrics", AUTH, NULL, &r);
    is_int(st, 200, "admin: /metrics with the token 200");
    ok(r.body && strstr(r.body, "pgcorral_build_info") && !strstr(r.body, TOKEN),
       "admin: ... the metrics, without the token in them");
    wt_resp_free(&r);
    is_int(status_of(s.admin_port, "GET", "/metrics", "authorization: bearer " TOKEN "\r\n", NULL),
           200, "admin: header name and scheme in any case");
    st = ts_req(s.admin_port, "GET", "/api/v1/stats", AUTH, NULL, &r);
    is_int(st, 200, "admin: stats with the token 200");
    ok(r.body && strstr(r.body, "\"totals\"") && !strstr(r.body, TOKEN),
       "admin: ... without the token in them");
    wt_resp_free(&r);
    is_int(status_of(s.admin_port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"x\"}"), 401,
           "admin: POST /api/v1/jobs without the token 401");
    st = ts_req(s.admin_port, "POST", "/api/v1/jobs", AUTH, "{\"task\":\"x\",\"force\":true}", &r);
    is_int(st, 201, "admin: POST /api/v1/jobs with the token 201");
    json_t *job = r.body ? json_loads(r.body, 0, NULL) : NULL;
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld",
             (long long)json_integer_value(json_object_get(job, "id")));
    json_decref(job);
    wt_resp_free(&r);
    is_int(status_of(s.admin_port, "GET", path, NULL, NULL), 401,
           "admin: GET %s without the token 401", path);
    is_int(status_of(s.admin_port, "GET", path, AUTH, NULL), 200, "admin: ... with it 200");
    is_int(status_of(s.admin_port, "GET", "/api/v1/ping", AUTH, NULL), 404, "admin: ping 404");
    is_int(status_of(s.admin_port, "GET", "/o/items/7", AUTH, NULL), 404,
           "admin: a plugin route 404");

    /* The token shows nowhere. */
    json_t *cfg = pgt_ctl(s.control, "config");
    char *text = json_dumps(cfg, 0);
    ok(text && strstr(text, "\"api_token_set\": true") && !strstr(text, TOKEN),
       "`ctl config` says a token is set, without it");
    free(text);
    json_decref(cfg);
    struct ot_output o;
    char *ctl[] = {(char *)pgt_binary(), "ctl", "--control", (char *)s.control, "config", NULL};
    ot_run(ctl, NULL, 10000, &o);
    ok(o.code == 0 && o.out && strstr(o.out, "admin_listen") && !strstr(o.out, TOKEN),
       "`pgcorral ctl config` (table) neither");
    ot_output_free(&o);
    ok(ts_stop(&s), "admin: the supervisor stops cleanly");
    ok(s.p.log && strstr(s.p.log, "\"admin listening\"") && !strstr(s.p.log, TOKEN) &&
           ts_count(s.p.log, "not on loopback") == 0,
       "admin: the log says where the admin listener is, never the token, no warning");
    pgt_proc_cleanup(&s.p);
}

/* A token without an admin listener: the admin routes stay on the public one, behind it. */
static void test_token_only(const char *url)
{
    char env_url[1200], *env[] = {env_url, "PGCORRAL_API_TOKEN=" TOKEN, NULL};
    char *args[] = {"--jobs", "0", "--listen", "0.0.0.0:0", NULL};
    struct ts_sup s;

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    if (!ok(ts_start(&s, "t309b.sock", 1, args, env), "token: the supervisor starts"))
        return;
    is_int(status_of(s.port, "GET", "/api/v1/ping", NULL, NULL), 200, "token: ping needs none");
    is_int(status_of(s.port, "GET", "/api/v1/health", NULL, NULL), 200, "token: health needs none");
    is_int(status_of(s.port, "GET", "/metrics", NULL, NULL), 401, "token: /metrics without 401");
    is_int(status_of(s.port, "GET", "/metrics", AUTH, NULL), 200, "token: /metrics with 200");
    is_int(status_of(s.port, "GET", "/api/v1/stats", NULL, NULL), 401, "token: stats without 401");
    is_int(status_of(s.port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"x\"}"), 401,
           "token: POST /api/v1/jobs without 401");
    is_int(status_of(s.port, "POST", "/api/v1/jobs", AUTH, "{\"task\":\"x\",\"force\":true}"), 201,
           "token: POST /api/v1/jobs with 201");
    ok(ts_stop(&s), "token: the supervisor stops cleanly");
    is_int(ts_count(s.p.log, "not on loopback"), 0,
           "token: 0.0.0.0 with a token logs no open-routes warning");
    ok(!strstr(s.p.log, TOKEN), "token: the log never shows the token");
    pgt_proc_cleanup(&s.p);
}

/* Neither: everything open on the public listener, and a warning when that is not
 * loopback. */
static void test_open(const char *url, const char *listen, int warnings)
{
    char env_url[1200], *env[] = {env_url, NULL};
    char *args[] = {"--jobs", "0", "--listen", (char *)listen, NULL};
    struct ts_sup s;

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    if (!ok(ts_start(&s, "t309c.sock", 1, args, env), "open %s: the supervisor starts", listen))
        return;
    is_int(status_of(s.port, "GET", "/metrics", NULL, NULL), 200,
           "open %s: /metrics answers without a token", listen);
    is_int(status_of(s.port, "POST", "/api/v1/jobs", NULL, "{\"task\":\"x\",\"force\":true}"), 201,
           "open %s: so does POST /api/v1/jobs", listen);
    ok(ts_stop(&s), "open %s: the supervisor stops cleanly", listen);
    is_int(ts_count(s.p.log, "not on loopback"), warnings,
           "open %s: %d warning(s) that the routes are open", listen, warnings);
    pgt_proc_cleanup(&s.p);
}

int main(void)
{
    const char *url, *plugin;

    tap_timeout(180);
    signal(SIGPIPE, SIG_IGN);
    test_compare();
    pgt_db_url();
    url = jt_create_db("pgct_t309");
    plugin = jt_build_plugin("obs", NULL);
    test_admin_listener(url, plugin);
    test_token_only(url);
    test_open(url, ":0", 1);
    test_open(url, "127.0.0.1:0", 0);
    jt_remove_plugins();
    return done_testing();
}
