/*
 * The plugin API as route handlers see it, on real pools (primary, and a replica pool to
 * the same server told apart by application_name): request accessors and path and query
 * parameters, responses and their headers, read-only routes on the replica, pgc_exec_read
 * from a primary route borrowing a replica connection, errors (handler failure -> 500,
 * SQLSTATE), pgc_tx run again whole after a deadlock, the TTL cache, pgc_enqueue with a
 * dedupe key. Then the example plugin's GET /api/v1/products: cached for 300 s. Last, a
 * replica nothing listens on: pgc_exec_read and read-only routes answer from the primary
 * (the read router's fallback), with one outage.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"
#include "workers/plugin.h"

/* The loop, env and registry the routes run with. */
static uv_loop_t loop;
static struct plugin_env *env;
static struct pgc_registry *reg;

static void on_done(struct plugin_call *call)
{
    *(bool *)call->data = true;
}

/* Runs one route like the web worker would; returns the status, the body in call. */
static int call_route(struct plugin_call *call, const char *method, const char *path,
                      const char *query, const char *body)
{
    struct plugin_params params;
    static const struct plugin_header headers[] = {{"X-Test", "hello"},
                                                   {"Content-Type", "text/plain"}};
    bool done = false;
    const struct plugin_route *r =
        plugin_route_match(reg, method, path, strlen(path), &params, NULL);

    memset(call, 0, sizeof *call);
    if (!r)
        return 404;
    call->data = &done;
    call->req.method = method;
    call->req.path = path;
    call->req.query = query;
    call->req.headers = headers;
    call->req.nheaders = 2;
    call->req.body = body;
    call->req.body_len = body ? strlen(body) : 0;
    if (plugin_route_call(env, call, r, &params, on_done) < 0)
        return -1;
    long long end = pgt_now_ms() + 15000;
    while (!done && pgt_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return done ? call->res.status : -2;
}

static const char *header(const struct plugin_call *call, const char *name)
{
    for (int i = 0; i < call->res.nheaders; i++)
        if (strcasecmp(call->res.headers[i].name, name) == 0)
            return call->res.headers[i].value;
    return NULL;
}

/* The parsed URLs of the pools, freed at the end. */
static struct rt_dburl *urls[3];
static int nurls;

static struct rt_pool *make_pool(const char *url, const char *name)
{
    struct rt_dburl *u;
    struct rt_pool_opts o;
    struct rt_pool *p;
    char err[256];
    if (rt_dburl_parse(url, &u, err, sizeof err) < 0)
        bail("%s", err);
    rt_pool_opts_init(&o);
    o.loop = &loop;
    o.url = u;
    urls[nurls++] = u;
    o.name = name;
    if (rt_pool_create(&p, &o) < 0)
        bail("rt_pool_create");
    return p;
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

/* DATABASE_REPLICA_URL pointing at a closed port: pgc_exec_read (from a primary route and
 * in a read-only route) still answers, from the primary, and the router saw one outage. */
static void test_replica_down(struct rt_pool *primary)
{
    struct plugin_env *live = env;
    struct rt_read_router *router;
    struct rt_read_stats rs;
    struct plugin_call call;
    char url_dead[256];
    int st;

    snprintf(url_dead, sizeof url_dead,
             "postgresql://postgres@127.0.0.1:%d/postgres?application_name=dead-t321&"
             "connect_timeout=2",
             pgt_closed_port());
    struct rt_pool *dead = make_pool(url_dead, "replica");
    if (rt_read_router_create(&router, primary, dead, NULL) < 0)
        bail("rt_read_router_create");
    if (plugin_env_create(&env, &loop, primary, dead, router) < 0)
        bail("plugin_env_create");

    st = call_route(&call, "GET", "/t/where", "", NULL);
    is_int(st, 200, "replica down: a primary route using pgc_exec_read answers 200");
    is_str(call.res.body, "{\"exec\":\"primary-t321\",\"read\":\"primary-t321\"}",
           "its pgc_exec_read ran on the primary");
    plugin_call_clear(&call);
    st = call_route(&call, "GET", "/t/where-ro", "", NULL);
    is_int(st, 200, "replica down: a read-only route answers 200");
    is_str(call.res.body, "{\"exec\":\"primary-t321\",\"read\":\"primary-t321\"}",
           "on a primary connection");
    plugin_call_clear(&call);
    rt_read_router_stats(router, &rs);
    ok(rs.replica_down && rs.outages == 1 && rs.fallbacks >= 2,
       "one outage (logged once), both reads fell back (down %d, outages %llu, fallbacks %llu)",
       rs.replica_down, (unsigned long long)rs.outages, (unsigned long long)rs.fallbacks);

    plugin_env_close(env);
    env = live;
    bool closed = false;
    rt_pool_close(dead, on_closed, &closed);
    long long end = pgt_now_ms() + 5000;
    while (!closed && pgt_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    ok(closed, "the dead replica's pool closes");
    rt_read_router_destroy(router);
}

int main(void)
{
    struct plugin_call call;
    char url_primary[1200], url_replica[1200], err[1024];
    int st;

    tap_timeout(60);
    pgt_db_url();
    const char *url = jt_create_job_db("pgct_t321");
    snprintf(url_primary, sizeof url_primary, "%s&application_name=primary-t321", url);
    snprintf(url_replica, sizeof url_replica, "%s&application_name=replica-t321", url);
    PGconn *db = jt_connect(url);
    jt_exec(db, "CREATE TABLE t_tx (run int)");

    const char *paths[] = {jt_build_plugin("api", NULL), jt_example_plugin("products"), NULL};
    if (plugin_registry_load(&reg, paths, err, sizeof err) < 0)
        bail("%s", err);
    uv_loop_init(&loop);
    struct rt_pool *primary = make_pool(url_primary, "primary");
    struct rt_pool *replica = make_pool(url_replica, "replica");
    struct rt_read_router *router;
    if (rt_read_router_create(&router, primary, replica, NULL) < 0)
        bail("rt_read_router_create");
    if (plugin_env_create(&env, &loop, primary, replica, router) < 0)
        bail("plugin_env_create");

    st = call_route(&call, "POST", "/t/items/42", "name=a%20b%2Bc&x=1", "payload");
    is_int(st, 200, "a route answers 200");
    is_str(call.res.body,
           "{\"id\":\"42\",\"name\":\"a b+c\",\"hdr\":\"hello\",\"body\":\"payload\","
           "\"app\":\"primary-t321\",\"method\":\"POST\",\"path\":\"/t/items/42\"}",
           "path parameter, decoded query parameter, header (any case), body, method, path");
    is_str(header(&call, "Content-Type"), "application/json", "pgc_res_json sets the type");
    is_str(header(&call, "X-Echo"), "1", "and handler headers are kept");
    plugin_call_clear(&call);

    st = call_route(&call, "GET", "/t/where-ro", "", NULL);
    is_str(call.res.body, "{\"exec\":\"replica-t321\",\"read\":\"replica-t321\"}",
           "a read-only route runs on the replica pool");
    plugin_call_clear(&call);
    st = call_route(&call, "GET", "/t/where", "", NULL);
    is_str(call.res.body, "{\"exec\":\"primary-t321\",\"read\":\"replica-t321\"}",
           "a primary route's pgc_exec_read borrows a replica connection");
    plugin_call_clear(&call);

    st = call_route(&call, "GET", "/t/fail", "", NULL);
    is_int(st, 500, "a handler that fails without a status answers 500");
    ok(call.res.body &&
           strncmp(call.res.body, "{\"error\":\"internal error\",\"error_id\":\"", 38) == 0 &&
           strlen(call.res.body) == 38 + RT_ERROR_ID_LEN + 2 && !strstr(call.res.body, "nope"),
       "with a generic message and an error id, not the handler's message: %s",
       call.res.body ? call.res.body : "(none)");
    plugin_call_clear(&call);
    st = call_route(&call, "GET", "/t/sqlerr", "", NULL);
    is_str(call.res.body, "{\"rc\":-1105,\"sqlstate\":\"22012\",\"transient\":0}",
           "a SQL error gives PGC_ESQL, its SQLSTATE, not transient");
    plugin_call_clear(&call);

    st = call_route(&call, "GET", "/t/outcomes", "", NULL);
    is_str(call.res.body,
           "{\"discard\":-22,\"snooze\":-22,\"error\":\"pgc_snooze: only a task handler has a "
           "job to snooze\"}",
           "pgc_discard and pgc_snooze outside a task handler return PGC_EINVAL, saying why");
    plugin_call_clear(&call);

    long long t0 = pgt_now_ms();
    st = call_route(&call, "GET", "/t/deadlock", "", NULL);
    is_str(call.res.body, "{\"runs\":2}", "pgc_tx runs the transaction again after a deadlock");
    ok(pgt_now_ms() - t0 >= 900, "after the first backoff (1 s): %lld ms", pgt_now_ms() - t0);
    is_int(pgt_query_ll(db, "SELECT count(*) FROM t_tx"), 1,
           "the failed run was rolled back, the second committed");
    plugin_call_clear(&call);

    st = call_route(&call, "GET", "/t/cache", "set=v1", NULL);
    plugin_call_clear(&call);
    st = call_route(&call, "GET", "/t/cache", "", NULL);
    is_str(call.res.body, "{\"cached\":\"v1\"}", "pgc_cache_set then pgc_cache_get");
    plugin_call_clear(&call);
    struct timespec ts = {1, 200000000};
    nanosleep(&ts, NULL);
    st = call_route(&call, "GET", "/t/cache", "", NULL);
    is_int(st, 404, "the entry expires after its TTL (1 s)");
    plugin_call_clear(&call);

    st = call_route(&call, "GET", "/t/enqueue", "", NULL);
    long long a = -1, b = -2;
    if (call.res.body)
        sscanf(call.res.body, "{\"a\":%lld,\"b\":%lld}", &a, &b);
    ok(st == 201 && a > 0 && a == b, "pgc_enqueue returns the id; a duplicate key the same id");
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.jobs WHERE queue = 'api' AND"
                            " priority = 7 AND key = 'api-key' AND payload = '{\"x\": 1}'"),
           1, "with its queue, priority, key and payload");
    plugin_call_clear(&call);

    /* The example route. */
    st = call_route(&call, "GET", "/api/v1/products", "", NULL);
    is_int(st, 200, "example GET /api/v1/products answers 200");
    ok(call.res.body && strstr(call.res.body, "\"Widget\""), "with the products: %s",
       call.res.body ? call.res.body : "(none)");
    is_str(header(&call, "X-Cache"), "miss", "first from the database");
    plugin_call_clear(&call);
    jt_exec(db, "UPDATE example.products SET name = 'Renamed' WHERE id = 1");
    st = call_route(&call, "GET", "/api/v1/products", "", NULL);
    ok(st == 200 && strstr(call.res.body, "\"Widget\"") && !strstr(call.res.body, "Renamed"),
       "then from the cache (a change within the TTL is not seen)");
    is_str(header(&call, "X-Cache"), "hit", "X-Cache: hit");
    plugin_call_clear(&call);

    test_replica_down(primary);

    plugin_env_close(env);
    rt_pool_close(primary, NULL, NULL);
    rt_pool_close(replica, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    rt_read_router_destroy(router);
    for (int i = 0; i < nurls; i++)
        rt_dburl_destroy(urls[i]);
    plugin_registry_free(reg);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
