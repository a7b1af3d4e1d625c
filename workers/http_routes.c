/*
 * The web worker's built-in routes, as a {method, path, handler} table: ping, the
 * database health check through the worker's pool (bounded by health_timeout_ms), the
 * stats JSON of the control socket, Prometheus metrics, the jobs routes (enqueue, list,
 * and show, retry, cancel or delete one job; workers/job_http.c does the work); then the
 * plugins' routes (workers/plugin.h runs their handlers on threads); 404 and 405 answers
 * with JSON bodies; 415 for a body that is not declared JSON. The admin routes (stats, metrics,
 * jobs) are served only where the listener's route set allows, and want the API token when one is
 * set.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "runtime/rt_json.h"
#include "runtime/rt_metrics.h"
#include "runtime/rt_pool.h"
#include "workers/job.h"
#include "workers/plugin.h"
#include "workers/web.h"

#define HEALTH_RETRY_AFTER "Retry-After: 5\r\n"
#define HEALTH_TIMEOUT_DEFAULT_MS 2000
#define JSON_TYPE "application/json"

/* One health check in flight: the pool's query request, its deadline and the connection
 * to answer. Kept on a free list per server, so checks do not allocate once warmed up;
 * the timer is initialised once with the entry and closed when the list is freed. */
struct health_req {
    struct rt_query q;
    struct web_conn *c;
    uint64_t t0_ns;
    uv_timer_t timer;
    struct health_req *next_free;
};

/* One jobs-route call in flight; kept on a free list like health_req. An entry on the
 * free list may still own the body of its last answer (freed on reuse or at fini). */
struct jobs_req {
    struct job_http h;
    struct web_conn *c;
    struct jobs_req *next_free;
};

/* One plugin-route call in flight; kept on a free list like jobs_req. An entry on the
 * free list may still own its last answer (freed on reuse or at fini). */
struct plugin_req {
    struct plugin_call call;
    struct web_conn *c;
    struct plugin_header hdrs[WEB_MAX_HEADERS]; /* the request's headers, borrowed from c */
    struct plugin_req *next_free;
};

/* The routes' per-server state (web_server.routes_state). */
struct routes_state {
    struct health_req *free_health;
    int health_open; /* health_req timers not yet closed; the state is freed after them */
    bool fini;       /* web_routes_fini ran: the last timer close frees the state */
    struct jobs_req *free_jobs;
    struct plugin_req *free_plugin;
};

/* ---- handlers ------------------------------------------------------------------------ */

/*
 * Whether the request declares its body JSON: exactly one Content-Type, application/json
 * in any case, parameters allowed ("; charset=utf-8"). Routes that read a body require it,
 * so that a form or a text body is refused as such (415) instead of failing as bad JSON,
 * and a browser's cross-site form post (which cannot send this type) never reaches them.
 */
static bool body_is_json(const struct web_request *req)
{
    static const char json[] = "application/json";
    const char *v = NULL;

    for (unsigned i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, "Content-Type") != 0)
            continue;
        if (v)
            return false;
        v = req->headers[i].value;
    }
    if (!v)
        return false;
    while (*v == ' ' || *v == '\t')
        v++;
    if (strncasecmp(v, json, sizeof json - 1) != 0)
        return false;
    v += sizeof json - 1;
    while (*v == ' ' || *v == '\t')
        v++;
    return *v == '\0' || *v == ';';
}

static void answer_not_json(struct web_conn *c)
{
    web_respond_error(c, 415, "Content-Type must be application/json", NULL);
}

static void route_ping(struct web_conn *c, const struct web_request *req)
{
    static const char body[] = "{\"status\":\"ok\"}";
    web_respond(c, 200, JSON_TYPE, NULL, body, sizeof body - 1);
}

/* Answers a health check: 200 when the query worked, else 503 with Retry-After; database
 * says why ("unreachable", or "timeout" when the check outlived health_timeout_ms). */
static void health_answer(struct web_conn *c, struct rt_pool *pool, uint64_t t0_ns,
                          const char *database, const char *error)
{
    struct rt_pool_state ps = {0};
    char body[1024], id[RT_ERROR_ID_LEN + 1];
    int n;

    if (pool)
        rt_pool_state(pool, &ps);
    if (!error) {
        n = snprintf(body, sizeof body,
                     "{\"status\":\"ok\",\"database\":\"healthy\",\"latency_ms\":%.3f,"
                     "\"pool\":{\"limit\":%d,\"open\":%d,\"in_use\":%d,\"idle\":%d,"
                     "\"waiting\":%d},\"pid\":%d}",
                     (double)(uv_hrtime() - t0_ns) / 1e6, ps.limit, ps.open, ps.in_use, ps.idle,
                     ps.waiting, (int)getpid());
        web_respond(c, 200, JSON_TYPE, NULL, body, (size_t)n);
        return;
    }
    /* The reason (libpq's text: host, port, user) goes to the log only, under an id the
     * answer gives (one line per reason and 10 s: probes during an outage share it). */
    rt_log_failure(RT_LOG_WARN, "health check failed: database unavailable", error,
                   "/api/v1/health", json_pack("{s:s}", "request_id", c->rid), id);
    n = snprintf(body, sizeof body,
                 "{\"status\":\"error\",\"database\":\"%s\","
                 "\"error\":\"database unavailable\",\"error_id\":\"%s\",\"latency_ms\":%.3f,"
                 "\"pool\":{\"limit\":%d,\"open\":%d,\"in_use\":%d,\"idle\":%d,"
                 "\"waiting\":%d},\"pid\":%d}",
                 database, id, (double)(uv_hrtime() - t0_ns) / 1e6, ps.limit, ps.open, ps.in_use,
                 ps.idle, ps.waiting, (int)getpid());
    web_respond(c, 503, JSON_TYPE, HEALTH_RETRY_AFTER, body, (size_t)n);
}

/* The health check's SELECT 1 is done, failed to get a connection, or was given up on
 * (RT_ECANCELED: its deadline passed). */
static void on_health_query(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct health_req *h = q->data;
    struct web_conn *c = h->c;
    struct web_server *s = web_conn_server(c);
    struct routes_state *st = s->routes_state;
    uint64_t t0 = h->t0_ns;
    char why[RT_ERROR_MSG_LEN];
    bool good = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    bool timeout = !good && err && err->code == RT_ECANCELED;

    if (!good)
        snprintf(why, sizeof why, "%s",
                 err && err->message[0] ? err->message
                 : res                  ? PQresultErrorMessage(res)
                                        : "query failed");
    PQclear(res);
    uv_timer_stop(&h->timer);
    /* Back on the free list before answering: answering may finish a drain. */
    h->next_free = st->free_health;
    st->free_health = h;
    health_answer(c, s->cfg.pool, t0, timeout ? "timeout" : "unreachable", good ? NULL : why);
}

/* The check outlived health_timeout_ms: give up on it (rt_query_cancel closes a connection
 * that is running it, so none stays busy), which answers 503 through on_health_query. */
static void on_health_timeout(uv_timer_t *t)
{
    struct health_req *h = t->data;
    struct web_server *s = web_conn_server(h->c);
    char why[128];

    snprintf(why, sizeof why, "no answer from the database within %u ms", s->cfg.health_timeout_ms);
    if (rt_query_cancel(&h->q, why) < 0)
        rt_logf(RT_LOG_ERROR, "health check: cannot give up on the query at its deadline");
}

/* GET /api/v1/health: SELECT 1 through the worker's pool, answered when it returns or at
 * the health timeout, whichever comes first. */
static void route_health(struct web_conn *c, const struct web_request *req)
{
    struct web_server *s = web_conn_server(c);
    struct routes_state *st = s->routes_state;
    struct health_req *h;
    int rc;

    if (!s->cfg.pool) {
        health_answer(c, NULL, req->start_ns, "unreachable", "this worker has no database pool");
        return;
    }
    h = st->free_health;
    if (h) {
        st->free_health = h->next_free;
    } else {
        h = malloc(sizeof *h);
        if (!h) {
            web_respond_error(c, 503, "out of memory", HEALTH_RETRY_AFTER);
            return;
        }
        uv_timer_init(s->loop, &h->timer);
        h->timer.data = h;
        st->health_open++;
    }
    memset(&h->q, 0, sizeof h->q);
    h->q.data = h;
    h->c = c;
    h->t0_ns = uv_hrtime();
    uv_timer_start(&h->timer, on_health_timeout,
                   s->cfg.health_timeout_ms ? s->cfg.health_timeout_ms : HEALTH_TIMEOUT_DEFAULT_MS,
                   0);
    rc = rt_pool_query(s->cfg.pool, &h->q, "GET /api/v1/health", "SELECT 1", 0, NULL,
                       on_health_query);
    if (rc < 0) {
        uv_timer_stop(&h->timer);
        h->next_free = st->free_health;
        st->free_health = h;
        health_answer(c, s->cfg.pool, req->start_ns, "unreachable", "the pool is closing");
    }
}

/* GET /api/v1/stats: the control socket's `stats` document. */
static void route_stats(struct web_conn *c, const struct web_request *req)
{
    const struct web_server_config *cfg = web_server_config(web_conn_server(c));
    json_t *doc;
    char *text;

    if (!cfg->seg) {
        web_respond_error(c, 503, "statistics are not available in this process", NULL);
        return;
    }
    doc = rt_stats_json(cfg->seg);
    text = rt_json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text) {
        web_respond_error(c, 503, "out of memory", NULL);
        return;
    }
    web_respond(c, 200, JSON_TYPE, NULL, text, strlen(text));
    free(text);
}

/* GET /metrics: Prometheus text. */
static void route_metrics(struct web_conn *c, const struct web_request *req)
{
    const struct web_server_config *cfg = web_server_config(web_conn_server(c));
    char *text;
    size_t len;

    if (!cfg->seg) {
        web_respond_error(c, 503, "statistics are not available in this process", NULL);
        return;
    }
    if (rt_metrics_render(cfg->seg, &text, &len) < 0) {
        web_respond_error(c, 503, "out of memory", NULL);
        return;
    }
    web_respond(c, 200, RT_METRICS_CONTENT_TYPE, NULL, text, len);
    free(text);
}

/* ---- jobs routes --------------------------------------------------------------------- */

/* A jobs-route answer is ready: answer it; j goes back on the free list first, because
 * answering may finish a drain (its body is freed on reuse, or by web_routes_fini). */
static void jobs_answer(struct routes_state *st, struct jobs_req *j)
{
    struct web_conn *c = j->c;
    const char *body = j->h.body ? j->h.body : "{\"error\":\"internal error\"}";
    int status = j->h.body ? j->h.status : 500;

    j->next_free = st->free_jobs;
    st->free_jobs = j;
    if (status >= 500) {
        /* The database's words stay in the log (j's fields stay valid on the free list). */
        web_respond_failure(c, status, j->h.error ? j->h.error : "internal error",
                            j->h.detail[0] ? j->h.detail : NULL,
                            j->h.sqlstate[0] ? json_pack("{s:s}", "sqlstate", j->h.sqlstate) : NULL,
                            status == 503 ? HEALTH_RETRY_AFTER : NULL);
        return;
    }
    web_respond(c, status, JSON_TYPE, NULL, body, strlen(body));
}

static void on_jobs_done(struct job_http *h)
{
    struct jobs_req *j = h->data;
    jobs_answer(web_conn_server(j->c)->routes_state, j);
}

/* A jobs_req from the free list (its old answer freed), or a new one; NULL on ENOMEM. */
static struct jobs_req *jobs_take(struct routes_state *st, struct web_conn *c)
{
    struct jobs_req *j = st->free_jobs;

    if (j) {
        st->free_jobs = j->next_free;
        job_http_clear(&j->h);
        memset(j, 0, sizeof *j);
    } else {
        j = calloc(1, sizeof *j);
        if (!j)
            return NULL;
    }
    j->c = c;
    j->h.data = j;
    return j;
}

/* POST /api/v1/jobs: enqueue the job the JSON body describes. */
static void route_jobs_enqueue(struct web_conn *c, const struct web_request *req)
{
    struct web_server *s = web_conn_server(c);
    struct jobs_req *j;

    if (!body_is_json(req)) {
        answer_not_json(c);
        return;
    }
    if (!s->cfg.pool) {
        web_respond_error(c, 503, "this worker has no database pool", HEALTH_RETRY_AFTER);
        return;
    }
    j = jobs_take(s->routes_state, c);
    if (!j) {
        web_respond_error(c, 503, "out of memory", HEALTH_RETRY_AFTER);
        return;
    }
    if (job_http_enqueue(&j->h, s->cfg.pool, req->body, req->body_len, req->request_id,
                         on_jobs_done) != 0)
        jobs_answer(s->routes_state, j);
}

/* The jobs_req of a jobs route, or NULL after answering 503 (no pool, out of memory). */
static struct jobs_req *jobs_begin(struct web_conn *c)
{
    struct web_server *s = web_conn_server(c);
    struct jobs_req *j;

    if (!s->cfg.pool) {
        web_respond_error(c, 503, "this worker has no database pool", HEALTH_RETRY_AFTER);
        return NULL;
    }
    j = jobs_take(s->routes_state, c);
    if (!j)
        web_respond_error(c, 503, "out of memory", HEALTH_RETRY_AFTER);
    return j;
}

/* GET /api/v1/jobs?state=&task=&queue=&limit=: the jobs, newest first. */
static void route_jobs_list(struct web_conn *c, const struct web_request *req)
{
    struct web_server *s = web_conn_server(c);
    struct jobs_req *j = jobs_begin(c);

    if (j && job_http_list(&j->h, s->cfg.pool, req->query, req->request_id, on_jobs_done) != 0)
        jobs_answer(s->routes_state, j);
}

/*
 * /api/v1/jobs/ID (GET: show, DELETE: delete) and /api/v1/jobs/ID/ACTION (POST; ACTION is
 * retry or cancel). Any other sub-path is 404, a known one with another method 405.
 */
static void route_jobs_item(struct web_conn *c, const struct web_request *req)
{
    static const char prefix[] = "/api/v1/jobs/";
    struct web_server *s = web_conn_server(c);
    const char *id = req->path + sizeof prefix - 1;
    const char *slash = memchr(id, '/', req->path_len - (sizeof prefix - 1));
    size_t idlen = slash ? (size_t)(slash - id) : req->path_len - (sizeof prefix - 1);
    const char *action = slash ? slash + 1 : NULL;
    enum job_op op;
    struct jobs_req *j;

    if (!action) {
        if (req->method != HTTP_DELETE && req->method != HTTP_GET && req->method != HTTP_HEAD) {
            web_respond_error(c, 405, "method not allowed", "Allow: GET, HEAD, DELETE\r\n");
            return;
        }
        op = req->method == HTTP_DELETE ? JOB_OP_DELETE : JOB_OP_GET;
        web_conn_set_route(c, "/api/v1/jobs/:id");
    } else if (strcmp(action, "retry") == 0 || strcmp(action, "cancel") == 0) {
        if (req->method != HTTP_POST) {
            web_respond_error(c, 405, "method not allowed", "Allow: POST\r\n");
            return;
        }
        op = action[0] == 'r' ? JOB_OP_RETRY : JOB_OP_CANCEL;
        web_conn_set_route(c, op == JOB_OP_RETRY ? "/api/v1/jobs/:id/retry"
                                                 : "/api/v1/jobs/:id/cancel");
    } else {
        web_respond_error(c, 404, "no such route: a job has /retry and /cancel (POST)", NULL);
        return;
    }
    j = jobs_begin(c);
    if (j && job_http_job(&j->h, s->cfg.pool, op, id, idlen, req->request_id, on_jobs_done) != 0)
        jobs_answer(s->routes_state, j);
}

/* ---- plugin routes ------------------------------------------------------------------- */

/* Response headers the server writes itself: a handler's copy is left out. */
static bool header_reserved(const char *name)
{
    static const char *const reserved[] = {"Content-Type", "Content-Length", "Connection", "Date",
                                           "Transfer-Encoding"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcasecmp(name, reserved[i]) == 0)
            return true;
    return false;
}

/* The handler returned (or no connection could be had): answers with its response. p goes
 * back on the free list first, still owning the response: answering may finish a drain,
 * which frees the list only on a later loop turn. */
static void on_plugin_done(struct plugin_call *call)
{
    struct plugin_req *p = call->data;
    struct web_conn *c = p->c;
    struct routes_state *st = web_conn_server(c)->routes_state;
    const struct pgc_response *res = &call->res;
    const char *type = NULL;
    char *extra = NULL;
    size_t need = 1, off = 0;

    for (int i = 0; i < res->nheaders; i++)
        need += strlen(res->headers[i].name) + strlen(res->headers[i].value) + 4;
    extra = malloc(need);
    if (extra) {
        extra[0] = '\0';
        for (int i = 0; i < res->nheaders; i++) {
            const struct plugin_header *h = &res->headers[i];
            if (strcasecmp(h->name, "Content-Type") == 0)
                type = h->value;
            else if (!header_reserved(h->name))
                off += (size_t)snprintf(extra + off, need - off, "%s: %s\r\n", h->name, h->value);
        }
    }
    p->next_free = st->free_plugin;
    st->free_plugin = p;
    if (!extra)
        web_respond_error(c, 503, "out of memory", HEALTH_RETRY_AFTER);
    else
        web_respond(c, res->status, type, extra, res->body, res->body_len);
    free(extra);
}

/* Runs a plugin's route handler for req (answered in on_plugin_done). */
static void route_plugin(struct web_conn *c, const struct web_request *req,
                         const struct plugin_route *route, const struct plugin_params *params)
{
    struct web_server *s = web_conn_server(c);
    struct routes_state *st = s->routes_state;
    struct plugin_req *p = st->free_plugin;

    if (req->body_len > 0 && !body_is_json(req)) {
        answer_not_json(c);
        return;
    }
    if (p) {
        st->free_plugin = p->next_free;
        plugin_call_clear(&p->call);
    } else {
        p = calloc(1, sizeof *p);
        if (!p) {
            web_respond_error(c, 503, "out of memory", HEALTH_RETRY_AFTER);
            return;
        }
    }
    memset(&p->call, 0, sizeof p->call);
    p->c = c;
    p->call.data = p;
    for (unsigned i = 0; i < req->nheaders && i < WEB_MAX_HEADERS; i++) {
        p->hdrs[i].name = req->headers[i].name;
        p->hdrs[i].value = req->headers[i].value;
    }
    p->call.req.method = llhttp_method_name((llhttp_method_t)req->method);
    p->call.req.path = req->path;
    p->call.req.query = req->query;
    p->call.req.headers = p->hdrs;
    p->call.req.nheaders = (int)(req->nheaders < WEB_MAX_HEADERS ? req->nheaders : WEB_MAX_HEADERS);
    p->call.req.body = req->body;
    p->call.req.body_len = req->body_len;
    p->call.req.request_id = req->request_id;
    int rc = plugin_route_call(s->cfg.plugin_env, &p->call, route, params, on_plugin_done);
    if (rc < 0) {
        plugin_call_clear(&p->call);
        p->next_free = st->free_plugin;
        st->free_plugin = p;
        /* Both pass: memory comes back, and another worker serves the retry. */
        web_respond_error(c, 503, rc == -ENOMEM ? "out of memory" : "the worker is stopping",
                          HEALTH_RETRY_AFTER);
    }
}

/* Adds to allow the methods of the plugin routes whose path matches req's. */
static void plugin_allow(const struct pgc_registry *reg, const struct web_request *req, char *allow,
                         size_t allow_len)
{
    struct plugin_params params;

    for (int i = 0; i < reg->nroutes; i++) {
        const char *m = reg->routes[i].method;
        size_t used = strlen(allow);
        if (strstr(allow, m) ||
            !plugin_route_match(reg, m, req->path, req->path_len, &params, NULL))
            continue;
        snprintf(allow + used, allow_len - used, "%s%s%s", used ? ", " : "", m,
                 strcmp(m, "GET") == 0 ? ", HEAD" : "");
    }
}

/* A built-in route: its table entry, its label in metrics and logs, and whether it is an
 * admin route (the admin listener's, behind the API token). */
struct builtin_route {
    struct web_route r;
    const char *label;
    bool admin;
};

/* The built-in routes. GET routes answer HEAD too; a path ending in '*' matches any
 * path that starts with what comes before it and is longer. */
static const struct builtin_route builtin_routes[] = {
    {{HTTP_GET, "/api/v1/ping", route_ping}, "/api/v1/ping", false},
    {{HTTP_GET, "/api/v1/health", route_health}, "/api/v1/health", false},
    {{HTTP_GET, "/api/v1/stats", route_stats}, "/api/v1/stats", true},
    {{HTTP_GET, "/metrics", route_metrics}, "/metrics", true},
    {{HTTP_POST, "/api/v1/jobs", route_jobs_enqueue}, "/api/v1/jobs", true},
    {{HTTP_GET, "/api/v1/jobs", route_jobs_list}, "/api/v1/jobs", true},
    {{HTTP_GET, "/api/v1/jobs/*", route_jobs_item}, "/api/v1/jobs/:id", true},
    {{HTTP_POST, "/api/v1/jobs/*", route_jobs_item}, "/api/v1/jobs/:id", true},
    {{HTTP_DELETE, "/api/v1/jobs/*", route_jobs_item}, "/api/v1/jobs/:id", true},
};

/* Whether a listener with route set rs serves a route (admin or not). */
static bool route_served(enum web_route_set rs, bool admin)
{
    return rs == WEB_ROUTES_ALL || (rs == WEB_ROUTES_ADMIN) == admin;
}

/* Whether req carries "Authorization: Bearer <token>" (scheme in any case). The token is
 * compared in constant time (rt_secret_equal). */
static bool authorized(const struct web_request *req, const char *token)
{
    const char *v = web_request_header(req, "authorization");
    size_t len;

    if (!v || strncasecmp(v, "Bearer ", 7) != 0)
        return false;
    v += 7;
    while (*v == ' ')
        v++;
    len = strlen(v);
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    return rt_secret_equal(v, len, token, strlen(token));
}

/* ---- dispatch ------------------------------------------------------------------------ */

/* Exact path, or for a pattern ending in a star any longer path under its prefix. */
static bool path_matches(const char *pattern, const char *path, size_t path_len)
{
    size_t n = strlen(pattern);

    if (n > 0 && pattern[n - 1] == '*')
        return path_len > n - 1 && strncmp(pattern, path, n - 1) == 0;
    return n == path_len && memcmp(pattern, path, n) == 0;
}

static bool method_matches(int route_method, int method)
{
    return route_method == method || (route_method == HTTP_GET && method == HTTP_HEAD);
}

/* Looks for path in table (n entries, stride bytes apart); returns the entry for method, or
 * NULL and adds the path's methods to allow (for 405). */
static const struct web_route *find_route(const void *table, size_t n, size_t stride,
                                          const struct web_request *req, char *allow,
                                          size_t allow_len, bool *path_known)
{
    for (size_t i = 0; i < n; i++) {
        const struct web_route *r = (const struct web_route *)((const char *)table + i * stride);
        if (!path_matches(r->path, req->path, req->path_len))
            continue;
        if (method_matches(r->method, req->method))
            return r;
        *path_known = true;
        size_t used = strlen(allow);
        snprintf(allow + used, allow_len - used, "%s%s%s", used ? ", " : "",
                 llhttp_method_name((llhttp_method_t)r->method),
                 r->method == HTTP_GET ? ", HEAD" : "");
    }
    return NULL;
}

/* The built-in routes this listener serves: the entry for req, or NULL (allow and
 * path_known as find_route). */
static const struct builtin_route *find_builtin(enum web_route_set rs,
                                                const struct web_request *req, char *allow,
                                                size_t allow_len, bool *path_known)
{
    for (size_t i = 0; i < sizeof builtin_routes / sizeof builtin_routes[0]; i++) {
        const struct builtin_route *b = &builtin_routes[i];
        if (route_served(rs, b->admin) &&
            find_route(&b->r, 1, sizeof *b, req, allow, allow_len, path_known))
            return b;
    }
    return NULL;
}

void web_routes_dispatch(struct web_conn *c, const struct web_request *req)
{
    const struct web_server_config *cfg = web_server_config(web_conn_server(c));
    char allow[128] = "", extra[160];
    bool path_known = false;
    const struct web_route *r;
    const struct builtin_route *b;

    r = find_route(cfg->routes, cfg->nroutes, sizeof *cfg->routes, req, allow, sizeof allow,
                   &path_known);
    if (r) {
        web_conn_set_route(c, r->path);
        r->handler(c, req);
        return;
    }
    b = find_builtin(cfg->route_set, req, allow, sizeof allow, &path_known);
    if (b) {
        web_conn_set_route(c, b->label);
        if (b->admin && cfg->api_token && !authorized(req, cfg->api_token)) {
            web_respond_error(c, 401, "this route needs the API token: Authorization: Bearer TOKEN",
                              "WWW-Authenticate: Bearer realm=\"pgcorral\"\r\n");
            return;
        }
        b->r.handler(c, req);
        return;
    }
    if (cfg->plugins && cfg->plugin_env && cfg->route_set != WEB_ROUTES_ADMIN) {
        /* HEAD runs the GET handler; web_respond leaves the body out. */
        const char *method =
            req->method == HTTP_HEAD ? "GET" : llhttp_method_name((llhttp_method_t)req->method);
        struct plugin_params params;
        bool mismatch = false;
        const struct plugin_route *route =
            plugin_route_match(cfg->plugins, method, req->path, req->path_len, &params, &mismatch);
        if (route) {
            web_conn_set_route(c, route->path);
            route_plugin(c, req, route, &params);
            return;
        }
        if (mismatch) {
            path_known = true;
            plugin_allow(cfg->plugins, req, allow, sizeof allow);
        }
    }
    if (!path_known) {
        web_respond_error(c, 404, "not found", NULL);
        return;
    }
    snprintf(extra, sizeof extra, "Allow: %s\r\n", allow);
    web_respond_error(c, 405, "method not allowed", extra);
}

int web_routes_init(struct web_server *s)
{
    struct routes_state *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    s->routes_state = st;
    return 0;
}

/* A health_req's timer closed: the entry goes, and with the last one a finished state. */
static void health_timer_closed(uv_handle_t *t)
{
    struct health_req *h = t->data;
    struct routes_state *st = h->q.data;

    free(h);
    if (--st->health_open == 0 && st->fini)
        free(st);
}

void web_routes_fini(struct web_server *s)
{
    struct routes_state *st = s->routes_state;
    struct health_req *h;
    struct jobs_req *j;
    struct plugin_req *p;

    if (!st)
        return;
    while ((p = st->free_plugin)) {
        st->free_plugin = p->next_free;
        plugin_call_clear(&p->call);
        free(p);
    }
    while ((j = st->free_jobs)) {
        st->free_jobs = j->next_free;
        job_http_clear(&j->h);
        free(j);
    }
    s->routes_state = NULL;
    st->fini = true;
    /* Every check has been answered by now (the server drained): all are on the list. */
    while ((h = st->free_health)) {
        st->free_health = h->next_free;
        h->q.data = st;
        uv_close((uv_handle_t *)&h->timer, health_timer_closed);
    }
    if (st->health_open == 0)
        free(st);
}
