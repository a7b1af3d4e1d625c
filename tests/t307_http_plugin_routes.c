/*
 * Plugin routes over HTTP, end to end: the real binary with one web worker and the example
 * plugin (build/examples/products.so) answers GET /api/v1/products with JSON from the
 * database, then from the worker's cache (X-Cache: hit); HEAD and a wrong method on the
 * plugin's path, and an unknown path, get what HTTP says. Then again with
 * DATABASE_REPLICA_URL on a port nothing listens on: the read-only route answers from the
 * primary, and the outage is logged once.
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/webtest.h"

/* The supervisor's control socket. */
static const char *control;

/* Whether the one web worker is ready. */
static bool web_ready(void *arg)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    bool ready = false;

    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        const char *role = json_string_value(json_object_get(w, "role"));
        const char *state = json_string_value(json_object_get(w, "state"));
        if (role && state && strcmp(role, "web") == 0 && strcmp(state, "ready") == 0)
            ready = true;
    }
    json_decref(doc);
    return ready;
}

/* Starts the supervisor with env and waits for its web worker; returns the HTTP port. */
static int start(struct pgt_proc *sup, char *const env[])
{
    char plugin[1024];
    snprintf(plugin, sizeof plugin, "%s", pgt_binary());
    strcpy(strrchr(plugin, '/'), "/examples/products.so");
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "1",
                    "--jobs",
                    "0",
                    "--plugin",
                    plugin,
                    "--listen",
                    "127.0.0.1:0",
                    "--control",
                    (char *)control,
                    NULL};
    pgt_spawn(sup, argv, env);
    if (!pgt_wait_until(web_ready, NULL, 20000)) {
        pgt_proc_drain(sup);
        bail("the web worker did not come up:\n%s", sup->log);
    }
    json_t *cfg = pgt_ctl(control, "config");
    int port =
        (int)json_integer_value(json_object_get(json_object_get(cfg, "config"), "listen_port"));
    json_decref(cfg);
    if (port <= 0)
        bail("no listen_port in `ctl config`");
    return port;
}

/* SIGTERM, then whether the supervisor exited 0 within 20 s (its output read). */
static bool stop(struct pgt_proc *sup)
{
    kill(sup->pid, SIGTERM);
    bool clean =
        pgt_proc_wait_exit(sup, 20000) && WIFEXITED(sup->status) && WEXITSTATUS(sup->status) == 0;
    if (!clean)
        diag("%s", sup->log);
    return clean;
}

/* Occurrences of needle in hay. */
static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay ? strstr(hay, needle) : NULL; p; p = strstr(p + 1, needle))
        n++;
    return n;
}

int main(void)
{
    char env_url[1200], env_replica[256], hdr[128];
    struct pgt_proc sup;
    struct wt_resp r = {0};
    int port, st;

    tap_timeout(60);
    plan(17);
    pgt_db_url();
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", jt_create_db("pgct_t307"));
    control = pgt_tmp_path("t307.sock");
    char *env[] = {env_url, NULL};
    port = start(&sup, env);

    st = wt_get(port, "/api/v1/products", &r);
    is_int(st, 200, "GET /api/v1/products (a plugin route) answers 200");
    is_str(wt_header(&r, "Content-Type", hdr, sizeof hdr), "application/json",
           "Content-Type: application/json");
    json_t *doc = r.body ? json_loads(r.body, 0, NULL) : NULL;
    ok(json_is_array(doc) && json_array_size(doc) == 3, "the body is the JSON array of products");
    is_str(json_string_value(json_object_get(json_array_get(doc, 0), "name")), "Widget",
           "read from the database (%s)", r.body ? r.body : "no body");
    json_decref(doc);
    is_str(wt_header(&r, "X-Cache", hdr, sizeof hdr), "miss", "the first answer: X-Cache: miss");
    char *first = r.body ? strdup(r.body) : NULL;
    wt_resp_free(&r);

    st = wt_get(port, "/api/v1/products", &r);
    is_int(st, 200, "the second GET answers 200");
    is_str(wt_header(&r, "X-Cache", hdr, sizeof hdr), "hit", "from the cache: X-Cache: hit");
    ok(first && r.body && strcmp(first, r.body) == 0, "with the same body");
    free(first);
    wt_resp_free(&r);

    struct wt_conn *c = wt_open(port);
    st = wt_sends(c->fd, "HEAD /api/v1/products HTTP/1.1\r\nHost: t\r\n\r\n") &&
                 wt_read_resp_ex(c, &r, WT_WAIT_MS, true, false)
             ? r.status
             : 0;
    wt_close(c);
    ok(st == 200 && r.body_len == 0, "HEAD on the plugin's GET route answers 200, no body");
    wt_resp_free(&r);

    st = wt_request(port, "POST /api/v1/products HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
                    &r);
    is_int(st, 405, "POST on the plugin's path answers 405");
    is_str(wt_header(&r, "Allow", hdr, sizeof hdr), "GET, HEAD", "with Allow: GET, HEAD");
    wt_resp_free(&r);

    st = wt_get(port, "/api/v1/no-such-route", &r);
    is_int(st, 404, "an unknown path still answers 404");
    wt_resp_free(&r);

    ok(stop(&sup), "the supervisor stops cleanly on SIGTERM");
    pgt_proc_cleanup(&sup);

    /* The replica is unreachable: read-only routes run on the primary. */
    snprintf(env_replica, sizeof env_replica,
             "DATABASE_REPLICA_URL=postgresql://postgres@127.0.0.1:%d/postgres?connect_timeout=2",
             pgt_closed_port());
    char *env2[] = {env_url, env_replica, NULL};
    port = start(&sup, env2);
    st = wt_get(port, "/api/v1/products", &r);
    is_int(st, 200, "replica down: GET /api/v1/products still answers 200");
    ok(r.body && strstr(r.body, "\"Widget\""), "with the products, from the primary");
    wt_resp_free(&r);
    st = wt_get(port, "/api/v1/products", &r);
    wt_resp_free(&r);
    ok(stop(&sup), "the supervisor stops cleanly");
    is_int(count(sup.log, "Read replica unreachable"), 1, "the outage is logged once");
    pgt_proc_cleanup(&sup);
    return done_testing();
}
