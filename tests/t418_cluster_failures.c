/*
 * Nodes that fail, with three supervisors as three nodes on one PostgreSQL, cluster budget
 * C = 8 (each node would take B = 5 alone), --lease-heartbeat 1 and --lease-ttl 3:
 *  - node-b is SIGKILLed with its workers while they run jobs: its slots go back to the
 *    cluster once its lease expires, and every job it held runs elsewhere, none lost;
 *  - node-a's database traffic goes through a TCP proxy that stalls it (its connections
 *    stay open): node-a stops opening connections before its lease can expire, the others
 *    then terminate its connections and take its slots (node-c, scaled up under wrk,
 *    grows into them), and the nodes' connections in
 *    pg_stat_activity (sampled every 100 ms) never exceed C, before or after; once the
 *    traffic flows again node-a leases again.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/clustertest.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/suptest.h"
#include "tests/lib/tcpproxy.h"
#include "tests/tap.h"

#define C 8
#define NODES 3
#define JOBS 24
#define JOBS_S "24"

static PGconn *db;

static bool node_fenced(void *control)
{
    json_t *c = ct_cluster(control);
    bool fenced = c && json_is_true(json_object_get(c, "fenced"));
    json_decref(c);
    return fenced;
}

static bool node_trusted(void *control)
{
    json_t *c = ct_cluster(control);
    bool ok = c && json_is_false(json_object_get(c, "fenced")) &&
              json_integer_value(json_object_get(c, "slots_leased")) > 0;
    json_decref(c);
    return ok;
}

/* The node's lease in pgcorral.nodes, as the server sees it now. */
static long long leased_by(const char *node)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT coalesce(max(slots_leased), -1) FROM pgcorral.nodes WHERE node = '%s'"
             " AND lease_expires_at > now()",
             node);
    return pgt_query_ll(db, sql);
}

static bool lease_gone(void *node)
{
    return leased_by(node) <= 0;
}

/* node-a's URL: the same database and user, through the proxy on 127.0.0.1:port. */
static void proxied_url(const char *url, int port, char *out, size_t size)
{
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    const char *user = "postgres", *dbname = "";

    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "user") == 0 && o->val)
            user = o->val;
        if (strcmp(o->keyword, "dbname") == 0 && o->val)
            dbname = o->val;
    }
    snprintf(out, size,
             "postgresql://%s@127.0.0.1:%d/%s?sslmode=disable&gssencmode=disable"
             "&connection_limit=2&connect_timeout=2",
             user, port, dbname);
    PQconninfoFree(opts);
}

/* The proxy's target: the test server's socket folder (or host) and port. */
static struct tcpproxy *proxy_to(const char *url)
{
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    char host[512] = "/tmp";
    int port = 5432;
    struct tcpproxy *p;

    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0 && o->val)
            snprintf(host, sizeof host, "%s", o->val);
        if (strcmp(o->keyword, "port") == 0 && o->val)
            port = atoi(o->val);
    }
    PQconninfoFree(opts);
    p = tcpproxy_start(host, port);
    return p;
}

int main(void)
{
    const char *url, *plugin;
    char direct[1200], via_proxy[1200];
    const char *names[NODES] = {"node-a", "node-b", "node-c"};
    struct ts_sup nodes[NODES];
    struct ot_worker workers[8];
    struct ot_sampler sampler;
    struct tcpproxy *proxy;
    struct ot_wrk wrk;
    struct ot_wrk_result wrk_res;
    long long t0, gap, n;
    int peak, nw;

    tap_timeout(120);
    pgt_db_url();
    plugin = jt_build_plugin("jobs", NULL);
    url = jt_create_job_db("pgct_t418");
    db = jt_connect(url);
    jt_create_runs_table(db);
    snprintf(direct, sizeof direct, "%s&connection_limit=2", url);
    proxy = proxy_to(url);
    proxied_url(url, tcpproxy_port(proxy), via_proxy, sizeof via_proxy);

    ot_sampler_start(&sampler, url, CT_MARKED_SQL, 100);
    ct_start_node(&nodes[0], names[0], via_proxy, plugin, "8");
    ct_start_node(&nodes[1], names[1], direct, plugin, "8");
    ct_start_node(&nodes[2], names[2], direct, plugin, "8");

    /* ---- node-b dies with jobs in hand ---- */
    jt_exec(db, "SELECT pgcorral.add_job('t.record', '{\"ms\":400}')"
                " FROM generate_series(1, " JOBS_S ")");
    n = pgt_wait_at_least(db,
                          "SELECT count(*) FROM pgcorral.jobs j JOIN pgcorral.nodes n"
                          " ON j.locked_by = ANY (n.job_workers) WHERE n.node = 'node-b'",
                          1, 20000);
    ok(n >= 1, "node-b's job worker holds %lld job(s)", n);
    nw = ot_workers(nodes[1].control, workers, 8);
    t0 = pgt_now_ms();
    kill(nodes[1].p.pid, SIGKILL);
    for (int i = 0; i < nw; i++)
        kill(workers[i].pid, SIGKILL);
    ok(pgt_wait_until(lease_gone, (void *)names[1], 10000),
       "node-b's slots are free once its lease expired");
    gap = pgt_now_ms() - t0;
    ok(gap <= 3000 + 2 * 1000 + 1000, "within the TTL and two heartbeats: %lld ms", gap);
    n = pgt_wait_count(db, "SELECT count(DISTINCT job_id) FROM t_runs WHERE phase = 'done'", JOBS,
                       30000);
    gap = pgt_now_ms() - t0;
    is_int(n, JOBS,
           "every job ran to the end, none lost (%lld of " JOBS_S ", %lld ms after the kill)", n,
           gap);
    /* The last job's handler recorded its run before its ack deleted the job. */
    is_int(pgt_wait_count(db, "SELECT count(*) FROM pgcorral.jobs", 0, 10000), 0,
           "and none is left locked or queued");
    pgt_proc_cleanup(&nodes[1].p);

    /* ---- node-a's database traffic stalls while node-c, scaled up, wants more ---- */
    ok(pgt_wait_until(node_trusted, (void *)nodes[0].control, 10000),
       "node-a trusts its lease through the proxy");
    json_decref(pgt_ctl(nodes[2].control, "scale web 2"));
    ot_wrk_start(&wrk, nodes[2].port, "/api/v1/health", 16, 60);
    tcpproxy_stall(proxy);
    t0 = pgt_now_ms();
    bool fenced = pgt_wait_until(node_fenced, (void *)nodes[0].control, 10000);
    gap = pgt_now_ms() - t0;
    ok(fenced && gap >= 1000, "stalled, node-a stops opening connections (fenced) after %lld ms",
       gap);
    bool expired = pgt_wait_until(lease_gone, (void *)names[0], 10000);
    long long gap2 = pgt_now_ms() - t0;
    ok(expired && gap2 > gap,
       "only later another node expires node-a's lease (%lld ms after the stall)", gap2);
    n = pgt_wait_at_least(db,
                          "SELECT coalesce(max(slots_leased), 0) FROM pgcorral.nodes"
                          " WHERE node = 'node-c' AND lease_expires_at > now()",
                          6, 10000);
    ok(n >= 6, "node-c, under wrk, grows into the freed slots (leases %lld)", n);
    n = pgt_wait_count(db,
                       "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
                       " 'pgcorral % @node-a'",
                       0, 5000);
    is_int(n, 0, "node-a's connections were terminated on the server");
    tcpproxy_resume(proxy);
    t0 = pgt_now_ms();
    bool back = pgt_wait_until(node_trusted, (void *)nodes[0].control, 20000);
    ok(back, "with the traffic flowing again node-a leases again (%lld ms)", pgt_now_ms() - t0);
    ot_wrk_stop(&wrk, &wrk_res);
    ok(wrk_res.ran && wrk_res.err_connect + wrk_res.err_read == 0,
       "wrk on node-c: %ld requests, %ld not 2xx, no socket error", wrk_res.requests,
       wrk_res.non2xx);
    ok(pgt_query_ll(db, "SELECT coalesce(sum(slots_leased), 0) FROM pgcorral.nodes"
                        " WHERE lease_expires_at > now()") <= C,
       "the leases add up to at most C");

    ot_sampler_stop(&sampler);
    peak = ct_peak(&sampler);
    ok(atomic_load(&sampler.nsamples) > 50 && peak <= C,
       "pg_stat_activity every 100 ms: %d samples, at most %d of the nodes' connections (C = %d)",
       atomic_load(&sampler.nsamples), peak, C);
    ot_sampler_free(&sampler);

    ok(ts_stop(&nodes[0]), "node-a stops cleanly");

    pgt_proc_cleanup(&nodes[0].p);
    ok(ts_stop(&nodes[2]), "node-c stops cleanly");
    pgt_proc_cleanup(&nodes[2].p);
    tcpproxy_stop(proxy);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
